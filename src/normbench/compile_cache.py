"""A compile cache that travels: torch.compile's artifacts per model, shape and settings.

torch keeps what it compiled in a cache of its own under /tmp: a fresh GPU machine, or a cell
on another node, starts with nothing and compiles every graph again (minutes for densenet121).
Here each cell's graphs are saved as one file (``torch.compiler.save_cache_artifacts``) after
its first training epoch, under a name made of everything the graphs depend on (``CacheKey``),
and loaded (``load_cache_artifacts``) when a cell with the same key starts: torch then finds its
graphs in its own caches and only traces the model (``compile_cache: warm`` in the cell's
timing, with the cache hits counted by torch).

The first cell of a key compiles while holding a lock on it: cells started beside it (a study's
queue workers) wait, then load its file instead of compiling the same graphs at once, each on
every core. Files live in ``.compile-cache/`` at the repository root (git- and DVC-ignored), or
in the absolute folder ``$NORMBENCH_COMPILE_CACHE``, which a study sets for its queued cells
(each runs in a temporary copy of the workspace) and ``bench/gpu_session.sh`` for its steps.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from normbench.io import atomic_path
from normbench.registry import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from normbench.arrays import Arrays
    from normbench.config import SpeedConfig

CACHE_DIR = Path(".compile-cache")  # relative to the repository root, where DVC runs stages
CACHE_ENV = "NORMBENCH_COMPILE_CACHE"  # an absolute folder that replaces CACHE_DIR
LOCK_WAIT_S = 900.0  # the longest a cell waits for another's first compile of its key (s)
# torch's counters of its compile caches: (counter group, hit key, miss key) per cache.
COUNTERS = {"fxgraph": ("inductor", "fxgraph_cache_hit", "fxgraph_cache_miss"),
            "aot_autograd": ("aot_autograd", "autograd_cache_hit", "autograd_cache_miss")}


def cache_folder() -> Path:
    """Where cache files are read and written."""
    chosen = os.environ.get(CACHE_ENV)
    if chosen and not Path(chosen).is_absolute():  # it would land in a temporary workspace
        raise ConfigError(f"{CACHE_ENV} must be an absolute path (a queued cell runs in a "
                          f"temporary copy of the workspace), got {chosen}")
    return Path(chosen) if chosen else CACHE_DIR


@dataclass(frozen=True)
class CacheKey:
    """Everything a cell's compiled graphs depend on; cells with equal keys share a file."""

    model: str  # the architecture: class name and a hash of every parameter's name and shape
    classes: int  # the head's outputs
    image: tuple[int, int, int]  # channels, height, width
    batch: int  # the train graph's batch
    eval_batch: int  # the eval graph's batch
    amp: str
    compile: str
    torch: str
    device: str  # the GPU's name, or "cpu"

    def name(self) -> str:
        """A file name that a person can read, unique per key."""
        digest = hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()
        c, h, w = self.image
        return (f"{self.model.split(':')[0]}-{self.classes}c-{h}x{w}-b{self.batch}-"
                f"e{self.eval_batch}-{self.amp}-{self.compile}-{digest[:10]}")


def architecture(model: nn.Module) -> str:
    """``resnet:3f2a9c01``: the model's class and a hash of its parameters' names and shapes
    (resnet18 and resnet50 differ; so do two head sizes)."""
    shapes = " ".join(f"{name}:{tuple(p.shape)}" for name, p in model.state_dict().items())
    return f"{type(model).__name__.lower()}:{hashlib.sha1(shapes.encode()).hexdigest()[:8]}"


def cell_key(model: nn.Module, classes: int, image: tuple[int, int, int], batch: int,
             eval_batch: int, speed: SpeedConfig, device: torch.device) -> CacheKey:
    import torch

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return CacheKey(architecture(model), classes, tuple(image), batch, eval_batch, speed.amp,
                    speed.compile, torch.__version__, name)


def cache_counts() -> dict[str, int]:
    """torch's hit and miss counts of its compile caches, so far in this process."""
    from torch._dynamo.utils import counters

    return {f"{cache}_{kind}": counters[group][key]
            for cache, (group, hit, miss) in COUNTERS.items()
            for kind, key in (("hits", hit), ("misses", miss))}


def _forget_recorded_artifacts() -> None:
    """Start this cell's record of artifacts afresh: save_cache_artifacts returns everything
    recorded in the process, and a process may compile several models (bench/train_speed.py)."""
    try:
        from torch.compiler._cache import CacheArtifactManager

        CacheArtifactManager.clear()
    except (ImportError, AttributeError):  # another torch: its files hold a little more
        pass


