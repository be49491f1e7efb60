"""Cells per GPU from measurement, and what a study's cells run inside: their share of the
compile workers, one compile cache, the MPS daemon started and stopped only where it is ours."""

import json
import os
import stat
from pathlib import Path

from normbench import gpushare
from normbench.compile_cache import CACHE_ENV
from normbench.gpushare import COMPILE_THREADS_ENV, Sharing, choose, sharing


def row(model, jobs, rate, mps=False, workload="datasets=[shapes]"):
    return {"model": model, "jobs": jobs, "aggregate_img_s": rate, "mps": mps,
            "workload": workload}


def test_cells_per_gpu_are_the_measured_best_and_the_smallest_over_models():
    rows = [row("resnet18", 1, 100.0), row("resnet18", 2, 170.0), row("resnet18", 4, 240.0),
            row("resnet18", 4, 290.0, mps=True), row("resnet18", 8, 260.0, mps=True),
            row("densenet121", 1, 50.0), row("densenet121", 2, 90.0),
            row("densenet121", 4, 85.0)]
    assert choose(rows) == Sharing(2, False, "measured: densenet121 -j 2 trains 1.80x as "
                                             "fast as -j 1")
    resnet_only = [r for r in rows if r["model"] == "resnet18"]
    assert choose(resnet_only) == Sharing(4, True, "measured: resnet18 -j 4 with MPS trains "
                                                   "2.90x as fast as -j 1")
    # Another workload's rows are no base for the newest one; nothing measured, nothing guessed.
    newer = resnet_only + [row("resnet18", 2, 10.0, workload="train.epochs=1")]
    assert choose(newer).jobs == 1 and "no -j measurement" in choose(newer).why
    assert choose([]) == Sharing(1, False, choose([]).why) and not choose([]).mps
    # Slower with more cells: one cell per GPU.
    assert choose([row("vgg16", 1, 100.0), row("vgg16", 2, 80.0)]).jobs == 1


def test_this_gpus_rows_are_read_from_the_benchmarks_results(tmp_path, monkeypatch):
    (tmp_path / "queue-nvidia-h200.jsonl").write_text(
        "\n".join(json.dumps(r) for r in [row("resnet18", 1, 10.0), row("resnet18", 4, 31.0)]))
    assert choose(gpushare.queue_rows("NVIDIA H200", tmp_path)).jobs == 4
    assert gpushare.queue_rows("NVIDIA H100 80GB HBM3", tmp_path) == []
    monkeypatch.setattr(gpushare, "BENCH_RESULTS", tmp_path)
    monkeypatch.setattr(gpushare, "gpu_name", lambda: "NVIDIA H200")
    monkeypatch.setattr(gpushare.shutil, "which", lambda name: "/usr/bin/" + name)
    assert gpushare.for_this_gpu().jobs == 4
    monkeypatch.setattr(gpushare.shutil, "which", lambda name: None)  # no driver: no GPU
    assert gpushare.for_this_gpu() == Sharing(1, False, "")


def test_a_study_gives_each_cell_its_share_of_compile_workers_and_one_compile_cache(
        tmp_path, monkeypatch):
    monkeypatch.delenv(COMPILE_THREADS_ENV, raising=False)
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setattr(gpushare, "cores", lambda: 16)
    with sharing(tmp_path, 4, mps=False) as mps:
        assert mps is False
        assert os.environ[COMPILE_THREADS_ENV] == "4"
        assert os.environ[CACHE_ENV] == str((tmp_path / ".compile-cache").resolve())
    assert COMPILE_THREADS_ENV not in os.environ and CACHE_ENV not in os.environ
    monkeypatch.setenv(COMPILE_THREADS_ENV, "3")  # the caller's own stands
    with sharing(tmp_path, 32, mps=False):
        assert os.environ[COMPILE_THREADS_ENV] == "3"
    monkeypatch.delenv(COMPILE_THREADS_ENV)
    with sharing(tmp_path, 32, mps=False):
        assert os.environ[COMPILE_THREADS_ENV] == "1"  # never none


# A stand-in for CUDA's nvidia-cuda-mps-control: `-d` starts the daemon (a control file in the
# pipe folder), commands on stdin talk to it and fail without it, as the real client does.
FAKE_MPS = """#!/bin/sh
pipe=${CUDA_MPS_PIPE_DIRECTORY:-%s}
if [ "$1" = "-d" ]; then mkdir -p "$pipe" && touch "$pipe/control" && echo "start $pipe" >> %s; exit 0; fi
[ -e "$pipe/control" ] || { echo "Cannot find MPS control daemon process" >&2; exit 1; }
read command
echo "$command $pipe" >> %s
[ "$command" = quit ] && rm "$pipe/control"
exit 0
"""


def fake_mps(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """The stand-in on PATH; returns its log and its default pipe folder."""
    bin_dir, log, default = tmp_path / "bin", tmp_path / "mps.log", tmp_path / "default-pipe"
    bin_dir.mkdir()
    script = bin_dir / "nvidia-cuda-mps-control"
    script.write_text(FAKE_MPS % (default, log, log))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    log.write_text("")
    return log, default


def test_the_study_starts_the_mps_daemon_where_it_exists_and_stops_what_it_started(
        tmp_path, monkeypatch):
    log, _ = fake_mps(tmp_path, monkeypatch)
    with sharing(tmp_path, 4, mps=True) as mps:
        assert mps is True
        pipe = os.environ["CUDA_MPS_PIPE_DIRECTORY"]  # the cells find the daemon through it
        assert (Path(pipe) / "control").exists()
    assert "CUDA_MPS_PIPE_DIRECTORY" not in os.environ
    lines = log.read_text().splitlines()
    assert lines[0] == f"start {pipe}" and lines[-1] == f"quit {pipe}"
    assert not Path(pipe).exists()  # its folder removed with it


def test_a_daemon_that_runs_already_is_used_and_left_running(tmp_path, monkeypatch):
    log, default = fake_mps(tmp_path, monkeypatch)
    default.mkdir()
    (default / "control").touch()  # someone else's daemon
    with sharing(tmp_path, 2, mps=True) as mps:
        assert mps is True and "CUDA_MPS_PIPE_DIRECTORY" not in os.environ
    assert (default / "control").exists()
    assert not any(line.startswith(("start", "quit")) for line in log.read_text().splitlines())


def test_without_mps_on_the_machine_cells_share_the_gpu_without_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-cuda-mps-control
    with sharing(tmp_path, 2, mps=True) as mps:
        assert mps is False


def test_default_jobs_on_a_gpu_take_the_measured_cells_per_gpu(monkeypatch):
    import torch

    from normbench import dvcqueue

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(gpushare, "for_this_gpu", lambda: Sharing(3, False, "measured"))
    assert dvcqueue.default_jobs() == 6
    monkeypatch.setattr(gpushare, "for_this_gpu", lambda: Sharing(1, False, "nothing"))
    assert dvcqueue.default_jobs() == 2


def test_default_jobs_on_a_cpu_are_one_per_core_a_cell_trains_on_one_thread(monkeypatch):
    import torch

    from normbench import dvcqueue, machine

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4})
    assert machine.CPU_THREADS == 1 and dvcqueue.default_jobs() == 5
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert dvcqueue.default_jobs() == 1
