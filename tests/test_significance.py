"""Unit tests of normbench.significance.

Every expected value is computed independently of the code under test: by hand, by brute force
in exact rational arithmetic (``ref_p``), from scipy's primitives (permutation_test, binomtest,
the noncentral t), or by a seeded simulation.
"""

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import scipy.optimize
import scipy.stats
from hypothesis import assume, given, settings, strategies as st

from normbench.significance import (ALPHA, EXACT_LIMIT, POWER, RANDOM_LABELINGS, Design,
                                    above_chance, arrange, can_reject, compare_seeds,
                                    detectable, detectable_shift, fmt_p, holm, labelings, mcnemar,
                                    permutation_p, seeds_for_verdict, smallest_p, spread)


@pytest.fixture(autouse=True)
def fresh_power_estimates():
    """What a design can detect is cached per process: each test computes its own (a test run
    after another must not read the other's figures, nor a mutated function's callers a cache
    the unmutated one filled)."""
    detectable_shift.cache_clear()


# --- independent references -------------------------------------------------------------------

def ref_p(reference: dict, other: dict) -> Fraction:
    """The exact permutation p by brute force in rational arithmetic: every relabeling that
    swaps the two cells of a shared seed or deals the unshared cells anew (same numbers), and
    the share whose |difference in means| is at least the observed one."""
    shared = sorted(set(reference) & set(other))
    free = [(v, False) for s, v in reference.items() if s not in other]
    free += [(v, True) for s, v in other.items() if s not in reference]
    n_other = sum(is_other for _, is_other in free)

    def diff(cells):
        a = [v for v, is_other in cells if not is_other]
        b = [v for v, is_other in cells if is_other]
        return abs(Fraction(sum(b)) / len(b) - Fraction(sum(a)) / len(a))
    observed = diff([(reference[s], False) for s in shared] + [(other[s], True) for s in shared]
                    + free)
    count = total = 0
    for swaps in itertools.product((False, True), repeat=len(shared)):
        pairs = [c for s, swap in zip(shared, swaps)
                 for c in ((reference[s], swap), (other[s], not swap))]
        for chosen in itertools.combinations(range(len(free)), n_other):
            cells = pairs + [(v, i in chosen) for i, (v, _) in enumerate(free)]
            total += 1
            count += diff(cells) >= observed
    return Fraction(count, total)


def ref_power(ncp: float, df: float, alpha: float = ALPHA) -> float:
    """Two-sided power of a t-test at noncentrality ``ncp``, straight from scipy's nct."""
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


# --- the permutation test: by hand -------------------------------------------------------------

N_TEST = 360  # digits' test images: accuracies are whole images over 360


def acc(counts: dict[int, int], n: int = N_TEST) -> dict[int, float]:
    return {s: c / n for s, c in counts.items()}


@pytest.mark.parametrize("reference", [{1: 340, 2: 345, 3: 338}, {1: 300, 2: 310, 3: 320}])
def test_a_constant_difference_is_one_outcome_whatever_the_values(reference):
    # 2 more of 360 images right in every seed: the observed labeling and its mirror are the
    # only ones of the 8 sign flips with |sum| = 6, so p = 2/8, for both triples alike (a
    # t-test gave "no spread" for the first and p = 4e-29 for the second, from float rounding).
    other = {s: c + 2 for s, c in reference.items()}
    t = compare_seeds(acc(reference), acc(other))
    assert (t.test, t.p, t.smallest_p, t.note) == ("sign-flip", 0.25, 0.25, "")
    assert t.delta == pytest.approx(2 / 360, rel=1e-12)
    assert not can_reject(t)  # 3 paired seeds can never reach 0.05


def test_constant_groups_of_different_seeds_are_one_outcome_too():
    # 5 seeds at 299/360 against 5 other seeds at 300/360 (Welch gave p = 9.6e-55): of the
    # C(10, 5) = 252 deals only the observed one and its mirror separate the values fully.
    t = compare_seeds(acc(dict.fromkeys(range(1, 6), 299)), acc(dict.fromkeys(range(6, 11), 300)))
    assert (t.test, t.p, t.smallest_p) == ("relabeling", 2 / 252, 2 / 252)
    assert can_reject(t)


