"""The report: tables and figures from the declared outputs of the download, stats and train stages.

It is written three ways from the same tables: markdown (renders on GitHub), a static HTML page
with the figures embedded (opens offline, no JavaScript), and the PNG figures themselves.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: the report is built on machines without a screen
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.stats  # noqa: E402

from normbench.grid import Grid, cell_name  # noqa: E402
from normbench.io import read_json  # noqa: E402
from normbench.normalizations import NORMALIZATIONS  # noqa: E402
from normbench.registry import ConfigError  # noqa: E402
from normbench.weightdist import ROLES  # noqa: E402

CURVES = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
          *(f"drift_{r}" for r in ROLES))


def read_metrics(grid: Grid, metrics_dir: Path) -> pd.DataFrame:
    """One row per cell of the grid: model, dataset, seed and its metrics."""
    rows = []
    for m, d, s in grid.cells():
        cell = cell_name(m, d, s)
        metrics = read_json(Path(metrics_dir) / f"{cell}.json", "metrics",
                            f"run `dvc repro train@{cell}`")
        rows.append({"model": m, "dataset": d, "seed": s, **metrics})
    return pd.DataFrame(rows)


def cell_records(metrics: pd.DataFrame) -> dict[str, dict]:
    """{cell: its metrics as the train stage wrote them}, keys a cell lacks left out: the report
    folder's record of every cell (normbench.runs.CELL_RECORDS), which compare reads."""
    records = {}
    for row in metrics.to_dict("records"):
        cell = cell_name(row.pop("model"), row.pop("dataset"), row.pop("seed"))
        records[cell] = {k: v for k, v in row.items() if not (isinstance(v, float) and v != v)}
    return records


# What a reviewer compares between two settings, the DVC metrics (metrics.json), in percent as
# the README and the report speak: per cell, and with two seeds or more the mean and std over
# them per model x dataset. (One seed's mean would repeat its cell's row.) The rest of a cell's
# record (losses, chance, p-values, how it ran) is in cell_records; timings are in timings/.
REVIEW_KEYS = ("final_acc", "val_acc", "drift_first_conv", "drift_deep_conv")
PCT_DIGITS = 2  # 0.01 points: finer than one image of any test split here (1/360 = 0.28 points)


def _pct(value: float) -> float:
    return round(100 * float(value), PCT_DIGITS)


def metrics_summary(metrics: pd.DataFrame) -> dict[str, dict]:
    """metrics.json: {cell: {<key>_pct}, "<model>-<dataset>": {<key>_pct_mean, _std, n_seeds}}."""
    summary = {}
    for row in metrics.to_dict("records"):
        cell = cell_name(row["model"], row["dataset"], row["seed"])
        summary[cell] = {f"{k}_pct": _pct(row[k]) for k in REVIEW_KEYS
                         if k in row and row[k] == row[k]}
    for (model, dataset), group in metrics.groupby(["model", "dataset"], sort=False):
        if len(group) < 2:
            continue
        means: dict[str, float | int] = {"n_seeds": len(group)}
        for key in (k for k in REVIEW_KEYS if k in group and group[k].notna().all()):
            means[f"{key}_pct_mean"] = _pct(group[key].mean())
            means[f"{key}_pct_std"] = _pct(group[key].std(ddof=1))
        summary[f"{model}-{dataset}"] = means
    return summary


def read_history(grid: Grid, live_dir: Path) -> pd.DataFrame:
    """Long table of per-epoch curves (model, dataset, seed, cell, epoch, <curve>...)."""
    frames = []
    for m, d, s in grid.cells():
        cell = cell_name(m, d, s)
        curves = None
        for name in CURVES:
            path = Path(live_dir) / cell / "plots" / "metrics" / f"{name}.tsv"
            if not path.is_file():
                raise ConfigError(f"curve {path} not found; run `dvc repro train@{cell}`")
            curve = pd.read_csv(path, sep="\t").rename(columns={"step": "epoch"})
            curves = curve if curves is None else curves.merge(curve, on="epoch", how="outer")
        frames.append(curves.assign(cell=cell, model=m, dataset=d, seed=s))
    cols = ["cell", "model", "dataset", "seed", "epoch", *CURVES]
    return pd.concat(frames, ignore_index=True)[cols].sort_values(["cell", "epoch"])


def mean_pm_std(values: pd.Series, scale: float = 100.0) -> str:
    """'93.1 ± 0.4' (n seeds > 1) or '93.1' (one seed), in percent by default."""
    mean = values.mean() * scale
    if len(values) < 2:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {values.std(ddof=1) * scale:.2f}"