def for_cell(model: nn.Module, arrays: Arrays, batches: tuple[int, int], speed: SpeedConfig,
             device: torch.device, label: str | None = None) -> CompileCache | None:
    """The cache of a cell that compiles its model (None for eager and captured cells): its
    two graphs take ``batches`` = (train batch, eval batch) images, as the cell runs them.
    ``label`` (a model's registry name) goes into the file's record, for people."""
    if speed.compile in ("none", "captured"):
        return None
    height, width, channels = arrays.train.images.shape[1:]
    key = cell_key(model, len(arrays.classes), (channels, height, width), *batches, speed,
                   device)
    return CompileCache(key, label=label)


_HELD: dict[Path, IO] = {}  # this process's locks: a cell that died in it leaves its lock here


class CompileCache:
    """One cell's use of the cache: ``start()`` before its first compile, ``finish()`` once
    its graphs are built (after the first training epoch)."""

    def __init__(self, key: CacheKey, folder: Path | None = None,
                 label: str | None = None) -> None:
        self.key, self.label = key, label
        self.folder = cache_folder() if folder is None else folder
        self.path = self.folder / f"{key.name()}.bin"
        self.state: str | None = None  # "warm" (loaded a file) or "cold", once started
        self.wait_s = 0.0  # seconds spent waiting for another cell's first compile
        self._lock: IO | None = None
        self._counts: dict[str, int] = {}

    def start(self) -> None:
        """Load this key's file; without one, take the key's lock first (another cell may be
        compiling it: wait for its file rather than compile the same graphs beside it)."""
        self._counts = cache_counts()
        _forget_recorded_artifacts()
        if not self._load():
            t0 = time.monotonic()
            self._lock = self._acquire()
            self.wait_s = time.monotonic() - t0
            if self._load():  # written while this cell waited
                self._release()
        self.state = "warm" if self._lock is None else "cold"

    def finish(self) -> None:
        """Save this cell's graphs if it compiled them, and let the waiting cells go on."""
        if self._lock is None:
            return
        try:
            import torch

            saved = torch.compiler.save_cache_artifacts()
            if saved is not None:  # None: nothing was compiled (a backend of the tests)
                artifacts, info = saved
                with atomic_path(self.path) as tmp:
                    tmp.write_bytes(artifacts)
                kinds = getattr(info, "artifacts", {})  # {kind: [key, ...]}
                with atomic_path(self.path.with_suffix(".json")) as tmp:
                    tmp.write_text(json.dumps({
                        **asdict(self.key), "label": self.label, "bytes": len(artifacts),
                        "saved": time.strftime("%Y-%m-%d %H:%M:%S"),
                        "artifacts": {kind: len(keys) for kind, keys in kinds.items()}},
                        indent=1) + "\n")
        except (OSError, RuntimeError) as e:  # the cell's results do not depend on it
            print(f"warning: the compile cache {self.path} was not saved: {e}", flush=True)
        finally:
            self._release()

    def abandon(self) -> None:
        """This cell will not compile after all (compilation failed): release the key."""
        self._release()

    def report(self) -> dict:
        """What a cell's timing records: cold or warm, the wait, torch's cache hits and misses."""
        now = cache_counts()
        return {"compile_cache": self.state, "compile_cache_wait_s": round(self.wait_s, 1),
                **{k: now[k] - self._counts.get(k, 0) for k in now}}

    def _load(self) -> bool:
        if not self.path.is_file():
            return False
        import torch

        try:
            info = torch.compiler.load_cache_artifacts(self.path.read_bytes())
        except (OSError, RuntimeError) as e:
            info, why = None, str(e)
        else:
            why = "torch could not read it"
        if info is None:  # unreadable (another torch wrote it): compile, and overwrite it
            print(f"warning: {self.path} could not be loaded ({why}); compiling anew",
                  flush=True)
            return False
        return True

    def _acquire(self) -> IO:
        self.folder.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_suffix(".lock")
        stale = _HELD.pop(lock_path, None)
        if stale is not None:  # an earlier cell of this process stopped without finishing
            stale.close()
        lock = open(lock_path, "a")
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:  # its holder hangs: compile without it
                    print(f"warning: {lock_path} still locked after {LOCK_WAIT_S:.0f} s; "
                          "compiling without waiting", flush=True)
                    break
                time.sleep(1.0)
        _HELD[lock_path] = lock
        return lock

    def _release(self) -> None:
        if self._lock is not None:
            _HELD.pop(Path(self._lock.name), None)
            self._lock.close()  # closing drops the flock
            self._lock = None
