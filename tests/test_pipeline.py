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
import scipy.stats
import torch
import yaml
from conftest import TINY_MODEL, sh, tiny_project, section, table_rows

from normbench.dvcqueue import queue_tasks, start_queue
from normbench.grid import check_grid
from normbench.models import build_model
from normbench.normalizations import NORMALIZATIONS, normalize
from normbench.registry import ConfigError
from normbench.runs import parse_exp_show, with_cell_records
from normbench.significance import fmt_p
from normbench.stats import read_channel_stats
from normbench.timing import TIMINGS

CELL = "resnet18-shapes-223"
# Enough images and epochs that both norms compared below learn (final accuracy above chance,
# checked): only then does the comparison run a test. Three epochs, so that the best epoch can
# differ from the last, so a cell that kept its best epoch fails the checks below.
IMAGES_PER_CLASS, EPOCHS = 100, 3  # 600 images, 120 (20 %) held out for the test split
VAL_FRACTION = 0.1  # of the 480 train images: 48 held out for validation, 432 trained on
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """The project with a tiny grid on a torchvision model (the user flows end to end: `dvc repro`,
    `dvc exp run -S`), reproduced and committed."""
    repo = tmp_path_factory.mktemp("normbench")
    tiny_project(repo, "resnet18")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"].update(epochs=EPOCHS, val_fraction=VAL_FRACTION)
    params["data"]["shapes"]["images_per_class"] = IMAGES_PER_CLASS
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(repo, "dvc", "repro")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "baseline")
    return repo


def curve(repo: Path, name: str) -> list[float]:
    """A cell's dvclive curve, one value per epoch (epoch 0: the untrained model)."""
    text = (repo / "plots" / CELL / "plots" / "metrics" / f"{name}.tsv").read_text().split()
    assert text[:2] == ["step", name] and text[2::2] == [str(e) for e in range(EPOCHS + 1)]
    return [float(v) for v in text[3::2]]


def check_cell_metrics(repo: Path, metrics: dict) -> None:
    """The metrics of CELL are what its curves, predictions and labels say, computed here."""
    labels = np.load(repo / "data" / "shapes" / "test_labels.npy")
    preds = np.load(repo / "predictions" / f"{CELL}.npy")
    acc = curve(repo, "test_acc")
    assert metrics["epochs"] == EPOCHS and len(preds) == len(labels) == 6 * IMAGES_PER_CLASS // 5
    correct = int((preds == labels).sum())
    # final: the last epoch's, in the curve and in the saved predictions (not the best epoch's)
    assert metrics["final_acc"] == pytest.approx(correct / len(labels))
    assert metrics["final_acc"] == pytest.approx(acc[-1])
    assert metrics["final_loss"] == pytest.approx(curve(repo, "test_loss")[-1])
    # validation: the last epoch's, and the best epoch is chosen on it (the first epoch >= 1
    # with the highest validation accuracy); best_acc, the original study's figure, is the
    # highest test accuracy of any epoch
    val = curve(repo, "val_acc")
    assert metrics["val_acc"] == pytest.approx(val[-1])
    assert metrics["val_loss"] == pytest.approx(curve(repo, "val_loss")[-1])
    assert metrics["best_epoch"] == 1 + val[1:].index(max(val[1:]))
    assert metrics["best_val_acc"] == pytest.approx(max(val[1:]))
    assert metrics["best_acc"] == pytest.approx(max(acc[1:]))
    held = 48  # 10 % of the 480 train images; stratified: 8 of each class
    assert metrics["val_chance_acc"] == pytest.approx(8 / held)
    chance = np.bincount(labels).max() / len(labels)
    assert metrics["chance_acc"] == pytest.approx(chance)
    p = scipy.stats.binomtest(correct, len(labels), chance, alternative="greater").pvalue
    assert metrics["above_chance_p"] == pytest.approx(p)
    assert metrics["learned"] is True, metrics  # sized for it: p ~ 5e-4 when written
    assert metrics["execution"] == "cpu fp32 eager"
    # no wall-clock figure in an output whose hash a rerun must reproduce (normbench.timing)
    assert not {"train_seconds", "images_per_s", "peak_gpu_mib"} & set(metrics)
    # throughput over training steps only: at least the train images per second of wall time
    timing = json.loads((repo / TIMINGS / f"{CELL}.json").read_text())
    n_train = 6 * IMAGES_PER_CLASS - len(labels) - held  # trained on: validation held out
    assert timing["images_per_s"] >= 0.99 * n_train * EPOCHS / timing["train_seconds"]


