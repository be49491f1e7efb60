"""The experiment grid: which train cells (model x dataset x seed) params.yaml asks for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from normbench.config import TrainConfig, check_type, require
from normbench.registry import ConfigError, Registry

# The dataset and model registries are imported where names are checked, not with this module:
# their modules import torch, torchvision and scikit-learn (seconds of CPU in every process that
# starts), and a process that only names cells (the report stage) needs none of them.


def cell_name(model: str, dataset: str, seed: int) -> str:
    """The one name of a train cell: stage ``train@<cell>``, ``metrics/<cell>.json``, ..."""
    return f"{model}-{dataset}-{seed}"


def _names(params: Mapping[str, Any], key: str, registry: Registry) -> list[str]:
    values = require(params, key)
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{key} must be a non-empty list; valid names: {', '.join(registry)}")
    return [registry.check(v) for v in values]


@dataclass(frozen=True)
class Grid:
    models: list[str]
    datasets: list[str]
    seeds: list[int]

    @classmethod
    def from_params(cls, params: Mapping[str, Any], check_names: bool = True) -> "Grid":
        """The grid of ``params``, its model and dataset names checked against the registries
        unless ``check_names`` is false: for a stage downstream of the check stage, which has
        checked them already."""
        seeds = require(params, "seeds")
        if not isinstance(seeds, list) or not seeds:
            raise ConfigError("seeds must be a non-empty list of integers")
        if check_names:
            from normbench.datasets import DATASETS
            from normbench.models import MODELS

            models = _names(params, "models", MODELS)
            datasets = _names(params, "datasets", DATASETS)
        else:
            models, datasets = list(require(params, "models")), list(require(params, "datasets"))
        return cls(models, datasets, [check_type(s, int, "seeds[]") for s in seeds])

    def cells(self) -> list[tuple[str, str, int]]:
        return [(m, d, s) for m in self.models for d in self.datasets for s in self.seeds]


def check_grid(params: Mapping[str, Any]) -> Grid:
    """The grid, with a ``data.<name>`` block for each dataset: what the check stage verifies.

    DVC resolves ``data.${item}`` of a download stage before running it, so without this check a
    typo in ``datasets`` surfaces as "Parameters 'data.<typo>' are missing".
    """
    grid = Grid.from_params(params)
    for dataset in grid.datasets:
        require(params, f"data.{dataset}")
    check_per_model(params, grid.models)
    return grid


def check_per_model(params: Mapping[str, Any], models: list[str]) -> None:
    """``per_model`` names models of the registry, each with valid train keys, and has an entry
    for each of ``models``: a cell depends on ``per_model.<its model>`` (dvc.yaml)."""
    from normbench.models import MODELS

    per_model = require(params, "per_model")
    shared = TrainConfig.from_params(require(params, "train"))
    for model in per_model if isinstance(per_model, Mapping) else [None]:
        if model is not None:
            MODELS.check(model)
        shared.for_model(per_model, model)
    for model in models:
        if model not in per_model:
            raise ConfigError(f"per_model has no entry for {model}; add `{model}: {{}}` under "
                              "per_model in params.yaml (the shared train block)")
