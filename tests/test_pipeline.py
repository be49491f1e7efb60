"""End to end: `dvc repro`, `dvc exp run -S norm=...`, metrics diff, plots and the run-cache,
on a tiny configuration in a temporary git repository."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import sh, tiny_project

from normbench.dvcqueue import start_queue
from normbench.grid import check_grid
from normbench.registry import ConfigError
from normbench.runs import parse_exp_show

CELL = "resnet18-shapes-223"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """The project with a tiny grid, reproduced and committed."""
    repo = tmp_path_factory.mktemp("normbench")
    tiny_project(repo)
    sh(repo, "dvc", "repro")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "baseline")
    return repo


def test_repro_writes_metrics_curves_predictions_and_report(repo):
    metrics = json.loads((repo / "metrics" / f"{CELL}.json").read_text())
    assert metrics["epochs"] == 1 and metrics["best_epoch"] == 1
    assert 0.0 <= metrics["best_acc"] <= 1.0 and metrics["images_per_s"] > 0
    curve = (repo / "plots" / CELL / "plots" / "metrics" / "test_acc.tsv").read_text().split()
    assert curve[:2] == ["step", "test_acc"] and curve[2::2] == ["0", "1"]
    assert float(curve[-1]) == pytest.approx(metrics["best_acc"])
    labels = np.load(repo / "data" / "shapes" / "test_labels.npy")
    preds = np.load(repo / "predictions" / f"{CELL}.npy")
    assert (preds == labels).mean() == pytest.approx(metrics["best_acc"])
    stats = json.loads((repo / "data" / "stats" / "shapes.json").read_text())
    assert stats["n_images"] == 38  # 48 images, 10 (20 %, rounded up) held out for the test split
    page = (repo / "report" / "index.html").read_text()
    assert "<h1>normbench report</h1>" in page and "data:image/png;base64," in page
    assert f"{metrics['best_acc'] * 100:.2f}" in (repo / "report" / "README.md").read_text()
    assert "<script" not in page
    assert (repo / "report" / "accuracy_history.png").read_bytes()[:4] == b"\x89PNG"
    assert (repo / "checkpoints" / f"{CELL}.pt").is_file()
    summary = json.loads((repo / "weightdist" / CELL / "summary.json").read_text())
    assert [e["epoch"] for e in summary["epochs"]] == [0, 1]
    assert summary["epochs"][0]["first_conv"]["drift"] == 0.0
    assert metrics["drift_first_conv"] == summary["epochs"][1]["first_conv"]["drift"] > 0
    assert f"weights_{CELL}.png" in (repo / "report" / "README.md").read_text()


def test_plots_show_has_accuracy_and_loss_per_cell(repo):
    out = json.loads(sh(repo, "dvc", "plots", "show", "--json"))
    assert not out.get("errors")
    titles = set(out["data"])
    assert {"Test accuracy", "Test loss", "Weight drift, first conv"} <= titles
    values = out["data"]["Test accuracy"][0]["content"]["data"]["values"]
    assert {v["cell"] for v in values} == {CELL} and len(values) == 2


def test_exp_run_metrics_diff_and_run_cache_restore(repo):
    baseline = (repo / "metrics" / f"{CELL}.json").read_text()
    out = sh(repo, "dvc", "exp", "run", "-S", "norm=minmax")
    assert f"Running stage 'train@{CELL}'" in out
    assert "Running stage 'download@shapes'" not in out  # only the cells depend on norm
    diff = json.loads(sh(repo, "dvc", "metrics", "diff", "--json"))
    change = diff["metrics.json"][f"{CELL}.best_acc"]  # per cell, from the git-tracked summary
    assert change["old"] == json.loads(baseline)["best_acc"]
    minmax = json.loads((repo / "metrics" / f"{CELL}.json").read_text())
    assert change["new"] == minmax["best_acc"]
    summary = json.loads((repo / "metrics.json").read_text())
    assert summary[CELL] == minmax  # and the mean over seeds, what a delta should be read on
    assert summary["resnet18-shapes"] == {"n_seeds": 1, "best_acc_mean": minmax["best_acc"],
                                          "final_acc_mean": minmax["final_acc"],
                                          "drift_first_conv_mean": minmax["drift_first_conv"],
                                          "drift_deep_conv_mean": minmax["drift_deep_conv"]}
    mean = diff["metrics.json"]["resnet18-shapes.best_acc_mean"]
    assert mean["old"] == change["old"] and mean["new"] == change["new"]
    out = sh(repo, "dvc", "exp", "run", "-S", "norm=dataset")
    assert f"Stage 'train@{CELL}' is cached - skipping run, checking out outputs" in out, out
    assert "Running stage 'train@" not in out  # restored from the run-cache, not retrained
    assert (repo / "metrics" / f"{CELL}.json").read_text() == baseline

    # compare: the seed's tables over the commit and both experiments, numbers from the metrics.
    env_out = sh(repo, "env", f"PYTHONPATH={repo / 'src'}", sys.executable, "-m",
                 "normbench.compare", "--out", "compare")
    assert "compare/index.html" in env_out
    table = (repo / "compare" / "README.md").read_text()
    base_acc = json.loads(baseline)["best_acc"] * 100
    delta = minmax["best_acc"] * 100 - base_acc
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()
            if line.startswith("| resnet18")]
    assert ["resnet18", "norm=dataset weights=scratch", f"{base_acc:.2f}"] in rows  # Table 2
    colour = "green" if delta > 0 else "red"
    minmax_row = next(r for r in rows if r[1] == "norm=minmax weights=scratch")
    assert minmax_row[2].startswith(
        f"{minmax['best_acc'] * 100:.2f} $\\textcolor{{{colour}}}{{{delta:+.2f}}}$ (")
    assert "McNemar" in table and "**shapes**:" in table
    assert (repo / "compare" / "figure1.png").read_bytes()[:4] == b"\x89PNG"


def test_queue_runs_settings_in_parallel_workers(repo, monkeypatch):
    sh(repo, "dvc", "exp", "run", "--queue", "-S", "norm=instance,none")
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    start_queue(repo, 2)
    deadline = time.monotonic() + 540
    while time.monotonic() < deadline:
        status = sh(repo, "dvc", "queue", "status")
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(2)
    assert status.count("Success") == 2 and "Failed" not in status, status
    runs = parse_exp_show(json.loads(sh(repo, "dvc", "exp", "show", "--json")))
    done = {r.setting for r in runs if ("resnet18", "shapes", 223) in r.cells}
    assert {"norm=instance weights=scratch", "norm=none weights=scratch"} <= done


def test_switching_weights_touches_only_the_train_cells_and_the_report(repo):
    original = (repo / "params.yaml").read_text()
    params = yaml.safe_load(original)
    try:
        (repo / "params.yaml").write_text(yaml.safe_dump({**params, "weights": "imagenet"}))
        changed = json.loads(sh(repo, "dvc", "status", "--json"))
        assert set(changed) == {f"train@{CELL}", "report"}
        (repo / "params.yaml").write_text(yaml.safe_dump({**params, "weights_mirror": "x"}))
        assert set(json.loads(sh(repo, "dvc", "status", "--json"))) <= {"report"}
        data = {**params["data"], "shapes": {**params["data"]["shapes"], "seed": 1}}
        (repo / "params.yaml").write_text(yaml.safe_dump({**params, "data": data}))
        # the check re-runs (seconds) but its output stays the same: only shapes is rebuilt
        assert set(json.loads(sh(repo, "dvc", "status", "--json"))) == {"check", "download@shapes"}
    finally:
        (repo / "params.yaml").write_text(original)


def test_unknown_dataset_fails_in_seconds_naming_the_valid_ones(tmp_path):
    tiny_project(tmp_path)
    start = time.monotonic()
    proc = subprocess.run(["dvc", "exp", "run", "-S", "datasets=[cifar11]"], cwd=tmp_path,
                          env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
                               f"{os.environ['PATH']}"}, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and time.monotonic() - start < 60, out
    assert "unknown dataset 'cifar11'; valid choices: digits, shapes, cifar10" in out, out
    assert "failed to reproduce 'check'" in out and "are missing" not in out


def test_check_grid_wants_a_data_block_per_dataset(params):
    assert check_grid(params).datasets == params["datasets"]
    del params["data"][params["datasets"][0]]
    with pytest.raises(ConfigError, match=f"no 'data.{params['datasets'][0]}'"):
        check_grid(params)
