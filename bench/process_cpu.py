"""CPU-seconds by kind of Python process (a stage, a DVC command, a study) while a command runs.

bench/suite_time.py charges each test its CPU; this says which processes it went to. Each
process of the virtual environment's Python appends its own CPU (user + system, itself only)
and command line to a log when it exits: a ``.pth`` file in the environment's site-packages
registers the hook while the command runs and is removed after. It acts only where
NORMBENCH_PROCESS_LOG is set, which every process the command starts inherits unless it clears
its environment. A process killed by a signal or ended by ``os._exit`` writes nothing, nor one
under a file size limit below the log's size: the totals are a floor.

The table: per kind, the processes, their CPU-s, the median and the least (a stage that
refuses its input ends in a fraction of its kind's median; in one that works, start-up is most
of a tiny cell's cost: imports).

Usage: python bench/process_cpu.py [--venv .venv] [--log FILE] [-- command ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOG_ENV = "NORMBENCH_PROCESS_LOG"
HOOK = "normbench_process_cpu"  # the module the .pth file imports at every start
HOOK_SOURCE = f'''"""Written by bench/process_cpu.py while a command runs; removed after."""
import atexit, json, os, resource, sys


def _log(path):
    usage = resource.getrusage(resource.RUSAGE_SELF)  # this process only, not its children
    line = json.dumps({{"argv": sys.argv, "cpu_s": usage.ru_utime + usage.ru_stime}}) + "\\n"
    # Never change how a process ends, nor leave half a row: under a file size limit (a test of
    # a full disk) a write would stop at it, then raise; the row is left out instead.
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    try:
        if limit == resource.RLIM_INFINITY or os.path.getsize(path) + len(line) <= limit:
            with open(path, "a") as log:  # one short line, appended: whole among many writers
                log.write(line)
    except OSError:
        pass


if os.environ.get("{LOG_ENV}"):
    atexit.register(_log, os.environ["{LOG_ENV}"])
'''
# DVC commands with subcommands: `dvc exp run` is a kind, `dvc repro` another.
DVC_GROUPS = {"exp", "queue", "stage", "cache", "remote", "config", "plots", "metrics", "params",
              "data", "dag", "experiments"}


def kind(argv: list[str]) -> str:
    """``stages/train``, ``normbench.study``, ``dvc exp run``, ``python -c`` ... of a process's
    ``sys.argv`` (its script's path first; ``-c`` for a command string)."""
    if not argv or argv[0] == "-c":
        return "python -c"
    script = Path(argv[0])
    if script.name == "dvc":  # DVC's console script: the command, without its arguments
        grouped = len(argv) > 1 and argv[1] in DVC_GROUPS
        return " ".join(["dvc", *argv[1:3 if grouped else 2]])
    if script.suffix == ".py" and script.parent.name == "normbench":  # python -m normbench.x
        return f"normbench.{script.stem}"
    if script.suffix == ".py":  # stages/train, bench/machine_pin
        return f"{script.parent.name}/{script.stem}"
    return script.name


def table(rows: list[dict], top: int = 25) -> str:
    """The kinds of process, the costliest first: CPU-s, runs, median and least CPU-s each."""
    by_kind: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        by_kind[kind(row["argv"])].append(row["cpu_s"])
    total = sum(sum(v) for v in by_kind.values())
    lines = [f"{len(rows)} processes, {total:.0f} CPU-s",
             f"{'CPU-s':>8} {'runs':>5} {'median':>7} {'least':>6}  kind"]
    for name, cpu in sorted(by_kind.items(), key=lambda kv: -sum(kv[1]))[:top]:
        lines.append(f"{sum(cpu):8.1f} {len(cpu):5d} {statistics.median(cpu):7.2f} "
                     f"{min(cpu):6.2f}  {name}")
    return "\n".join(lines)


def site_packages(venv: Path) -> Path:
    """Where the environment's Python reads .pth files from at every start."""
    out = subprocess.run([str(venv / "bin" / "python"), "-c",
                          "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--venv", type=Path, default=ROOT / ".venv")
    ap.add_argument("--log", type=Path, help="keep every process's row here (JSON lines)")
    ap.add_argument("--top", type=int, default=25, help="kinds shown, the costliest first")
    ap.add_argument("command", nargs="*", default=["make", "-o", ".venv/.installed", "test"])
    args = ap.parse_args()
    if not (args.venv / "bin" / "python").is_file():
        sys.exit(f"process_cpu: no virtual environment at {args.venv}; run `make setup` first")
    site = site_packages(args.venv)
    hook, pth = site / f"{HOOK}.py", site / f"{HOOK}.pth"
    log = args.log or Path(tempfile.mkstemp(prefix="process-cpu-", suffix=".jsonl")[1])
    log.write_text("")
    hook.write_text(HOOK_SOURCE)
    pth.write_text(f"import {HOOK}\n")  # a .pth line that starts with "import" runs at start-up
    try:
        code = subprocess.run(args.command, env={**os.environ, LOG_ENV: str(log)}).returncode
    finally:
        pth.unlink()
        hook.unlink()
    rows = [json.loads(line) for line in log.read_text().splitlines() if line]
    print(table(rows, args.top))
    if not args.log:
        log.unlink()
    sys.exit(code)


if __name__ == "__main__":
    main()
