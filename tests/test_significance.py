"""Unit tests of normbench.significance.

Every expected value is computed independently of the code under test: by hand, from scipy's
primitives (ttest_rel, ttest_ind, binomtest, the noncentral t), or by a seeded simulation.
"""

import math

import numpy as np
import pytest
import scipy.optimize
import scipy.stats
from hypothesis import assume, given, settings, strategies as st

from normbench.significance import (ALPHA, MAX_SEEDS, POWER, _welch_df, above_chance,
                                    compare_seeds, detectable, holm, mcnemar, seeds_needed,
                                    t_power, welch)


# --- independent references -------------------------------------------------------------------

def ref_power(ncp: float, df: float, alpha: float = ALPHA) -> float:
    """Two-sided power of a t-test at noncentrality ``ncp``, straight from scipy's nct.

    The lower tail P(T < -crit | ncp) is written as P(T > crit | -ncp): scipy's nct.cdf is NaN
    far in that tail, its sf is not."""
    crit = scipy.stats.t.ppf(1 - alpha / 2, df)
    return float(scipy.stats.nct.sf(crit, df, ncp) + scipy.stats.nct.sf(crit, df, -ncp))


def ref_ncp(df: float, power: float = POWER, alpha: float = ALPHA) -> float:
    """The noncentrality with ``power`` (the scipy reference above, solved by brentq)."""
    return scipy.optimize.brentq(lambda k: ref_power(k, df, alpha) - power, 0.0, 100.0,
                                 xtol=1e-12)


def ref_holm(ps: list[float]) -> list[float]:
    """Textbook Holm: adj_(i) = max over j <= i (sorted order) of min(1, (m - j + 1) p_(j))."""
    m = len(ps)
    s = sorted(ps)
    return [max(min(1.0, (m - k) * s[k]) for k in range(m) if s[k] <= p) for p in ps]


def ref_holm_reject(ps: list[float], alpha: float) -> list[bool]:
    """Holm's step-down procedure: walk the sorted p-values, reject while p_(j) <= alpha/(m-j+1)."""
    m = len(ps)
    reject = [False] * m
    for j, i in enumerate(sorted(range(m), key=lambda i: ps[i])):
        if ps[i] > alpha / (m - j):
            break
        reject[i] = True
    return reject


# --- holm -------------------------------------------------------------------------------------

@pytest.mark.parametrize("ps, expected", [
    ([0.01, 0.04, 0.03], [0.03, 0.06, 0.06]),  # the textbook example, order as given
    ([0.04, 0.01, 0.03], [0.06, 0.03, 0.06]),  # the same family in another order
    ([0.01, 0.02, 0.5, 0.011], [0.04, 0.04, 0.5, 0.04]),  # 3 * 0.011 = 0.033 raised to 0.04
    ([0.2, 0.7, 0.9], [0.6, 1.0, 1.0]),  # 2 * 0.7 = 1.4 capped at 1
    ([0.6, 0.7], [1.0, 1.0]),
    ([0.037], [0.037]),  # m = 1: unchanged
    ([0.02, 0.02, 0.02], [0.06, 0.06, 0.06]),  # ties share the first one's value
    ([0.03, 0.01, 0.03], [0.06, 0.03, 0.06]),
    ([0.0, 0.5], [0.0, 0.5]),
    ([], []),
])
def test_holm_known_values(ps, expected):
    assert holm(ps) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_holm_is_monotone_in_the_sorted_order_and_keeps_the_given_order():
    ps = [0.3, 0.001, 0.04, 0.012, 0.2]
    adj = holm(ps)
    # sorted: 0.001*5 = 0.005, 0.012*4 = 0.048, 0.04*3 = 0.12, 0.2*2 = 0.4, 0.3*1 -> 0.4
    assert adj == pytest.approx([0.4, 0.005, 0.12, 0.048, 0.4], rel=1e-12)
    in_sorted_order = [adj[i] for i in np.argsort(ps, kind="stable")]
    assert in_sorted_order == sorted(in_sorted_order)
    assert ps == [0.3, 0.001, 0.04, 0.012, 0.2]  # the input is not touched


