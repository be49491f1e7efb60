"""The benchmarks: they run, write their tables, and the grid estimate is the sum of its cells."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY_MODEL

sys.path.insert(0, str(ROOT / "bench"))  # the scripts import their shared helpers from there


def test_grid_estimate_adds_up_every_cell():
    grid = importlib.import_module("grid_cost")
    rows = [{"model": m, "size": 32, "loop": "fast", "train_img_s": 10_000.0,
             "eval_img_s": 40_000.0, "warmup_s": 60.0} for m in grid.GRID_MODELS]
    hours, notes = grid.grid_hours(rows, "fast")
    # Per model: 3 datasets at 32 px and Tiny-ImageNet at 64 px (4x the pixels: rates / 4).
    per_model_s = 0.0
    for n_train, n_test, size, _ in grid.GRID_DATASETS.values():
        scale = (32 / size) ** 2
        epoch = n_train / (10_000 * scale) + n_test / (40_000 * scale)
        per_model_s += 4 * (101 * epoch + 60)  # a loop that compiles nothing: warm-up per cell
    assert hours == pytest.approx(4 * per_model_s / 3600)
    assert notes == sorted(f"{m} 64 px scaled from 32 px" for m in grid.GRID_MODELS)
    assert grid.grid_hours(rows[:3], "fast") is None  # densenet161 missing: no estimate
    assert grid.grid_hours(rows, "reference") is None


def test_benchmark_times_both_loops_and_prints_the_ratio(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "train_speed.py"), "--models", "resnet18",
         "--images", "32", "--test-images", "16", "--batch", "16", "--seconds", "0.1",
         "--workers", "1", "--device", "cpu", "--results", str(tmp_path)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "resnet18     fast / reference:" in proc.stdout
    rows = [json.loads(line) for line in next(tmp_path.glob("*.jsonl")).read_text().splitlines()]
    assert [r["loop"] for r in rows] == ["reference", "plain", "fast"]
    assert all(r["train_img_s"] > 0 and r["eval_img_s"] > 0 for r in rows)
    assert rows[2]["amp"] == "none" and rows[2]["compile"] == "none"  # auto on a CPU
    # The seed study's loop on torch's default kernels; normbench's loops as a cell runs them.
    assert [r["deterministic"] for r in rows] == [False, True, True]
    assert not any(r["fill_uninitialized_memory"] for r in rows)
    table = next(tmp_path.glob("*.md")).read_text()
    ratio = rows[2]["train_img_s"] / rows[0]["train_img_s"]
    assert "| resnet18 | 32 |" in table and f"{ratio:.2f}x" in table
    assert "amp none, compile none, deterministic |" in table


def test_the_benchmark_loop_builds_the_cells_two_graphs_in_the_cells_order(monkeypatch):
    """bench/train_speed.py's normbench loop, on splits that divide by neither batch: eval graph
    first (a cell evaluates before training), then train, both fixed, none compiled again."""
    import argparse

    import torch
    from test_train import counting_compile, tiny_net

    speed = importlib.import_module("train_speed")
    backend = counting_compile(monkeypatch)
    monkeypatch.setattr(speed, "build_model", lambda name, classes: tiny_net(classes))
    data = speed.synthetic(40, 1100, 8)  # 16 + 16 + 8 to train; 1024 + 76 to evaluate
    args = argparse.Namespace(batch=16, seconds=0.01, warmup_cap=None)
    from normbench.config import SpeedConfig

    rate = speed.project_rate("resnet18", data, SpeedConfig("none", "default", False), args,
                              torch.device("cpu"))
    assert backend.batch_shapes() == [(False, (1024, 3, 8, 8)), (True, (16, 3, 8, 8))]
    assert backend.symbolic() == []
    assert len(rate.windows["train"]) == len(rate.windows["eval"]) == 3
    assert rate.train == sorted(rate.windows["train"])[1]  # the median window
    assert rate.cache["compile_cache"] == "cold"


def test_a_loop_past_its_warm_up_cap_writes_a_row_saying_so_and_the_next_loop_runs(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "train_speed.py"), "--models", "resnet18",
         "--images", "32", "--test-images", "16", "--batch", "16", "--seconds", "0.1",
         "--device", "cpu", "--loops", "plain", "fast", "--warmup-cap", "0.05",
         "--results", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in next(tmp_path.glob("*.jsonl")).read_text().splitlines()]
    assert [(r["loop"], r["warmup_capped"]) for r in rows] == [("plain", True), ("fast", True)]
    assert all(r["train_img_s"] is None and r["warmup_s"] >= 0.05 for r in rows)
    assert proc.stdout.count("warm-up past its cap") == 2
    assert "(capped: not measured)" in next(tmp_path.glob("*.md")).read_text()


def test_a_compiled_loop_pays_a_cold_compile_once_per_model_and_shape_and_a_warm_start_per_cell():
    grid = importlib.import_module("grid_cost")
    base = {"size": 32, "loop": "fast", "compile": "reduce-overhead", "train_img_s": 10_000.0,
            "eval_img_s": 40_000.0}
    cold = [{**base, "model": m, "cache": "cold", "warmup_s": 200.0} for m in grid.GRID_MODELS]
    warm = [{**base, "model": m, "cache": "warm", "warmup_s": 5.0} for m in grid.GRID_MODELS]
    hours, notes = grid.grid_hours(cold + warm, "fast")
    per_model_s = 0.0
    for n_train, n_test, size, _ in grid.GRID_DATASETS.values():
        scale = (32 / size) ** 2
        epoch = n_train / (10_000 * scale) + n_test / (40_000 * scale)
        per_model_s += 4 * (101 * epoch + 5.0)  # a warm start per cell
    # Cold compiles: 32 px with 10 classes (cifar10, svhn share it), 100 classes, 64 px.
    per_model_s += 3 * 200.0
    assert hours == pytest.approx(4 * per_model_s / 3600)
    assert not any("no warm start" in n for n in notes)
    # Without a warm measurement every cell pays the cold warm-up, and the note says so.
    only_cold, notes = grid.grid_hours(cold, "fast")
    assert only_cold == pytest.approx(hours + 4 * (16 * 195.0) / 3600)
    assert "resnet18: no warm start measured, every cell pays the cold one" in notes
    # A loop stopped at its warm-up cap has no rate: the model is not measured.
    capped = [{**r, "train_img_s": None} if r["model"] == "densenet121" else r for r in cold]
    assert grid.grid_hours(capped, "fast") is None


def test_the_mismatch_recipe_counts_its_pretraining_and_every_fine_tuning_cell():
    grid = importlib.import_module("grid_cost")
    rows = [{"model": m, "size": size, "loop": "fast", "train_img_s": 1_000.0 * 32 / size,
             "eval_img_s": 5_000.0, "warmup_s": 10.0}
            for m in grid.GRID_MODELS for size in (32, 64)]
    hours, _ = grid.grid_hours(rows, "fast", grid=grid.RECIPE)
    pretraining = 2 * (101 * (100_000 / 500 + 10_000 / 5_000) + 10)  # 2 norms, 64 px
    fine_tuning = sum(2 * 3 * 3 * (101 * (n / 1_000 + t / 5_000) + 10)  # 18 cells each
                      for n, t in ((50_000, 10_000), (50_000, 10_000), (73_257, 26_032)))
    assert hours == pytest.approx(4 * (pretraining + fine_tuning) / 3600)
    text = grid.summary(rows, [])
    assert text.count("GPU-hours**") == 2 and "The mismatch recipe" in text


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
    for n_train, n_test, size, _ in grid.GRID_DATASETS.values():
        if size == 32:
            epoch = n_train / 8_000 + n_test / 30_000
            resnet18_32px_s += 4 * (101 * epoch + 30)
    assert notes == []  # every size measured
    assert one - shared == pytest.approx(resnet18_32px_s * (1 - 1 / 2.5) / 3600)
    text = grid.summary(rows, queue)
    assert "several cells per GPU: resnet18 -j 4 (2.50x): **" in text


def gpu_session():
    return importlib.import_module("gpu_session")


def step(name: str, code: str, needs: tuple[str, ...] = ()):
    return gpu_session().Step(name, (sys.executable, "-c", code), "a test", needs)


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
    assert names[:4] == ["env", "speed-32-resnet18", "speed-32-densenet121", "gpu-tests"]
    assert names[-1] == "grid-cost"
    assert all(f"| {n} | to do |" in listed.stdout for n in names)
    bad = subprocess.run([sys.executable, script, "--only", "speed-32-resnet19"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0
    assert "unknown steps ['speed-32-resnet19']; valid choices: env, speed-32-resnet18" \
        in bad.stderr
    # Every step's script exists.
    for s in gpu_session().steps():
        if s.argv[1].startswith("bench/"):
            assert (ROOT / s.argv[1]).is_file(), s.argv[1]


def test_gpu_session_fits_both_headline_models_and_the_cuda_tests_in_one_call():
    """The first call (budget 540 s) gives resnet18 and densenet121 at 32 px for the seed-style,
    captured and fast loops, each step capped and each fast warm-up capped below its step's
    cap, then starts `pytest -m gpu` whatever the warm-ups took."""
    session = gpu_session()
    todo = session.steps()
    assert [s.name for s in todo[:4]] == ["env", "speed-32-resnet18", "speed-32-densenet121",
                                          "gpu-tests"]
    for step in todo[1:3]:
        argv = step.argv
        loops = argv[argv.index("--loops") + 1:argv.index("--warmup-cap")]
        assert loops == ("reference", "fast", "captured")
        model = argv[argv.index("--models") + 1]
        cap = float(argv[argv.index("--warmup-cap") + 1])
        assert cap == session.WARMUP_CAP_S[model] and cap + 60 < step.cap_s
    assert sum(s.cap_s for s in todo[:3]) + 60 <= 540  # min_step_s left for the CUDA tests
    by_name = {s.name: s for s in todo}
    assert by_name["env"].needs == by_name["grid-cost"].needs == ()  # no GPU needed
    dvc_steps = [s for s in todo if "queue_speed.py" in " ".join(s.argv)]
    assert {s.name.split("-")[0] for s in dvc_steps} == {"cell", "queue"}
    for s in todo:
        assert s.needs == (("cuda", "git", "dvc") if s in dvc_steps else
                           () if s.name in ("env", "grid-cost") else ("cuda",)), s.name
        assert ("--mps" in s.argv) == s.name.endswith("-mps"), s.name
    # -j 1, 2, 4, 8 of resnet18 cells, each with and without MPS (cell-resnet18: -j 1 without).
    assert {(s.argv[s.argv.index("--jobs") + 1], "--mps" in s.argv) for s in dvc_steps
            if "resnet18" in s.argv} == {(str(n), mps) for n in (1, 2, 4, 8)
                                         for mps in (False, True)}


def test_a_carried_compile_cache_is_packed_per_model_as_it_fits_and_taken_in_again(
        tmp_path, monkeypatch):
    session = gpu_session()
    cache, out, again = tmp_path / "cache", tmp_path / "out", tmp_path / "again"
    cache.mkdir()
    out.mkdir()
    (out / "results.tar.gz").write_bytes(b"r" * 1000)
    sizes = {"resnet18": 1, "densenet121": 3, "densenet161": 2}  # MiB of incompressible bytes
    for i, (label, mib) in enumerate(sizes.items()):
        name = f"x{i}"
        (cache / f"{name}.bin").write_bytes(os.urandom(mib * 2**20))
        (cache / f"{name}.json").write_text(json.dumps({"model": f"net:{i}", "label": label}))
    monkeypatch.setattr(session, "OUT_FILE_LIMIT_MIB", 2.5)  # densenet121's 3 MiB: too big
    lines = session.publish_cache(out, cache)
    assert [line.split(":")[0] for line in lines] == ["- resnet18", "- densenet121",
                                                      "- densenet161"]  # seed models' order
    assert "NOT kept" in lines[1] and "kept, compile-cache-densenet161.tar.gz" in lines[2]
    assert sorted(p.name for p in out.glob("compile-cache-*")) == [
        "compile-cache-densenet161.tar.gz", "compile-cache-resnet18.tar.gz"]
    taken = session.take_cache_in(out, again)
    assert sorted(taken) == ["compile-cache-densenet161.tar.gz", "compile-cache-resnet18.tar.gz"]
    assert sorted(p.name for p in again.iterdir()) == ["x0.bin", "x0.json", "x2.bin", "x2.json"]
    assert (again / "x2.bin").read_bytes() == (cache / "x2.bin").read_bytes()
    assert session.take_cache_in(tmp_path / "absent", again) == []


def test_gpu_session_copies_the_results_out_after_every_step(tmp_path):
    """Step b sees a's results in the out folder before it runs; c is cut off and still shows."""
    import tarfile

    session = gpu_session()
    results, out = tmp_path / "results", tmp_path / "out"
    folder = results / "gpu-session"
    (results / "rows.jsonl").parent.mkdir()
    (results / "rows.jsonl").write_text("{}\n")  # a script's rows
    b = (f"import tarfile; names = tarfile.open({str(out / 'results.tar.gz')!r}).getnames(); "
         "assert 'results/gpu-session/a.done' in names and 'results/rows.jsonl' in names; "
         f"assert '| a | done |' in open({str(out / 'STATUS.md')!r}).read()")
    steps = [step("a", "print('a ran')"), step("b", b), step("c", "import time; time.sleep(60)"),
             step("d", "pass")]
    report = session.run_steps(
        steps, folder, budget_s=6, retry_failed=False, min_step_s=1,
        after_step=lambda r: session.checkpoint(r, steps, folder, out, [results]))
    assert [outcome for _, outcome in report] == ["done", "done", "cut off",
                                                  "not started (budget)"]
    assert sorted(p.name for p in out.iterdir()) == ["STATUS.md", "results.tar.gz"]
    with tarfile.open(out / "results.tar.gz") as tar:
        log = tar.extractfile("results/gpu-session/c.log").read().decode()
    assert "cut off after" in log
    status = (out / "STATUS.md").read_text()
    assert "| c | cut off |" in status and "| d | to do |" in status


