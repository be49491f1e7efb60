"""Several cells on one GPU: the aggregate training speed of `dvc queue start -j N`.

Clones this repository (HEAD) into a temporary folder with a DVC cache of its own (nothing is
restored from the run-cache), applies the --set overrides, builds the data once, and runs N
one-cell experiments (seeds 1..N; same model, dataset and settings) with N queue workers, through
the study's local executor. The aggregate rate is every cell's training images over the wall time
of the whole queue, start-up, compilation and evaluation included: what `make study` gets.

Run it with --jobs 1 for the baseline and then with N = 2, 4, 8, each also with --mps (CUDA's
Multi-Process Service daemon, started for the run where the machine has it and stopped after).
The cells run as a study runs them (normbench.gpushare.sharing: each its share of inductor's
compile workers, one compile cache). Each run appends a row (with every cell's metrics:
best_acc, images_per_s, peak_gpu_mib) to bench/results/queue-<device>.jsonl and rewrites
queue-<device>.md, which compares each N with -j 1 per model and workload; `make study` takes
its cells per GPU from these rows (normbench.gpushare.choose).

A CIFAR-sized workload that needs no download: --set 'datasets=[shapes]'
--set data.shapes.images_per_class=10000 (60,000 images of 32 x 32, 48,000 in the train split,
43,200 trained on after the validation split).

Usage: python bench/queue_speed.py --jobs 4 --model resnet18 [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
# The stages say `python` and the queue workers call `dvc`: both from this environment.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
sys.path.insert(0, str(ROOT / "src"))
from device_results import (RESULTS, append_row, device_label, provenance,  # noqa: E402
                            read_rows, slug)
from normbench import gpushare  # noqa: E402
from normbench.config import TrainConfig  # noqa: E402
from normbench.dvcqueue import run_local  # noqa: E402
from normbench.models import MODELS  # noqa: E402
from normbench.runs import exp_show, parse_exp_show  # noqa: E402
from normbench.study import apply_sets, plan  # noqa: E402
from normbench.timing import TIMINGS_ENV  # noqa: E402
from normbench.validation import split_indices  # noqa: E402

CELL_METRICS = ("best_acc", "epochs")  # from `dvc exp show`
# From the cell's timing file; compile_cache: whether it compiled (cold) or loaded (warm).
CELL_TIMING = ("train_seconds", "images_per_s", "peak_gpu_mib", "compile_cache")


def sh(cwd: Path, *cmd: str) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed in {cwd}:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def clone(repo: Path, sets: list[str]) -> None:
    """A committed copy of HEAD with the overrides, its own DVC cache and the data built."""
    sh(ROOT, "git", "clone", "-q", str(ROOT), str(repo))
    sh(repo, "git", "config", "user.email", "bench@normbench")  # this clone's commits only
    sh(repo, "git", "config", "user.name", "normbench bench")
    params = apply_sets(yaml.safe_load((repo / "params.yaml").read_text()), sets)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(repo, "git", "commit", "-qam", "benchmark settings")
    sh(repo, "dvc", "repro", "download", "stats")  # once, not once per queued experiment


def run_queue(repo: Path, jobs: int, mps: bool) -> tuple[float, list[dict], bool]:
    """Wall seconds of N one-cell experiments on N workers, each cell's metrics, and whether
    they shared the GPU through MPS."""
    experiments = plan(["dataset"], ["scratch"], list(range(1, jobs + 1)), split_seeds=True)
    # A queued cell runs in a temporary workspace, its timing file with it: the workers (which
    # inherit this environment) write timings here instead (normbench.timing).
    timings = repo.parent / "timings"
    os.environ[TIMINGS_ENV] = str(timings)
    with gpushare.sharing(repo, jobs, mps) as mps_on:
        start = time.perf_counter()
        try:
            states = run_local(repo, experiments, jobs)
        finally:
            subprocess.run(["dvc", "queue", "stop"], cwd=repo, capture_output=True)
        seconds = time.perf_counter() - start
    failed = {n: s for n, s in states.items() if s != "done"}
    if failed:
        raise SystemExit(f"error: queued experiments failed in {repo}: {failed}")
    head = sh(repo, "git", "rev-parse", "HEAD").strip()
    runs = parse_exp_show(exp_show(repo, all_commits=False))
    cells = [{"cell": f"{m}-{d}-{s}", **{k: metrics.get(k) for k in CELL_METRICS}}
             for run in runs if run.rev != head for (m, d, s), metrics in run.cells.items()]
    for cell in cells:
        timing = json.loads((timings / f"{cell['cell']}.json").read_text())
        cell.update({k: timing.get(k) for k in CELL_TIMING})
    if len(cells) != jobs:
        raise SystemExit(f"error: {len(cells)} cells with metrics in {repo}, {jobs} expected")
    return seconds, cells, mps_on


def train_images(repo: Path, cells: list[dict], model: str) -> int:
    """Training images over all cells: each cell's train split less its validation split, once
    per epoch."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    cfg = TrainConfig.from_params(params["train"]).for_model(params["per_model"], model)
    sizes = {p.parent.name: len(split_indices(np.load(p), cfg.val_fraction)[0])
             for p in (repo / "data").glob("*/train_labels.npy")}
    return sum(sizes[c["cell"].split("-")[1]] * c["epochs"] for c in cells)


