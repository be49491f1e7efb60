"""Two git clones sharing one DVC remote (a local folder standing in for NFS, S3, ...): what clone
A trained, clone B gets back without training, by DVC's own push/pull, run-cache and experiments.

A: `dvc repro`, commit, `dvc push --run-cache`, `git push`; `dvc exp run -S norm=minmax`,
`dvc exp push --run-cache origin <exp>`. B: `git clone`, `dvc pull --run-cache`, `dvc repro`
(no-op), `dvc exp run --pull -S norm=minmax` (run-cache), `dvc exp pull origin <exp>`,
`dvc exp apply <exp>`.
"""

import json
from pathlib import Path

import pytest
import yaml
from conftest import TINY_CELL, git_user, sh, tiny_project

from normbench.timing import TIMINGS

CELL = TINY_CELL
OUTPUTS = (f"metrics/{CELL}.json", f"predictions/{CELL}.npy", f"checkpoints/{CELL}.pt")
CACHED = f"Stage 'train@{CELL}' is cached - skipping run, checking out outputs"
pytestmark = pytest.mark.slow


def outputs(repo: Path) -> dict[str, bytes]:
    """The train cell's metrics, predictions and checkpoint, byte for byte."""
    return {name: (repo / name).read_bytes() for name in OUTPUTS}


def timings(repo: Path) -> list[str]:
    """The timing files in ``repo``: only a cell that trained here writes one (normbench.timing).
    Its outputs cannot tell: a retrain on the same machine writes the same bytes."""
    return sorted(p.name for p in (repo / TIMINGS).glob("*.json") if p.name != ".keep.json")


def exp_metrics(show: list, name: str, repo: Path) -> dict:
    """The cell's record of experiment ``name`` of `dvc exp show --json` output: its commit's
    report/cells.json (git-tracked, not a DVC metric)."""
    for entry in show:
        for exp in entry.get("experiments") or []:
            for rev in exp.get("revs") or []:
                if rev.get("name") == name:
                    return json.loads(sh(repo, "git", "show", f"{rev['rev']}:report/cells.json"))[CELL]
    raise AssertionError(f"experiment {name!r} not in `dvc exp show --json`: {show}")


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> dict:
    """Runs the whole story once; the tests below assert on what each step printed and left."""
    tmp = tmp_path_factory.mktemp("shared")
    origin, remote, a, b = tmp / "origin.git", tmp / "dvc-remote", tmp / "a", tmp / "b"
    sh(tmp, "git", "init", "-q", "--bare", str(origin))
    remote.mkdir()
    a.mkdir()
    s: dict = {"remote": remote, "a": a, "b": b}

    # Clone A: the project, its git origin and the shared DVC remote, set up once and committed.
    tiny_project(a)
    sh(a, "dvc", "remote", "add", "-d", "shared", str(remote))
    sh(a, "git", "remote", "add", "origin", str(origin))
    sh(a, "git", "commit", "-qam", "shared DVC remote")
    s["a_repro"] = sh(a, "dvc", "repro")
    sh(a, "git", "add", "-A")
    sh(a, "git", "commit", "-qm", "baseline")
    sh(a, "dvc", "push", "--run-cache")
    sh(a, "git", "push", "-q", "origin", "HEAD")
    s["a_base"] = outputs(a)
    s["a_exp_run"] = sh(a, "dvc", "exp", "run", "-S", "norm=minmax")
    names = sh(a, "dvc", "exp", "list", "--name-only").split()
    assert len(names) == 1, names
    s["exp"] = exp = names[0]
    s["a_minmax"] = outputs(a)
    # Pushes the experiment's git ref to origin, its cached outputs to the DVC remote, and (with
    # --run-cache) the run-cache entry of the minmax cell: plain `dvc exp push` leaves that out.
    sh(a, "dvc", "exp", "push", "--run-cache", "origin", exp)
    branch = sh(a, "git", "rev-parse", "--abbrev-ref", "HEAD").strip()

    # Clone B: another checkout that has never trained anything.
    sh(tmp, "git", "clone", "-q", "-b", branch, str(origin), str(b))
    git_user(b)
    sh(b, "dvc", "pull", "--run-cache")
    s["b_status"] = json.loads(sh(b, "dvc", "status", "--json"))
    s["b_repro"] = sh(b, "dvc", "repro")
    s["b_base"] = outputs(b)
    # A setting trained in A but never committed: DVC looks it up in the run-cache; --pull fetches
    # the cached outputs the run-cache entry points at (pull --run-cache copies only the entries).
    s["b_exp_run"] = sh(b, "dvc", "exp", "run", "--pull", "-S", "norm=minmax")
    s["b_exp_run_outputs"] = outputs(b)

    # Back to the baseline, then A's experiment itself: its git ref from origin, its outputs
    # from the DVC remote, applied to the workspace.
    sh(b, "git", "reset", "-q", "--hard")
    sh(b, "dvc", "checkout", "-q", "--force")
    s["b_reset"] = outputs(b)
    s["b_exp_pull"] = sh(b, "dvc", "exp", "pull", "origin", exp)
    s["b_exp_list"] = sh(b, "dvc", "exp", "list", "--name-only").split()
    s["b_exp_show"] = json.loads(sh(b, "dvc", "exp", "show", "--json"))
    s["b"] = b
    s["b_apply"] = sh(b, "dvc", "exp", "apply", exp)
    s["b_applied"] = outputs(b)
    s["b_applied_status"] = json.loads(sh(b, "dvc", "status", "--json"))
    s["b_applied_params"] = yaml.safe_load((b / "params.yaml").read_text())
    s["a_timings"], s["b_timings"] = timings(a), timings(b)
    return s


