"""The statistics of every verdict: which test, its p, the correction, and what it could detect.

One rule for every comparison of two settings over seeds: an exact permutation test of the
difference in means (Fisher-Pitman), two-sided. Its p is the share of the relabelings of the
cells, allowed by the design, whose |difference in means| is at least the observed one:

- seeds that both settings ran are pairs (a seed fixes the initial weights and the batch order):
  a relabeling may swap the two cells of a seed, nothing else (the sign-flip test, 2^n ways);
- seeds that only one setting ran are exchangeable among themselves: a relabeling may deal them
  to the two settings anew, in the same numbers (C(n_a + n_b, n_a) ways).

Why this rule: the values are counts (correct test images over the test set), so a difference
that is the same in every seed is a real outcome, where a t-test is undefined (no spread) or
gives p ~ 0 from float rounding. A permutation test is defined for every spread, gives one
answer for one ordering of the outcomes whatever their scatter, and assumes no normal
distribution. Its price is a floor: with 3 paired seeds p cannot go below 2/8 = 0.25.

- A comparison whose test cannot go below ALPHA with its seeds (``smallest_p``: the design's,
  not the data's) gets no verdict and leaves the Holm family: the choice rests on the seed
  counts alone, so the family-wise error stays at ALPHA. ``seeds_for_verdict`` says how many
  seeds a verdict needs.
- One seed each, the same one: McNemar's exact test on the per-image outcomes can show that the
  two trained models differ; it is no test of the settings and not in the family.
- The comparisons of one page are one family: Holm's step-down correction, and every verdict
  reads the adjusted p, unrounded (``fmt_p`` never rounds it across 0.01 or ALPHA).
- ``detectable``: the smallest true difference the test finds with POWER at the page's level,
  if the cells scatter normally with the observed spread; it comes from a seeded simulation of
  this very test, never from the observed difference.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache
from math import comb
from typing import Callable

import numpy as np
import scipy.stats

ALPHA = 0.05  # significance level of every test (two-sided)
POWER = 0.8  # the power at which the smallest detectable difference is stated
EXACT_LIMIT = 2 ** 16  # relabelings enumerated exactly (16 paired seeds; 9 + 9 unpaired)
RANDOM_LABELINGS = 9_999  # seeded random relabelings beyond that, besides the observed one
# "At least as extreme" up to this share of sum |value - mean|: far above float rounding, far
# below one test image (accuracies are whole images over n: distinct statistics differ by 1/n).
TIE = 1e-9
POWER_DRAWS = 2_000  # simulated studies per power estimate (seeded): power +- 0.01
POWER_LABELINGS = 2 ** 11  # relabelings per simulated study: exact up to this many, else drawn
POWER_CHUNK = 2 ** 22  # simulated statistics held at once (32 MiB of float64)
MAX_SEEDS = 64  # seeds beyond which seeds_for_verdict gives up


@dataclass(frozen=True)
class Test:
    """One comparison of a setting with its reference."""

    test: str  # "sign-flip" | "relabeling" | "sign-flip + relabeling" | "McNemar" | "none"
    delta: float  # mean of the setting minus mean of the reference (the values' units)
    p: float | None = None  # raw two-sided p over seeds; None: no test over seeds (``note``)
    smallest_p: float | None = None  # the least p this test can give with these seeds
    note: str = ""  # what the test could not say, in words


@dataclass(frozen=True)
class Design:
    """Which cells a relabeling may exchange: ``pairs`` seeds ran in both settings; ``only_ref``
    and ``only_other`` seeds in one setting only."""

    pairs: int
    only_ref: int
    only_other: int

    @property
    def name(self) -> str:
        free = self.only_ref + self.only_other
        return ("sign-flip" if not free else "relabeling" if not self.pairs
                else "sign-flip + relabeling")

    @property
    def labelings(self) -> int:
        return 2 ** self.pairs * comb(self.only_ref + self.only_other, self.only_other)


def arrange(reference: dict, other: dict) -> tuple[list, np.ndarray, Design]:
    """The cells of two settings ({seed: value}) in the order ``labelings`` uses: each shared
    seed's reference then other cell, then the reference's own seeds, then the other's.

    Returns the values, the observed labeling (True: a cell of ``other``) and the design.
    """
    shared = sorted(set(reference) & set(other))
    only_ref = sorted(set(reference) - set(other))
    only_other = sorted(set(other) - set(reference))
    values = [v for s in shared for v in (reference[s], other[s])]
    values += [reference[s] for s in only_ref] + [other[s] for s in only_other]
    observed = np.array([False, True] * len(shared) + [False] * len(only_ref)
                        + [True] * len(only_other))
    return values, observed, Design(len(shared), len(only_ref), len(only_other))


def labelings(design: Design, limit: int = EXACT_LIMIT,
              draws: int = RANDOM_LABELINGS) -> np.ndarray:
    """Relabelings x cells (True: in ``other``), the observed labeling first: every one the
    design allows if there are at most ``limit``, else ``draws`` seeded random ones."""
    k, free, n_other = design.pairs, design.only_ref + design.only_other, design.only_other
    if design.labelings <= limit:
        swaps = np.array(list(itertools.product((False, True), repeat=k)), bool).reshape(2 ** k, k)
        # combinations() ends with the observed deal (the last n_other cells): reversed, first.
        chosen = list(itertools.combinations(range(free), n_other))[::-1]
        deals = np.zeros((len(chosen), free), bool)
        for row, cells in enumerate(chosen):
            deals[row, list(cells)] = True
        swaps, deals = np.repeat(swaps, len(deals), 0), np.tile(deals, (len(swaps), 1))
    else:
        rng = np.random.default_rng(0)
        swaps = rng.random((draws, k)) < 0.5
        deals = np.argsort(rng.random((draws, free)), axis=1) < n_other
        swaps = np.vstack([np.zeros((1, k), bool), swaps])
        deals = np.vstack([np.arange(free) >= free - n_other, deals])
    # A swapped pair puts its reference cell in ``other`` and its other cell in the reference.
    pairs = np.stack([swaps, ~swaps], axis=2).reshape(len(swaps), 2 * k)
    return np.hstack([pairs, deals])


def smallest_p(design: Design) -> float:
    """The least p the test can give (all cells distinct): the observed labeling and, where the
    two sides are dealt equal numbers of free cells, its mirror image."""
    if design.labelings > EXACT_LIMIT:
        return 1 / (RANDOM_LABELINGS + 1)
    return (2 if design.only_ref == design.only_other else 1) / design.labelings


def permutation_ps(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """p of each row of ``values`` (studies x cells) under ``labels`` (relabelings x cells, the
    observed one first): the share of relabelings whose |sum of the centred values in
    ``other``| (the difference in means, up to a constant factor) is at least the observed."""
    centred = values - values.mean(axis=1, keepdims=True)
    stats = np.abs(centred @ labels.T.astype(float))
    tol = TIE * np.abs(centred).sum(axis=1, keepdims=True)
    return np.mean(stats >= stats[:, :1] - tol, axis=1)


def permutation_p(reference: dict[int, float], other: dict[int, float]) -> float:
    """The exact permutation p of two settings' {seed: value}."""
    values, _, design = arrange(reference, other)
    return float(permutation_ps(np.array([values], float), labelings(design))[0])


