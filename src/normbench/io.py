"""Writing outputs so that a failed run never leaves a half-written file behind."""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import resource
import shutil
import signal
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from normbench.registry import ConfigError


class StageFailed(RuntimeError):
    """A known way for a stage's work to fail (training diverged, torch.compile failed): the
    message says what to change, and :func:`run_main` prints it in one line, no traceback.

    Defined here rather than in train.py, whose errors subclass it, so that this module (which
    every stage imports) takes nothing from the training loop: no import circle.
    """


# Where outputs are written before their one rename, when a stage runs at the root of a DVC
# repository (as DVC runs it): DVC's own temp folder, which no stage reads and no hash covers,
# so a killed cell's half-written folder never changes another stage's dependency.
PARTIAL_DIR = Path(".dvc") / "tmp" / "partial"


def _temporary_home(path: Path) -> tuple[Path, str]:
    """The folder for ``path``'s temporaries and their name prefix (one per output path)."""
    if PARTIAL_DIR.parent.parent.is_dir():
        PARTIAL_DIR.mkdir(parents=True, exist_ok=True)
        if PARTIAL_DIR.stat().st_dev == path.parent.stat().st_dev:  # a rename cannot cross
            key = hashlib.sha1(str(path.absolute()).encode()).hexdigest()[:16]
            return PARTIAL_DIR, f"{key}-{path.name}.partial-"
    return path.parent, f".{path.name}.partial-"  # outside a repository: a hidden sibling


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path for ``path``; on success it replaces ``path`` in one rename.

    Works for files and folders. On failure the temporary is removed and ``path`` is untouched.
    A run killed outright (SIGKILL runs no ``finally``) leaves its temporary behind, in
    :data:`PARTIAL_DIR`: the next write of the same path removes it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    home, prefix = _temporary_home(path)
    for stale in home.glob(glob.escape(prefix) + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=home)) / path.name
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        full = _no_room(tmp, e)
        if full is None:
            raise
        raise StageFailed(f"cannot write {path}: {full}. {path} was not replaced, and dvc.lock and "
                          f"the DVC cache are unchanged (DVC records nothing of a failed stage); "
                          f"make room and run the stage again") from e
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


# What a write that found no room raises: Python says so with an errno; torch.save's C++ writer
# only with a RuntimeError of its own, so then the cause is read off the disk.
NO_ROOM = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
           errno.EFBIG: "a file reached the size limit"}
TORCH_WRITE_FAILED = ("inline_container", "PytorchStreamWriter")  # in torch.save's messages
FULL_BELOW = 2**20  # bytes free under which a failed torch.save is taken for a full disk


def _no_room(tmp: Path, error: OSError | RuntimeError) -> str | None:
    """Why writing ``tmp`` failed for lack of room, with the figures; None if it did not."""
    files = [p for p in [tmp, *tmp.rglob("*")] if p.is_file()] if tmp.exists() else []
    written = sum(p.stat().st_size for p in files)  # bytes, when the write stopped
    largest = max((p.stat().st_size for p in files), default=0)
    free = shutil.disk_usage(tmp.parent).free
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]  # bytes; RLIM_INFINITY: none
    limited = limit != resource.RLIM_INFINITY
    code = error.errno if isinstance(error, OSError) else None
    torch_write = isinstance(error, RuntimeError) and any(
        mark in str(error) for mark in TORCH_WRITE_FAILED)
    if code == errno.EFBIG or (torch_write and limited and largest >= limit):
        why = (f"{NO_ROOM[errno.EFBIG]} of {_mib(limit)} (`ulimit -f`)" if limited else
               f"{NO_ROOM[errno.EFBIG]} of its file system")
    elif code in NO_ROOM or (torch_write and free < FULL_BELOW):
        why = NO_ROOM.get(code, NO_ROOM[errno.ENOSPC])
    else:
        return None
    return (f"{why}; it needs more than the {_mib(written)} written before the write failed, "
            f"and {_mib(free)} are free on its disk")


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def read_json(path: str | Path, what: str, fix: str) -> Any:
    """Read a JSON input; a missing or broken file says what it is and how to rebuild it."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} not found; {fix}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{what} {path} is not valid JSON ({e}); {fix}") from None


def _terminated(signum: int, frame) -> None:
    raise SystemExit(128 + signum)


def run_main(main: Callable[[], None]) -> None:
    """Run a stage's main(); a known failure prints one clear line instead of a traceback.

    SIGTERM (what `scancel`, `kill` and a queue's kill send) exits through every ``finally``,
    so :func:`atomic_path` removes its temporaries and no tracked folder is left changed.
    """
    signal.signal(signal.SIGTERM, _terminated)
    try:
        main()
    except (ConfigError, StageFailed) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
