"""The validation split: what every choice is made on, so that the test set is never chosen on.

Each train cell holds out ``train.val_fraction`` of its dataset's train split, stratified by
class, and trains on the rest. The split is drawn from a fixed seed (``SPLIT_SEED``), not the
cell's: every seed, norm and weights of a dataset holds out the same images, so settings are
compared on one validation set, as they are on one test set. A choice of hyperparameters
(``per_model``, ``bench/model_budget.py``) or of an epoch (``choose_epoch``) reads validation
accuracy; the test set gives final numbers only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from normbench.arrays import Split
from normbench.registry import ConfigError

SPLIT_SEED = 0  # the same held-out images for every cell of a dataset (not the cell's seed)


def check_fraction(value: Any, key: str = "train.val_fraction") -> float:
    """``value`` if it is a share strictly between 0 and 1, else an error naming the range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ConfigError(f"{key} must be a number with 0 < {key} < 1 (the share of the train "
                          f"split held out for validation, e.g. 0.1), got {value!r}")
    return float(value)


def split_indices(labels: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(trained on, held out): sorted indices into ``labels``, stratified by class.

    scikit-learn draws it, as it draws the embedded datasets' test splits: ceil(fraction x N)
    images held out, each class in proportion, from ``SPLIT_SEED`` alone.
    """
    from sklearn.model_selection import train_test_split  # ~1 CPU-s: only where a split is made

    fraction = check_fraction(fraction)
    n, k = len(labels), len(np.unique(labels))
    held = int(np.ceil(round(fraction * n, 9)))  # 0.07 x 100 is 7.000000000000001: 7, not 8
    if held < k or n - held < k:
        raise ConfigError(
            f"train.val_fraction {fraction:g} holds out {held} of {n} train images, but a "
            f"stratified split needs at least one image of each of the {k} classes on both "
            f"sides; choose a fraction between {k / n:.3g} and {1 - k / n:.3g}")
    try:
        kept, out = train_test_split(np.arange(n), test_size=held, stratify=labels,
                                     random_state=SPLIT_SEED)
    except ValueError as e:  # e.g. a class with a single image
        raise ConfigError(f"cannot hold out a stratified validation split: {e}") from None
    return np.sort(kept), np.sort(out)


def hold_out(split: Split, fraction: float) -> tuple[Split, Split]:
    """(what is trained on, the validation split) of a dataset's train split."""
    kept, out = split_indices(split.labels, fraction)
    return (Split(split.images[kept], split.labels[kept]),
            Split(split.images[out], split.labels[out]))


def choose_epoch(history: list[dict]) -> int:
    """The trained epoch (1 or later) of the highest validation accuracy, the earliest on a tie.

    The only epoch choice a cell makes; the test accuracy plays no part in it.
    """
    trained = [h for h in history if h["epoch"] >= 1]
    return max(trained, key=lambda h: (h["val_acc"], -h["epoch"]))["epoch"]
