"""Several cells on one device: `dvc queue start -j N` against the same experiments one by one.

For each job count (default 1, then --jobs), clones this repository (HEAD) into a temporary
folder with a cache of its own (so nothing comes from DVC's run-cache), applies the --set
overrides to params.yaml, builds the data once, queues one experiment per --norms entry
(`dvc exp run --queue -S norm=...`), and times `dvc queue start -j N` until the queue is empty.
Prints the wall time, the aggregate training images/s over all cells and the ratio to -j 1, and
each cell's peak GPU memory (the metric peak_gpu_mib) for sizing N.

A CIFAR-sized workload that needs no download: --set 'datasets=[shapes]'
--set data.shapes.images_per_class=10000 (60,000 images of 32 x 32).

Usage: python bench/queue_speed.py [--jobs 4] [--norms dataset imagenet instance minmax]
       [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
# The stages say `python` and the queue workers call `dvc`: both from this environment.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
sys.path.insert(0, str(ROOT / "src"))
from normbench.dvcqueue import start_queue  # noqa: E402
from normbench.runs import parse_exp_show  # noqa: E402


def sh(cwd: Path, *cmd: str) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed in {cwd}:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def apply_sets(params: dict, sets: list[str]) -> dict:
    """``key.sub=value`` overrides, the value read as YAML (as `dvc exp run -S` does)."""
    for item in sets:
        key, _, value = item.partition("=")
        node = params
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = yaml.safe_load(value)
    return params


def run_queue(jobs: int, norms: list[str], sets: list[str], workdir: Path) -> dict:
    repo = workdir / f"j{jobs}"
    sh(ROOT, "git", "clone", "-q", str(ROOT), str(repo))
    params = apply_sets(yaml.safe_load((repo / "params.yaml").read_text()), sets)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(repo, "git", "commit", "-qam", "benchmark settings")
    sh(repo, "dvc", "repro", "download", "stats")  # once, not once per queued experiment
    sh(repo, "dvc", "exp", "run", "--queue", "-S", f"norm={','.join(norms)}")
    start = time.perf_counter()
    start_queue(repo, jobs)
    while True:
        time.sleep(2)
        status = sh(repo, "dvc", "queue", "status")
        if not any(word in status for word in ("Queued", "Running")):
            break
    seconds = time.perf_counter() - start
    if "Success" not in status or "Failed" in status:
        raise SystemExit(f"error: a queued experiment failed:\n{status}\n"
                         f"`dvc queue logs <name>` in {repo} says why")
    head = sh(repo, "git", "rev-parse", "HEAD").strip()
    runs = parse_exp_show(json.loads(sh(repo, "dvc", "exp", "show", "--json")))
    cells = [(dataset, m) for run in runs if run.rev != head
             for (_, dataset, _), m in run.cells.items()]
    if not cells:
        raise SystemExit(f"error: no cell metrics in the experiments of {repo}")
    # Training images over all cells: each cell's train split, once per epoch.
    train_sizes = {p.parent.name: len(np.load(p, mmap_mode="r"))
                   for p in (repo / "data").glob("*/train_labels.npy")}
    images = sum(train_sizes[dataset] * m["epochs"] for (dataset, m) in cells)
    return {"jobs": jobs, "seconds": seconds, "images": images, "cells": len(cells),
            "peak_gpu_mib": [m.get("peak_gpu_mib") for _, m in cells]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--norms", nargs="+", default=["dataset", "imagenet", "instance", "minmax"])
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="params override, e.g. train.epochs=10 (repeatable)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="normbench-queue-"))  # kept if a run fails, for its logs
    runs = [run_queue(j, args.norms, args.sets, tmp) for j in (1, args.jobs)]
    shutil.rmtree(tmp)
    one, many = runs
    for run in runs:
        print(f"-j {run['jobs']}: {run['cells']} cells, {run['seconds']:.0f} s, "
              f"{run['images'] / run['seconds']:,.0f} train img/s in aggregate; peak GPU MiB per "
              f"cell: {run['peak_gpu_mib']}")
    print(f"-j {args.jobs} / -j 1: {one['seconds'] / many['seconds']:.2f}x the aggregate speed")


if __name__ == "__main__":
    main()
