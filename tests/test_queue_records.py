"""DVC's queue stays listable: finished tasks leave it through its own messages and results
before their folders (records and logs) go, and a task that ended without its record is taken
off by the study and `exp show`'s wrapper (`compare`'s: test_long_use.py); a Ctrl-C meant for
the study leaves its queue start alone. Against a real DVC queue: a one-line pipeline (`cp`) for
the queue's own behaviour, the tiny project for the study's."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, copy_project, git_user, sh

from normbench import dvcqueue, runs
from normbench.registry import ConfigError

pytestmark = pytest.mark.slow


def dvc_env() -> dict:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


class Toy:
    """A git + DVC repository whose one stage copies params.yaml; for x=50 it waits while
    ``hold`` exists (a task held running), for x=99 it fails."""

    def __init__(self, repo: Path) -> None:
        self.repo, self.hold = repo, repo.parent / f"{repo.name}.hold"
        repo.mkdir()
        sh(repo, "git", "init", "-q")
        git_user(repo)
        sh(repo, "dvc", "init", "-q")
        (repo / "params.yaml").write_text("x: 1\n")
        cmd = (f'while [ -e {self.hold} ] && [ "$(cat params.yaml)" = "x: 50" ]; do sleep 0.1; '
               'done; test "$(cat params.yaml)" != "x: 99" && cp params.yaml out.txt')
        (repo / "dvc.yaml").write_text(yaml.safe_dump(
            {"stages": {"s": {"cmd": cmd, "params": ["x"], "outs": ["out.txt"]}}}))
        sh(repo, "git", "add", "-A")
        sh(repo, "git", "commit", "-qm", "init")

    def queue(self, name: str, x: int) -> None:
        sh(self.repo, "dvc", "exp", "run", "--queue", "-S", f"x={x}", "-n", name)

    def start(self) -> None:
        dvcqueue.start_queue(self.repo, 1)  # no pipes: the worker would hold them open

    def status(self) -> dict[str, str]:
        """{name: status} as DVC's queue lists it (read here, not through normbench)."""
        from dvc.repo import Repo

        with Repo(str(self.repo)) as dvc_repo:
            return {e["name"]: e["status"] for e in dvc_repo.experiments.celery_queue.status()}

    def revs(self) -> dict[str, str]:
        from dvc.repo import Repo

        with Repo(str(self.repo)) as dvc_repo:
            return {e["name"]: e["rev"] for e in dvc_repo.experiments.celery_queue.status()}

    def folders(self) -> set[str]:
        return {d.name for d in (self.repo / dvcqueue.LOGS_DIR).iterdir()}

    def wait_for(self, what: str, ready, timeout_s: float = 300) -> None:
        """Until ``ready()``; a loaded machine takes seconds to start a worker."""
        deadline = time.monotonic() + timeout_s
        while not ready():
            assert time.monotonic() < deadline, f"{what}: {sh(self.repo, 'dvc', 'queue', 'status')}"
            time.sleep(0.5)

    def run(self, *names: str) -> None:
        """Queue ``names`` (x = 1, 2, ...), then ``broken`` (x=99) if named, then ``held``
        (x=50), which the one worker runs until ``release``, and ``waiting`` behind it; start
        the queue, and wait until the others have ended and ``held`` runs."""
        self.hold.touch()
        for i, name in enumerate(names, 1):
            self.queue(name, {"broken": 99, "held": 50}.get(name, i))
        self.queue("waiting", 51)
        self.start()
        self.wait_for("held running", lambda: self.status().get("held") == "Running" and len(
            [s for s in self.status().values() if s in ("Success", "Failed")]) == len(names) - 1)

    def release(self) -> None:
        self.hold.unlink()
        self.wait_for("every task ended", lambda: not {"Running", "Queued"} & set(
            self.status().values()))

    def dvc(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["dvc", *args], cwd=self.repo, env=dvc_env(), capture_output=True,
                              text=True)

    def experiments(self) -> set[str]:
        return dvcqueue.experiment_names(self.repo)


@pytest.fixture
def toy(tmp_path, monkeypatch) -> Toy:
    monkeypatch.setenv("PATH", dvc_env()["PATH"])
    toy = Toy(tmp_path / "toy")
    yield toy
    toy.hold.unlink(missing_ok=True)  # a failed test's held task ends, and its worker with it