def write_summary(jsonl: Path) -> str:
    """Per model and workload: each job count's aggregate rate against -j 1's."""
    rows = read_rows(jsonl)
    lines = [f"# Several cells per GPU on {rows[-1]['device']}", "",
             "Aggregate training images/s of N one-cell DVC experiments run by "
             "`dvc queue start -j N` (start-up, compilation and evaluation included), against "
             "-j 1. Peak GPU MiB: the largest cell's `peak_gpu_mib`.", ""]
    for workload in sorted({(r["model"], r["workload"]) for r in rows}):
        mine = {(r["jobs"], bool(r.get("mps"))): r for r in rows
                if (r["model"], r["workload"]) == workload}
        base = mine.get((1, False))
        lines += [f"## {workload[0]}, {workload[1]}", "",
                  "| -j | MPS | cells | wall s | aggregate img/s | vs -j 1 | per-cell img/s | "
                  "peak GPU MiB | command |", "|---|---|---|---|---|---|---|---|---|"]
        for (jobs, mps), r in sorted(mine.items()):
            ratio = f"{r['aggregate_img_s'] / base['aggregate_img_s']:.2f}x" if base else "-"
            per_cell = np.mean([c["images_per_s"] for c in r["cells"]])
            peaks = [c["peak_gpu_mib"] for c in r["cells"] if c["peak_gpu_mib"] is not None]
            peak = f"{max(peaks):,.0f}" if peaks else "-"
            lines.append(f"| {jobs} | {'yes' if mps else 'no'} | {len(r['cells'])} | "
                         f"{r['seconds']:.0f} | "
                         f"{r['aggregate_img_s']:,.0f} | {ratio} | {per_cell:,.0f} | {peak} | "
                         f"`{r['command']}` ({r['date']}) |")
        lines.append("")
    text = "\n".join(lines)
    jsonl.with_suffix(".md").write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=4, help="queue workers, and one-cell experiments")
    ap.add_argument("--model", default="resnet18", choices=list(MODELS))
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="params override, e.g. train.epochs=10 (repeatable)")
    ap.add_argument("--mps", action="store_true",
                    help="share the GPU through CUDA's MPS daemon (started for this run where "
                         "the machine has it; the row records whether it ran)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder for .jsonl and .md")
    args = ap.parse_args()
    if args.jobs < 1:
        raise SystemExit(f"error: --jobs must be at least 1, got {args.jobs}")
    # A stop from outside (a time budget, `kill`) takes the queue's cells down with it.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    label = device_label(torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    tmp = Path(tempfile.mkdtemp(prefix="normbench-queue-"))  # kept if a run fails, for its logs
    repo = tmp / "repo"
    clone(repo, [f"models=[{args.model}]", *args.sets])
    seconds, cells, mps = run_queue(repo, args.jobs, args.mps)
    images = train_images(repo, cells, args.model)
    shutil.rmtree(tmp)
    row = {"device": label, "model": args.model, "workload": " ".join(args.sets) or "defaults",
           "jobs": args.jobs, "mps": mps, "seconds": round(seconds, 1), "train_images": images,
           "aggregate_img_s": images / seconds, "cells": cells, **provenance("queue_speed.py")}
    jsonl = args.results / f"queue-{slug(label)}.jsonl"
    append_row(jsonl, row)
    for c in cells:
        print(f"  {c['cell']}: " + ", ".join(f"{k} {c[k]}" for k in CELL_METRICS + CELL_TIMING))
    print(f"-j {args.jobs}{' with MPS' if mps else ''}: {len(cells)} cells in {seconds:.0f} s, "
          f"{images / seconds:,.0f} train img/s in aggregate\n")
    print(write_summary(jsonl))


if __name__ == "__main__":
    main()