def compare_seeds(reference: dict[int, float], other: dict[int, float]) -> Test:
    """The test of ``other`` against ``reference``, each {seed: value}: the permutation test of
    the design (pairs where seeds are shared), and the least p it could give."""
    _, _, design = arrange(reference, other)
    delta = float(np.mean(list(other.values())) - np.mean(list(reference.values())))
    return Test(design.name, delta, permutation_p(reference, other), smallest_p(design),
                "identical in every seed" if reference == other else "")


def can_reject(t: Test, alpha: float = ALPHA) -> bool:
    """Whether ``t`` could reach ``alpha`` at all with its seeds (it joins the Holm family)."""
    return t.p is not None and t.smallest_p is not None and t.smallest_p <= alpha


def seeds_for_verdict(level: float, paired: bool = True) -> int | None:
    """The fewest seeds per setting whose test can reach ``level``: the same seeds in both
    settings (sign-flip), or different ones (relabeling); None: more than MAX_SEEDS."""
    for n in range(1, MAX_SEEDS + 1):
        design = Design(n, 0, 0) if paired else Design(0, n, n)
        if smallest_p(design) <= level:
            return n
    return None


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


def fmt_p(p: float | None) -> str:
    """p to 3 significant digits, more where rounding would carry it across 0.01 or ALPHA (the
    thresholds of the marks): 0.04996 is shown as 0.04996, never as 0.05 beside "better"."""
    if p is None or p != p:
        return "-"
    for digits in range(3, 17):
        text = f"{p:.{digits}g}"
        if all((float(text) < level) == (p < level) for level in (0.01, ALPHA)):
            return text
    return f"{p:.17g}"  # 17 significant digits give p back exactly


