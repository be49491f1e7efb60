"""Which GPU a cell trains on: chosen when its process starts, never by a param.

A param would enter every train cell's hash, so moving a cell to another GPU would retrain it.
Instead each cell process claims the visible GPU with the fewest normbench cells on it, so
`dvc queue start -j 8` on an 8-GPU node puts one cell on each GPU instead of eight on the first.

Claims are files in a per-user folder, made under a lock: eight workers that start in the same
second see each other's claims, where a look at free memory would show them all the same idle
GPU 0. A claim names the card by UUID, so processes with different ``CUDA_VISIBLE_DEVICES``
(a Slurm job's share of the node, say) count the same card the same way, and it names the
process that holds it, so a killed cell's claim stops counting.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    import torch

# Per user: another user's folder may not be writable, and their load shows in used memory.
CLAIMS = Path(tempfile.gettempdir()) / f"normbench-gpu-claims-{os.getuid()}"


@dataclass(frozen=True)
class Gpu:
    ordinal: int  # index among this process's visible devices: it trains on cuda:<ordinal>
    uuid: str  # the card's identity, the same in every process whatever it sees
    used_mib: float | None  # memory in use on the card by anyone (NVML); None if unknown


def visible_gpus() -> list[Gpu]:
    """The CUDA devices this process may use, in ``CUDA_VISIBLE_DEVICES`` order."""
    import torch  # here, not at the top: claiming from a given list needs none (seconds of CPU)

    return [Gpu(i, str(torch.cuda.get_device_properties(i).uuid), _used_mib(i))
            for i in range(torch.cuda.device_count())]


def _used_mib(ordinal: int) -> float | None:
    """Memory in use on a card, read through NVML without creating a CUDA context on it."""
    import torch

    try:  # torch maps the ordinal through CUDA_VISIBLE_DEVICES; it needs nvidia-ml-py
        return torch.cuda.device_memory_used(ordinal) / 2**20
    except Exception:  # no NVML library or binding, or a torch without this function
        return None


def pick(gpus: list[Gpu], cells: Mapping[str, int]) -> Gpu:
    """The GPU with the fewest normbench cells; ties: the least memory in use, then the first."""
    if not gpus:
        raise ValueError("no GPU to choose from")
    return min(gpus, key=lambda g: (cells.get(g.uuid, 0), g.used_mib or 0.0, g.ordinal))


def _started(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot), None if it does not exist.

    A pid alone could be reused by an unrelated process after the cell died.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:  # no /proc (macOS): whether the pid exists at all is all we can tell
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "?"
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the name in brackets may hold spaces


def live_claims(folder: Path) -> dict[str, int]:
    """Cells per GPU UUID whose process still runs; claims of dead processes are removed."""
    cells: dict[str, int] = {}
    for path in folder.glob("*.claim"):
        uuid, pid = path.stem.rsplit(".", 1)
        started = _started(int(pid))
        try:
            held = started is not None and started in ("?", path.read_text())
        except FileNotFoundError:  # its process ended while we looked
            continue
        if not held:
            path.unlink(missing_ok=True)
            continue
        cells[uuid] = cells.get(uuid, 0) + 1
    return cells


def claim_gpu(gpus: list[Gpu] | None = None, folder: Path | None = None) -> Gpu:
    """Claim the least-loaded visible GPU for this process, until it exits."""
    gpus = visible_gpus() if gpus is None else gpus
    folder = CLAIMS if folder is None else folder
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        chosen = pick(gpus, live_claims(folder))
        path = folder / f"{chosen.uuid}.{os.getpid()}.claim"
        tmp = path.with_suffix(".tmp")  # whole or absent, for a reader that takes no lock
        tmp.write_text(_started(os.getpid()) or "?")
        os.replace(tmp, path)
    atexit.register(path.unlink, missing_ok=True)
    return chosen


def place_cell() -> torch.device:
    """The CUDA device this process trains on, made its current device."""
    import torch

    gpu = claim_gpu()
    torch.cuda.set_device(gpu.ordinal)  # stray allocations (cuBLAS workspaces) land there too
    return torch.device("cuda", gpu.ordinal)
