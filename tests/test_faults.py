"""Faults injected at seeded moments, then the same command again.

Each test kills something at a moment drawn from FAULT_SEED (a cell while it trains or writes, a
DVC queue worker, the study process) or takes the disk away, then runs the same command again
and checks what must hold: every cell there once, no finished cell trained again, no stray file,
`dvc status` clean, and the outputs of an uninterrupted run on this machine, hash for hash. The
moment is in every assertion's message: a failure repeats with NORMBENCH_FAULT_SEED set to it.
(The Slurm faults, a killed study with jobs queued and running and `scancel --signal=KILL`, are
in test_cluster.py, which owns the one-node Slurm.)
"""

import hashlib
import os
import random
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import FAULT_SEED, git_user, sh

pytestmark = pytest.mark.slow
CELL = "resnet18-shapes-223"


def env() -> dict:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def clone(reference: Path, repo: Path) -> Path:
    """A fresh `git clone` of the reproduced reference: its commit, no outputs, no DVC cache."""
    sh(reference.parent, "git", "clone", "-q", str(reference), str(repo))
    git_user(repo)
    return repo


def workspace(repo: Path) -> dict[str, str]:
    """{path: sha256} of every file outside git's and DVC's own folders and timings/ (wall
    times, different on every run) and __pycache__: every stage's outputs and dependencies."""
    skip = {".git", ".dvc", "timings", "__pycache__"}
    return {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in repo.rglob("*")
            if p.is_file() and not skip & set(p.relative_to(repo).parts)}


def assert_reproduces(repo: Path, reference: Path, what: str) -> None:
    """``repo`` holds what the uninterrupted ``reference`` run wrote, hash for hash."""
    assert sh(repo, "git", "status", "--porcelain") == "", what  # dvc.lock, metrics.json, report
    assert "Data and pipelines are up to date" in sh(repo, "dvc", "status"), what
    assert workspace(repo) == workspace(reference), what  # no stray file, none missing
    partial = repo / ".dvc" / "tmp" / "partial"
    assert not partial.is_dir() or not list(partial.iterdir()), what


def cache_is_sound(repo: Path) -> None:
    """Every file of the DVC cache hashes to its name (DVC's md5 layout: files/md5/ab/cdef...)."""
    files = [p for p in (repo / ".dvc" / "cache" / "files" / "md5").rglob("*") if p.is_file()]
    assert files
    for p in files:
        if not p.name.endswith(".dir"):
            assert hashlib.md5(p.read_bytes()).hexdigest() == p.parent.name + p.name, p


