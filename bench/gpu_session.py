"""The whole GPU measurement, step by step, resumable: what runs on a lent GPU machine.

Runs each step below in order as its own process, with its output in
bench/results/gpu-session/<step>.log. A step that finishes is marked <step>.done and is not run
again; one that fails is marked <step>.failed and skipped until --retry-failed; one cut off by
the time budget (--budget, seconds) leaves no mark, so the next run starts there. Every step's
numbers land in bench/results/ (the scripts' own .jsonl/.md files), so the folder can be
committed and a later session, on a fresh machine, resumes where this one stopped.

Use bench/gpu_session.sh on the GPU machine: it adds what the machine lacks (dvc, dvclive) from
wheels in .whl/ first. `--list` prints the steps and their state without running anything.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SESSION = RESULTS / "gpu-session"
PY = sys.executable

# The seed study's models; 64 px is Tiny-ImageNet's size.
MODELS = ("resnet18", "resnet50", "densenet121", "densenet161")
# Real cells through DVC: a CIFAR-sized shapes set (60,000 images of 32 px, 48,000 to train).
CELL_DATA = ("--set", "datasets=[shapes]", "--set", "data.shapes.images_per_class=10000",
             "--set", "seeds=[1]")
# Epochs per cell, so that training outlasts start-up and compilation (about a minute each).
CELL_EPOCHS = {"resnet18": 30, "resnet50": 8, "densenet121": 8, "densenet161": 4}


@dataclass(frozen=True)
class Step:
    name: str
    argv: tuple[str, ...]
    why: str  # which point of the measurement it answers


def speed(model: str, size: int) -> tuple[str, ...]:
    # Half of CIFAR's images per epoch at 32 px and the same pixels at 64 px: hundreds of steps
    # per timed epoch, and the three loops of densenet161 at 64 px within a few minutes.
    images = 25_000 * 32 * 32 // (size * size)
    return (PY, "bench/train_speed.py", "--models", model, "--size", str(size),
            "--images", str(images), "--test-images", str(images // 5))


def queue(model: str, jobs: int) -> tuple[str, ...]:
    return (PY, "bench/queue_speed.py", "--jobs", str(jobs), "--model", model, *CELL_DATA,
            "--set", f"train.epochs={CELL_EPOCHS[model]}")


def steps() -> list[Step]:
    """Cheap checks of correctness first, then speed, parity and the queue."""
    packages = ", ".join(f'"{p}"' for p in ("torch", "torchvision", "dvc", "dvclive"))
    versions = ("from importlib.metadata import version; import torch; "
                f"print(*(version(p) for p in ({packages})), torch.cuda.get_device_name())")
    env = ("bash", "-c", f"nvidia-smi; git --version; {PY} -m pip check; {PY} -c '{versions}'")
    return [
        Step("env", env, "the machine, its driver and the versions used"),
        Step("gpu-tests", (PY, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"),
             "1, 5: CUDA checks of the fast path and the placement of two processes"),
        *[Step(f"speed-32-{m}", speed(m, 32), "2: img/s, seed-style vs plain vs fast, 32 px")
          for m in MODELS],
        *[Step(f"cell-{m}", queue(m, 1), "1, 4: a real cell through DVC; -j 1 baseline")
          for m in MODELS],
        *[Step(f"parity-{d}", (PY, "bench/parity.py", "--dataset", d, "--seeds", "1", "2", "3",
                               "4", "5"), "3: fast vs plain fp32 accuracy, 5 seeds")
          for d in ("shapes", "digits")],
        *[Step(f"queue-resnet18-j{n}", queue("resnet18", n), "4: cells per GPU")
          for n in (2, 4, 8)],
        *[Step(f"speed-64-{m}", speed(m, 64), "2, 6: img/s at 64 px (Tiny-ImageNet)")
          for m in MODELS],
        *[Step(f"queue-densenet121-j{n}", queue("densenet121", n), "4: cells per GPU")
          for n in (2, 4)],
        Step("grid-cost", (PY, "bench/grid_cost.py"), "6: GPU-hours of the seed study's grid"),
    ]


def mark(step: Step, folder: Path) -> Path | None:
    """The step's .done or .failed file, if it has run to an end."""
    return next((path for path in (folder / f"{step.name}.done", folder / f"{step.name}.failed")
                 if path.exists()), None)


