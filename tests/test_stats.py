import json
import math
from decimal import Context, Decimal, localcontext
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from normbench.normalizations import (IMAGENET_MEAN, IMAGENET_STD, INSTANCE_EPS, MINMAX_MIN_SPAN,
                                      NORMALIZATIONS, ChannelStats, Norm)
from normbench.registry import ConfigError
from normbench.stats import (PixelSums, after_norm, channel_stats, normalized_stats, pixel_sums,
                             raw_moments, read_channel_stats, sqrt_float, stats_table)


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


@pytest.mark.parametrize("record", [{"mean": [0.5] * 3}, {"std": [0.2] * 3}, [0.5, 0.2],
                                    {"mean": 0.5, "std": 0.2}])
def test_a_stats_record_without_channel_moments_is_refused_naming_the_fix(record):
    with pytest.raises(ConfigError, match=r"^dataset statistics without a per-channel mean and "
                                          r"std in s\.json; rerun$"):
        read_channel_stats(record, " in s.json; rerun")


# --- exact: every figure is the exact value rounded once, whatever the order of the pixels ----

def nearest_sqrt(q: Fraction) -> float:
    """sqrt(q) to 60 digits in decimal, then to the nearest float: independent of sqrt_float."""
    with localcontext(Context(prec=60)):
        return float((Decimal(q.numerator) / Decimal(q.denominator)).sqrt())


def exact_table(images: np.ndarray) -> dict:
    """Table 1 from its definition, pixel by pixel in fractions (tiny inputs only)."""
    u = [[[[Fraction(int(v), 255) for v in px] for px in row] for row in img] for img in images]
    n_img, h, w, c = images.shape

    def moments(y_and_sq) -> tuple[list[float], list[float]]:
        means, stds = [], []
        for ch in range(c):
            ys, sqs = [], []
            for i in range(n_img):
                a, b = y_and_sq(i, ch)
                ys += a
                sqs += b
            if math.nan in ys:
                means.append(math.nan)
                stds.append(math.nan)
                continue
            mean = sum(ys, Fraction(0)) / len(ys)
            means.append(float(mean))
            stds.append(nearest_sqrt(sum(sqs, Fraction(0)) / len(sqs) - mean * mean))
        return means, stds

    def pixels_of(i, ch):
        return [u[i][y][x][ch] for y in range(h) for x in range(w)]

    def affine(shift, scale):
        def f(i, ch):
            if scale[ch] == 0:  # a flat channel under its own std: 0 / 0 in the model too
                return [math.nan], [math.nan]
            ys = [(p - shift[ch]) / scale[ch] for p in pixels_of(i, ch)]
            return ys, [y * y for y in ys]
        return f

    def instance(i, ch):
        ps = pixels_of(i, ch)
        mu = sum(ps, Fraction(0)) / len(ps)
        var = sum(((p - mu) ** 2 for p in ps), Fraction(0)) / len(ps)
        # y = (p - mu) / sqrt(var + eps): y sums to 0, and y^2 is rational
        return [Fraction(0)] * len(ps), [(p - mu) ** 2 / (var + Fraction(INSTANCE_EPS)) for p in ps]

    def minmax(i, ch):
        flat = [v for row in u[i] for px in row for v in px]
        lo, span = min(flat), max(max(flat) - min(flat), Fraction(MINMAX_MIN_SPAN))
        ys = [(p - lo) / span for p in pixels_of(i, ch)]
        return ys, [y * y for y in ys]

    mean, std = moments(affine([Fraction(0)] * c, [Fraction(1)] * c))
    frac = lambda xs: [Fraction(x) for x in xs]  # noqa: E731 (the float constants, exactly)
    rules = {"dataset": affine(frac(mean), frac(std)),
             "imagenet": affine(frac(IMAGENET_MEAN), frac(IMAGENET_STD)),
             "none": affine([Fraction(0)] * c, [Fraction(1)] * c),
             "instance": instance, "minmax": minmax}
    after = {name: dict(zip(("mean", "std"), moments(rule))) for name, rule in rules.items()}
    return {"n_images": n_img, "image_size": [h, w], "mean": mean, "std": std, "after": after}


