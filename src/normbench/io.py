"""Writing outputs so that a failed run never leaves a half-written file behind."""

from __future__ import annotations

import glob
import hashlib
import json
import os
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
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


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
