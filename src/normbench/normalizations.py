"""The normalization registry: the input settings under test.

Every setting is a pure function ``(uint8 batch NCHW, channel stats) -> float32 batch``. It runs on
whatever device the batch is on, as the last preprocessing step (after crop and flip), so the
training loop never leaves the tensor world.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from normbench.registry import Registry

# ImageNet-1k train statistics in [0, 1] units, as torchvision's pretrained weights expect them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Added to the per-image variance (in [0, 1]^2 units) so a flat channel maps to 0, not to NaN;
# the same epsilon torch's instance norm uses.
INSTANCE_EPS = 1e-5


@dataclass(frozen=True)
class ChannelStats:
    """Per-channel mean and std of a dataset's train split, in [0, 1] pixel units."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels 0..255 -> float32 in [0, 1]."""
    return x.float().div_(255.0)


def _standardize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (to_unit(x) - m) / s


def dataset_norm(x: torch.Tensor, stats: ChannelStats) -> torch.Tensor:
    """Standardize with the target dataset's own train-split statistics."""
    return _standardize(x, stats.mean, stats.std)


def imagenet_norm(x: torch.Tensor, stats: ChannelStats) -> torch.Tensor:
    """Standardize with the ImageNet statistics the pretrained weights were trained with."""
    return _standardize(x, IMAGENET_MEAN, IMAGENET_STD)


def instance_norm(x: torch.Tensor, stats: ChannelStats) -> torch.Tensor:
    """Each image, each channel to mean 0 and std 1 over its own pixels."""
    return F.instance_norm(to_unit(x), eps=INSTANCE_EPS)


def minmax_norm(x: torch.Tensor, stats: ChannelStats) -> torch.Tensor:
    """Each image to [0, 1] by its own darkest and brightest value, over all channels.

    One min and max per image (not per channel) keeps the image's colour balance. A flat image
    has no range and maps to 0.
    """
    u = to_unit(x)
    lo = u.amin(dim=(1, 2, 3), keepdim=True)
    span = u.amax(dim=(1, 2, 3), keepdim=True) - lo
    return (u - lo) / span.clamp_min(1.0 / 255.0)


def no_norm(x: torch.Tensor, stats: ChannelStats) -> torch.Tensor:
    """Pixels / 255 only."""
    return to_unit(x)


Normalization = Callable[[torch.Tensor, ChannelStats], torch.Tensor]

NORMALIZATIONS: Registry[Normalization] = Registry(
    "norm",
    {
        "dataset": dataset_norm,
        "imagenet": imagenet_norm,
        "instance": instance_norm,
        "minmax": minmax_norm,
        "none": no_norm,
    },
)
