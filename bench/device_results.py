"""Where the benchmarks write: rows (.jsonl) and a summary (.md) per benchmark and device.

Every row names the device it was measured on and the command that produced it, so a committed
number can be traced and re-measured.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import torch
from normbench.gpushare import BENCH_RESULTS as RESULTS, slug  # noqa: F401 (declared there)


def device_label(device: torch.device) -> str:
    """``NVIDIA H100 80GB HBM3``, or ``CPU x86_64, 2 threads``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def provenance(script: str) -> dict:
    """What every row records besides its numbers: when, with which torch, by which command."""
    return {"torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
            "command": " ".join([f"python bench/{script}", *sys.argv[1:]])}


def append_row(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
