"""The study at a glance: every seed's final accuracy per setting, and the verdict on it.

One panel per model x dataset; one column per setting; a dot per seed, the mean ± std over seeds
as a bar, and above it the verdict against the baseline norm with the same weights, read from the
Holm-adjusted p of compare's Tests table. compare writes it as ``verdicts.png``; ``make figure``
copies the study's into ``docs/study.png``, the README's picture.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from normbench.report import png_bytes
from normbench.weightcompare import reference_for

MARKS = {"better": "better", "worse": "worse", "no significant difference": "n.s.",
         "too few seeds": "few seeds", "no test": "no test"}
FLIPPED = {"better": "worse", "worse": "better"}  # a test read from the other setting's side


def short(setting: str) -> str:
    """"norm=minmax weights=scratch" -> "minmax"; other weights kinds are named."""
    parts = dict(p.split("=", 1) for p in setting.split())
    text = parts["norm"]
    if parts["weights"] != "scratch":
        text += f"\n{parts['weights']}" + (f" ({parts['pretrain']})" if "pretrain" in parts else "")
    return text


def verdict_label(tests: pd.DataFrame, model: str, dataset: str, setting: str,
                  reference: str) -> str:
    """The figure's label for ``setting`` against ``reference``: the Tests table holds each pair
    once, in either direction (norm=pretraining is the reference of the baseline norm's row)."""
    if setting == reference:
        return "baseline"
    if tests.empty:
        return "no baseline"
    here = tests[(tests.model == model) & (tests.dataset == dataset)]
    row = here[(here.setting == setting) & (here.baseline == reference)]
    if not row.empty:
        return MARKS[row.iloc[0].verdict]
    row = here[(here.setting == reference) & (here.baseline == setting)]
    if not row.empty:
        verdict = row.iloc[0].verdict
        return MARKS[FLIPPED.get(verdict, verdict)]
    return "no baseline"


def verdict_figure(cells: pd.DataFrame, tests: pd.DataFrame, baseline: str,
                   figure: str = "final_acc") -> bytes:
    """The PNG: ``cells`` as compare selects them, ``tests`` its Tests table, ``baseline`` a norm."""
    panels = sorted({(m, d) for _, m, d, _ in cells.index})
    fig, axes = plt.subplots(1, len(panels), squeeze=False, constrained_layout=True,
                             figsize=(max(6.0, 4.4 * len(panels)), 3.8))
    for ax, (model, dataset) in zip(axes[0], panels):
        group = cells.xs((model, dataset), level=("model", "dataset"))
        settings = list(group.index.unique("setting"))
        for x, setting in enumerate(settings):
            values = group.loc[setting][figure].to_numpy() * 100
            ax.scatter(np.full(len(values), x) + np.linspace(-0.12, 0.12, len(values)), values,
                       s=14, color="tab:blue", alpha=0.7, zorder=3)
            spread = values.std(ddof=1) if len(values) > 1 else 0.0
            ax.errorbar(x + 0.28, values.mean(), yerr=spread, fmt="o", color="k", ms=4, capsize=3)
            label = verdict_label(tests, model, dataset, setting, reference_for(setting, baseline))
            ax.annotate(label, (x, 1.0), xycoords=("data", "axes fraction"), ha="center",
                        va="bottom", fontsize=7,
                        color="tab:red" if label in ("better", "worse") else "k")
        ax.set_xticks(range(len(settings)), [short(s) for s in settings], fontsize=8)
        ax.set(title=f"{model} on {dataset}\n", ylabel="final test accuracy (%)")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("dots: seeds · bar: mean ± std · label: verdict against the baseline norm "
                 "(Holm-adjusted, α = 0.05)", fontsize=8)
    return png_bytes(fig)
