"""The run state of a study: one study per repository, and the record of submitted jobs."""

import itertools
import os
import signal
import subprocess
import sys
import time

import pytest

from normbench import cluster
from normbench.registry import ConfigError
from normbench.runstate import STATE_DIR, Experiment, Submitted, study_lock

HOLD = """
import sys, time
from pathlib import Path
from normbench.runstate import study_lock
with study_lock(Path(sys.argv[1])):
    print("holding", flush=True)
    time.sleep(600)
"""


def hold_lock(repo):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(repo), "make", "study"],
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": "src"})
    assert proc.stdout.readline().strip() == "holding"
    return proc


def test_a_second_study_is_told_which_one_runs_and_a_killed_one_frees_the_lock(tmp_path):
    holder = hold_lock(tmp_path)
    try:
        with pytest.raises(ConfigError, match=rf"a study is already running in .*: pid "
                                              rf"{holder.pid}, since .*make study"):
            with study_lock(tmp_path):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)  # no cleanup runs: the kernel drops the lock
        holder.wait()
    entered = []
    with study_lock(tmp_path):
        entered.append(True)
    assert entered == [True]


def test_the_lock_is_held_only_while_the_study_runs(tmp_path):
    with study_lock(tmp_path):
        pass
    with study_lock(tmp_path):  # released on exit: the same process can take it again
        pass
    with pytest.raises(RuntimeError, match="boom"):
        with study_lock(tmp_path):
            raise RuntimeError("boom")
    holder = hold_lock(tmp_path)  # and another process too, after a failure
    holder.kill()
    holder.wait()


def test_submitted_jobs_survive_a_new_process_and_belong_to_their_commit(tmp_path):
    Submitted(tmp_path).record("dataset-scratch-1234", "c1", "101")
    again = Submitted(tmp_path)
    assert again.job_id("dataset-scratch-1234", "c1") == "101"
    assert again.job_id("dataset-scratch-1234", "c2") is None  # another commit: resubmit
    assert again.job_id("minmax-scratch-1234", "c1") is None
    (tmp_path / STATE_DIR / "submitted.json").write_text("{not json")
    with pytest.raises(ConfigError, match="submitted.json is not valid JSON .*delete it"):
        Submitted(tmp_path)


def test_jobs_still_queued_or_running_are_followed_and_the_rest_submitted(tmp_path, monkeypatch):
    exps = [Experiment(n, "scratch", (1,), (f"norm={n}",)) for n in ("dataset", "minmax", "none")]
    record = Submitted(tmp_path)
    record.record(exps[0].name, "c1", "101")  # still running
    record.record(exps[1].name, "c1", "102")  # gone from the queue: failed or cancelled
    monkeypatch.setattr(cluster, "_queue_states", lambda ids: {"101": "RUNNING"} if ids else {})

    class Job:
        def __init__(self, job_id):
            self.job_id = job_id

    submitted = []

    def submit(after, fn, repo, commit, name, args):
        submitted.append(name)
        return Job(str(200 + len(submitted)))

    jobs = cluster.attach_or_submit(tmp_path, "c1", exps, submit)
    assert submitted == [exps[1].name, exps[2].name]
    assert jobs[exps[0].name].job_id == "101"
    assert Submitted(tmp_path).jobs == {exps[0].name: {"commit": "c1", "job_id": "101"},
                                        exps[1].name: {"commit": "c1", "job_id": "201"},
                                        exps[2].name: {"commit": "c1", "job_id": "202"}}



