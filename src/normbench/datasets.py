"""The dataset registry: every dataset by name, and how to build it in the uniform array format.

The embedded datasets ship with the code (or with scikit-learn), so the default pipeline runs
offline; the real datasets of TooTouch/Normalization-Test are fetched and verified by
``normbench.sources``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from normbench.arrays import Arrays, Split, check_arrays
from normbench.config import check_block
from normbench.registry import Registry
from normbench.sources import Source, load_cifar, load_svhn, load_tiny_imagenet


def _upsample(gray: np.ndarray, size: int) -> np.ndarray:
    """N x h x w floats in [0, 1] -> N x size x size x 3 uint8 (bilinear, grey copied to RGB)."""
    import torch  # here, not at the top: a stage that never upsamples (download@shapes) starts
    import torch.nn.functional as F  # without torch, 3.5 CPU-s sooner (bench/stage_imports.py)

    x = torch.from_numpy(gray).float().unsqueeze(1)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    u8 = (x.clamp(0, 1) * 255).round().to(torch.uint8).squeeze(1).numpy()
    return np.repeat(u8[..., None], 3, axis=-1)


def _stratified(images: np.ndarray, labels: np.ndarray, classes: list[str], test_fraction: float,
                seed: int) -> Arrays:
    from sklearn.model_selection import train_test_split

    tr_x, te_x, tr_y, te_y = train_test_split(
        images, labels, test_size=test_fraction, stratify=labels, random_state=seed
    )
    return Arrays(Split(tr_x, tr_y.astype(np.int64)), Split(te_x, te_y.astype(np.int64)), classes)


def make_digits(test_fraction: float, seed: int, image_size: int = 32) -> Arrays:
    """scikit-learn's 1797 handwritten 8 x 8 digits (values 0..16), as RGB images."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = _upsample(digits.images / 16.0, image_size)
    classes = [str(c) for c in digits.target_names]
    return _stratified(images, digits.target, classes, test_fraction, seed)


SHAPES = ("disk", "ring", "square", "diamond", "triangle", "cross")

# Colours in [0, 1] RGB. A warm magenta background with an orange shape: channel means and stds
# far from ImageNet's, so the choice of normalization visibly matters.
_SHAPES_BACKGROUND = np.array([0.78, 0.28, 0.52])
_SHAPES_FOREGROUND = np.array([0.97, 0.62, 0.30])


def _shape_masks(kind: np.ndarray, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Boolean N x H x W masks; dx, dy are pixel offsets from each shape's centre, r its radius."""
    ax, ay = np.abs(dx), np.abs(dy)
    d2 = dx**2 + dy**2
    masks = {
        "disk": d2 <= r**2,
        "ring": (d2 <= r**2) & (d2 >= (0.55 * r) ** 2),
        "square": np.maximum(ax, ay) <= 0.8 * r,
        "diamond": ax + ay <= r,
        "triangle": (dy >= -r) & (dy <= 0.7 * r) & (ax <= 0.6 * (dy + r)),
        "cross": ((ax <= 0.3 * r) & (ay <= r)) | ((ay <= 0.3 * r) & (ax <= r)),
    }
    out = np.zeros(dx.shape, dtype=bool)
    for k, name in enumerate(SHAPES):
        out |= masks[name] & (kind == k)[:, None, None]
    return out


def make_shapes(images_per_class: int, test_fraction: float, seed: int,
                image_size: int = 32) -> Arrays:
    """A seeded procedural set: one of six shapes at a random place, size and colour, with noise."""
    rng = np.random.default_rng(seed)
    n = images_per_class * len(SHAPES)
    labels = np.repeat(np.arange(len(SHAPES)), images_per_class)
    s = image_size
    centre = rng.uniform(0.3 * s, 0.7 * s, size=(n, 2))
    radius = rng.uniform(0.16 * s, 0.3 * s, size=(n, 1, 1))
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float64)
    dx = xx[None] - centre[:, 0, None, None]
    dy = yy[None] - centre[:, 1, None, None]
    mask = _shape_masks(labels, dx, dy, radius)[..., None]
    background = _SHAPES_BACKGROUND + rng.normal(0, 0.06, size=(n, 1, 1, 3))
    foreground = _SHAPES_FOREGROUND + rng.normal(0, 0.06, size=(n, 1, 1, 3))
    pixels = np.where(mask, foreground, background) + rng.normal(0, 0.04, size=(n, s, s, 3))
    images = (np.clip(pixels, 0, 1) * 255).round().astype(np.uint8)
    return _stratified(images, labels, list(SHAPES), test_fraction, seed)


GRATING_ANGLES = 8  # orientations, 22.5 degrees apart
GRATING_PERIODS = (4.0, 9.0)  # wavelengths in pixels at 32 px: fine and coarse stripes