def test_gpu_session_skips_only_what_lacks_git_and_stops_without_cuda(tmp_path, monkeypatch):
    session = gpu_session()
    no_git = {"git": "no git here"}.get
    steps = [step("a", "pass"), step("b", "pass", ("git", "dvc")), step("c", "pass")]
    report = session.run_steps(steps, tmp_path, 60, False, min_step_s=1, unmet=no_git)
    assert [outcome for _, outcome in report] == ["done", "skipped: no git here", "done"]
    assert session.state(steps[1], tmp_path) == "to do"  # unmarked: a later machine may run it
    no_cuda = {"cuda": "no CUDA device here"}.get
    steps = [step("e", "pass"), step("f", "pass", ("cuda",)), step("g", "pass")]
    report = session.run_steps(steps, tmp_path, 60, False, min_step_s=1, unmet=no_cuda)
    assert [outcome for _, outcome in report] == ["done", "stopped: no CUDA device here"]
    # The real checks: no git program; git but no commit.
    monkeypatch.setattr(session, "ROOT", tmp_path)
    assert "no commit at HEAD" in session.missing("git")
    monkeypatch.setattr(session.shutil, "which", lambda name: None)
    assert session.missing("git").startswith("no git here")
    assert session.missing("dvc").startswith("no dvc/dvclive here")


