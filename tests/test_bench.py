"""The training-speed benchmark: it runs, writes its table, and its grid estimate is the sum."""

import importlib.util
import json
import subprocess
import sys

import pytest
from conftest import ROOT


def load_bench():
    spec = importlib.util.spec_from_file_location("train_speed", ROOT / "bench" / "train_speed.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_grid_estimate_adds_up_every_cell():
    bench = load_bench()
    rows = [{"model": m, "size": 32, "loop": "fast", "train_img_s": 10_000.0,
             "eval_img_s": 40_000.0, "warmup_s": 60.0} for m in bench.GRID_MODELS]
    hours, notes = bench.grid_hours(rows, "fast")
    # Per model: 3 datasets at 32 px and Tiny-ImageNet at 64 px (4x the pixels: rates / 4).
    per_model_s = 0.0
    for n_train, n_test, size in bench.GRID_DATASETS.values():
        scale = (32 / size) ** 2
        epoch = n_train / (10_000 * scale) + n_test / (40_000 * scale)
        per_model_s += 4 * (101 * epoch + 2 * 60)
    assert hours == pytest.approx(4 * per_model_s / 3600)
    assert notes == sorted(f"{m} 64 px scaled from 32 px" for m in bench.GRID_MODELS)
    assert bench.grid_hours(rows[:3], "fast") is None  # densenet161 missing: no estimate
    assert bench.grid_hours(rows, "reference") is None


def test_benchmark_times_both_loops_and_prints_the_ratio(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "train_speed.py"), "--models", "resnet18",
         "--images", "64", "--test-images", "32", "--batch", "32", "--seconds", "0.1",
         "--workers", "1", "--device", "cpu", "--results", str(tmp_path)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "resnet18     fast / reference:" in proc.stdout
    rows = [json.loads(line) for line in next(tmp_path.glob("*.jsonl")).read_text().splitlines()]
    assert [r["loop"] for r in rows] == ["reference", "plain", "fast"]
    assert all(r["train_img_s"] > 0 and r["eval_img_s"] > 0 for r in rows)
    assert rows[2]["amp"] == "none" and rows[2]["compile"] == "none"  # auto on a CPU
    table = next(tmp_path.glob("*.md")).read_text()
    ratio = rows[2]["train_img_s"] / rows[0]["train_img_s"]
    assert "| resnet18 | 32 |" in table and f"{ratio:.2f}x" in table
