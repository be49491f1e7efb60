"""Per-channel statistics of a train split, before and after each normalization (Table 1).

Every figure is the exact value, rounded once to the nearest float64. The pixels are integers
(grey levels 0..255), so each statistic is a function of integer sums: of the levels and of
their squares per image and channel, and of each image's darkest and brightest level. Integer
sums are exact in any order, and what follows is rational arithmetic (``fractions.Fraction``),
so the file is the same bytes on every machine, whatever its thread count, vector width, BLAS
or torch build. (Float sums are not: their rounding follows the order the library adds in. A
float32 version of this module wrote different bytes on two machines with the same code, data
and pinned torch.)

A setting is the affine map ``(u - shift) / scale`` of the pixels ``u = level / 255`` (see
normalizations.py); the statistics after it are those of the exact map, with ``shift`` and
``scale`` the float64 constants the setting binds. The model computes the map in float32,
which is within about 1e-7 of these values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Iterator

import numpy as np

from normbench.normalizations import (INSTANCE_EPS, MINMAX_MIN_SPAN, NORMALIZATIONS, ChannelStats,
                                      Norm, constant_fit, instance_fit, minmax_fit)
from normbench.registry import ConfigError

# Images per chunk: bounds memory (a chunk of 4096 64 x 64 images is 100 MB of squared levels).
CHUNK = 4096
LEVELS = 255  # the brightest grey level: u = level / LEVELS
# Squares of every level, as the smallest integer type that holds 255^2 (no int64 copy of a chunk).
SQUARES = (np.arange(LEVELS + 1, dtype=np.uint32) ** 2).astype(np.uint16)
# Fixed-point bits of each image's instance-norm variance ratio, doubled until the result is
# certain (``_instance_after``); 128 bits settle it at once unless a value is within ~2^-100 of
# a rounding boundary.
RATIO_BITS = 128


@dataclass(frozen=True)
class PixelSums:
    """Exact integer sums of N uint8 images of P pixels per channel, all in grey levels."""

    pixels: int  # P = H x W
    s1: np.ndarray  # int64, N x C: each image's sum of levels per channel
    s2: np.ndarray  # int64, N x C: each image's sum of squared levels per channel
    lo: np.ndarray  # int64, N: each image's darkest level over all channels
    hi: np.ndarray  # int64, N: each image's brightest level over all channels

    @property
    def n_images(self) -> int:
        return len(self.s1)


def _chunks(images: np.ndarray, chunk: int) -> Iterator[np.ndarray]:
    for start in range(0, len(images), chunk):
        yield np.asarray(images[start:start + chunk])


def pixel_sums(images: np.ndarray, chunk: int = CHUNK) -> PixelSums:
    """The integer sums of uint8 N x H x W x C images (exact: at most P * 255^2 per image)."""
    if len(images) == 0:
        raise ValueError("no images to compute statistics on")
    parts = []
    for c in _chunks(images, chunk):
        # N x C x P with each channel's pixels contiguous: numpy sums along memory about 5x
        # faster than across it (measured: 0.17 s against 0.96 s for 4096 64 x 64 images).
        planes = np.ascontiguousarray(c.reshape(len(c), -1, c.shape[-1]).transpose(0, 2, 1))
        parts.append((planes.sum(axis=2, dtype=np.int64),
                      SQUARES[planes].sum(axis=2, dtype=np.int64),
                      planes.min(axis=(1, 2)).astype(np.int64),
                      planes.max(axis=(1, 2)).astype(np.int64)))
    s1, s2, lo, hi = (np.concatenate(p) for p in zip(*parts))
    return PixelSums(int(images.shape[1] * images.shape[2]), s1, s2, lo, hi)


def _total(values: np.ndarray) -> int:
    """An exact sum as a Python int: no int64 overflow, whatever the dataset's size."""
    return int(values.astype(object).sum())