def test_the_documented_gpu_command_runs_on_a_cpu_up_to_the_first_cuda_step(tmp_path):
    """bench/README.md's command, in a copy of the working tree without .git (a machine without
    network gets the files alone)."""
    import re
    import shutil
    import tarfile

    readme = (ROOT / "bench" / "README.md").read_text()
    [command] = [line.split("#")[0].strip() for line in readme.splitlines()
                 if line.startswith("bash bench/gpu_session.sh ")]
    folder = re.search(r"--out (\S+)", command).group(1)
    # Tracked and untracked-not-ignored files, no .git (.whl/ is absent here: this machine's
    # python3 has dvc).
    tree = tmp_path / "tree"
    out = tree / folder
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tree / name)
    bin_dir = str(Path(sys.executable).parent)  # python3 is this environment's, as on the GPU
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(["bash", "-c", command], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode != 0
    assert "error: no CUDA device here" in proc.stderr, proc.stdout + proc.stderr
    assert "speed-32-resnet18 | stopped: no CUDA device here" in proc.stdout
    files = [p for p in out.rglob("*") if p.is_file()]
    assert sorted(p.name for p in files) == ["STATUS.md", "results.tar.gz"]
    with tarfile.open(out / "results.tar.gz") as tar:
        assert "bench/results/gpu-session/env.done" in tar.getnames()
        env_log = tar.extractfile("bench/results/gpu-session/env.log").read().decode()
    assert "CUDA available: False" in env_log and "torch " in env_log
    assert "| env | done |" in (out / "STATUS.md").read_text()
    # The tree was committed as it came, for the DVC steps.
    assert subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=tree).returncode == 0


