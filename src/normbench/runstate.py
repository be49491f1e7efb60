"""The run state of a study, in one place for both executors: what it runs, who runs it, what
was submitted.

- :class:`Experiment`: one DVC experiment of a study (a setting with its seeds).
- :func:`follow`: the executors' polling loop, which Ctrl-C leaves between polls.
- :func:`head_commit`: the commit a study's experiments branch from (and Slurm jobs clone).
- :func:`study_lock`: one study at a time per repository. A second one is told which study
  runs (its pid, start and command) instead of queueing or submitting the same experiments
  again. The lock is an ``flock``: the kernel drops it when its holder dies, even by SIGKILL,
  so a killed study never leaves a stale lock behind.
- :class:`Submitted`: the Slurm job of each experiment, recorded as it is submitted, so that a
  study killed while its jobs run follows them again on the next run instead of resubmitting.

Everything lives in DVC's temp folder of the study repository, which no stage reads.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from normbench.io import write_json
from normbench.registry import ConfigError

STATE_DIR = Path(".dvc") / "tmp" / "study"  # in the study repository


def head_commit(repo: Path) -> str:
    """The full SHA of the repository's HEAD."""
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                          text=True, check=True).stdout.strip()


@dataclass(frozen=True)
class Experiment:
    """One DVC experiment of a study: one setting, with its seeds."""

    norm: str
    weights: str
    seeds: tuple[int, ...]
    params: tuple[str, ...]  # every `-S key=value` it runs with: setting, seeds and extras
    pretrain: str | None = None  # the pretraining norm, for weights: pretrained

    @property
    def name(self) -> str:
        """``<norm>-<weights>[-<pretrain norm>]-<hash>``: the same params, the same name."""
        digest = hashlib.sha1("\n".join(self.params).encode()).hexdigest()[:8]
        return "-".join(p for p in (self.norm, self.weights, self.pretrain, digest) if p)

    @property
    def setting(self) -> str:
        """The setting as compare names it."""
        pretrain = f" pretrain={self.pretrain}" if self.pretrain else ""
        return f"norm={self.norm} weights={self.weights}{pretrain}"

    def set_args(self) -> list[str]:
        """The arguments of `dvc exp run` that make this experiment."""
        return [arg for p in self.params for arg in ("-S", p)]


def follow(poll: Callable[[], bool], poll_s: float) -> None:
    """Call ``poll`` every ``poll_s`` seconds until it returns True.

    Ctrl-C raises KeyboardInterrupt between polls: caught by a handler of our own, it cannot be
    swallowed by a library that a poll calls (DVC's queue, Slurm's commands).
    """
    interrupted = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.set())
    try:
        while not poll() and not interrupted.wait(poll_s):
            pass
        if interrupted.is_set():
            raise KeyboardInterrupt
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def study_lock(repo: Path) -> Iterator[None]:
    """Hold the repository's study lock while the body runs; refuse if another study holds it."""
    folder = repo / STATE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
            raise ConfigError(
                f"a study is already running in {repo.resolve()}: {holder}. Wait for it (run "
                "this command again afterwards: it trains only what is still missing), or stop "
                "it with Ctrl-C in its terminal") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, (f"pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}, "
                       f"`{' '.join(sys.argv)}`\n").encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the kernel does it too if this process is killed


class Submitted:
    """The Slurm job of each experiment name, kept in ``submitted.json`` of the state folder.

    Each record is written (atomically) right after its job is submitted, before anything else
    can go wrong, so a killed study leaves an accurate record.
    """

    def __init__(self, repo: Path) -> None:
        self.path = repo / STATE_DIR / "submitted.json"
        try:
            self.jobs: dict[str, dict] = json.loads(self.path.read_text())
        except FileNotFoundError:
            self.jobs = {}
        except json.JSONDecodeError as e:
            raise ConfigError(f"{self.path} is not valid JSON ({e}); delete it (the jobs it "
                              "recorded are then submitted again)") from None

    def job_id(self, name: str, commit: str) -> str | None:
        """The job submitted for ``name`` at ``commit``, if any (another commit's is no match)."""
        record = self.jobs.get(name)
        return record["job_id"] if record and record["commit"] == commit else None

    def record(self, name: str, commit: str, job_id: str) -> None:
        self.jobs[name] = {"commit": commit, "job_id": job_id}
        write_json(self.path, self.jobs)
