"""Training speed: normbench's loop against a seed-style reference loop, timed in the same run.

Synthetic CIFAR-shaped data (uint8, N x size x size x 3, 10 classes), batch 256, per model:
- reference: the seed study's loop: PIL images through torchvision transforms (RandomCrop with
  4 px padding, RandomHorizontalFlip, ToTensor, Normalize) in a DataLoader with worker processes,
  fp32, eager, torch's default (non-deterministic) kernels; evaluation the same way without the
  random transforms; Adam;
- plain: normbench's loop exactly as a cell runs it (seed_everything's deterministic mode,
  params.yaml's train settings, uint8 dataset on the device, crop/flip/normalize there by
  normbench.train's own functions), fp32, eager;
- fast: the same with --amp/--compile (default: what `speed: auto` picks on this device, bf16
  autocast + torch.compile with CUDA graphs on a GPU), through the compile cache
  (normbench.compile_cache: a row says whether it started cold or warm, and torch's hits);
- captured: the same with `speed.compile: captured`, the whole step in one CUDA graph (GPU only).
Each row records whether its loop ran deterministic (``deterministic``,
``fill_uninitialized_memory``).
Each loop first runs one untimed evaluation and one untimed training epoch, in a cell's order
(a cell evaluates its untrained model first): their extra time (worker start-up, compilation,
capture) is the warm-up. With --warmup-cap, a loop whose warm-up runs longer is stopped there:
its row says so and the next loop starts. Then three timing windows of whole epochs, each at
least a third of --seconds, for training and then evaluation: a rate is their median. The
script prints images/s per loop and the ratios to the reference, appends its rows to
bench/results/<device>.jsonl and rewrites bench/results/<device>.md from all rows of that
device; bench/grid_cost.py turns them into the seed grid's GPU-hours.

Usage: python bench/train_speed.py [--models resnet18 densenet121] [--size 32] [--seconds 10]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from device_results import (RESULTS, append_row, device_label, provenance,  # noqa: E402
                            read_rows, slug)
from normbench.arrays import Arrays, Split  # noqa: E402
from normbench import compile_cache  # noqa: E402
from normbench.config import (SpeedConfig, TrainConfig, load_params, require,  # noqa: E402
                               resolve_device)
from normbench.io import StageFailed  # noqa: E402
from normbench.models import MODELS, build_model  # noqa: E402
from normbench.normalizations import NORMALIZATIONS, ChannelStats, Normalizer  # noqa: E402
from normbench.train import (Runner, batches_per_epoch, epoch_runner,  # noqa: E402
                             eval_batch, evaluate, seed_everything, to_device)

STATS = ChannelStats((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))  # CIFAR-10-like, in [0, 1] units
CLASSES = 10


WINDOWS = 3  # timing windows per rate: the median of three


@dataclass
class Rate:
    train: float | None  # training images/s, steady state (median of the windows); None: capped
    eval: float | None  # evaluation images/s, likewise
    warmup_s: float  # extra seconds of the first eval and train epochs (workers, compilation)
    windows: dict = field(default_factory=dict)  # {"train": [img/s per window], "eval": [...]}
    cache: dict = field(default_factory=dict)  # the compile cache: cold or warm, torch's hits
    capped: bool = False  # the warm-up ran past --warmup-cap and the loop stopped there
    error: str | None = None  # why the loop failed (the next one runs)


class WarmupCapped(BaseException):
    """The warm-up ran past its cap. A BaseException, so that torch.compile's own error handling
    (which wraps an Exception raised while it traces) lets it through."""


@contextlib.contextmanager
def capped(seconds: float | None):
    """Raise WarmupCapped in this thread once ``seconds`` have passed (SIGALRM); None: no cap."""
    if not seconds:
        yield
        return

    def expire(signum, frame):
        raise WarmupCapped()
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def once(epoch: Callable[[], None], device: torch.device) -> float:
    """Seconds of one epoch, waited for."""
    sync(device)
    t0 = time.perf_counter()
    epoch()
    sync(device)
    return time.perf_counter() - t0


def windows(epoch: Callable[[], None], images: int, seconds: float,
            device: torch.device) -> list[float]:
    """Images/s of WINDOWS windows of whole epochs, each at least ``seconds / WINDOWS`` long."""
    rates = []
    for _ in range(WINDOWS):
        done, t0 = 0, time.perf_counter()
        while done == 0 or time.perf_counter() - t0 < seconds / WINDOWS:
            epoch()
            sync(device)
            done += images
        rates.append(done / (time.perf_counter() - t0))
    return rates


def measure(train_pass: Callable[[], None], eval_pass: Callable[[], None], train_images: int,
            eval_images: int, args, device: torch.device) -> Rate:
    """Warm up as a cell does (evaluate, then train), capped at --warmup-cap, then time."""
    t0 = time.perf_counter()
    try:
        with capped(args.warmup_cap):
            first_eval = once(eval_pass, device)
            first_train = once(train_pass, device)
    except WarmupCapped:
        return Rate(None, None, time.perf_counter() - t0, capped=True)
    train = windows(train_pass, train_images, args.seconds, device)
    evals = windows(eval_pass, eval_images, args.seconds / 2, device)
    rate_train, rate_eval = statistics.median(train), statistics.median(evals)
    warmup = max(first_eval - eval_images / rate_eval, 0.0) + max(
        first_train - train_images / rate_train, 0.0)
    return Rate(rate_train, rate_eval, warmup, {"train": train, "eval": evals})


def determinism() -> dict:
    """The deterministic-mode settings in force now, as a row records them."""
    return {"deterministic": torch.are_deterministic_algorithms_enabled(),
            "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            "fill_uninitialized_memory": torch.utils.deterministic.fill_uninitialized_memory}


def synthetic(n_train: int, n_test: int, size: int) -> Arrays:
    """Random uint8 images and labels in the project's array format (N x size x size x 3)."""
    rng = np.random.default_rng(0)

    def split(n: int) -> Split:
        images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        return Split(images, rng.integers(0, CLASSES, n).astype(np.int64))
    return Arrays(split(n_train), split(n_test), [str(c) for c in range(CLASSES)])