def processes(repo: Path, marker: str) -> list[int]:
    """Pids of the processes started in ``repo`` whose command line contains ``marker``."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (marker.encode() in (proc / "cmdline").read_bytes()
                    and Path(os.readlink(proc / "cwd")) == repo):
                found.append(int(proc.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def test_a_fresh_clone_reproduces_every_hash_of_the_committed_lock(reproduced_tiny_project,
                                                                     tmp_path):
    """Two fresh repositories, two runs: the clone has the commit and nothing else (no outputs,
    no cache), trains everything again and leaves `git status` clean."""
    repo = clone(reproduced_tiny_project, tmp_path / "clone")
    out = sh(repo, "dvc", "repro")
    assert f"Running stage 'train@{CELL}'" in out  # trained again here, not restored
    assert_reproduces(repo, reproduced_tiny_project, "a fresh clone's dvc repro")
    assert (repo / "timings" / f"{CELL}.json").is_file()  # timing is kept, out of the hashes


# Moments in a cell's life, as its `dvc repro` output shows them: the stage starting (torch
# importing), the untrained model evaluated (epoch 0), the last epoch done and outputs written.
CELL_MOMENTS = (f"Running stage 'train@{CELL}'", "epoch   0", "epoch   1")


def test_a_cell_killed_at_a_seeded_moment_is_trained_once_more_and_nothing_else(
        reproduced_tiny_project, tmp_path):
    rng = random.Random(f"{FAULT_SEED}-cell")
    moment, delay = rng.choice(CELL_MOMENTS), rng.uniform(0.0, 0.3)
    what = f"train cell SIGKILLed {delay:.2f} s after {moment!r} (seed {FAULT_SEED})"
    repo = clone(reproduced_tiny_project, tmp_path / "clone")
    proc = subprocess.Popen(["dvc", "repro"], cwd=repo, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen, killed = [], []
    for line in proc.stdout:
        seen.append(line)
        if moment in line and not killed:
            time.sleep(delay)
            deadline = time.monotonic() + 30
            while not killed and time.monotonic() < deadline:  # the stage may still be starting
                for pid in processes(repo, "stages/train.py"):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                time.sleep(0.05)
    assert proc.wait(timeout=300) != 0 and killed, what + "".join(seen)

    out = sh(repo, "dvc", "repro")
    ran = re.findall(r"Running stage '([^']+)'", out)
    assert ran.count(f"train@{CELL}") == 1, what + out  # the killed cell, once
    assert not {"download@shapes", "stats@shapes", "start@resnet18"} & set(ran), what + out
    assert_reproduces(repo, reproduced_tiny_project, what)


def test_a_full_disk_fails_the_cell_clearly_and_keeps_lock_cache_and_outputs(
        reproduced_tiny_project, tmp_path):
    """The file size limit (`ulimit -f`) stands in for a full disk: the checkpoint (~45 MB) does
    not fit, the small outputs do."""
    repo = tmp_path / "repo"
    sh(tmp_path, "cp", "-a", str(reproduced_tiny_project), str(repo))
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["norm"] = "minmax"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    limit = 8 * 2**20  # bytes

    def at_most():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(["dvc", "repro"], cwd=repo, env=env(), capture_output=True, text=True,
                          preexec_fn=at_most)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert (f"error: cannot write checkpoints/{CELL}.pt: a file reached the size limit of 8.0 MiB "
            f"(`ulimit -f`)") in out, out
    assert "Traceback" not in out, out
    # DVC records the stages that finished (the check stage reads norm) and nothing of the cell.
    after = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert {s for s in lock if after[s] != lock[s]} == {"check"}, out
    cache_is_sound(repo)
    # The previous outputs are usable: back to the committed params and lock, DVC restores them.
    sh(repo, "git", "checkout", "params.yaml", "dvc.lock")
    sh(repo, "dvc", "checkout", "--force")
    assert_reproduces(repo, reproduced_tiny_project, "after a disk-full failure and a checkout")


# --- the study on the local queue ---------------------------------------------------------------
# One experiment of two cells: seed 223 is the reference's cell (in the copied run-cache: restored,
# never trained), seed 7 trains. Jobs 1: the cells run one after the other.
STUDY = ["--norms", "dataset", "--seeds", "223", "7", "--jobs", "1"]
TRAINED = "resnet18-shapes-7"
# Moments of the study, as its progress lines show them (a poll every 2 s: a stage shorter than that
# may never show): the cell's stage started (importing torch, training, writing for ~10 s on 2
# cores), the report stage started (~4 s). The kill comes 0-2 s later.
STUDY_MOMENTS = (f"running: train@{TRAINED}", "running: report")


def study(repo: Path) -> subprocess.Popen:
    """`make study` as the Makefile runs it, with this checkout's library."""
    from conftest import ROOT

    return subprocess.Popen([sys.executable, "-u", "-m", "normbench.study", *STUDY], cwd=repo,
                            env={**env(), "PYTHONPATH": str(ROOT / "src")},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def study_results(repo: Path) -> dict[str, list]:
    """{experiment name: [its cells' metrics, one entry per time it is listed]} from `dvc exp
    show --json` (read here, not through normbench), and how often each cell trained."""
    import json

    from normbench.dvcqueue import LOGS_DIR

    found: dict[str, list] = {}
    for entry in json.loads(sh(repo, "dvc", "exp", "show", "--json")):
        for exp in entry.get("experiments") or []:
            for rev in exp.get("revs") or []:
                metrics = (((rev.get("data") or {}).get("metrics") or {}).get("metrics.json")
                           or {}).get("data")
                found.setdefault(rev.get("name"), []).append(metrics)
    logs = "".join(p.read_text(errors="replace") for p in (repo / LOGS_DIR).glob("*/*.out"))
    found["trained"] = sorted(re.findall(r"Running stage 'train@([^']+)'", logs))
    return found


@pytest.fixture(scope="module")
def uninterrupted(reproduced_tiny_project, tmp_path_factory) -> dict:
    """What the study writes when nothing goes wrong, on this machine."""
    repo = tmp_path_factory.mktemp("study") / "repo"
    sh(repo.parent, "cp", "-a", str(reproduced_tiny_project), str(repo))
    out = study(repo).communicate(timeout=600)[0]
    results = study_results(repo)
    assert results["trained"] == [TRAINED], out
    return results


def fault_in_study(reference: Path, tmp_path: Path, fault: str) -> tuple[str, Path, str, int]:
    """Copy ``reference``, run the study, inject ``fault`` at a seeded moment; the moment, the
    repository, what the study printed and its exit code."""
    from normbench.dvcqueue import queue_workers

    rng = random.Random(f"{FAULT_SEED}-{fault}")
    moment, delay = rng.choice(STUDY_MOMENTS), rng.uniform(0.0, 2.0)
    what = f"{fault} SIGKILLed {delay:.2f} s after {moment!r} (seed {FAULT_SEED})"
    repo = tmp_path / "repo"
    sh(tmp_path, "cp", "-a", str(reference), str(repo))
    proc, seen = study(repo), []
    for line in proc.stdout:
        seen.append(line)
        if moment in line:
            time.sleep(delay)
            victims = [proc.pid] if fault == "study" else queue_workers(repo)
            assert victims, what + "".join(seen)
            for pid in victims:
                os.kill(pid, signal.SIGKILL)
            break
    else:
        pytest.fail(f"{what}: that moment never came:\n{''.join(seen)}")
    seen.append(proc.communicate(timeout=600)[0])
    return what, repo, "".join(seen), proc.returncode


def check_study_again(repo: Path, uninterrupted: dict, what: str) -> str:
    """The same command again: it finishes, and every invariant of the module docstring holds."""
    from normbench.dvcqueue import queue_workers

    proc = study(repo)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, what + out
    assert queue_workers(repo) == [], what  # nothing of the study is left running
    results = study_results(repo)
    names = [n for n in uninterrupted if n != "trained"]
    assert {n: v for n, v in results.items() if n != "trained"} == {
        n: uninterrupted[n] for n in names}, what + out  # each once, the same metrics
    assert results["trained"] == [TRAINED], what + out  # trained once, over both runs
    assert "Data and pipelines are up to date" in sh(repo, "dvc", "status"), what
    assert sh(repo, "git", "status", "--porcelain") == "", what
    return out


def test_the_study_killed_at_a_seeded_moment_is_followed_again_not_rerun(
        reproduced_tiny_project, uninterrupted, tmp_path):
    what, repo, out, _ = fault_in_study(reproduced_tiny_project, tmp_path, "study")
    out = check_study_again(repo, uninterrupted, what)
    # Its experiment was still queued or running when the first study died: adopted, not queued
    # a second time, or already finished.
    assert "0 already done, 1 to run" in out or "1 already done, 0 to run" in out, what + out


def test_a_queue_worker_killed_at_a_seeded_moment_loses_no_cell(
        reproduced_tiny_project, uninterrupted, tmp_path):
    from normbench.dvcqueue import queue_workers

    what, repo, out, code = fault_in_study(reproduced_tiny_project, tmp_path, "queue worker")
    # The worker's experiment process runs on. DVC then either keeps calling its task running,
    # though no worker will collect it (the study reports it lost and returns), or puts it back
    # in the queue (the study starts a worker again once that process has ended, so that its
    # finished cells are restored, not trained twice). Either way nothing is left running.
    lost = "lost: its queue worker was killed" in out and "1 of 1 experiments failed" in out
    requeued = "starting the queue again" in out and "dataset-scratch-" in out
    assert (code == 1 and lost) or (code == 0 and requeued), what + out
    assert queue_workers(repo) == [], what
    check_study_again(repo, uninterrupted, what)
