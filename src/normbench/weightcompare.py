"""The weight figures and verdicts across settings (issue 12, part 2).

Per model x dataset and watched layer (``weightdist.ROLES``), across settings
("norm=<n> weights=<w>") and their seeds:

- ``figures(records)``: one PNG per model x dataset, ``weights_<model>-<dataset>.png``. One row
  per (weights kind, layer), so scratch and pretrained weights never share a panel; columns:
  density (KDE) of the final weights, one curve per setting, seeds pooled, the initial weights as
  a dashed black reference | violins of the final weights per setting, seeds pooled | std of the
  weights per epoch | drift ||W_t - W_0|| / ||W_0|| (%) per epoch; the last two draw the mean over
  seeds as a line and the min-max over seeds as a band. A norm has one colour in every panel
  and figure; legends name the norm, row titles the weights kind.
- ``verdicts(records, baseline, failed)``: lines in words (markdown) per model x dataset x
  layer, and the tests table behind them.

Each setting is tested against a reference of the same weights kind: the baseline norm with
that setting's weights (``norm=dataset weights=imagenet`` for the imagenet settings when the
baseline is ``dataset``), since scratch and pretrained weights differ trivially. A setting with
pretrained weights is also tested against scratch with the same norm: the drift from the
weights each started from is comparable across kinds, and "pretrained weights barely move,
scratch weights do" (the article "Normalization or Not") is that test.

The verdict rests on one pre-stated test: the final drift of the whole tensor (exact, from
``summary.json``) over seeds, by the exact permutation test of significance.compare_seeds
(sign-flip over the seeds both settings ran, relabeling of the others), Holm-corrected over the
weight tests of the page that can reach ALPHA with their seeds. Settings whose cells did not
learn get no verdict. Shown beside it, as a description only:

- a permutation test on Wasserstein-1 distances between the final weight samples: statistic =
  mean W1 over pairs of cells from different settings minus mean W1 over pairs from the same
  setting; p = share of the relabelings with a statistic >= the observed one (identity
  included), over the relabelings that the design allows (significance.labelings): the two
  cells of a seed that both settings ran share their starting weights and batch order, so they
  may only swap with each other (2^n relabelings for n shared seeds); cells of other seeds are
  dealt anew. The statistic does not change when the two groups swap labels, so the smallest
  possible p is 2 / 2^n for n shared seeds: 0.25 for 3, which can never be below 0.05; the
  table says so.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scipy.stats
from matplotlib.ticker import MaxNLocator

from normbench.significance import (ALPHA, Test, arrange, can_reject, compare_seeds, fmt_p, holm,
                                    labelings, smallest_p)
from normbench.report import ROLE_TITLES, mean_pm_std, png_bytes
from normbench.weightdist import ROLES


@dataclass(frozen=True)
class WeightRecord:
    """One cell's weight history, as ``weightdist.load`` returns it."""

    setting: str  # "norm=<n> weights=<w>"
    model: str
    dataset: str
    seed: int
    summary: dict  # summary.json
    samples: dict[str, np.ndarray]  # role -> epochs x values; row 0 initial, last row final


def parse_setting(setting: str) -> dict[str, str]:
    """"norm=minmax weights=scratch" -> {"norm": "minmax", "weights": "scratch"}."""
    return dict(part.split("=", 1) for part in setting.split())


def label(setting: str, settings: list[str]) -> str:
    """The setting named compactly: "minmax" when all share the weights, else "minmax, scratch"
    (or "minmax, pretrained on instance")."""
    kinds = {s.split(" ", 1)[1] for s in settings}  # everything but the norm
    p = parse_setting(setting)
    if len(kinds) == 1:
        return p["norm"]
    return f"{p['norm']}, {p['weights']}" + (f" on {p['pretrain']}" if "pretrain" in p else "")


def reference_for(setting: str, baseline: str) -> str:
    """The setting a setting is tested against: the baseline norm, with the same weights (and
    the same pretraining norm for the pipeline's own pretraining)."""
    return " ".join(f"{k}={baseline if k == 'norm' else v}"
                    for k, v in parse_setting(setting).items())


def weight_references(setting: str, baseline: str) -> list[str]:
    """What a setting's weights are tested against: the baseline norm with the same weights;
    for pretrained weights also scratch with the same norm, the claim of the article
    "Normalization or Not" (pretrained weights barely move when fine-tuned, scratch weights do)."""
    parts = parse_setting(setting)
    refs = [reference_for(setting, baseline)]
    if parts["weights"] != "scratch" and parts["norm"] != "pretraining":
        refs.append(f"norm={parts['norm']} weights=scratch")
    return [r for r in refs if r != setting]


def layer_name(record: WeightRecord, role: str) -> str:
    return f"{ROLE_TITLES[role]} ({record.summary['layers'][role]['layer']})"


