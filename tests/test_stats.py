import numpy as np
import pytest
import torch

from normbench.normalizations import IMAGENET_MEAN, IMAGENET_STD, NORMALIZATIONS, ChannelStats
from normbench.stats import channel_stats, normalized_stats, read_channel_stats, stats_table


@pytest.fixture
def images():
    rng = np.random.default_rng(7)
    # Different channel distributions, so a mixed-up channel axis would show.
    r = rng.integers(0, 256, (50, 9, 11))
    g = rng.integers(100, 140, (50, 9, 11))
    b = rng.binomial(255, 0.8, (50, 9, 11))
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def test_channel_stats_match_numpy(images):
    s = channel_stats(images, chunk=7)  # chunks that do not divide N: accumulation must be exact
    as_float = images.astype(np.float64) / 255
    np.testing.assert_allclose(s.mean, as_float.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(s.std, as_float.std(axis=(0, 1, 2)), rtol=1e-9)


def test_normalized_stats_match_numpy(images):
    """Each setting written out in float64 numpy, independently of the code under test."""
    raw = channel_stats(images)
    u = images.astype(np.float64) / 255  # N x H x W x C
    lo = u.min(axis=(1, 2, 3), keepdims=True)
    expected = {
        "imagenet": (u - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD),
        "minmax": (u - lo) / (u.max(axis=(1, 2, 3), keepdims=True) - lo),
        "dataset": (u - np.array(raw.mean)) / np.array(raw.std),
    }
    for name, x in expected.items():
        got = normalized_stats(images, NORMALIZATIONS[name], raw, chunk=16)
        np.testing.assert_allclose(got.mean, x.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got.std, x.std(axis=(0, 1, 2)), rtol=1e-5)


def test_table_has_every_setting_and_dataset_norm_standardizes(images):
    table = stats_table(images)
    assert set(table["after"]) == set(NORMALIZATIONS)
    assert table["n_images"] == 50 and table["image_size"] == [9, 11]
    np.testing.assert_allclose(table["after"]["dataset"]["mean"], 0, atol=1e-5)  # float32 maths
    np.testing.assert_allclose(table["after"]["dataset"]["std"], 1, atol=1e-5)
    # Slightly below 1: the 1e-5 variance epsilon weighs on the low-contrast channels.
    np.testing.assert_allclose(table["after"]["instance"]["std"], 1, atol=0.02)
    np.testing.assert_allclose(table["after"]["none"]["mean"], table["mean"], rtol=1e-6)


def test_cifar10_like_input_gives_published_style_imagenet_shift():
    # A constant image at ImageNet's mean maps to exactly 0 under the imagenet setting.
    img = np.empty((2, 4, 4, 3), np.uint8)
    img[...] = np.round(np.array([0.485, 0.456, 0.406]) * 255).astype(np.uint8)
    after = normalized_stats(img, NORMALIZATIONS["imagenet"], ChannelStats((0,) * 3, (1,) * 3))
    np.testing.assert_allclose(after.mean, 0, atol=0.01)
    np.testing.assert_allclose(after.std, 0, atol=1e-6)


def test_the_stats_record_round_trips(images):
    table = stats_table(images)
    u = images.astype(np.float64) / 255
    np.testing.assert_allclose(table["std"], u.std(axis=(0, 1, 2)), rtol=1e-9)
    back = read_channel_stats(table)
    assert back.mean == tuple(table["mean"]) and back.std == tuple(table["std"])
