"""Long use of one repository, as a user lives with it: a seeded sequence of studies, `dvc exp
remove -A`, workspace `dvc exp run`, and studies stopped by Ctrl-C or SIGKILL at a seeded
moment. DVC's queue stays listable after every step; at the end a study and `compare` work
(the latter repairing a queue wedged by hand), and every finished cell is counted once.

Cheap by design: one tiny cell per experiment and seed (smallcnn on 48 shapes, 1 epoch), two
experiments in the sequence, each cell trained once and restored from DVC's run-cache after;
most studies run through the study's executor alone (`run_local`), without the comparison that
`make study` writes after it. The sequence repeats with NORMBENCH_FAULT_SEED set to the seed its
failure names.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import FAULT_SEED, ROOT, TINY_MODEL, copy_project, section, sh, table_rows

from normbench import dvcqueue
from normbench.study import plan

pytestmark = pytest.mark.slow
STEPS = 30
KEEP = 1  # successful queue tasks kept (NORMBENCH_KEEP_LOGS): the sequence queues far more
# What a user does next, and how often (weights): `make study`, the study's executor alone,
# `dvc exp remove -A`, `dvc exp run` in the workspace, Ctrl-C or SIGKILL of either study.
ACTIONS = {"study": 1, "executor": 3, "remove": 1.5, "workspace": 1, "ctrl-c": 1.5, "kill": 1.5}
STOPPED_STUDY = 1 / 3  # Ctrl-C or SIGKILL stop `make study` this often, else its executor
# The norms of a study, seed 223: two experiments in all (the name is the params' hash), the
# first of them in the copied run-cache.
NORMS = (("dataset",), ("minmax",), ("dataset", "minmax"))
SEED = 223
FINAL = (("dataset", "minmax"), (1, SEED))  # two more experiments: the final study runs them
SETTINGS = ("norm=dataset weights=scratch", "norm=minmax weights=scratch")
LINES = 4  # an interrupt comes after one of the first LINES lines a study prints...
DELAY_S = 3.0  # ...and up to this long after it
# `make study`'s executor alone, as the study calls it, under the study's lock.
EXECUTOR = """
import json, sys
from pathlib import Path
from normbench.dvcqueue import run_local
from normbench.runstate import Experiment, study_lock
with study_lock(Path(".")):
    exps = [Experiment(n, w, tuple(s), tuple(p), pre) for n, w, s, p, pre in json.loads(sys.argv[1])]
    outcomes = run_local(Path("."), exps, 1)
print(outcomes)
sys.exit(0 if set(outcomes.values()) <= {"done"} else 1)
"""


def env() -> dict:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(ROOT / "src"), dvcqueue.KEEP_LOGS_ENV: str(KEEP)}


def study(repo: Path, norms: tuple, seeds: tuple = (SEED,)) -> subprocess.Popen:
    """`make study` in ``repo``, in a session of its own (Ctrl-C reaches its process group)."""
    return subprocess.Popen(
        [sys.executable, "-u", "-m", "normbench.study", "--norms", *norms, "--baseline",
         norms[0], "--seeds", *map(str, seeds), "--jobs", "1"], cwd=repo,
        env={**env(), "TORCH_HOME": str(repo / "torch")}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)


def executor(repo: Path, norms: tuple) -> subprocess.Popen:
    """The study's executor on what `make study --norms <norms>` plans (its names included)."""
    exps = [[e.norm, e.weights, e.seeds, e.params, e.pretrain]
            for e in plan(list(norms), ["scratch"], [SEED])]
    return subprocess.Popen([sys.executable, "-u", "-c", EXECUTOR, json.dumps(exps)], cwd=repo,
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def finish(proc: subprocess.Popen, what: str) -> str:
    try:
        return proc.communicate(timeout=600)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"{what}: no end in 600 s:\n{proc.communicate()[0]}")


