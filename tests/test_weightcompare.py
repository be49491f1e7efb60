import io
import itertools
import zlib

import matplotlib.pyplot as plt
import numpy as np
import pytest
import scipy.stats

from normbench.significance import fmt_p
from normbench.weightcompare import (WeightRecord, figure, figures, label, min_permutation_p,
                                     permutation_p, verdicts)
from normbench.weightdist import ROLES, summarize

BASE = "norm=dataset weights=scratch"
EPOCHS = 4  # rows: epoch 0 (initial) .. 3 (final)
VALUES = 500
SEEDS = range(1, 10)  # 9 shared seeds: 2/2^9 = 0.0039, below 0.05 / 8 (Holm's first of 8)


def record(setting: str, seed: int, spread: float, step: float, model: str = "resnet18",
           dataset: str = "digits") -> WeightRecord:
    """A cell whose weights start N(0, 0.1) (the same for a seed in every setting, as scratch
    cells do) and grow by ``spread`` and take random steps of size ``step`` each epoch."""
    init = np.random.default_rng(seed).normal(0, 0.1, VALUES)
    noise = np.random.default_rng([seed, zlib.crc32(setting.encode())])
    epochs, samples = [], {}
    for role in ROLES:
        w, rows = init.copy(), [init]
        for _ in range(1, EPOCHS):
            w = w * (1 + spread) + noise.normal(0, step, VALUES)
            rows.append(w)
        samples[role] = np.stack(rows)
    for e in range(EPOCHS):
        epochs.append({"epoch": e, **{role: summarize(samples[role][e], samples[role][0])
                                      for role in ROLES}})
    layers = {role: {"layer": name, "numel": VALUES, "kept": VALUES}
              for role, name in zip(ROLES, ("conv1", "layer4.1.conv2"))}
    return WeightRecord(setting, model, dataset, seed, {"layers": layers, "epochs": epochs},
                        samples)


def grid(planted: bool) -> list[WeightRecord]:
    """3 settings x 9 seeds; with ``planted``, minmax's weights spread and drift far more."""
    out = []
    for setting in (BASE, "norm=minmax weights=scratch", "norm=none weights=scratch"):
        big = planted and "minmax" in setting
        for seed in SEEDS:
            out.append(record(setting, seed, spread=0.3 if big else 0.0,
                              step=0.05 if big else 0.01))
    return out


def test_permutation_p_by_hand():
    # Seeds 1, 2 at 0 | seeds 3, 4 at 1 (W1 = |difference|). Of the C(4, 2) = 6 deals, the
    # identity and its swap have cross mean 1 and within mean 0 (statistic 1); the other 4 have
    # cross 0.5 and within 1 (statistic -0.5). So p = 2/6.
    a, b = {1: np.zeros(3), 2: np.zeros(3)}, {3: np.ones(3), 4: np.ones(3)}
    assert permutation_p(a, b) == pytest.approx(2 / 6)
    assert min_permutation_p(a, b) == pytest.approx(2 / 6)
    # The same seeds 1, 2 in both: each seed's two cells only swap with each other (shared
    # starting weights): 4 relabelings, the identity and its mirror at the top, so p = 2/4.
    paired = {1: np.ones(3), 2: np.ones(3)}
    assert permutation_p(a, paired) == pytest.approx(2 / 4)
    assert min_permutation_p(a, paired) == pytest.approx(2 / 4)
    three = {s: np.zeros(3) for s in (1, 2, 3)}
    assert min_permutation_p(three, three) == pytest.approx(0.25)  # 2 / 2^3: never below 0.05
    assert min_permutation_p(three, {4: 0, 5: 0, 6: 0}) == pytest.approx(0.1)  # 2 / C(6, 3)
    assert min_permutation_p(three, {s: 0 for s in range(4, 8)}) == pytest.approx(1 / 35)
    # Identical seeds everywhere: every labeling ties, p = 1.
    assert permutation_p(dict.fromkeys((1, 2), np.zeros(3)), {3: np.zeros(3),
                                                               4: np.zeros(3)}) == 1.0


