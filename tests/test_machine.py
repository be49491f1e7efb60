"""The train stage's CPU pins make a cell the same bytes whatever the cores and vector width, and
every cell records the kind of machine it ran on.

The cell is smallcnn's: the same kernel families as resnet18's (oneDNN convolutions and their
backward, BatchNorm, ReLU, max and adaptive pooling, MKL's linear, Adam) at a tenth of the CPU,
and as sensitive: unpinned, its bytes change with the thread count (bench/machine_pin.py
--model smallcnn)."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, TINY_MODEL, run_stage

from normbench.machine import (CPU_THREADS, cpu_flags, cpu_model, cpu_vendor, details,
                               native_vector_width, pin_cpu, pinned_env, ran_on)

CELL = f"{TINY_MODEL}-digits-223"
OUTPUTS = ("metrics", "plots", "predictions", "checkpoints", "weightdist")


def train_args() -> list[str]:
    return ["--model", TINY_MODEL, "--dataset", "digits", "--seed", "223",
            "--data", "data/digits", "--stats", "data/stats/digits.json",
            "--start", f"starts/{TINY_MODEL}.pt", "--metrics", f"metrics/{CELL}.json",
            "--live", f"plots/{CELL}", "--predictions", f"predictions/{CELL}.npy",
            "--checkpoint", f"checkpoints/{CELL}.pt", "--weightdist", f"weightdist/{CELL}"]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A folder with a tiny dataset, its statistics, params and the scratch start file."""
    from normbench.arrays import save_arrays
    from normbench.datasets import make_shapes
    from normbench.io import write_json
    from normbench.stats import stats_table

    root = tmp_path_factory.mktemp("pinned")
    arrays = make_shapes(6, 0.5, 0)
    save_arrays(arrays, root / "data" / "digits")
    write_json(root / "data" / "stats" / "digits.json", stats_table(arrays.train.images))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update(device="cpu")
    params["train"].update(epochs=1, val_fraction=0.34)  # 1 of 3 per class
    params["per_model"][TINY_MODEL]["batch_size"] = 4  # 3 steps on the 12 images trained on
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    start = run_stage(root, "start", "--model", TINY_MODEL, "--out", f"starts/{TINY_MODEL}.pt")
    assert start.returncode == 0, start.stderr
    return root


def train_on(project: Path, cores: list[int], env: dict[str, str]) -> dict[str, str]:
    """Run the train stage on ``cores`` (taskset) with ``env`` added: {output file: md5}."""
    proc = subprocess.run(["taskset", "-c", ",".join(map(str, cores)), sys.executable,
                           str(ROOT / "stages" / "train.py"), *train_args()], cwd=project,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return {str(p.relative_to(project)): hashlib.md5(p.read_bytes()).hexdigest()
            for name in OUTPUTS for p in sorted((project / name).rglob("*")) if p.is_file()}


def test_a_cell_is_the_same_bytes_on_one_core_or_all_and_under_either_vector_width(project):
    """Unpinned, each of these four runs wrote other weights (bench/machine_pin.py): threads
    follow the cores, and the vector width and MKL's branch follow the environment."""
    cores = sorted(os.sched_getaffinity(0))
    assert len(cores) >= 2, "this test needs two cores to compare one core against two"
    wide = {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}
    narrow = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2",
              "OMP_NUM_THREADS": str(len(cores))}
    if native_vector_width(cpu_flags()) != "avx512":
        wide = {}  # this CPU's own widest: what an unpinned run would use
    runs = {(n, label): train_on(project, cores[:n], env)
            for n in (1, len(cores)) for label, env in (("wide", wide), ("narrow", narrow))}
    first = next(iter(runs.values()))
    assert len(first) >= 5 and all(files == first for files in runs.values()), runs
    metrics = json.loads((project / "metrics" / f"{CELL}.json").read_text())
    assert metrics["ran_on"].endswith(f"cpu {os.uname().machine} {cpu_vendor()} avx2 1 thread")
    assert metrics["ran_on"].startswith(f"torch {torch.__version__}, torchvision ")
    timing = json.loads((project / "timings" / f"{CELL}.json").read_text())
    assert timing["machine"]["cpu"] == cpu_model() and timing["machine"]["cores"] == len(cores)


def test_the_isa_is_pinned_only_where_the_cpu_has_avx2():
    # ATen would run AVX2 code on a CPU without it (it trusts the variable): an illegal instruction
    assert pinned_env({"sse4_2", "avx"}) == {"OMP_NUM_THREADS": str(CPU_THREADS),
                                             "MKL_NUM_THREADS": str(CPU_THREADS),
                                             "MKL_CBWR": "COMPATIBLE"}
    assert pinned_env({"avx2", "fma", "avx512f"})["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert pinned_env({"avx2", "fma"})["ATEN_CPU_CAPABILITY"] == "avx2"


def test_pinning_after_torch_started_is_refused():
    assert "torch" in sys.modules  # imported above: too late for its libraries to see a pin
    with pytest.raises(RuntimeError, match="before torch is imported"):
        pin_cpu()


def test_the_cpu_is_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Example CPU 9000\n"
                    "flags\t\t: fpu sse4_2 avx avx2 fma avx512f\n")
    assert cpu_model(info) == "Example CPU 9000"
    assert cpu_flags(info) == {"fpu", "sse4_2", "avx", "avx2", "fma", "avx512f"}
    assert native_vector_width(cpu_flags(info)) == "avx512"
    assert native_vector_width({"sse4_2", "avx", "avx2"}) == "avx2"
    assert native_vector_width(set()) == "none"
    assert cpu_flags(tmp_path / "absent") == set()
    # no maker named, or no file: a kind of its own, never pooled with a known maker's
    assert cpu_vendor(info) == cpu_vendor(tmp_path / "absent") == "maker-unknown"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Example\n")
    assert cpu_vendor(info) == "GenuineIntel"
    info.write_text("processor\t: 0\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n")
    assert cpu_vendor(info) == "arm-0x41"  # Arm Ltd's code (Neoverse); Ampere's is 0xc0


def test_ran_on_is_the_kind_of_machine_and_details_the_machine():
    device = torch.device("cpu")
    threads = torch.get_num_threads()
    width = torch.backends.cpu.get_cpu_capability().lower()
    assert ran_on(device).endswith(f"cpu {os.uname().machine} {cpu_vendor()} {width} {threads} "
                                   f"thread{'s' if threads > 1 else ''}")
    if os.uname().machine == "x86_64" and Path("/proc/cpuinfo").is_file():  # this machine's maker
        assert cpu_vendor() in ("GenuineIntel", "AuthenticAMD", "HygonGenuine"), cpu_vendor()
    if cpu_model() != os.uname().machine:  # the model goes with the timings, not the hash
        assert cpu_model() not in ran_on(device)
    assert details(device)["cpu"] == cpu_model()
    if Path("/sys/devices/system/cpu/cpu0/cache/index0").is_dir():  # Linux: what oneDNN may read
        caches = details(device)["cpu_caches"]
        assert {"L1d", "L1i", "L2"} <= set(caches), caches
        assert all(size[:-1].isdigit() and size.endswith("K") for size in caches.values()), caches

