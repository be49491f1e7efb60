"""What pinning the CPU costs and what it buys (normbench.machine).

One small training cell (the train stage's loop, seeded, random images) runs in a fresh process
under torch's defaults (the reference: one thread per usable core, the CPU's widest vector unit,
MKL's own dispatch) and under the train stage's pins, alternating, ``--repeats`` times each in
the same run: the ratio of their training images/s is the cost. On one core (one thread either
way) each part of the pins is also timed alone: the AVX2 cap, MKL's compatible branch.

Then the pinned cell's hash under each core count (`taskset`) and vector-width cap
(ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA) this machine allows: they must all agree. And torch's
defaults with each variable the pins set (threads, oneDNN's ISA, MKL's branch, ATen's kernels)
set alone: which of them move the bytes.

Usage: python bench/machine_pin.py [--model resnet18] [--images 512] [--epochs 1] [--repeats 3]
Writes bench/results/machine-pin-<arch>-<maker>-<cores>-cores.md (the CPU's maker: pinned, two
makers' CPUs give other bytes).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
RESULTS = ROOT / "bench" / "results"
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
# label -> (worker mode, environment): torch's defaults, the pins, and each part of them alone.
CONFIGS = {"reference": ("reference", {}), "pinned": ("pinned", {}),
           "AVX2 only": ("reference", AVX2), "MKL_CBWR=COMPATIBLE only":
           ("reference", {"MKL_CBWR": "COMPATIBLE"})}
# What may move a cell's bytes, each tried alone: (what, variable, values; None = unset).
ONE_AT_A_TIME = (
    ("intra-op threads", "torch.set_num_threads", ("1", "2", "3", "4")),
    ("oneDNN's instruction set", "ONEDNN_MAX_CPU_ISA", (None, "SSE41", "AVX2", "AVX512_CORE")),
    ("MKL's branch", "MKL_CBWR", (None, "AVX2", "COMPATIBLE")),
    ("ATen's kernels", "ATEN_CPU_CAPABILITY", ("default", "avx2", "avx512")),
)
PIN_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MKL_CBWR", "ATEN_CPU_CAPABILITY",
            "ONEDNN_MAX_CPU_ISA")


def worker(args: argparse.Namespace) -> None:
    """Train the cell in this process and print one JSON line: hash, speed, how it ran."""
    if args.worker == "pinned":
        from normbench.machine import pin_cpu
        pin_cpu()
    import numpy as np
    import torch

    from normbench.arrays import Arrays, Split
    from normbench.config import TrainConfig
    from normbench.machine import ran_on
    from normbench.models import build_model
    from normbench.normalizations import NORMALIZATIONS, ChannelStats
    from normbench.train import seed_everything, train_cell

    rng = np.random.default_rng(0)
    n_test = max(2, args.images // 4)
    images = rng.integers(0, 256, (args.images + n_test, 32, 32, 3), dtype=np.uint8)
    # Every class equally often, so the 10 % validation split holds one of each (from 60 images).
    labels = rng.permutation(np.arange(args.images + n_test) % 6).astype(np.int64)
    arrays = Arrays(Split(images[:args.images], labels[:args.images]),
                    Split(images[args.images:], labels[args.images:]), [str(i) for i in range(6)])
    cfg = TrainConfig.from_params(dict(epochs=args.epochs, batch_size=64, eval_batch_size=256,
                                       lr=1e-3, weight_decay=0.0, optimizer="adam",
                                       scheduler="cosine", pad=4, flip=True,
                                       val_fraction=0.1))
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(1)
    device = torch.device("cpu")
    result = train_cell(build_model(args.model, 6), arrays, NORMALIZATIONS["dataset"],
                        ChannelStats((0.5,) * 3, (0.29,) * 3), cfg, 1, device)
    digest = hashlib.md5()
    for name, tensor in result.final_state.items():
        digest.update(name.encode() + tensor.numpy().tobytes())
    digest.update(result.final_predictions.tobytes())
    print(json.dumps({"hash": digest.hexdigest()[:12], "images_per_s": result.images_per_s,
                      "ran_on": ran_on(device)}))


def run(mode: str, args: argparse.Namespace, cores: list[int] | None = None,
        env: dict[str, str] | None = None, threads: int | None = None) -> dict:
    """One worker process: ``cores`` for `taskset` (None: all), ``env`` set on top of a copy of
    this environment without the pinned variables (the reference is torch's defaults),
    ``threads`` for torch.set_num_threads (None: torch's default)."""
    base = {k: v for k, v in os.environ.items() if k not in PIN_VARS}
    argv = [sys.executable, __file__, "--worker", mode, "--model", args.model,
            "--images", str(args.images), "--epochs", str(args.epochs),
            *(["--threads", str(threads)] if threads else [])]
    if cores is not None:
        argv = ["taskset", "-c", ",".join(map(str, cores)), *argv]
    proc = subprocess.run(argv, env={**base, **(env or {})}, capture_output=True, text=True,
                          check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


class Runs:
    """Every worker run of this script by its configuration: a hash is read from a run that
    already happened where the configuration is the same (each worker is a fresh process, 2 to 4
    CPU-s), while every timed run is a run of its own."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.done = args, {}

    def timed(self, mode: str, cores: list[int], env: dict[str, str]) -> dict:
        got = run(mode, self.args, cores, env)
        self.done.setdefault(self.key(mode, cores, env, None), got)
        return got

    def hashed(self, mode: str, cores: list[int], env: dict[str, str],
               threads: int | None = None) -> dict:
        key = self.key(mode, cores, env, threads)
        if key not in self.done:
            self.done[key] = run(mode, self.args, cores, env, threads)
        return self.done[key]

    @staticmethod
    def key(mode: str, cores: list[int], env: dict[str, str], threads: int | None) -> tuple:
        return mode, tuple(cores), tuple(sorted(env.items())), threads


def runs_text(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--images", type=int, default=512, help="train images (test: a quarter)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--worker", choices=("pinned", "reference"), help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help="the results file (default: "
                    "bench/results/machine-pin-<arch>-<maker>-<cores>-cores.md)")
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    from normbench.machine import cpu_flags, cpu_model, cpu_vendor, native_vector_width

    cores = sorted(os.sched_getaffinity(0))
    native = native_vector_width(cpu_flags())
    load_before = os.getloadavg()[0]
    core_sets = list(dict.fromkeys([tuple(cores), tuple(cores[:1])]))  # all, then one
    speeds: dict[tuple[tuple, str], list[float]] = {}
    runs = Runs(args)
    for use in core_sets:
        # On one core the thread count is the same: the pins' parts are timed apart there.
        configs = CONFIGS if len(use) == 1 else {k: CONFIGS[k] for k in ("reference", "pinned")}
        for i in range(args.repeats):  # alternating: a change in the machine's load hits all
            for label, (mode, env) in configs.items():
                got = runs.timed(mode, list(use), env)["images_per_s"]
                speeds.setdefault((use, label), []).append(got)
                print(f"{len(use)} core(s), repeat {i + 1}: {label} {got:.1f} img/s", flush=True)
    load_after = os.getloadavg()[0]

    caps = {"its own": {}}
    if native == "avx512":
        caps["avx512"] = {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}
    caps["avx2"] = AVX2
    rows = []
    for label, env in caps.items():
        for use in core_sets:
            got = runs.hashed("pinned", list(use), env)
            rows.append(f"| pinned | {len(use)} | {label} | {got['ran_on'].split(', ', 2)[2]}"
                        f" | `{got['hash']}` |")
            print(rows[-1], flush=True)
    pinned_hashes = {r.rsplit("`", 2)[1] for r in rows}

    # Torch's defaults with one variable set at a time: which of them move the bytes.
    singles = []
    for what, variable, values in ONE_AT_A_TIME:
        threads = variable == "torch.set_num_threads"  # OMP_NUM_THREADS is capped at the cores
        for value in values:
            if value in ("avx512", "AVX512_CORE") and native != "avx512":
                continue  # ATen would run instructions this CPU lacks
            env = {} if value is None or threads else {variable: value}
            got = runs.hashed("reference", cores if threads else cores[:1], env,
                              int(value) if threads else None)
            setting = f"`{variable}({value})`" if threads else (
                f"`{variable}={value}`" if value else "unset")
            singles.append((what, setting, got["hash"]))
            print(singles[-1], flush=True)
    distinct = {what: len({h for w, _, h in singles if w == what}) for what, _, _ in singles}

    import torch
    maker = re.sub(r"[^a-z0-9]+", "-", cpu_vendor().lower())  # IBM/S390 would make a folder
    name = f"machine-pin-{os.uname().machine.replace('_', '-')}-{maker}-{len(cores)}-cores"
    out = args.out or RESULTS / f"{name}.md"
    command = (f"python bench/machine_pin.py --model {args.model} --images {args.images} "
               f"--epochs {args.epochs} --repeats {args.repeats}")
    lines = [
        f"# What pinning the CPU costs: {cpu_model()}, {len(cores)} cores, {native}", "",
        f"`{command}` ({datetime.date.today()}, torch {torch.__version__}). One {args.model} "
        f"cell, {args.images} random 32 px images, {args.epochs} epoch(s), in a fresh process "
        "each; training images/s, median of the repeats, run alternately.", "",
        "| cores | configuration | images/s (runs) | / reference |", "|---|---|---|---|",
        *(f"| {len(use)} | {label} | {statistics.median(v):.1f} ({runs_text(v)}) | "
          f"{statistics.median(v) / statistics.median(speeds[(use, 'reference')]):.2f}x |"
          for (use, label), v in speeds.items()), "",
        f"Load average (1 min) of the machine before and after the timed runs: "
        f"{load_before:.1f}, {load_after:.1f} ({len(cores)} cores): other work shares the cores "
        "when it exceeds the threads of the runs.", "",
        "The pinned cell's hash (weights and test predictions) by core count (`taskset`) and by "
        "the vector width set in the environment before the run (the pins replace it):", "",
        "| loop | cores | environment's cap | ran as | hash |", "|---|---|---|---|---|", *rows, "",
        f"Pinned runs: {len(pinned_hashes)} distinct hash(es) "
        f"({'identical' if len(pinned_hashes) == 1 else 'NOT identical'}).", "",
        "Torch's defaults with one variable set at a time (one core, except for the threads: "
        "all cores). Each configuration runs once: a row whose configuration already ran in "
        "this script (a timed run above) shows that run's hash.", "",
        "| what | setting | hash | distinct results of this what |", "|---|---|---|---|",
        *(f"| {what} | {setting} | `{digest}` | {distinct[what]} |"
          for what, setting, digest in singles), ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(f"pinned hashes: {len(pinned_hashes)} distinct -> {out}")


if __name__ == "__main__":
    main()
