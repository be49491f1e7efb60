"""Where a model's train cells start from: scratch, ImageNet, or the pipeline's own pretraining.

The ``start@<model>`` stage writes one start file per model, ``starts/<model>.pt``, which every
train cell of that model depends on. What it holds depends on ``weights``:

- ``scratch``: nothing to load; the cell initialises the model from its seed.
- ``imagenet``: torchvision's release for that model (``start.imagenet.version``, or a version
  per model in ``start.imagenet.versions``), verified in $TORCH_HOME by the stage, in seconds.
- ``pretrained``: a checkpoint trained here, on a source dataset of the registry with its own
  norm, seed and training params (``start.pretrained``), by the same training loop as a cell.

DVC has no conditional dependencies; this is how a cell depends on pretraining only when it
starts from it: the start stage reads only the params block of the weights kind in use
(``start.${weights}``), so editing pretraining re-runs nothing with ``weights: scratch``, and
with ``scratch`` or ``imagenet`` the stage trains nothing.

A start file is self-describing: the kind, and for pretraining the weights, source, its classes,
the normalization and channel statistics used, the config and library versions.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from normbench.config import SpeedConfig, TrainConfig, check_block, check_type
from normbench.datasets import DATASETS, build_dataset
from normbench.normalizations import NORMALIZATIONS, ChannelStats, Norm
from normbench.registry import ConfigError

if TYPE_CHECKING:  # imported where a start is made or used: checking one needs no torch
    import torch
    from torch import nn

# "As the weights were pretrained": resolved from the start file (see ``resolve_norm``).
PRETRAINING = "pretraining"
NORM_CHOICES = [*NORMALIZATIONS.names(), PRETRAINING]


def check_norm(name: Any) -> str:
    """A ``norm`` value: a registered normalization or ``pretraining``."""
    if name == PRETRAINING or not isinstance(name, str):  # a wrong type: the registry says so
        return name if name == PRETRAINING else NORMALIZATIONS.check(name)
    if name not in NORMALIZATIONS:
        raise ConfigError(f"unknown norm {name!r}; valid choices: {', '.join(NORM_CHOICES)}")
    return name


@dataclass(frozen=True)
class PretrainConfig:
    """The ``start.pretrained`` block: the pipeline's own pretraining of every model."""

    source: str  # a dataset of the registry, trained on with all its classes
    data: dict  # that dataset's build params (as data.<name>)
    norm: str  # the normalization used in pretraining (not ``pretraining``)
    seed: int  # model initialisation and batch order of the pretraining
    train: TrainConfig

    @classmethod
    def from_params(cls, block: Any) -> "PretrainConfig":
        raw = check_block(block, {"source": str, "data": dict, "norm": str, "seed": int,
                                  "train": dict}, "start.pretrained")
        source = DATASETS.check(raw["source"])
        check_block(raw["data"], DATASETS[source].params, f"start.pretrained.data ({source})")
        norm = NORMALIZATIONS.check(raw["norm"])
        return cls(source, raw["data"], norm, raw["seed"], TrainConfig.from_params(raw["train"]))


def imagenet_version(block: Any, model: str) -> str:
    """The ImageNet release of ``model`` from the ``start.imagenet`` block."""
    raw = check_block(block, {"version": str, "versions": dict}, "start.imagenet")
    return check_type(raw["versions"].get(model, raw["version"]), str,
                      f"start.imagenet.versions.{model}")


def check_start(params: Mapping[str, Any], models: list[str]) -> str:
    """The weights kind, with its params block checked for every model and the norm checked
    against it: seconds, not hours."""
    from normbench.models import WEIGHTS
    from normbench.weights import weights_entry

    kind = WEIGHTS.check(params.get("weights"))
    block = (params.get("start") or {}).get(kind)
    if kind == "scratch":
        check_block(block, {}, "start.scratch")
    elif kind == "imagenet":
        for model in models:
            weights_entry(model, imagenet_version(block, model))
    else:
        PretrainConfig.from_params(block)
    if check_norm(params.get("norm")) == PRETRAINING and kind == "scratch":
        raise ConfigError("norm: pretraining normalizes as the weights were pretrained, but "
                          "weights is scratch; use weights: imagenet or pretrained, or another "
                          f"norm ({', '.join(NORMALIZATIONS)})")
    return kind