def test_queue_speed_runs_cells_on_queue_workers_and_writes_its_table(tmp_path):
    """Two one-cell experiments on two DVC queue workers, on the CPU, in a tiny workload."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "queue_speed.py"), "--jobs", "2",
         "--model", TINY_MODEL, "--set", "datasets=[shapes]", "--set", "device=cpu",
         "--set", "data.shapes.images_per_class=8", "--set", "train.epochs=2",
         "--set", "train.batch_size=16", "--set", "train.val_fraction=0.2",
         "--results", str(tmp_path)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [row] = [json.loads(line) for line in (tmp_path / next(
        p.name for p in tmp_path.glob("queue-*.jsonl"))).read_text().splitlines()]
    assert row["jobs"] == 2 and row["model"] == TINY_MODEL
    assert sorted(c["cell"] for c in row["cells"]) == [f"{TINY_MODEL}-shapes-1",
                                                     f"{TINY_MODEL}-shapes-2"]
    assert all(c["epochs"] == 2 and 0 <= c["best_acc"] <= 1 for c in row["cells"])
    # each cell's speed, from its timing file (a queued cell's workspace is gone by now)
    assert all(c["images_per_s"] > 0 and c["train_seconds"] > 0 for c in row["cells"])
    # 8 shapes x 6 classes, 80 % in the train split (38 images), 8 of them held out for
    # validation: 30 trained on, 2 epochs, 2 cells.
    assert row["train_images"] == 2 * 2 * 30
    assert row["aggregate_img_s"] == pytest.approx(row["train_images"] / row["seconds"], rel=1e-2)
    table = next(tmp_path.glob("queue-*.md")).read_text()
    assert f"## {TINY_MODEL}, datasets=[shapes] device=cpu" in table and "| 2 | no | 2 |" in table
    assert row["mps"] is False  # not asked for


def budget_rows(table: str, title: str) -> list[list[str]]:
    """The model rows of one of model_budget's tables, as cells."""
    part = table.split(f"## {title}")[1].split("## ")[0]
    return [[c.strip() for c in line.strip("|").split("|")] for line in part.splitlines()
            if line.startswith(f"| {TINY_MODEL} |")]