def accuracy_table(metrics: pd.DataFrame, grid: Grid, key: str = "final_acc") -> pd.DataFrame:
    """Accuracy (%) per model x dataset, mean ± sample std over seeds (``key``: a metric)."""
    table = (metrics.groupby(["model", "dataset"], sort=False)[key]
             .agg(mean_pm_std).unstack("dataset"))
    table = table.reindex(index=grid.models, columns=grid.datasets)
    table.columns.name = None  # one header row: the datasets
    return table


def not_learned_text(metrics: pd.DataFrame) -> str:
    """Which cells' final accuracy is not above chance (one-sided binomial test, p >= 0.05)."""
    failed = metrics[~metrics.learned.astype(bool)] if "learned" in metrics else metrics.iloc[:0]
    if failed.empty:
        return ("None: every cell's final test accuracy is above chance (one-sided binomial "
                "test against always answering the most common test class, p < 0.05).")
    cells = ", ".join(f"{cell_name(r.model, r.dataset, r.seed)} ({r.final_acc * 100:.1f} % "
                      f"against chance {r.chance_acc * 100:.1f} %, p = {r.above_chance_p:.2g})"
                      for r in failed.itertuples())
    return (f"NOT above chance (one-sided binomial test, p >= 0.05): {cells}. These cells are "
            "no evidence for any setting: compare gives no verdict that rests on them.")


def stats_table(stats: dict[str, dict]) -> pd.DataFrame:
    """The seed's Table 1, for every setting: channel mean / std after each normalization."""
    def triple(v: list[float]) -> str:
        return "(" + ", ".join(f"{x:.2f}" for x in v) + ")"

    rows = []
    for dataset, rec in stats.items():
        row = {"dataset": dataset, "train images": rec["n_images"],
               "size": "x".join(map(str, rec["image_size"])),
               "raw mean": triple(rec["mean"]), "raw std": triple(rec["std"])}
        for norm in NORMALIZATIONS:
            after = rec["after"][norm]
            row[f"after {norm}"] = f"mean {triple(after['mean'])}<br>std {triple(after['std'])}"
        rows.append(row)
    return pd.DataFrame(rows).set_index("dataset")


def history_figure(history: pd.DataFrame, grid: Grid, curve: str, ylabel: str) -> plt.Figure:
    """One panel per dataset, one line per model (and seed), epoch on x."""
    fig, axes = plt.subplots(1, len(grid.datasets), figsize=(4.2 * len(grid.datasets), 3.4),
                             squeeze=False, constrained_layout=True)
    colours = plt.get_cmap("tab10")
    for ax, dataset in zip(axes[0], grid.datasets):
        for i, model in enumerate(grid.models):
            for j, seed in enumerate(grid.seeds):
                h = history[(history.model == model) & (history.dataset == dataset)
                            & (history.seed == seed)].dropna(subset=[curve])
                scale = 100.0 if curve.endswith("acc") else 1.0
                ax.plot(h.epoch, h[curve] * scale, marker="o", ms=3, color=colours(i % 10),
                        alpha=0.9 if len(grid.seeds) == 1 else 0.6,
                        label=model if j == 0 else None)
        ax.set_title(dataset)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


ROLE_TITLES = {"first_conv": "first conv", "deep_conv": "deeper conv"}
WEIGHT_FIGURES = "weights"  # report/weights/<cell>.png: the image plots of dvc.yaml