def test_float_noise_in_a_constant_difference_changes_nothing():
    # 0.6 - 0.5, 0.7 - 0.6 and 0.8 - 0.7 differ in their last bits (a t-test read p ~ 0 there).
    t = compare_seeds({1: 0.5, 2: 0.6, 3: 0.7}, {1: 0.6, 2: 0.7, 3: 0.8})
    assert (t.test, t.p) == ("sign-flip", 0.25)
    assert t.delta == pytest.approx(0.1, rel=1e-12)


@pytest.mark.parametrize("d, p", [
    ((1, 2, 3), 2 / 8),  # |±1 ±2 ±3| >= 6 only for +++ and ---
    ((1, -1, 2), 6 / 8),  # sums 4 2 2 0 0 -2 -2 -4 (in some order): |sum| >= 2 six times
    ((0, 0, 3), 8 / 8),  # zero differences tie with their flips: all 8 reach |3|
    ((2, 2, 2, -1), 4 / 16),  # |sum| >= 5: 2+2+2 with -1 or +1, and the mirrors
])
def test_sign_flip_by_hand(d, p):
    reference = {1: 100, 2: 200, 3: 150, 4: 120}
    reference = {s: reference[s] for s in range(1, len(d) + 1)}
    other = {s: reference[s] + di for s, di in zip(reference, d)}
    assert compare_seeds(acc(reference), acc(other)).p == p
    assert ref_p(reference, other) == Fraction(p)


def test_relabeling_and_the_mixed_design_by_hand():
    # Seeds 1, 2 at 0 and 1 image against seeds 3, 4 at 2 and 3: |difference in means| 2 for
    # the observed deal and its mirror, 1 for two deals, 0 for two: p = 2/6.
    t = compare_seeds(acc({1: 0, 2: 1}), acc({3: 2, 4: 3}))
    assert (t.test, t.p, t.smallest_p) == ("relabeling", 2 / 6, 2 / 6)
    # Seed 2 in both (a pair that only swaps as a whole), seed 1 only in the reference, seed 3
    # only in the other: 2 x C(2, 1) = 4 relabelings. Reference {1: 0, 2: 10}, other {2: 12,
    # 3: 5}: observed |8.5 - 5| = 3.5; pair swapped: |7.5 - 6| = 1.5; free cells dealt the other
    # way: |6 - 7.5| = 1.5 and, both changed, |5 - 8.5| = 3.5. So p = 2/4.
    t = compare_seeds(acc({1: 0, 2: 10}), acc({2: 12, 3: 5}))
    assert (t.test, t.p, t.smallest_p) == ("sign-flip + relabeling", 0.5, 0.5)
    assert ref_p({1: 0, 2: 10}, {2: 12, 3: 5}) == Fraction(1, 2)
    # One seed against two others: 3 deals, no mirror (1 against 2): p at least 1/3.
    t = compare_seeds(acc({1: 0}), acc({2: 5, 3: 6}))
    assert (t.test, t.p, t.smallest_p) == ("relabeling", 1 / 3, 1 / 3)


def test_a_test_joins_the_family_when_its_floor_reaches_alpha_exactly():
    # 1 seed against 19 others: 20 deals, no mirror: the floor is 1/20 = 0.05 itself.
    assert smallest_p(Design(0, 1, 19)) == 0.05
    assert can_reject(compare_seeds({0: 0.9}, {s: 0.5 + s / 100 for s in range(1, 20)}))
    assert not can_reject(compare_seeds({0: 0.9}, {s: 0.5 for s in range(1, 19)}))  # 1/19


def test_identical_settings_give_p_one_and_say_so():
    values = {1: 0.5, 2: 0.625, 3: 0.75}
    t = compare_seeds(values, dict(reversed(list(values.items()))))
    assert (t.test, t.p, t.delta, t.note) == ("sign-flip", 1.0, 0.0, "identical in every seed")
    assert compare_seeds(values, {**values, 3: 0.7}).note == ""