p_lists = st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(ps=p_lists)
def test_holm_properties(ps):
    adj = holm(ps)
    assert len(adj) == len(ps)
    assert adj == pytest.approx(ref_holm(ps), rel=1e-12, abs=0)
    for p, a in zip(ps, adj):
        assert p <= a <= 1.0
    for i in range(len(ps)):
        for j in range(len(ps)):
            if ps[i] < ps[j]:
                assert adj[i] <= adj[j]
            elif ps[i] == ps[j]:
                assert adj[i] == adj[j]


@settings(max_examples=300, deadline=None)
@given(ps=st.lists(st.floats(0.0, 0.2, allow_nan=False), min_size=1, max_size=10))
def test_holm_rejects_at_alpha_exactly_as_the_step_down_procedure(ps):
    m = len(ps)
    # Keep away from p = alpha / k itself, where the two float roundings may disagree.
    assume(all(abs(p * k - ALPHA) > 1e-12 for p in ps for k in range(1, m + 1)))
    assert [a <= ALPHA for a in holm(ps)] == ref_holm_reject(ps, ALPHA)


# --- compare_seeds ----------------------------------------------------------------------------

def test_same_seeds_are_paired_and_aligned_by_seed_not_by_key_order():
    reference = {1: 0.70, 2: 0.72, 3: 0.69, 4: 0.75}
    other = {3: 0.74, 1: 0.73, 4: 0.76, 2: 0.78}  # another key order
    seeds = [1, 2, 3, 4]
    o = [other[s] for s in seeds]
    r = [reference[s] for s in seeds]
    t = compare_seeds(reference, other)
    assert t.test == "paired t"
    assert t.p == pytest.approx(scipy.stats.ttest_rel(o, r).pvalue, rel=1e-12)
    # Misaligned pairing (insertion order) would give a different p.
    wrong = scipy.stats.ttest_rel(list(other.values()), list(reference.values())).pvalue
    assert abs(t.p - wrong) > 1e-3
    assert t.delta == pytest.approx(np.mean(o) - np.mean(r), abs=1e-15)
    assert t.note == ""
    # Smallest detectable difference: 80 % power of a paired t on n = 4 differences.
    sd = np.std(np.subtract(o, r), ddof=1)
    assert t.detectable == pytest.approx(ref_ncp(3) * sd / 2, rel=1e-8)
    n = t.seeds_needed
    assert n is not None and 2 < n <= MAX_SEEDS
    assert ref_power(abs(t.delta) / (sd / math.sqrt(n)), n - 1) >= POWER
    assert ref_power(abs(t.delta) / (sd / math.sqrt(n - 1)), n - 2) < POWER


def test_two_paired_seeds_are_enough_for_a_paired_test():
    reference = {7: 0.5, 9: 0.625}
    other = {9: 0.75, 7: 0.5625}
    t = compare_seeds(reference, other)
    assert t.test == "paired t"
    assert t.p == pytest.approx(scipy.stats.ttest_rel([0.5625, 0.75], [0.5, 0.625]).pvalue,
                                rel=1e-12)
    sd = np.std([0.0625, 0.125], ddof=1)
    assert t.detectable == pytest.approx(ref_ncp(1) * sd / math.sqrt(2), rel=1e-8)


