"""Runs (commits and DVC experiments) and which of them may be compared.

A comparison holds everything fixed except the setting (norm, weights) and the seed. A run's
cells of one dataset enter it only if every param that decides what such a cell learns (the
``train`` block, that dataset's ``data.<name>`` block, ``weights_version``, ``speed``, ...)
matches the reference run's; the others are left out with the params that differ. The same cell
found in two comparable runs with different results is reported, never silently merged.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from normbench.grid import cell_name
from normbench.registry import ConfigError

SETTING_KEYS = ("norm", "weights")  # what a comparison varies, with the seed
GRID_KEYS = ("models", "datasets", "seeds")  # which cells a run has, not what they learn
# Where data, weights and compute come from: files are hash-checked, and the device is the
# machine's own choice (on one machine `auto` is always the same device).
PLACE_KEYS = ("device", "weights_mirror", "data_root", "data_mirror", "download_dir")
# Metrics that must agree for two runs of a cell to count as the same result (timings may not).
RESULT_KEYS = ("best_acc", "final_acc", "final_loss")
MISSING = "(missing)"


@dataclass
class Run:
    """One commit or experiment: its params, and the metrics of each of its cells."""

    rev: str
    name: str
    params: dict[str, Any]
    timestamp: str = ""  # ISO time of the commit or experiment
    cells: dict[tuple[str, str, int], dict] = field(default_factory=dict)  # (model, dataset, seed)

    @property
    def setting(self) -> str:
        return f"norm={self.params['norm']} weights={self.params['weights']}"


def _params(data: dict) -> dict | None:
    return ((data.get("params") or {}).get("params.yaml") or {}).get("data")


def _run_from(entry: dict) -> Run | None:
    data = entry.get("data") or {}
    params = _params(data)
    if not params or "norm" not in params or "weights" not in params:
        return None
    run = Run(entry["rev"], entry.get("name") or entry["rev"][:7], params,
              str(data.get("timestamp") or ""))
    for path, metrics in (data.get("metrics") or {}).items():
        values = metrics.get("data") or {}
        # metrics.json holds {cell: {best_acc, ...}} (and means per model x dataset, which have
        # no best_acc); older commits have one metrics/<cell>.json per cell.
        per_cell = {Path(path).stem: values} if "best_acc" in values else values
        for cell, cell_metrics in per_cell.items():
            if isinstance(cell_metrics, dict) and "best_acc" in cell_metrics:  # else broken
                model, dataset, seed = cell.rsplit("-", 2)
                run.cells[(model, dataset, int(seed))] = cell_metrics
    return run


def parse_exp_show(entries: list[dict]) -> list[Run]:
    """Commits and their experiments from ``dvc exp show --json`` (the workspace is skipped)."""
    runs = []
    for entry in entries:
        if entry.get("rev") == "workspace":
            continue
        runs.append(_run_from(entry))
        for exp in entry.get("experiments") or []:
            runs.extend(_run_from(rev) for rev in exp.get("revs") or [])
    return [r for r in runs if r is not None and r.cells]


def exp_show(repo: Path, all_commits: bool = True) -> list[dict]:
    """``dvc exp show --json`` of the repository (every commit, or HEAD only)."""
    cmd = ["dvc", "exp", "show", "--json", *(["--all-commits"] if all_commits else [])]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ConfigError(f"`dvc exp show` failed in {repo}: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def reference_params(entries: list[dict], like: str | None) -> tuple[str, dict]:
    """The params every compared run must match: the workspace's, or those of run ``like``."""
    revs = [e for entry in entries for e in
            [entry, *(r for x in entry.get("experiments") or [] for r in x.get("revs") or [])]]
    for rev in revs:
        wanted = rev.get("rev") == "workspace" if like is None else (
            like in (rev.get("name"), rev.get("rev")) or rev.get("rev", "").startswith(like))
        params = _params(rev.get("data") or {})
        if wanted and params:
            return (like or "the workspace"), params
    names = sorted({r.get("name") or r.get("rev", "")[:7] for r in revs} - {"workspace"})
    raise ConfigError(f"no run {like!r} with params to compare like; valid choices: "
                      f"{', '.join(names)}")


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"epochs": 8}}`` -> ``{"train.epochs": 8}``."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def learning_params(params: dict, dataset: str) -> dict[str, Any]:
    """The params, flattened, that decide what a cell of ``dataset`` learns besides its setting."""
    skip = {*SETTING_KEYS, *GRID_KEYS, *PLACE_KEYS, "data"}
    kept = {k: v for k, v in params.items() if k not in skip}
    kept["data"] = {dataset: (params.get("data") or {}).get(dataset)}
    return flatten(kept)