def test_the_order_of_the_keys_does_not_pair_the_wrong_cells():
    reference = {1: 10, 2: 20, 3: 30, 4: 40, 5: 50}
    other = {5: 52, 3: 33, 1: 11, 4: 41, 2: 24}  # by seed: +1 +4 +3 +1 +2, all positive
    assert compare_seeds(acc(reference), acc(other)).p == 2 / 32
    misaligned = dict(zip(reference, other.values()))  # paired by insertion order instead
    assert compare_seeds(acc(reference), acc(misaligned)).p != 2 / 32


@pytest.mark.parametrize("design, least", [
    (Design(3, 0, 0), 2 / 8), (Design(5, 0, 0), 2 / 32), (Design(6, 0, 0), 2 / 64),
    (Design(0, 3, 3), 2 / 20), (Design(0, 5, 5), 2 / 252), (Design(0, 2, 3), 1 / 10),
    (Design(1, 0, 0), 1.0), (Design(0, 1, 1), 1.0),
    (Design(2, 1, 0), 1 / 4),  # no mirror: 1 free cell against 0
    (Design(17, 0, 0), 1 / 10_000),  # 2^17 > EXACT_LIMIT: the observed one and 9999 draws
])
def test_smallest_p_is_reached_by_the_most_extreme_outcome(design, least):
    assert smallest_p(design) == pytest.approx(least, rel=1e-12)
    if design.labelings <= EXACT_LIMIT:  # all cells distinct, the other side shifted far up
        reference = {s: s for s in range(design.pairs + design.only_ref)}
        other = {s: 10_000 + s for s in range(design.pairs)}
        other |= {100 + s: 10_000 + s for s in range(design.only_other)}
        assert permutation_p(reference, other) == pytest.approx(least, rel=1e-12)


def test_beyond_the_exact_limit_the_draws_are_seeded_and_count_the_observed_one():
    reference = {s: float(s % 5) for s in range(17)}  # 2^17 sign flips: drawn
    other = {s: v + 1 + (s % 3) for s, v in reference.items()}  # every difference positive
    p = permutation_p(reference, other)
    assert p == permutation_p(reference, other)  # seeded
    assert p in (1 / (RANDOM_LABELINGS + 1), 2 / (RANDOM_LABELINGS + 1))  # the mirror, if drawn
    labels = labelings(Design(17, 0, 0))
    assert labels.shape == (RANDOM_LABELINGS + 1, 34)
    assert (labels.sum(axis=1) == 17).all()  # every relabeling keeps one cell of a pair each side
    assert (labels[0] == np.tile([False, True], 17)).all()  # the observed labeling first


def test_labelings_keep_pairs_together_and_the_numbers_of_each_side():
    design = Design(2, 1, 2)
    labels = labelings(design)
    assert labels.shape == (design.labelings, 7) == (4 * 3, 7)
    assert len({tuple(row) for row in labels}) == len(labels)  # each relabeling once
    assert (labels[:, 0] != labels[:, 1]).all() and (labels[:, 2] != labels[:, 3]).all()
    assert (labels[:, 4:].sum(axis=1) == 2).all()  # the free cells: two to the other side
    assert labels.dtype == bool
    values, observed, got = arrange({1: 0.1, 2: 0.2, 9: 0.9}, {2: 0.3, 1: 0.4, 5: 0.5, 6: 0.6})
    assert got == design and values == [0.1, 0.4, 0.2, 0.3, 0.9, 0.5, 0.6]
    assert (observed == labels[0]).all()


def test_at_the_exact_limit_every_relabeling_is_enumerated():
    design = Design(16, 0, 0)  # 2^16 = EXACT_LIMIT sign flips: all of them, none drawn
    assert design.labelings == EXACT_LIMIT and smallest_p(design) == 2 / 2 ** 16
    labels = labelings(design)
    assert len(labels) == EXACT_LIMIT and len(np.unique(labels[:, 1::2], axis=0)) == EXACT_LIMIT


