"""The statistics of every verdict: which test, its p, the correction, and what it could detect.

- Two settings that ran the same seeds are paired (a seed fixes the initial weights and the batch
  order): a paired t-test on the per-seed differences. Otherwise Welch's t-test. One seed each,
  the same one: McNemar's exact test on the per-image outcomes. A case no test can decide (no
  spread at all) gets its verdict in words, never p = 0 or NaN.
- The comparisons of one page are one family: Holm's step-down correction, and every verdict
  reads the adjusted p, unrounded.
- A verdict of "no significant difference" also gives the smallest difference the test could
  have found (80 % power at ALPHA, from the observed spread) and the seeds per setting that the
  observed difference would need.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.optimize
import scipy.stats

ALPHA = 0.05  # significance level of every test (two-sided)
POWER = 0.8  # the power at which the smallest detectable difference is stated
MAX_SEEDS = 1000  # seeds beyond which "seeds needed" is reported as more than this


@dataclass(frozen=True)
class Test:
    """One comparison of a setting with its reference, over seeds (or images for McNemar)."""

    test: str  # "paired t" | "Welch" | "McNemar" | "none"
    delta: float  # mean of the setting minus mean of the reference (the figure's units)
    p: float | None = None  # raw two-sided p; None when no test could be computed (see ``note``)
    note: str = ""  # why there is no p, in words ("identical in every seed", ...)
    detectable: float | None = None  # smallest |delta| found with POWER at ALPHA (same units)
    seeds_needed: int | None = None  # seeds per setting for the observed |delta| at POWER


def welch(a: np.ndarray, b: np.ndarray) -> float:
    """p-value of Welch's t-test (unequal variances) of two samples of seeds."""
    return float(scipy.stats.ttest_ind(a, b, equal_var=False).pvalue)


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """p-value of McNemar's exact test on paired per-image outcomes of two classifiers."""
    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(~correct_a & correct_b))
    if only_a + only_b == 0:
        return 1.0
    return float(scipy.stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def above_chance(correct: int, n: int, chance: float) -> float:
    """One-sided binomial p of ``correct`` of ``n`` right, against a rate of ``chance``."""
    return float(scipy.stats.binomtest(correct, n, chance, alternative="greater").pvalue)


def holm(ps: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given (family-wise error <= ALPHA)."""
    m = len(ps)
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda i: ps[i])):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        adjusted[i] = running
    return adjusted


# --- power: the smallest difference a t-test could find ---------------------------------------

def t_power(effect: float, se: float, df: float, alpha: float = ALPHA) -> float:
    """Power of a two-sided t-test for a true difference ``effect`` with standard error ``se``."""
    crit = scipy.stats.t.ppf(1 - alpha / 2, df)
    ncp = abs(effect) / se
    # scipy's noncentral t returns NaN far in its tails: there the far tail is 0 and power is 1.
    upper = float(np.nan_to_num(scipy.stats.nct.sf(crit, df, ncp), nan=1.0))
    lower = float(np.nan_to_num(scipy.stats.nct.cdf(-crit, df, ncp), nan=0.0))
    return min(1.0, upper + lower)


def detectable(se: float, df: float, power: float = POWER, alpha: float = ALPHA) -> float:
    """The difference a t-test with ``se`` and ``df`` finds with ``power`` (same units as se)."""
    high = 8.0  # standard errors; doubled until the power there exceeds the target
    while t_power(high, 1.0, df, alpha) < power:
        high *= 2
    ncp = scipy.optimize.brentq(lambda k: t_power(k, 1.0, df, alpha) - power, 0.0, high)
    return float(ncp * se)


def _welch_df(v_a: float, v_b: float, n_a: int, n_b: int) -> float:
    """Welch-Satterthwaite degrees of freedom from the two sample variances."""
    a, b = v_a / n_a, v_b / n_b
    return (a + b) ** 2 / (a * a / (n_a - 1) + b * b / (n_b - 1))


def seeds_needed(delta: float, se_at: Callable[[int], float], df_at: Callable[[int], float],
                 power: float = POWER, alpha: float = ALPHA) -> int | None:
    """Smallest seed count n >= 2 whose test finds ``delta`` with ``power`` at ``alpha``;
    None: more than MAX_SEEDS."""
    if delta == 0:
        return None
    for n in range(2, MAX_SEEDS + 1):
        if t_power(delta, se_at(n), df_at(n), alpha) >= power:
            return n
    return None


# --- comparing two settings over seeds ----------------------------------------------------------

def _no_spread(delta: float, what: str) -> Test:
    if delta == 0:
        return Test(what, 0.0, note="identical in every seed: no difference")
    return Test(what, delta, note="no spread over seeds (every seed gives the same difference): "
                                  "no t-test is defined")


def compare_seeds(reference: dict[int, float], other: dict[int, float],
                  alpha: float = ALPHA) -> Test:
    """The test of ``other`` against ``reference``, each {seed: value}.

    ``alpha`` is the level at which the detectable difference and the seeds needed are stated:
    a page of m comparisons passes ALPHA / m, the level Holm's correction asks of its first test.

    Paired when both ran the same seeds (two or more), Welch when both have two or more seeds,
    otherwise no test here (one seed each: McNemar, by the caller, when the seed is the same).
    """
    a = np.array(list(reference.values()), dtype=float)
    b = np.array(list(other.values()), dtype=float)
    delta = float(b.mean() - a.mean())
    if set(reference) == set(other) and len(a) >= 2:
        d = np.array([other[s] - reference[s] for s in sorted(reference)], dtype=float)
        n = len(d)
        sd = float(d.std(ddof=1))
        if sd == 0:
            return _no_spread(float(d[0]), "paired t")
        seeds = sorted(reference)
        p = float(scipy.stats.ttest_rel([other[s] for s in seeds],
                                        [reference[s] for s in seeds]).pvalue)
        return Test("paired t", delta, p, detectable=detectable(sd / np.sqrt(n), n - 1,
                                                                alpha=alpha),
                    seeds_needed=seeds_needed(delta, lambda k: sd / np.sqrt(k), lambda k: k - 1,
                                              alpha=alpha))
    if len(a) >= 2 and len(b) >= 2:
        va, vb = float(a.var(ddof=1)), float(b.var(ddof=1))
        if va == 0 and vb == 0:
            return _no_spread(delta, "Welch")
        se = float(np.sqrt(va / len(a) + vb / len(b)))
        return Test("Welch", delta, welch(a, b),
                    detectable=detectable(se, _welch_df(va, vb, len(a), len(b)), alpha=alpha),
                    seeds_needed=seeds_needed(delta, lambda k: np.sqrt((va + vb) / k),
                                              lambda k: _welch_df(va, vb, k, k), alpha=alpha))
    return Test("none", delta, note="one seed in a setting and different seeds in the other: "
                                    "no test")