def test_different_seeds_use_welch():
    reference = {1: 0.70, 2: 0.74, 3: 0.69}
    other = {4: 0.80, 5: 0.71, 6: 0.79, 7: 0.90, 8: 0.62}
    a, b = list(reference.values()), list(other.values())
    t = compare_seeds(reference, other)
    assert t.test == "Welch"
    assert t.p == pytest.approx(scipy.stats.ttest_ind(b, a, equal_var=False).pvalue, rel=1e-12)
    assert t.delta == pytest.approx(np.mean(b) - np.mean(a), abs=1e-15)
    # Welch-Satterthwaite written out: the unequal n and variances make every term count.
    va, vb = np.var(a, ddof=1), np.var(b, ddof=1)
    se = math.sqrt(va / 3 + vb / 5)
    df = se ** 4 / ((va / 3) ** 2 / 2 + (vb / 5) ** 2 / 4)
    assert t.detectable == pytest.approx(ref_ncp(df) * se, rel=1e-8)
    # Seeds needed: k seeds in each setting.
    n = t.seeds_needed

    def power_at(k):
        se_k = math.sqrt((va + vb) / k)
        df_k = (va / k + vb / k) ** 2 / ((va / k) ** 2 / (k - 1) + (vb / k) ** 2 / (k - 1))
        return ref_power(abs(t.delta) / se_k, df_k)
    assert n is not None and n > 2
    assert power_at(n) >= POWER > power_at(n - 1)


def test_overlapping_but_different_seed_sets_use_welch():
    reference = {1: 0.5, 2: 0.6, 3: 0.8}
    other = {2: 0.7, 3: 0.75, 4: 0.9}
    t = compare_seeds(reference, other)
    assert t.test == "Welch"
    assert t.p == pytest.approx(
        scipy.stats.ttest_ind([0.7, 0.75, 0.9], [0.5, 0.6, 0.8], equal_var=False).pvalue,
        rel=1e-12)


@pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")
def test_welch_with_one_constant_group_is_still_a_test():
    reference = {1: 0.5, 2: 0.5, 3: 0.5}
    other = {4: 0.6, 5: 0.7, 6: 0.65}
    t = compare_seeds(reference, other)
    assert t.test == "Welch" and t.p is not None
    assert t.p == pytest.approx(
        scipy.stats.ttest_ind([0.6, 0.7, 0.65], [0.5] * 3, equal_var=False).pvalue, rel=1e-12)
    # One variance is 0: the Welch df is that of the other group, n - 1 = 2.
    se = math.sqrt(np.var([0.6, 0.7, 0.65], ddof=1) / 3)
    assert t.detectable == pytest.approx(ref_ncp(2) * se, rel=1e-8)


def test_identical_paired_values_give_no_p_and_say_so():
    values = {1: 0.5, 2: 0.625, 3: 0.75}
    t = compare_seeds(values, dict(reversed(list(values.items()))))
    assert t.test == "paired t"
    assert t.p is None and t.delta == 0.0
    assert t.note.startswith("identical")
    assert t.detectable is None and t.seeds_needed is None


def test_constant_nonzero_paired_difference_gives_no_p_and_the_delta():
    reference = {1: 0.5, 2: 0.75, 3: 0.25}  # binary fractions: the differences are exact
    other = {s: v + 0.125 for s, v in reference.items()}
    t = compare_seeds(reference, other)
    assert t.test == "paired t"
    assert t.p is None
    assert t.delta == 0.125
    assert t.note.startswith("no spread") and t.note.endswith("no t-test is defined")
    assert t.detectable is None and t.seeds_needed is None


@pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")
def test_constant_difference_up_to_float_noise_is_a_certain_paired_test():
    # 0.6 - 0.5, 0.7 - 0.6, 0.8 - 0.7 differ in the last bits: a spread of ~1e-16, so a p of ~0
    # and a noncentrality (~1e15) where scipy's noncentral t is NaN: power 1, two seeds suffice.
    reference = {1: 0.5, 2: 0.6, 3: 0.7}
    other = {1: 0.6, 2: 0.7, 3: 0.8}
    t = compare_seeds(reference, other)
    assert t.test == "paired t"
    assert t.p == pytest.approx(scipy.stats.ttest_rel([0.6, 0.7, 0.8], [0.5, 0.6, 0.7]).pvalue)
    assert t.p < 1e-10
    assert t.delta == pytest.approx(0.1, rel=1e-12)
    assert t.seeds_needed == 2