class SeedStyleDataset(torch.utils.data.Dataset):
    """What torchvision's CIFAR10 dataset does per item: a PIL image through the transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def reference_rate(model_name: str, data: Arrays, args, device: torch.device) -> Rate:
    """The seed-style loop: DataLoader workers + PIL transforms, fp32 eager, Adam."""
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(False)  # the seed study's default kernels
    model = build_model(model_name, CLASSES).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    normalize = transforms.Normalize(STATS.mean, STATS.std)
    size = data.train.images.shape[1]
    augment = transforms.Compose([transforms.RandomCrop(size, padding=4),
                                  transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                  normalize])
    plain = transforms.Compose([transforms.ToTensor(), normalize])

    def loader(split: Split, transform, batch: int, shuffle: bool):
        return torch.utils.data.DataLoader(
            SeedStyleDataset(split.images, split.labels, transform), batch_size=batch,
            shuffle=shuffle,
            num_workers=args.workers, pin_memory=device.type == "cuda",
            persistent_workers=args.workers > 0)

    train_loader = loader(data.train, augment, args.batch, True)
    test_loader = loader(data.test, plain, 256, False)  # the seed study's test_batch_size

    def train_pass() -> None:
        model.train()
        for x, y in train_loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    @torch.no_grad()
    def eval_pass() -> None:
        model.eval()
        for x, y in test_loader:
            model(x.to(device, non_blocking=True)).argmax(1)

    return measure(train_pass, eval_pass, len(data.train.labels), len(data.test.labels), args,
                   device)


def project_rate(model_name: str, data: Arrays, speed: SpeedConfig, args,
                 device: torch.device) -> Rate:
    """normbench's own epochs and evaluation, as the train stage runs them."""
    seed_everything(0)  # a cell's deterministic mode, as stages/train.py sets it
    model = build_model(model_name, CLASSES).to(device)
    # The cells' own settings (params.yaml's train block: optimizer, scheduler, eval batch, crop
    # and flip), with this run's batch size.
    train = require(load_params(ROOT / "params.yaml"), "train")
    cfg = TrainConfig.from_params({**train, "batch_size": args.batch})
    bounds = batches_per_epoch(len(data.train.labels), args.batch)
    eval_size = eval_batch(cfg.eval_batch_size, data.test)
    runner = Runner(model, speed, device, compile_cache.for_cell(
        model, data, (bounds[0][1] - bounds[0][0], eval_size), speed, device, label=model_name))

    train_split, test_split = (to_device(s, device) for s in (data.train, data.test))
    normalizer = Normalizer(NORMALIZATIONS["dataset"], STATS, device)  # as train_cell builds it
    gen = torch.Generator(device=device).manual_seed(0)
    run_epoch = epoch_runner(runner, cfg, train_split, bounds, normalizer, gen, len(bounds))

    def train_pass() -> None:
        loss_sum, _, _ = run_epoch()
        loss_sum.item()  # the stage reads the epoch's loss once, too

    rate = measure(train_pass, lambda: evaluate(runner, test_split, normalizer, eval_size),
                   len(train_split.labels), len(test_split.labels), args, device)
    rate.cache = runner.cache_report()
    if rate.capped and runner.cache is not None:
        runner.cache.abandon()  # stopped mid-compile: nothing to save, the key is free
    return rate