def weight_figure(cell: str, summary: dict, samples: dict) -> plt.Figure:
    """Per watched layer: KDE per epoch, percentile ribbon, violins, std and drift per epoch."""
    fig, axes = plt.subplots(len(ROLES), 4, figsize=(17, 3.6 * len(ROLES)), squeeze=False,
                             constrained_layout=True)
    epochs = np.array([e["epoch"] for e in summary["epochs"]])
    colours = plt.get_cmap("viridis")(np.linspace(0, 1, len(epochs)))
    for row, role in zip(axes, ROLES):
        layer = summary["layers"][role]
        name = f"{ROLE_TITLES[role]} ({layer['layer']})"
        values = samples[role]
        lo, hi = np.percentile(values, [0.5, 99.5])
        grid = np.linspace(lo, hi, 200)
        for k, epoch in enumerate(epochs):
            row[0].plot(grid, scipy.stats.gaussian_kde(values[k])(grid), color=colours[k],
                        lw=1.2, label=f"epoch {epoch}" if k in (0, len(epochs) - 1) else None)
        row[0].set(title=f"{name}: density per epoch", xlabel="weight value", ylabel="density")
        row[0].legend(fontsize=8)
        stat = {k: np.array([e[role][k] for e in summary["epochs"]])
                for k in ("p5", "p25", "p50", "p75", "p95", "std", "drift")}
        row[1].fill_between(epochs, stat["p5"], stat["p95"], alpha=0.25, label="5-95 %")
        row[1].fill_between(epochs, stat["p25"], stat["p75"], alpha=0.45, label="25-75 %")
        row[1].plot(epochs, stat["p50"], color="k", lw=1.2, label="median")
        row[1].set(title=f"{name}: percentiles", xlabel="epoch", ylabel="weight value")
        row[1].legend(fontsize=8)
        shown = np.unique(np.linspace(0, len(epochs) - 1, min(len(epochs), 12)).round().astype(int))
        row[2].violinplot([values[k] for k in shown], positions=epochs[shown], showmedians=True,
                          widths=0.8 * max(1, (epochs[shown][-1] - epochs[shown][0]) / len(shown)))
        row[2].set(title=f"{name}: distribution per epoch", xlabel="epoch", ylabel="weight value")
        row[3].plot(epochs, stat["std"], marker="o", ms=3, color="tab:blue")
        row[3].set(title=f"{name}: spread and drift", xlabel="epoch")
        row[3].set_ylabel("std of the weights", color="tab:blue")
        twin = row[3].twinx()
        twin.plot(epochs, stat["drift"] * 100, marker="s", ms=3, color="tab:red")
        twin.set_ylabel("drift ||W-W0|| / ||W0|| (%)", color="tab:red")
        for ax in row:
            ax.grid(alpha=0.3)
        for ax in (*row[1:], twin):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    kept = ", ".join(f"{summary['layers'][r]['kept']:,} of {summary['layers'][r]['numel']:,} "
                     f"({ROLE_TITLES[r]})" for r in ROLES)
    fig.suptitle(f"{cell}: weights of the watched layers\nDensities and violins use the values "
                 f"kept per epoch, {kept}; percentiles, std and drift use all of them.")
    return fig


def weight_table(summaries: dict[str, dict]) -> pd.DataFrame:
    """Per cell and layer: how far the weights moved and how their spread changed."""
    rows = []
    for cell, summary in summaries.items():
        first, last = summary["epochs"][0], summary["epochs"][-1]
        after_one = summary["epochs"][min(1, len(summary["epochs"]) - 1)]
        for role in ROLES:
            rows.append({
                "cell": cell, "layer": f"{ROLE_TITLES[role]} ({summary['layers'][role]['layer']})",
                "drift after epoch 1 (%)": f"{after_one[role]['drift'] * 100:.2f}",
                f"drift at epoch {last['epoch']} (%)": f"{last[role]['drift'] * 100:.2f}",
                "std, epoch 0 -> last": f"{first[role]['std']:.4f} -> {last[role]['std']:.4f}",
                "kurtosis, epoch 0 -> last": f"{first[role]['kurtosis']:.2f} -> "
                                             f"{last[role]['kurtosis']:.2f}",
            })
    return pd.DataFrame(rows).set_index("cell")


