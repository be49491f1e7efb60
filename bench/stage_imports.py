"""CPU-seconds of the stages that build arrays, against the same stages with torch and
torchvision imported first (the reference: what every stage paid before their imports moved
inside the functions that need them).

torchvision's import alone pulls in torch._dynamo (about 1.5 s of CPU); a stage process pays it
at each start, in every `dvc repro` and every test repository. Each stage runs in this
repository on its params.yaml, writing to a temporary folder; best of ``--repeats`` runs.

Usage: python bench/stage_imports.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EAGER = "import runpy, sys, torch, torchvision; sys.argv = sys.argv[1:]; " \
        "runpy.run_path(sys.argv[0], run_name='__main__')"


def stages(out: Path) -> dict[str, list[str]]:
    """{label: the stage's arguments after `python`}."""
    return {"download@shapes": ["stages/download.py", "shapes", str(out / "shapes")],
            "download@digits": ["stages/download.py", "digits", str(out / "digits")]}


def cpu_s(argv: list[str]) -> float:
    """User + system CPU-seconds of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(argv, cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for label, argv in stages(Path(tmp)).items():
            ours = min(cpu_s([sys.executable, *argv]) for _ in range(args.repeats))
            eager = min(cpu_s([sys.executable, "-c", EAGER, *argv]) for _ in range(args.repeats))
            print(f"{label}: {ours:.2f} CPU-s, with torch and torchvision imported first "
                  f"{eager:.2f} CPU-s: {eager / ours:.2f}x", flush=True)


if __name__ == "__main__":
    main()