def sign_flip_p(ours, ref) -> float:
    """The exact sign-flip p of paired values, from scipy (every one of the 2^n flips)."""
    return scipy.stats.permutation_test((np.subtract(ours, ref),), np.mean,
                                        permutation_type="samples", n_resamples=np.inf).pvalue


def drift_p(records, setting, role):
    """The sign-flip test of the final drift over the shared seeds, written out with scipy."""
    def finals(s):
        return {r.seed: r.summary["epochs"][-1][role]["drift"] for r in records if r.setting == s}
    a, b = finals(BASE), finals(setting)
    return sign_flip_p([b[k] for k in sorted(a)], [a[k] for k in sorted(a)])


def test_planted_setting_is_named_different():
    records = grid(planted=True)
    lines, table = verdicts(records, "dataset")
    assert len(lines) == len(ROLES)
    assert verdicts([], "dataset")[0] == ["No weight snapshots to compare."]
    for line in lines:
        differ, same = line.split("No significant difference:")
        assert "minmax (final drift" in differ and "minmax" not in same
        assert "none (final drift" in same  # the setting norm=none: only seed noise
    tested = table[table.setting != BASE].set_index(["layer", "setting"])
    raw = [drift_p(records, s, role) for role in ROLES
           for s in ("norm=minmax weights=scratch", "norm=none weights=scratch")]
    order = np.argsort(raw)
    expected = np.empty(4)  # Holm's step-down method, written out for these 4 tests
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (4 - rank) * raw[i]))
        expected[i] = running
    got = [float(tested.loc[(layer, s), "p (Holm)"]) for layer in tested.index.unique("layer")
           for s in ("norm=minmax weights=scratch", "norm=none weights=scratch")]
    assert got == pytest.approx(expected, rel=2e-3)  # shown to 3 significant digits
    assert (tested["test"] == "sign-flip").all()  # the same seeds 1..9 in every setting
    assert (tested["smallest p"] == "0.00391").all()
    minmax = table[table.setting == "norm=minmax weights=scratch"]
    assert minmax["permutation p (described)"].astype(float).tolist() == pytest.approx(
        [0.00391] * len(ROLES))  # 9 shared seeds: at its floor 2/2^9; no verdict rests on it
    assert (minmax["W1 between settings"].astype(float)
            > 5 * minmax["W1 between seeds"].astype(float)).all()


def test_seed_noise_only_is_no_difference():
    lines, table = verdicts(grid(planted=False), "dataset")
    for line in lines:
        assert "beyond what changing the seed does: no setting." in line
    tested = table[table.setting != BASE]
    assert (tested["p (Holm)"].astype(float) >= 0.05).all()


def test_one_seed_and_cells_that_did_not_learn_get_no_verdict():
    records = grid(planted=True) + [record("norm=instance weights=scratch", 1, 0.0, 0.01)]
    lines, table = verdicts(records, "dataset")
    # Seed 1 against 8: the drift test's relabelings are the swap of seed 1's pair only, so
    # its p cannot go below 1/2: no verdict, and no place in the Holm family.
    assert all("No verdict: instance (too few seeds: final drift " in line
               and "exact sign-flip + relabeling test, p=" in line
               and "cannot go below 0.5 with these seeds)" in line for line in lines)
    rows = table[table.setting == "norm=instance weights=scratch"]
    assert rows["smallest p"].eq("0.5").all() and rows["p (Holm)"].eq("-").all()
    # minmax differs when it learned; the same weights from cells that did not learn: no verdict.
    lines, table = verdicts(grid(planted=True), "dataset",
                            {("norm=minmax weights=scratch", "resnet18", "digits")})
    for line in lines:
        differ, rest = line.split("No significant difference:")
        assert "minmax" not in differ and "No verdict: minmax (norm=minmax weights=scratch did " \
                                          "not learn)" in rest


def test_labels_and_pretrained_reference():
    settings = [BASE, "norm=minmax weights=imagenet"]
    assert label("norm=minmax weights=scratch", [BASE]) == "minmax"
    assert label("norm=minmax weights=imagenet", settings) == "minmax, imagenet"
    # Imagenet settings are tested against the baseline norm with imagenet weights.
    records = grid(planted=False) + [record(s, seed, 0.0, 0.01) for seed in (1, 2, 3)
                                     for s in ("norm=dataset weights=imagenet",
                                               "norm=minmax weights=imagenet")]
    _, table = verdicts(records, "dataset")
    row = table[table.setting == "norm=minmax weights=imagenet"].iloc[0]
    assert row.reference == "norm=dataset weights=imagenet" and row["p"] != "-"


