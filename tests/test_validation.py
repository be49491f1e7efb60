"""The validation split: stratified, disjoint from what is trained on, the same for every seed
and norm, and the only thing an epoch is chosen on."""

import numpy as np
import pytest
import torch

import normbench.train
from normbench.arrays import Arrays, Split
from normbench.config import TrainConfig
from normbench.datasets import build_dataset
from normbench.normalizations import NORMALIZATIONS, ChannelStats
from normbench.registry import ConfigError
from normbench.train import seed_everything, train_cell
from normbench.validation import SPLIT_SEED, choose_epoch, hold_out, split_indices

STATS = ChannelStats((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
CFG = TrainConfig(epochs=3, batch_size=16, eval_batch_size=64, lr=0.03, weight_decay=0.0,
                  optimizer="adam", scheduler="cosine", pad=0, flip=False, val_fraction=0.25)


@pytest.fixture(scope="module")
def digits() -> Arrays:
    return build_dataset("digits", {"test_fraction": 0.2, "seed": 0})  # 1437 train images


def test_the_split_is_stratified_and_holds_out_the_fraction(digits):
    labels = digits.train.labels
    kept, held = split_indices(labels, 0.1)
    assert len(held) == 144  # ceil(0.1 x 1437)
    per_class, held_per_class = np.bincount(labels), np.bincount(labels[held])
    # Every class in proportion, to within one image: an unstratified draw of 144 misses by
    # several images in some class (its spread is about 3.6 images per class here).
    assert np.all(np.abs(held_per_class - 0.1 * per_class) <= 1), held_per_class
    assert held_per_class.sum() == 144
    assert len(split_indices(np.arange(100) % 2, 0.07)[1]) == 7  # not 8: 0.07 x 100 > 7 in floats


def test_the_split_is_disjoint_and_covers_the_train_split(digits):
    kept, held = split_indices(digits.train.labels, 0.1)
    assert len(np.intersect1d(kept, held)) == 0
    assert np.array_equal(np.sort(np.concatenate([kept, held])), np.arange(1437))
    trained, val = hold_out(digits.train, 0.1)
    assert np.array_equal(val.images, digits.train.images[held])
    assert np.array_equal(trained.labels, digits.train.labels[kept])


def test_the_split_is_deterministic_and_ignores_every_global_generator(digits):
    seed_everything(1)
    np.random.seed(1)
    first = split_indices(digits.train.labels, 0.1)
    seed_everything(2)  # a cell of another seed has reseeded torch...
    np.random.seed(2)  # ...and numpy's global generator may have moved
    second = split_indices(digits.train.labels, 0.1)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    # The seed is the module's, not the caller's: another seed draws other images.
    from sklearn.model_selection import train_test_split
    other = train_test_split(np.arange(1437), test_size=144, stratify=digits.train.labels,
                             random_state=SPLIT_SEED + 1)[1]
    assert not np.array_equal(np.sort(other), first[1])


GOOD = dict(epochs=1, batch_size=8, eval_batch_size=8, lr=0.001, weight_decay=0.0,
            optimizer="adam", scheduler="none", pad=0, flip=False)


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, 0.0, "0.1", True, None])
def test_a_fraction_outside_zero_to_one_is_refused_with_the_range(fraction):
    with pytest.raises(ConfigError, match=r"train.val_fraction must be a number with "
                                          r"0 < train.val_fraction < 1 .*got"):
        split_indices(np.arange(10) % 2, fraction)


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
def test_the_params_check_refuses_a_fraction_outside_the_range(fraction):
    with pytest.raises(ConfigError, match=r"0 < train.val_fraction < 1 .*got"):
        TrainConfig.from_params({**GOOD, "val_fraction": fraction})
    assert TrainConfig.from_params({**GOOD, "val_fraction": 0.5}).val_fraction == 0.5