def _by(records: list[WeightRecord], *keys: str) -> dict[tuple, list[WeightRecord]]:
    """Records grouped by attributes, groups and members in sorted order."""
    groups: dict[tuple, list[WeightRecord]] = {}
    for r in sorted(records, key=lambda r: (r.setting, r.seed)):
        groups.setdefault(tuple(getattr(r, k) for k in keys), []).append(r)
    return dict(sorted(groups.items()))


def per_epoch(records: list[WeightRecord], role: str, stat: str) -> pd.DataFrame:
    """epoch x seed table of one summary number (e.g. "std", "drift") of one layer."""
    return pd.DataFrame({r.seed: pd.Series({e["epoch"]: e[role][stat]
                                            for e in r.summary["epochs"]})
                         for r in records})


def final_drift(records: list[WeightRecord], role: str) -> np.ndarray:
    """Drift of the whole tensor after the last epoch, one value per seed (fraction)."""
    return np.array([r.summary["epochs"][-1][role]["drift"] for r in records])


# --- the permutation test -------------------------------------------------------------------

def _statistic(dist: np.ndarray, in_a: np.ndarray) -> float:
    """Mean W1 over cross-group pairs minus mean W1 over same-group pairs (``dist``: n x n)."""
    upper = np.triu(np.ones_like(dist, dtype=bool), k=1)
    same = upper & (in_a[:, None] == in_a[None, :])
    return float(dist[upper & ~same].mean() - dist[same].mean())


def min_permutation_p(a: dict, b: dict) -> float:
    """Smallest p the permutation test can give for two settings' seeds: the identity and its
    label swap, of the relabelings the design allows."""
    return smallest_p(arrange(a, b)[2])


def permutation_p(a: dict[int, np.ndarray], b: dict[int, np.ndarray]) -> float:
    """p of "cells of two settings are further apart than cells of one setting" (W1 statistic).

    ``a``, ``b``: {seed: weight values}. A seed in both is a pair that only swaps as a whole
    (shared starting weights and batch order); the other seeds are dealt anew.
    """
    values, _, design = arrange(a, b)
    n = len(values)
    dist = np.zeros((n, n))  # W1 between every two cells, in weight units
    for i, j in itertools.combinations(range(n), 2):
        dist[i, j] = dist[j, i] = scipy.stats.wasserstein_distance(values[i], values[j])
    stats = np.array([_statistic(dist, in_b) for in_b in labelings(design)])
    # A label swap gives the same statistic summed in another order: compare with a tolerance.
    tol = 1e-9 * max(float(dist.max()), 1e-300)
    return float(np.mean(stats >= stats[0] - tol))


def w1_means(a: list[np.ndarray], b: list[np.ndarray]) -> tuple[float, float]:
    """Mean W1 between the settings (cross pairs) and between seeds (same-setting pairs)."""
    cross = [scipy.stats.wasserstein_distance(x, y) for x in a for y in b]
    within = [scipy.stats.wasserstein_distance(x, y)
              for group in (a, b) for x, y in itertools.combinations(group, 2)]
    return float(np.mean(cross)), float(np.mean(within)) if within else float("nan")


# --- verdicts -------------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerTest:
    setting: str
    reference: str
    n: tuple[int, int]  # seeds of the setting and of its reference
    drift: tuple[float, float]  # mean final drift over seeds (%), setting and reference
    test: Test  # the verdict's test: final drift over seeds (fraction)
    w1: tuple[float, float] | None = None  # mean W1 between settings, between seeds (described)
    perm_p: float | None = None
    perm_min_p: float | None = None  # the smallest p the permutation test could give here


def compare_layer(group: dict[str, list[WeightRecord]], setting: str, reference: str,
                  role: str) -> LayerTest:
    """The drift test (and the W1 description) of one setting against its reference."""
    ours, ref = group[setting], group[reference]
    n = (len(ours), len(ref))
    drift = tuple(float(final_drift(rs, role).mean() * 100) for rs in (ours, ref))
    test = compare_seeds({r.seed: float(v) for r, v in zip(ref, final_drift(ref, role))},
                         {r.seed: float(v) for r, v in zip(ours, final_drift(ours, role))})
    if min(n) < 2:
        return LayerTest(setting, reference, n, drift, test)
    finals = [{r.seed: r.samples[role][-1] for r in rs} for rs in (ours, ref)]
    return LayerTest(setting, reference, n, drift, test,
                     w1_means(*(list(f.values()) for f in finals)), permutation_p(*finals),
                     min_permutation_p(*finals))