def test_seeds_for_a_verdict():
    assert seeds_for_verdict(0.05) == 6  # 2/2^5 = 0.0625 > 0.05 >= 2/2^6
    assert seeds_for_verdict(2 / 2 ** 5) == 5  # a level the floor reaches exactly: enough
    assert seeds_for_verdict(1.0) == 1
    assert seeds_for_verdict(0.05 / 8) == 9  # 2/2^8 = 0.0078 > 0.00625 >= 2/2^9 = 0.0039
    assert seeds_for_verdict(0.05, paired=False) == 4  # 2/C(6, 3) = 0.1 > 0.05 >= 2/70
    assert seeds_for_verdict(0.05 / 8, paired=False) == 6  # 2/252 > 0.00625 >= 2/924
    assert seeds_for_verdict(1e-300) is None


# --- the permutation test: properties ----------------------------------------------------------

@st.composite
def two_settings(draw, max_pairs=5, max_free=3):
    """Two settings' correct-image counts, seeds shared or not, and the test set size."""
    n = draw(st.integers(10, 100_000))
    pairs = draw(st.integers(0, max_pairs))
    only_ref = draw(st.integers(0 if pairs else 1, max_free))
    only_other = draw(st.integers(0 if pairs else 1, max_free))
    count = st.integers(0, n)
    reference = {s: draw(count) for s in [*range(pairs), *range(100, 100 + only_ref)]}
    other = {s: draw(count) for s in [*range(pairs), *range(200, 200 + only_other)]}
    return reference, other, n


@settings(max_examples=200, deadline=None)
@given(case=two_settings())
def test_p_on_accuracies_is_the_exact_p_of_the_counts(case):
    reference, other, n = case
    t = compare_seeds(acc(reference, n), acc(other, n))
    assert t.p == float(ref_p(reference, other))  # exactly: no float tie broken by rounding
    assert 0 < t.smallest_p <= t.p <= 1
    assert (t.p * arrange(reference, other)[2].labelings) % 1 == 0  # a share of relabelings


@settings(max_examples=150, deadline=None)
@given(case=two_settings(), scale=st.integers(2, 50))
def test_p_is_symmetric_and_does_not_depend_on_the_scale_or_a_common_shift(case, scale):
    reference, other, n = case
    t = compare_seeds(acc(reference, n), acc(other, n))
    back = compare_seeds(acc(other, n), acc(reference, n))
    assert back.p == t.p and back.delta == pytest.approx(-t.delta, abs=1e-12)
    # The same outcome in other units: p is the same, whatever the spread in points.
    bigger = compare_seeds(acc({s: c * scale for s, c in reference.items()}, n * scale),
                           acc({s: c * scale for s, c in other.items()}, n * scale))
    assert bigger.p == t.p
    # Values of any size (weight drifts, not accuracies): ties are judged relative to them.
    for factor in (1e-12, 1e6):
        assert permutation_p({s: c * factor for s, c in reference.items()},
                             {s: c * factor for s, c in other.items()}) == t.p


@settings(max_examples=150, deadline=None)
@given(n_seeds=st.integers(2, 12), base=st.lists(st.integers(0, 300), min_size=12, max_size=12),
       shift=st.integers(-40, 40).filter(bool))
def test_a_constant_shift_always_gives_the_least_p_of_its_seeds(n_seeds, base, shift):
    reference = {s: base[s] + 50 for s in range(n_seeds)}
    other = {s: c + shift for s, c in reference.items()}
    t = compare_seeds(acc(reference), acc(other))
    assert t.p == smallest_p(Design(n_seeds, 0, 0)) == 2 / 2 ** n_seeds  # finite, never 0


