"""GPU-hours of the seed study's grid and of the mismatch recipe at measured rates.

The seed grid: 4 models x 4 datasets (Tiny-ImageNet at 64 px) x 4 settings x 100 epochs, one
seed. The mismatch recipe (docs/pretraining.md): each model pretrained on Tiny-ImageNet under
each pretraining norm, then fine-tuned on CIFAR-10, CIFAR-100 and SVHN under each fine-tuning
norm and seed. Each epoch is one pass over the train split and one over the test split. Rates come from
bench/train_speed.py (one cell per GPU: the seed-style reference loop and normbench's fast loop)
and, where measured, bench/queue_speed.py (several cells per GPU: the aggregate speed-up of
`dvc queue start -j N` over -j 1 for the same model).

Usage: python bench/grid_cost.py [--device "NVIDIA H100 80GB HBM3"]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from device_results import RESULTS, device_label, read_rows, slug  # noqa: E402
from normbench.config import resolve_device  # noqa: E402
from normbench.gpushare import best_per_model  # noqa: E402

GRID_MODELS = ("resnet18", "resnet50", "densenet121", "densenet161")
# (train images, test images, side in px, classes) per dataset of the seed study.
GRID_DATASETS = {"cifar10": (50_000, 10_000, 32, 10), "cifar100": (50_000, 10_000, 32, 100),
                 "svhn": (73_257, 26_032, 32, 10), "tiny_imagenet_200": (100_000, 10_000, 64, 200)}
GRID_SETTINGS, GRID_EPOCHS = 4, 100


@dataclass(frozen=True)
class Work:
    """One model's cells on one dataset: how many, and the epochs of each."""

    dataset: str
    cells: int
    epochs: int


SEED_GRID = [Work(d, GRID_SETTINGS, GRID_EPOCHS) for d in GRID_DATASETS]
# make study WEIGHTS=pretrained PRETRAIN_NORMS="dataset minmax" NORMS="pretraining dataset minmax"
# SEEDS="1 2 3" on the real data: one pretraining per pretraining norm, then a fine-tuning cell
# per target x pretraining norm x fine-tuning norm x seed.
RECIPE_PRETRAIN_NORMS, RECIPE_NORMS, RECIPE_SEEDS = 2, 3, 3
RECIPE = [Work("tiny_imagenet_200", RECIPE_PRETRAIN_NORMS, GRID_EPOCHS)] + [
    Work(d, RECIPE_PRETRAIN_NORMS * RECIPE_NORMS * RECIPE_SEEDS, GRID_EPOCHS)
    for d in ("cifar10", "cifar100", "svhn")]


def compiles(row: dict) -> bool:
    """Whether a loop's warm-up is a torch.compile, which the compile cache saves for the next
    cell of the same model and shape (the captured step is captured anew in every process)."""
    return row.get("compile") not in (None, "none", "captured")


def grid_hours(rows: list[dict], loop: str, cells_per_gpu: dict[str, float] | None = None,
               grid: list[Work] = SEED_GRID) -> tuple[float, list[str]] | None:
    """GPU-hours of ``grid`` (per model) at ``loop``'s rates, and the assumptions made; None if
    unmeasured.

    A 64 px rate that was not measured is the 32 px rate / 4 (cost ~ pixels). A compiling loop
    pays a cold warm-up once per model and shape (image side and classes: one compile-cache
    key, normbench.compile_cache) and a warm start per cell; where no warm start was measured,
    every cell pays the cold one. Any other loop pays its warm-up per cell. ``cells_per_gpu``
    divides a model's 32 px cells by its measured queue speed-up; 64 px cells keep one cell per
    GPU, since their larger steps leave the GPU less idle and no speed-up was measured for them.
    """
    mine = [r for r in rows if r["loop"] == loop and r.get("train_img_s")]  # capped: no rate
    rates = {(r["model"], r["size"]): r for r in mine}
    cold = {(r["model"], r["size"]): r["warmup_s"] for r in mine if r.get("cache") != "warm"}
    warm = {(r["model"], r["size"]): r["warmup_s"] for r in mine if r.get("cache") == "warm"}
    hours, notes = 0.0, []
    for model in GRID_MODELS:
        compiled: set[tuple[int, int]] = set()
        for work in grid:
            n_train, n_test, size, classes = GRID_DATASETS[work.dataset]
            measured, scale = (model, size), 1.0
            if measured not in rates and (model, 32) in rates:
                measured, scale = (model, 32), (32 / size) ** 2
                notes.append(f"{model} {size} px scaled from 32 px")
            if measured not in rates:
                return None
            r = rates[measured]
            per_epoch = n_train / (r["train_img_s"] * scale) + n_test / (r["eval_img_s"] * scale)
            start = r["warmup_s"]
            first = 0.0
            if compiles(r):
                start = warm.get(measured, cold.get(measured, r["warmup_s"]))
                if measured not in warm:
                    notes.append(f"{model}: no warm start measured, every cell pays the cold one")
                if (size, classes) not in compiled:  # the first cell of this shape compiles
                    compiled.add((size, classes))
                    first = cold.get(measured, r["warmup_s"])
            seconds = work.cells * ((work.epochs + 1) * per_epoch + start)
            speedup = (cells_per_gpu or {}).get(model, 1.0) if size == 32 else 1.0
            hours += (seconds / speedup + first) / 3600
    return hours, sorted(set(notes))