# --- making a start -----------------------------------------------------------------------

def pretrain(model_name: str, cfg: PretrainConfig, device: torch.device,
             speed: SpeedConfig, on_epoch=lambda record: None, per_model: Any = None) -> dict:
    """Train ``model_name`` on the source dataset: the self-describing start of its cells.

    ``per_model`` (params.yaml's) overrides the pretraining's train keys for this model, as it
    does a cell's: a model's own budget applies to both.
    """
    import torch
    import torchvision

    from normbench.models import build_model
    from normbench.stats import channel_stats
    from normbench.train import seed_everything, train_cell

    arrays = build_dataset(cfg.source, cfg.data)
    stats = channel_stats(arrays.train.images)
    seed_everything(cfg.seed)
    model = build_model(model_name, len(arrays.classes))
    train = cfg.train.for_model(per_model or {}, model_name)
    result = train_cell(model, arrays, NORMALIZATIONS[cfg.norm], stats, train, cfg.seed,
                        device, on_epoch=on_epoch, speed=speed)
    return {
        "kind": "pretrained", "model": model_name, "state_dict": result.final_state,
        "source": cfg.source, "source_data": cfg.data, "classes": arrays.classes,
        "norm": cfg.norm, "channel_stats": {"mean": list(stats.mean), "std": list(stats.std)},
        "seed": cfg.seed, "train": dataclasses.asdict(train), "metrics": result.metrics(),
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__},
    }


def make_start(kind: str, model: str, block: Any, mirror: str | None, device: torch.device,
               speed: SpeedConfig, on_epoch=lambda record: None, per_model: Any = None) -> dict:
    """The start file's contents for ``kind`` (see the module docstring)."""
    if kind == "scratch":
        return {"kind": "scratch", "model": model}
    if kind == "imagenet":
        from normbench.weights import fetch, weights_entry

        version = imagenet_version(block, model)
        fetch(weights_entry(model, version), mirror)  # verified now, not after hours of data
        return {"kind": "imagenet", "model": model, "version": version}
    return pretrain(model, PretrainConfig.from_params(block), device, speed, on_epoch, per_model)


# --- using a start ------------------------------------------------------------------------

def build_from_start(start: dict, num_classes: int, mirror: str | None = None) -> nn.Module:
    """The model a train cell starts from, with a fresh ``num_classes`` head where it must."""
    from normbench.models import MODELS, build_model, replace_head

    name = start["model"]
    if start["kind"] == "scratch":
        return build_model(name, num_classes)
    if start["kind"] == "imagenet":
        return build_model(name, num_classes, "imagenet", start["version"], mirror)
    model = build_model(name, len(start["classes"]))
    model.load_state_dict(start["state_dict"])
    return replace_head(model, MODELS[name].head, num_classes, MODELS[name].head_init)


def resolve_norm(name: str, start: dict, target: ChannelStats) -> tuple[Norm, ChannelStats, str]:
    """The normalization a cell applies, the statistics it binds, and its description.

    ``pretraining`` means "as the weights were pretrained": ImageNet's mean and std for
    ImageNet weights, the source's norm with the source's statistics for the pipeline's own.
    """
    if name != PRETRAINING:
        return NORMALIZATIONS[name], target, name
    if start["kind"] == "scratch":
        raise ConfigError("norm: pretraining needs pretrained weights, but weights is scratch; "
                          "use weights: imagenet or pretrained, or another norm")
    if start["kind"] == "imagenet":
        return NORMALIZATIONS["imagenet"], target, "pretraining (imagenet)"
    recorded = start["channel_stats"]
    stats = ChannelStats(tuple(recorded["mean"]), tuple(recorded["std"]))
    return (NORMALIZATIONS[start["norm"]], stats,
            f"pretraining ({start['norm']} on {start['source']})")


def load_start(path: str, model: str) -> dict:
    """A start file written by the start stage, checked to belong to ``model``."""
    import torch

    try:
        start = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError) as e:
        raise ConfigError(f"start file {path} is missing or unreadable ({e}); run "
                          f"`dvc repro start@{model}`") from None
    if start.get("model") != model:
        raise ConfigError(f"start file {path} is for {start.get('model')}, not {model}; run "
                          f"`dvc repro start@{model}`")
    return start