def png_bytes(fig: plt.Figure) -> bytes:
    """The figure as PNG bytes, closed afterwards; no version stamp, so reruns are identical."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


@dataclass(frozen=True)
class Report:
    title: str
    setting: dict[str, str]
    sections: list[tuple[str, str, pd.DataFrame | None, str | None]]  # heading, text, table, png
    figures: dict[str, bytes]  # file name -> PNG


def build_report(params: dict, grid: Grid, metrics: pd.DataFrame, history: pd.DataFrame,
                 stats: dict[str, dict], weights: dict[str, tuple[dict, dict]]) -> Report:
    setting = {"norm": params["norm"], "weights": params["weights"],
               "epochs": str(params["train"]["epochs"]),
               "seeds": ", ".join(map(str, grid.seeds))}
    figures = {
        "accuracy_history.png": png_bytes(history_figure(history, grid, "test_acc",
                                                    "test accuracy (%)")),
        "loss_history.png": png_bytes(history_figure(history, grid, "test_loss",
                                                "test loss (cross-entropy)")),
        "val_accuracy_history.png": png_bytes(history_figure(history, grid, "val_acc",
                                                        "validation accuracy (%)")),
    }
    n_seeds = len(grid.seeds)
    spread = "mean ± sample std over seeds" if n_seeds > 1 else "one seed, so no error bar"
    sections = [
        ("Final test accuracy (%)",
         f"Test accuracy after the last epoch ({spread}): the figure every verdict uses, since "
         "it involves no choice made on the test set.",
         accuracy_table(metrics, grid), None),
        ("Final validation accuracy (%)",
         f"Accuracy after the last epoch on the validation split ({spread}): the share of the "
         "train split that the cell holds out (train.val_fraction, the same images for every "
         "seed and setting). What a choice of hyperparameters or of an epoch reads, so that no "
         "choice is made on the test set.",
         accuracy_table(metrics, grid, "val_acc"), None),
        ("Best test accuracy (%), the original study's figure",
         "Highest test accuracy over the epochs of each cell, as TooTouch/Normalization-Test "
         "reports it. The epoch is chosen on the test set, so this figure is optimistic; no "
         "choice and no "
         "verdict uses it (best_epoch, in the cells' table, is chosen on validation).",
         accuracy_table(metrics, grid, "best_acc"), None),
        ("Cells that did not learn", not_learned_text(metrics), None, None),
        ("Test accuracy per epoch", "Epoch 0 is the model before training.", None,
         "accuracy_history.png"),
        ("Test loss per epoch", "", None, "loss_history.png"),
        ("Validation accuracy per epoch", "", None, "val_accuracy_history.png"),
        ("Dataset statistics (Table 1, every setting)",
         "Per-channel mean and std of the train split in [0, 1] units, and of the inputs the "
         "model sees after each normalization (at test time; in training a per-image setting is "
         "fitted to the image before the crop pads it).",
         stats_table(stats), None),
    ]
    sections.append((
        "How much the weights move",
        f"Relative drift ||W_t - W_0|| / ||W_0|| of the watched layers over the whole tensor, "
        f"with weights: {params['weights']} and norm: {params['norm']}. Compare settings with "
        "`dvc plots diff` (weight drift curves) or `dvc exp show`.",
        weight_table({cell: summary for cell, (summary, _) in weights.items()}), None))
    for cell, (summary, samples) in weights.items():
        # A folder of its own: dvc.yaml declares it as an image plot, so `dvc plots diff` sets
        # each cell's figure of every revision side by side.
        name = f"{WEIGHT_FIGURES}/{cell}.png"
        figures[name] = png_bytes(weight_figure(cell, summary, samples))
        sections.append((f"Weight distributions: {cell}", "", None, name))
    sections.append(("Cells", "Every cell's metrics file.", metrics.round(4), None))
    return Report("normbench report", setting, sections, figures)


def to_markdown(report: Report) -> str:
    lines = [f"# {report.title}", "",
             " · ".join(f"**{k}**: `{v}`" for k, v in report.setting.items()), ""]
    for heading, text, table, png in report.sections:
        lines += [f"## {heading}", ""]
        if text:
            lines += [text, ""]
        if table is not None:
            named = table.index.name is not None
            lines += [table.to_markdown(index=named, disable_numparse=True), ""]
        if png:
            lines += [f"![{heading}]({png})", ""]
    return "\n".join(lines)


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f3f3f3; }
img { max-width: 100%; }
.setting code { background: #f3f3f3; padding: 0.1em 0.3em; }
"""


def to_html(report: Report) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{report.title}</title>",
             f"<style>{_CSS}</style></head><body><h1>{report.title}</h1><p class='setting'>",
             " · ".join(f"<b>{k}</b>: <code>{html.escape(v)}</code>"
                        for k, v in report.setting.items()), "</p>"]
    for heading, text, table, png in report.sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if text:
            parts.append(f"<p>{html.escape(text)}</p>")
        if table is not None:
            # escape=False: the statistics cells hold <br> line breaks, nothing else.
            parts.append(table.to_html(escape=False, index=table.index.name is not None))
        if png:
            data = base64.b64encode(report.figures[png]).decode()
            parts.append(f"<img alt='{html.escape(heading)}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(report: Report, history: pd.DataFrame, out_dir: Path) -> None:
    """Write index.html, README.md, the PNGs (weights/<cell>.png per cell) and history.csv
    (the source of the `dvc plots` curves)."""
    out_dir.mkdir(parents=True)
    for name, png in report.figures.items():
        (out_dir / name).parent.mkdir(exist_ok=True)
        (out_dir / name).write_bytes(png)
    (out_dir / "README.md").write_text(to_markdown(report))
    (out_dir / "index.html").write_text(to_html(report))
    history.to_csv(out_dir / "history.csv", index=False)