def test_pruning_takes_old_successes_off_dvcs_queue_first_and_nothing_else(toy):
    toy.run("e1", "e2", "e3", "broken", "held")
    revs = toy.revs()
    processed = toy.repo / dvcqueue.WORKERS_DIR / "broker" / "processed"
    messages = len(list(processed.glob("*.celery.msg")))

    # The successes but the one that ended last go; the failed, running and queued ones stay.
    assert sorted(dvcqueue.prune_logs(toy.repo, keep=1)) == sorted([revs["e1"], revs["e2"]])
    assert toy.status() == {"e3": "Success", "broken": "Failed", "held": "Running",
                            "waiting": "Queued"}
    assert toy.folders() == {revs[n] for n in ("e3", "broken", "held")}
    assert len(list(processed.glob("*.celery.msg"))) == messages - 2
    assert "Reproducing experiment 'e3'" in toy.dvc("queue", "logs", "e3").stdout
    gone = toy.dvc("queue", "logs", revs["e1"][:7])
    assert gone.returncode != 0 and "not a valid queued experiment" in gone.stderr  # all of it
    assert toy.dvc("exp", "show").returncode == 0
    assert {"e1", "e2", "e3"} <= toy.experiments()  # experiments are refs: never pruned

    toy.release()
    assert toy.status()["waiting"] == "Success"
    # Newest by the end of the task: `waiting` ended last.
    assert sorted(dvcqueue.prune_logs(toy.repo, keep=1)) == sorted([revs["e3"], revs["held"]])
    assert toy.status() == {"broken": "Failed", "waiting": "Success"}
    assert toy.dvc("queue", "status").returncode == 0
    assert toy.experiments() == {"e1", "e2", "e3", "held", "waiting"}


def test_a_prune_killed_between_its_steps_leaves_a_queue_dvc_can_list(toy, monkeypatch):
    """Killed after the first of a task's two removals (its message, its result): with the
    message gone first, DVC no longer lists the task; had the result gone first (DVC's own
    order), DVC would call the task running for ever and `dvc exp show` fail on it."""
    from celery.result import AsyncResult
    from dvc_task.app.filesystem import FSApp

    toy.queue("e1", 1)
    toy.queue("e2", 2)
    toy.start()
    toy.wait_for("two done", lambda: list(toy.status().values()) == ["Success"] * 2)
    calls = []

    def killed_at_the_second(real):
        def call(*args, **kwargs):
            calls.append(real.__name__)
            if len(calls) == 2:
                raise KeyboardInterrupt  # what a kill leaves: the first step done, no other
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(FSApp, "purge", killed_at_the_second(FSApp.purge))
    monkeypatch.setattr(AsyncResult, "forget", killed_at_the_second(AsyncResult.forget))
    with pytest.raises(KeyboardInterrupt):
        dvcqueue.prune_logs(toy.repo, keep=0)
    monkeypatch.undo()
    assert list(toy.status().values()) == ["Success"]  # one task gone whole, one untouched
    assert toy.dvc("exp", "show").returncode == 0
    dvcqueue.prune_logs(toy.repo, keep=0)
    assert toy.status() == {} and toy.dvc("queue", "status").returncode == 0


def test_a_finished_task_without_its_record_is_taken_off_and_only_it(toy, capsys):
    toy.run("e1", "e2", "held")
    revs = toy.revs()
    # The wedge of an older normbench, which pruned folders alone: DVC lists a task that ended
    # well, fails on its missing record, and so does every listing, `dvc queue remove` too.
    shutil.rmtree(toy.repo / dvcqueue.LOGS_DIR / revs["e1"])
    wedged = f"Invalid experiment '{revs['e1'][:7]}'"
    for cmd in (["queue", "status"], ["exp", "show"], ["queue", "remove", "--success"]):
        assert wedged in toy.dvc(*cmd).stderr, cmd

    entries = runs.exp_show(toy.repo, wait_s=0)
    assert [e["rev"] for e in entries][:1] == ["workspace"]
    said = [line for line in capsys.readouterr().err.splitlines() if "queue" in line]
    assert len(said) == 1 and revs["e1"][:7] in said[0] and "had ended without a record" in said[0]
    assert toy.status() == {"held": "Running", "waiting": "Queued", "e2": "Success"}
    assert dvcqueue.repair(toy.repo) == []  # nothing else looks broken to it
    toy.release()
    assert toy.status() == {"held": "Success", "waiting": "Success", "e2": "Success"}
    assert toy.experiments() == {"e1", "e2", "held", "waiting"}  # e1's experiment stays


def test_the_queue_reader_repairs_too(toy):
    toy.queue("e1", 1)
    toy.start()
    toy.wait_for("done", lambda: toy.status() == {"e1": "Success"})
    rev = toy.revs()["e1"]
    (toy.repo / dvcqueue.LOGS_DIR / rev / f"{rev}.run").unlink()  # the record alone
    assert f"Invalid experiment '{rev[:7]}'" in toy.dvc("queue", "status").stderr
    assert dvcqueue.queue_tasks(toy.repo) == {}
    assert not (toy.repo / dvcqueue.LOGS_DIR / rev).exists()  # the rest of its folder, too


def test_the_prune_repairs_too(toy):
    # A record lost between the study's last poll and its prune: the study still ends well.
    toy.queue("e1", 1)
    toy.start()
    toy.wait_for("done", lambda: toy.status() == {"e1": "Success"})
    rev = toy.revs()["e1"]
    (toy.repo / dvcqueue.LOGS_DIR / rev / f"{rev}.run").unlink()
    assert dvcqueue.prune_logs(toy.repo, keep=5) == []  # nothing past the kept count...
    assert toy.dvc("queue", "status").returncode == 0  # ...and the wedge repaired


