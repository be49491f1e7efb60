"""`make study` end to end on a tiny configuration: interrupted, resumed, a failing experiment
reported without stopping the others, and a third run that has nothing left to do."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, tiny_project

pytestmark = pytest.mark.slow
STUDY = ["--norms", "dataset", "minmax", "--seeds", "1", "2", "--set", "train.epochs=1"]


def study(repo: Path, *args: str, **kwargs) -> subprocess.Popen:
    """`make study` as the Makefile runs it, in ``repo``, with this environment's dvc."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TORCH_HOME": str(repo / "torch"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.Popen([sys.executable, "-u", "-m", "normbench.study", *args], cwd=repo,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **kwargs)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=600)
    return proc.returncode, out


def test_study_resumes_reports_failures_and_compares(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    tiny_project(repo)

    # 1. Interrupted (Ctrl-C) once the first cell has finished and the second one started.
    proc = study(repo, *STUDY)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "running: train@resnet18-shapes-2" in line:
            proc.send_signal(signal.SIGINT)
            break
    code, out = finish(proc)
    out = "".join(seen) + out
    assert code == 130, out
    assert "run the same command to resume" in out
    first = out.split(": running")[0].split()[-1]  # the experiment that was running

    # 2. Resumed, with two more experiments that fail (ImageNet weights cannot be fetched here):
    # they are reported by name with their logs, and the others finish and are compared.
    code, out = finish(study(repo, *STUDY, "--weights", "scratch", "imagenet", "--jobs", "2"))
    assert code == 1, out
    assert "4 experiments (2 norms x 2 weights)" in out and "0 already done, 4 to run" in out
    failed = [line for line in out.splitlines() if line.startswith("study: experiment ")]
    assert len(failed) == 2 and all("-imagenet-" in f and " failed: " in f for f in failed), out
    log = Path(failed[0].split(" failed: ")[1])
    assert "error: cannot get ImageNet weights resnet18-" in log.read_text()
    assert "2 of 4 experiments failed" in out
    resumed = next(Path(p) for p in (repo / ".dvc" / "tmp" / "exps" / "run").glob("*/*.out")
                   if f"Reproducing experiment '{first}'" in Path(p).read_text()
                   and "is cached - skipping run" in Path(p).read_text())
    text = resumed.read_text()
    assert "Stage 'train@resnet18-shapes-1' is cached - skipping run" in text  # not retrained
    assert "Running stage 'train@resnet18-shapes-2'" in text

    page = (repo / "compare" / "README.md").read_text()
    for setting in ("norm=dataset weights=scratch", "norm=minmax weights=scratch"):
        assert setting in page
    assert " ± " in page and "Welch" in page
    assert "train.epochs" in page  # the params held fixed are stated
    weights = page.split("## What normalization does to the weights")[1].split("## ")[0]
    assert "**resnet18 on shapes, first conv (conv1)**, against norm=dataset" in weights
    assert "minmax (final drift " in weights
    assert "Welch p=" in weights and "permutation p=" in weights
    assert (repo / "compare" / "weights_resnet18-shapes.png").read_bytes()[:4] == b"\x89PNG"

    # 3. Nothing left to do for the scratch study: nothing is queued, the comparison is rewritten.
    code, out = finish(study(repo, *STUDY))
    assert code == 0, out
    assert "2 already done, 0 to run" in out and "compare/index.html" in out
