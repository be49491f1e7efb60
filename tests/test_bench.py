"""The benchmarks: they run, write their tables, and the grid estimate is the sum of its cells."""

import importlib
import json
import subprocess
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))  # the scripts import their shared helpers from there


def test_grid_estimate_adds_up_every_cell():
    grid = importlib.import_module("grid_cost")
    rows = [{"model": m, "size": 32, "loop": "fast", "train_img_s": 10_000.0,
             "eval_img_s": 40_000.0, "warmup_s": 60.0} for m in grid.GRID_MODELS]
    hours, notes = grid.grid_hours(rows, "fast")
    # Per model: 3 datasets at 32 px and Tiny-ImageNet at 64 px (4x the pixels: rates / 4).
    per_model_s = 0.0
    for n_train, n_test, size in grid.GRID_DATASETS.values():
        scale = (32 / size) ** 2
        epoch = n_train / (10_000 * scale) + n_test / (40_000 * scale)
        per_model_s += 4 * (101 * epoch + 2 * 60)
    assert hours == pytest.approx(4 * per_model_s / 3600)
    assert notes == sorted(f"{m} 64 px scaled from 32 px" for m in grid.GRID_MODELS)
    assert grid.grid_hours(rows[:3], "fast") is None  # densenet161 missing: no estimate
    assert grid.grid_hours(rows, "reference") is None


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


def test_queue_speed_up_divides_only_the_32_px_cells():
    grid = importlib.import_module("grid_cost")
    rows = [{"model": m, "size": size, "loop": "fast", "train_img_s": 8_000.0 * 32 / size,
             "eval_img_s": 30_000.0, "warmup_s": 30.0}
            for m in grid.GRID_MODELS for size in (32, 64)]
    one, _ = grid.grid_hours(rows, "fast")
    queue = [{"model": "resnet18", "jobs": j, "aggregate_img_s": rate}
             for j, rate in ((1, 100.0), (2, 180.0), (4, 250.0), (8, 240.0))]
    speedups = grid.queue_speedups(queue)
    assert speedups == {"resnet18": (4, 2.5)}  # the best job count, against -j 1
    shared, notes = grid.grid_hours(rows, "fast", {"resnet18": 2.5})
    resnet18_32px_s = 0.0
    for n_train, n_test, size in grid.GRID_DATASETS.values():
        if size == 32:
            epoch = n_train / 8_000 + n_test / 30_000
            resnet18_32px_s += 4 * (101 * epoch + 2 * 30)
    assert notes == []  # every size measured
    assert one - shared == pytest.approx(resnet18_32px_s * (1 - 1 / 2.5) / 3600)
    text = grid.summary(rows, queue)
    assert "several cells per GPU: resnet18 -j 4 (2.50x): **" in text


def gpu_session():
    return importlib.import_module("gpu_session")


def step(name: str, code: str):
    return gpu_session().Step(name, (sys.executable, "-c", code), "a test")


def test_gpu_session_resumes_where_it_was_cut_off(tmp_path):
    session = gpu_session()
    steps = [step("a", "print('a ran')"), step("b", "import sys; sys.exit(3)"),
             step("c", "import time; time.sleep(60)"), step("d", "print('d ran')")]
    report = session.run_steps(steps, tmp_path, budget_s=3, retry_failed=False, min_step_s=1)
    assert [outcome for _, outcome in report] == ["done", "failed", "cut off",
                                                  "not started (budget)"]
    assert "a ran" in (tmp_path / "a.log").read_text()
    assert json.loads((tmp_path / "b.failed").read_text())["exit_code"] == 3
    assert "cut off after" in (tmp_path / "c.log").read_text()
    assert not (tmp_path / "c.done").exists() and not (tmp_path / "c.failed").exists()

    steps[2] = step("c", "print('c ran')")  # the next session: c is run again, a and b are not
    report = session.run_steps(steps, tmp_path, budget_s=60, retry_failed=False, min_step_s=1)
    assert [outcome for _, outcome in report] == ["done earlier", "failed earlier", "done",
                                                  "done"]
    assert (tmp_path / "a.log").read_text().count("\na ran\n") == 1  # not run again
    steps[1] = step("b", "pass")
    report = session.run_steps(steps, tmp_path, budget_s=60, retry_failed=True, min_step_s=1)
    assert [outcome for _, outcome in report][1] == "done"
    assert not (tmp_path / "b.failed").exists()
    table = session.status_table(report, tmp_path)
    assert "| b | done |" in table and "| a | done earlier |" in table


def test_gpu_session_lists_its_steps_and_refuses_unknown_ones(tmp_path):
    script = str(ROOT / "bench" / "gpu_session.py")
    listed = subprocess.run([sys.executable, script, "--list", "--folder", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    names = [s.name for s in gpu_session().steps()]
    assert names[:2] == ["env", "gpu-tests"] and names[-1] == "grid-cost"
    assert all(f"| {n} | to do |" in listed.stdout for n in names)
    bad = subprocess.run([sys.executable, script, "--only", "speed-32-resnet19"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0
    assert "unknown steps ['speed-32-resnet19']; valid choices: env, gpu-tests" in bad.stderr
    # Every step's script exists.
    for s in gpu_session().steps():
        if s.argv[1].startswith("bench/"):
            assert (ROOT / s.argv[1]).is_file(), s.argv[1]


def test_queue_speed_runs_cells_on_queue_workers_and_writes_its_table(tmp_path):
    """Two one-cell experiments on two DVC queue workers, on the CPU, in a tiny workload."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "queue_speed.py"), "--jobs", "2",
         "--model", "resnet18", "--set", "datasets=[shapes]", "--set", "device=cpu",
         "--set", "data.shapes.images_per_class=8", "--set", "train.epochs=2",
         "--set", "train.batch_size=16", "--results", str(tmp_path)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [row] = [json.loads(line) for line in (tmp_path / next(
        p.name for p in tmp_path.glob("queue-*.jsonl"))).read_text().splitlines()]
    assert row["jobs"] == 2 and row["model"] == "resnet18"
    assert sorted(c["cell"] for c in row["cells"]) == ["resnet18-shapes-1", "resnet18-shapes-2"]
    assert all(c["epochs"] == 2 and 0 <= c["best_acc"] <= 1 for c in row["cells"])
    # 8 shapes x 6 classes, 80 % to train (38 images), 2 epochs, 2 cells.
    assert row["train_images"] == 2 * 2 * 38
    assert row["aggregate_img_s"] == pytest.approx(row["train_images"] / row["seconds"], rel=1e-2)
    table = next(tmp_path.glob("queue-*.md")).read_text()
    assert "## resnet18, datasets=[shapes] device=cpu" in table and "| 2 | 2 |" in table