def grating_classes() -> list[str]:
    return [f"{round(180 * a / GRATING_ANGLES)}deg-{int(p)}px"
            for p in GRATING_PERIODS for a in range(GRATING_ANGLES)]


def make_gratings(images_per_class: int, test_fraction: float, seed: int,
                  image_size: int = 32) -> Arrays:
    """A seeded pretraining source: oriented stripes (16 classes = 8 angles x 2 wavelengths).

    Each image blends two random colours by a sinusoid of its class's angle and wavelength, with
    a random phase, a random soft disk of a third colour on top, and pixel noise. Telling its
    classes apart needs oriented edge and frequency detectors, the features that digit strokes
    and shape outlines are made of, while no image looks like a digit or a shape.
    """
    rng = np.random.default_rng(seed)
    classes = grating_classes()
    n = images_per_class * len(classes)
    labels = np.repeat(np.arange(len(classes)), images_per_class)
    angle = (labels % GRATING_ANGLES) * np.pi / GRATING_ANGLES + rng.normal(0, 0.05, n)
    period = np.array(GRATING_PERIODS)[labels // GRATING_ANGLES] * image_size / 32
    yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float64)
    along = (np.cos(angle)[:, None, None] * xx + np.sin(angle)[:, None, None] * yy)
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * along / period[:, None, None] + phase)  # 0..1
    a, b, c = (rng.uniform(0, 1, (n, 1, 1, 3)) for _ in range(3))
    pixels = a + (b - a) * wave[..., None]
    centre = rng.uniform(0, image_size, (n, 2))
    radius = rng.uniform(0.1, 0.3, (n, 1, 1)) * image_size
    d2 = (xx - centre[:, 0, None, None]) ** 2 + (yy - centre[:, 1, None, None]) ** 2
    blob = np.exp(-d2 / (2 * radius**2))[..., None] * rng.uniform(0, 0.8, (n, 1, 1, 1))
    pixels = pixels * (1 - blob) + c * blob + rng.normal(0, 0.04, pixels.shape)
    images = (np.clip(pixels, 0, 1) * 255).round().astype(np.uint8)
    return _stratified(images, labels, classes, test_fraction, seed)


def _real(loaded: tuple[Split, Split, list[str]]) -> Arrays:
    train, test, classes = loaded
    return Arrays(train, test, classes)


@dataclass(frozen=True)
class DatasetSpec:
    """How to build one dataset: ``build(source, **params)`` with the ``data.<name>`` params."""

    build: Callable[..., Arrays]
    params: Mapping[str, type]  # the keys of data.<name>, with their types
    description: str


DATASETS: Registry[DatasetSpec] = Registry(
    "dataset",
    {
        "digits": DatasetSpec(
            lambda source, **p: make_digits(**p),
            {"test_fraction": float, "seed": int},
            "scikit-learn's handwritten digits, 10 classes, 8 x 8 upsampled to 32 x 32",
        ),
        "shapes": DatasetSpec(
            lambda source, **p: make_shapes(**p),
            {"images_per_class": int, "test_fraction": float, "seed": int},
            "procedural coloured shapes, 6 classes, 32 x 32, statistics far from ImageNet's",
        ),
        "gratings": DatasetSpec(
            lambda source, **p: make_gratings(**p),
            {"images_per_class": int, "test_fraction": float, "seed": int},
            "procedural oriented stripes, 16 classes, 32 x 32: the embedded pretraining source",
        ),
        "cifar10": DatasetSpec(
            lambda source: _real(load_cifar("CIFAR10", "cifar10", source)),
            {}, "CIFAR-10, 50,000 + 10,000 images, 10 classes, 32 x 32",
        ),
        "cifar100": DatasetSpec(
            lambda source: _real(load_cifar("CIFAR100", "cifar100", source)),
            {}, "CIFAR-100, 50,000 + 10,000 images, 100 classes, 32 x 32",
        ),
        "svhn": DatasetSpec(
            lambda source: _real(load_svhn(source)),
            {}, "SVHN cropped digits, 73,257 + 26,032 images, 10 classes, 32 x 32",
        ),
        "tiny_imagenet_200": DatasetSpec(
            lambda source: _real(load_tiny_imagenet(source)),
            {}, "Tiny-ImageNet-200, 100,000 + 10,000 (val) images, 200 classes, 64 x 64",
        ),
    },
)


def build_dataset(name: str, params: Mapping[str, Any], source: Source | None = None) -> Arrays:
    """Build the named dataset from its params block, checking keys and types first."""
    spec = DATASETS[name]
    kwargs = check_block(params, spec.params, where=f"data.{name}")
    return check_arrays(spec.build(source or Source.from_params({}), **kwargs), where=name)
