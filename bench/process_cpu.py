"""CPU-seconds by kind of Python process (a stage, a DVC command, a study) while a command runs.

bench/suite_time.py charges each test its CPU; this says which processes it went to. Each
process of the virtual environment's Python that exits normally writes its own CPU (user +
system, itself only, not its children) and command line to a file of its own: a ``.pth`` file
in the environment's site-packages imports the hook where NORMBENCH_PROCESS_LOG is set, which
every process the command starts inherits. The hook is removed when the command ends (Ctrl-C,
SIGTERM and SIGHUP included), and the tool waits for the processes still running under it
(DVC's queue workers linger about 10 s).

Not counted, so the totals are a floor: processes killed by a signal, ended by ``os._exit``
(multiprocessing's fork children, DVC's forked daemons), started with a cleared environment,
or under a file size limit smaller than their row. A child forked without exec is counted
under its parent's kind.

The table: per kind, the runs, their CPU-s, the median and the least (a stage that refuses its
input ends in a fraction of its kind's median; in one that works, start-up is most of a tiny
cell's cost: imports).

Usage: python bench/process_cpu.py [--venv .venv] [--log FILE] [-- command ...]
(run from the repository root; the default command is the test suite without its set-up).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from suite_time import environ_value  # bench/, this script's folder

ROOT = Path(__file__).resolve().parents[1]
LOG_ENV = "NORMBENCH_PROCESS_LOG"  # the folder the processes write their rows to
LINGER_S = 30  # how long processes still running under the command may take to end
HOOK = "normbench_process_cpu"  # the module the .pth file imports where LOG_ENV is set
# Read by every start of the environment's Python: imports nothing more where LOG_ENV is unset.
PTH_LINE = f"import os; os.environ.get({LOG_ENV!r}) and __import__({HOOK!r})\n"
HOOK_SOURCE = f'''"""Written by bench/process_cpu.py while a command runs; removed after."""
import atexit, json, os, resource, sys, time


def _log(folder):
    # Never change how a process ends: nothing raised, nothing printed, no half row (under a
    # file size limit a write stops at it: the row is left out instead).
    try:
        usage = resource.getrusage(resource.RUSAGE_SELF)  # this process only
        row = {{"argv": sys.argv, "orig_argv": sys.orig_argv,
                "cpu_s": usage.ru_utime + usage.ru_stime}}
        line = (json.dumps(row, default=str) + "\\n").encode()
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY and len(line) > limit:
            return
        name = os.path.join(folder, f"{{os.getpid()}}-{{time.monotonic_ns()}}.json")
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except Exception:
        pass


atexit.register(_log, os.environ["{LOG_ENV}"])
'''
# DVC commands with subcommands: `dvc exp run` is a kind, `dvc repro` another.
DVC_GROUPS = {"exp", "experiments", "queue", "stage", "cache", "remote", "plots", "metrics",
              "params", "data", "daemon", "git-hook", "artifacts", "machine"}


def kind(argv: list[str], orig_argv: list[str] = ()) -> str:
    """``stages/train``, ``normbench.study``, ``dvc exp run``, ``python -c <code>`` ... of a
    process, from ``sys.argv`` (its script's path first) and ``sys.orig_argv`` (the interpreter's
    own: a ``-c`` command string, even where the program rewrote ``sys.argv`` to run a script)."""
    for arg, code in zip(orig_argv[1:], orig_argv[2:]):
        if arg == "-c":
            return f"python -c {code.strip().splitlines()[0][:40]}" if code.strip() else "python -c"
        if not arg.startswith("-"):
            break
    if not argv or argv[0] == "-c":
        return "python -c"
    script = Path(argv[0])
    package = script.parent.name if script.name == "__main__.py" else None  # python -m <pkg>
    if script.name == "dvc" or package == "dvc":  # the console script, or DVC's own daemons
        grouped = len(argv) > 1 and argv[1] in DVC_GROUPS
        return " ".join(["dvc", *argv[1:3 if grouped else 2]])
    if package:
        return package
    if script.suffix == ".py" and script.parent.name == "normbench":  # python -m normbench.x
        return f"normbench.{script.stem}"
    if script.suffix == ".py" and script.parent.name:  # stages/train, bench/machine_pin
        return f"{script.parent.name}/{script.stem}"
    return script.stem or script.name


def table(rows: list[dict], top: int = 25) -> str:
    """The kinds of process, the costliest first: CPU-s, runs, median and least CPU-s each."""
    by_kind: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        by_kind[kind(row["argv"], row.get("orig_argv", []))].append(row["cpu_s"])
    ranked = sorted(by_kind.items(), key=lambda kv: -sum(kv[1]))
    lines = [f"{len(rows)} processes, {sum(map(sum, by_kind.values())):.0f} CPU-s",
             f"{'CPU-s':>8} {'runs':>5} {'median':>7} {'least':>6}  kind"]
    for name, cpu in ranked[:top]:
        lines.append(f"{sum(cpu):8.1f} {len(cpu):5d} {statistics.median(cpu):7.2f} "
                     f"{min(cpu):6.2f}  {name}")
    if ranked[top:]:
        rest = [c for _, cpu in ranked[top:] for c in cpu]
        lines.append(f"{sum(rest):8.1f} {len(rest):5d} in {len(ranked) - top} more kinds")
    return "\n".join(lines)


def site_packages(venv: Path) -> Path:
    """Where the environment's Python reads .pth files from at every start."""
    if not (venv / "pyvenv.cfg").is_file():  # never a system Python: it would hook them all
        sys.exit(f"process_cpu: {venv} is no virtual environment (no pyvenv.cfg); run "
                 "`make setup` first, or name one with --venv")
    out = subprocess.run([str(venv / "bin" / "python"), "-c",
                          "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def running_under(folder: Path) -> bool:
    """Whether a process that will write to ``folder`` still runs."""
    return any(environ_value(int(entry.name), LOG_ENV) == str(folder)
               for entry in Path("/proc").iterdir() if entry.name.isdigit())


def run_hooked(command: list[str], venv: Path, folder: Path) -> int:
    """``command``'s exit code (128 + N for a signal), every process writing its row to
    ``folder``; the hook in place only meanwhile."""
    site = site_packages(venv)
    hook, pth = site / f"{HOOK}.py", site / f"{HOOK}.pth"
    try:
        with open(pth, "x") as f:  # one run at a time: another's hook is not removed under it
            f.write("")
    except FileExistsError:
        sys.exit(f"process_cpu: {pth} exists: another run uses this environment, or one was "
                 "killed before it cleaned up; remove it and run again")
    for sig in (signal.SIGTERM, signal.SIGHUP):  # ended from outside: clean up all the same
        signal.signal(sig, lambda number, _: sys.exit(128 + number))
    try:
        hook.write_text(HOOK_SOURCE)
        pth.write_text(PTH_LINE)  # after the hook: no process imports a half-written one
        code = subprocess.run(command, env={**os.environ, LOG_ENV: str(folder)}).returncode
        deadline = time.monotonic() + LINGER_S
        while running_under(folder) and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        pth.unlink(missing_ok=True)
        hook.unlink(missing_ok=True)
        Path(importlib.util.cache_from_source(str(hook))).unlink(missing_ok=True)
    return 128 - code if code < 0 else code


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--venv", type=Path, default=ROOT / ".venv")
    ap.add_argument("--log", type=Path, help="keep every process's row here (JSON lines)")
    ap.add_argument("--top", type=int, default=25, help="kinds shown, the costliest first")
    ap.add_argument("command", nargs="*", default=["make", "-o", ".venv/.installed", "test"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="process-cpu-") as folder:
        code = run_hooked(args.command, args.venv.resolve(), Path(folder))
        texts = [p.read_text() for p in sorted(Path(folder).iterdir())]
    rows = [json.loads(t) for t in texts if t.endswith("\n")]  # a full disk may cut a row
    if len(rows) < len(texts):
        print(f"process_cpu: {len(texts) - len(rows)} rows cut short, left out", file=sys.stderr)
    if args.log:
        args.log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(table(rows, args.top))
    sys.exit(code)


if __name__ == "__main__":
    main()
