"""Wall-clock figures of a run (seconds, images/s, peak GPU memory), kept out of hashed outputs.

A cell's metrics, checkpoint, curves and predictions are functions of its inputs and seed: a rerun
on the same machine writes them bit for bit again, so a fresh clone's ``make repro`` reproduces
every hash in the committed dvc.lock and leaves ``git status`` clean. Timing differs on every run,
so it lives apart: ``timings/<cell>.json``, which no stage declares and git ignores.
It is no DVC metric either, so that timing noise stays out of ``dvc metrics diff`` (git keeps
only the folder, with an empty ``.keep.json``). A cell restored from the
DVC cache trains nothing and writes nothing: the file there, if any, is from the last time the
cell trained in this workspace. A queued experiment runs in a temporary copy of the workspace,
deleted when it ends: a caller that wants its timings (bench/queue_speed.py) names a folder of
its own in ``$NORMBENCH_TIMINGS``.
"""

from __future__ import annotations

import os
from pathlib import Path

from normbench.io import write_json
from normbench.registry import ConfigError

TIMINGS = Path("timings")  # relative to the repository root, where DVC runs the stages
TIMINGS_ENV = "NORMBENCH_TIMINGS"  # a folder that replaces TIMINGS (a queue's runs)


def timing_path(name: str) -> Path:
    """Where the timing of ``name`` (a cell) is written."""
    chosen = os.environ.get(TIMINGS_ENV)
    if chosen and not Path(chosen).is_absolute():  # it would land in a temporary workspace
        raise ConfigError(f"{TIMINGS_ENV} must be an absolute path (a queued cell runs in a "
                          f"temporary copy of the workspace), got {chosen}")
    return Path(chosen or TIMINGS) / f"{name}.json"


def write_timing(name: str, timing: dict) -> Path:
    path = timing_path(name)
    write_json(path, timing)
    return path