def test_experiments_of_one_start_run_after_one_start_job_and_the_others_after_none(
        tmp_path, monkeypatch):
    from normbench.study import plan

    first, second = plan(["dataset", "minmax"], ["pretrained"], [1])
    scratch = plan(["dataset"], ["scratch"], [1])[0]
    waits = {second.name: [(first.name, "start@resnet18"), (first.name, "start@smallcnn")]}
    alive = {}
    monkeypatch.setattr(cluster, "_queue_states", lambda ids: {i: "RUNNING" for i in ids
                                                               if i in alive})
    submitted, ids = [], itertools.count(301)

    class Job:
        def __init__(self, job_id):
            self.job_id = job_id

    def submit(after, fn, repo, commit, name, *args):
        submitted.append((name, fn.__name__, after, args))
        return Job(str(next(ids)))

    start = f"start-{first.name}"
    jobs = cluster.attach_or_submit(tmp_path, "c1", [first, second, scratch], submit, waits)
    # One start job, first, making both stages with the first experiment's params; both of its
    # experiments after it; the scratch one after nothing (no dependency carried over).
    assert submitted == [
        (start, "make_start", [], (first.set_args(), ["start@resnet18", "start@smallcnn"])),
        (first.name, "run_experiment", ["301"], (first.set_args(),)),
        (second.name, "run_experiment", ["301"], (second.set_args(),)),
        (scratch.name, "run_experiment", [], (scratch.set_args(),))]
    assert set(jobs) == {start, first.name, second.name, scratch.name}
    # A killed study, again: the start job and the first are still queued, the second is not.
    alive.update({"301": 1, "302": 1})
    submitted.clear()
    jobs = cluster.attach_or_submit(tmp_path, "c1", [first, second], submit, waits)
    assert submitted == [(second.name, "run_experiment", ["301"], (second.set_args(),))]
    # Every experiment of the start followed again, the start job gone: none is submitted.
    alive.clear()
    alive.update({"302": 1, "305": 1})
    submitted.clear()
    cluster.attach_or_submit(tmp_path, "c1", [first, second], submit, waits)
    assert submitted == []


def test_a_job_runs_after_its_start_job_and_the_users_own_dependency():
    assert cluster.dependency(None, []) is None
    assert cluster.dependency(None, ["7", "8"]) == "afterany:7:8"
    assert cluster.dependency("afterok:5", ["7"]) == "afterok:5,afterany:7"
    assert cluster.dependency(12345, []) == "12345"  # YAML reads a bare job id as a number
    with pytest.raises(ConfigError, match=r"uses '\?' \(any of\).*use ','"):
        cluster.dependency("afterok:5?afterok:6", ["7"])
    assert cluster.dependency("afterok:5?afterok:6", []) == "afterok:5?afterok:6"


LINGERING = """
import signal, sys, time
if sys.argv[1] == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("up", flush=True)
time.sleep(600)
"""


