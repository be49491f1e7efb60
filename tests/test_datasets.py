import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from normbench.arrays import Arrays, Split, load_arrays, save_arrays
from normbench.datasets import DATASETS, build_dataset, make_shapes
from normbench.normalizations import IMAGENET_MEAN, IMAGENET_STD
from normbench.registry import ConfigError
from normbench.stats import channel_stats


def test_digits_are_rgb_32px_with_a_stratified_split():
    a = build_dataset("digits", {"test_fraction": 0.2, "seed": 0})
    assert a.train.images.shape == (1437, 32, 32, 3) and a.test.images.shape == (360, 32, 32, 3)
    assert a.train.images.dtype == np.uint8 and a.train.labels.dtype == np.int64
    assert a.classes == [str(i) for i in range(10)]
    assert np.array_equal(a.train.images[..., 0], a.train.images[..., 2])  # grey in RGB
    test_share = np.bincount(a.test.labels) / np.bincount(np.concatenate([a.train.labels,
                                                                          a.test.labels]))
    assert np.all(np.abs(test_share - 0.2) < 0.02)  # every class split 80/20
    assert a.train.images.max() == 255 and a.train.images.min() == 0


def test_shapes_are_seeded_balanced_and_far_from_imagenet():
    a = build_dataset("shapes", {"images_per_class": 500, "test_fraction": 0.2, "seed": 0})
    assert len(a.classes) >= 5 and len(a.train.labels) + len(a.test.labels) >= 3000
    assert np.all(np.bincount(a.train.labels) == 400)
    b = make_shapes(500, 0.2, 0)
    assert np.array_equal(a.train.images, b.train.images)  # same seed, same bytes
    assert not np.array_equal(a.train.images, make_shapes(500, 0.2, 1).train.images)
    s = channel_stats(a.train.images)
    shift = (np.array(s.mean) - IMAGENET_MEAN) / IMAGENET_STD
    assert np.abs(shift).max() > 1.0  # at least one channel more than one ImageNet std away
    assert max(s.std) < 0.5 * min(IMAGENET_STD) * 1.5


def test_shapes_classes_differ_in_shape_not_colour():
    a = make_shapes(40, 0.25, 3)
    per_class = [a.train.images[a.train.labels == k].mean(axis=(0, 1, 2)) for k in range(6)]
    colour_spread = np.ptp(np.array(per_class), axis=0)
    assert colour_spread.max() < 25  # grey levels: class colours overlap
    masks = [(a.train.images[a.train.labels == k][..., 1] > 120).mean() for k in range(6)]
    assert len({round(m, 2) for m in masks}) > 3  # but covered area differs with the shape


def test_unknown_dataset_and_bad_params():
    with pytest.raises(ConfigError, match="unknown dataset 'cifar'; valid choices: digits, shapes"):
        build_dataset("cifar", {})
    with pytest.raises(ConfigError, match="data.shapes: unknown keys \\[\\], missing keys"):
        build_dataset("shapes", {"test_fraction": 0.2, "seed": 0})
    with pytest.raises(ConfigError, match="data.digits.seed must be int"):
        build_dataset("digits", {"test_fraction": 0.2, "seed": "0"})


def tiny_arrays() -> Arrays:
    rng = np.random.default_rng(0)
    split = lambda n: Split(rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8),  # noqa: E731
                            rng.integers(0, 2, n).astype(np.int64))
    return Arrays(split(6), split(3), ["a", "b"])


def test_save_load_roundtrip_and_format(tmp_path):
    save_arrays(tiny_arrays(), tmp_path / "tiny")
    assert sorted(p.name for p in (tmp_path / "tiny").iterdir()) == [
        "classes.json", "test_images.npy", "test_labels.npy", "train_images.npy",
        "train_labels.npy"]
    back = load_arrays(tmp_path / "tiny")
    assert np.array_equal(back.train.images, tiny_arrays().train.images)
    assert back.classes == ["a", "b"]
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]  # no temporary left behind


def test_failed_save_keeps_the_old_folder(tmp_path):
    save_arrays(tiny_arrays(), tmp_path / "tiny")
    bad = tiny_arrays()
    bad = Arrays(Split(bad.train.images.astype(np.float32), bad.train.labels), bad.test, bad.classes)
    with pytest.raises(ConfigError, match="uint8"):
        save_arrays(bad, tmp_path / "tiny")
    assert load_arrays(tmp_path / "tiny").train.images.dtype == np.uint8


def test_missing_or_damaged_folder_says_how_to_rebuild(tmp_path):
    with pytest.raises(ConfigError, match=r"missing train_images.npy; run `dvc repro "
                                          r"download@nothere`"):
        load_arrays(tmp_path / "nothere")
    save_arrays(tiny_arrays(), tmp_path / "tiny")
    (tmp_path / "tiny" / "test_labels.npy").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="unreadable"):
        load_arrays(tmp_path / "tiny")
    (tmp_path / "tiny" / "classes.json").write_text(json.dumps(["only-one"]))
    save_arrays(tiny_arrays(), tmp_path / "tiny")
    assert load_arrays(tmp_path / "tiny").classes == ["a", "b"]


def test_registry_lists_embedded_datasets():
    assert DATASETS.names()[:2] == ["digits", "shapes"]


def test_the_dataset_registry_imports_neither_torch_nor_torchvision():
    """The check and download stages start without them (torchvision's import alone costs
    about 1.5 CPU-s, bench/stage_imports.py); only the functions that need them import them."""
    code = ("import sys; import normbench.datasets, normbench.sources; "
            "print(sorted(m for m in ('torch', 'torchvision', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, check=True)
    assert out.stdout.strip() == "[]"
