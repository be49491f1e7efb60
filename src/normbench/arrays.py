"""The one array format every dataset is converted to.

After the download stage a dataset is a folder of plain arrays: ``{split}_images.npy`` (uint8,
N x H x W x 3, RGB), ``{split}_labels.npy`` (int64, N) for the ``train`` and ``test`` splits, and
``classes.json`` (class names, index = label). Training never sees PIL, folders or pickles.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from normbench.io import atomic_path
from normbench.registry import ConfigError

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