def test_model_budget_trains_each_model_at_its_own_budget_from_scratch_and_pretrained(tmp_path):
    """One model (the small one: the script's machinery is tested, not the network) on a tiny
    workload: its per_model entry is the budget of its cells and of its pretraining, and every
    cell's validation and test accuracy reach their tables."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "model_budget.py"), "--models", TINY_MODEL,
         "--datasets", "shapes", "--device", "cpu", "--results", str(tmp_path),
         "--set", "data.shapes.images_per_class=8", "--set", "train.epochs=1",
         "--set", "train.val_fraction=0.2",  # 8 of 38 train images, one or two per class
         "--set", f"per_model.{TINY_MODEL}={{batch_size: 8}}",
         "--set", "start.pretrained.data.images_per_class=6",
         "--set", "start.pretrained.data.test_fraction=0.25",
         "--set", "start.pretrained.train.epochs=1",
         "--set", "start.pretrained.train.val_fraction=0.25"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = next(tmp_path.glob("model-budget-*.md")).read_text()
    assert table.count("| model | budget | shapes, scratch | gratings (source) | shapes, "
                       "pretrained on gratings |") == 2, table
    [val] = budget_rows(table, "Validation accuracy")
    [test] = budget_rows(table, "Test accuracy")
    # per_model over the shared block
    assert val[1] == test[1] == "batch 8, lr 0.001, 1 epochs, validation 0.2"
    for value in val[2:] + test[2:]:  # a percentage, "(chance)" when not above chance
        number, _, flag = value.partition(" ")
        assert 0 <= float(number) <= 100 and flag in ("", "(chance)"), value


def test_model_budget_shows_validation_where_a_choice_reads_and_test_apart():
    budget = importlib.import_module("model_budget")
    metrics = {"val_acc": 0.625, "val_above_chance_p": 0.2, "final_acc": 0.9,
               "above_chance_p": 0.001}
    assert budget.shown(metrics, "val") == "62.5 (chance)"
    assert budget.shown(metrics, "test") == "90.0"


def test_model_budget_sweeps_one_param_a_row_per_value(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "model_budget.py"), "--models", TINY_MODEL,
         "--datasets", "shapes", "--device", "cpu", "--results", str(tmp_path), "--no-pretrained",
         "--set", "data.shapes.images_per_class=8", "--set", "train.epochs=1",
         "--set", "train.val_fraction=0.2", "--sweep", f"per_model.{TINY_MODEL}.lr=0.01,0.0001"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [path] = tmp_path.glob(f"model-budget-*-scratch-only-sweep-per-model-{TINY_MODEL}-lr.md")
    rows = budget_rows(path.read_text(), "Validation accuracy")
    assert [r[1] for r in rows] == ["batch 64, lr 0.01, 1 epochs, validation 0.2",  # its per_model
                                    "batch 64, lr 0.0001, 1 epochs, validation 0.2"]
    bad = subprocess.run([sys.executable, str(ROOT / "bench" / "model_budget.py"), "--sweep",
                          "per_model.resnet18.lr"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "must look like key=v1,v2" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr


DETACHED_BURN = """
import os, sys, time
if os.fork() == 0:  # a daemon, as DVC starts its queue workers: nobody waits for it
    os.setsid()
    if os.fork() == 0:
        end = time.process_time() + 1.5
        while time.process_time() < end:
            pass
    os._exit(0)
