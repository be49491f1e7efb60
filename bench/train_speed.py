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
  autocast + torch.compile with CUDA graphs on a GPU).
Each row records whether its loop ran deterministic (``deterministic``,
``fill_uninitialized_memory``).
Each loop first runs one untimed epoch (worker start-up, compilation, autotuning; its extra time
is reported as warm-up), then whole epochs until --seconds have passed. The script prints
images/s per loop and the fast/reference ratio, appends its rows to bench/results/<device>.jsonl
and rewrites bench/results/<device>.md from all rows of that device; bench/grid_cost.py turns
them into the seed grid's GPU-hours.

Usage: python bench/train_speed.py [--models resnet18 densenet121] [--size 32] [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
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
from normbench.config import (SpeedConfig, TrainConfig, load_params, require,  # noqa: E402
                               resolve_device)
from normbench.models import MODELS, build_model  # noqa: E402
from normbench.normalizations import NORMALIZATIONS, ChannelStats, Normalizer  # noqa: E402
from normbench.train import (Runner, batches_per_epoch, evaluate,  # noqa: E402
                             make_optimizer, seed_everything, to_device, train_epoch)

STATS = ChannelStats((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))  # CIFAR-10-like, in [0, 1] units
CLASSES = 10


@dataclass
class Rate:
    train: float  # training images/s, steady state
    eval: float  # evaluation images/s, steady state
    warmup_s: float  # extra seconds of the first train + eval epochs (workers, compilation)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(epoch: Callable[[], None], images: int, seconds: float,
          device: torch.device) -> tuple[float, float]:
    """Run one untimed epoch, then epochs until ``seconds`` pass: (images/s, warm-up seconds)."""
    sync(device)
    t0 = time.perf_counter()
    epoch()
    sync(device)
    first = time.perf_counter() - t0
    done, t0 = 0, time.perf_counter()
    while done == 0 or time.perf_counter() - t0 < seconds:
        epoch()
        sync(device)
        done += images
    rate = done / (time.perf_counter() - t0)
    return rate, max(first - images / rate, 0.0)


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

    train_rate, warmup = timed(train_pass, len(data.train.labels), args.seconds, device)
    eval_rate, eval_warmup = timed(eval_pass, len(data.test.labels), args.seconds / 2, device)
    return Rate(train_rate, eval_rate, warmup + eval_warmup)


def project_rate(model_name: str, data: Arrays, speed: SpeedConfig, args,
                 device: torch.device) -> Rate:
    """normbench's own train_epoch and evaluate, as the train stage runs them."""
    seed_everything(0)  # a cell's deterministic mode, as stages/train.py sets it
    model = build_model(model_name, CLASSES).to(device)
    runner = Runner(model, speed, device)
    # The cells' own settings (params.yaml's train block: optimizer, scheduler, eval batch, crop
    # and flip), with this run's batch size.
    train = require(load_params(ROOT / "params.yaml"), "train")
    cfg = TrainConfig.from_params({**train, "batch_size": args.batch})

    train_split, test_split = (to_device(s, device) for s in (data.train, data.test))
    bounds = batches_per_epoch(len(train_split.labels), args.batch)
    opt, sched = make_optimizer(model, cfg, len(bounds), device)
    normalizer = Normalizer(NORMALIZATIONS["dataset"], STATS, device)  # as train_cell builds it
    gen = torch.Generator(device=device).manual_seed(0)

    def train_pass() -> None:
        loss_sum, _ = train_epoch(runner, opt, sched, train_split, bounds, normalizer, cfg, gen)
        loss_sum.item()  # the stage reads the epoch's loss once, too

    train_rate, warmup = timed(train_pass, len(train_split.labels), args.seconds, device)
    eval_rate, eval_warmup = timed(
        lambda: evaluate(runner, test_split, normalizer, cfg.eval_batch_size),
        len(test_split.labels), args.seconds / 2, device)
    return Rate(train_rate, eval_rate, warmup + eval_warmup)


