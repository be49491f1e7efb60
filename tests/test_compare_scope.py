"""`make compare` reads HEAD and its experiments; the rest of the history is counted in one line
that names the option including it (`--all-commits`), which then compares it too."""

import os
import subprocess
import sys
from pathlib import Path

from conftest import copy_project, section, sh, table_rows

MINMAX, DATASET = "norm=minmax weights=scratch", "norm=dataset weights=scratch"


def compare(repo: Path, *args: str) -> tuple[str, dict[str, dict]]:
    proc = subprocess.run([sys.executable, "-m", "normbench.compare", "--out", "compare", *args],
                          cwd=repo, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(repo / "src")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    page = (repo / "compare" / "README.md").read_text()
    table2 = {r["setting"]: r for r in table_rows(section(page, "Table 2: final test accuracy"))}
    return proc.stdout + section(page, "Runs"), table2


def test_compare_reads_head_and_its_experiments_and_counts_the_rest(reproduced_tiny_project,
                                                                     tmp_path):
    repo = tmp_path / "repo"
    copy_project(reproduced_tiny_project, repo)
    # An experiment on the commit "baseline", then a new commit: the experiment is history now.
    sh(repo, "dvc", "exp", "run", "-S", "norm=minmax", "-n", "old-minmax")
    sh(repo, "git", "checkout", ".")
    (repo / "NOTES.md").write_text("a note\n")
    sh(repo, "git", "add", "NOTES.md")
    sh(repo, "git", "commit", "-qm", "a note")
    # and a branch of two more commits, which `dvc exp show --all-commits` reads too
    sh(repo, "git", "branch", "side", "HEAD~1")
    sh(repo, "git", "checkout", "-q", "side")
    sh(repo, "git", "commit", "-q", "--allow-empty", "-m", "side 1")
    sh(repo, "git", "commit", "-q", "--allow-empty", "-m", "side 2")
    sh(repo, "git", "checkout", "-q", "-")

    out, table2 = compare(repo)
    assert set(table2) == {DATASET}, table2  # HEAD's own cell; the experiment is not read
    # The commits "project", "baseline", "side 1" and "side 2"; the experiment on "baseline".
    line = ("left out: the history, 4 other commit(s) and 1 experiment(s) based on them "
            "(`make compare ALL_COMMITS=1` or `python -m normbench compare --all-commits` "
            "includes them)")
    assert out.count(line) == 1, out  # printed once; the page says it too, as a sentence
    assert "Left out: the history, 4 other commit(s)" in out, out

    out, table2 = compare(repo, "--all-commits")
    assert set(table2) == {DATASET, MINMAX}, table2
    assert "left out: the history" not in out.lower(), out

    # An experiment of HEAD is read without the option, and nothing of HEAD is counted as left out.
    sh(repo, "dvc", "exp", "run", "-S", "norm=minmax", "-n", "new-minmax")
    sh(repo, "git", "checkout", ".")
    out, table2 = compare(repo)
    assert set(table2) == {DATASET, MINMAX}, table2
    assert "4 other commit(s) and 1 experiment(s)" in out, out