def test_the_test_holds_its_level_under_no_effect():
    """Simulated: normal cells, no effect; the share of p <= level is the level itself at the
    levels the test can give (6 paired seeds: multiples of 2/64; 4 + 4 seeds: of 2/70)."""
    rng = np.random.default_rng(314)
    for design, level in ((Design(6, 0, 0), 4 / 64), (Design(0, 4, 4), 4 / 70)):
        ps = []
        for _ in range(3000):
            seed_effect = rng.normal(0, 1, design.pairs)  # shared by the two cells of a seed
            reference = {s: seed_effect[s] + rng.normal() for s in range(design.pairs)}
            other = {s: seed_effect[s] + rng.normal() for s in range(design.pairs)}
            reference |= {100 + s: rng.normal() for s in range(design.only_ref)}
            other |= {200 + s: rng.normal() for s in range(design.only_other)}
            ps.append(permutation_p(reference, other))
        rate = np.mean(np.array(ps) <= level + 1e-12)
        assert abs(rate - level) < 3.5 * math.sqrt(level * (1 - level) / 3000), (design, rate)


@pytest.mark.parametrize("reference, other", [
    ({s: v for s, v in enumerate([0.61, 0.72, 0.55, 0.68, 0.70])},
     {s: v for s, v in enumerate([0.66, 0.75, 0.52, 0.74, 0.77])}),
    ({s: v for s, v in enumerate([3.0, 1.0, 4.0, 1.0, 5.0, 9.0])},
     {s: v for s, v in enumerate([2.0, 6.0, 5.0, 3.0, 5.0, 8.0])}),
])
def test_sign_flip_p_matches_scipy_permutation_test(reference, other):
    a, b = list(reference.values()), list(other.values())
    expected = scipy.stats.permutation_test(
        (b, a), lambda x, y: np.mean(x - y), permutation_type="samples",
        n_resamples=np.inf).pvalue
    assert permutation_p(reference, other) == pytest.approx(expected, rel=1e-12)


# --- what a test could detect --------------------------------------------------------------------

def test_spread_of_paired_and_unpaired_cells():
    reference, other = {1: 0.5, 2: 0.6, 3: 0.8}, {1: 0.55, 2: 0.7, 3: 0.8}
    d = np.array([0.05, 0.1, 0.0])
    assert spread(reference, other) == pytest.approx(d.std(ddof=1) / math.sqrt(2), rel=1e-12)
    a, b = np.array([0.5, 0.6, 0.8]), np.array([0.55, 0.7])
    pooled = math.sqrt((((a - a.mean()) ** 2).sum() + ((b - b.mean()) ** 2).sum()) / 3)
    assert spread(reference, {4: 0.55, 5: 0.7}) == pytest.approx(pooled, rel=1e-12)
    assert spread({1: 0.5}, {2: 0.6}) == 0.0
    assert spread({1: 0.5}, {1: 0.6}) == 0.0  # one shared seed: no spread of differences
    assert spread({1: 0.5, 2: 0.6}, {1: 0.6, 2: 0.8}) == pytest.approx(0.1 / 2, rel=1e-12)
    # Some seeds shared, some not: the pooled spread, the cells taken as independent.
    assert spread(reference, {1: 0.55, 2: 0.7}) == pytest.approx(pooled, rel=1e-12)
    assert spread(acc({1: 340, 2: 300}), acc({1: 342, 2: 302})) == pytest.approx(0, abs=1e-15)


def test_detectable_difference_has_the_power_in_an_independent_simulation():
    """8 paired seeds at 0.05: the returned difference is found 80 % of the time by the test
    (scipy's permutation test, 1500 studies drawn with another seed), half of it far less."""
    reference = {s: 0.9 + 0.01 * (s % 3) for s in range(8)}
    other = {s: v + 0.02 * (-1) ** s for s, v in reference.items()}
    found = detectable(reference, other, ALPHA)
    sd_d = spread(reference, other) * math.sqrt(2)  # of the per-seed differences
    assert found == pytest.approx(detectable_shift(Design(8, 0, 0), ALPHA) * sd_d / math.sqrt(2))
    rng = np.random.default_rng(2718)

    def power(effect):
        d = rng.normal(effect, sd_d, size=(1500, 8))
        ps = scipy.stats.permutation_test((d,), np.mean, permutation_type="samples",
                                          n_resamples=np.inf, vectorized=True, axis=1).pvalue
        return np.mean(ps <= ALPHA)
    assert power(found) == pytest.approx(POWER, abs=0.035)
    assert power(found / 2) < 0.45


