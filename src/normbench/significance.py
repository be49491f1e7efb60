"""The significance tests of every comparison, and the level they are read at."""

from __future__ import annotations

import numpy as np
import scipy.stats

ALPHA = 0.05  # significance level of every test


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