def test_a_fraction_too_small_for_every_class_names_the_fractions_that_work(digits):
    with pytest.raises(ConfigError, match=r"holds out 2 of 1437 train images.* each of the 10 "
                                          r"classes.*between 0.00696 and 0.993"):
        split_indices(digits.train.labels, 0.001)


def test_the_epoch_is_chosen_on_validation_the_earliest_of_a_tie():
    history = [{"epoch": 0, "val_acc": 0.9, "test_acc": 0.9},  # the untrained model: never
               {"epoch": 1, "val_acc": 0.5, "test_acc": 0.8},
               {"epoch": 2, "val_acc": 0.7, "test_acc": 0.3},
               {"epoch": 3, "val_acc": 0.7, "test_acc": 0.4}]
    assert choose_epoch(history) == 2


# --- in a training cell ---------------------------------------------------------------------

COLOURS = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0],
                    [0, 255, 255]])  # one class each: a tiny net tells them apart in an epoch


def colours(per_class: int, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(COLOURS)), per_class)
    noise = rng.normal(0, 10, (len(labels), 8, 8, 3))  # every image differs from every other
    images = COLOURS[labels][:, None, None, :] * 0.6 + 50 + noise
    return Split(images.clip(0, 255).astype(np.uint8), labels)


@pytest.fixture(scope="module")
def plain() -> Arrays:
    return Arrays(colours(20, 0), colours(5, 1), [str(c) for c in range(len(COLOURS))])


def run(arrays: Arrays, seed: int, norm: str = "dataset"):
    seed_everything(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, len(arrays.classes)))
    return train_cell(net, arrays, NORMALIZATIONS[norm], STATS, CFG, seed, torch.device("cpu"))


def test_a_cell_never_trains_on_a_validation_image_and_every_seed_and_norm_holds_out_the_same(
        plain, monkeypatch):
    trained = []
    real = normbench.train.train_epoch

    def spy(runner, opt, sched, split, *args):
        trained.append({bytes(image) for image in split.images.cpu().numpy()})
        return real(runner, opt, sched, split, *args)

    monkeypatch.setattr(normbench.train, "train_epoch", spy)
    fit, val = hold_out(plain.train, CFG.val_fraction)
    assert len(val.labels) == 30  # a quarter of 120, five of each class
    for seed, norm in ((3, "dataset"), (4, "dataset"), (3, "minmax")):
        trained.clear()
        run(plain, seed, norm)
        assert len(trained) == CFG.epochs
        # NCHW on the device, as the loop sees them: every kept image, none held out.
        assert all(epoch == {bytes(i) for i in fit.images.transpose(0, 3, 1, 2)}
                   for epoch in trained)
        assert not trained[0] & {bytes(i) for i in val.images.transpose(0, 3, 1, 2)}


def test_a_cell_chooses_its_best_epoch_on_validation_not_on_test(plain):
    """The test labels are shifted by one class: the better the model, the lower its test
    accuracy, so the epochs of the best validation and the best test accuracy part ways."""
    shifted = Split(plain.test.images, (plain.test.labels + 1) % len(plain.classes))
    result = run(Arrays(plain.train, shifted, plain.classes), seed=1)
    trained = result.history[1:]
    by_val = max(trained, key=lambda h: (h["val_acc"], -h["epoch"]))["epoch"]
    by_test = max(trained, key=lambda h: (h["test_acc"], -h["epoch"]))["epoch"]
    # Written with (val, test) accuracy (0.67, 0.17) at epoch 1, then (1.0, 0.0).
    assert by_val != by_test, trained  # else this test could not tell them apart
    assert result.best_epoch == by_val
    metrics = result.metrics()
    assert metrics["best_epoch"] == by_val
    assert metrics["best_val_acc"] == result.history[by_val]["val_acc"]
    # best_acc stays the original study's figure: the maximum of the test accuracy.
    assert metrics["best_acc"] == result.history[by_test]["test_acc"]