def dvc_retrying(repo: Path, *args: str) -> str:
    """A dvc command that may meet the lock of a queue worker collecting its experiment (a
    killed study's workers run on): tried again, as a user would."""
    deadline = time.monotonic() + 120
    while True:
        proc = subprocess.run(["dvc", *args], cwd=repo, env=env(), capture_output=True,
                              text=True)
        out = proc.stdout + proc.stderr
        if proc.returncode == 0:
            return out
        assert "Unable to acquire lock" in out and time.monotonic() < deadline, out
        time.sleep(1)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def interrupt(repo: Path, rng: random.Random, sig: signal.Signals) -> str:
    """`make study` or its executor stopped ``delay`` s after the ``line``-th line it prints:
    Ctrl-C reaches its process group, as in a terminal; SIGKILL the study alone, as `kill -9`
    does. (`make study` prints a line once it has planned and read what is done; its executor
    one per change of an experiment: an interrupt lands before, while and after they run.)"""
    # One with work left, when there is (a user stops a study that runs something).
    names = {n: {e.name for e in plan(list(n), ["scratch"], [SEED])} for n in NORMS}
    ended = dvcqueue.experiment_names(repo)
    norms = rng.choice([n for n in NORMS if not names[n] <= ended] or NORMS)
    whole = rng.random() < STOPPED_STUDY
    line, delay = rng.randint(1, LINES), rng.uniform(0.0, DELAY_S)
    proc = (study if whole else executor)(repo, norms)
    seen, sent = [], "not sent: it ended first"
    for text in proc.stdout:
        seen.append(text)
        if len(seen) == line:
            time.sleep(delay)
            if proc.poll() is None and sig == signal.SIGINT:
                os.killpg(proc.pid, sig)
                sent = "sent"
            elif proc.poll() is None:
                proc.kill()
                sent = "sent"
            break
    rest = finish(proc, f"{sig.name} study")
    # What it had started goes on in its process group (`dvc exp run --queue`: the experiment
    # is queued all the same, as after a user's kill); the next step starts when it has ended.
    deadline = time.monotonic() + 120
    while group_alive(proc.pid):
        assert time.monotonic() < deadline, f"{sig.name} study: its children never ended"
        time.sleep(0.2)
    return (f"{sig.name} {delay:.1f} s after line {line} of {'a study' if whole else 'an executor'}"
            f" of {' '.join(norms)} ({sent}): exit {proc.returncode}\n" + "".join(seen) + rest)


def step(repo: Path, rng: random.Random, action: str) -> str:
    """One thing a user does; what it printed, after what it was."""
    if action in ("study", "executor"):
        norms = rng.choice(NORMS)
        proc = (study if action == "study" else executor)(repo, norms)
        out = finish(proc, action)
        assert proc.returncode == 0, out  # every study works
        return f"{action} of {' '.join(norms)}\n{out}"
    if action == "remove":
        return "dvc exp remove -A\n" + dvc_retrying(repo, "exp", "remove", "-A")
    if action == "workspace":
        norm, seed = rng.choice(["dataset", "minmax"]), rng.choice(FINAL[1])
        return (f"dvc exp run -S norm={norm} -S seeds=[{seed}]\n"
                + dvc_retrying(repo, "exp", "run", "-S", f"norm={norm}", "-S", f"seeds=[{seed}]"))
    return interrupt(repo, rng, signal.SIGINT if action == "ctrl-c" else signal.SIGKILL)