def queue_speedups(rows: list[dict]) -> dict[str, tuple[int, float]]:
    """Per model, the job count with the best aggregate rate and its ratio to -j 1 (with or
    without MPS, as normbench.gpushare chooses for a study)."""
    return {model: (jobs, ratio) for model, (ratio, jobs, _) in best_per_model(rows).items()}


def summary(speed_rows: list[dict], queue_rows: list[dict]) -> str:
    rows = speed_rows  # all of them: a cold and a warm start of the same loop both count
    speedups = queue_speedups(queue_rows)
    estimates = [("seed-style loop, one cell per GPU", "reference", None),
                 ("normbench plain loop (fp32), one cell per GPU", "plain", None),
                 ("normbench fast loop, one cell per GPU", "fast", None),
                 ("normbench captured step, one cell per GPU", "captured", None)]
    if speedups:
        shown = ", ".join(f"{m} -j {j} ({s:.2f}x)" for m, (j, s) in sorted(speedups.items()))
        estimates.append((f"normbench fast loop, several cells per GPU: {shown}", "fast",
                          {m: s for m, (_, s) in speedups.items()}))
    lines = []
    grids = [(f"The seed grid ({len(GRID_MODELS)} models x {len(GRID_DATASETS)} datasets x "
              f"{GRID_SETTINGS} settings x {GRID_EPOCHS} epochs, one seed)", SEED_GRID),
             (f"The mismatch recipe ({len(GRID_MODELS)} models, each pretrained on "
              f"tiny_imagenet_200 under {RECIPE_PRETRAIN_NORMS} norms, then fine-tuned on 3 "
              f"targets x {RECIPE_NORMS} norms x {RECIPE_SEEDS} seeds; {GRID_EPOCHS} epochs each)",
              RECIPE)]
    for title, grid in grids:
        lines += [f"{title}:", ""]
        for label, loop, per_gpu in estimates:
            estimate = grid_hours(rows, loop, per_gpu, grid)
            if estimate is None:
                lines.append(f"- {label}: not every grid model measured "
                             f"({', '.join(GRID_MODELS)})")
                continue
            hours, notes = estimate
            lines.append(f"- {label}: **{hours:.1f} GPU-hours**"
                         + (f" ({'; '.join(notes)})" if notes else ""))
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", help="the device label of the results to use (default: this "
                                     "machine's)")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args()
    label = args.device or device_label(resolve_device("auto"))
    speed = args.results / f"{slug(label)}.jsonl"
    if not speed.is_file():
        raise SystemExit(f"error: no training-speed results for {label} ({speed}); run "
                         "python bench/train_speed.py on that device first")
    queue = args.results / f"queue-{slug(label)}.jsonl"
    text = f"# GPU-hours of the seed grid on {label}\n\n" + summary(
        read_rows(speed), read_rows(queue) if queue.is_file() else [])
    (args.results / f"grid-{slug(label)}.md").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
