"""Several cells on one GPU: how many, chosen from measurement, with CUDA's MPS where it paid.

At 32 px one cell leaves the GPU idle between its kernel launches, so several cells (DVC queue
workers) can share it. How many pays, and whether CUDA's Multi-Process Service (one GPU context
for all of them, so their kernels run side by side) adds to it, depends on the GPU and the model:
``bench/queue_speed.py`` measures the aggregate speed of ``-j N`` with and without MPS and keeps
its rows in ``bench/results/queue-<device>.jsonl``. ``choose`` reads them: the job count with the
best aggregate speed against ``-j 1``, the smallest over the models measured; a GPU with no rows
gets one cell at a time and no MPS (nothing measured, nothing guessed).

``sharing`` is what a study runs its queue inside: each cell's share of inductor's compile
workers (as its share of OpenMP threads), the compile cache at an absolute path (queued cells run
in temporary copies of the workspace), and the MPS daemon, started only where it exists and none
runs, and stopped afterwards only if this study started it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

from normbench.compile_cache import CACHE_DIR, CACHE_ENV

# The benchmarks' rows, committed with the project: what cells per GPU are chosen from.
BENCH_RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
MPS_CONTROL = "nvidia-cuda-mps-control"  # CUDA's MPS daemon and its control client
COMPILE_THREADS_ENV = "TORCHINDUCTOR_COMPILE_THREADS"  # inductor's compile workers per process


def slug(label: str) -> str:
    """A device label as a file name: ``nvidia-h100-80gb-hbm3``."""
    return re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-").lower()


def queue_rows(device_name: str, folder: Path | None = None) -> list[dict]:
    """bench/queue_speed.py's rows for this GPU (none if it never ran there)."""
    path = (folder or BENCH_RESULTS) / f"queue-{slug(device_name)}.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass(frozen=True)
class Sharing:
    """Cells per GPU and whether they share it through MPS, with the measurement behind it."""

    jobs: int
    mps: bool
    why: str  # the measurement it comes from; empty without a GPU


def best_per_model(rows: list[dict]) -> dict[str, tuple[float, int, bool]]:
    """Per model: (aggregate speed against -j 1, job count, MPS) of its best measured setting.

    Only the model's newest workload counts (another workload's -j 1 is no base), and the
    newest row per job count and MPS setting; the base is -j 1 without MPS.
    """
    best = {}
    for model in sorted({r["model"] for r in rows}):
        mine = [r for r in rows if r["model"] == model]
        latest = {(r["jobs"], bool(r.get("mps"))): r for r in mine
                  if r.get("workload") == mine[-1].get("workload")}
        base = latest.get((1, False))
        if base is not None:
            best[model] = max((r["aggregate_img_s"] / base["aggregate_img_s"], jobs, mps)
                              for (jobs, mps), r in latest.items())
    return best


def choose(rows: list[dict]) -> Sharing:
    """The cells per GPU that ``rows`` (bench/queue_speed.py's, one GPU) measured best: the
    smallest of the models' best job counts, since a study's models share its workers."""
    best = best_per_model(rows)
    if not best:
        return Sharing(1, False, "no -j measurement on this GPU (bench/queue_speed.py): one "
                                 "cell per GPU, no MPS")
    model = min(best, key=lambda m: best[m][1])
    ratio, jobs, mps = best[model]
    return Sharing(jobs, mps, f"measured: {model} -j {jobs}{' with MPS' if mps else ''} "
                              f"trains {ratio:.2f}x as fast as -j 1")


def gpu_name() -> str | None:
    """The first visible GPU's name as torch gives it, or None without one.

    Asked in a child process: torch's name needs a CUDA context, which this process (a study
    that runs for hours and trains nothing) should not hold on the GPU its cells share.
    """
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.get_device_name"
                            "(0) if torch.cuda.is_available() else '')"],
                           capture_output=True, text=True)
    return probe.stdout.strip() or None


def for_this_gpu() -> Sharing:
    """``choose`` for the first visible GPU (one cell per GPU without one)."""
    name = gpu_name() if shutil.which("nvidia-smi") else None  # no driver: no GPU, no probe
    return choose(queue_rows(name)) if name else Sharing(1, False, "")


def cores() -> int:
    """CPU cores this process may use (a container's or taskset's share)."""
    return len(os.sched_getaffinity(0))


def mps_running(env: Mapping[str, str]) -> bool:
    """Whether an MPS control daemon answers on ``env``'s pipe folder."""
    try:
        proc = subprocess.run([MPS_CONTROL], input="get_server_list\n", env=dict(env),
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


@contextlib.contextmanager
def mps_daemon() -> Iterator[bool]:
    """CUDA's MPS daemon for what runs inside: started if the machine has it and none runs,
    stopped afterwards if started here. Yields whether cells started inside use MPS."""
    if shutil.which(MPS_CONTROL) is None:
        yield False
        return
    if mps_running(os.environ):  # someone else's daemon: use it, leave it running
        yield True
        return
    folder = Path(tempfile.mkdtemp(prefix="normbench-mps-"))
    dirs = {"CUDA_MPS_PIPE_DIRECTORY": str(folder / "pipe"),
            "CUDA_MPS_LOG_DIRECTORY": str(folder / "log")}
    for path in dirs.values():
        Path(path).mkdir()
    env = {**os.environ, **dirs}
    started = subprocess.run([MPS_CONTROL, "-d"], env=env, capture_output=True, text=True)
    if started.returncode != 0 or not mps_running(env):
        print(f"warning: the MPS daemon did not start ({started.stderr.strip() or 'no answer'}"
              "): cells share the GPU without it", flush=True)
        shutil.rmtree(folder, ignore_errors=True)
        yield False
        return
    with environment(dirs):  # the cells started inside find the daemon through these
        try:
            yield True
        finally:
            subprocess.run([MPS_CONTROL], input="quit\n", env=env, capture_output=True,
                           text=True, timeout=60)
            shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set, restored afterwards."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def sharing(repo: Path, jobs: int, mps: bool) -> Iterator[bool]:
    """What ``jobs`` cells at once on this machine run inside; yields whether MPS is on.

    Each cell gets its share of inductor's compile workers (a caller's own setting stands), and
    the compile cache at ``repo``'s folder as an absolute path, unless the caller chose one.
    """
    values = {}
    if COMPILE_THREADS_ENV not in os.environ:
        values[COMPILE_THREADS_ENV] = str(max(1, cores() // jobs))
    if CACHE_ENV not in os.environ:
        values[CACHE_ENV] = str((repo / CACHE_DIR).resolve())
    with environment(values):
        if not mps:
            yield False
            return
        with mps_daemon() as on:
            yield on
