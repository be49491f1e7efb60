"""Does every model of the registry learn on the embedded data, at params.yaml's budget?

For each model: the train block with the model's ``per_model`` entry, from scratch on each
target, then pretrained on the embedded source (the ``start.pretrained`` block, with the same
``per_model`` entry) and fine-tuned on each target: one seed, ``norm: dataset``, on this device,
the training code of the train and start stages. Prints a row per model as it goes and writes
bench/results/model-budget-<device>[-pretrained-only | -scratch-only].md: final test accuracy,
chance, and whether the cell learned (one-sided binomial test against chance, as every cell's
metrics say).

A cell on 2 CPU cores takes from about a minute (resnet18) to 15 (vgg16); a pretraining about 3 to
30 times as long as a cell on digits.

Usage: python bench/model_budget.py [--models resnet18 vgg16] [--datasets digits shapes]
       [--seed 1] [--no-pretrained] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from device_results import RESULTS, device_label, slug  # noqa: E402
from normbench.config import (SpeedConfig, TrainConfig, load_params, require,  # noqa: E402
                              resolve_device)
from normbench.datasets import build_dataset  # noqa: E402
from normbench.models import MODELS, build_model  # noqa: E402
from normbench.normalizations import NORMALIZATIONS  # noqa: E402
from normbench.pretrain import PretrainConfig, build_from_start, pretrain  # noqa: E402
from normbench.stats import channel_stats  # noqa: E402
from normbench.study import apply_sets  # noqa: E402
from normbench.train import seed_everything, train_cell  # noqa: E402

PLAIN = SpeedConfig("none", "none", False)  # what a CPU cell runs; the same on every device here


def cell(model: str, start: dict | None, arrays, cfg: TrainConfig, seed: int,
         device: torch.device) -> dict:
    """One train cell as stages/train.py trains it: its metrics."""
    seed_everything(seed)
    net = build_model(model, len(arrays.classes)) if start is None else (
        build_from_start(start, len(arrays.classes)))
    return train_cell(net, arrays, NORMALIZATIONS["dataset"], channel_stats(arrays.train.images),
                      cfg, seed, device, speed=PLAIN).metrics()


def shown(metrics: dict) -> str:
    verdict = "" if metrics["learned"] else " (chance)"
    return f"{metrics['final_acc'] * 100:.1f}{verdict}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--datasets", nargs="+", default=["digits", "shapes"])
    ap.add_argument("--seed", type=int, default=1)
    only = ap.add_mutually_exclusive_group()  # each writes a table of its own name
    only.add_argument("--no-pretrained", action="store_true", help="scratch cells only")
    only.add_argument("--no-scratch", action="store_true",
                      help="pretrained cells only (a model's scratch row is measured already)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="params override, e.g. train.epochs=1 (repeatable)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder for the .md")
    args = ap.parse_args()

    params = apply_sets(load_params(ROOT / "params.yaml"), args.sets)
    device = resolve_device(args.device)
    per_model = require(params, "per_model")
    shared = TrainConfig.from_params(require(params, "train"))
    pre = PretrainConfig.from_params(require(params, "start.pretrained"))
    targets = {d: build_dataset(d, require(params, f"data.{d}")) for d in args.datasets}
    starts = [] if args.no_pretrained else [f"pretrained on {pre.source}"]
    name = device_label(device)
    scratch = [] if args.no_scratch else args.datasets
    part = "-pretrained-only" if args.no_scratch else "-scratch-only" if args.no_pretrained else ""
    header = (["model", "budget"] + [f"{d}, scratch" for d in scratch]
              + ([f"{pre.source} (source)"] + [f"{d}, {starts[0]}" for d in args.datasets]
                 if starts else []))
    lines = [f"# Does every model learn on the embedded data? ({name})", "",
             f"`python bench/model_budget.py {' '.join(sys.argv[1:])}`".replace("  ", " ")
             + f" ({time.strftime('%Y-%m-%d')}, torch {torch.__version__}); seed {args.seed}, "
             f"norm dataset, final test accuracy (%), (chance): not above chance (binomial "
             f"p >= 0.05).", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    print(lines[2], flush=True)
    for model in args.models:
        cfg = shared.for_model(per_model, model)
        row = [model, f"batch {cfg.batch_size}, lr {cfg.lr:g}, {cfg.epochs} epochs"]
        row += [shown(cell(model, None, targets[d], cfg, args.seed, device))
                for d in scratch]
        if starts:
            start = pretrain(model, pre, device, PLAIN, per_model=per_model)
            row.append(shown(start["metrics"]))
            row += [shown(cell(model, start, targets[d], cfg, args.seed, device))
                    for d in args.datasets]
        lines.append("| " + " | ".join(row) + " |")
        print(lines[-1], flush=True)
        write(lines, args.results / f"model-budget-{slug(name)}{part}.md")  # kept as it ends
    print("\n" + "\n".join(lines))


def write(lines: list[str], out: Path) -> None:
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    main()