# --- what a test could detect ----------------------------------------------------------------

def spread(reference: dict[int, float], other: dict[int, float]) -> float:
    """The scatter of one cell in the model behind ``detectable`` (the values' units): with every
    seed shared, the sd of the per-seed differences over sqrt(2) (a difference of two cells);
    otherwise the pooled sd within the settings, the cells taken as independent. 0: none seen."""
    values, observed, design = arrange(reference, other)
    if not (design.only_ref or design.only_other):
        d = np.array(values[1::2], float) - np.array(values[0::2], float)
        return float(d.std(ddof=1) / np.sqrt(2)) if len(d) > 1 else 0.0
    groups = [np.array(values, float)[observed == side] for side in (False, True)]
    dof = sum(len(g) - 1 for g in groups)
    return float(np.sqrt(sum(((g - g.mean()) ** 2).sum() for g in groups) / dof)) if dof else 0.0


def simulated_power(design: Design, level: float) -> Callable[[float], float]:
    """Power of the test at ``level`` as a function of the true difference in cell sds, cells
    normal: the share of POWER_DRAWS seeded simulated studies whose p is at most ``level``
    (the same draws at every difference, so the estimate rises with it, step by step).

    Each simulated p comes from at least 20 / ``level`` relabelings (all of them, if fewer), so
    that it can reach the level wherever the test itself can."""
    enough = max(POWER_LABELINGS, math.ceil(20 / level))
    labels = labelings(design, enough, enough - 1)
    noise = np.random.default_rng(0).normal(size=(POWER_DRAWS, labels.shape[1]))
    chunks = math.ceil(POWER_DRAWS * len(labels) / POWER_CHUNK)

    def power(shift: float) -> float:
        ps = [permutation_ps(part + shift * labels[0], labels)
              for part in np.array_split(noise, chunks)]
        return float(np.mean(np.concatenate(ps) <= level * (1 + 1e-12)))
    return power


@lru_cache(maxsize=256)
def detectable_shift(design: Design, level: float, power: float = POWER) -> float | None:
    """The least shift (in cell sds) found with ``power`` at ``level``, by bisection on the
    simulated power; None: never (the test cannot go below ``level`` with this design)."""
    if smallest_p(design) > level:
        return None
    power_of = simulated_power(design, level)
    low, high = 0.0, 1.0
    while power_of(high) < power:
        low, high = high, 2 * high
    for _ in range(12):  # to 2^-12 of the bracket: finer than the simulation's own error
        mid = (low + high) / 2
        low, high = (low, mid) if power_of(mid) >= power else (mid, high)
    return high


def detectable(reference: dict[int, float], other: dict[int, float], level: float,
               power: float = POWER) -> float | None:
    """The smallest true difference (the values' units) that this comparison's test finds with
    ``power`` at ``level``, if the cells scatter normally with the observed ``spread``. None:
    the test cannot reach ``level`` with these seeds, or no spread was seen to scale it by."""
    sd = spread(reference, other)
    shift = detectable_shift(arrange(reference, other)[2], level, power)
    return None if shift is None or sd == 0 else shift * sd