time.sleep(2.5)  # the daemon burns meanwhile; rusage never sees its CPU
sys.exit(3)
"""


def test_suite_time_counts_the_cpu_of_detached_processes_and_keeps_the_exit_code(tmp_path):
    out = tmp_path / "times.txt"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "suite_time.py"), "--out",
                           str(out), "--", sys.executable, "-c", DETACHED_BURN],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    line = out.read_text()
    assert proc.stdout.startswith(line) and ": exit 3, wall " in line
    busy = float(line.split("machine busy ")[1].split()[0])
    wall = float(line.split(", wall ")[1].split()[0])
    assert busy >= 1.4, line  # at least the daemon's 1.5 CPU-s (other work may add to it)
    assert busy <= (wall + 1) * os.cpu_count(), line  # seconds, not clock ticks


# A daemon started with an empty environment (Slurm's step daemon) that runs a command with the
# environment of the test (the job, as sbatch exports it) and waits for it.
DETACHED_CLEAN = """
import os, sys
job_env = {"NORMBENCH_SUITE_TEST": os.environ["NORMBENCH_SUITE_TEST"]}
burn = "import time\\nend = time.process_time() + 1.0\\nwhile time.process_time() < end: pass"
# The launcher waits before its job: scans find it with no process below that names a test.
launch = ("import subprocess, sys, time; time.sleep(0.6); subprocess.run([sys.executable, '-c', "
          + repr(burn) + "], env=" + repr(job_env) + ")")
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execve(sys.executable, [sys.executable, "-c", launch], {})
    os._exit(0)
"""


ACCOUNTED_TESTS = f"""
import subprocess, sys, time

def test_detached():  # the daemon outlives the test's own process tree
    subprocess.run([sys.executable, "-c", {DETACHED_BURN.replace("time.sleep(2.5)", "")!r}])
    time.sleep(2.5)

def test_in_process():
    end = time.process_time() + 0.7
    while time.process_time() < end:
        pass

def test_detached_without_environment():  # as Slurm's step daemon, which runs the job
    subprocess.run([sys.executable, "-c", {DETACHED_CLEAN!r}])
    time.sleep(2.5)

def test_waited_child():
    subprocess.run([sys.executable, "-c", "import time\\nend = time.process_time() + 0.5\\n"
                    "while time.process_time() < end: pass"], check=True)
