"""The whole GPU measurement, step by step, resumable: what runs on a lent GPU machine.

Runs each step below in order as its own process, with its output in
bench/results/gpu-session/<step>.log. A step that finishes is marked <step>.done and is not run
again; one that fails is marked <step>.failed and skipped until --retry-failed; one cut off by
the time budget (--budget, seconds) leaves no mark, so the next run starts there. Every step's
numbers land in bench/results/ (the scripts' own .jsonl/.md files), so the folder can be
committed and a later session, on a fresh machine, resumes where this one stopped.

Fitted to the lent machine (bench/README.md): one call runs at most 600 s, so the default budget
is 540 s; only what is under $OUT comes back, so with --out the whole bench/results/ is packed
there after every step (a call killed at its limit keeps what its finished steps wrote). The
steps are in order of value, so that the first call alone gives the headline. A step that needs
what this machine lacks (git with a commit, dvc) is skipped and left unmarked; without CUDA the
run stops at the first step that needs it.

Use bench/gpu_session.sh on the GPU machine: it adds what the machine lacks (dvc, dvclive) from
wheels in .whl/ first. `--list` prints the steps and their state without running anything.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SESSION = RESULTS / "gpu-session"
PY = sys.executable

# The seed study's models; 64 px is Tiny-ImageNet's size.
MODELS = ("resnet18", "resnet50", "densenet121", "densenet161")
# The headline: the speed-up targets of the issue are set for these two (fast vs seed-style).
HEADLINE = ("resnet18", "densenet121")
# Real cells through DVC: a CIFAR-sized shapes set (60,000 images of 32 px, 48,000 to train).
CELL_DATA = ("--set", "datasets=[shapes]", "--set", "data.shapes.images_per_class=10000",
             "--set", "seeds=[1]")
# Epochs per cell, so that training outlasts start-up and compilation (about a minute each).
CELL_EPOCHS = {"resnet18": 30, "resnet50": 8, "densenet121": 8, "densenet161": 4}
# A cut-off step gets this long (s) between SIGTERM and SIGKILL: short, so that a step cut at
# the budget still leaves the call time to pack its results before the call's own limit.
GRACE_S = 10.0
# What the device tool returns of each file under $OUT.
OUT_FILE_LIMIT_MIB = 16
# What a step may need beyond python and torch (``missing`` checks each).
REQUIREMENTS = ("cuda", "git", "dvc")


@dataclass(frozen=True)
class Step:
    name: str
    argv: tuple[str, ...]
    why: str  # which point of the measurement it answers
    needs: tuple[str, ...] = ("cuda",)  # names in REQUIREMENTS
    env: tuple[tuple[str, str], ...] = ()  # environment variables set for this step only


def cores() -> int:
    """CPU cores this process may use (a container's share, not the host's count)."""
    return len(os.sched_getaffinity(0))


def speed(model: str, size: int, *loops: str) -> tuple[str, ...]:
    # Half of CIFAR's images per epoch at 32 px and the same pixels at 64 px: hundreds of steps
    # per timed epoch, and the three loops of densenet161 at 64 px within a few minutes.
    images = 25_000 * 32 * 32 // (size * size)
    return (PY, "bench/train_speed.py", "--models", model, "--size", str(size),
            "--images", str(images), "--test-images", str(images // 5),
            *(("--loops", *loops) if loops else ()))


def queue(name: str, model: str, jobs: int, why: str) -> Step:
    argv = (PY, "bench/queue_speed.py", "--jobs", str(jobs), "--model", model, *CELL_DATA,
            "--set", f"train.epochs={CELL_EPOCHS[model]}")
    # Each cell's inductor compiles with one worker per core by default: N cells at once would
    # start N x cores compile workers. Their share of the cores each, as OMP_NUM_THREADS is.
    threads = str(max(1, cores() // jobs))
    return Step(name, argv, why, ("cuda", "git", "dvc"),
                (("TORCHINDUCTOR_COMPILE_THREADS", threads),))


def steps() -> list[Step]:
    """In order of value: the first call alone gives the headline (the machine, then resnet18
    and densenet121 fast vs seed-style at 32 px), then the CUDA tests, then the rest."""
    rest = [m for m in MODELS if m not in HEADLINE]
    return [
        Step("env", (PY, "bench/gpu_env.py"), "the machine, its driver and the versions used",
             needs=()),
        *[Step(f"speed-32-{m}", speed(m, 32, "reference", "fast"),
               "2: img/s, fast vs seed-style, 32 px (the headline)") for m in HEADLINE],
        Step("gpu-tests", (PY, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"),
             "1, 3: CUDA checks of the fast path and the placement of two processes"),
        *[Step(f"speed-32-{m}", speed(m, 32), "2: img/s, seed-style vs plain vs fast, 32 px")
          for m in rest],
        *[Step(f"plain-32-{m}", speed(m, 32, "plain"), "2: img/s of the plain loop, 32 px")
          for m in HEADLINE],
        *[queue(f"cell-{m}", m, 1, "1, 4: a real cell through DVC; -j 1 baseline")
          for m in MODELS],
        *[Step(f"parity-{d}", (PY, "bench/parity.py", "--dataset", d, "--seeds", "1", "2", "3",
                               "4", "5"), "3: fast vs plain fp32 accuracy, 5 seeds")
          for d in ("shapes", "digits")],
        *[queue(f"queue-resnet18-j{n}", "resnet18", n, "4: cells per GPU") for n in (2, 4, 8)],
        *[Step(f"speed-64-{m}", speed(m, 64), "2, 5: img/s at 64 px (Tiny-ImageNet)")
          for m in MODELS],
        *[queue(f"queue-densenet121-j{n}", "densenet121", n, "4: cells per GPU")
          for n in (2, 4)],
        Step("grid-cost", (PY, "bench/grid_cost.py"),
             "5: GPU-hours of the seed grid and the mismatch recipe", needs=()),
    ]


def missing(need: str) -> str | None:
    """Why this machine lacks ``need`` (a name in REQUIREMENTS), or None if it has it."""
    if need == "cuda":
        # Asked in a child process: this one stays free of torch and of a CUDA context.
        probe = subprocess.run([PY, "-c", "import sys, torch; "
                                "sys.exit(not torch.cuda.is_available())"], capture_output=True)
        return None if probe.returncode == 0 else \
            "no CUDA device here (torch.cuda.is_available() is False)"
    if need == "git":
        if shutil.which("git") is None:
            return "no git here (the DVC steps clone the repository)"
        head = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=ROOT,
                              capture_output=True)
        return None if head.returncode == 0 else \
            f"no commit at HEAD in {ROOT} (the DVC steps clone it)"
    if need == "dvc":
        return None if shutil.which("dvc") and find_spec("dvclive") else \
            "no dvc/dvclive here (bring .whl/ from bench/gpu_wheels.sh)"
    raise ValueError(f"unknown requirement {need!r}; known: {', '.join(REQUIREMENTS)}")


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
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **dict(step.env)})
        try:
            rc = proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=GRACE_S)
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


Report = list[tuple[Step, str]]


def run_steps(todo: list[Step], folder: Path, budget_s: float, retry_failed: bool,
              min_step_s: float = 60.0, unmet: Callable[[str], str | None] = missing,
              after_step: Callable[[Report], None] = lambda report: None) -> Report:
    """Run the steps not yet done, in order, until the budget would cut the next one short.

    A step whose needs ``unmet`` names is skipped and left unmarked (a later machine may have
    them); without CUDA the run stops there. ``after_step`` gets the report after every step
    that ran, so its results can leave the machine before the next one starts.
    """
    folder.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + budget_s
    report: Report = []
    for step in todo:
        current = state(step, folder)
        if current == "done" or (current == "failed" and not retry_failed):
            report.append((step, f"{current} earlier"))
            continue
        left = deadline - time.monotonic()
        if left < min_step_s:
            report.append((step, "not started (budget)"))
            continue
        lacking = {need: why for need in step.needs if (why := unmet(need))}
        if "cuda" in lacking:
            report.append((step, f"stopped: {lacking['cuda']}"))
            break
        if lacking:
            report.append((step, "skipped: " + "; ".join(lacking.values())))
            continue
        (folder / f"{step.name}.failed").unlink(missing_ok=True)
        print(f"[{time.strftime('%H:%M:%S')}] {step.name}: {' '.join(step.argv)}", flush=True)
        outcome = run_step(step, folder, left)
        print(f"[{time.strftime('%H:%M:%S')}] {step.name}: {outcome}", flush=True)
        report.append((step, outcome))
        after_step(report)
    return report


def status_table(report: Report, folder: Path) -> str:
    lines = ["| step | state | seconds | answers |", "|---|---|---|---|"]
    for step, outcome in report:
        path = mark(step, folder)
        seconds = json.loads(path.read_text())["seconds"] if path else "-"
        lines.append(f"| {step.name} | {outcome} | {seconds} | {step.why} |")
    return "\n".join(lines) + "\n"


def publish(out: Path, folders: list[Path]) -> Path:
    """Copy ``folders`` into ``out`` ($OUT on the lent machine) as one results.tar.gz.

    The device tool returns at most 8 files of 16 MiB from $OUT, so one archive holds them all,
    with paths from the repository root (unpack it there). It is written under another name and
    renamed, so a call killed while packing keeps the previous archive whole.
    """
    out.mkdir(parents=True, exist_ok=True)
    part, archive = out / "results.tar.gz.part", out / "results.tar.gz"
    with tarfile.open(part, "w:gz") as tar:
        for folder in folders:
            tar.add(folder, arcname=str(folder.relative_to(ROOT) if folder.is_relative_to(ROOT)
                                        else folder.name))
    part.replace(archive)
    mib = archive.stat().st_size / 2**20
    if mib > OUT_FILE_LIMIT_MIB:
        print(f"warning: {archive} is {mib:.1f} MiB, over the {OUT_FILE_LIMIT_MIB} MiB the "
              "device tool returns", file=sys.stderr, flush=True)
    return archive


def checkpoint(report: Report, todo: list[Step], folder: Path, out: Path | None,
               folders: list[Path]) -> str:
    """Write STATUS.md (the steps not yet reached as their marks say) and, with ``out``, copy
    it and the results there. Returns the status table."""
    rest = [(step, state(step, folder)) for step in todo[len(report):]]
    table = status_table(report + rest, folder)
    status = folder / "STATUS.md"
    status.write_text(f"# GPU session, last run {time.strftime('%Y-%m-%d %H:%M')}\n\n{table}")
    if out is not None:
        publish(out, folders)
        shutil.copy(status, out / "STATUS.md")
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=540.0,
                    help="seconds this run may take (default: one 600 s device call less a "
                         "margin for the wheels, a cut-off step's end and the packing); a step "
                         "running past it is stopped and is the first one run next time")
    ap.add_argument("--out", type=Path, help="copy the results here after every step ($OUT)")
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
    folder = args.folder.resolve()
    folders = [RESULTS] if folder.is_relative_to(RESULTS) else [RESULTS, folder]
    save = functools.partial(checkpoint, todo=todo, folder=folder, out=args.out, folders=folders)
    report = run_steps(todo, folder, args.budget, args.retry_failed,
                       unmet=functools.cache(missing), after_step=save)
    print("\n" + save(report), end="")
    stopped = next((outcome for _, outcome in report if outcome.startswith("stopped: ")), None)
    if stopped:
        sys.exit(f"error: {stopped.removeprefix('stopped: ')}: the steps from here on need a "
                 "GPU; this is the GPU machine's command (bench/README.md)")
    if any(outcome == "failed" for _, outcome in report):
        sys.exit(1)


if __name__ == "__main__":
    main()
