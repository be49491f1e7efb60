"""The dataset registry and the one array format every dataset is converted to.

After the download stage a dataset is a folder of plain arrays: ``{split}_images.npy`` (uint8,
N x H x W x 3, RGB), ``{split}_labels.npy`` (int64, N) for the ``train`` and ``test`` splits, and
``classes.json`` (class names, index = label). Training never sees PIL, folders or pickles.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from normbench.config import check_block
from normbench.io import atomic_path
from normbench.registry import ConfigError, Registry

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8, N x H x W x 3
    labels: np.ndarray  # int64, N


@dataclass(frozen=True)
class Arrays:
    train: Split
    test: Split
    classes: list[str]

    def split(self, name: str) -> Split:
        return {"train": self.train, "test": self.test}[name]


def check_arrays(arrays: Arrays, where: str = "dataset") -> Arrays:
    """Raise ConfigError unless the arrays follow the uniform format."""
    for name in SPLITS:
        s = arrays.split(name)
        if s.images.dtype != np.uint8 or s.images.ndim != 4 or s.images.shape[-1] != 3:
            raise ConfigError(
                f"{where}: {name} images must be uint8 N x H x W x 3, "
                f"got {s.images.dtype} {s.images.shape}"
            )
        if s.labels.dtype != np.int64 or s.labels.shape != (len(s.images),):
            raise ConfigError(
                f"{where}: {name} labels must be int64 with one label per image, "
                f"got {s.labels.dtype} {s.labels.shape} for {len(s.images)} images"
            )
        if len(s.labels) and (s.labels.min() < 0 or s.labels.max() >= len(arrays.classes)):
            raise ConfigError(f"{where}: {name} labels fall outside 0..{len(arrays.classes) - 1}")
    return arrays


def save_arrays(arrays: Arrays, out_dir: Path) -> None:
    """Write the folder atomically: a failed run leaves either the old folder or none."""
    check_arrays(arrays)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for name in SPLITS:
            s = arrays.split(name)
            np.save(tmp / f"{name}_images.npy", s.images)
            np.save(tmp / f"{name}_labels.npy", s.labels)
        (tmp / "classes.json").write_text(json.dumps(arrays.classes, indent=1) + "\n")


def load_arrays(data_dir: Path, mmap: bool = False) -> Arrays:
    """Read a folder written by :func:`save_arrays`; a missing or damaged one says how to rebuild."""
    data_dir = Path(data_dir)
    rebuild = f"run `dvc repro download@{data_dir.name}` to (re)build it"
    mode = "r" if mmap else None
    try:
        splits = {
            name: Split(
                np.load(data_dir / f"{name}_images.npy", mmap_mode=mode),
                np.load(data_dir / f"{name}_labels.npy", mmap_mode=mode),
            )
            for name in SPLITS
        }
        classes = json.loads((data_dir / "classes.json").read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"dataset folder {data_dir} is missing {Path(e.filename).name}; {rebuild}")
    except (ValueError, OSError) as e:
        raise ConfigError(f"dataset folder {data_dir} is unreadable ({e}); {rebuild}")
    return check_arrays(Arrays(splits["train"], splits["test"], classes), where=str(data_dir))


# ---------------------------------------------------------------------------------------------
# Embedded datasets: they ship with the code (or with scikit-learn), so the pipeline runs offline.


def _upsample(gray: np.ndarray, size: int) -> np.ndarray:
    """N x h x w floats in [0, 1] -> N x size x size x 3 uint8 (bilinear, grey copied to RGB)."""
    x = torch.from_numpy(gray).float().unsqueeze(1)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    u8 = (x.clamp(0, 1) * 255).round().to(torch.uint8).squeeze(1).numpy()
    return np.repeat(u8[..., None], 3, axis=-1)


def _stratified(images: np.ndarray, labels: np.ndarray, classes: list[str], test_fraction: float,
                seed: int) -> Arrays:
    tr_x, te_x, tr_y, te_y = train_test_split(
        images, labels, test_size=test_fraction, stratify=labels, random_state=seed
    )
    return Arrays(Split(tr_x, tr_y.astype(np.int64)), Split(te_x, te_y.astype(np.int64)), classes)


def make_digits(test_fraction: float, seed: int, image_size: int = 32) -> Arrays:
    """scikit-learn's 1797 handwritten 8 x 8 digits (values 0..16), as RGB images."""
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


@dataclass(frozen=True)
class DatasetSpec:
    """How to build one dataset from its params (the ``data.<name>`` block of params.yaml)."""

    build: Callable[..., Arrays]
    params: Mapping[str, type]  # the keys the builder takes, with their types
    description: str


DATASETS: Registry[DatasetSpec] = Registry(
    "dataset",
    {
        "digits": DatasetSpec(
            make_digits,
            {"test_fraction": float, "seed": int},
            "scikit-learn's handwritten digits, 10 classes, 8 x 8 upsampled to 32 x 32",
        ),
        "shapes": DatasetSpec(
            make_shapes,
            {"images_per_class": int, "test_fraction": float, "seed": int},
            "procedural coloured shapes, 6 classes, 32 x 32, statistics far from ImageNet's",
        ),
    },
)


def build_dataset(name: str, params: Mapping[str, Any]) -> Arrays:
    """Build the named dataset from its params block, checking keys and types first."""
    spec = DATASETS[name]
    kwargs = check_block(params, spec.params, where=f"data.{name}")
    return spec.build(**kwargs)
