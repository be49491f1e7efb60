"""Where a run trains: the CPU settings that make a cell's bytes the same on every x86-64
machine, and the record of what it ran on.

Measured with one small resnet18 cell on an AMD EPYC with AVX-512, torch 2.14.1
(bench/machine_pin.py, docs/reproducibility.md): its weights changed with each of

- the intra-op thread count (1, 2, 3 and 4 threads: four different results; `taskset` to one
  core is one thread);
- oneDNN's instruction set, which runs the convolutions (ONEDNN_MAX_CPU_ISA: SSE4.1, AVX2 and
  AVX-512 gave three results);
- MKL's code path, which runs the linear layer's matrix products (MKL_CBWR: default, AVX2 and
  COMPATIBLE gave three results);
- ATen's own kernels: DEFAULT differed from AVX2 and AVX-512, which agreed.

So every CPU-training stage calls :func:`pin_cpu` before it imports torch (the four are read
when torch and its libraries start). The pins are constants of the code, not params: a param is
part of a stage's hash, and placement must not retrain anything.

The pins do not reach across CPU makers: pinned, an Intel Xeon (Sapphire Rapids, AVX-512) wrote
other train outputs than the AMD EPYC (bench/results/machine-pin-*.md; the same data and
statistics), so the maker is part of the kind of machine (:func:`ran_on`).
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

# One thread for the math, whatever the machine's cores: the thread count changes the bytes, so
# it is fixed, and one thread never oversubscribes a core (a one-core container, queue workers
# and test workers side by side). A study fills the cores with experiments side by side (JOBS).
CPU_THREADS = 1
# The vector width every x86-64 CPU of the last decade has (Intel since 2013, AMD since 2015).
PINNED_ISA = "avx2"
PINNED_ISA_FLAGS = {"avx2", "fma"}  # /proc/cpuinfo flags that ATen's and oneDNN's AVX2 code needs
# MKL's branch that gives the same results on Intel and non-Intel CPUs (its AVX2 branch falls
# back to the default dispatch on non-Intel ones, per Intel's documentation).
MKL_BRANCH = "COMPATIBLE"


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags (Linux); empty where the file does not exist."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), "")
    return set(line.partition(":")[2].split())


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name, or the architecture where it is not known."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return platform.machine()
    line = next((ln for ln in text.splitlines() if ln.startswith("model name")), "")
    return line.partition(":")[2].strip() or platform.machine()


def cpu_vendor(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's maker as the CPU names itself (``GenuineIntel``, ``AuthenticAMD``), or ``""``
    where /proc/cpuinfo does not say (no such file, or an Arm CPU: no ``vendor_id``)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return ""
    line = next((ln for ln in text.splitlines() if ln.startswith("vendor_id")), "")
    return line.partition(":")[2].strip()


def native_vector_width(flags: set[str]) -> str:
    """The widest x86 vector extension the CPU has (``avx512``, ``avx2``, ...), or ``none``."""
    for name, flag in (("avx512", "avx512f"), ("avx2", "avx2"), ("avx", "avx"),
                       ("sse4.2", "sse4_2")):
        if flag in flags:
            return name
    return "none"


def pinned_env(flags: set[str]) -> dict[str, str]:
    """The environment that pins a CPU's numbers; the ISA only where the CPU has AVX2.

    ATen trusts ATEN_CPU_CAPABILITY without checking the CPU, so forcing AVX2 on a CPU without it
    would crash: such a CPU keeps its own kernels, and its record says so (:func:`ran_on`).
    """
    env = {"OMP_NUM_THREADS": str(CPU_THREADS), "MKL_NUM_THREADS": str(CPU_THREADS),
           "MKL_CBWR": MKL_BRANCH}
    if PINNED_ISA_FLAGS <= flags:
        env.update(ATEN_CPU_CAPABILITY=PINNED_ISA, ONEDNN_MAX_CPU_ISA=PINNED_ISA.upper())
    return env


def pin_cpu() -> None:
    """Pin the thread count, the vector width and MKL's branch for this process.

    Must run before torch is imported: torch, oneDNN and MKL read these when they start.
    """
    if "torch" in sys.modules:
        raise RuntimeError("normbench.machine.pin_cpu() must run before torch is imported")
    os.environ.update(pinned_env(cpu_flags()))


def ran_on(device) -> str:
    """What decides a run's numbers besides its inputs: the *kind* of machine, hashed with them.

    torch and torchvision versions, then the GPU's name, or on a CPU its architecture, its maker,
    the vector width its kernels ran at and the thread count, e.g. "torch 2.14.1+cu130,
    torchvision 0.29.1+cu130, cpu x86_64 AuthenticAMD avx2 1 thread". Pinned, two makers' CPUs
    gave other bytes (measured: AMD EPYC and Intel Xeon), so cells of one are not pooled with the
    other's. The model name is left out (it goes with the timings, :func:`details`): virtual
    machines often hide it ("AMD EPYC", "Intel(R) Xeon(R) Processor"), and whether two models
    of one maker give other bytes is not measured.
    """
    import torch
    import torchvision

    versions = f"torch {torch.__version__}, torchvision {torchvision.__version__}"
    if device.type == "cuda":
        return f"{versions}, cuda {torch.cuda.get_device_name(device)}"
    threads = torch.get_num_threads()
    width = torch.backends.cpu.get_cpu_capability().lower()
    maker = f" {cpu_vendor()}" if cpu_vendor() else ""
    return (f"{versions}, {device.type} {platform.machine()}{maker} {width} "
            f"{threads} thread{'s' if threads > 1 else ''}")


def details(device) -> dict:
    """The machine itself, for the timings (not hashed): CPU model, native vector width, cores."""
    import torch

    flags = cpu_flags()
    out = {"cpu": cpu_model(), "cpu_vector_width": native_vector_width(flags),
           "cores": len(os.sched_getaffinity(0)),
           "pinned": {k: os.environ.get(k) for k in pinned_env(flags)}}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out