def state(step: Step, folder: Path) -> str:
    path = mark(step, folder)
    return path.suffix[1:] if path else "to do"


def run_step(step: Step, folder: Path, seconds: float) -> str:
    """Run one step with its output in <step>.log: "done", "failed" or "cut off"."""
    log = folder / f"{step.name}.log"
    start = time.time()
    with log.open("a") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(step.argv)}\n")
        out.flush()
        # A session of its own, so a cut-off step is stopped with everything it started.
        proc = subprocess.Popen(step.argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            rc = proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            out.write(f"=== cut off after {time.time() - start:.0f} s (time budget)\n")
            return "cut off"
    outcome = "done" if rc == 0 else "failed"
    (folder / f"{step.name}.{outcome}").write_text(json.dumps(
        {"seconds": round(time.time() - start, 1), "exit_code": rc,
         "date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(step.argv)}) + "\n")
    return outcome


def run_steps(todo: list[Step], folder: Path, budget_s: float, retry_failed: bool,
              min_step_s: float = 60.0) -> list[tuple[Step, str]]:
    """Run the steps not yet done, in order, until the budget would cut the next one short."""
    folder.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + budget_s
    report = []
    for step in todo:
        current = state(step, folder)
        if current == "done" or (current == "failed" and not retry_failed):
            report.append((step, f"{current} earlier"))
            continue
        left = deadline - time.monotonic()
        if left < min_step_s:
            report.append((step, "not started (budget)"))
            continue
        (folder / f"{step.name}.failed").unlink(missing_ok=True)
        print(f"[{time.strftime('%H:%M:%S')}] {step.name}: {' '.join(step.argv)}", flush=True)
        outcome = run_step(step, folder, left)
        print(f"[{time.strftime('%H:%M:%S')}] {step.name}: {outcome}", flush=True)
        report.append((step, outcome))
    return report


def status_table(report: list[tuple[Step, str]], folder: Path) -> str:
    lines = ["| step | state | seconds | answers |", "|---|---|---|---|"]
    for step, outcome in report:
        path = mark(step, folder)
        seconds = json.loads(path.read_text())["seconds"] if path else "-"
        lines.append(f"| {step.name} | {outcome} | {seconds} | {step.why} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=3600.0,
                    help="seconds this run may take; a step running past it is stopped and "
                         "is the first one run next time")
    ap.add_argument("--retry-failed", action="store_true", help="run failed steps again")
    ap.add_argument("--only", nargs="+", help="step names to consider (default: all)")
    ap.add_argument("--list", action="store_true", help="print the steps and their state")
    ap.add_argument("--folder", type=Path, default=SESSION, help="where logs and marks go")
    args = ap.parse_args()

    todo = steps()
    if args.only:
        unknown = sorted(set(args.only) - {s.name for s in todo})
        if unknown:
            raise SystemExit(f"error: unknown steps {unknown}; valid choices: "
                             f"{', '.join(s.name for s in todo)}")
        todo = [s for s in todo if s.name in args.only]
    if args.list:
        print(status_table([(s, state(s, args.folder)) for s in todo], args.folder), end="")
        return
    report = run_steps(todo, args.folder, args.budget, args.retry_failed)
    table = status_table(report, args.folder)
    (args.folder / "STATUS.md").write_text(
        f"# GPU session, last run {time.strftime('%Y-%m-%d %H:%M')}\n\n{table}")
    print("\n" + table, end="")
    if any(outcome == "failed" for _, outcome in report):
        sys.exit(1)


if __name__ == "__main__":
    main()
