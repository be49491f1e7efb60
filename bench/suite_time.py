"""How long a command takes (default `make test`), whether it computes or waits, and which test
modules the CPU went to.

`time make test` undercounts: DVC's queue workers and their experiments are detached from the
command (daemonized), so their CPU never reaches its rusage. Two counts here:

- the whole machine's CPU counters (/proc/stat), before and after: the wall time against the
  CPU-bound floor (busy CPU-seconds / cores). A ratio near 1 means more cores, or less work, is
  the only way to go faster; well above 1, the command waits (polls, sleeps, start-ups). Every
  process on the machine counts: run it on an otherwise idle machine.
- the command's own CPU, robust to other load: this process becomes the child subreaper of
  everything the command starts (prctl), so a detached process is re-parented to it and reaped
  here, with its CPU (wait4's rusage). Under pytest, this file is also a plugin (`-p suite_time`)
  that charges each test the CPU of its worker and of the children it waited for, and names the
  running test in the environment (NORMBENCH_SUITE_TEST) every process it starts inherits, so a
  detached process is charged to the test that started it. A daemon whose environment does not
  name a test (Slurm's, which wipe theirs) is charged to the test that a process below it names
  (its job): a daemon that serves several tests, to the first one found. It prints the slowest
  ten modules and tests, and with --account FILE writes every test's row (JSON lines).

Usage: python bench/suite_time.py [--out FILE] [--account FILE] [-- command ...]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

TICK_S = 1 / os.sysconf("SC_CLK_TCK")  # /proc/stat counts in clock ticks
ACCOUNT_ENV = "NORMBENCH_SUITE_ACCOUNT"  # the folder pytest processes write their test rows to
TEST_ENV = "NORMBENCH_SUITE_TEST"  # the running test's node id, inherited by what it starts
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
SCAN_S = 0.25  # how often re-parented processes are looked up (their environment names the test)
LINGER_S = 10  # how long detached processes may take to end after the command has


def cpu_ticks() -> tuple[int, int]:
    """(busy, idle) clock ticks of the whole machine since boot; iowait counts as idle, and
    steal (a hypervisor running others on these cores) as neither."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq = fields[:7]
    return user + nice + system + irq + softirq, idle + iowait


def rusage_s(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def own_cpu_s() -> float:
    """CPU-seconds of this process and of the children it has waited for."""
    return rusage_s(resource.getrusage(resource.RUSAGE_SELF)) + rusage_s(
        resource.getrusage(resource.RUSAGE_CHILDREN))


# --- the pytest plugin: active only under `suite_time.py`, which sets ACCOUNT_ENV ---------------

@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Around each test where it runs (a pytest-xdist worker, not the controller that reports)."""
    if ACCOUNT_ENV not in os.environ:
        return (yield)
    os.environ[TEST_ENV] = item.nodeid
    wall0, cpu0 = time.monotonic(), own_cpu_s()
    try:
        return (yield)
    finally:
        os.environ.pop(TEST_ENV, None)
        row = {"test": item.nodeid, "wall_s": time.monotonic() - wall0, "cpu_s": own_cpu_s() - cpu0}
        with open(Path(os.environ[ACCOUNT_ENV]) / f"{os.getpid()}.jsonl", "a") as out:
            out.write(json.dumps(row) + "\n")


# --- the runner ---------------------------------------------------------------------------------

def environ_value(pid: int, name: str) -> str | None:
    """The variable ``name`` in a process's environment (None: unset, gone, or not ours)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    prefix = f"{name}=".encode()
    return next((v[len(prefix):].decode(errors="replace") for v in environ
                 if v.startswith(prefix)), None)


def test_of(pid: int) -> str | None:
    """The test a process was started under, from its environment (None: none, or gone)."""
    return environ_value(pid, TEST_ENV)


def parents() -> dict[int, int]:
    """{pid: parent pid} of every process."""
    found = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            found[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])  # after the state
    return found


def orphans(tree: dict[int, int] | None = None) -> list[int]:
    """Processes re-parented to this one (its own child, the command, included)."""
    me = os.getpid()
    return [pid for pid, parent in (tree or parents()).items() if parent == me]


def test_below(pid: int, tree: dict[int, int]) -> str | None:
    """The test that a process running below ``pid`` was started under: a daemon that starts
    with an empty environment (Slurm's step daemon) still runs the test's commands below it."""
    children: dict[int, list[int]] = defaultdict(list)
    for child, parent in tree.items():
        children[parent].append(child)
    below, seen = list(children[pid]), {pid}
    while below:  # breadth first; ``seen``: a pid reused while /proc was read cannot loop
        child = below.pop(0)
        if child not in seen:
            seen.add(child)
            found = test_of(child)
            if found:
                return found
            below.extend(children[child])
    return None