def test_detectable_approaches_the_t_test_with_many_seeds():
    # 14 paired seeds at 0.05: the permutation test's floor is far below the level, and its
    # power that of the t-test (Pitman efficiency 1 for normal data): within 5 %.
    shift = detectable_shift(Design(14, 0, 0), ALPHA) / math.sqrt(2)  # in sds of a difference
    assert shift == pytest.approx(ref_ncp(13) / math.sqrt(14), rel=0.05)


def test_no_detectable_difference_below_the_floor_or_without_spread():
    three = {1: 0.5, 2: 0.6, 3: 0.7}
    assert detectable(three, {1: 0.52, 2: 0.61, 3: 0.75}, ALPHA) is None  # 0.25 > 0.05
    assert detectable_shift(Design(3, 0, 0), ALPHA) is None
    six = {s: 0.5 for s in range(6)}
    assert detectable(six, {s: 0.6 for s in range(6)}, ALPHA) is None  # no spread to scale
    assert detectable(six, {s: 0.6 + 0.01 * s for s in range(6)}, ALPHA) > 0
    assert detectable(six, {s: 0.6 + 0.01 * s for s in range(6)}, ALPHA / 8) is None
    spread_out = {s: 0.6 + 0.01 * s for s in range(6)}
    assert detectable(six, spread_out, ALPHA, power=0.5) < detectable(six, spread_out, ALPHA)


def test_a_level_the_test_reaches_exactly_and_one_below_the_default_draws():
    # 6 paired seeds: the p values are multiples of 2/64, so at 0.05 the test rejects exactly
    # where it rejects at 2/64 itself: the same detectable difference.
    assert detectable_shift(Design(6, 0, 0), 2 / 64) == detectable_shift(Design(6, 0, 0), ALPHA)
    # 13 paired seeds at 0.0003: the test reaches 2/2^13 = 0.00024, and so must the simulation,
    # which would stop at 1/2048 with its default number of relabelings (and never end).
    assert smallest_p(Design(13, 0, 0)) <= 0.0003
    assert 0 < detectable_shift(Design(13, 0, 0), 0.0003) < 10


def test_a_lower_level_or_a_higher_power_needs_a_larger_difference():
    design = Design(10, 0, 0)
    assert (detectable_shift(design, ALPHA) < detectable_shift(design, ALPHA / 4)
            < detectable_shift(design, ALPHA / 8))
    assert detectable_shift(design, ALPHA, 0.5) < detectable_shift(design, ALPHA)
    assert (detectable_shift(Design(12, 0, 0), ALPHA) < detectable_shift(design, ALPHA)
            < detectable_shift(Design(8, 0, 0), ALPHA))


# --- how p is shown ------------------------------------------------------------------------------

@pytest.mark.parametrize("p, shown", [
    (0.04996, "0.04996"), (0.0499, "0.0499"), (0.05, "0.05"), (0.050004, "0.05"),
    (0.009996, "0.009996"), (0.00999, "0.00999"), (0.01, "0.01"), (0.123456, "0.123"),
    (1.0, "1"), (2 / 64, "0.0312"), (None, "-"), (float("nan"), "-"),
])
def test_fmt_p_never_rounds_across_a_threshold(p, shown):
    assert fmt_p(p) == shown


@settings(max_examples=500, deadline=None)
@given(p=st.floats(0.0, 1.0, allow_nan=False))
def test_a_shown_p_is_on_the_same_side_of_every_threshold(p):
    shown = float(fmt_p(p))
    assert (shown < 0.01) == (p < 0.01) and (shown < ALPHA) == (p < ALPHA)
    assert shown == pytest.approx(p, rel=5e-3, abs=1e-300)


# --- above_chance, mcnemar ---------------------------------------------------------------

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
