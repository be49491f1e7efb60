"""A revision whose outputs are not in the local DVC cache (a commit made on another machine)
is named with the command that brings them, and the rest is compared: no traceback."""

import os
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import TINY_CELL, TINY_MODEL, copy_project, section, sh

CELL = TINY_CELL
TRAIN_OUTPUTS = ("metrics", "plots", "predictions", "checkpoints", "weightdist")


def cache_object(repo: Path, md5: str) -> Path:
    return repo / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def test_compare_after_an_experiment_and_git_checkout_names_what_head_lacks(
        reproduced_tiny_project, tmp_path):
    repo = tmp_path / "repo"
    copy_project(reproduced_tiny_project, repo)
    # As on a machine that never trained HEAD's cell: neither its files nor their cache entries.
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    for out in lock[f"train@{CELL}"]["outs"]:
        cache_object(repo, out["md5"]).unlink()
    for name in TRAIN_OUTPUTS:
        sh(repo, "rm", "-rf", name)
    # The sequence a user runs: a setting as an experiment, back to the committed dvc.lock, compare
    sh(repo, "dvc", "exp", "run", "-S", "norm=minmax", "-n", "minmax")
    sh(repo, "git", "checkout", ".")
    proc = subprocess.run([sys.executable, "-m", "normbench.compare", "--out", "compare"],
                          cwd=repo, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(repo / "src")})
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    head = sh(repo, "git", "rev-parse", "--short=7", "HEAD").strip()
    branch = sh(repo, "git", "branch", "--show-current").strip()
    named = (f"{branch} ({head}): weightdist/{CELL}/samples.npz, "
             f"weightdist/{CELL}/summary.json")
    assert f"not in the local DVC cache: {named}" in proc.stdout
    assert "`dvc pull`" in proc.stdout and "`dvc repro`" in proc.stdout
    page = (repo / "compare" / "README.md").read_text()
    missing = section(page, "Outputs not in the local DVC cache")
    assert named in missing and "minmax" not in missing  # the experiment's files are here
    # ...and the rest is compared: both settings in the tables, the experiment's weights drawn
    assert "norm=minmax weights=scratch" in page and "norm=dataset weights=scratch" in page
    assert (repo / "compare" / f"weights_{TINY_MODEL}-shapes.png").is_file()
