import zlib

import numpy as np
import pytest
import scipy.stats

from normbench.weightcompare import (WeightRecord, figures, label, min_permutation_p,
                                     permutation_p, verdicts)
from normbench.weightdist import ROLES, summarize

BASE = "norm=dataset weights=scratch"
EPOCHS = 4  # rows: epoch 0 (initial) .. 3 (final)
VALUES = 500


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
    """3 settings x 3 seeds; with ``planted``, minmax's weights spread and drift far more."""
    out = []
    for setting in (BASE, "norm=minmax weights=scratch", "norm=none weights=scratch"):
        big = planted and "minmax" in setting
        for seed in (1, 2, 3):
            out.append(record(setting, seed, spread=0.3 if big else 0.0,
                              step=0.05 if big else 0.01))
    return out


def test_permutation_p_by_hand():
    # Seeds 0, 0 | 1, 1 (W1 = |difference|). Of the C(4, 2) = 6 labelings, the identity and its
    # swap have cross mean 1 and within mean 0 (statistic 1); the other 4 have cross 0.5 and
    # within 1 (statistic -0.5). So p = 2/6.
    a, b = [np.zeros(3), np.zeros(3)], [np.ones(3), np.ones(3)]
    assert permutation_p(a, b) == pytest.approx(2 / 6)
    assert min_permutation_p(2, 2) == pytest.approx(2 / 6)
    assert min_permutation_p(3, 3) == pytest.approx(0.1)  # 2 / C(6, 3): never below 0.05
    assert min_permutation_p(3, 4) == pytest.approx(1 / 35)
    # Identical seeds everywhere: every labeling ties, p = 1.
    assert permutation_p([np.zeros(3)] * 2, [np.zeros(3)] * 2) == 1.0


def drift_p(records, setting, role):
    """The paired t-test of the final drift over seeds, written out with scipy."""
    def finals(s):
        return {r.seed: r.summary["epochs"][-1][role]["drift"] for r in records if r.setting == s}
    a, b = finals(BASE), finals(setting)
    return scipy.stats.ttest_rel([b[k] for k in sorted(a)], [a[k] for k in sorted(a)]).pvalue


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
    assert (tested["test"] == "paired t").all()  # the same seeds 1, 2, 3 in every setting
    minmax = table[table.setting == "norm=minmax weights=scratch"]
    assert minmax["permutation p (described)"].astype(float).tolist() == pytest.approx(
        [0.1] * len(ROLES))  # 3 + 3 seeds: at its floor, and no verdict rests on it
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
    assert all("No verdict: instance (one seed in a setting" in line for line in lines)
    assert table[table.setting == "norm=instance weights=scratch"]["p"].eq("-").all()
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
    assert all(png.startswith(b"\x89PNG") for png in pngs.values())
    with open("/tmp/weightcompare.png", "wb") as f:  # to look at
        f.write(pngs["weights_resnet18-digits.png"])