def settings(row: dict) -> str:
    text = f"amp {row['amp']}, compile {row['compile']}"
    if "deterministic" in row:  # rows before it was recorded say nothing
        text += ", deterministic" if row["deterministic"] else ", not deterministic"
    return text


def write_summary(jsonl: Path) -> str:
    """The device's markdown table from all its rows: the newest row per model, size, loop and
    compile-cache state (a cold and a warm start are both shown)."""
    latest = {(r["model"], r["size"], r["loop"], r.get("cache") or ""): r
              for r in read_rows(jsonl)}
    rows = list(latest.values())
    device = rows[-1]["device"]
    commands = sorted({f"`{r.get('command', 'python bench/train_speed.py')}` ({r['date']}, "
                       f"torch {r['torch']})" for r in rows})
    lines = [f"# Training speed on {device}", "",
             "Synthetic CIFAR-shaped data, Adam; training and evaluation images/s in steady "
             "state (the median of three windows where recorded). reference = the seed study's "
             "loop (PIL transforms in a DataLoader, fp32); plain = normbench's loop, fp32 eager; "
             "fast = normbench's loop with the speed settings shown; captured = the whole step "
             "in one CUDA graph. Warm-up: the first evaluation and training epoch's extra "
             "seconds (compilation or capture included); compile cache: cold (compiled here) or "
             "warm (loaded). From:", "", *[f"- {c}" for c in commands], "",
             "| model | px | loop | train | vs reference | eval | warm-up s | compile cache | "
             "peak GPU MiB | settings |", "|---|---|---|---|---|---|---|---|---|---|"]
    order = {"reference": 0, "plain": 1, "captured": 2, "fast": 3}
    for r in sorted(rows, key=lambda r: (r["model"], r["size"], order.get(r["loop"], 9),
                                         r.get("cache") or "")):
        ref = latest.get((r["model"], r["size"], "reference", ""))
        number = lambda v: f"{v:,.0f}" if v else "-"  # noqa: E731
        ratio = (f"{r['train_img_s'] / ref['train_img_s']:.2f}x"
                 if ref and r["loop"] != "reference" and r.get("train_img_s") else "-")
        warm = (f"> {r['warmup_s']:.0f} (capped: not measured)" if r.get("warmup_capped")
                else f"failed: {r['error']}" if r.get("error") else f"{r['warmup_s']:.1f}")
        cache = r.get("cache") or "-"
        if r.get("cache"):
            hits = r.get("fxgraph_hits", 0) + r.get("aot_autograd_hits", 0)
            misses = r.get("fxgraph_misses", 0) + r.get("aot_autograd_misses", 0)
            cache += f" ({hits} hits, {misses} misses)"
        lines.append(f"| {r['model']} | {r['size']} | {r['loop']} | {number(r['train_img_s'])} | "
                     f"{ratio} | {number(r['eval_img_s'])} | {warm} | {cache} | "
                     f"{number(r.get('peak_mib'))} | {settings(r)} |")
    lines += ["", "The seed study's grid in GPU-hours at these rates: "
              "`python bench/grid_cost.py`."]
    text = "\n".join(lines) + "\n"
    jsonl.with_suffix(".md").write_text(text)
    return text


