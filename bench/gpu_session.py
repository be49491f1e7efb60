"""The whole GPU measurement, step by step, resumable: what runs on a lent GPU machine.

Runs each step below in order as its own process, with its output in
bench/results/gpu-session/<step>.log. A step that finishes is marked <step>.done and is not run
again; one that fails is marked <step>.failed and skipped until --retry-failed; one cut off (by
its own time cap or by the run's --budget, seconds) leaves no mark, so the next run starts
there. Every step's numbers land in bench/results/ (the scripts' own .jsonl/.md files), so the
folder can be committed and a later session, on a fresh machine, resumes where this one stopped.

Fitted to the lent machine (bench/README.md): one call runs at most 600 s, so the default budget
is 540 s; only what is under $OUT comes back, so with --out the whole bench/results/ is packed
there after every step (a call killed at its limit keeps what its finished steps wrote), with
the compile cache the steps built (normbench.compile_cache), one archive per model, so that the
next machine can start warm (--cache-in). The steps are in order of value, each capped in time,
and every speed step caps its loops' warm-up (bench/train_speed.py --warmup-cap): the first call
alone gives the reference, captured and fast rows of resnet18 and densenet121 at 32 px, then
`pytest -m gpu`. Every step gets an empty inductor cache of its own: its warm-up is what a fresh
machine with this session's compile cache gets. A step that needs what this machine lacks (git
with a commit, dvc) is skipped and left unmarked; without CUDA the run stops at the first step
that needs it.

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
import tempfile
import time
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SESSION = RESULTS / "gpu-session"
PY = sys.executable
sys.path.insert(0, str(ROOT / "src"))
from normbench.compile_cache import CACHE_DIR, CACHE_ENV  # noqa: E402

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
# What the device tool returns from $OUT: files of at most 16 MiB, 8 files, 64 MiB in all.
OUT_FILE_LIMIT_MIB = 16
OUT_FILES, OUT_TOTAL_MIB = 8, 64
# The headline steps' warm-up caps (s): a loop compiling longer is cut and its row says so, so
# that both headline models' rows and the CUDA tests fit one 540 s call from a cold start.
WARMUP_CAP_S = {"resnet18": 60, "densenet121": 110}
# Speed steps: seconds of timed training per loop (three windows), and train images per epoch
# at 32 px (densenet121's seed-style loop takes ~6 s per 25,000 images: half as many).
SPEED_SECONDS = 6
SPEED_IMAGES = {"densenet121": 12_500, "densenet161": 12_500}
# What a step may need beyond python and torch (``missing`` checks each).
REQUIREMENTS = ("cuda", "git", "dvc")


@dataclass(frozen=True)
class Step:
    name: str
    argv: tuple[str, ...]
    why: str  # which point of the measurement it answers
    needs: tuple[str, ...] = ("cuda",)  # names in REQUIREMENTS
    env: tuple[tuple[str, str], ...] = ()  # environment variables set for this step only
    cap_s: float = 600.0  # the most this step may run (s), whatever budget is left


def speed(model: str, size: int, *loops: str, warmup_cap: float | None = None,
          seconds: float = SPEED_SECONDS) -> tuple[str, ...]:
    # Half of CIFAR's images per epoch at 32 px (densenets: a quarter) and the same pixels at
    # 64 px: hundreds of steps per timed epoch.
    images = SPEED_IMAGES.get(model, 25_000) * 32 * 32 // (size * size)
    return (PY, "bench/train_speed.py", "--models", model, "--size", str(size),
            "--images", str(images), "--test-images", str(images // 5),
            "--seconds", str(seconds),
            *(("--loops", *loops) if loops else ()),
            *(("--warmup-cap", str(warmup_cap)) if warmup_cap else ()))


def queue(name: str, model: str, jobs: int, why: str, mps: bool = False,
          cap_s: float = 600.0) -> Step:
    # queue_speed.py runs the cells as a study does (normbench.gpushare.sharing): each its
    # share of inductor's compile workers, MPS with --mps.
    argv = (PY, "bench/queue_speed.py", "--jobs", str(jobs), "--model", model, *CELL_DATA,
            "--set", f"train.epochs={CELL_EPOCHS[model]}", *(("--mps",) if mps else ()))
    return Step(name, argv, why, ("cuda", "git", "dvc"), cap_s=cap_s)


def steps() -> list[Step]:
    """In order of value: the first call alone gives the headline (the machine, then resnet18
    and densenet121 at 32 px: seed-style, captured and fast, warm-ups capped), then the CUDA
    tests, then warm starts from the compile cache, then the rest. Caps in seconds."""
    rest = [m for m in MODELS if m not in HEADLINE]
    headline_caps = {"resnet18": 150, "densenet121": 220}
    return [
        Step("env", (PY, "bench/gpu_env.py"), "the machine, its driver and the versions used",
             needs=(), cap_s=60),
        # fast before captured: a capture that fails can leave the CUDA context unusable.
        *[Step(f"speed-32-{m}", speed(m, 32, "reference", "fast", "captured",
                                      warmup_cap=WARMUP_CAP_S[m]),
               "1, 2: img/s, captured and fast vs seed-style, 32 px (the headline)",
               cap_s=headline_caps[m]) for m in HEADLINE],
        Step("gpu-tests", (PY, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                           "-rA", "--durations=0"),
             "3: CUDA checks: two graphs, padded eval, captured = uncaptured, placement",
             cap_s=300),
        # A fresh process with an empty inductor cache: what the next cell, or the next
        # machine, gets from the compile cache. No warm-up cap: a model the headline step cut
        # off compiles here to the end, so the next machine has its cache.
        *[Step(f"warm-32-{m}", speed(m, 32, "fast", seconds=3),
               "2: the fast loop's warm-up from the compile cache (cold if the cache lacks it)",
               cap_s=400) for m in HEADLINE],
        *[Step(f"speed-32-{m}", speed(m, 32, "reference", "fast", "captured", warmup_cap=300),
               "1, 5: img/s, seed-style vs captured vs fast, 32 px", cap_s=450) for m in rest],
        *[Step(f"plain-32-{m}", speed(m, 32, "plain"), "1: img/s of the plain loop, 32 px",
               cap_s=120) for m in HEADLINE],
        *[queue(f"cell-{m}", m, 1, "3, 4: a real cell through DVC; -j 1 baseline")
          for m in MODELS],
        *[Step(f"parity-{d}", (PY, "bench/parity.py", "--dataset", d, "--seeds", "1", "2", "3",
                               "4", "5"), "3: fast vs plain fp32 accuracy, 5 seeds")
          for d in ("shapes", "digits")],
        # cell-resnet18 is -j 1 without MPS.
        *[queue(f"queue-resnet18-j{n}{'-mps' if mps else ''}", "resnet18", n,
                "4: cells per GPU" + (", MPS" if mps else ""), mps=mps)
          for n in (1, 2, 4, 8) for mps in (False, True) if n > 1 or mps],
        *[Step(f"speed-64-{m}", speed(m, 64, warmup_cap=300), "2, 5: img/s at 64 px "
               "(Tiny-ImageNet)", cap_s=500) for m in MODELS],
        *[queue(f"queue-densenet121-j{n}", "densenet121", n, "4: cells per GPU")
          for n in (2, 4)],
        Step("grid-cost", (PY, "bench/grid_cost.py"),
             "5: GPU-hours of the seed grid and the mismatch recipe", needs=(), cap_s=60),
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
    limit = min(seconds, step.cap_s)
    # torch's own compile caches empty for every step: what it does not compile comes from the
    # compile cache (normbench.compile_cache), as on a fresh machine.
    inductor = Path(tempfile.mkdtemp(prefix=f"inductor-{step.name}-"))
    with log.open("a") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(step.argv)}\n")
        out.flush()
        # A session of its own, so a cut-off step is stopped with everything it started.
        proc = subprocess.Popen(step.argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1",
                                     "TORCHINDUCTOR_CACHE_DIR": str(inductor), **dict(step.env)})
        try:
            rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            why = "its cap" if limit == step.cap_s else "time budget"
            out.write(f"=== cut off after {time.time() - start:.0f} s ({why})\n")
            return "cut off"
        finally:
            shutil.rmtree(inductor, ignore_errors=True)
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


def take_cache_in(source: Path, cache: Path) -> list[str]:
    """Copy a carried compile cache into this session's: its files (``*.bin`` with their
    ``*.json`` records) and the archives publish_cache writes (``compile-cache-*.tar.gz``),
    unpacked. Returns what was taken."""
    if not source.is_dir():
        return []
    cache.mkdir(parents=True, exist_ok=True)
    taken = []
    for path in sorted(source.iterdir()):
        if path.suffix in (".bin", ".json") and path.resolve().parent != cache.resolve():
            shutil.copy2(path, cache / path.name)
            taken.append(path.name)
        elif path.name.startswith("compile-cache-") and path.name.endswith(".tar.gz"):
            with tarfile.open(path) as tar:
                members = [m for m in tar.getmembers()
                           if m.isfile() and Path(m.name).suffix in (".bin", ".json")]
                for member in members:
                    member.name = Path(member.name).name  # flat, never outside the folder
                tar.extractall(cache, members=members)
            taken.append(path.name)
    return taken


def cache_groups(cache: Path) -> dict[str, list[Path]]:
    """The compile cache's files by model: a record's label (bench/train_speed.py names its
    model) or else its architecture; seed models first, in MODELS order."""
    groups: dict[str, list[Path]] = {}
    for record in sorted(cache.glob("*.json")):
        binary = record.with_suffix(".bin")
        if binary.is_file():
            key = json.loads(record.read_text())
            name = key.get("label") or key["model"].replace(":", "-")
            groups.setdefault(name, []).extend([binary, record])
    order = {m: i for i, m in enumerate(MODELS)}
    return dict(sorted(groups.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def publish_cache(out: Path, cache: Path) -> list[str]:
    """Pack the compile cache into ``out`` as one ``compile-cache-<model>.tar.gz`` per model,
    seed models first, while they fit what the device tool returns beside results.tar.gz and
    STATUS.md (8 files, 16 MiB each, 64 MiB in all). Returns one line per model: kept or not."""
    used = sum(p.stat().st_size for p in out.iterdir()
               if p.is_file() and not p.name.startswith("compile-cache-")) / 2**20
    files_left, room = OUT_FILES - 2, OUT_TOTAL_MIB - used
    for stale in out.glob("compile-cache-*"):
        stale.unlink()
    lines = []
    for model, paths in cache_groups(cache).items():
        archive = out / f"compile-cache-{model}.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            for path in paths:
                tar.add(path, arcname=path.name)
        mib = archive.stat().st_size / 2**20
        if mib > OUT_FILE_LIMIT_MIB or mib > room or files_left == 0:
            archive.unlink()
            lines.append(f"- {model}: {mib:.1f} MiB packed, NOT kept (over what comes back: "
                         f"{OUT_FILE_LIMIT_MIB} MiB a file, {room:.1f} MiB and {files_left} "
                         "files left)")
            continue
        room, files_left = room - mib, files_left - 1
        lines.append(f"- {model}: kept, {archive.name}, {mib:.1f} MiB ({len(paths) // 2} graph "
                     "sets)")
    return lines


def checkpoint(report: Report, todo: list[Step], folder: Path, out: Path | None,
               folders: list[Path], cache: Path | None = None) -> str:
    """Write STATUS.md (the steps not yet reached as their marks say) and, with ``out``, copy
    it, the results and the compile cache there. Returns the status table."""
    rest = [(step, state(step, folder)) for step in todo[len(report):]]
    table = status_table(report + rest, folder)
    status = folder / "STATUS.md"
    status.write_text(f"# GPU session, last run {time.strftime('%Y-%m-%d %H:%M')}\n\n{table}")
    if out is not None:
        publish(out, folders)
        shutil.copy(status, out / "STATUS.md")
        if cache is not None and cache.is_dir():
            kept = publish_cache(out, cache)
            with status.open("a") as f:
                f.write("\n## Compile cache (take it in next time with --cache-in)\n\n"
                        + ("\n".join(kept) or "- empty") + "\n")
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
    ap.add_argument("--cache-in", type=Path, metavar="FOLDER",
                    help="a compile cache to start from: the compile-cache-*.tar.gz files an "
                         "earlier run left in its --out, or a cache folder's *.bin and *.json")
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
    # Every step's cells and loops share one compile cache, at an absolute path (the DVC steps
    # run in clones and in DVC's temporary workspaces).
    os.environ.setdefault(CACHE_ENV, str((ROOT / CACHE_DIR).resolve()))
    cache = Path(os.environ[CACHE_ENV])
    if args.cache_in is not None:
        taken = take_cache_in(args.cache_in, cache)
        print(f"compile cache: {len(taken)} files taken in from {args.cache_in}"
              if taken else f"compile cache: nothing in {args.cache_in}: starting cold",
              flush=True)
    save = functools.partial(checkpoint, todo=todo, folder=folder, out=args.out, folders=folders,
                             cache=cache)
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