"""


@pytest.mark.parametrize("workers", [[], ["-n", "2"]])
def test_suite_time_charges_each_test_its_cpu_detached_processes_included(tmp_path, workers):
    (tmp_path / "test_burn.py").write_text(ACCOUNTED_TESTS)
    rows = tmp_path / "rows.jsonl"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "suite_time.py"), "--account",
                           str(rows), "--", sys.executable, "-m", "pytest", "-q", "-p",
                           "no:cacheprovider", "-p", "no:randomly", *workers, "test_burn.py"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    by_test = {r["test"].split("::")[1]: r for r in map(json.loads, rows.read_text().splitlines())}
    assert set(by_test) == {"test_detached", "test_detached_without_environment",
                            "test_in_process", "test_waited_child"}
    detached = by_test["test_detached"]
    assert 1.4 <= detached["detached_cpu_s"] <= 1.7 and detached["cpu_s"] < 0.5, detached
    clean = by_test["test_detached_without_environment"]  # its child's CPU, through its own
    assert 0.9 <= clean["detached_cpu_s"] <= 1.5 and clean["cpu_s"] < 0.5, clean
    assert 0.65 <= by_test["test_in_process"]["total_cpu_s"] <= 0.9, by_test
    waited = by_test["test_waited_child"]
    assert 0.5 <= waited["cpu_s"] <= 1.2 and waited["detached_cpu_s"] == 0, waited
    assert "test_burn.py::test_detached" in proc.stdout.split("slowest tests")[1].splitlines()[1]


@pytest.mark.parametrize("argv, orig_argv, expected", [
    (["/v/bin/dvc", "exp", "run", "--queue"], ["/v/bin/python", "/v/bin/dvc", "exp", "run"],
     "dvc exp run"),
    (["/v/bin/dvc", "repro", "stats@shapes"], [], "dvc repro"),
    (["/v/bin/dvc", "config", "--local", "a", "b"], [], "dvc config"),
    (["/v/lib/dvc/__main__.py", "daemon", "analytics", "f"], [], "dvc daemon analytics"),
    (["/v/bin/dvc"], [], "dvc"),
    (["stages/train.py", "--model", "smallcnn"], ["python", "stages/train.py"], "stages/train"),
    (["train.py"], [], "train"),
    (["/x/src/normbench/study.py", "--norms"], ["python", "-u", "-m", "normbench.study"],
     "normbench.study"),
    (["/x/src/normbench/__main__.py", "study"], ["python", "-m", "normbench", "study"],
     "normbench"),
    (["/tmp/x/bench/machine_pin.py", "--worker"], [], "bench/machine_pin"),
    # A program that rewrote sys.argv to run a script: what the interpreter ran, -c.
    (["stages/download.py", "shapes"], ["python", "-c", "import runpy, sys, torch\nx"],
     "python -c import runpy, sys, torch"),
    (["-c"], ["python", "-c", "import sys;exec(eval(sys.stdin.readline()))"],
     "python -c import sys;exec(eval(sys.stdin.readline("),  # its first 40 characters
    (["-c", "json"], [], "python -c"), ([], [], "python -c")])
def test_process_kinds_name_the_stage_command_or_script(argv, orig_argv, expected):
    assert importlib.import_module("process_cpu").kind(argv, orig_argv) == expected


def test_the_process_table_ranks_kinds_by_cpu_with_median_and_least():
    rows = [{"argv": ["stages/train.py"], "cpu_s": c} for c in (1.0, 2.0, 9.0)] + \
           [{"argv": ["stages/report.py"], "cpu_s": c} for c in (3.0, 4.0)] + \
           [{"argv": ["/v/bin/dvc", "repro"], "cpu_s": 0.5}]
    lines = importlib.import_module("process_cpu").table(rows, top=2).splitlines()
    assert lines[0] == "6 processes, 20 CPU-s"
    assert [line.split() for line in lines[2:]] == [
        ["12.0", "3", "2.00", "1.00", "stages/train"],  # the median, not the mean (4.0)
        ["7.0", "2", "3.50", "3.00", "stages/report"],
        ["0.5", "1", "in", "1", "more", "kinds"]]


# A command of five Python processes: this one waits for a child that burns 0.5 CPU-s in a
# folder of its own, one killed by SIGKILL once it runs (no exit hook: not counted), one under
# a file size limit smaller than its row (not counted, and it ends as it would: exit 0, nothing
# said), and one with the variable cleared (the hook is not even imported: nothing counted).
FIVE_PROCESSES = """
import os, resource, signal, subprocess, sys
burn = "import time\\nend = time.process_time() + 0.5\\nwhile time.process_time() < end: pass"
os.mkdir("sub")
subprocess.run([sys.executable, "-c", burn, "burner"], cwd="sub")
killed = subprocess.Popen([sys.executable, "-c", "print('up', flush=True); input()"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
assert killed.stdout.readline() == "up\\n"
killed.send_signal(signal.SIGKILL)
killed.wait()
limited = subprocess.run([sys.executable, "-c", "pass"], capture_output=True, text=True,
                         preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (10, 10)))
cleared = subprocess.run([sys.executable, "-c", "import sys; print(sorted(sys.modules))"],
                         capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "NORMBENCH_PROCESS_LOG"})