def test_figures_one_png_per_model_and_dataset():
    records = grid(planted=True) + [record(r.setting, r.seed, 0.0, 0.01, dataset="shapes")
                                    for r in grid(planted=False)]
    records += [record("norm=minmax weights=imagenet", s, 0.0, 0.002) for s in (1, 2)]
    pngs = figures(records)
    assert sorted(pngs) == ["weights_resnet18-digits.png", "weights_resnet18-shapes.png"]
    # digits has scratch and imagenet weights: a row per (weights kind, layer), scratch first,
    # four panels each; shapes scratch only. The PNG is drawn at that shape (19 x 3.7 in a row).
    digits = [r for r in records if r.dataset == "digits"]
    fig = figure(digits, {r.setting: "k" for r in records})
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == 4 * 2 * len(ROLES)
    assert [t.split(":")[0] for t in titles[::4]] == [
        "scratch, first conv (conv1)", "scratch, deeper conv (layer4.1.conv2)",
        "imagenet, first conv (conv1)", "imagenet, deeper conv (layer4.1.conv2)"]
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["initial (epoch 0)", "dataset", "minmax", "none"]
    plt.close(fig)
    for name, rows in (("digits", 4), ("shapes", 2)):
        image = plt.imread(io.BytesIO(pngs[f"weights_resnet18-{name}.png"]))
        height, width = image.shape[:2]
        assert height / width == pytest.approx(3.7 * rows / 19, rel=0.02)
        assert image[..., :3].std() > 0.05  # drawn, not blank


# --- make mutation: the verdict lines, the tests table and the permutation test's edges ------

def by_hand_drift(r, role):
    """Final drift of a record from its samples (the whole tensor here), not its summary."""
    w0, w = r.samples[role][0], r.samples[role][-1]
    return np.linalg.norm(w - w0) / np.linalg.norm(w0)