def write_summary(jsonl: Path) -> str:
    """The device's markdown table from all its rows (the newest row per model, size and loop)."""
    latest = {(r["model"], r["size"], r["loop"]): r for r in read_rows(jsonl)}
    rows = list(latest.values())
    device = rows[-1]["device"]
    commands = sorted({f"`{r.get('command', 'python bench/train_speed.py')}` ({r['date']}, "
                       f"torch {r['torch']})" for r in rows})
    lines = [f"# Training speed on {device}", "",
             "Synthetic CIFAR-shaped data, Adam; training and evaluation images/s in steady "
             "state. reference = the seed study's loop (PIL transforms in a DataLoader, fp32); "
             "plain = normbench's loop, fp32 eager; fast = normbench's loop with the speed "
             "settings shown. From:", "", *[f"- {c}" for c in commands], "",
             "| model | px | reference train | plain train | fast train | fast / reference | "
             "fast eval | fast warm-up s | fast peak GPU MiB | fast settings |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for model, size in sorted({(r["model"], r["size"]) for r in rows}):
        get = {loop: latest.get((model, size, loop)) for loop in ("reference", "plain", "fast")}
        ref, plain, fast = get["reference"], get["plain"], get["fast"]
        cell = lambda r, k: f"{r[k]:,.0f}" if r else "-"  # noqa: E731
        ratio = f"{fast['train_img_s'] / ref['train_img_s']:.2f}x" if ref and fast else "-"
        settings = f"amp {fast['amp']}, compile {fast['compile']}" if fast else "-"
        if fast and "deterministic" in fast:  # rows before it was recorded say nothing
            settings += ", deterministic" if fast["deterministic"] else ", not deterministic"
        peak = f"{fast['peak_mib']:,.0f}" if fast and fast.get("peak_mib") else "-"
        warm = f"{fast['warmup_s']:.0f}" if fast else "-"
        lines.append(f"| {model} | {size} | {cell(ref, 'train_img_s')} | "
                     f"{cell(plain, 'train_img_s')} | {cell(fast, 'train_img_s')} | {ratio} | "
                     f"{cell(fast, 'eval_img_s')} | {warm} | {peak} | {settings} |")
    lines += ["", "The seed study's grid in GPU-hours at these rates: "
              "`python bench/grid_cost.py`."]
    text = "\n".join(lines) + "\n"
    jsonl.with_suffix(".md").write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--size", type=int, default=32, help="image side in pixels")
    ap.add_argument("--images", type=int, default=50_000, help="train images per epoch")
    ap.add_argument("--test-images", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=10.0, help="timed seconds per loop, at least")
    ap.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1),
                    help="DataLoader workers of the reference loop")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--amp", default="auto", help="the fast loop's speed.amp")
    ap.add_argument("--compile", default="auto", help="the fast loop's speed.compile")
    ap.add_argument("--loops", nargs="+", default=["reference", "plain", "fast"],
                    choices=["reference", "plain", "fast"])
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder for .jsonl and .md")
    args = ap.parse_args()

    # Before any CUDA work: seed_everything fixes cuBLAS's workspace (CUBLAS_WORKSPACE_CONFIG),
    # which cuBLAS reads once, when the first loop starts it.
    seed_everything(0)
    device = resolve_device(args.device)
    speed = SpeedConfig.from_params({"amp": args.amp, "compile": args.compile,
                                     "compile_fallback": False}).resolve(device)
    name = device_label(device)
    jsonl = args.results / f"{slug(name)}.jsonl"
    data = synthetic(args.images, args.test_images, args.size)
    print(f"{name}: {args.images} train / {args.test_images} test images of {args.size} px, "
          f"batch {args.batch}; fast = amp {speed.amp}, compile {speed.compile}", flush=True)
    plain_speed = SpeedConfig("none", "none", False)
    for model in args.models:
        rates = {}
        for loop in args.loops:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            if loop == "fast" and speed.compile != "none":
                torch._dynamo.reset()  # each model compiles afresh, within the recompile limit
            if loop == "reference":
                rate = reference_rate(model, data, args, device)
            else:
                rate = project_rate(model, data, speed if loop == "fast" else plain_speed, args,
                                    device)
            used = speed if loop == "fast" else plain_speed
            row = {"device": name, "model": model, "size": args.size, "loop": loop,
                   "train_img_s": rate.train, "eval_img_s": rate.eval, "warmup_s": rate.warmup_s,
                   "amp": used.amp, "compile": used.compile, "batch": args.batch,
                   "images": args.images, **determinism(),
                   "peak_mib": torch.cuda.max_memory_allocated(device) / 2**20
                   if device.type == "cuda" else None, **provenance("train_speed.py")}
            append_row(jsonl, row)
            rates[loop] = rate
            print(f"  {model:12s} {loop:9s} train {rate.train:10,.0f} img/s  eval "
                  f"{rate.eval:10,.0f} img/s  warm-up {rate.warmup_s:6.1f} s", flush=True)
        if "reference" in rates and "fast" in rates:
            ratio = rates["fast"].train / rates["reference"].train
            print(f"  {model:12s} fast / reference: {ratio:.2f}x", flush=True)
    print()
    print(write_summary(jsonl))


if __name__ == "__main__":
    main()
