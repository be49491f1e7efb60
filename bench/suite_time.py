"""How long a command takes (default `make test`), and whether it computes or waits.

`time make test` undercounts: DVC's queue workers and their experiments are detached from the
command (daemonized), so their CPU never reaches its rusage. This reads the whole machine's CPU
counters (/proc/stat) instead, before and after, and prints the wall time against the CPU-bound
floor (busy CPU-seconds / cores): a ratio near 1 means more cores, or less work, is the only way
to go faster; a ratio well above 1 means the command waits (polls, sleeps, start-ups). Run it on
an otherwise idle machine: every process counts.

Usage: python bench/suite_time.py [--out FILE] [-- command ...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

TICK_S = 1 / os.sysconf("SC_CLK_TCK")  # /proc/stat counts in clock ticks


def cpu_ticks() -> tuple[int, int]:
    """(busy, idle) clock ticks of the whole machine since boot; iowait counts as idle, and
    steal (a hypervisor running others on these cores) as neither."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq = fields[:7]
    return user + nice + system + irq + softirq, idle + iowait


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="also append the result line to this file")
    ap.add_argument("command", nargs="*", default=["make", "test"])
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0]
    busy0, idle0 = cpu_ticks()
    start = time.monotonic()
    code = subprocess.call(args.command)
    wall = time.monotonic() - start
    busy1, idle1 = cpu_ticks()
    busy = (busy1 - busy0) * TICK_S
    floor = max(busy / cores, TICK_S)  # at least one tick: a command too short to measure
    line = (f"`{' '.join(args.command)}`: exit {code}, wall {wall:.0f} s; machine busy "
            f"{busy:.0f} CPU-s on {cores} cores (idle {(idle1 - idle0) * TICK_S:.0f} CPU-s), "
            f"CPU-bound floor {floor:.0f} s, wall / floor {wall / floor:.2f}; "
            f"load before {load:.2f}")
    print(line)
    if args.out:
        with args.out.open("a") as out:
            out.write(line + "\n")
    sys.exit(code)


if __name__ == "__main__":
    main()