def test_seeds_needed_of_a_paired_test_counts_n_minus_1_degrees_of_freedom():
    # A large effect (mean 0.1025, sd ~0.017 of the differences): few seeds needed, where the
    # degrees of freedom decide: 2 seeds (df 1) are not enough, 3 (df 2) are.
    reference = {1: 0.5, 2: 0.5, 3: 0.5, 4: 0.5}
    other = {1: 0.60, 2: 0.62, 3: 0.58, 4: 0.61}
    d = np.array([0.10, 0.12, 0.08, 0.11])
    sd = np.std(d, ddof=1)
    t = compare_seeds(reference, other)
    assert t.test == "paired t"
    assert ref_power(d.mean() / (sd / math.sqrt(2)), 1) < POWER
    assert ref_power(d.mean() / (sd / math.sqrt(3)), 2) >= POWER
    assert t.seeds_needed == 3


def test_constant_but_different_welch_groups_give_no_p():
    t = compare_seeds({1: 0.5, 2: 0.5}, {3: 0.75, 4: 0.75, 5: 0.75})
    assert t.test == "Welch"
    assert t.p is None
    assert t.delta == 0.25
    assert t.note.startswith("no spread")
    same = compare_seeds({1: 0.5, 2: 0.5}, {3: 0.5, 4: 0.5})
    assert same.test == "Welch" and same.p is None and same.delta == 0.0
    assert same.note.startswith("identical")


@pytest.mark.parametrize("reference, other", [
    ({1: 0.5}, {1: 0.625}),  # one seed each, the same one: McNemar is the caller's
    ({1: 0.5}, {2: 0.625, 3: 0.75}),  # one seed against two
    ({2: 0.625, 3: 0.75}, {1: 0.5}),
])
def test_one_seed_in_a_setting_gives_no_test(reference, other):
    t = compare_seeds(reference, other)
    assert t.test == "none"
    assert t.p is None and t.detectable is None and t.seeds_needed is None
    assert t.delta == pytest.approx(np.mean(list(other.values()))
                                    - np.mean(list(reference.values())), abs=1e-15)
    assert t.note.startswith("one seed") and t.note.endswith("no test")


# --- power: t_power, detectable, seeds_needed ---------------------------------------------------

def test_detectable_difference_has_80_percent_power_by_simulation():
    """A paired t-test on n = 3 differences with sd 0.02 finds the returned difference 80 % of
    the time (20000 simulated experiments, within 0.02)."""
    n, sd = 3, 0.02
    diff = detectable(sd / math.sqrt(n), n - 1)
    rng = np.random.default_rng(20240601)
    d = rng.normal(diff, sd, size=(20000, n))
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(n))
    crit = scipy.stats.t.ppf(1 - ALPHA / 2, n - 1)
    assert np.mean(np.abs(t) > crit) == pytest.approx(0.8, abs=0.02)
    # And a difference half as large has far less power.
    d_half = rng.normal(diff / 2, sd, size=(20000, n))
    t_half = d_half.mean(axis=1) / (d_half.std(axis=1, ddof=1) / math.sqrt(n))
    assert np.mean(np.abs(t_half) > crit) < 0.5


def test_t_power_matches_simulation():
    n, sd, effect = 5, 1.0, 1.2
    rng = np.random.default_rng(7)
    d = rng.normal(effect, sd, size=(20000, n))
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(n))
    simulated = np.mean(np.abs(t) > scipy.stats.t.ppf(1 - ALPHA / 2, n - 1))
    assert t_power(effect, sd / math.sqrt(n), n - 1) == pytest.approx(simulated, abs=0.02)


@pytest.mark.parametrize("df", [1, 2, 4, 30])
def test_t_power_at_no_effect_is_alpha(df):
    assert t_power(0.0, 0.3, df) == pytest.approx(ALPHA, abs=1e-9)
    assert t_power(0.0, 1.0, df, alpha=0.01) == pytest.approx(0.01, abs=1e-9)