CTRL_C_DURING_START = """
import signal, sys
from pathlib import Path
from normbench.dvcqueue import start_queue
signal.signal(signal.SIGINT, lambda *a: print("the study saw Ctrl-C", flush=True))  # as follow
print("starting", flush=True)
start_queue(Path("."), 1)
print("started", flush=True)
"""


def test_a_ctrl_c_meant_for_the_study_does_not_fail_its_queue_start(toy):
    """A terminal's Ctrl-C reaches the study's process group; the study handles it after its
    poll, in which its watch may be restarting the queue: `dvc queue start` must not die of it,
    or the study fails ("`dvc queue start` failed ... run it by hand") instead of stopping."""
    toy.queue("e1", 1)
    proc = subprocess.Popen([sys.executable, "-c", CTRL_C_DURING_START], cwd=toy.repo,
                            env={**dvc_env(), "PYTHONPATH": str(ROOT / "src")},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    assert proc.stdout.readline().strip() == "starting"
    time.sleep(0.3)  # `dvc queue start` is importing DVC
    os.killpg(proc.pid, signal.SIGINT)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0 and out.splitlines() == ["the study saw Ctrl-C", "started"], out
    toy.wait_for("e1 done", lambda: toy.status() == {"e1": "Success"})


def test_the_kept_count_is_a_whole_number(monkeypatch):
    monkeypatch.setenv(dvcqueue.KEEP_LOGS_ENV, "5")
    assert dvcqueue.keep_logs() == 5
    monkeypatch.setenv(dvcqueue.KEEP_LOGS_ENV, "-1")
    with pytest.raises(ConfigError, match=r"\$NORMBENCH_KEEP_LOGS must be a whole number .* "
                                          r"default 20\), got '-1'"):
        dvcqueue.keep_logs()


# --- the study, as a user runs it ------------------------------------------------------------
# One cell per experiment (smallcnn on 48 shapes, 1 epoch), seed 223: norm=dataset comes back
# from the copied run-cache, norm=minmax trains once.
KEEP = 1  # successful tasks kept: three experiments over two studies are more than KEEP + 1


def study(repo: Path, *args: str) -> str:
    """`make study` in ``repo``; what it printed. It must succeed."""
    env = {**dvc_env(), "PYTHONPATH": str(ROOT / "src"), "TORCH_HOME": str(repo / "torch"),
           dvcqueue.KEEP_LOGS_ENV: str(KEEP)}
    proc = subprocess.run([sys.executable, "-m", "normbench.study", "--seeds", "223",
                           "--jobs", "1", *args], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    return out


def queue_listing(repo: Path) -> list[tuple[str, str]]:
    """(name, status) of each task, from `dvc queue status` (which fails on a wedged queue)."""
    text = sh(repo, "dvc", "queue", "status")
    return re.findall(r"^[0-9a-f]{7}\s+(\S+)\s+.*\s(Success|Failed|Running|Queued)\s*$", text,
                      flags=re.M)


def test_studies_beyond_the_kept_logs_and_a_wedged_queue(reproduced_tiny_project, tmp_path):
    """The issue's use: studies with `dvc exp remove -A` between them, on a queue that an older
    normbench wedged (it pruned a finished task's folder alone)."""
    repo = tmp_path / "repo"
    copy_project(reproduced_tiny_project, repo)
    study(repo, "--norms", "dataset")
    [first] = (repo / dvcqueue.LOGS_DIR).iterdir()
    shutil.rmtree(first)
    wedged = subprocess.run(["dvc", "queue", "status"], cwd=repo, env=dvc_env(),
                            capture_output=True, text=True)
    assert f"Invalid experiment '{first.name[:7]}'" in wedged.stderr
    sh(repo, "dvc", "exp", "remove", "-A")

    out = study(repo, "--norms", "dataset", "minmax")
    assert f"task {first.name[:7]} had ended without a record" in out  # said, and repaired
    assert "0 already done, 2 to run" in out
    # Three experiments have run: the queue lists the newest success alone, with its log.
    [(name, status)] = queue_listing(repo)
    assert status == "Success" and name.startswith("minmax-scratch-")
    assert "Reproducing experiment" in sh(repo, "dvc", "queue", "logs", name)
    assert '"name": "minmax-scratch-' in sh(repo, "dvc", "exp", "show", "--json")
    assert len(list((repo / dvcqueue.LOGS_DIR).iterdir())) == KEEP


def test_a_wedge_that_outlasts_the_wait_is_an_error_naming_it(tmp_path, monkeypatch):
    """`exp show` failing on a task that the repair cannot find (DVC's two reads of a task
    being removed disagree for a moment; for ever, something unknown) is retried, then the
    error."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dvc").write_text("#!/bin/sh\necho \"ERROR: failed to show experiments - "
                                 "Invalid experiment 'abc1234'.\" >&2\nexit 255\n")
    (bin_dir / "dvc").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(dvcqueue, "repair", lambda repo: [])
    start = time.monotonic()
    with pytest.raises(ConfigError, match="Invalid experiment 'abc1234'"):
        runs.exp_show(tmp_path, wait_s=1.5)
    assert time.monotonic() - start >= 1.5
