"""The normalization registry: the input settings under test.

Every setting is an affine map of the pixels in [0, 1], ``(u - shift) / scale``, and differs only
in where ``shift`` and ``scale`` come from:

- ``dataset``, ``imagenet``, ``none``: per-channel constants (the target's train-split statistics,
  ImageNet's, or 0 and 1);
- ``instance``, ``minmax``: statistics of each image itself.

Splitting the map into *fit* (the statistics) and *apply* lets training take a per-image
statistic from the image as it is stored, before the random crop pads a black border into it:
the border is then normalized like any black pixel of that image, and the image's own pixels get
exactly the numbers they get at test time, where there is no border.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from normbench.registry import Registry

# torch is imported where a batch is normalized: the stages that only read the registry (check,
# stats, report) start without it (importing it costs about 2 CPU-s a process).
if TYPE_CHECKING:
    import torch

# ImageNet-1k train statistics in [0, 1] units, as torchvision's pretrained weights expect them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Added to the per-image variance (in [0, 1]^2 units) so a flat channel maps to 0, not to NaN;
# the same epsilon torch's instance norm uses.
INSTANCE_EPS = 1e-5
# The smallest range min-max divides by (one grey level, in [0, 1] units): a flat image maps to 0.
MINMAX_MIN_SPAN = 1.0 / 255.0

Affine = tuple["torch.Tensor", "torch.Tensor"]  # (shift, scale), each broadcast over N x C x H x W


@dataclass(frozen=True)
class ChannelStats:
    """Per-channel mean and std of a dataset's train split, in [0, 1] pixel units."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels 0..255 -> float32 in [0, 1]."""
    return x.float().div_(255.0)


def constant_fit(u: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> Affine:
    """Standardize with the bound per-channel constants, whatever the image."""
    return mean, std


def instance_fit(u: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> Affine:
    """Each image, each channel to mean 0 and std 1 over its own pixels (population std)."""
    import torch

    var, mu = torch.var_mean(u, dim=(2, 3), correction=0, keepdim=True)
    return mu, (var + INSTANCE_EPS).sqrt()


def minmax_fit(u: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> Affine:
    """Each image to [0, 1] by its own darkest and brightest value, over all channels.

    One min and max per image (not per channel) keeps the image's colour balance.
    """
    lo = u.amin(dim=(1, 2, 3), keepdim=True)
    span = u.amax(dim=(1, 2, 3), keepdim=True) - lo
    return lo, span.clamp_min(MINMAX_MIN_SPAN)


@dataclass(frozen=True)
class Norm:
    """One setting: which constants it binds, and how it fits shift and scale to a batch."""

    fit: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Affine]  # (unit batch, mean, std)
    bind: Callable[[ChannelStats], ChannelStats]  # the target's statistics -> the constants used
    doc: str


def _target(stats: ChannelStats) -> ChannelStats:
    return stats


def _imagenet(stats: ChannelStats) -> ChannelStats:
    return ChannelStats(IMAGENET_MEAN, IMAGENET_STD)


def _identity(stats: ChannelStats) -> ChannelStats:
    return ChannelStats((0.0,) * len(stats.mean), (1.0,) * len(stats.std))


NORMALIZATIONS: Registry[Norm] = Registry(
    "norm",
    {
        "dataset": Norm(constant_fit, _target, "the target dataset's train-split mean and std"),
        "imagenet": Norm(constant_fit, _imagenet, "ImageNet's mean and std"),
        "instance": Norm(instance_fit, _target, "each image's own per-channel mean and std"),
        "minmax": Norm(minmax_fit, _target, "each image's own min and max, over all channels"),
        "none": Norm(constant_fit, _identity, "pixels / 255 only"),
    },
)


class Normalizer:
    """A setting bound to its statistics on one device, built once per cell.

    The constants live on the device from the start, so no batch waits for a host copy.
    """

    def __init__(self, norm: Norm, stats: ChannelStats, device: torch.device | str = "cpu"):
        import torch

        bound = norm.bind(stats)
        self.fit = norm.fit
        self.mean = torch.tensor(bound.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(bound.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def affine(self, x: torch.Tensor) -> Affine:
        """Shift and scale for the uint8 batch ``x`` (per image where the setting is)."""
        return self.fit(to_unit(x), self.mean, self.std)

    @staticmethod
    def apply(x: torch.Tensor, affine: Affine) -> torch.Tensor:
        """``(x / 255 - shift) / scale`` for a uint8 batch (float32 out)."""
        shift, scale = affine
        return (to_unit(x) - shift) / scale

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The batch normalized by its own statistics: what every test image gets."""
        return self.apply(x, self.affine(x))


def normalize(x: torch.Tensor, norm: Norm, stats: ChannelStats) -> torch.Tensor:
    """One-off use: ``norm`` bound to ``stats`` on ``x``'s device, applied to ``x``."""
    return Normalizer(norm, stats, x.device)(x)