def test_verdict_lines_and_the_tests_table_in_full():
    minmax, instance = "norm=minmax weights=scratch", "norm=instance weights=scratch"
    imagenet = "norm=none weights=imagenet"  # no norm=dataset weights=imagenet runs
    records = [r for r in grid(planted=True) if "none" not in r.setting]
    records += [record(instance, 1, 0.0, 0.01)] + [record(imagenet, s, 0.0, 0.01) for s in (1, 2)]
    lines, table = verdicts(records, "dataset")
    drifts = {(s, role): [by_hand_drift(r, role) for r in records if r.setting == s]
              for s in (BASE, minmax, instance, imagenet) for role in ROLES}
    raw = {role: sign_flip_p(drifts[(minmax, role)], drifts[(BASE, role)]) for role in ROLES}
    assert raw == {role: 2 / 2 ** 9 for role in ROLES}  # minmax drifts more in every seed
    # Holm over the two tests that can reach 0.05 (2 x 2/2^9): instance (seed 1 against 1..9)
    # cannot, and is left out of the family.

    def instance_p(role):
        """Instance's seed 1 may only swap with the baseline's seed 1: p is 1/2 or 1."""
        ours, base = drifts[(instance, role)][0], drifts[(BASE, role)]
        observed = abs(ours - np.mean(base))
        swapped = abs(base[0] - np.mean([ours, *base[1:]]))
        return 1.0 if swapped >= observed else 0.5
    expected_lines = []
    for role, layer in zip(ROLES, ("first conv (conv1)", "deeper conv (layer4.1.conv2)")):
        ours, ref, lone = (100 * np.mean(drifts[(s, role)]) for s in (minmax, BASE, instance))
        expected_lines.append(
            f"**resnet18 on digits, {layer}**, against norm=dataset: moved the weights "
            f"differently beyond what changing the seed does: minmax, scratch (final drift "
            f"{ours:.3g} % vs {ref:.3g} %, exact sign-flip test, p=0.00391, Holm-adjusted "
            f"0.00781). No significant difference: no setting. No verdict: instance, scratch "
            f"(too few seeds: final drift {lone:.3g} % vs {ref:.3g} %, exact sign-flip + "
            f"relabeling test, p={fmt_p(instance_p(role))}, cannot go below 0.5 with these "
            "seeds); none, imagenet (no norm=dataset weights=imagenet runs).")
        expected_lines.append(  # imagenet weights are also tested against scratch, same norm
            f"**resnet18 on digits, {layer}**, against scratch with the same norm: moved the "
            "weights differently beyond what changing the seed does: no setting. No "
            "significant difference: no setting. No verdict: none, imagenet (no norm=none "
            "weights=scratch runs).")
    assert lines == expected_lines  # per layer: against the baseline, then against scratch
    assert list(table.columns) == [
        "model", "dataset", "layer", "setting", "reference", "seeds", "final drift (%)", "test",
        "p", "smallest p", "p (Holm)", "note", "W1 between settings", "W1 between seeds",
        "permutation p (described)", "smallest permutation p"]
    rows = table.set_index(["layer", "setting"])
    layer = "first conv (conv1)"
    d = np.array(drifts[(BASE, "first_conv")]) * 100
    assert rows.loc[(layer, BASE)].to_dict() == {
        "model": "resnet18", "dataset": "digits", "reference": BASE, "seeds": 9,
        "final drift (%)": f"{d.mean():.2f} ± {d.std(ddof=1):.2f}", "note": "", "test": "",
        "p": "", "smallest p": "", "p (Holm)": "", "W1 between settings": "",
        "W1 between seeds": "", "permutation p (described)": "", "smallest permutation p": ""}
    finals = {s: [r.samples["first_conv"][-1] for r in records if r.setting == s]
              for s in (minmax, BASE)}
    between = np.mean([scipy.stats.wasserstein_distance(x, y)
                       for x in finals[minmax] for y in finals[BASE]])
    row = rows.loc[(layer, minmax)]
    assert (row["seeds"], row["test"], row["note"]) == (9, "sign-flip", "")
    assert (row["p"], row["smallest p"], row["p (Holm)"]) == ("0.00391", "0.00391", "0.00781")
    assert row["W1 between settings"] == f"{between:.3g}"
    assert (row["permutation p (described)"], row["smallest permutation p"]) == (
        "0.00391", "0.00391")
    row = rows.loc[(layer, instance)]
    assert (row["seeds"], row["test"], row["p"], row["smallest p"], row["p (Holm)"]) == (
        1, "sign-flip + relabeling", fmt_p(instance_p("first_conv")), "0.5", "-")
    assert (row["W1 between settings"], row["smallest permutation p"]) == ("", "")
    assert row["final drift (%)"] == f"{drifts[(instance, 'first_conv')][0] * 100:.2f}"
    row = table[(table.layer == layer) & (table.setting == imagenet)].set_index("reference")
    assert row.loc["norm=dataset weights=imagenet", ["note", "test", "p"]].tolist() == [
        "no norm=dataset weights=imagenet runs", "", ""]
    assert row.loc["norm=none weights=scratch", "note"] == "no norm=none weights=scratch runs"


def test_pretrained_weights_are_also_tested_against_scratch_with_the_same_norm():
    """The second seed document's claim, as a test: pretrained weights move less than scratch."""
    pretrained = "norm=dataset weights=pretrained pretrain=dataset"
    records = [record(s, seed, spread=0.0, step=0.05 if s == BASE else 0.002)
               for s in (BASE, pretrained) for seed in SEEDS]
    lines, table = verdicts(records, "dataset")
    drifts = {s: [by_hand_drift(r, "first_conv") for r in records if r.setting == s]
              for s in (BASE, pretrained)}
    ps = [sign_flip_p(*([by_hand_drift(r, role) for r in records if r.setting == s]
                        for s in (pretrained, BASE))) for role in ROLES]
    assert ps == [2 / 2 ** 9] * len(ROLES)  # less drift in every seed, in both layers
    ours, ref = (100 * np.mean(drifts[s]) for s in (pretrained, BASE))
    assert lines[0] == (
        "**resnet18 on digits, first conv (conv1)**, against scratch with the same norm: moved "
        "the weights differently beyond what changing the seed does: dataset, pretrained on "
        f"dataset (final drift {ours:.3g} % vs {ref:.3g} %, exact sign-flip test, p=0.00391, "
        "Holm-adjusted 0.00781). No significant difference: no setting.")
    assert ours < ref / 10
    row = table[(table.setting == pretrained) & (table.layer == "first conv (conv1)")]
    assert row.reference.tolist() == [BASE]  # the baseline norm is its own setting: no test


