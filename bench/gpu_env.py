"""The machine a GPU session runs on: driver, GPU, cores, Python and the package versions used.

The first step of bench/gpu_session.py. It reports what is missing (nvidia-smi, git, dvc, CUDA)
rather than failing on it: gpu_session.py skips the steps that need what is missing, and this
record says why.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*cmd: str) -> None:
    """Run ``cmd`` with its output in this step's log, or say that it is not installed."""
    if shutil.which(cmd[0]) is None:
        print(f"$ {' '.join(cmd)}: {cmd[0]} is not installed", flush=True)
        return
    print(f"$ {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, cwd=ROOT)


def main() -> None:
    run("nvidia-smi")
    run("git", "--version")
    run("git", "log", "-1", "--format=commit %h %s")  # fails, and says so, without a repository
    run(sys.executable, "-m", "pip", "check")
    mps = shutil.which("nvidia-cuda-mps-control")
    print(f"CUDA MPS control: {mps or 'not installed (the -mps queue steps run without MPS)'}")
    print(f"python {platform.python_version()} on {platform.machine()}, "
          f"{len(os.sched_getaffinity(0))} usable cores of {os.cpu_count()}")
    for package in ("torch", "torchvision", "numpy", "dvc", "dvclive", "pytest"):
        try:
            print(f"{package} {version(package)}")
        except PackageNotFoundError:
            print(f"{package} not installed")
    import torch

    print(f"CUDA available: {torch.cuda.is_available()}", flush=True)
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_properties(0)
        print(f"GPU: {gpu.name}, {gpu.total_memory / 2**30:.1f} GiB, compute capability "
              f"{gpu.major}.{gpu.minor}; CUDA {torch.version.cuda}, "
              f"cuDNN {torch.backends.cudnn.version()}")


if __name__ == "__main__":
    main()
