"""Compare settings across DVC experiments: the seed study's tables, with error bars and tests.

Reads every commit and experiment of the repository with ``dvc exp show --json --all-commits``,
keeps the runs whose other params match the workspace's (or ``--like <run>``'s, see runs.py),
groups their cells by setting (norm, weights), and writes Table 1 (dataset statistics after each
setting), Table 2 (a baseline setting against every other, deltas coloured), Table 3 (every
setting side by side, best in bold) and Figure 1 (test accuracy per epoch, one line per setting
and a band over seeds), as markdown and as a static HTML page.

Significance: Welch's t-test over seeds where both settings have at least two; McNemar's exact
test on the saved test predictions where both have the same single seed.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from normbench.io import read_json, run_main
from normbench.registry import ConfigError
from normbench.weightdist import ROLES
from normbench.grid import cell_name
from normbench.report import mean_pm_std, png_bytes, stats_table
from normbench.significance import ALPHA, mcnemar, welch
from normbench.runs import (Run, Selection, exp_show, parse_exp_show, read_cell_outputs,
                            reference_params, select)
from normbench import weightcompare

@dataclass(frozen=True)
class Comparison:
    delta: float  # mean best_acc of the other setting minus the baseline's (fraction)
    p: float | None  # None: no test possible (one seed each, different seeds, no predictions)
    test: str  # "Welch" | "McNemar" | "none"


def compare_pair(base: pd.DataFrame, other: pd.DataFrame, predictions) -> Comparison:
    """Compare two settings' rows of one model x dataset (index: seed)."""
    delta = float(other.best_acc.mean() - base.best_acc.mean())
    if len(base) >= 2 and len(other) >= 2:
        return Comparison(delta, welch(base.best_acc.to_numpy(), other.best_acc.to_numpy()),
                          "Welch")
    if len(base) == len(other) == 1 and base.index[0] == other.index[0]:
        pair = predictions(base.rev.iloc[0], other.rev.iloc[0], base.index[0])
        if pair is not None:
            return Comparison(delta, mcnemar(*pair), "McNemar")
    return Comparison(delta, None, "none")


def mark(c: Comparison) -> str:
    if c.p is None:
        return ""
    return " (**)" if c.p < 0.01 else " (*)" if c.p < ALPHA else " (n.s.)"


def prediction_loader(repo: Path):
    """(rev_a, rev_b, seed) -> per-image correctness of both, from the DVC-cached predictions."""
    import dvc.api  # heavy: imported only when predictions are needed

    def load(rev: str, cell: str) -> np.ndarray | None:
        try:
            with dvc.api.open(f"predictions/{cell}.npy", repo=str(repo), rev=rev, mode="rb") as f:
                return np.load(io.BytesIO(f.read()))
        except Exception:  # not in the local cache (e.g. a pulled experiment without data)
            return None

    def pair(model: str, dataset: str):
        def get(rev_a: str, rev_b: str, seed: int):
            cell = cell_name(model, dataset, seed)
            a, b = load(rev_a, cell), load(rev_b, cell)
            labels_path = repo / "data" / dataset / "test_labels.npy"
            if a is None or b is None or not labels_path.is_file():
                return None
            labels = np.load(labels_path)
            return a == labels, b == labels
        return get
    return pair