def test_t_power_is_two_sided_and_matches_scipy():
    for effect, se, df in [(0.5, 0.2, 3), (1.0, 0.5, 1), (3.0, 1.0, 10), (0.1, 0.4, 2)]:
        assert t_power(effect, se, df) == pytest.approx(ref_power(effect / se, df), rel=1e-10)
        assert t_power(-effect, se, df) == t_power(effect, se, df)
    assert t_power(1.0, 0.5, 4, alpha=0.01) == pytest.approx(ref_power(2.0, 4, 0.01), rel=1e-10)


def test_t_power_where_scipy_gives_nan_for_the_far_lower_tail():
    # scipy's nct.cdf is NaN at ncp 7.7 with df 1, and at ncp 10 with df 5: power is then the
    # upper tail (the lower one is ~1e-16), not 1 and not NaN.
    for ncp, df in [(7.7, 1), (10.0, 5)]:
        crit = scipy.stats.t.ppf(1 - ALPHA / 2, df)
        assert np.isnan(scipy.stats.nct.cdf(-crit, df, ncp))
        assert 0 < ref_power(ncp, df) < 1
        assert t_power(ncp, 1.0, df) == pytest.approx(ref_power(ncp, df), rel=1e-12)
    assert t_power(1e6, 1.0, 3) == 1.0
    # Far enough out the upper tail is NaN too (ncp 1e10): power 1 there, not 0.
    assert np.isnan(scipy.stats.nct.sf(scipy.stats.t.ppf(1 - ALPHA / 2, 3), 3, 1e10))
    assert t_power(1e10, 1.0, 3) == 1.0


def test_t_power_increases_with_effect():
    powers = [t_power(e, 1.0, 4) for e in np.linspace(0, 8, 41)]
    assert all(b > a for a, b in zip(powers, powers[1:]))
    assert powers[0] == pytest.approx(ALPHA) and powers[-1] > 0.99


@pytest.mark.parametrize("df", [1, 2, 5, 40])
def test_detectable_matches_the_noncentral_t(df):
    assert detectable(0.3, df) == pytest.approx(ref_ncp(df) * 0.3, rel=1e-8)
    assert detectable(1.0, df, power=0.9) == pytest.approx(ref_ncp(df, 0.9), rel=1e-8)
    if df > 1:  # df 1 at alpha 0.01 needs ~80 standard errors, beyond the search's MAX_NCP
        assert detectable(1.0, df, alpha=0.01) == pytest.approx(ref_ncp(df, alpha=0.01),
                                                                rel=1e-8)


def test_detectable_at_low_power_below_one_standard_error():
    # 10 % power needs less than one standard error: the search must start at 0.
    k = ref_ncp(100, power=0.1)
    assert k < 1
    assert detectable(2.0, 100, power=0.1) == pytest.approx(2 * k, rel=1e-8)


def _se(k):
    return 1.0 / math.sqrt(k)


def _df(k):
    return k - 1


@pytest.mark.parametrize("delta", [1.0, 0.5, -0.5, 2.5])
def test_seeds_needed_is_the_smallest_n_with_the_power(delta):
    n = seeds_needed(delta, _se, _df)
    assert n is not None and n > 2
    assert ref_power(abs(delta) / _se(n), _df(n)) >= POWER
    assert ref_power(abs(delta) / _se(n - 1), _df(n - 1)) < POWER
    n90 = seeds_needed(delta, _se, _df, power=0.9)
    assert ref_power(abs(delta) / _se(n90), _df(n90)) >= 0.9
    assert ref_power(abs(delta) / _se(n90 - 1), _df(n90 - 1)) < 0.9


