"""Parity: does the fast path learn what the plain fp32 path learns?

Trains the same cells (one model x one dataset, several seeds, the train settings of params.yaml)
twice on this device: with the plain fp32 eager loop and with the fast path (--amp/--compile,
default: what `speed: auto` picks here). Prints each seed's best and final test accuracy, the
mean and sample std per path, the difference of the means against the seed-to-seed std, and the
paired t-test over seeds with the smallest difference it could detect; writes
bench/results/parity-<device>.md.

The fast path passes when the difference of the means is within the seed-to-seed spread (the
larger of the two stds), i.e. the speed settings move accuracy less than a change of seed does.

Usage: python bench/parity.py [--model resnet18] [--dataset shapes] [--seeds 1 2 3 4 5]
       [--epochs 8] [--amp bf16] [--compile reduce-overhead]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats as scipy_stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from device_results import RESULTS, device_label, slug  # noqa: E402
from normbench.config import (SpeedConfig, TrainConfig, load_params, require,  # noqa: E402
                              resolve_device)
from normbench.datasets import DATASETS, build_dataset  # noqa: E402
from normbench.models import MODELS, build_model  # noqa: E402
from normbench.normalizations import NORMALIZATIONS  # noqa: E402
from normbench.significance import detectable  # noqa: E402
from normbench.stats import channel_stats  # noqa: E402
from normbench.train import seed_everything, train_cell  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet18", choices=list(MODELS))
    ap.add_argument("--dataset", default="shapes", choices=list(DATASETS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--epochs", type=int, help="default: params.yaml's train.epochs")
    ap.add_argument("--norm", default="dataset", choices=list(NORMALIZATIONS))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--amp", default="auto", help="the fast path's speed.amp")
    ap.add_argument("--compile", default="auto", help="the fast path's speed.compile")
    args = ap.parse_args()

    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    device = resolve_device(args.device)
    block = require(params, "train")
    cfg = TrainConfig.from_params({**block, "epochs": args.epochs or block["epochs"]})
    fast = SpeedConfig.from_params({"amp": args.amp, "compile": args.compile,
                                    "compile_fallback": False}).resolve(device)
    plain = SpeedConfig("none", "none", False)
    if fast == plain:
        raise SystemExit("error: the fast path resolves to the plain one on this device; "
                         "pass --amp bf16 and/or --compile default to compare something")
    arrays = build_dataset(args.dataset, require(params, f"data.{args.dataset}"))
    stats = channel_stats(arrays.train.images)
    name = device_label(device)
    label = {"plain": "plain (fp32, eager)",
             "fast": f"fast (amp {fast.amp}, compile {fast.compile})"}
    print(f"{name}: {args.model} on {args.dataset}, norm {args.norm}, {cfg.epochs} epochs, "
          f"seeds {args.seeds}", flush=True)

    results: dict[str, dict[str, list[float]]] = {}
    for path, speed in (("plain", plain), ("fast", fast)):
        results[path] = {"best": [], "final": [], "seconds": []}
        for seed in args.seeds:
            seed_everything(seed)
            model = build_model(args.model, len(arrays.classes))
            t0 = time.perf_counter()
            r = train_cell(model, arrays, NORMALIZATIONS[args.norm], stats, cfg, seed, device,
                           speed=speed).metrics()
            results[path]["best"].append(r["best_acc"])
            results[path]["final"].append(r["final_acc"])
            results[path]["seconds"].append(time.perf_counter() - t0)
            print(f"  {path:5s} seed {seed}: best {r['best_acc']:.4f} final {r['final_acc']:.4f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)

    lines = [f"# Parity on {name}: {args.model} on {args.dataset}", "",
             f"`python bench/parity.py --model {args.model} --dataset {args.dataset} --seeds "
             f"{' '.join(map(str, args.seeds))} --epochs {cfg.epochs} --amp {args.amp} --compile "
             f"{args.compile}` ({time.strftime('%Y-%m-%d')}, torch {torch.__version__}); norm "
             f"{args.norm}, batch {cfg.batch_size}, lr {cfg.lr}, {cfg.optimizer}, {cfg.scheduler}.",
             "", "| path | " + " | ".join(f"seed {s}" for s in args.seeds) +
             " | mean ± std | seconds per cell |",
             "|---|" + "---|" * (len(args.seeds) + 2)]
    verdicts = []
    for metric in ("best", "final"):
        for path in ("plain", "fast"):
            acc = np.array(results[path][metric])
            lines.append(f"| {label[path]}, {metric}_acc | " + " | ".join(f"{a:.4f}" for a in acc)
                         + f" | {acc.mean():.4f} ± {acc.std(ddof=1):.4f} | "
                         f"{np.mean(results[path]['seconds']):.1f} |")
        a, b = np.array(results["plain"][metric]), np.array(results["fast"][metric])
        diff, spread = b.mean() - a.mean(), max(a.std(ddof=1), b.std(ddof=1))
        # Paired over seeds: a seed gives both paths the same initialisation and batch order.
        p = scipy_stats.ttest_rel(b, a).pvalue
        se = (b - a).std(ddof=1) / np.sqrt(len(a))
        smallest = detectable(se, len(a) - 1) if se > 0 else 0.0
        within = abs(diff) <= spread
        verdicts.append(f"- {metric}_acc: fast − plain = {diff:+.4f}; seed-to-seed std "
                        f"{spread:.4f}; paired t over {len(a)} seeds p = {p:.3f}, smallest "
                        f"difference it detects (80 % power, alpha 0.05) {smallest:.4f}: "
                        + ("within the seed-to-seed spread" if within else
                           "LARGER than the seed-to-seed spread"))
    text = "\n".join(lines + [""] + verdicts) + "\n"
    print("\n" + text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"parity-{slug(name)}-{args.model}-{args.dataset}.md").write_text(text)


if __name__ == "__main__":
    main()
