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
from conftest import FAULT_SEED, TINY_CELL, TINY_MODEL, git_user, sh, tiny_project

from normbench.timing import TIMINGS

pytestmark = pytest.mark.slow
CELL = TINY_CELL


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
    skip = {".git", ".dvc", str(TIMINGS), "__pycache__"}
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
    assert (repo / TIMINGS / f"{CELL}.json").is_file()  # timing is kept, out of the hashes


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
    assert not {"download@shapes", "stats@shapes", f"start@{TINY_MODEL}"} & set(ran), what + out
    assert_reproduces(repo, reproduced_tiny_project, what)


def test_a_full_disk_fails_the_cell_clearly_and_keeps_lock_cache_and_outputs(tmp_path):
    """The file size limit (`ulimit -f`) stands in for a full disk: resnet18's checkpoint (~45 MB)
    does not fit, the small outputs and DVC's own databases do. (smallcnn's checkpoint, ~103
    KiB, is no bigger than DVC's hash database, 64-90 KiB: no limit tells them apart.)"""
    reference = tmp_path / "reference"
    reference.mkdir()
    tiny_project(reference, "resnet18")
    sh(reference, "dvc", "repro")
    sh(reference, "git", "add", "-A")
    sh(reference, "git", "commit", "-qm", "baseline")
    repo = tmp_path / "repo"
    sh(tmp_path, "cp", "-a", str(reference), str(repo))
    cell = "resnet18-shapes-223"
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
    assert (f"error: cannot write checkpoints/{cell}.pt: a file reached the size limit of 8.0 MiB "
            f"(`ulimit -f`)") in out, out
    assert "Traceback" not in out, out
    # DVC records the stages that finished (the check stage reads norm) and nothing of the cell.
    after = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert {s for s in lock if after[s] != lock[s]} == {"check"}, out
    cache_is_sound(repo)
    # The previous outputs are usable: back to the committed params and lock, DVC restores them.
    sh(repo, "git", "checkout", "params.yaml", "dvc.lock")
    sh(repo, "dvc", "checkout", "--force")
    assert_reproduces(repo, reference, "after a disk-full failure and a checkout")


# --- the study on the local queue ---------------------------------------------------------------
# Two experiments (norm=dataset, norm=minmax) of one cell each, seed 7 (not in the copied
# run-cache: each trains), one at a time (--jobs 1): while one runs, the other waits queued.
STUDY = ["--norms", "dataset", "minmax", "--seeds", "7", "--jobs", "1"]
SEVEN = f"{TINY_MODEL}-shapes-7"
# Moments of the study, as its progress lines show them (a poll every 2 s: a stage shorter than that
# may never show), each the n-th line that says so: the first experiment's cell started (torch
# importing, training, writing: ~10 s on 2 cores), its report started (~4 s), the second's cell.
STUDY_MOMENTS = (("running: train@", 1), ("running: report", 1), ("running: train@", 2))


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def study(repo: Path) -> subprocess.Popen:
    """`make study` as the Makefile runs it, with this checkout's library."""
    from conftest import ROOT

    return subprocess.Popen([sys.executable, "-u", "-m", "normbench.study", *STUDY], cwd=repo,
                            env={**env(), "PYTHONPATH": str(ROOT / "src")},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def study_results(repo: Path) -> tuple[dict[str, list], list[tuple[str, str]]]:
    """{experiment name: [its cells' metrics, once per time it is listed]} from `dvc exp show
    --json` (read here, not through normbench), and every (experiment, cell) trained, from the
    queue's logs."""
    import json

    from normbench.dvcqueue import LOGS_DIR

    found: dict[str, list] = {}
    for entry in json.loads(sh(repo, "dvc", "exp", "show", "--json")):
        for exp in entry.get("experiments") or []:
            for rev in exp.get("revs") or []:
                metrics = (((rev.get("data") or {}).get("metrics") or {}).get("metrics.json")
                           or {}).get("data")
                found.setdefault(rev.get("name"), []).append(metrics)
    trained = []
    for log in (repo / LOGS_DIR).glob("*/*.out"):
        text = log.read_text(errors="replace")
        name = re.search(r"Reproducing experiment '([^']+)'", text)
        trained += [(name.group(1) if name else "?", cell)
                    for cell in re.findall(r"Running stage 'train@([^']+)'", text)]
    return found, sorted(trained)


@pytest.fixture(scope="module")
def uninterrupted(reproduced_tiny_project, tmp_path_factory) -> dict[str, list]:
    """What the study writes when nothing goes wrong, on this machine."""
    repo = tmp_path_factory.mktemp("study") / "repo"
    sh(repo.parent, "cp", "-a", str(reproduced_tiny_project), str(repo))
    out = finish(study(repo), "the uninterrupted study")
    results, trained = study_results(repo)
    assert len(results) == 2 and all(len(v) == 1 for v in results.values()), out
    assert trained == sorted((name, SEVEN) for name in results), out
    return results


def fault_in_study(reference: Path, tmp_path: Path, fault: str, moment: tuple[str, int],
                   delay: float) -> tuple[Path, str, int]:
    """Copy ``reference``, run the study and SIGKILL ``fault`` (the study, or the queue's
    workers while an experiment of theirs runs) ``delay`` s after ``moment``; the repository,
    what the study printed and its exit code."""
    from normbench.dvcqueue import experiment_processes, queue_workers

    repo = tmp_path / "repo"
    sh(tmp_path, "cp", "-a", str(reference), str(repo))
    proc, seen, count = study(repo), [], 0
    for line in proc.stdout:
        seen.append(line)
        count += moment[0] in line
        if count == moment[1]:
            time.sleep(delay)
            if fault == "study":
                proc.kill()
                proc.stdout.close()  # what it printed after is not needed, only that it died
                return repo, "".join(seen), proc.wait(timeout=60)
            running = experiment_processes(repo)
            assert running, f"{fault}: the moment came too late:\n{''.join(seen)}"
            # The worker that runs the experiment (its process's parent), and any other.
            victims = sorted({parent(pid) for pid in running} | set(queue_workers(repo)))
            for pid in victims:
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while set(victims) & set(queue_workers(repo)) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not set(victims) & set(queue_workers(repo)), f"{fault}: {victims} survived"
            break
    else:
        pytest.fail(f"{fault}: the moment {moment} never came:\n{''.join(seen)}")
    seen.append(finish(proc, fault))
    return repo, "".join(seen), proc.returncode


def finish(proc: subprocess.Popen, what: str, timeout_s: float = 600) -> str:
    """The rest of what ``proc`` prints; a clear failure with it if it does not end in time."""
    try:
        return proc.communicate(timeout=timeout_s)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"{what}: the study did not end in {timeout_s} s; it printed:\n"
                    f"{proc.communicate()[0]}")