def same(a: dict, b: dict) -> bool:
    """Equal to the bit, NaN equal to NaN."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_a_hand_made_set_gives_its_fractions():
    # Two 1 x 2 images. Red: levels 0, 255 | 255, 255 -> u = 0, 1, 1, 1; green 51, 51 | 0, 102
    # -> u = 1/5, 1/5, 0, 2/5; blue all 17 (u = 1/15). Each image spans levels 0..255.
    img = np.array([[[[0, 51, 17], [255, 51, 17]]], [[[255, 0, 17], [255, 102, 17]]]], np.uint8)
    table = stats_table(img)
    assert table["mean"] == [0.75, 0.2, 1 / 15]  # 3/4, 1/5, 1/15 rounded once
    assert table["std"] == [math.sqrt(3) / 4, math.sqrt(2) / 10, 0.0]  # var 3/16, 1/50, 0
    # none is the raw table; dataset: (3/4 - 0.75) / std = 0 exactly for red; the flat blue
    # channel is 0 / 0 there, as in the model
    assert table["after"]["none"] == {"mean": table["mean"], "std": table["std"]}
    assert table["after"]["dataset"]["mean"][0] == 0.0
    assert math.isnan(table["after"]["dataset"]["mean"][2])
    # instance: each image's channel to variance var / (var + eps); blue is flat (var 0)
    eps = Fraction(INSTANCE_EPS)
    red = (Fraction(1, 4) / (Fraction(1, 4) + eps) + 0) / 2  # image 1 has var 1/4, image 2 var 0
    green = (Fraction(0) + Fraction(1, 25) / (Fraction(1, 25) + eps)) / 2
    assert table["after"]["instance"]["mean"] == [0.0, 0.0, 0.0]
    assert table["after"]["instance"]["std"] == [nearest_sqrt(red), nearest_sqrt(green), 0.0]
    # minmax over 0..255 is the identity on u
    assert table["after"]["minmax"] == {"mean": table["mean"], "std": table["std"]}


def test_a_random_set_equals_the_pixel_by_pixel_fractions(images):
    small = images[:3, :4, :5]
    assert same(stats_table(small), exact_table(small))


uint8_images = arrays(np.uint8, st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 3),
                                          st.just(3)))


@settings(max_examples=60, deadline=None)
@given(uint8_images)
def test_every_figure_is_the_exact_value_rounded_once(images):
    assert same(stats_table(images), exact_table(images))


@settings(max_examples=60, deadline=None)
@given(uint8_images, st.integers(1, 5), st.randoms(use_true_random=False))
def test_chunking_and_image_order_change_no_bit(images, chunk, rnd):
    """What a float sum fails: its rounding follows the order of the additions."""
    order = list(range(len(images)))
    rnd.shuffle(order)
    sums = pixel_sums(images[order], chunk)
    raw = channel_stats(images)
    assert raw_moments(sums).rounded() == raw
    for name in NORMALIZATIONS:
        assert after_norm(sums, NORMALIZATIONS[name], raw) == normalized_stats(
            images, NORMALIZATIONS[name], raw)


@settings(max_examples=300, deadline=None)
@given(st.fractions(min_value=0, max_value=10**12).filter(lambda q: q > 0) |
       st.integers(1, 10**40).map(lambda n: Fraction(1, n)))
def test_sqrt_float_is_the_nearest_float(q):
    f = sqrt_float(q)
    below, above = math.nextafter(f, 0), math.nextafter(f, math.inf)
    low, high = (Fraction(below) + Fraction(f)) / 2, (Fraction(f) + Fraction(above)) / 2
    assert low * low <= q <= high * high  # q lies within half a step of f on either side


def test_sqrt_float_of_squares_and_zero():
    assert sqrt_float(Fraction(9, 16)) == 0.75 and sqrt_float(Fraction(0)) == 0.0
    assert sqrt_float(Fraction(10**60)) == 1e30
    with pytest.raises(ValueError, match="negative"):
        sqrt_float(Fraction(-1, 4))


def test_sums_past_int64_stay_exact():
    """Tiny-ImageNet's sums fit in int64; a larger dataset's must not overflow either."""
    big = np.full((4, 1), 2**62, np.int64)  # four images' sums: 2^64 in all
    sums = PixelSums(pixels=1, s1=big, s2=big, lo=np.zeros(4, np.int64), hi=np.zeros(4, np.int64))
    assert raw_moments(sums).mean == (Fraction(2**62, 255),)


def test_a_setting_without_an_exact_rule_names_the_rules(images):
    odd = Norm(lambda u, mean, std: (mean, std), lambda s: s, "a new kind of fit")
    with pytest.raises(ConfigError, match="add its rule to normbench.stats.AFTER .*constant_fit"):
        normalized_stats(images, odd, channel_stats(images))
