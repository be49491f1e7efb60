"""The local executor of a study: DVC's own queue on this machine.

`dvc exp run --queue` for each experiment, `dvc queue start -j N`, then the queue's state and
each running experiment's log, read through DVC's API, as one line per change.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from normbench import startshare
from normbench.eta import Eta
from normbench.machine import CPU_THREADS
from normbench.registry import ConfigError
from normbench.runstate import Experiment, follow, head_commit

if TYPE_CHECKING:
    from dvc.repo.experiments.queue.celery import LocalCeleryQueue

_STAGE = re.compile(r"^Running stage '([^']+)'|^Stage '([^']+)' is cached", re.M)
_EPOCHS = re.compile(r"^\S+: norm=.* weights=.* epochs=(\d+)", re.M)  # norm may have spaces
_EPOCH = re.compile(r"^\s+epoch\s+(\d+)\s+test_acc", re.M)


def progress(log: str) -> str:
    """Where an experiment's log says it is, e.g. ``train@resnet18-digits-1 epoch 3/8``."""
    stages = list(_STAGE.finditer(log))
    if not stages:
        return "starting"
    last = stages[-1]
    if last.group(2):
        return f"{last.group(2)} restored from the run-cache"
    stage = last.group(1)
    tail = log[last.end():]
    epochs, epoch = _EPOCHS.search(tail), list(_EPOCH.finditer(tail))
    if not stage.startswith("train@") or not epochs:
        return stage
    return f"{stage} epoch {epoch[-1].group(1) if epoch else 0}/{epochs.group(1)}"


def train_cells(log: str, succeeded: bool) -> tuple[str | None, list[str]]:
    """The cell an experiment's log shows training (None: none) and the cells it has finished:
    restored from the run-cache, or followed by another stage, or all once it has succeeded."""
    stages = [(m.group(1) or m.group(2), bool(m.group(2))) for m in _STAGE.finditer(log)]
    running, finished = None, []
    for i, (stage, cached) in enumerate(stages):
        if stage.startswith("train@"):
            if cached or succeeded or i < len(stages) - 1:
                finished.append(stage.removeprefix("train@"))
            else:
                running = stage.removeprefix("train@")
    return running, finished


class Task(NamedTuple):
    name: str
    status: str  # Queued | Running | Success | Failed (DVC's queue states)
    rev: str  # DVC's stash revision of the task: its log folder and its process are named by it
    log: Path | None = None  # the experiment's output, once it has started
    pid: int | None = None  # its process (`dvc exp exec-run`), once it has started


# DVC's queue states as the study shows them, the same words as the Slurm executor's.
SHOWN = {"Queued": "queued", "Running": "running", "Success": "done", "Failed": "failed"}
LOST = "lost: its queue worker was killed"
LOST_POLLS = 2  # polls in a row that find a task lost before it counts as lost (a task can end,
                # and its worker exit, between the two reads of one poll)
WORKERLESS_POLLS = 3  # polls in a row with work queued and no worker before the queue restarts
FORGET_TRIES = 5  # reads of DVC's queue before a lost task's removal is given up
BUSY = re.compile(r"is busy, it is being blocked by|Unable to acquire lock")  # DVC's lock errors
BUSY_S = 60.0  # how long a dvc command is tried again while a lock it needs is held (s)


