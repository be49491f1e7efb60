"""One pretraining per start: a study's experiments that would train the same start wait for
the first of them to have trained it.

The ``start`` stage of ``weights: pretrained`` trains a model on the source (several times a
cell's work). Experiments that differ only in the fine-tuning norm run it with the same params,
so two of them on two queue workers (or two Slurm jobs) would each train it, side by side. Held
back until the first has trained it (on Slurm: until one start job has), the others find it in
DVC's run-cache (shared by every experiment of the repository, written the moment the stage
ends) and restore it instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

TRAINS_ITS_START = ("pretrained",)  # weights whose start stage trains (scratch: an init;
                                    # imagenet: a verified file)
# DVC's lines for a stage it runs, or restores from the run-cache, or finds unchanged.
_STAGE_LINE = re.compile(
    r"^(?:Running stage '([^']+)':|Stage '([^']+)' (?:is cached|didn't change))", re.M)


def start_stages(params: Mapping) -> dict[str, str]:
    """{start stage: what it trains, as a key} of one experiment's params (`-S` applied); empty
    where its start trains nothing. The key holds the stage's params as dvc.yaml lists them."""
    weights = params["weights"]
    if weights not in TRAINS_ITS_START:
        return {}
    return {f"start@{model}": json.dumps(
        [model, weights, params["start"][weights], params.get("per_model", {}).get(model),
         params.get("device"), params.get("speed")], sort_keys=True)
        for model in params["models"]}


def waits(starts: Mapping[str, Mapping[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """{experiment: [(earlier experiment, start stage), ...] it waits for}, given each
    experiment's :func:`start_stages` in the order they are queued: the first to train a start
    trains it, every later one waits for it."""
    first: dict[str, tuple[str, str]] = {}
    out: dict[str, list[tuple[str, str]]] = {}
    for name, stages in starts.items():
        for stage, key in stages.items():
            if key in first:
                out.setdefault(name, []).append(first[key])
            else:
                first[key] = (name, stage)
    return out


def made(log: str, stage: str) -> bool:
    """Whether an experiment's log shows ``stage`` made: restored from the run-cache or found
    unchanged, or run and followed by another stage (DVC saves it to the run-cache before)."""
    lines = [(m.group(1), m.group(2)) for m in _STAGE_LINE.finditer(log)]
    for i, (ran, kept) in enumerate(lines):
        if stage in (ran, kept):
            return kept == stage or i < len(lines) - 1
    return False