def check_study_again(repo: Path, uninterrupted: dict, what: str) -> str:
    """The same command again: it finishes, and every invariant of the module docstring holds."""
    from normbench.dvcqueue import EXPS_DIR, queue_workers

    proc = study(repo)
    out = finish(proc, what)
    assert proc.returncode == 0, what + out
    assert queue_workers(repo) == [], what  # nothing of the study is left running
    results, trained = study_results(repo)
    assert results == uninterrupted, what + out  # each experiment once, the same metrics
    assert trained == sorted((name, SEVEN) for name in results), what + out  # each cell once
    assert "Data and pipelines are up to date" in sh(repo, "dvc", "status"), what
    assert sh(repo, "git", "status", "--porcelain") == "", what
    assert not list((repo / EXPS_DIR).glob("tmp*")), what  # no temporary workspace left
    return out


def test_the_study_killed_at_a_seeded_moment_is_followed_again_not_rerun(
        reproduced_tiny_project, uninterrupted, tmp_path):
    rng = random.Random(f"{FAULT_SEED}-study")
    moment, delay = rng.choice(STUDY_MOMENTS), rng.uniform(0.0, 2.0)
    what = f"study SIGKILLed {delay:.2f} s after {moment} (seed {FAULT_SEED})"
    repo, out, code = fault_in_study(reproduced_tiny_project, tmp_path, "study", moment, delay)
    assert code == -signal.SIGKILL, what + out
    out = check_study_again(repo, uninterrupted, what)
    # What was queued or running when the first study died is adopted, not queued a second time.
    assert re.search(r"study: 2 experiments .*; [012] already done, [012] to run", out)


def test_a_queue_worker_killed_at_a_seeded_moment_loses_no_cell(
        reproduced_tiny_project, uninterrupted, tmp_path):
    from normbench.dvcqueue import LOST, queue_workers

    delay = random.Random(f"{FAULT_SEED}-queue worker").uniform(0.0, 2.0)
    what = f"queue worker SIGKILLed {delay:.2f} s into the first cell (seed {FAULT_SEED})"
    repo, out, code = fault_in_study(reproduced_tiny_project, tmp_path, "queue worker",
                                     ("running: train@", 1), delay)
    # The killed worker's experiment runs on to its end, but nobody collects it: it is reported
    # lost. The other experiment, queued, gets a new worker once that one has ended (not before:
    # beside it, a requeued copy would train the same cell twice).
    first = re.search(r"  (\S+): running: train@", out).group(1)
    assert f"  {first}: {LOST}" in out, what + out
    assert "starting the queue again" in out and "1 of 2 experiments failed" in out, what + out
    assert code == 1 and queue_workers(repo) == [], what + out
    out = check_study_again(repo, uninterrupted, what)
    assert "1 already done, 1 to run" in out, what + out  # the lost one, its cell restored