def sqrt_float(q: Fraction) -> float:
    """The float nearest to sqrt(q) for a rational q >= 0, from integer arithmetic alone.

    ``isqrt`` gives floor(sqrt(q) * 2^k) with at least 55 bits; a remainder is kept as a last
    odd bit, so the one rounding to 53 bits (int to float, half to even) sees the exact value's
    side of every halfway point (rounding to odd).
    """
    if q < 0:
        raise ValueError(f"square root of a negative number {q}")
    if q == 0:
        return 0.0
    n, d = q.numerator, q.denominator
    k = max(0, (112 - n.bit_length() + d.bit_length()) // 2 + 1)  # n 4^k / d >= 2^110
    scaled = (n << 2 * k)
    root = math.isqrt(scaled // d)  # floor(sqrt(floor(x))) == floor(sqrt(x))
    if root * root * d != scaled:  # sqrt(q) 2^k is not an integer: mark it above ``root``
        root, k = 2 * root + 1, k + 1
    return math.ldexp(float(root), -k)


@dataclass(frozen=True)
class Moments:
    """Exact per-channel mean and variance of values in [0, 1] units (population variance)."""

    mean: tuple[Fraction, ...]
    var: tuple[Fraction, ...]

    def rounded(self) -> ChannelStats:
        return ChannelStats(tuple(float(m) for m in self.mean),
                            tuple(sqrt_float(v) for v in self.var))


def raw_moments(sums: PixelSums) -> Moments:
    """Mean and variance of u = level / 255 per channel: (n S2 - S1^2) / (255 n)^2."""
    n = sums.n_images * sums.pixels
    s1 = [_total(sums.s1[:, c]) for c in range(sums.s1.shape[1])]
    s2 = [_total(sums.s2[:, c]) for c in range(sums.s2.shape[1])]
    return Moments(tuple(Fraction(a, LEVELS * n) for a in s1),
                   tuple(Fraction(n * b - a * a, (LEVELS * n) ** 2) for a, b in zip(s1, s2)))


def _constant_after(sums: PixelSums, shift: tuple[float, ...], scale: tuple[float, ...]
                    ) -> ChannelStats:
    """(u - shift) / scale with per-channel constants: the raw moments, shifted and scaled.

    A scale of 0 (``dataset`` on a channel that is one level throughout) gives NaN, as the
    model's own division does.
    """
    raw = raw_moments(sums)
    means, stds = [], []
    for m, v, a, b in zip(raw.mean, raw.var, map(Fraction, shift), map(Fraction, scale)):
        means.append(float((m - a) / b) if b else math.nan)
        stds.append(sqrt_float(v / (b * b)) if b else math.nan)
    return ChannelStats(tuple(means), tuple(stds))


def _instance_after(sums: PixelSums, shift, scale) -> ChannelStats:
    """Each image and channel standardized by its own mean and sqrt(var + eps).

    The normalized values of one image's channel have mean 0 exactly and variance
    r = var / (var + eps), a rational per image: in levels, V / (V + eps (255 P)^2) with
    V = P S2 - S1^2. The channel's variance is the mean of r over the images. The N ratios have
    N different denominators, so they are summed in fixed point (``RATIO_BITS`` below the unit,
    floors): the exact mean lies in [S, S + N) / (2^bits N), and the bits double until both ends
    round to the same float, which is then the exact value's.
    """
    eps = Fraction(INSTANCE_EPS)
    v = sums.pixels * sums.s2.astype(object) - sums.s1.astype(object) ** 2  # N x C, exact
    num = v * eps.denominator
    den = num + eps.numerator * (LEVELS * sums.pixels) ** 2
    n, stds, bits = sums.n_images, [], RATIO_BITS
    for c in range(v.shape[1]):
        while True:
            floor_sum = int(((num[:, c] << bits) // den[:, c]).sum())
            low, high = (sqrt_float(Fraction(s, n << bits)) for s in (floor_sum, floor_sum + n))
            if low == high:
                break
            bits *= 2
        stds.append(low)
    return ChannelStats((0.0,) * len(stds), tuple(stds))


def _minmax_after(sums: PixelSums, shift, scale) -> ChannelStats:
    """Each image mapped by its own darkest level lo and span max(hi - lo, MINMAX_MIN_SPAN).

    In levels, y = (level - lo) / w with w = 255 * span; per image and channel
    sum y = (S1 - P lo) / w and sum y^2 = (S2 - 2 lo S1 + P lo^2) / w^2. Images are grouped by
    their range hi - lo (at most 256 values), so the sums are over at most 256 fractions.
    """
    p, lo = sums.pixels, sums.lo[:, None]
    first = sums.s1 - p * lo  # N x C, int64: at most P * 255 each
    second = sums.s2 - 2 * lo * sums.s1 + p * lo * lo  # at most P * 255^2 each
    ranges = sums.hi - sums.lo
    min_width = LEVELS * Fraction(MINMAX_MIN_SPAN)
    n = sums.n_images * p
    means, variances = [], []
    for c in range(first.shape[1]):
        m = q = Fraction(0)
        for r in np.unique(ranges):
            w = max(Fraction(int(r)), min_width)
            sel = ranges == r
            m += Fraction(_total(first[sel, c])) / w
            q += Fraction(_total(second[sel, c])) / (w * w)
        means.append(m / n)
        variances.append(q / n - (m / n) ** 2)
    return Moments(tuple(means), tuple(variances)).rounded()


# How each kind of fit's statistics are computed exactly (normalizations.Norm.fit -> rule): a new
# kind of setting needs its rule here.
AFTER: dict[Callable, Callable[[PixelSums, tuple, tuple], ChannelStats]] = {
    constant_fit: _constant_after,
    instance_fit: _instance_after,
    minmax_fit: _minmax_after,
}


def channel_stats(images: np.ndarray, chunk: int = CHUNK) -> ChannelStats:
    """Per-channel mean and std of uint8 N x H x W x C images, in [0, 1] units."""
    return raw_moments(pixel_sums(images, chunk)).rounded()


def after_norm(sums: PixelSums, norm: Norm, stats: ChannelStats) -> ChannelStats:
    """Per-channel mean and std of the images after ``norm`` bound to ``stats``."""
    rule = AFTER.get(norm.fit)
    if rule is None:
        raise ConfigError(f"no exact statistics for a setting fitted by {norm.fit.__name__}; "
                          f"add its rule to normbench.stats.AFTER (rules for: "
                          f"{', '.join(f.__name__ for f in AFTER)})")
    bound = norm.bind(stats)
    return rule(sums, bound.mean, bound.std)


def normalized_stats(images: np.ndarray, norm: Norm, stats: ChannelStats,
                     chunk: int = CHUNK) -> ChannelStats:
    """Per-channel mean and std of the (test-time) images as the model sees them after ``norm``."""
    return after_norm(pixel_sums(images, chunk), norm, stats)


def stats_table(images: np.ndarray) -> dict:
    """The stats stage's record: raw channel stats plus the stats after every normalization."""
    sums = pixel_sums(images)
    raw = raw_moments(sums).rounded()
    after = {name: after_norm(sums, NORMALIZATIONS[name], raw) for name in NORMALIZATIONS}
    return {
        "n_images": int(len(images)),
        "image_size": [int(images.shape[1]), int(images.shape[2])],
        "mean": list(raw.mean),
        "std": list(raw.std),
        "after": {k: {"mean": list(v.mean), "std": list(v.std)} for k, v in after.items()},
    }


def read_channel_stats(record: dict, fix: str = "") -> ChannelStats:
    """The per-channel mean and std of a record of :func:`stats_table`; ``fix`` ends the error
    for a record without them (where it came from, how to rebuild it)."""
    try:
        return ChannelStats(tuple(record["mean"]), tuple(record["std"]))
    except (KeyError, TypeError):  # a key missing, or not a JSON object or list where expected
        raise ConfigError(f"dataset statistics without a per-channel mean and std{fix}") from None