def test_seeds_needed_edges():
    assert seeds_needed(0.0, _se, _df) is None
    assert seeds_needed(0, _se, _df) is None
    assert seeds_needed(100.0, _se, _df) == 2  # two seeds are the least a t-test needs
    # "with power" means at least that power: power 1.0 is reached (exactly) at ncp ~1400.
    assert t_power(1000.0, _se(2), _df(2)) == 1.0
    assert seeds_needed(1000.0, _se, _df, power=1.0) == 2
    # A difference needing exactly MAX_SEEDS seeds, and one needing one more: None.
    k = ref_ncp(MAX_SEEDS - 1)
    at_max = k * _se(MAX_SEEDS) * (1 + 1e-9)
    assert seeds_needed(at_max, _se, _df) == MAX_SEEDS
    past_max = ref_ncp(MAX_SEEDS) * _se(MAX_SEEDS + 1) * (1 + 1e-9)
    assert ref_power(past_max / _se(MAX_SEEDS), MAX_SEEDS - 1) < POWER
    assert seeds_needed(past_max, _se, _df) is None
    assert seeds_needed(1e-4, _se, _df) is None


# --- above_chance, mcnemar, welch ---------------------------------------------------------------

@pytest.mark.parametrize("k, n, chance", [(10, 100, 0.1), (30, 100, 0.1), (3, 10, 0.5),
                                          (0, 20, 0.25), (20, 20, 0.25), (130, 1000, 0.1)])
def test_above_chance_is_the_one_sided_binomial_test(k, n, chance):
    expected = scipy.stats.binomtest(k, n, chance, alternative="greater").pvalue
    assert above_chance(k, n, chance) == pytest.approx(expected, rel=1e-12)
    # and by hand: P(X >= k) for X ~ Binomial(n, chance)
    by_hand = sum(math.comb(n, j) * chance ** j * (1 - chance) ** (n - j) for j in range(k, n + 1))
    assert above_chance(k, n, chance) == pytest.approx(min(1.0, by_hand), rel=1e-9)


def test_above_chance_verdicts():
    assert above_chance(10, 100, 0.1) > ALPHA  # exactly chance
    assert above_chance(30, 100, 0.1) < ALPHA
    assert above_chance(5, 100, 0.1) > 0.9  # below chance is not "above" (one-sided)


def _outcomes(both: int, only_a: int, only_b: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([True] * both + [True] * only_a + [False] * only_b + [False] * neither)
    b = np.array([True] * both + [False] * only_a + [True] * only_b + [False] * neither)
    perm = np.random.default_rng(0).permutation(len(a))  # images in no particular order
    return a[perm], b[perm]


def test_mcnemar_exact_binomial_by_hand():
    a, b = _outcomes(both=5, only_a=2, only_b=9, neither=4)
    # Discordant pairs 2 vs 9 of 11 under p = 1/2: two-sided = 2 P(X <= 2).
    expected = 2 * sum(math.comb(11, j) for j in range(3)) / 2 ** 11
    assert expected == 134 / 2048
    assert mcnemar(a, b) == pytest.approx(expected, rel=1e-12)
    assert mcnemar(b, a) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_depends_only_on_the_discordant_pairs():
    a, b = _outcomes(both=50, only_a=1, only_b=7, neither=30)
    expected = 2 * sum(math.comb(8, j) for j in range(2)) / 2 ** 8  # 2 P(X <= 1), n = 8
    assert mcnemar(a, b) == pytest.approx(expected, rel=1e-12)
    a, b = _outcomes(both=3, only_a=4, only_b=4, neither=3)
    assert mcnemar(a, b) == pytest.approx(1.0)
    a, b = _outcomes(both=3, only_a=0, only_b=0, neither=3)  # no discordant pair at all
    assert mcnemar(a, b) == 1.0
    a, b = _outcomes(both=0, only_a=0, only_b=6, neither=0)
    assert mcnemar(a, b) == pytest.approx(2 / 2 ** 6, rel=1e-12)


def test_welch_p_and_welch_df():
    a = np.array([0.70, 0.74, 0.69])
    b = np.array([0.80, 0.71, 0.79, 0.90])
    assert welch(a, b) == pytest.approx(scipy.stats.ttest_ind(a, b, equal_var=False).pvalue,
                                        rel=1e-12)
    # Textbook numbers: variances 4 and 9 over 5 and 10 samples -> 1.7^2 / (0.16 + 0.09) = 11.56
    assert _welch_df(4.0, 9.0, 5, 10) == pytest.approx(11.56, rel=1e-12)