unhooked = "normbench_process_cpu" not in cleared.stdout and cleared.stderr == ""
sys.exit(3 if (limited.returncode, limited.stderr, unhooked) == (0, "", True) else 4)
"""


def test_process_cpu_counts_each_python_process_once_by_kind_and_leaves_no_hook(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    log = tmp_path / "rows.jsonl"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "process_cpu.py"), "--venv",
                           str(venv), "--log", str(log), "--", python, "-c", FIVE_PROCESSES],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr  # the command's exit code, all as it would be
    assert "cut short" not in proc.stderr  # the limited process left no half row
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(r["argv"][-1] for r in rows) == ["-c", "burner"], rows
    burner = next(r for r in rows if r["argv"][-1] == "burner")
    waiter = next(r for r in rows if r["argv"][-1] == "-c")
    assert 0.5 <= burner["cpu_s"] < 1.5 and waiter["cpu_s"] < 0.5, rows  # its own CPU only
    total = burner["cpu_s"] + waiter["cpu_s"]
    assert proc.stdout.splitlines()[0] == f"2 processes, {total:.0f} CPU-s", proc.stdout
    runs = [line.split()[1] for line in proc.stdout.splitlines()[2:]]
    assert runs == ["1", "1"], proc.stdout  # two kinds: their -c code differs
    # The hook is gone: the environment's Python starts as before.
    site = next((venv / "lib").glob("python*/site-packages"))
    assert not list(site.rglob("normbench_process_cpu*")), list(site.rglob("*"))
    # A hook left by another run (or a killed one) is refused, not overwritten or removed.
    (site / "normbench_process_cpu.pth").write_text("")
    again = subprocess.run([sys.executable, str(ROOT / "bench" / "process_cpu.py"), "--venv",
                            str(venv), "--", python, "-c", "pass"], capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 1 and "remove it and run again" in again.stderr, again.stderr
    assert (site / "normbench_process_cpu.pth").is_file()
    # A command killed by a signal: the shell's exit code for it, 128 + 9.
    (site / "normbench_process_cpu.pth").unlink()
    killed = subprocess.run([sys.executable, str(ROOT / "bench" / "process_cpu.py"), "--venv",
                             str(venv), "--", python, "-c",
                             "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"],
                            capture_output=True, text=True, timeout=60)
    assert killed.returncode == 137, killed.stderr


def test_stage_imports_times_the_stages_and_the_eager_reference():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "stage_imports.py"),
                           "--repeats", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split(":")[0]: line for line in proc.stdout.splitlines()}
    assert set(rows) == {"download@shapes", "download@digits"}, proc.stdout
    for row in rows.values():  # the reference imports more: it costs more CPU
        ours, eager = (float(part.split(" CPU-s")[0].split()[-1])
                       for part in row.split(", with torch"))
        assert 0 < ours < eager, row


def test_model_budget_refuses_to_measure_nothing():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "model_budget.py"),
                           "--no-scratch", "--no-pretrained"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "not allowed with argument" in proc.stderr, proc.stderr


def test_machine_pin_times_the_pins_against_torchs_defaults_and_their_hashes_agree(tmp_path):
    out = tmp_path / "pin.md"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "machine_pin.py"), "--model",
                           TINY_MODEL, "--images", "64", "--repeats", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    timed = [line.split(" | ") for line in text.splitlines() if line.startswith("| 1 | ")]
    assert [row[1] for row in timed] == ["reference", "pinned", "AVX2 only",
                                         "MKL_CBWR=COMPATIBLE only"]
    assert timed[0][3] == "1.00x |" and all(float(row[2].split()[0]) > 0 for row in timed)
    hashes = [line.rsplit("`", 2)[1] for line in text.splitlines() if line.startswith("| pinned |")]
    assert len(hashes) >= 4 and len(set(hashes)) == 1, text
    assert "Pinned runs: 1 distinct hash(es) (identical)." in text
    threads = [line.split(" | ") for line in text.splitlines()
               if line.startswith("| intra-op threads |")]
    assert [row[1] for row in threads] == [f"`torch.set_num_threads({n})`" for n in (1, 2, 3, 4)]
