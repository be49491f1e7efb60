"""Per-channel statistics of a train split, before and after each normalization (Table 1)."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from normbench.normalizations import NORMALIZATIONS, ChannelStats, Norm, Normalizer

# Images per chunk: bounds memory (a 64 x 64 chunk of 4096 images is 200 MB as float32).
CHUNK = 4096


def _chunks(images: np.ndarray, chunk: int) -> Iterator[np.ndarray]:
    for start in range(0, len(images), chunk):
        yield images[start:start + chunk]


def _moments(batches: Iterator[torch.Tensor]) -> ChannelStats:
    """Mean and population std per channel of NCHW float batches, accumulated in float64."""
    total = sq = None
    count = 0
    for x in batches:
        x = x.double()
        s, q = x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3))
        total, sq = (s, q) if total is None else (total + s, sq + q)
        count += x.shape[0] * x.shape[2] * x.shape[3]
    if total is None:
        raise ValueError("no images to compute statistics on")
    mean = total / count
    var = (sq / count - mean * mean).clamp_min(0)
    return ChannelStats(tuple(mean.tolist()), tuple(var.sqrt().tolist()))


def _as_nchw(chunk: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(chunk)).permute(0, 3, 1, 2)  # a copy: chunks may be read-only maps


def channel_stats(images: np.ndarray, chunk: int = CHUNK) -> ChannelStats:
    """Per-channel mean and std of uint8 N x H x W x C images, in [0, 1] units."""
    return _moments(_as_nchw(c).double() / 255.0 for c in _chunks(images, chunk))


def normalized_stats(images: np.ndarray, norm: Norm, stats: ChannelStats,
                     chunk: int = CHUNK) -> ChannelStats:
    """Per-channel mean and std of the (test-time) images as the model sees them after ``norm``."""
    normalizer = Normalizer(norm, stats)
    return _moments(normalizer(_as_nchw(c)) for c in _chunks(images, chunk))


def stats_table(images: np.ndarray) -> dict:
    """The stats stage's record: raw channel stats plus the stats after every normalization."""
    raw = channel_stats(images)
    after = {name: normalized_stats(images, NORMALIZATIONS[name], raw) for name in NORMALIZATIONS}
    return {
        "n_images": int(len(images)),
        "image_size": [int(images.shape[1]), int(images.shape[2])],
        "mean": list(raw.mean),
        "std": list(raw.std),
        "after": {k: {"mean": list(v.mean), "std": list(v.std)} for k, v in after.items()},
    }


def read_channel_stats(record: dict) -> ChannelStats:
    return ChannelStats(tuple(record["mean"]), tuple(record["std"]))
