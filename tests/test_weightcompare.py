import zlib

import numpy as np
import pytest

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


def test_planted_setting_is_named_different():
    lines, table = verdicts(grid(planted=True), BASE)
    assert len(lines) == len(ROLES)
    assert verdicts([], BASE)[0] == ["No weight snapshots to compare."]
    for line in lines:
        differ, same = line.split("No difference beyond seed:")
        assert "minmax (final drift" in differ and "minmax" not in same
        assert "none (final drift" in same  # the setting norm=none: only seed noise
        assert "cannot reach p < 0.05" in differ  # 3 + 3 seeds: permutation p at its floor
    minmax = table[table.setting == "norm=minmax weights=scratch"]
    assert (minmax["Welch p"].astype(float) < 0.05).all()
    assert minmax["permutation p"].astype(float).tolist() == pytest.approx([0.1] * len(ROLES))
    assert (minmax["W1 between settings"].astype(float)
            > 5 * minmax["W1 between seeds"].astype(float)).all()


def test_seed_noise_only_is_no_difference():
    lines, table = verdicts(grid(planted=False), BASE)
    for line in lines:
        assert "beyond what changing the seed does: no setting." in line
    tested = table[table.setting != BASE]
    assert (tested["Welch p"].astype(float) >= 0.05).all()
    assert (tested["permutation p"].astype(float) >= 0.05).all()


def test_one_seed_is_no_test():
    records = grid(planted=True) + [record("norm=instance weights=scratch", 1, 0.0, 0.01)]
    lines, table = verdicts(records, BASE)
    assert all("No test: instance (1 and 3 seeds; a test needs 2 each)" in line for line in lines)
    assert table[table.setting == "norm=instance weights=scratch"]["Welch p"].eq("").all()


def test_labels_and_pretrained_reference():
    settings = [BASE, "norm=minmax weights=imagenet"]
    assert label("norm=minmax weights=scratch", [BASE]) == "minmax"
    assert label("norm=minmax weights=imagenet", settings) == "minmax, imagenet"
    # Imagenet settings are tested against the baseline's norm with imagenet weights.
    records = grid(planted=False) + [record(s, seed, 0.0, 0.01) for seed in (1, 2, 3)
                                     for s in ("norm=dataset weights=imagenet",
                                               "norm=minmax weights=imagenet")]
    _, table = verdicts(records, BASE)
    row = table[table.setting == "norm=minmax weights=imagenet"].iloc[0]
    assert row.reference == "norm=dataset weights=imagenet" and row["Welch p"] != ""


def test_figures_one_png_per_model_and_dataset():
    records = grid(planted=True) + [record(r.setting, r.seed, 0.0, 0.01, dataset="shapes")
                                    for r in grid(planted=False)]
    records += [record("norm=minmax weights=imagenet", s, 0.0, 0.002) for s in (1, 2)]
    pngs = figures(records)
    assert sorted(pngs) == ["weights_resnet18-digits.png", "weights_resnet18-shapes.png"]
    assert all(png.startswith(b"\x89PNG") for png in pngs.values())
    with open("/tmp/weightcompare.png", "wb") as f:  # to look at
        f.write(pngs["weights_resnet18-digits.png"])