def cpu_so_far_s(pid: int) -> float:
    """CPU-seconds of a running process and of the children it has waited for (0: gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(v) for v in fields[11:15]) * TICK_S  # utime, stime, cutime, cstime


def run_accounted(command: list[str], folder: Path) -> tuple[int, float, dict[str | None, float]]:
    """Run ``command`` as the subreaper of all it starts: (exit code, the CPU-s of the command
    and what it waited for, {test or None: CPU-s of the detached processes it started})."""
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.exit("suite_time: prctl(PR_SET_CHILD_SUBREAPER) failed: "
                 f"{os.strerror(ctypes.get_errno())}")
    bench = str(Path(__file__).resolve().parent)
    env = {**os.environ, ACCOUNT_ENV: str(folder),
           "PYTHONPATH": os.pathsep.join(filter(None, [bench, os.environ.get("PYTHONPATH")])),
           "PYTEST_ADDOPTS": f"{os.environ.get('PYTEST_ADDOPTS', '')} -p suite_time".strip()}
    proc = subprocess.Popen(command, env=env)
    tests: dict[int, str | None] = {proc.pid: None}
    done = threading.Event()

    def scan() -> None:  # a detached process is looked up when it is re-parented, until found
        while not done.wait(SCAN_S):
            tree = parents()
            for pid in orphans(tree):
                # Not the command itself: its CPU is its own (wait4), and every test runs below it.
                if pid != proc.pid and tests.get(pid) is None:
                    try:
                        tests[pid] = test_of(pid) or test_below(pid, tree)
                    except (OSError, ValueError):  # gone meanwhile, or an unreadable environment
                        pass
    threading.Thread(target=scan, daemon=True).start()
    detached: dict[str | None, float] = defaultdict(float)
    code, command_cpu = None, 0.0
    while code is None:
        pid, status, usage = os.wait4(-1, 0)
        if pid == proc.pid:
            code, command_cpu = os.waitstatus_to_exitcode(status), rusage_s(usage)
            proc.returncode = code  # reaped here; Popen must not wait for it again
        else:  # taken off: a later process may get its pid
            detached[tests.pop(pid, None) or test_of(pid)] += rusage_s(usage)
    done.set()
    deadline = time.monotonic() + LINGER_S
    while time.monotonic() < deadline:  # detached processes still ending
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.1)
        else:
            detached[tests.pop(pid, None)] += rusage_s(usage)
    for pid in orphans():  # still running: their CPU so far (a daemon the command left behind)
        detached[tests.get(pid) or test_of(pid)] += cpu_so_far_s(pid)
        print(f"suite_time: process {pid} (started under {tests.get(pid)}) still runs after the "
              "command ended; its CPU so far is counted", file=sys.stderr)
    return code, command_cpu, detached


def account(folder: Path, command_cpu: float, detached: dict[str | None, float],
            keep: Path | None) -> str:
    """The CPU account: totals, the slowest ten modules and the slowest ten tests."""
    rows = [json.loads(line) for f in sorted(folder.glob("*.jsonl"))
            for line in f.read_text().splitlines()]
    by_test = {r["test"]: {**r, "detached_cpu_s": detached.pop(r["test"], 0.0)} for r in rows}
    for r in by_test.values():
        r["total_cpu_s"] = r["cpu_s"] + r["detached_cpu_s"]
    modules: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for r in by_test.values():
        m = modules[r["test"].split("::")[0]]
        m[0] += r["total_cpu_s"]
        m[1] += r["detached_cpu_s"]
        m[2] += r["wall_s"]
    in_tests = sum(r["cpu_s"] for r in by_test.values())
    in_detached = sum(r["detached_cpu_s"] for r in by_test.values())
    untested = sum(detached.values())  # detached, not started under a test (or not seen in time)
    total = command_cpu + in_detached + untested
    mine = rusage_s(resource.getrusage(resource.RUSAGE_SELF))  # the scans, mostly
    lines = [f"CPU account: {total:.0f} CPU-s in the command's own processes, {len(by_test)} "
             f"tests: {in_tests + in_detached:.0f} CPU-s in tests (of which {in_detached:.0f} "
             f"detached), {command_cpu - in_tests:.0f} outside tests (start-up, collection), "
             f"{untested:.0f} detached under no test; this script {mine:.1f} CPU-s",
             "slowest modules: CPU-s (detached), summed test wall s"]
    for name, (cpu, det, wall) in sorted(modules.items(), key=lambda kv: -kv[1][0])[:10]:
        lines.append(f"  {cpu:7.1f} ({det:6.1f}) {wall:7.1f}  {name}")
    lines.append("slowest tests: CPU-s (detached), wall s")
    for r in sorted(by_test.values(), key=lambda r: -r["total_cpu_s"])[:10]:
        lines.append(f"  {r['total_cpu_s']:7.1f} ({r['detached_cpu_s']:6.1f}) "
                     f"{r['wall_s']:7.1f}  {r['test']}")
    if keep:
        keep.write_text("".join(json.dumps(r) + "\n" for r in by_test.values()))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="also append the result line to this file")
    ap.add_argument("--account", type=Path, help="write every test's CPU row here (JSON lines)")
    ap.add_argument("command", nargs="*", default=["make", "test"])
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0]
    busy0, idle0 = cpu_ticks()
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="suite-account-") as folder:
        code, command_cpu, detached = run_accounted(args.command, Path(folder))
        wall = time.monotonic() - start
        busy1, idle1 = cpu_ticks()
        report = account(Path(folder), command_cpu, detached, args.account)
    busy = (busy1 - busy0) * TICK_S
    floor = max(busy / cores, TICK_S)  # at least one tick: a command too short to measure
    line = (f"`{' '.join(args.command)}`: exit {code}, wall {wall:.0f} s; machine busy "
            f"{busy:.0f} CPU-s on {cores} cores (idle {(idle1 - idle0) * TICK_S:.0f} CPU-s), "
            f"CPU-bound floor {floor:.0f} s, wall / floor {wall / floor:.2f}; "
            f"load before {load:.2f}, after {os.getloadavg()[0]:.2f}")
    print(line)
    print(report)
    if args.out:
        with args.out.open("a") as out:
            out.write(line + "\n")
    sys.exit(code)


if __name__ == "__main__":
    main()