def fake_worker(repo, name: str, kind: str) -> subprocess.Popen:
    """A process that looks like a DVC queue worker and, like a lingering one, never exits."""
    import json

    from normbench.dvcqueue import WORKERS_DIR

    proc = subprocess.Popen([sys.executable, "-c", LINGERING, kind, "exp", "queue-worker"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "up"
    (repo / WORKERS_DIR).mkdir(parents=True, exist_ok=True)
    (repo / WORKERS_DIR / f"{name}.json").write_text(json.dumps({"pid": proc.pid}))
    return proc


def test_workers_left_after_the_queue_is_empty_are_stopped_even_if_they_ignore_sigterm(
        tmp_path, monkeypatch):
    from normbench import dvcqueue

    monkeypatch.setattr(dvcqueue, "queue_tasks", lambda repo: {})
    polite, stubborn = fake_worker(tmp_path, "w1", "polite"), fake_worker(tmp_path, "w2",
                                                                         "stubborn")
    (tmp_path / dvcqueue.WORKERS_DIR / "w3.json").write_text('{"pid": 1}')  # not a worker
    assert sorted(dvcqueue.queue_workers(tmp_path)) == sorted([polite.pid, stubborn.pid])
    start = time.monotonic()
    stopped = dvcqueue.stop_idle_workers(tmp_path, grace_s=0.5)
    assert sorted(stopped) == sorted([polite.pid, stubborn.pid])
    assert polite.wait(timeout=5) == -signal.SIGTERM
    assert stubborn.wait(timeout=5) == -signal.SIGKILL  # after SIGTERM's 10 s
    assert time.monotonic() - start < 20
    assert dvcqueue.queue_workers(tmp_path) == []


def test_workers_are_left_alone_while_the_queue_still_has_work(tmp_path, monkeypatch):
    from normbench import dvcqueue

    busy = {"x": dvcqueue.Task("x", "Running", "rev9")}
    monkeypatch.setattr(dvcqueue, "queue_tasks", lambda repo: busy)
    worker = fake_worker(tmp_path, "w1", "polite")
    try:
        assert dvcqueue.stop_idle_workers(tmp_path, grace_s=0.1) == []
        assert worker.poll() is None
        # The study's own task, still called running while Ctrl-C stops it, is no one else's.
        assert dvcqueue.stop_idle_workers(tmp_path, ours=["x"], grace_s=0.1) == [worker.pid]
        assert worker.wait(timeout=15) == -signal.SIGTERM
    finally:
        worker.kill()
        worker.wait()


def fake_experiment(repo, rev: str) -> subprocess.Popen:
    """A process with the command line of a queued experiment (`dvc exp exec-run --infofile
    <repo>/.dvc/tmp/exps/run/<rev>/<rev>.run`)."""
    from normbench.dvcqueue import LOGS_DIR

    infofile = repo.resolve() / LOGS_DIR / rev / f"{rev}.run"
    proc = subprocess.Popen([sys.executable, "-c", LINGERING, "polite", "exp", "exec-run",
                             "--infofile", str(infofile)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "up"
    return proc


def test_a_task_is_lost_only_when_no_worker_is_left_and_its_own_process_is_gone(tmp_path):
    from normbench.dvcqueue import Task, experiment_processes, lost

    running = fake_experiment(tmp_path, "abc123")
    other = fake_experiment(tmp_path / "elsewhere", "def456")  # another repository's
    try:
        assert experiment_processes(tmp_path) == [running.pid]
        task = Task("a", "Running", "abc123", pid=running.pid)
        assert not lost(task, workers=[])  # its process runs on: not lost yet
        assert not lost(task._replace(status="Success"), workers=[])
        # A pid that now belongs to another process (here: another task's) is no alibi.
        assert lost(task._replace(pid=other.pid), workers=[])
        running.kill()
        running.wait()
        assert experiment_processes(tmp_path) == []
        assert lost(task, workers=[])
        assert not lost(task, workers=[12345])  # a live worker will collect it
        assert lost(task._replace(pid=None), workers=[])  # taken, never started
        assert not lost(task._replace(status="Queued", pid=None), workers=[])
    finally:
        for proc in (running, other):
            proc.kill()
            proc.wait()


def test_the_watch_calls_a_task_lost_after_two_polls_and_restarts_a_workerless_queue(
        tmp_path, monkeypatch, capsys):
    from normbench import dvcqueue

    reads = iter([
        # poll 1: "a" looks lost (it may just have ended); "b" waits for a worker
        {"a": dvcqueue.Task("a", "Running", "r1"), "b": dvcqueue.Task("b", "Queued", "r2")},
        {"a": dvcqueue.Task("a", "Success", "r1"), "b": dvcqueue.Task("b", "Queued", "r2")},
        {"a": dvcqueue.Task("a", "Running", "r1"), "b": dvcqueue.Task("b", "Queued", "r2")},
        {"a": dvcqueue.Task("a", "Running", "r1"), "b": dvcqueue.Task("b", "Queued", "r2")},
    ])
    monkeypatch.setattr(dvcqueue, "queue_tasks", lambda repo: next(reads))
    monkeypatch.setattr(dvcqueue, "queue_workers", lambda repo: [])
    monkeypatch.setattr(dvcqueue, "experiment_processes", lambda repo: [])
    started = []
    monkeypatch.setattr(dvcqueue, "start_queue", lambda repo, jobs: started.append(jobs))
    watch = dvcqueue.Watch(tmp_path, ["a", "b"], jobs=2)
    assert watch.poll() is False and not watch.is_lost("a")
    assert watch.poll() is False and not watch.is_lost("a")  # it had ended: the count restarts
    assert watch.poll() is False and not watch.is_lost("a") and started == [2]  # 3rd idle poll
    assert watch.poll() is False and watch.is_lost("a")  # two polls in a row
    out = capsys.readouterr().out
    assert "  a: lost: its queue worker was killed\n" in out
    assert out.count("starting the queue again") == 1
    assert watch.outcomes(["a"])["a"].startswith("failed: dvc queue logs a (its queue worker")


def test_an_experiment_that_ended_after_the_study_counted_is_not_queued_again(
        tmp_path, monkeypatch, capsys):
    """A killed study's experiment runs on and ends between the rerun's count of what is done
    and its queueing: DVC has its ref then, and would refuse the same name a second time."""
    from normbench import dvcqueue

    done, new = (Experiment(n, "scratch", (1,), (f"norm={n}",)) for n in ("dataset", "minmax"))
    for cmd in (["init", "-q"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                                 "--allow-empty", "-m", "base"]):
        subprocess.run(["git", *cmd], cwd=tmp_path, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True,
                          text=True, check=True).stdout.strip()
    subprocess.run(["git", "update-ref", f"refs/exps/{head[:2]}/{head[2:]}/{done.name}", head],
                   cwd=tmp_path, check=True)
    subprocess.run(["git", "update-ref", f"refs/exps/00/0000/{new.name}", head], cwd=tmp_path,
                   check=True)  # the same name, but another commit's experiment
    assert dvcqueue.experiment_names(tmp_path) == {done.name}

    ended = dvcqueue.Task(done.name, "Success", "r1")
    monkeypatch.setattr(dvcqueue, "queue_tasks", lambda repo: {done.name: ended})
    monkeypatch.setattr(dvcqueue, "forget", lambda *a, **k: [])
    started = []
    monkeypatch.setattr(dvcqueue, "start_queue", lambda repo, jobs: started.append(jobs))
    monkeypatch.setattr(dvcqueue, "follow", lambda poll, poll_s: poll())
    monkeypatch.setattr(dvcqueue, "queue_workers", lambda repo: [])
    monkeypatch.setattr(dvcqueue, "stop_idle_workers", lambda *a, **k: [])
    monkeypatch.setattr(dvcqueue, "prune_logs", lambda repo: None)
    queued = []
    monkeypatch.setattr(dvcqueue, "run_dvc", lambda repo, *args: queued.append(args[args.index("--name") + 1]))
    assert dvcqueue.run_local(tmp_path, [done, new], jobs=1) == {done.name: "done"}
    assert queued == [new.name] and started == [1]
    assert f"  {done.name}: done (it ended after" in capsys.readouterr().out
    # Nothing left to run: no worker is started for nothing.
    assert dvcqueue.run_local(tmp_path, [done], jobs=1) == {done.name: "done"}
    assert queued == [new.name] and started == [1]


def test_ctrl_c_takes_the_queued_experiments_off_before_it_kills_the_running_ones(
        tmp_path, monkeypatch):
    """Killed first, a running experiment frees its worker, which would start a queued one
    before its removal (a task stopped while it starts leaves no record behind)."""
    from normbench import dvcqueue

    monkeypatch.setattr(dvcqueue, "queue_tasks", lambda repo: {
        "a": dvcqueue.Task("a", "Running", "r1"), "b": dvcqueue.Task("b", "Queued", "r2"),
        "c": dvcqueue.Task("c", "Success", "r3")})
    calls = []
    monkeypatch.setattr(dvcqueue.subprocess, "run", lambda cmd, **kw: calls.append(cmd[2:]))
    dvcqueue.stop_local(tmp_path, ["a", "b", "c"])
    assert calls == [["remove", "b"], ["kill", "a"]]
