"""Does every model of the registry learn on the embedded data, at params.yaml's budget?

For each model: the train block with the model's ``per_model`` entry, from scratch on each
target, then pretrained on the embedded source (the ``start.pretrained`` block, with the same
``per_model`` entry) and fine-tuned on each target: one seed, ``norm: dataset``, on this device,
the training code of the train and start stages. Prints a row per model as it goes and writes
bench/results/model-budget-<device>[-pretrained-only | -scratch-only][-sweep-<key>].md with two
tables of final-epoch accuracy and whether the cell learned (one-sided binomial test against
chance, as every cell's metrics say): on the validation split, what a choice of ``per_model``
reads, and on the test split, the final numbers, which no choice reads.

``--sweep KEY=V1,V2,...`` trains a row per value (e.g. ``per_model.vgg16.lr=0.001,0.0001``):
the comparison a ``per_model`` entry is chosen from, on validation accuracy.

A cell on 2 CPU cores takes from about a minute (resnet18) to 15 (vgg16); a pretraining about 3 to
30 times as long as a cell on digits.

Usage: python bench/model_budget.py [--models resnet18 vgg16] [--datasets digits shapes]
       [--seed 1] [--no-pretrained] [--set key=value ...] [--sweep key=v1,v2,...]
"""

from __future__ import annotations

import argparse
import copy
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
from normbench.registry import ConfigError  # noqa: E402
from normbench.significance import ALPHA  # noqa: E402
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


def shown(metrics: dict, split: str) -> str:
    """Final-epoch accuracy (%) on ``split`` (val | test), "(chance)" if not above chance."""
    acc, p = ((metrics["val_acc"], metrics["val_above_chance_p"]) if split == "val"
              else (metrics["final_acc"], metrics["above_chance_p"]))
    return f"{acc * 100:.1f}{'' if p < ALPHA else ' (chance)'}"


def sweep_values(sweep: str | None) -> tuple[str, list[str]]:
    """``KEY=V1,V2`` -> (KEY, [V1, V2]); no sweep: one run of params.yaml as it is."""
    if sweep is None:
        return "", [""]
    key, eq, values = sweep.partition("=")
    if not eq or not key or not values:
        raise ConfigError(f"--sweep {sweep!r} must look like key=v1,v2, "
                          "e.g. per_model.vgg16.lr=0.001,0.0001")
    return key, values.split(",")


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
    ap.add_argument("--sweep", help="a row per value of one param, e.g. "
                    "per_model.vgg16.lr=0.001,0.0003,0.0001: what a per_model entry is chosen "
                    "from (on validation accuracy)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder for the .md")
    args = ap.parse_args()

    base = apply_sets(load_params(ROOT / "params.yaml"), args.sets)
    try:
        key, values = sweep_values(args.sweep)
    except ConfigError as e:
        ap.error(str(e))
    device = resolve_device(args.device)
    targets = {d: build_dataset(d, require(base, f"data.{d}")) for d in args.datasets}
    source = PretrainConfig.from_params(require(base, "start.pretrained")).source
    starts = [] if args.no_pretrained else [f"pretrained on {source}"]
    name = device_label(device)
    scratch = [] if args.no_scratch else args.datasets
    part = "-pretrained-only" if args.no_scratch else "-scratch-only" if args.no_pretrained else ""
    part += f"-sweep-{slug(key)}" if key else ""
    header = (["model", "budget"] + [f"{d}, scratch" for d in scratch]
              + ([f"{source} (source)"] + [f"{d}, {starts[0]}" for d in args.datasets]
                 if starts else []))
    intro = [f"# Does every model learn on the embedded data? ({name})", "",
             f"`python bench/model_budget.py {' '.join(sys.argv[1:])}`".replace("  ", " ")
             + f" ({time.strftime('%Y-%m-%d')}, torch {torch.__version__}); seed {args.seed}, "
             f"norm dataset, final-epoch accuracy (%), (chance): not above chance (binomial "
             f"p >= {ALPHA}).", ""]
    tables = {split: [f"## {title}", "", "| " + " | ".join(header) + " |",
                      "|" + "---|" * len(header)]
              for split, title in (("val", "Validation accuracy: what a choice reads"),
                                   ("test", "Test accuracy: final numbers, read by no choice"))}
    print(intro[2], flush=True)
    for model in args.models:
        for value in values:
            params = apply_sets(copy.deepcopy(base), [f"{key}={value}"] if key else [])
            cfg = TrainConfig.from_params(require(params, "train")).for_model(
                require(params, "per_model"), model)
            pre = PretrainConfig.from_params(require(params, "start.pretrained"))
            cells = [cell(model, None, targets[d], cfg, args.seed, device) for d in scratch]
            if starts:
                start = pretrain(model, pre, device, PLAIN, per_model=require(params, "per_model"))
                cells.append(start["metrics"])
                cells += [cell(model, start, targets[d], cfg, args.seed, device)
                          for d in args.datasets]
            budget = (f"batch {cfg.batch_size}, lr {cfg.lr:g}, {cfg.epochs} epochs, "
                      f"validation {cfg.val_fraction:g}")
            for split, lines in tables.items():
                lines.append("| " + " | ".join([model, budget] + [shown(m, split) for m in cells])
                             + " |")
                print(f"{split}: {lines[-1]}", flush=True)
            write(intro + tables["val"] + [""] + tables["test"],
                  args.results / f"model-budget-{slug(name)}{part}.md")  # kept as it ends
    print("\n" + "\n".join(intro + tables["val"] + [""] + tables["test"]))


def write(lines: list[str], out: Path) -> None:
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    main()