def tables(cells: pd.DataFrame, baseline: str, pair_loader) -> dict[str, pd.DataFrame]:
    """Table 2 (baseline vs others, with deltas and tests) and Table 3 (all settings)."""
    settings = list(cells.index.unique("setting"))
    models, datasets = cells.index.unique("model"), cells.index.unique("dataset")
    table2, table3, tests = [], [], []
    for model in models:
        for setting in settings:
            row2 = {"model": model, "setting": setting}
            for dataset in datasets:
                try:
                    group = cells.loc[(setting, model, dataset)]
                except KeyError:
                    continue
                text = mean_pm_std(group.best_acc)
                if setting != baseline and (baseline, model, dataset) in cells.index.droplevel(3):
                    base = cells.loc[(baseline, model, dataset)]
                    c = compare_pair(base, group, pair_loader(model, dataset))
                    colour = "green" if c.delta > 0 else "red"
                    text += f" [{colour}:{c.delta * 100:+.2f}]{mark(c)}"
                    tests.append({"model": model, "dataset": dataset, "setting": setting,
                                  "delta (points)": round(c.delta * 100, 2), "test": c.test,
                                  "p": None if c.p is None else round(c.p, 4)})
                row2[dataset] = text
            table2.append(row2)
        for dataset in datasets:
            means = {s: cells.loc[(s, model, dataset)].best_acc.mean() for s in settings
                     if (s, model, dataset) in cells.index.droplevel(3)}
            best = max(means.values()) if means else None
            for s in means:
                text = mean_pm_std(cells.loc[(s, model, dataset)].best_acc)
                table3.append({"model": model, "dataset": dataset, "setting": s,
                               "value": f"**{text}**" if means[s] == best else text})
    t3 = (pd.DataFrame(table3).pivot(index=["model", "setting"], columns="dataset",
                                     values="value") if table3 else pd.DataFrame())
    t3.columns.name = None
    return {"table2": pd.DataFrame(table2).set_index(["model", "setting"]), "table3": t3,
            "tests": pd.DataFrame(tests)}


def verdicts(tests: pd.DataFrame, baseline: str) -> list[str]:
    """Per dataset: which settings differ significantly from the baseline, and which do not."""
    lines = []
    if tests.empty:
        return [f"No setting could be compared with {baseline}."]
    for dataset, group in tests.groupby("dataset"):
        tested = group[group.p.notna()]
        sig = tested[tested.p < ALPHA]
        same = tested[tested.p >= ALPHA]
        parts = [f"**{dataset}**:"]
        parts.append("significantly different from " + baseline + ": " + (
            ", ".join(f"{r.setting} on {r.model} ({r['delta (points)']:+.2f} points, "
                      f"{r.test} p={r.p:.3g})" for _, r in sig.iterrows()) or "none") + ";")
        parts.append("not significantly different: " + (
            ", ".join(f"{r.setting} on {r.model} ({r.test} p={r.p:.3g})"
                      for _, r in same.iterrows()) or "none") + ".")
        untested = group[group.p.isna()]
        if len(untested):
            parts.append(f"{len(untested)} comparison(s) had no test (one seed each, different "
                         "seeds, or predictions not in the local cache).")
        lines.append(" ".join(parts))
    return lines


def histories(runs: list[Run], cells: pd.DataFrame, repo: Path) -> pd.DataFrame:
    """The selected cells' curves, from each run's report/history.csv (git-tracked)."""
    import dvc.api

    wanted = {(rev, cell_name(m, d, seed)) for (_, m, d, seed), rev in cells.rev.items()}
    frames = []
    for run in runs:
        if not any(rev == run.rev for rev, _ in wanted):
            continue
        try:
            text = dvc.api.read("report/history.csv", repo=str(repo), rev=run.rev)
        except Exception:  # a run without a report: no curves to draw
            continue
        h = pd.read_csv(io.StringIO(text)).assign(setting=run.setting)
        frames.append(h[[(run.rev, c) in wanted for c in h.cell]])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def figure1(history: pd.DataFrame) -> bytes:
    """Test accuracy per epoch, per model x dataset: a line per setting, a band over seeds."""
    models, datasets = sorted(history.model.unique()), sorted(history.dataset.unique())
    fig, axes = plt.subplots(len(models), len(datasets), squeeze=False, constrained_layout=True,
                             figsize=(4.4 * len(datasets), 3.4 * len(models)))
    for i, model in enumerate(models):
        for j, dataset in enumerate(datasets):
            ax = axes[i][j]
            h = history[(history.model == model) & (history.dataset == dataset)]
            for setting, g in h.groupby("setting"):
                acc = g.pivot_table(index="epoch", columns="seed", values="test_acc") * 100
                line, = ax.plot(acc.index, acc.mean(axis=1), label=setting.replace(" ", ", "))
                if acc.shape[1] > 1:
                    ax.fill_between(acc.index, acc.min(axis=1), acc.max(axis=1),
                                    color=line.get_color(), alpha=0.2)
            ax.set(title=f"{model} on {dataset}", xlabel="epoch", ylabel="test accuracy (%)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    return png_bytes(fig)


def _markup(text: str, html_out: bool) -> str:
    """Colour tags [green:+1.00] and **bold** as the seed's LaTeX colours, or as HTML."""
    if html_out:
        text = html.escape(text).replace("&lt;br&gt;", "<br>")  # Table 1's line breaks
        text = re.sub(r"\[(green|red):([^\]]+)\]", r"<span style='color:\1'>\2</span>", text)
        return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"\[(green|red):([^\]]+)\]", r"$\\textcolor{\1}{\2}$", text)