def test_a_missing_reference_and_a_setting_that_did_not_learn_are_both_named():
    records = [r for r in grid(planted=False) if r.setting == "norm=none weights=scratch"]
    lines, table = verdicts(records, "dataset", {("norm=none weights=scratch", "resnet18",
                                                  "digits")})
    assert table.note.tolist() == ["no norm=dataset weights=scratch runs; norm=none "
                                   "weights=scratch did not learn"] * len(ROLES)
    assert lines[0].endswith("No verdict: none (no norm=dataset weights=scratch runs; "
                             "norm=none weights=scratch did not learn).")


def test_an_adjusted_p_of_exactly_alpha_is_no_difference(monkeypatch):
    import normbench.weightcompare as wc
    from normbench.significance import Test

    monkeypatch.setattr(wc, "compare_seeds",
                        lambda ref, other: Test("sign-flip", 0.1, p=0.0125, smallest_p=0.0078))
    lines, table = verdicts(grid(planted=True), "dataset")
    assert set(table["p (Holm)"]) == {"", "0.05"}  # Holm: 4 x 0.0125 for the first of four
    for line in lines:
        assert "beyond what changing the seed does: no setting." in line


def test_compare_layer_by_hand_with_two_seeds_each():
    from normbench.weightcompare import compare_layer

    minmax = "norm=minmax weights=scratch"
    group = {s: [record(s, seed, 0.3 if s == minmax else 0.0, 0.05) for seed in (1, 2)]
             for s in (BASE, minmax)}
    t = compare_layer(group, minmax, BASE, "deep_conv")
    drift = {s: [by_hand_drift(r, "deep_conv") for r in rs] for s, rs in group.items()}
    assert (t.setting, t.reference, t.n) == (minmax, BASE, (2, 2))
    assert t.drift == pytest.approx((100 * np.mean(drift[minmax]), 100 * np.mean(drift[BASE])))
    assert t.test.p == sign_flip_p(drift[minmax], drift[BASE]) == 0.5  # 2 seeds: 2 of 4 flips
    finals = {s: [r.samples["deep_conv"][-1] for r in rs] for s, rs in group.items()}
    cross = [scipy.stats.wasserstein_distance(x, y) for x in finals[minmax] for y in finals[BASE]]
    within = [scipy.stats.wasserstein_distance(*finals[s]) for s in (minmax, BASE)]
    assert t.w1 == pytest.approx((np.mean(cross), np.mean(within)))
    # Seeds 1 and 2 in both: the 4 relabelings swap a seed's two cells or not. Swapping one
    # seed puts a minmax and a baseline cell in each group: a smaller statistic than the
    # observed grouping and its mirror, so p = 2/4, its floor.
    (m1, m2), (b1, b2) = finals[minmax], finals[BASE]

    def statistic(one, two):
        w1 = scipy.stats.wasserstein_distance
        return np.mean([w1(x, y) for x in one for y in two]) - np.mean([w1(*one), w1(*two)])
    assert statistic([b1, m2], [m1, b2]) < statistic([m1, m2], [b1, b2])
    assert t.perm_min_p == 0.5 and t.perm_p == 0.5


def test_statistic_w1_means_and_per_epoch_by_hand():
    from normbench.weightcompare import _statistic, per_epoch, w1_means

    dist = np.array([[0, 1, 4, 6], [1, 0, 5, 7], [4, 5, 0, 2], [6, 7, 2, 0]], dtype=float)
    # Groups {0, 1} and {2, 3}: cross pairs 4, 6, 5, 7 (mean 5.5), same pairs 1 and 2 (mean 1.5).
    assert _statistic(dist, np.array([True, True, False, False])) == pytest.approx(4.0)
    assert w1_means([np.zeros(2)], [np.array([1.0, 3.0])]) == (2.0, pytest.approx(np.nan,
                                                                                  nan_ok=True))
    records = [record(BASE, seed, 0.1, 0.01) for seed in (1, 2)]
    table = per_epoch(records, "first_conv", "std")
    assert table.columns.tolist() == [1, 2] and table.index.tolist() == list(range(EPOCHS))
    assert table[2].tolist() == pytest.approx([records[1].samples["first_conv"][e].std()
                                               for e in range(EPOCHS)])