def test_clone_a_trained_both_settings_and_filled_the_remote(shared):
    assert f"Running stage 'train@{CELL}'" in shared["a_repro"]
    assert f"Running stage 'train@{CELL}'" in shared["a_exp_run"]
    assert shared["a_base"] != shared["a_minmax"]
    # The shared remote's run-cache: one entry per stage run, the train cell's under both settings.
    runs = [p for p in (shared["remote"] / "runs").rglob("*") if p.is_file()]
    entries = [yaml.safe_load(p.read_text()) for p in runs]
    norms = {e["params"]["params.yaml"]["norm"] for e in entries
             if e["cmd"].startswith("python stages/train.py")}
    assert norms == {"dataset", "minmax"}
    b_runs = shared["b"] / ".dvc" / "cache" / "runs"  # B's `dvc pull --run-cache` copied them all
    assert {p.relative_to(shared["remote"] / "runs") for p in runs} <= {
        p.relative_to(b_runs) for p in b_runs.rglob("*") if p.is_file()}


def test_clone_b_repro_restores_the_committed_cells_without_training(shared):
    assert shared["b_status"] == {}  # `dvc pull` alone made the workspace match dvc.lock
    out = shared["b_repro"]
    for stage in ("download@shapes", "stats@shapes", f"train@{CELL}", "report"):
        assert f"Stage '{stage}' didn't change, skipping" in out, out
    assert "Data and pipelines are up to date." in out
    assert "Running stage" not in out, out
    assert shared["b_base"] == shared["a_base"]  # metrics, predictions and checkpoint, bytes


def test_clone_b_exp_pull_and_apply_restore_a_s_experiment(shared):
    exp, a_minmax = shared["exp"], shared["a_minmax"]
    assert shared["b_reset"] == shared["a_base"]  # B is back at the baseline before the pull
    assert exp in shared["b_exp_pull"] and "Git remote 'origin'" in shared["b_exp_pull"]
    assert exp in shared["b_exp_list"]
    assert exp_metrics(shared["b_exp_show"], exp, shared["b"]) == json.loads(a_minmax[f"metrics/{CELL}.json"])
    assert "Running stage" not in shared["b_apply"]
    assert shared["b_applied_params"]["norm"] == "minmax"
    assert shared["b_applied_status"] == {}  # apply checked out the outputs of its dvc.lock
    assert shared["b_applied"] == a_minmax  # A's outputs (B's timings show it trained nothing)
    assert shared["b_timings"] == []  # B trained nothing, in any step


def test_clone_b_exp_run_is_restored_from_the_shared_run_cache(shared):
    out = shared["b_exp_run"]
    assert CACHED in out, out
    assert f"Running stage 'train@{CELL}'" not in out, out
    assert shared["b_exp_run_outputs"] == shared["a_minmax"]
    assert shared["b_timings"] == [] and shared["a_timings"] == [f"{CELL}.json"]