def _describe(t: LayerTest, name: str, adjusted: float | None) -> str:
    drift = f"final drift {t.drift[0]:.3g} % vs {t.drift[1]:.3g} %, exact {t.test.test} test"
    if adjusted is None:  # every drift test has a p: none here means it cannot reach ALPHA
        return (f"{name} (too few seeds: {drift}, p={fmt_p(t.test.p)}, cannot go below "
                f"{fmt_p(t.test.smallest_p)} with these seeds)")
    return f"{name} ({drift}, p={fmt_p(t.test.p)}, Holm-adjusted {fmt_p(adjusted)})"


def verdicts(records: list[WeightRecord], baseline: str,
             failed: set[tuple[str, str, str]] = frozenset()) -> tuple[list[str], pd.DataFrame]:
    """Per model x dataset x layer: which settings move the weights differently beyond seed.

    ``baseline`` is a norm; ``failed`` holds the (setting, model, dataset) groups with a cell
    that did not learn: they get no verdict. Returns markdown lines (one per model x dataset x
    layer) and the tests table: model, dataset, layer, setting, reference, seeds, final drift
    (%) mean ± std over seeds, test, p, Holm-adjusted p, and the W1 description.
    """
    if not records:
        return ["No weight snapshots to compare."], pd.DataFrame()
    found = []  # (model, dataset, role, layer, setting, LayerTest | reason)
    rows_plain = []
    for (model, dataset), recs in _by(records, "model", "dataset").items():
        group = {s: rs for (s,), rs in _by(recs, "setting").items()}
        for role in ROLES:
            layer = layer_name(recs[0], role)
            for setting in group:
                row = {"model": model, "dataset": dataset, "layer": layer, "setting": setting,
                       "reference": setting, "seeds": len(group[setting]),
                       "final drift (%)": mean_pm_std(pd.Series(final_drift(group[setting],
                                                                              role)))}
                refs = weight_references(setting, baseline)
                if not refs:
                    rows_plain.append(row)
                for reference in refs:
                    against = ("scratch with the same norm" if reference.endswith(
                        "weights=scratch") and "weights=scratch" not in setting
                        else f"norm={baseline}")
                    no_verdict = [f"no {reference} runs" if reference not in group else "",
                                  *(f"{s} did not learn" for s in (setting, reference)
                                    if (s, model, dataset) in failed)]
                    reason = "; ".join(r for r in no_verdict if r)
                    found.append(({**row, "reference": reference}, against,
                                  reason or compare_layer(group, setting, reference, role)))
    tests = [t.test for _, _, t in found if isinstance(t, LayerTest)]
    adjusted_iter = iter(holm([t.p for t in tests if can_reject(t)]))
    rows, lines, by_layer = [], [], {}
    for row, against, t in found:
        key = (row["model"], row["dataset"], row["layer"], against)
        names = [r["setting"] for r, _, _ in found if (r["model"], r["dataset"]) == key[:2]]
        name = label(row["setting"], names + [row["reference"]])
        if not isinstance(t, LayerTest):
            by_layer.setdefault(key, {}).setdefault("no verdict", []).append(f"{name} ({t})")
            rows.append({**row, "note": t})
            continue
        adj = next(adjusted_iter) if can_reject(t.test) else None
        between, within = t.w1 or (None, None)
        rows.append({**row, "test": t.test.test, "p": fmt_p(t.test.p),
                     "smallest p": fmt_p(t.test.smallest_p), "p (Holm)": fmt_p(adj),
                     "note": t.test.note,
                     "W1 between settings": between, "W1 between seeds": within,
                     "permutation p (described)": t.perm_p,
                     "smallest permutation p": t.perm_min_p})
        kind = ("no verdict" if adj is None else "differ" if adj < ALPHA else "same")
        by_layer.setdefault(key, {}).setdefault(kind, []).append(_describe(t, name, adj))
    for (model, dataset, layer, against), kinds in by_layer.items():
        line = (f"**{model} on {dataset}, {layer}**, against {against}: moved the weights "
                f"differently beyond what changing the seed does: "
                f"{'; '.join(kinds.get('differ', [])) or 'no setting'}. No significant "
                f"difference: {'; '.join(kinds.get('same', [])) or 'no setting'}.")
        if kinds.get("no verdict"):
            line += f" No verdict: {'; '.join(kinds['no verdict'])}."
        lines.append(line)
    table = pd.DataFrame(rows_plain + rows)
    for col in ("W1 between settings", "W1 between seeds", "permutation p (described)",
                "smallest permutation p"):
        if col in table:
            table[col] = table[col].map(lambda v: "" if v is None or pd.isna(v) else f"{v:.3g}")
    return lines, table.fillna("")


# --- figures --------------------------------------------------------------------------------