def differences(params: dict, reference: dict, dataset: str) -> list[str]:
    """``key=value (reference value)`` for every learning param that differs."""
    ours, ref = learning_params(params, dataset), learning_params(reference, dataset)
    return [f"{k}={ours.get(k, MISSING)} (compared: {ref.get(k, MISSING)})"
            for k in sorted(set(ours) | set(ref)) if ours.get(k, MISSING) != ref.get(k, MISSING)]


@dataclass
class Selection:
    """The cells a comparison uses, and what it left out and why."""

    cells: pd.DataFrame  # index (setting, model, dataset, seed); columns rev, run, best_acc
    left_out: list[str]  # "<run>, <dataset>: <params that differ>"
    conflicts: pd.DataFrame  # a cell with different results in two comparable runs
    fixed: dict[str, Any]  # the params held fixed, per dataset where they differ by dataset


def _same_result(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in RESULT_KEYS)


def select(runs: list[Run], reference: dict) -> Selection:
    """The comparable cells of ``runs``; of a cell seen twice with one result, either run's.

    Two comparable runs with different results for one cell mean the code or the machine
    changed: both are listed in ``conflicts`` and the newer run's result is used.
    """
    chosen: dict[tuple, tuple[Run, dict]] = {}
    left_out, conflicts = [], []
    for run in sorted(runs, key=lambda r: r.timestamp, reverse=True):  # newest first
        excluded: dict[str, list[str]] = {}
        for (model, dataset, seed), metrics in run.cells.items():
            diff = excluded.get(dataset)
            if diff is None:
                diff = excluded[dataset] = differences(run.params, reference, dataset)
            if diff:
                continue
            key = (run.setting, model, dataset, seed)
            if key not in chosen:
                chosen[key] = (run, metrics)
            elif not _same_result(chosen[key][1], metrics):
                kept = chosen[key][0]
                conflicts.append({"setting": run.setting, "cell": cell_name(model, dataset, seed),
                                  "used (newer)": f"{kept.name}: {chosen[key][1]['best_acc']:.4f}",
                                  "also found": f"{run.name}: {metrics['best_acc']:.4f}"})
        left_out += [f"{run.name}, {d}: {'; '.join(diff)}" for d, diff in excluded.items() if diff]
    rows = [{"setting": s, "model": m, "dataset": d, "seed": seed, "rev": run.rev,
             "run": run.name, "best_acc": metrics["best_acc"]}
            for (s, m, d, seed), (run, metrics) in chosen.items()]
    cells = (pd.DataFrame(rows).set_index(["setting", "model", "dataset", "seed"]).sort_index()
             if rows else pd.DataFrame())
    datasets = sorted({d for (_, _, d, _) in chosen})
    fixed = {d: learning_params(reference, d) for d in datasets}
    return Selection(cells, left_out, pd.DataFrame(conflicts), fixed)


def read_cell_outputs(repo: Path, cells: pd.DataFrame, *paths: str) -> dict[tuple, list[bytes]]:
    """Each selected cell's DVC-cached outputs at its run's revision, keyed like ``cells``.

    ``paths`` are formatted with ``cell=<cell name>``, e.g. ``weightdist/{cell}/summary.json``.
    A cell whose files are not in the local cache (an experiment pulled without its data) is
    left out.
    """
    from dvc.repo import Repo  # heavy: only needed when outputs are read

    found = {}
    for rev, group in cells.groupby("rev"):
        with Repo.open(str(repo), rev=rev) as dvc_repo:
            for key in group.index:
                cell = cell_name(*key[1:])
                try:
                    found[key] = [dvc_repo.dvcfs.read_bytes(p.format(cell=cell)) for p in paths]
                except (FileNotFoundError, OSError):
                    continue
    return found
