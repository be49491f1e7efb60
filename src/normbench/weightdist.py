"""Weight distributions of the watched layers, before training and after every epoch.

For each watched layer (the model registry names a first conv and a deeper conv) a cell keeps:
exact summary numbers over the full tensor (mean, std, percentiles, excess kurtosis, and the
relative drift ||W_t - W_0|| / ||W_0||), plus the values themselves, all of them for small layers
and a fixed seeded subsample for big ones, for density plots.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.stats

from normbench.registry import ConfigError

if TYPE_CHECKING:  # the report reads these records without torch (seconds of CPU)
    from torch import nn

ROLES = ("first_conv", "deep_conv")  # the same column names for every model
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
MAX_SAMPLES = 4096  # values kept per layer and epoch; smaller layers are kept whole
SAMPLE_SEED = 0  # the subsample is the same positions in every cell and every run


def sample_indices(numel: int, k: int = MAX_SAMPLES, seed: int = SAMPLE_SEED) -> np.ndarray:
    """Sorted flat positions to keep: all of them, or ``k`` drawn without replacement."""
    if numel <= k:
        return np.arange(numel)
    return np.sort(np.random.default_rng(seed).choice(numel, size=k, replace=False))


def summarize(w: np.ndarray, w0: np.ndarray) -> dict[str, float]:
    """Exact statistics of a flat float64 weight tensor, and its drift from ``w0``."""
    stats = {"mean": float(w.mean()), "std": float(w.std()),
             "kurtosis": float(scipy.stats.kurtosis(w)),  # excess: 0 for a Gaussian
             "drift": float(np.linalg.norm(w - w0) / np.linalg.norm(w0))}
    stats.update({f"p{q}": float(v) for q, v in zip(PERCENTILES, np.percentile(w, PERCENTILES))})
    return stats


def _flat(model: nn.Module, layer: str) -> np.ndarray:
    return model.get_submodule(layer).weight.detach().cpu().double().flatten().numpy()


class WeightRecorder:
    """Snapshots of the watched layers; ``record`` is called at epoch 0 and after every epoch."""

    def __init__(self, model: nn.Module, layers: tuple[str, ...]) -> None:
        self.layers = dict(zip(ROLES, layers))
        self.initial = {role: _flat(model, layer) for role, layer in self.layers.items()}
        self.indices = {role: sample_indices(w.size) for role, w in self.initial.items()}
        self.samples: dict[str, list[np.ndarray]] = {role: [] for role in ROLES}
        self.summaries: list[dict] = []

    def record(self, model: nn.Module, epoch: int) -> dict[str, float]:
        """Take the snapshot; return the drifts, for the epoch's curves (``drift_<role>``)."""
        entry: dict = {"epoch": epoch}
        for role, layer in self.layers.items():
            w = _flat(model, layer)
            self.samples[role].append(w[self.indices[role]].astype(np.float32))
            entry[role] = summarize(w, self.initial[role])
        self.summaries.append(entry)
        return {f"drift_{role}": entry[role]["drift"] for role in ROLES}

    def save(self, out_dir: Path) -> None:
        """``summary.json`` (exact numbers per epoch) and ``samples.npz`` (epochs x values)."""
        out_dir.mkdir(parents=True)
        meta = {role: {"layer": layer, "numel": int(self.initial[role].size),
                       "kept": int(self.indices[role].size)} for role, layer in self.layers.items()}
        (out_dir / "summary.json").write_text(
            json.dumps({"layers": meta, "epochs": self.summaries}, indent=1) + "\n")
        arrays = {f"{role}_samples": np.stack(self.samples[role]) for role in ROLES}
        arrays.update({f"{role}_indices": self.indices[role] for role in ROLES})
        np.savez_compressed(out_dir / "samples.npz", **arrays)


def load(out_dir: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The summary and the samples (role -> epochs x values) written by :meth:`save`."""
    out_dir = Path(out_dir)
    try:
        summary = json.loads((out_dir / "summary.json").read_text())
        with np.load(out_dir / "samples.npz") as z:
            samples = {role: z[f"{role}_samples"] for role in ROLES}
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"weight snapshots in {out_dir} are missing or unreadable ({e}); "
                          f"run `dvc repro train@{out_dir.name}`") from None
    return summary, samples