def queue_status(repo: Path) -> list[dict]:
    """DVC's queue as DVC lists it (read here, without normbench's repair)."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        return dvc_repo.experiments.celery_queue.status()


def finished_cells(repo: Path) -> dict[tuple[str, int], set[float]]:
    """{(setting, seed): every final accuracy found for it} over the commit and its finished
    experiments, from `dvc exp show --json` and git (read here, not through normbench)."""
    found: dict[tuple[str, int], set[float]] = {}
    for entry in json.loads(sh(repo, "dvc", "exp", "show", "--json")):
        if entry["rev"] == "workspace":
            continue
        revs = [entry] + [rev for exp in entry.get("experiments") or []
                          if (exp.get("executor") or {}).get("state", "success") == "success"
                          for rev in exp.get("revs") or []]
        for rev in revs:
            data = rev.get("data") or {}
            params = ((data.get("params") or {}).get("params.yaml") or {}).get("data")
            if not (data.get("metrics") or {}).get("metrics.json"):
                continue
            # The report's record of every cell, in git (not a DVC metric): fractions, unrounded.
            metrics = json.loads(sh(repo, "git", "show", f"{rev['rev']}:report/cells.json"))
            for seed in params["seeds"]:
                cell = metrics.get(f"{TINY_MODEL}-shapes-{seed}")
                if cell:
                    key = (f"norm={params['norm']} weights={params['weights']}", seed)
                    found.setdefault(key, set()).add(cell["final_acc"])
    return found


def test_a_long_seeded_use_leaves_every_study_and_compare_working(reproduced_tiny_project,
                                                                    tmp_path):
    rng = random.Random(f"{FAULT_SEED}-long use")
    repo = tmp_path / "repo"
    copy_project(reproduced_tiny_project, repo)
    log: list[str] = []
    for i in range(STEPS):
        action = rng.choices(list(ACTIONS), weights=list(ACTIONS.values()))[0]
        started = time.monotonic()
        log.append(f"--- step {i + 1}/{STEPS} (seed {FAULT_SEED}): " + step(repo, rng, action))
        print(f"{log[-1].splitlines()[0]} ({time.monotonic() - started:.0f} s)")  # -s shows it
        try:
            queue_status(repo)  # the queue never wedges
        except Exception as e:  # noqa: BLE001 (any failure of DVC's listing)
            pytest.fail(f"DVC's queue cannot be listed after: {e}\n" + "\n".join(log))
    what = "\n".join(log)

    proc = study(repo, *FINAL)
    out = finish(proc, "the final study")
    assert proc.returncode == 0, what + out
    queued = (what + out).count(": queued\n")
    print(f"{queued} experiments queued in all")
    assert queued > KEEP + 1, what + out  # more than the queue keeps: some were pruned
    assert "0 conflicting cell(s)" in out, what + out
    assert dvcqueue.queue_workers(repo) == [], what  # nothing of the study left running
    assert not list((repo / dvcqueue.EXPS_DIR).glob("tmp*")), what  # no temporary workspace
    [done] = [t for t in queue_status(repo) if t["status"] == "Success"]  # older ones pruned

    # A queue wedged by hand (a finished task's folder deleted): `compare` repairs it.
    shutil.rmtree(repo / dvcqueue.LOGS_DIR / done["rev"])
    compared = subprocess.run([sys.executable, "-m", "normbench.compare"], cwd=repo, env=env(),
                              capture_output=True, text=True)
    assert compared.returncode == 0, what + compared.stdout + compared.stderr
    assert f"task {done['rev'][:7]} had ended without a record" in compared.stderr
    assert "0 conflicting cell(s)" in compared.stdout
    sh(repo, "dvc", "queue", "status")
    # Every finished cell counted once: one result per cell, whichever runs hold it, and each
    # setting's mean ± std over its seeds, each seed once.
    cells = finished_cells(repo)
    assert all(len(results) == 1 for results in cells.values()), cells
    table2 = {r["setting"]: r["shapes"]
              for r in table_rows(section((repo / "compare" / "README.md").read_text(),
                                          "Table 2: final test accuracy"))}
    for setting in SETTINGS:
        seeds = sorted(seed for s, seed in cells if s == setting)
        assert seeds == sorted(FINAL[1]), (setting, cells)
        acc = np.array([next(iter(cells[(setting, seed)])) for seed in seeds]) * 100
        assert table2[setting].startswith(f"{acc.mean():.2f} ± {acc.std(ddof=1):.2f}"), table2
