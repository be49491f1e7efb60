"""Where a run trains: the CPU settings that make a cell's bytes the same on every x86-64
machine of one CPU maker, and the record of what it ran on.

Measured with one small resnet18 cell on an AMD EPYC with AVX-512, torch 2.14.1
(bench/machine_pin.py, docs/reproducibility.md): its weights changed with each of

- the intra-op thread count (1, 2, 3 and 4 threads: four different results; `taskset` to one
  core is one thread);
- oneDNN's instruction set, which runs the convolutions (ONEDNN_MAX_CPU_ISA: SSE4.1, AVX2 and
  AVX-512 gave three results);
- MKL's code path, which runs the linear layer's matrix products (MKL_CBWR: default and AVX2
  agreed, COMPATIBLE differed: two results; three on an Intel Xeon, where AVX2 is a branch of
  its own);
- ATen's own kernels: DEFAULT differed from AVX2 and AVX-512, which agreed.

So every CPU-training stage calls :func:`pin_cpu` before it imports torch (the four are read
when torch and its libraries start). The pins are constants of the code, not params: a param is
part of a stage's hash, and placement must not retrain anything.

The pins do not reach across CPU makers: pinned, an Intel Xeon (AVX-512) wrote other train
outputs than the AMD EPYC (bench/results/machine-pin-*.md; the same data and statistics), so
the maker is part of the kind of machine (:func:`ran_on`).
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


def cpuinfo_field(keys: tuple[str, ...], cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The value of the first line of /proc/cpuinfo (Linux) that starts with one of ``keys``;
    empty where there is none or the file does not exist."""
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return ""
    return next((ln.partition(":")[2].strip() for ln in lines if ln.startswith(keys)), "")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags (x86's ``flags``, Arm's ``Features``); empty where not known."""
    return set(cpuinfo_field(("flags", "Features"), cpuinfo).split())


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name, or the architecture where it is not known."""
    return cpuinfo_field(("model name",), cpuinfo) or platform.machine()


UNKNOWN_MAKER = "maker-unknown"
CACHE_TYPE = {"Data": "d", "Instruction": "i"}  # sysfs's cache type -> L1d, L1i; Unified: L2


def cpu_vendor(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's maker as the CPU names itself: x86's ``vendor_id`` (``GenuineIntel``,
    ``AuthenticAMD``), an Arm CPU's implementer code (``arm-0x41``), or ``maker-unknown`` where
    /proc/cpuinfo says neither (or does not exist): never pooled with a known maker."""
    for key, prefix in (("vendor_id", ""), ("CPU implementer", "arm-")):
        if value := cpuinfo_field((key,), cpuinfo):
            return prefix + value
    return UNKNOWN_MAKER


def cache_sizes() -> dict[str, str]:
    """The first CPU's caches by level and type (``{"L1d": "48K", "L2": "2048K", ...}``), from
    Linux's sysfs; empty elsewhere. Timings only: oneDNN's blocking may follow them, and a
    conflict between two machines of one maker can then be read off their timings."""
    out = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind, size = ((index / f).read_text().strip()
                                 for f in ("level", "type", "size"))
        except OSError:
            continue
        out[f"L{level}{CACHE_TYPE.get(kind, '')}"] = size
    return out


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
    or cache sizes of one maker give other bytes is not measured (the timings record both).
    """
    import torch
    import torchvision

    versions = f"torch {torch.__version__}, torchvision {torchvision.__version__}"
    if device.type == "cuda":
        return f"{versions}, cuda {torch.cuda.get_device_name(device)}"
    threads = torch.get_num_threads()
    width = torch.backends.cpu.get_cpu_capability().lower()
    return (f"{versions}, {device.type} {platform.machine()} {cpu_vendor()} {width} "
            f"{threads} thread{'s' if threads > 1 else ''}")


def details(device) -> dict:
    """The machine itself, for the timings (not hashed): CPU model, native vector width, caches,
    cores."""
    import torch

    flags = cpu_flags()
    out = {"cpu": cpu_model(), "cpu_vector_width": native_vector_width(flags),
           "cpu_caches": cache_sizes(), "cores": len(os.sched_getaffinity(0)),
           "pinned": {k: os.environ.get(k) for k in pinned_env(flags)}}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out