def _table(df: pd.DataFrame, html_out: bool) -> str:
    if any(df.index.names):
        df = df.reset_index()
    df = df.map(lambda v: _markup(v, html_out) if isinstance(v, str) else v)
    if html_out:
        return df.to_html(escape=False, na_rep="", index=False)
    return df.to_markdown(disable_numparse=True, index=False)


def held_fixed(selection: Selection) -> pd.DataFrame:
    """The params every compared cell shares: one column per dataset (its data.<name> block)."""
    table = pd.DataFrame(selection.fixed)
    table = table.map(lambda v: "" if isinstance(v, float) and v != v else str(v))
    return table.rename_axis("param").reset_index()


@dataclass(frozen=True)
class WeightSection:
    """The weight figures across settings and their verdicts (weightcompare)."""

    lines: list[str]
    tests: pd.DataFrame
    figures: dict[str, bytes]  # file name -> PNG


def weight_section(repo: Path, cells: pd.DataFrame, baseline: str) -> WeightSection:
    """Read every selected cell's weight snapshots and compare them across settings."""
    records = []
    outputs = read_cell_outputs(repo, cells, "weightdist/{cell}/summary.json",
                                "weightdist/{cell}/samples.npz")
    for (setting, model, dataset, seed), (summary, samples) in outputs.items():
        with np.load(io.BytesIO(samples)) as z:
            arrays = {role: z[f"{role}_samples"] for role in ROLES}
        records.append(weightcompare.WeightRecord(setting, model, dataset, seed,
                                                  json.loads(summary), arrays))
    if not records:
        return WeightSection(["No weight snapshots in the local DVC cache."], pd.DataFrame(), {})
    lines, tests = weightcompare.verdicts(records, baseline)
    return WeightSection(lines, tests, weightcompare.figures(records))