def queue_tasks(repo: Path) -> dict[str, Task]:
    """The newest queue task of every experiment name, from DVC's queue."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo  # heavy: only the local executor needs it

    tasks: dict[str, Task] = {}
    with Repo(str(repo)) as dvc_repo:
        queue = dvc_repo.experiments.celery_queue
        try:
            entries = queue.status()
        except DvcException as e:
            if not INVALID_TASK.search(str(e)) or not _repair(queue):
                raise
            entries = queue.status()
        for entry in sorted(entries, key=lambda e: e["timestamp"]):
            task = Task(entry["name"], entry["status"], entry["rev"])
            with contextlib.suppress(KeyError):  # not started yet
                info = queue.proc[entry["rev"]]
                task = task._replace(log=Path(info.stdout), pid=info.pid)
            tasks[entry["name"]] = task
    return tasks


def lost(task: Task, workers: list[int]) -> bool:
    """Whether DVC calls ``task`` running though nothing runs it any more.

    A queue worker that is killed (SIGKILL, the OOM killer) leaves its task "Running" for good:
    its experiment process runs on and ends, but no worker collects the result. With no worker
    left and that process gone (its command line names the task's revision: a reused pid does
    not pass), the task is lost.
    """
    return (task.status == "Running" and not workers
            and (task.pid is None or not _alive(task.pid, task.rev.encode())))


def experiment_names(repo: Path) -> set[str]:
    """The names of HEAD's experiments, from their git refs (refs/exps/<sha[:2]>/<sha[2:]>/
    <name>, written when an experiment ends well)."""
    head = head_commit(repo)
    refs = subprocess.run(["git", "for-each-ref", "--format=%(refname)",
                           f"refs/exps/{head[:2]}/{head[2:]}/"], cwd=repo, capture_output=True,
                          text=True, check=True).stdout.split()
    return {ref.rsplit("/", 1)[1] for ref in refs}


def run_dvc(repo: Path, *args: str, busy_s: float = BUSY_S) -> None:
    """A dvc command, tried again while a queue worker holds a lock it needs (a worker takes
    DVC's stash lock to start a task, and `dvc exp run --queue` fails at once on it).

    A session of its own: a Ctrl-C in the terminal is the study's to handle, not a reason to
    kill a command half-way through writing DVC's queue.
    """
    deadline = time.monotonic() + busy_s
    while True:
        proc = subprocess.run(["dvc", *args], cwd=repo, capture_output=True, text=True,
                              start_new_session=True)
        if proc.returncode == 0:
            return
        if not BUSY.search(proc.stderr) or time.monotonic() > deadline:
            raise ConfigError(f"`dvc {' '.join(args)}` failed: {proc.stderr.strip()}")
        time.sleep(1)


def usable_cores() -> int:
    """The cores this process may run on (a container or `taskset` may allow fewer than the
    machine has, which os.cpu_count() reports)."""
    return len(os.sched_getaffinity(0))


def start_queue(repo: Path, jobs: int) -> None:
    """`dvc queue start -j <jobs>`, each worker on its own share of the CPU cores.

    No pipes: the workers it starts would hold them open, and this call would wait for the
    workers to exit, which with several workers does not always happen. A session of its own:
    a Ctrl-C in the terminal is the study's to handle (it stops its experiments), and would
    make `dvc queue start` fail half-way.
    """
    threads = max(1, usable_cores() // jobs)  # a stage that does not pin its threads
    limit = os.environ.get("OMP_NUM_THREADS", "")
    if limit.isdigit() and int(limit) > 0:  # a caller's own limit stands (the tests: their share)
        threads = min(threads, int(limit))
    started = subprocess.run(["dvc", "queue", "start", "-j", str(jobs)], cwd=repo,
                             env={**os.environ, "OMP_NUM_THREADS": str(threads)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    if started.returncode != 0:
        raise ConfigError(f"`dvc queue start` failed in {repo}; run it by hand to see why")


@dataclass
class Watch:
    """This study's tasks on the queue, as one poll after another finds them."""

    repo: Path
    names: list[str]
    jobs: int
    tasks: dict[str, Task] = field(default_factory=dict)
    lost_polls: Counter = field(default_factory=Counter)  # polls in a row that found it lost
    workerless: int = 0  # polls in a row with work queued and no worker alive
    shown: dict[str, str] = field(default_factory=dict)
    eta: Eta | None = None  # cells done / to do and the time left, printed as cells finish
    seen: dict[str, Task] = field(default_factory=dict)  # the queue as the last poll read it
    # Names queued while the queue runs: {name: the revision of its task from before (None:
    # none)}; that task is not this run's, and the name counts once its new task has shown.
    stale: dict[str, str | None] = field(default_factory=dict)

    def is_lost(self, name: str) -> bool:
        return self.lost_polls[name] >= LOST_POLLS

    def poll(self) -> bool:
        """Read the queue, restart it if its workers were killed, show what changed; whether
        every task has ended."""
        tasks, workers = queue_tasks(self.repo), queue_workers(self.repo)
        self.seen = tasks
        self.tasks.update({n: tasks[n] for n in self.names
                           if n in tasks and tasks[n].rev != self.stale.get(n)})
        for name, task in self.tasks.items():
            if not self.is_lost(name):  # once lost, for good: no worker will ever take it
                self.lost_polls[name] = self.lost_polls[name] + 1 if lost(task, workers) else 0
        self._restart_if_workerless(workers)
        self._show()
        self._count()
        # A task a worker takes between DVC's two lists is in neither read: a name queued
        # while the queue runs counts only once its task has shown.
        return all(t.status in ("Success", "Failed") or self.is_lost(n)
                   for n, t in self.tasks.items()) and all(n in self.tasks for n in self.stale)

    def expect(self, name: str) -> None:
        """Follow ``name``, just queued, from its next task on."""
        self.names.append(name)
        self.stale[name] = self.seen[name].rev if name in self.seen else None

    def _restart_if_workerless(self, workers: list[int]) -> None:
        """Start the queue again when its workers were killed with work still queued.

        Not while an experiment of this repository still runs: were a killed worker's task put
        back in the queue, a new worker would train its cells a second time beside it.
        """
        queued = any(t.status == "Queued" for t in self.tasks.values())
        idle = queued and not workers and not experiment_processes(self.repo)
        self.workerless = self.workerless + 1 if idle else 0
        if self.workerless >= WORKERLESS_POLLS:
            print("  no queue worker left with experiments queued: starting the queue again",
                  flush=True)
            start_queue(self.repo, self.jobs)
            self.workerless = 0

    def _show(self) -> None:
        for name, task in self.tasks.items():
            state = SHOWN.get(task.status, task.status)
            if self.is_lost(name):
                state = LOST
            elif task.status == "Running" and task.log and task.log.is_file():
                state = f"running: {progress(task.log.read_text(errors='replace'))}"
            if self.shown.get(name) != state:
                self.shown[name] = state
                print(f"  {name}: {state}", flush=True)

    def _count(self) -> None:
        """Time each cell from the logs; when one has finished, say how many are done and to
        do, and the time left."""
        if self.eta is None:
            return
        finished = 0
        for name, task in self.tasks.items():
            if name in self.eta.ended:
                continue
            if task.status not in ("Queued", "Running", "Success") or self.is_lost(name):
                self.eta.stop(name)  # failed or lost: its cells to do will not train now
                finished += 1
                continue
            if task.status == "Queued":
                continue
            if task.log and task.log.is_file():
                running, cells = train_cells(task.log.read_text(errors="replace"),
                                             task.status == "Success")
                finished += self.eta.observe(name, running, cells)
            if task.status == "Success":
                self.eta.end(name)
        if finished:
            left = sum(t.status in ("Queued", "Running") and not self.is_lost(n)
                       for n, t in self.tasks.items())
            print(f"  {self.eta.line(min(self.jobs, left))}", flush=True)

    def made(self, name: str, stage: str) -> bool:
        """Whether experiment ``name`` has made ``stage`` (its log says so) or has ended; not
        while it is queued (nor held back: the caller knows those)."""
        task = self.tasks.get(name)
        if task is None or task.status == "Queued":
            return name not in self.names  # not followed here: it ended before this run
        if task.status != "Running" or self.is_lost(name):
            return True
        return bool(task.log and task.log.is_file()
                    and startshare.made(task.log.read_text(errors="replace"), stage))

    def outcomes(self, forgotten: list[str]) -> dict[str, str]:
        """{name: done | failed: <log>}; ``forgotten``: the lost ones, taken off the queue."""
        again = (" (its queue worker was killed; run the same command again: its finished "
                 "cells come back from the run-cache)")
        return {n: "done" if t.status == "Success" and n not in forgotten else
                f"failed: {t.log or 'dvc queue logs ' + n}" + (again if n in forgotten else "")
                for n, t in self.tasks.items()}


def run_local(repo: Path, experiments: list[Experiment], jobs: int,
              poll_s: float = 2.0, eta: Eta | None = None,
              waits: Mapping[str, list[tuple[str, str]]] | None = None) -> dict[str, str]:
    """Queue the experiments and run them with ``jobs`` workers; {name: done | failed: <log>}.

    Experiments still queued or running from an interrupted study are waited for, not queued
    twice; those a killed worker left are queued again. Ctrl-C stops this study's running
    experiments and unqueues the rest; cells that finished stay in DVC's run-cache, so the next
    run restores them instead of training.

    ``waits`` (:func:`normbench.startshare.waits`): an experiment named there is queued once
    each (experiment, start stage) it waits for has been made, or that experiment has ended,
    so that it restores the start instead of training it a second time beside it.
    """
    names = [e.name for e in experiments]
    tasks = queue_tasks(repo)
    gone = forget(repo, names, tasks)  # a killed worker's tasks: queued again below
    # Read after the tasks: an experiment of an earlier, killed study that ended since this
    # study counted what is done (DVC writes its ref before its task ends) is not queued again,
    # which DVC would refuse ("conflicts with existing experiment"), but reported done.
    ended = experiment_names(repo)
    # Read twice: DVC lists the running tasks, then the queued ones, so a task that a worker
    # takes between the two is in neither list of one read.
    active = {n for read in (tasks, queue_tasks(repo)) for n, t in read.items()
              if t.status in ("Queued", "Running") and n not in gone}
    ended = (ended - active) & set(names)
    for name in sorted(ended):
        print(f"  {name}: done (it ended after the study counted what was done)", flush=True)
        if eta is not None:
            eta.end(name)
    names = [n for n in names if n not in ended]
    held = {n: list(w) for n, w in (waits or {}).items() if n in names and n not in active}
    for name, pairs in held.items():
        print(f"  {name}: waits for {', '.join(f'{s} of {e}' for e, s in pairs)} (one "
              "training per start)", flush=True)
    to_queue = {e.name: e for e in experiments if e.name in names and e.name not in active}
    for name, exp in to_queue.items():
        if name not in held:
            run_dvc(repo, "exp", "run", "--queue", "--name", name, *exp.set_args())
    done = dict.fromkeys(sorted(ended), "done")
    if not names:
        return done
    watch = Watch(repo, [n for n in names if n not in held], jobs, eta=eta)

    def poll() -> bool:
        ended_all = watch.poll()
        ready = [n for n, pairs in held.items()
                 if all(e not in held and watch.made(e, s) for e, s in pairs)]
        for name in ready:
            del held[name]
            run_dvc(repo, "exp", "run", "--queue", "--name", name, *to_queue[name].set_args())
            watch.expect(name)
            print(f"  {name}: queued (its start is made)", flush=True)
        if ready:  # a worker that found the queue empty has exited: one per job again
            start_queue(repo, jobs)
        return ended_all and not held and not ready  # a task just queued has not ended

    try:
        start_queue(repo, jobs)
        follow(poll, poll_s)
    except KeyboardInterrupt:
        stop_local(repo, names)
        stop_idle_workers(repo, ours=names)
        raise
    # Taken off the queue, so that the next run queues them again.
    forgotten = forget(repo, [n for n in names if watch.is_lost(n)], established=True)
    stop_idle_workers(repo, ours=names)
    prune_logs(repo)
    return {**done, **watch.outcomes(forgotten)}


def forget(repo: Path, names: list[str], tasks: dict[str, Task] | None = None,
           established: bool = False) -> list[str]:
    """Take the lost tasks among ``names`` off DVC's queue, and their temporary workspaces off
    the disk; the names taken off.

    ``tasks``: the queue as just read; otherwise it is read again, so that a task that ended
    meanwhile stays. ``established``: the caller saw
    them lost with no worker alive (a worker started since, for other tasks, is no alibi);
    otherwise a live worker means they are not lost. DVC is told that its process is
    gone (return code -1) before it is ended, so that DVC only marks it failed: its kill would
    send SIGINT to the process group of the recorded pid, which another process may hold now.
    """
    from dvc.repo import Repo
    from dvc.repo.experiments.exceptions import UnresolvedExpNamesError

    tasks = queue_tasks(repo) if tasks is None else tasks
    workers = [] if established else queue_workers(repo)
    gone = [tasks[n] for n in names if n in tasks and lost(tasks[n], workers)]
    if not gone:
        return []
    with Repo(str(repo)) as dvc_repo:
        queue = dvc_repo.experiments.celery_queue
        for task in gone:
            with contextlib.suppress(KeyError):  # never started: no process record
                info = queue.proc[task.rev]
                info.returncode = -1
                queue.proc[task.rev] = info
            _remove_workspace(repo, task)
        queue.kill([t.name for t in gone])
        for _ in range(FORGET_TRIES):  # the failure reaches the task's result a moment later
            try:
                queue.remove([t.name for t in gone])
                break
            except UnresolvedExpNamesError:
                time.sleep(1)
    return [t.name for t in gone]


def _remove_workspace(repo: Path, task: Task) -> None:
    """The temporary copy of the workspace a lost task ran in (DVC removes it when a worker
    collects the task, which no worker will do now)."""
    if task.log is None:
        return
    try:
        root = Path(json.loads(task.log.with_suffix(".run").read_text())["root_dir"])
    except (OSError, KeyError, json.JSONDecodeError):
        return
    if root.resolve().parent == (repo / EXPS_DIR).resolve():  # never anything else
        shutil.rmtree(root, ignore_errors=True)


EXPS_DIR = Path(".dvc") / "tmp" / "exps"  # DVC's queue: temporary workspaces, records, logs
# DVC's record of each queue worker it started: <name>.json with the worker's pid.
WORKERS_DIR = EXPS_DIR / "celery"
# A folder per task, <rev>/: its log (<rev>.out), its process (<rev>.json) and DVC's record of it
# (<rev>.run), which DVC reads for every task its queue lists. DVC never removes one.
LOGS_DIR = EXPS_DIR / "run"
KEEP_LOGS = 20  # successful tasks kept on the queue, with their logs, the newest first...
KEEP_LOGS_ENV = "NORMBENCH_KEEP_LOGS"  # ...or as many as this says
# DVC's words when its queue lists a task that ran to its end and finds no record of it
# (celery.py, iter_done): every listing fails on it, `dvc exp show`, `dvc queue status` and
# `dvc queue remove` alike.
INVALID_TASK = re.compile(r"Invalid experiment '([0-9a-f]{7})'")


def keep_logs() -> int:
    """How many successful tasks keep their place on the queue and their logs."""
    value = os.environ.get(KEEP_LOGS_ENV, str(KEEP_LOGS))
    if not value.isdigit():
        raise ConfigError(f"${KEEP_LOGS_ENV} must be a whole number (the successful queue tasks "
                          f"whose logs are kept; default {KEEP_LOGS}), got {value!r}")
    return int(value)


def prune_logs(repo: Path, keep: int | None = None) -> list[str]:
    """Take the successful tasks beyond the ``keep`` that ended last off DVC's queue, then their
    folders; the revisions taken off.

    Queued, running and failed tasks stay (the study names a failed one's log), and so does
    every experiment: it is a git ref, which the queue does not hold. `dvc queue logs` works for
    every task left.
    """
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    keep = keep_logs() if keep is None else keep
    with Repo(str(repo)) as dvc_repo:
        queue = dvc_repo.experiments.celery_queue
        try:
            done = [d.entry.stash_rev for d in queue.iter_success()]  # "Success": a ref made
        except DvcException as e:  # a task without its record: repair, then list again
            if not INVALID_TASK.search(str(e)) or not _repair(queue):
                raise
            done = [d.entry.stash_rev for d in queue.iter_success()]
        done.sort(key=lambda rev: _ended_at(queue, rev), reverse=True)
        return _take_off(queue, set(done[keep:]))


def _ended_at(queue: LocalCeleryQueue, rev: str) -> int:
    """When a task ended (ns): its record is rewritten last, as its worker cleans up."""
    try:
        return os.stat(queue.get_infofile_path(rev)).st_mtime_ns
    except FileNotFoundError:  # taken off meanwhile
        return 0


def repair(repo: Path) -> list[str]:
    """Take off DVC's queue every task that ran to its end but whose record is gone; their
    short revisions.

    Such a task stops every listing of the queue (INVALID_TASK), `dvc queue remove` included.
    Its record went with its folder (an older normbench pruned folders alone, or a hand did).
    Only a task whose celery result says it ran to its end is touched (SUCCESS, whether its
    experiment succeeded or failed), never a queued or running one; its experiment, a git ref,
    stays.
    """
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        return _repair(dvc_repo.experiments.celery_queue)


def _repair(queue: LocalCeleryQueue) -> list[str]:
    from celery.result import AsyncResult

    broken = {entry.stash_rev for msg, entry in list(queue._iter_processed())
              if AsyncResult(msg.headers["id"], app=queue.celery).status == "SUCCESS"
              and not os.path.exists(queue.get_infofile_path(entry.stash_rev))}
    gone = _take_off(queue, broken)
    for rev in gone:
        print(f"DVC's queue repaired: task {rev[:7]} had ended without a record, which made "
              "`dvc exp show` and `dvc queue` fail; it is off the queue (its experiment stays)",
              file=sys.stderr, flush=True)
    return [rev[:7] for rev in gone]


def _take_off(queue: LocalCeleryQueue, revs: set[str]) -> list[str]:
    """Take the ended tasks ``revs`` off DVC's queue, and their folders off the disk; the
    revisions taken off.

    What `dvc queue remove` does for an ended task (remove.py, remove_tasks), in an order that
    leaves a queue DVC can list wherever a kill stops it: the message first (DVC lists a task
    by its message), then the result (a message without one reads as running for ever, and
    `dvc exp show` then fails on the task's removed workspace), then the folder (its record and
    log, which DVC reads only for a task it lists). DVC's order is result, then message.
    """
    from celery.result import AsyncResult

    gone = []
    # DVC's own listing of the tasks its workers took that reads no record (iter_done reads them).
    for msg, entry in list(queue._iter_processed()):
        if entry.stash_rev not in revs:
            continue
        with contextlib.suppress(ValueError):  # purged meanwhile
            queue.celery.purge(msg.delivery_tag)
        AsyncResult(msg.headers["id"], app=queue.celery).forget()
        shutil.rmtree(Path(queue.get_infofile_path(entry.stash_rev)).parent, ignore_errors=True)
        gone.append(entry.stash_rev)
    return gone


def _alive(pid: int, marker: bytes) -> bool:
    """Whether ``pid`` is still a process whose command line holds ``marker`` (not a zombie, not
    a reused pid): a queue worker (``queue-worker``), an experiment (``exec-run``)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return marker in cmdline and state != "Z"


def experiment_processes(repo: Path) -> list[int]:
    """The pids of this repository's queued experiments that are running (`dvc exp exec-run
    --infofile <repo>/.dvc/tmp/exps/run/...`), whether or not a worker still watches them."""
    marker = str(repo.resolve() / LOGS_DIR).encode()
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if marker in (proc / "cmdline").read_bytes() and _alive(int(proc.name), b"exec-run"):
                found.append(int(proc.name))
        except OSError:  # gone meanwhile
            continue
    return found


def queue_workers(repo: Path) -> list[int]:
    """The pids of this repository's DVC queue workers that are running."""
    pids = []
    for record in (repo / WORKERS_DIR).glob("*.json"):
        try:
            pid = json.loads(record.read_text()).get("pid")
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(pid, int) and _alive(pid, b"queue-worker"):
            pids.append(pid)
    return pids


def stop_idle_workers(repo: Path, ours: list[str] = (), grace_s: float = 20.0) -> list[int]:
    """When the queue holds nothing else queued or running, stop the workers that linger; the
    pids.

    A worker exits by itself once the queue is empty, but not always (seen with -j 2): one
    still there after ``grace_s`` seconds gets SIGTERM, then SIGKILL, so that nothing of the
    study is left running when it returns. ``ours``: this study's tasks, which may still be
    called running while they are being stopped (Ctrl-C).
    """
    if any(t.status in ("Queued", "Running") and n not in ours
           for n, t in queue_tasks(repo).items()):
        return []  # someone else's work: leave their workers alone
    deadline = time.monotonic() + grace_s
    while (alive := queue_workers(repo)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while (left := [p for p in alive if _alive(p, b"queue-worker")]) and (
                time.monotonic() < deadline):
            time.sleep(0.2)
        if not left:
            break
    return alive


def stop_local(repo: Path, names: list[str]) -> None:
    """Ctrl-C: stop this study's running experiments and take its queued ones off the queue."""
    tasks = queue_tasks(repo)
    running = [n for n in names if tasks.get(n, Task(n, "", "")).status == "Running"]
    queued = [n for n in names if tasks.get(n, Task(n, "", "")).status == "Queued"]
    # Queued ones first: a worker freed by the kill would start one of them before its removal,
    # and a task stopped while it starts leaves DVC's queue without its record (`dvc exp show`
    # then fails until DVC lets the task go: runs.exp_show waits for that).
    if queued:
        subprocess.run(["dvc", "queue", "remove", *queued], cwd=repo)
    if running:
        subprocess.run(["dvc", "queue", "kill", *running], cwd=repo)
    print("study interrupted: finished cells are in DVC's run-cache; run the same command to "
          "resume (only what is missing is trained)", file=sys.stderr)


def default_jobs() -> int:
    """Workers that fit this machine: per GPU as measured (normbench.gpushare), else one per
    usable CPU (a hardware thread).

    A CPU cell trains on one thread (normbench.machine.CPU_THREADS: the thread count changes its
    bytes), so one worker per CPU keeps every CPU busy; fewer would leave some idle. Each worker
    holds its cell in memory (resnet18 at 32 px and batch 256: about 1.2 GiB resident, measured;
    the larger models more): where memory is short, set JOBS. On a GPU a 32 px cell leaves it
    idle between kernel launches.
    """
    import torch

    if torch.cuda.is_available():
        from normbench.gpushare import for_this_gpu

        return for_this_gpu().jobs * torch.cuda.device_count()
    return max(1, usable_cores() // CPU_THREADS)