LOOPS = ("reference", "plain", "fast", "captured")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--size", type=int, default=32, help="image side in pixels")
    ap.add_argument("--images", type=int, default=50_000, help="train images per epoch")
    ap.add_argument("--test-images", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=10.0,
                    help="timed seconds of training per loop, at least (three windows)")
    ap.add_argument("--warmup-cap", type=float, default=None, metavar="SECONDS",
                    help="stop a loop whose warm-up (first eval and train epoch, compilation "
                         "included) runs longer, write a row saying so and go on")
    ap.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1),
                    help="DataLoader workers of the reference loop")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--amp", default="auto", help="the fast and captured loops' speed.amp")
    ap.add_argument("--compile", default="auto", help="the fast loop's speed.compile")
    ap.add_argument("--loops", nargs="+", choices=LOOPS,
                    help="default: reference plain fast, and captured on a GPU")
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder for .jsonl and .md")
    args = ap.parse_args()

    # Before any CUDA work: seed_everything fixes cuBLAS's workspace (CUBLAS_WORKSPACE_CONFIG),
    # which cuBLAS reads once, when the first loop starts it.
    seed_everything(0)
    device = resolve_device(args.device)
    loops = args.loops or [*LOOPS[:3], *(["captured"] if device.type == "cuda" else [])]
    fast = SpeedConfig.from_params({"amp": args.amp, "compile": args.compile,
                                    "compile_fallback": False}).resolve(device)
    speeds = {"plain": SpeedConfig("none", "none", False), "fast": fast}
    if "captured" in loops:  # refused here, before any loop runs, on a machine without CUDA
        speeds["captured"] = SpeedConfig(args.amp, "captured", False).resolve(device)
    name = device_label(device)
    jsonl = args.results / f"{slug(name)}.jsonl"
    data = synthetic(args.images, args.test_images, args.size)
    print(f"{name}: {args.images} train / {args.test_images} test images of {args.size} px, "
          f"batch {args.batch}; fast = amp {fast.amp}, compile {fast.compile}", flush=True)
    for model in args.models:
        rates = {}
        for loop in loops:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            if loop != "reference":
                torch._dynamo.reset()  # each model compiles afresh, within the recompile limit
            try:
                if loop == "reference":
                    rate = reference_rate(model, data, args, device)
                else:
                    rate = project_rate(model, data, speeds[loop], args, device)
            except (StageFailed, RuntimeError) as e:  # e.g. a failed capture: the next loop runs
                cause = " ".join(str(e).split())[:300]
                print(f"  {model:12s} {loop:9s} FAILED: {type(e).__name__}: {cause}", flush=True)
                rate = Rate(None, None, 0.0, error=f"{type(e).__name__}: {cause}")
            used = speeds.get(loop, speeds["plain"])
            row = {"device": name, "model": model, "size": args.size, "loop": loop,
                   "train_img_s": rate.train, "eval_img_s": rate.eval, "warmup_s": rate.warmup_s,
                   "warmup_capped": rate.capped, "warmup_cap_s": args.warmup_cap,
                   "amp": used.amp, "compile": used.compile, "batch": args.batch,
                   "images": args.images, **determinism(),
                   "peak_mib": torch.cuda.max_memory_allocated(device) / 2**20
                   if device.type == "cuda" else None,
                   "cache": rate.cache.get("compile_cache"),
                   **{k: v for k, v in rate.cache.items() if k != "compile_cache"},
                   "windows": rate.windows, "error": rate.error,
                   **provenance("train_speed.py")}
            append_row(jsonl, row)
            rates[loop] = rate
            if rate.error:
                continue
            if rate.capped:
                print(f"  {model:12s} {loop:9s} warm-up past its cap ({rate.warmup_s:.0f} s > "
                      f"{args.warmup_cap:.0f} s): not measured", flush=True)
                continue
            print(f"  {model:12s} {loop:9s} train {rate.train:10,.0f} img/s  eval "
                  f"{rate.eval:10,.0f} img/s  warm-up {rate.warmup_s:6.1f} s"
                  + (f"  compile cache {row['cache']}" if row["cache"] else ""), flush=True)
        ref = rates.get("reference")
        for loop, rate in rates.items():
            if loop != "reference" and ref and rate.train:
                print(f"  {model:12s} {loop} / reference: {rate.train / ref.train:.2f}x",
                      flush=True)
    print()
    print(write_summary(jsonl))


if __name__ == "__main__":
    main()