def test_repro_writes_metrics_curves_predictions_and_report(repo):
    metrics = json.loads((repo / "metrics" / f"{CELL}.json").read_text())
    check_cell_metrics(repo, metrics)
    stats = json.loads((repo / "data" / "stats" / "shapes.json").read_text())
    assert stats["n_images"] == 6 * IMAGES_PER_CLASS * 4 // 5  # the train split
    page = (repo / "report" / "index.html").read_text()
    assert "<h1>normbench report</h1>" in page and "data:image/png;base64," in page
    readme = (repo / "report" / "README.md").read_text()
    assert f"{metrics['final_acc'] * 100:.2f}" in section(readme, "Final test accuracy (%)")
    assert f"{metrics['best_acc'] * 100:.2f}" in section(readme, "Best test accuracy (%)")
    assert f"{metrics['val_acc'] * 100:.2f}" in section(readme, "Final validation accuracy (%)")
    assert "<script" not in page
    assert (repo / "report" / "accuracy_history.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((repo / "weightdist" / CELL / "summary.json").read_text())
    assert [e["epoch"] for e in summary["epochs"]] == list(range(EPOCHS + 1))
    assert summary["epochs"][0]["first_conv"]["drift"] == 0.0
    assert metrics["drift_first_conv"] == summary["epochs"][-1]["first_conv"]["drift"] > 0
    assert f"weights/{CELL}.png" in readme
    assert (repo / "report" / "weights" / f"{CELL}.png").read_bytes()[:4] == b"\x89PNG"
    # The checkpoint holds the last epoch's weights: those the weight snapshot of the last epoch
    # kept, and they give the saved predictions again.
    checkpoint = torch.load(repo / "checkpoints" / f"{CELL}.pt", weights_only=False)
    state = checkpoint["state_dict"]
    with np.load(repo / "weightdist" / CELL / "samples.npz") as z:
        kept, index = z["first_conv_samples"], z["first_conv_indices"]
    conv1 = state["conv1.weight"].flatten().numpy()[index]
    assert np.array_equal(conv1, kept[-1]) and not np.array_equal(conv1, kept[0])
    model = build_model("resnet18", 6)
    model.load_state_dict(state)
    images = torch.from_numpy(np.load(repo / "data" / "shapes" / "test_images.npy"))
    x = normalize(images.permute(0, 3, 1, 2).contiguous(), NORMALIZATIONS["dataset"],
                  read_channel_stats(stats))
    with torch.no_grad():
        again = model.eval()(x).argmax(1).numpy()
    assert np.array_equal(again, np.load(repo / "predictions" / f"{CELL}.npy"))


def test_plots_show_has_accuracy_and_loss_per_cell(repo):
    out = json.loads(sh(repo, "dvc", "plots", "show", "--json"))
    assert not out.get("errors")
    titles = set(out["data"])
    assert {"Test accuracy", "Test loss", "Validation accuracy", "Validation loss",
            "Weight drift, first conv"} <= titles
    val = out["data"]["Validation accuracy"][0]["content"]["data"]["values"]
    assert [float(v["val_acc"]) for v in val] == pytest.approx(curve(repo, "val_acc"))
    values = out["data"]["Test accuracy"][0]["content"]["data"]["values"]
    assert {v["cell"] for v in values} == {CELL} and len(values) == EPOCHS + 1


def test_exp_run_metrics_diff_and_run_cache_restore(repo):
    baseline = (repo / "metrics" / f"{CELL}.json").read_text()
    base = json.loads(baseline)
    labels = np.load(repo / "data" / "shapes" / "test_labels.npy")
    base_preds = np.load(repo / "predictions" / f"{CELL}.npy")
    out = sh(repo, "dvc", "exp", "run", "-S", "norm=minmax")
    assert f"Running stage 'train@{CELL}'" in out
    assert "Running stage 'download@shapes'" not in out  # only the cells depend on norm
    minmax = json.loads((repo / "metrics" / f"{CELL}.json").read_text())
    check_cell_metrics(repo, minmax)
    minmax_preds = np.load(repo / "predictions" / f"{CELL}.npy")
    assert not np.array_equal(minmax_preds, base_preds)  # another norm, another model
    # What `dvc metrics diff` shows a reviewer after one experiment: one row per cell and figure,
    # in percent, nothing else (no timings, p-values or one-seed means).
    diff = json.loads(sh(repo, "dvc", "metrics", "diff", "--json", "--all"))  # equal ones too
    assert list(diff) == ["metrics.json"], diff
    assert sorted(diff["metrics.json"]) == [f"{CELL}.{k}_pct" for k in (
        "drift_deep_conv", "drift_first_conv", "final_acc", "val_acc")]
    change = diff["metrics.json"][f"{CELL}.final_acc_pct"]
    assert change["old"] == round(base["final_acc"] * 100, 2)
    assert change["new"] == round(minmax["final_acc"] * 100, 2)
    assert change["diff"] == pytest.approx(change["new"] - change["old"])
    records = json.loads((repo / "report" / "cells.json").read_text())
    assert records == {CELL: minmax}  # the whole record, in git, for compare
    out = sh(repo, "dvc", "exp", "run", "-S", "norm=dataset")
    assert f"Stage 'train@{CELL}' is cached - skipping run, checking out outputs" in out, out
    assert "Running stage 'train@" not in out  # restored from the run-cache, not retrained
    assert (repo / "metrics" / f"{CELL}.json").read_text() == baseline

    # compare: the seed's tables over the commit and both experiments, numbers from the metrics.
    env_out = sh(repo, "env", f"PYTHONPATH={repo / 'src'}", sys.executable, "-m",
                 "normbench.compare", "--out", "compare")
    assert "compare/index.html" in env_out
    page = (repo / "compare" / "README.md").read_text()
    base_acc, minmax_acc = base["final_acc"] * 100, minmax["final_acc"] * 100
    delta = minmax_acc - base_acc
    table2 = {r["setting"]: r for r in table_rows(section(page, "Table 2: final test accuracy"))}
    assert set(table2) == {"norm=dataset weights=scratch", "norm=minmax weights=scratch"}
    assert table2["norm=dataset weights=scratch"]["shapes"] == f"{base_acc:.2f}"
    colour = "green" if delta > 0 else "red"
    assert table2["norm=minmax weights=scratch"]["shapes"].startswith(
        f"{minmax_acc:.2f} $\\textcolor{{{colour}}}{{{delta:+.2f}}}$ (")

    # One seed each, the same one: McNemar's exact test on the two runs' per-image outcomes,
    # worked out here from the saved predictions (a binomial test on the discordant images).
    # It says whether the two trained models differ; a verdict on the settings needs seeds.
    right_base, right_minmax = base_preds == labels, minmax_preds == labels
    only_base = int(np.sum(right_base & ~right_minmax))
    only_minmax = int(np.sum(~right_base & right_minmax))
    discordant = only_base + only_minmax
    p = scipy.stats.binomtest(only_base, discordant, 0.5).pvalue if discordant else 1.0
    tests = table_rows(section(page, "Tests"))
    assert len(tests) == 1, tests  # one comparison: minmax against the baseline norm
    row = tests[0]
    assert (row["model"], row["dataset"], row["setting"], row["baseline"], row["test"]) == (
        "resnet18", "shapes", "norm=minmax weights=scratch", "norm=dataset weights=scratch",
        "McNemar")
    assert (row["p"], row["p (Holm)"], row["verdict"]) == ("-", "-", "too few seeds")
    assert float(row["delta (points)"]) == pytest.approx(delta, abs=0.006)
    assert row["seeds for a verdict"] == "6"  # a page of one comparison: 2/2^6 <= 0.05
    shown = "differ" if p < 0.05 else "are not shown to differ"
    lines = [line for line in section(page, "What differs").splitlines()
             if line.startswith("**shapes**:<br>")]
    assert lines == [
        f"**shapes**:<br>norm=minmax weights=scratch against norm=dataset weights=scratch, "
        f"resnet18: no verdict, too few seeds ({delta:+.2f} points; one seed each (seed 223): "
        f"the two trained models {shown} (McNemar's exact test over the {len(labels)} test "
        f"images, p={fmt_p(p)}, uncorrected); that is no test of the settings, whose effect "
        "only seeds show; a verdict on this page needs at least 6 seeds per setting)"], lines
    assert (repo / "compare" / "figure1.png").read_bytes()[:4] == b"\x89PNG"


def test_queue_runs_settings_in_parallel_workers(repo, monkeypatch):
    # The queue's machinery on the small model: two settings of one cell each (3 epochs).
    sh(repo, "dvc", "exp", "run", "--queue", "-S", "norm=instance,none", "-S",
       f"models=[{TINY_MODEL}]")
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    start_queue(repo, 2)
    deadline = time.monotonic() + 540
    # Waited for through DVC's API in this process, as the study does: a `dvc queue status`
    # process every 2 s would take a good part of the CPU the two queue workers train on.
    while time.monotonic() < deadline and any(
            t.status in ("Queued", "Running") for t in queue_tasks(repo).values()):
        time.sleep(2)
    status = sh(repo, "dvc", "queue", "status")
    assert status.count("Success") == 2 and "Failed" not in status, status
    runs = parse_exp_show(with_cell_records(repo, json.loads(sh(repo, "dvc", "exp", "show", "--json"))))
    done = {r.setting for r in runs if (TINY_MODEL, "shapes", 223) in r.cells}
    assert {"norm=instance weights=scratch", "norm=none weights=scratch"} <= done


def test_switching_weights_touches_only_the_start_the_train_cells_and_the_report(repo):
    original = (repo / "params.yaml").read_text()
    params = yaml.safe_load(original)
    try:
        (repo / "params.yaml").write_text(yaml.safe_dump({**params, "weights": "imagenet"}))
        changed = json.loads(sh(repo, "dvc", "status", "--json"))
        # the check (seconds), the model's start weights, its cells and the report: no data
        assert set(changed) == {"check", "start@resnet18", f"train@{CELL}", "report"}
        pretrained = {**params["start"]["pretrained"], "seed": params["start"]["pretrained"]
                      ["seed"] + 1}
        (repo / "params.yaml").write_text(yaml.safe_dump(
            {**params, "start": {**params["start"], "pretrained": pretrained}}))
        assert json.loads(sh(repo, "dvc", "status", "--json")) == {}  # not the kind in use
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
    assert "unknown dataset 'cifar11'; valid choices: digits, shapes, gratings, cifar10" in out, out
    assert "failed to reproduce 'check'" in out and "are missing" not in out


def test_check_grid_wants_a_data_block_per_dataset(params):
    assert check_grid(params).datasets == params["datasets"]
    del params["data"][params["datasets"][0]]
    with pytest.raises(ConfigError, match=f"no 'data.{params['datasets'][0]}'"):
        check_grid(params)