def write(out: Path, baseline: str, runs: list[Run], selection: Selection, result: dict,
          stats: pd.DataFrame | None, fig: bytes | None, weights: WeightSection) -> None:
    """compare/README.md, compare/index.html (figures embedded) and the figures as PNG."""
    out.mkdir(parents=True, exist_ok=True)
    lines = verdicts(result["tests"], baseline)
    settings = sorted(selection.cells.index.unique("setting"))
    used = sorted(set(selection.cells.run))
    left = ("\n\n".join(["Left out, because a param that changes what a cell learns differs:",
                          *selection.left_out]) if selection.left_out else "None left out.")
    sections = [
        ("Runs", f"{len(used)} of {len(runs)} commits and experiments compared: "
         f"{', '.join(used)}. Settings: " + "; ".join(settings) + ".", None),
        ("Held fixed", "Every compared cell was trained with these params; only the setting "
         "(norm, weights) and the seed vary. " + left, held_fixed(selection)),
    ]
    if not selection.conflicts.empty:
        sections.append(("Conflicting results",
                         "The same cell, trained with the same params, gave different results "
                         "in two runs: the code or the machine changed between them. The newer "
                         "result is used.", selection.conflicts))
    sections += [
        ("What differs", "\n\n".join(lines), None),
        (f"Table 2: best test accuracy (%), {baseline} against each setting",
         "Mean ± std over seeds; the delta to the baseline in green (better) or red (worse); "
         f"(*) p < {ALPHA}, (**) p < 0.01, (n.s.) not significant: Welch's t-test over seeds "
         "with two or more seeds, else McNemar's exact test on the test predictions.",
         result["table2"]),
        ("Table 3: every setting side by side", "Best setting per model and dataset in bold.",
         result["table3"]),
        ("Tests", "", result["tests"]),
    ]
    sections.append(("What normalization does to the weights",
                     "Per watched layer: do the settings move the weights differently beyond what "
                     "changing the seed does? Welch's t-test over seeds on the final drift "
                     "||W - W0|| / ||W0||, and a permutation test of the Wasserstein-1 distance "
                     "between settings' final weights against the same distance between seeds."
                     "\n\n" + "\n\n".join(weights.lines), weights.tests))
    if stats is not None:
        sections.append(("Table 1: dataset statistics after each setting", "", stats))
    md = ["# normbench: settings compared", ""]
    page = ["<!doctype html><html><head><meta charset='utf-8'><title>normbench compare</title>",
            "<style>body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;"
            "color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}"
            "th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}th{background:#f3f3f3}"
            "img{max-width:100%}</style></head><body><h1>normbench: settings compared</h1>"]
    for heading, text, df in sections:
        md += [f"## {heading}", "", text, ""]
        page += [f"<h2>{html.escape(heading)}</h2>"]
        page += [f"<p>{_markup(p, True)}</p>" for p in text.split("\n\n") if p]
        if df is not None and not df.empty:
            md += [_table(df, False), ""]
            page.append(_table(df, True))
    figures = {"figure1.png": ("Figure 1: test accuracy per epoch", fig)} if fig else {}
    figures.update({name: (f"Weights across settings: {name[8:-4]}", png)
                    for name, png in weights.figures.items()})
    for name, (title, png) in figures.items():
        (out / name).write_bytes(png)
        md += [f"## {title}", "", f"![{title}]({name})", ""]
        data = base64.b64encode(png).decode()
        page += [f"<h2>{html.escape(title)}</h2>",
                 f"<img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>"]
    page.append("</body></html>")
    (out / "README.md").write_text("\n".join(md))
    (out / "index.html").write_text("\n".join(page))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Compare settings across DVC experiments.")
    ap.add_argument("--baseline", default="norm=dataset weights=scratch",
                    help="the setting Table 2 compares against, as 'norm=<n> weights=<w>'")
    ap.add_argument("--like", default=None,
                    help="compare runs whose params match this run's (a name or revision; "
                         "default: the workspace's params)")
    ap.add_argument("--runs", nargs="*", default=None,
                    help="only these runs (names or revisions); default: every one")
    ap.add_argument("--out", default="compare", help="output folder")
    ap.add_argument("--repo", default=".", help="the repository")
    args = ap.parse_args(argv)
    repo = Path(args.repo)
    entries = exp_show(repo)
    runs = parse_exp_show(entries)
    if args.runs is not None:
        runs = [r for r in runs if r.name in args.runs or r.rev in args.runs]
    if not runs:
        raise ConfigError("no commits or experiments with metrics; run `dvc exp run` first")
    like, reference = reference_params(entries, args.like)
    selection = select(runs, reference)
    if selection.cells.empty:
        raise ConfigError(f"no run has the params of {like}; left out: "
                          + " | ".join(selection.left_out) + ". Use --like <run> to compare "
                          "runs like another one")
    cells = selection.cells
    if args.baseline not in cells.index.unique("setting"):
        raise ConfigError(f"baseline {args.baseline!r} has no runs; valid choices: "
                         f"{', '.join(cells.index.unique('setting'))}")
    result = tables(cells, args.baseline, prediction_loader(repo))
    stats_dir = repo / "data" / "stats"
    stats = {p.stem: read_json(p, "statistics", "") for p in sorted(stats_dir.glob("*.json"))}
    history = histories(runs, cells, repo)
    write(Path(args.out), args.baseline, runs, selection, result,
          stats_table(stats) if stats else None,
          figure1(history) if not history.empty else None,
          weight_section(repo, cells, args.baseline))
    print(f"compare -> {args.out}/index.html and {args.out}/README.md "
          f"({len(selection.left_out)} run/dataset pair(s) left out, "
          f"{len(selection.conflicts)} conflicting cell(s))")


if __name__ == "__main__":
    run_main(main)