def test_permutation_p_edges():
    # Two seeds against three others (C(5, 2) = 10 deals, no label swap): only the identity puts
    # the zeros together, so p = 1/10.
    zeros, ones = np.zeros(3), np.ones(3)
    assert permutation_p({1: zeros, 2: zeros}, {3: ones, 4: ones, 5: ones}) == pytest.approx(0.1)
    # The same p in any units of the weights (the tie tolerance scales with the distances).
    rng = np.random.default_rng(5)
    a = {s: rng.normal(0, 1, 50) for s in range(3)}
    b = {s: rng.normal(0.5, 1, 50) for s in range(3, 6)}
    p = permutation_p(a, b)
    for scale in (1e-12, 1e6):
        assert permutation_p({s: x * scale for s, x in a.items()},
                             {s: x * scale for s, x in b.items()}) == p
    # Beyond EXACT_LIMIT relabelings: 9999 seeded draws and the identity, so p is a multiple of
    # 1/10000 and never 0. 9 against 12 seeds: only the identity separates zeros from ones (a
    # draw repeats it with probability 9999 / C(21, 9) = 0.03).
    assert permutation_p(dict.fromkeys(range(9), zeros),
                         dict.fromkeys(range(9, 21), ones)) == pytest.approx(1e-4)
    # 10 against 10 with one outlier: every balanced labeling gives the statistic 0, so p = 1.
    assert permutation_p(dict.fromkeys(range(10), zeros),
                         {**dict.fromkeys(range(10, 19), zeros), 19: ones}) == 1.0


def test_the_drawn_relabelings_estimate_the_exact_p():
    """10 against 10 other seeds: C(20, 10) = 184756 relabelings, more than are enumerated. The
    exact p over all of them, computed here in one matrix product, against the 10000 seeded
    draws (p is near 0.07 here: the draws' standard error is 0.0025)."""
    rng = np.random.default_rng(11)
    a = {s: rng.normal(0, 1, 20) for s in range(10)}
    b = {s: rng.normal(0.15, 1, 20) for s in range(10, 20)}
    cells = [*a.values(), *b.values()]
    dist = np.array([[scipy.stats.wasserstein_distance(x, y) for y in cells] for x in cells])
    chosen = np.array(list(itertools.combinations(range(20), 10)))
    in_a = np.zeros((len(chosen), 20))
    in_a[np.arange(len(chosen))[:, None], chosen] = 1.0
    same = (np.einsum("ij,jk,ik->i", in_a, dist, in_a)
            + np.einsum("ij,jk,ik->i", 1 - in_a, dist, 1 - in_a)) / 2  # within-group sums
    stat = (dist.sum() / 2 - same) / 100 - same / 90  # 100 cross pairs, 2 x 45 same pairs
    observed = stat[0]  # combinations() starts with the first ten: the observed grouping
    exact = np.mean(stat >= observed - 1e-9 * dist.max())
    p = permutation_p(a, b)
    assert 0.02 < exact < 0.2 and p == pytest.approx(exact, abs=4 * np.sqrt(exact / 10_000))
    assert (p * 10_000) % 1 == pytest.approx(0, abs=1e-6) and p == permutation_p(a, b)


def test_the_permutation_test_holds_its_level_when_seeds_share_their_start():
    """No effect, 4 seeds, the two cells of a seed grown from one start (as scratch cells are):
    p <= 2/16 in 2/16 of 400 simulated studies, p <= 1/2 in half of them. Relabeling all 8
    cells as if independent gave p <= 0.1 in none (cells of a seed are alike)."""
    rng = np.random.default_rng(99)
    ps = []
    for _ in range(400):
        starts = {s: rng.normal(0, 0.1, 200) for s in range(4)}
        a = {s: w + rng.normal(0, 0.02, 200) for s, w in starts.items()}
        b = {s: w + rng.normal(0, 0.02, 200) for s, w in starts.items()}
        ps.append(permutation_p(a, b))
    for level in (2 / 16, 8 / 16):
        rate = np.mean(np.array(ps) <= level + 1e-12)
        assert abs(rate - level) < 3.5 * np.sqrt(level * (1 - level) / 400), (level, rate)


