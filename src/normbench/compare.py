"""Compare settings across DVC experiments: TooTouch/Normalization-Test's tables, with error bars
and tests.

Reads HEAD and its experiments with ``dvc exp show --json`` (``--all-commits``: every commit and
experiment of the repository; by default the rest is only counted, in one line), keeps the cells
that are like the workspace's (or ``--like <run>``'s, see runs.py), groups them by setting
(norm, weights), and writes Table 1 (dataset statistics after each setting), Table 2 (each
setting against the baseline norm under the same weights, deltas coloured), Table 3 (every
setting side by side, best in bold), the original study's best-epoch figure, and Figure 1 (test
accuracy per epoch), as markdown and as a static HTML page.

Every verdict rests on the final epoch's test accuracy (no epoch chosen on the test set), on
cells that learned, with the exact permutation tests of significance.py over seeds (pairs where
the seeds are shared), Holm-corrected over the page. A comparison whose seeds are too few for
its test to reach ALPHA, or one seed each (McNemar then says whether the two trained models
differ), gets no verdict and is not in the family.
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
from normbench.pretrain import PRETRAINING, check_norm
from normbench.registry import ConfigError
from normbench.weightdist import ROLES
from normbench.grid import cell_name
from normbench.report import mean_pm_std, png_bytes, stats_table
from normbench.significance import (ALPHA, MAX_SEEDS, POWER, Test, can_reject, compare_seeds,
                                    detectable, fmt_p, holm, mcnemar, seeds_for_verdict)
from normbench.runs import (MissingOutputs, Run, Selection, attach_locks, exp_show,
                            history_left_out, parse_exp_show, read_cell_outputs, read_lock,
                            reference_params, revision_label, select)
from normbench import weightcompare
from normbench.verdict_figure import verdict_figure

VERDICT_FIGURE = "final_acc"  # test accuracy after the last epoch: no selection on the test set


def baseline_of(setting: str, baseline: str) -> str:
    """The setting that ``setting`` is compared with: the baseline norm under the same weights."""
    return weightcompare.reference_for(setting, baseline)


def references(setting: str, baseline: str) -> list[str]:
    """What a setting is tested against: the baseline norm under the same weights (Table 2);
    for the pipeline's own pretraining also the matched pairing (norm: pretraining); for
    pretrained weights of any kind also scratch with the same norm (does pretraining help?)."""
    parts = weightcompare.parse_setting(setting)
    refs = [baseline_of(setting, baseline)]
    if "pretrain" in parts:
        refs.append(baseline_of(setting, PRETRAINING))
    if parts["weights"] != "scratch" and parts["norm"] != PRETRAINING:
        refs.append(f"norm={parts['norm']} weights=scratch")
    return [r for r in dict.fromkeys(refs) if r != setting]


def not_learned(group: pd.DataFrame) -> list[int]:
    """Seeds of a setting x model x dataset whose final accuracy is not above chance."""
    return [int(s) for s, ok in group.learned.items() if ok is not None and not bool(ok)]


def compare_pair(base: pd.DataFrame, other: pd.DataFrame, predictions) -> Test:
    """Test two settings' rows of one model x dataset (index: seed) on the final accuracy.

    A group with a cell that did not learn gets no test: such a cell is no evidence. One seed
    each, the same one: McNemar's test on the test images, which can show that the two trained
    models differ but not that the settings do (no p over seeds, no verdict).
    """
    delta = float(other[VERDICT_FIGURE].mean() - base[VERDICT_FIGURE].mean())
    failed = {name: seeds for name, seeds in (("baseline", not_learned(base)),
                                               ("setting", not_learned(other))) if seeds}
    if failed:
        return Test("none", delta, note="did not learn (final accuracy not above chance): " +
                    "; ".join(f"{n} seed(s) {', '.join(map(str, s))}" for n, s in failed.items())
                    + ": no verdict")
    if len(base) == len(other) == 1 and base.index[0] == other.index[0]:
        seed = int(base.index[0])
        try:
            a, b = predictions(base.rev.iloc[0], other.rev.iloc[0], seed)
        except OutputsMissing as e:  # listed on the page with the command that brings them
            return Test("none", delta, note=f"McNemar's test needs {e}: no test")
        p = mcnemar(a, b)
        shown = "differ" if p < ALPHA else "are not shown to differ"
        return Test("McNemar", delta, note=f"one seed each (seed {seed}): the two trained models "
                    f"{shown} (McNemar's exact test over the {len(a)} test images, p={fmt_p(p)}, "
                    "uncorrected); that is no test of the settings, whose effect only seeds show")
    return compare_seeds(base[VERDICT_FIGURE].to_dict(), other[VERDICT_FIGURE].to_dict())


class OutputsMissing(ConfigError):
    """Outputs a test needs are not in the local DVC cache (they are listed on the page)."""


# pragma: no mutate start (I/O: reads the DVC cache; `make mutation` covers tables and verdicts)
def prediction_loader(repo: Path, cells: pd.DataFrame, missing: MissingOutputs):
    """(model, dataset) -> (rev_a, rev_b, seed) -> per-image correctness of both runs' cells.

    Predictions and test labels are read at each run's own revision from the DVC cache. A file
    that cannot be read there is added to ``missing`` and raises OutputsMissing: that pair gets
    no test, saying why, and the page says how to bring the file.
    """
    import dvc.api  # heavy: imported only when predictions are needed
    from dvc.exceptions import DvcException
    from dvc_data.index.index import DataIndexError

    def load(path: str, rev: str) -> np.ndarray:
        try:
            with dvc.api.open(path, repo=str(repo), rev=rev, mode="rb") as f:
                return np.load(io.BytesIO(f.read()))
        except (OSError, DataIndexError, DvcException) as e:  # DVC's kinds of "not here"
            label = revision_label(cells, rev)
            missing.add(label, path)
            raise OutputsMissing(f"{path} of {label}, not in the local DVC cache") from e
        except Exception as e:  # a damaged file (np.load's kinds): the cause in the message
            raise ConfigError(f"cannot read {path} at revision {rev[:7]} for McNemar's test "
                              f"({type(e).__name__}: {e})") from e

    def pair(model: str, dataset: str):
        def get(rev_a: str, rev_b: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
            cell = cell_name(model, dataset, seed)
            labels = [load(f"data/{dataset}/test_labels.npy", rev) for rev in (rev_a, rev_b)]
            if not np.array_equal(*labels):
                raise ConfigError(f"the test labels of {dataset} differ between revisions "
                                  f"{rev_a[:7]} and {rev_b[:7]}: their cells cannot be paired")
            a, b = (load(f"predictions/{cell}.npy", rev) for rev in (rev_a, rev_b))
            return a == labels[0], b == labels[0]
        return get
    return pair


# pragma: no mutate end


def verdict_word(t: Test, adjusted: float | None) -> str:
    if adjusted is None:
        return "no test" if t.test == "none" else "too few seeds"
    if adjusted >= ALPHA:
        return "no significant difference"
    return "better" if t.delta > 0 else "worse"


def mark(verdict: str, adjusted: float | None) -> str:
    if adjusted is None:
        return f" ({verdict})"
    return " (**)" if adjusted < 0.01 else " (*)" if adjusted < ALPHA else " (n.s.)"


def correct(tests: list[Test]) -> list[float | None]:
    """Holm-adjusted p of every test that can reach ALPHA with its seeds (one family: the
    page), None elsewhere: a test that cannot is left out on its seed counts alone."""
    ps = [t.p for t in tests if can_reject(t)]
    adjusted = iter(holm(ps))
    return [next(adjusted) if can_reject(t) else None for t in tests]


def _group(cells: pd.DataFrame, setting: str, model: str, dataset: str) -> pd.DataFrame | None:
    key = (setting, model, dataset)
    return cells.loc[key] if key in cells.index.droplevel(3) else None


def tables(cells: pd.DataFrame, baseline: str, pair_loader) -> dict[str, pd.DataFrame]:
    """Table 2 (each setting against the baseline norm under the same weights, with deltas and
    Holm-corrected tests), Table 3 (every setting side by side) and the tests behind Table 2."""
    settings = list(cells.index.unique("setting"))
    models, datasets = cells.index.unique("model"), cells.index.unique("dataset")
    pairs, seen = [], set()
    for model in models:
        for dataset in datasets:
            for setting in settings:
                for reference in references(setting, baseline):
                    pair = (model, dataset, frozenset((setting, reference)))
                    if (pair in seen or _group(cells, setting, model, dataset) is None
                            or _group(cells, reference, model, dataset) is None):
                        continue  # two settings are one test, counted once by Holm
                    seen.add(pair)
                    pairs.append((model, dataset, setting, reference))
    found = [(*pair, compare_pair(_group(cells, pair[3], *pair[:2]),
                                  _group(cells, pair[2], *pair[:2]), pair_loader(*pair[:2])))
             for pair in pairs]
    adjusted = correct([t for *_, t in found])
    # What a test could detect is stated at ALPHA / m, m the tests Holm corrects: what it asks
    # of the first of them. The seeds a verdict needs, at ALPHA / (comparisons whose cells
    # learned): the family once every one of them has enough seeds.
    level = ALPHA / max(sum(a is not None for a in adjusted), 1)
    verdict_level = ALPHA / max(sum(t.test != "none" for *_, t in found), 1)
    table2, rows = {}, []
    marks = {}
    for (model, dataset, setting, reference, t), adj in zip(found, adjusted):
        verdict = verdict_word(t, adj)
        # A table may read the test in either direction (Table 2 against the baseline, the
        # mismatch table against the matched pairing): the mark of both, the delta's sign flipped.
        for ours, theirs, delta in ((setting, reference, t.delta), (reference, setting, -t.delta)):
            colour = "green" if delta > 0 else "red"
            text = f" [{colour}:{delta * 100:+.2f}]{mark(verdict, adj)}"
            marks[(model, dataset, ours, theirs)] = text
            if theirs == baseline_of(ours, baseline) and ours != theirs:
                table2[(model, ours, dataset)] = text
        values = [_group(cells, s, model, dataset)[VERDICT_FIGURE].to_dict()
                  for s in (reference, setting)]
        found_with = None if adj is None else detectable(*values, level)
        rows.append({"model": model, "dataset": dataset, "setting": setting,
                     "baseline": reference, "test": t.test,
                     "delta (points)": round(t.delta * 100, 2), "p": t.p,
                     "smallest p": t.smallest_p, "p (Holm)": adj, "verdict": verdict,
                     "detectable (points)": None if found_with is None
                     else round(found_with * 100, 2),
                     "seeds for a verdict": None if t.test == "none" else
                     seeds_for_verdict(verdict_level, paired=t.test != "relabeling"),
                     "note": t.note})
    t2 = []
    for model in models:
        for setting in settings:
            row = {"model": model, "setting": setting}
            for dataset in datasets:
                group = _group(cells, setting, model, dataset)
                if group is not None:
                    row[dataset] = (mean_pm_std(group[VERDICT_FIGURE])
                                    + table2.get((model, setting, dataset), ""))
            t2.append(row)
    return {"table2": pd.DataFrame(t2).set_index(["model", "setting"]),
            "mismatch": mismatch_table(cells, marks),
            "table3": side_by_side(cells, VERDICT_FIGURE),
            "best": side_by_side(cells, "best_acc"), "tests": pd.DataFrame(rows)}


def mismatch_table(cells: pd.DataFrame, marks: dict) -> pd.DataFrame:
    """The pipeline's own pretraining: rows pretraining norm, columns fine-tuning norm.

    Each cell: final accuracy mean ± std over seeds, and its delta and mark against the matched
    pairing of its row (``norm=pretraining``: the pretraining's own norm and statistics).
    """
    rows = []
    for (setting, model, dataset), group in cells.groupby(level=["setting", "model", "dataset"]):
        parts = weightcompare.parse_setting(setting)
        if "pretrain" not in parts:
            continue
        matched = baseline_of(setting, PRETRAINING)
        rows.append({"model": model, "dataset": dataset, "pretrained with": parts["pretrain"],
                     "fine-tuned with": f"fine-tuned: {parts['norm']}",
                     "value": mean_pm_std(group[VERDICT_FIGURE])
                     + marks.get((model, dataset, setting, matched), "")})
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows).pivot(index=["model", "dataset", "pretrained with"],
                                     columns="fine-tuned with", values="value")
    table.columns.name = None
    return table


def side_by_side(cells: pd.DataFrame, figure: str) -> pd.DataFrame:
    """Every setting per model x dataset, mean ± std of ``figure`` over seeds, best in bold."""
    rows = []
    for (model, dataset), group in cells.groupby(level=["model", "dataset"]):
        means = group.groupby(level="setting")[figure].mean()
        for setting, g in group.groupby(level="setting"):
            text = mean_pm_std(g[figure])
            rows.append({"model": model, "dataset": dataset, "setting": setting,
                         "value": f"**{text}**" if means[setting] == means.max() else text})
    table = (pd.DataFrame(rows).pivot(index=["model", "setting"], columns="dataset",
                                      values="value") if rows else pd.DataFrame())
    table.columns.name = None
    return table


def _sentence(r) -> str:
    who = f"{r.setting} against {r.baseline}, {r.model}"
    delta = f"{r['delta (points)']:+.2f} points"
    tested = f"exact {r.test} test, p={fmt_p(r.p)}, Holm-adjusted {fmt_p(r['p (Holm)'])}"
    if r.verdict in ("better", "worse"):
        return f"{who}: {r.verdict} ({delta}, {tested})"
    if r.verdict == "no significant difference":
        found = ("no spread over seeds, so what it could detect is not estimated"
                 if pd.isna(r["detectable (points)"]) else
                 f"this test could detect {r['detectable (points)']:.2f} points with "
                 f"{POWER:.0%} power at the page's corrected level")
        return f"{who}: no significant difference ({delta}, {tested}; {found})"
    if r.verdict == "too few seeds":
        need = (f"more than {MAX_SEEDS}" if pd.isna(r["seeds for a verdict"])
                else f"at least {int(r['seeds for a verdict'])}")
        seen = (r.note if r.test == "McNemar" else f"exact {r.test} test, p={fmt_p(r.p)}, "
                f"but it cannot go below {fmt_p(r['smallest p'])} with these seeds")
        return (f"{who}: no verdict, too few seeds ({delta}; {seen}; a verdict on this page "
                f"needs {need} seeds per setting)")
    return f"{who}: {r.verdict} ({delta}; {r.note})"


def verdicts(tests: pd.DataFrame, baseline: str, settings: list[str]) -> list[str]:
    """Per dataset, each setting's verdict against the baseline norm, in words.

    A baseline norm without runs under some weights is named: nothing is compared with a
    substitute.
    """
    lines = []
    for reference in sorted({baseline_of(s, baseline) for s in settings} - set(settings)):
        kind = reference.split(" ", 1)[1]
        lines.append(f"No runs of the baseline {reference}: no setting with {kind} is compared "
                     f"with norm={baseline} (none against a substitute).")
    if tests.empty:
        return lines or [f"No setting could be compared with norm={baseline}."]
    for dataset, group in tests.groupby("dataset"):
        lines.append(f"**{dataset}**:<br>" + "<br>".join(_sentence(r) for _, r in group.iterrows()))
    return lines


# pragma: no mutate start (I/O and plotting: curves from git, Figure 1)
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


# pragma: no mutate end


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


def group_left_out(left_out: list[str]) -> list[str]:
    """"<run>, <dataset>: <why>" lines, runs with the same dataset and reason on one line."""
    runs: dict[str, list[str]] = {}
    for line in left_out:
        run, _, rest = line.partition(", ")
        runs.setdefault(rest, []).append(run)
    return [f"{', '.join(names)}, {rest}" if len(names) < 4 else
            f"{len(names)} runs ({', '.join(names[:3])}, ...), {rest}"
            for rest, names in runs.items()]


def _format_tests(tests: pd.DataFrame) -> pd.DataFrame:
    """The tests table with p shown to 3 significant digits (the verdicts used them unrounded)
    and seed counts as whole numbers."""
    if tests.empty:
        return tests
    shown = tests.copy()
    for col in ("p", "smallest p", "p (Holm)"):
        shown[col] = shown[col].map(fmt_p)
    if "seeds for a verdict" in shown:
        shown["seeds for a verdict"] = shown["seeds for a verdict"].map(
            lambda n: "" if pd.isna(n) else str(int(n)))
    return shown.map(lambda v: "" if v is None or (isinstance(v, float) and v != v) else v)


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


# pragma: no mutate block (to the end: I/O, writing the page, the command line)
def weight_section(repo: Path, cells: pd.DataFrame, baseline: str,
                   missing: MissingOutputs) -> WeightSection:
    """Read every selected cell's weight snapshots and compare them across settings.

    Cells that did not learn are drawn but carry no verdict; cells whose snapshots are not in
    the local DVC cache are left out and added to ``missing``.
    """
    records = []
    outputs = read_cell_outputs(repo, cells, "weightdist/{cell}/summary.json",
                                "weightdist/{cell}/samples.npz", missing=missing)
    for (setting, model, dataset, seed), (summary, samples) in outputs.items():
        with np.load(io.BytesIO(samples)) as z:
            arrays = {role: z[f"{role}_samples"] for role in ROLES}
        records.append(weightcompare.WeightRecord(setting, model, dataset, seed,
                                                  json.loads(summary), arrays))
    if not records:
        return WeightSection(["No weight snapshots in the local DVC cache."], pd.DataFrame(), {})
    failed = {key[:3] for key, ok in cells.learned.items() if ok is not None and not bool(ok)}
    lines, tests = weightcompare.verdicts(records, baseline, failed)
    return WeightSection(lines, tests, weightcompare.figures(records))


def write(out: Path, baseline: str, runs: list[Run], selection: Selection, result: dict,
          stats: pd.DataFrame | None, fig: bytes | None, weights: WeightSection,
          missing: MissingOutputs | None = None, history: str = "") -> None:
    """compare/README.md, compare/index.html (figures embedded) and the figures as PNG.

    ``history``: the line saying which commits and experiments were not read ("": all were)."""
    out.mkdir(parents=True, exist_ok=True)
    lines = verdicts(result["tests"], baseline, list(selection.cells.index.unique("setting")))
    settings = sorted(selection.cells.index.unique("setting"))
    used = sorted(set(selection.cells.run))
    left = ("\n\n".join(["Left out, because what a cell learns from differs (params, code, "
                          "data or execution) or its dvc.lock is stale:",
                          *group_left_out(selection.left_out)])
            if selection.left_out else "None left out.")
    sections = [
        ("Runs", f"{len(used)} of {len(runs)} commits and experiments compared: "
         f"{', '.join(used)}. Settings: " + "; ".join(settings) + "."
         + (f"\n\n{history[0].upper()}{history[1:]}." if history else ""), None),
        ("Held fixed", "Every compared cell was trained with these params; only the setting "
         "(norm, weights) and the seed vary. " + left, held_fixed(selection)),
    ]
    if missing is not None and missing.paths:
        sections.append(("Outputs not in the local DVC cache",
                         "Their cells are in the tables (metrics are in git); the tests and weight "
                         "figures that need these files went on without them.\n\n"
                         + "\n\n".join([*missing.lines(), missing.FIX]), None))
    if not selection.conflicts.empty:
        sections.append(("Conflicting results",
                         "The same cell, trained with the same params, gave different results "
                         "in two runs: the code or the machine changed between them. The newer "
                         "result is used.", selection.conflicts))
    sections += [
        ("What differs", "\n\n".join(lines), None),
        (f"Table 2: final test accuracy (%), each setting against norm={baseline} with the "
         "same weights",
         "Mean ± std over seeds of the test accuracy after the last epoch (no epoch is chosen on "
         "the test set); the delta to the baseline in green (better) or red (worse); the mark "
         f"reads the Holm-adjusted p: (*) < {ALPHA}, (**) < 0.01, (n.s.) not significant; "
         "(too few seeds): no verdict is possible with these seeds; (no test): a cell did not "
         "learn. The test of every row, in the Tests table, is an exact permutation test of the "
         "difference in mean over seeds: sign-flip when both settings ran the same seeds (a "
         "seed fixes the initial weights and the batch order), relabeling when they ran "
         "different ones.",
         result["table2"]),
        *([] if result["mismatch"].empty else [("Pretraining norm against fine-tuning norm",
         "The pipeline's own pretraining (weights: pretrained): rows the norm the weights were "
         "pretrained with, columns the norm of fine-tuning; final test accuracy (%), mean ± std "
         "over seeds, and the delta and Holm-adjusted mark against the matched pairing of the "
         "row (norm: pretraining, i.e. the pretraining's own norm and statistics).",
         result["mismatch"])]),
        ("Table 3: every setting side by side", "Final test accuracy (%); best mean per model "
         "and dataset in bold.", result["table3"]),
        ("The original study's figure: best test accuracy (%)",
         "The highest test accuracy over the epochs of each cell, as "
         "TooTouch/Normalization-Test reports it. The epoch is chosen on the test set, so "
         "this figure is optimistic (more so for noisy "
         "settings); no verdict uses it.", result["best"]),
        ("Tests", "One family per page: every test that can reach α with its seeds is corrected "
         "with Holm's step-down method, and the verdict reads the adjusted p; a test whose "
         "'smallest p' (the least its seeds allow) is above α is left out of the family, on "
         "its seed counts alone, and gives no verdict. 'detectable' is the smallest difference "
         f"this test finds with {POWER:.0%} power at α / m (α = {ALPHA}, m the tests in the "
         "family: the level Holm's correction asks of its first test), if the cells scatter "
         "normally with the observed spread (a seeded simulation of the test; never from the "
         "observed difference). 'seeds for a verdict': the fewest seeds per setting with which "
         "this test can go below α / m, m the comparisons of this page whose cells learned.",
         _format_tests(result["tests"])),
    ]
    sections.append(("What normalization does to the weights",
                     "Per watched layer: do the settings move the weights differently beyond what "
                     "changing the seed does? The one pre-stated test: the final drift "
                     "||W - W0|| / ||W0|| over seeds against the baseline norm with the same "
                     "weights, and for pretrained weights also against scratch with the same "
                     "norm (the exact permutation test of the accuracies: sign-flip over the "
                     "same seeds, else relabeling), Holm-corrected over the weight tests of this "
                     "page that can reach α with their seeds. The Wasserstein-1 distances and "
                     "their permutation p describe the distributions; no verdict rests on them."
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
    figures = {"verdicts.png": ("The study at a glance: final accuracy and verdicts",
                                verdict_figure(selection.cells, result["tests"], baseline))}
    if fig:
        figures["figure1.png"] = ("Figure 1: test accuracy per epoch", fig)
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
    ap.add_argument("--baseline", default="dataset",
                    help="the norm every setting is compared with, under the same weights")
    ap.add_argument("--like", default=None,
                    help="compare runs whose params match this run's (a name or revision; "
                         "default: the workspace's params)")
    ap.add_argument("--runs", nargs="*", default=None,
                    help="only these runs (names or revisions); default: every one")
    ap.add_argument("--out", default="compare", help="output folder")
    ap.add_argument("--repo", default=".", help="the repository")
    ap.add_argument("--all-commits", action="store_true",
                    help="read every commit and its experiments too, not only HEAD and its "
                         "experiments (`dvc exp show --all-commits`: slower, about 0.25 s a commit)")
    args = ap.parse_args(argv)
    repo = Path(args.repo)
    entries = exp_show(repo, all_commits=args.all_commits)
    not_read = "" if args.all_commits else history_left_out(repo).line(
        "`make compare ALL_COMMITS=1` or `python -m normbench compare --all-commits`")
    runs = parse_exp_show(entries)
    if args.runs is not None:
        runs = [r for r in runs if r.name in args.runs or r.rev in args.runs]
    if not runs:
        raise ConfigError("no commits or experiments with metrics; run `dvc exp run` first"
                          + ("" if args.all_commits else " (or add --all-commits to read the "
                             "history, not only HEAD and its experiments)"))
    attach_locks(repo, runs)
    like, reference, rev, ref_cells = reference_params(entries, args.like)
    selection = select(runs, reference, read_lock(repo, rev), ref_cells)
    if selection.cells.empty:
        raise ConfigError(f"no run has the params of {like}; left out: "
                          + " | ".join(selection.left_out) + ". Use --like <run> to compare "
                          "runs like another one")
    cells = selection.cells
    check_norm(args.baseline)
    missing = MissingOutputs()
    result = tables(cells, args.baseline, prediction_loader(repo, cells, missing))
    stats_dir = repo / "data" / "stats"
    stats = {p.stem: read_json(p, "statistics", "") for p in sorted(stats_dir.glob("*.json"))}
    history = histories(runs, cells, repo)
    write(Path(args.out), args.baseline, runs, selection, result,
          stats_table(stats) if stats else None,
          figure1(history) if not history.empty else None,
          weight_section(repo, cells, args.baseline, missing), missing, not_read)
    if not_read:
        print(not_read)
    print(f"compare -> {args.out}/index.html and {args.out}/README.md "
          f"({len(selection.left_out)} run/dataset pair(s) left out, "
          f"{len(selection.conflicts)} conflicting cell(s))")
    for line in group_left_out(selection.left_out):  # by name: a run on another kind of machine
        print(f"left out: {line}")
    for line in missing.lines():
        print(f"not in the local DVC cache: {line}")
    if missing.paths:
        print(missing.FIX)


if __name__ == "__main__":
    run_main(main)