# pragma: no mutate block (to the end: plotting; `make mutation` covers the verdicts)
def _colours(records: list[WeightRecord]) -> dict[str, tuple]:
    """Setting -> colour, the same in every panel and figure of one call. The colour follows
    the norm, so "minmax" is one colour in the scratch rows and in the imagenet rows (the row
    titles name the weights kind, so the legends name the norm only)."""
    norms = sorted({parse_setting(r.setting)["norm"] for r in records})
    cmap = plt.get_cmap("tab10")
    return {r.setting: cmap(norms.index(parse_setting(r.setting)["norm"]) % 10)
            for r in records}


def _band(ax: plt.Axes, table: pd.DataFrame, colour, name: str, scale: float = 1.0) -> None:
    """Mean over seeds as a line, min-max over seeds as a band (epoch x seed ``table``)."""
    table = table * scale
    ax.plot(table.index, table.mean(axis=1), color=colour, marker="o", ms=3, label=name)
    if table.shape[1] > 1:
        ax.fill_between(table.index, table.min(axis=1), table.max(axis=1), color=colour,
                        alpha=0.2, lw=0)


def _row(axes, recs: list[WeightRecord], role: str, title: str, colours: dict[str, tuple]) -> None:
    """One row of panels: KDE | violins | std per epoch | drift per epoch, for one layer."""
    group = {s: rs for (s,), rs in _by(recs, "setting").items()}
    names = list(group)
    finals = {s: np.concatenate([r.samples[role][-1] for r in rs]) for s, rs in group.items()}
    initial = np.concatenate([r.samples[role][0] for r in recs])
    lo, hi = np.percentile(np.concatenate([initial, *finals.values()]), [0.5, 99.5])
    grid = np.linspace(lo, hi, 200)  # weight values
    kde, violin, std, drift = axes
    kde.plot(grid, scipy.stats.gaussian_kde(initial)(grid), color="k", ls="--", lw=1.2,
             label="initial (epoch 0)")
    for s in names:
        kde.plot(grid, scipy.stats.gaussian_kde(finals[s])(grid), color=colours[s], lw=1.3,
                 label=label(s, names))
    kde.set(title=f"{title}: final weights", xlabel="weight value", ylabel="density")
    parts = violin.violinplot([finals[s] for s in names], showmedians=True)
    for body, s in zip(parts["bodies"], names):
        body.set_facecolor(colours[s])
        body.set_alpha(0.6)
    for key in ("cmedians", "cbars", "cmins", "cmaxes"):  # median and range: black, not blue
        parts[key].set_color("k")
        parts[key].set_linewidth(0.8)
    violin.set_xticks(range(1, len(names) + 1), [label(s, names) for s in names],
                      rotation=20, fontsize=8)
    violin.set(title=f"{title}: final weights", xlabel="setting (line: median)",
               ylabel="weight value")
    for s in names:
        _band(std, per_epoch(group[s], role, "std"), colours[s], label(s, names))
        _band(drift, per_epoch(group[s], role, "drift"), colours[s], label(s, names), 100.0)
    std.set(title=f"{title}: spread", xlabel="epoch", ylabel="std of the weights")
    drift.set(title=f"{title}: drift", xlabel="epoch", ylabel="drift ‖W−W0‖/‖W0‖ (%)")
    for ax in axes:
        ax.grid(alpha=0.3)
    for ax in (kde, std, drift):
        ax.legend(fontsize=7)
    for ax in (std, drift):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def figure(records: list[WeightRecord], colours: dict[str, tuple]) -> plt.Figure:
    """All layers and weights kinds of one model x dataset (``records`` hold only that pair)."""
    kinds: dict[str, list[WeightRecord]] = {}
    for r in sorted(records, key=lambda r: parse_setting(r.setting)["weights"], reverse=True):
        kinds.setdefault(parse_setting(r.setting)["weights"], []).append(r)  # scratch first
    rows = [(kind, role) for kind in kinds for role in ROLES]
    fig, axes = plt.subplots(len(rows), 4, figsize=(19, 3.7 * len(rows)), squeeze=False,
                             constrained_layout=True)
    for ax_row, (kind, role) in zip(axes, rows):
        recs = kinds[kind]
        _row(ax_row, recs, role, f"{kind}, {layer_name(recs[0], role)}", colours)
    seeds = sorted({r.seed for r in records})
    fig.suptitle(f"{records[0].model} on {records[0].dataset}: weights of the watched layers "
                 f"across settings (seeds {', '.join(map(str, seeds))})\n"
                 "Densities and violins: the kept values of the final weights, seeds pooled. "
                 "Std and drift: exact over the whole tensor; line = mean over seeds, "
                 "band = min–max over seeds.")
    return fig


def figures(records: list[WeightRecord]) -> dict[str, bytes]:
    """File name -> PNG, one figure per model x dataset: ``weights_<model>-<dataset>.png``."""
    colours = _colours(records)
    return {f"weights_{model}-{dataset}.png": png_bytes(figure(recs, colours))
            for (model, dataset), recs in _by(records, "model", "dataset").items()}