def test_weight_references_of_each_kind_of_setting():
    from normbench.weightcompare import weight_references

    assert weight_references("norm=minmax weights=scratch", "dataset") == [BASE]
    assert weight_references(BASE, "dataset") == []
    assert weight_references("norm=minmax weights=imagenet", "dataset") == [
        "norm=dataset weights=imagenet", "norm=minmax weights=scratch"]
    # The matched pairing has no scratch counterpart: its norm exists only for pretrained weights.
    assert weight_references("norm=pretraining weights=pretrained pretrain=minmax", "dataset") == [
        "norm=dataset weights=pretrained pretrain=minmax"]


def test_labels_name_the_pretraining_norm_where_the_weights_differ():
    settings = ["norm=minmax weights=pretrained pretrain=instance",
                "norm=dataset weights=pretrained pretrain=minmax"]
    assert label(settings[0], settings) == "minmax, pretrained on instance"
    assert label("norm=minmax weights=imagenet", [BASE, "norm=minmax weights=imagenet"]) == (
        "minmax, imagenet")


def test_one_seed_gets_the_drift_but_no_distances_and_lists_join_with_semicolons():
    from normbench.weightcompare import compare_layer

    group = {BASE: [record(BASE, s, 0.0, 0.01) for s in (1, 2)],
             "norm=minmax weights=scratch": [record("norm=minmax weights=scratch", 3, 0.2, 0.01)]}
    t = compare_layer(group, "norm=minmax weights=scratch", BASE, "first_conv")
    assert (t.setting, t.reference, t.n) == ("norm=minmax weights=scratch", BASE, (1, 2))
    assert t.drift == pytest.approx(
        (100 * by_hand_drift(group["norm=minmax weights=scratch"][0], "first_conv"),
         100 * np.mean([by_hand_drift(r, "first_conv") for r in group[BASE]])))
    # Seed 3 against seeds 1, 2: 3 deals, no mirror; the drift test's p is 1/3 at best, and
    # one cell has no spread of its own for the W1 description.
    assert (t.test.test, t.test.p, t.test.smallest_p) == ("relabeling", 1 / 3, 1 / 3)
    assert (t.w1, t.perm_p, t.perm_min_p) == (None, None, None)
    # Two settings that differ and two that do not, per layer.
    records = grid(planted=True) + [
        record(s, seed, 0.3 if "instance" in s else 0.0, 0.05 if "instance" in s else 0.01)
        for s in ("norm=instance weights=scratch", "norm=imagenet weights=scratch")
        for seed in SEEDS]
    lines, table = verdicts(records, "dataset")
    for line in lines:
        differ, same = line.split(" No significant difference: ")
        assert differ.count("(final drift") == 2 and "); minmax (final drift" in differ
        assert differ.startswith(differ.split(": ")[0] + ": moved the weights differently "
                                 "beyond what changing the seed does: instance (final drift")
        assert same.startswith("imagenet (final drift") and "); none (final drift" in same
    row = table[(table.setting == "norm=instance weights=scratch")].iloc[0]
    finals = [[r.samples["first_conv"][-1] for r in records if r.setting == s]
              for s in ("norm=instance weights=scratch", BASE)]
    within = np.mean([scipy.stats.wasserstein_distance(x, y) for group in finals
                      for x, y in itertools.combinations(group, 2)])
    assert row["W1 between seeds"] == f"{within:.3g}"


def test_a_lone_cell_is_listed_without_a_verdict():
    lines, table = verdicts([record(BASE, 1, 0.0, 0.01)], "dataset")
    assert lines == []  # nothing to compare it with
    assert table.layer.tolist() == ["first conv (conv1)", "deeper conv (layer4.1.conv2)"]
    assert (table.seeds == 1).all() and (table.reference == BASE).all()
