"""The model registry: torchvision architectures, their classifier head, and the layers we watch.

Architectures stay exactly torchvision's (ImageNet weights only fit the original shapes); only the
last linear layer is replaced for the target dataset's class count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchvision
from torch import nn

from normbench.registry import ConfigError, Registry


@dataclass(frozen=True)
class ModelSpec:
    head: str  # dotted path of the final nn.Linear
    watched: tuple[str, str]  # first conv, one deeper conv: the weight-distribution layers


MODELS: Registry[ModelSpec] = Registry(
    "model",
    {
        "resnet18": ModelSpec("fc", ("conv1", "layer4.1.conv2")),
        "resnet50": ModelSpec("fc", ("conv1", "layer4.2.conv3")),
        "densenet121": ModelSpec(
            "classifier", ("features.conv0", "features.denseblock4.denselayer16.conv2")
        ),
        "densenet161": ModelSpec(
            "classifier", ("features.conv0", "features.denseblock4.denselayer24.conv2")
        ),
        "vgg16": ModelSpec("classifier.6", ("features.0", "features.28")),
        "mobilenet_v2": ModelSpec("classifier.1", ("features.0.0", "features.18.0")),
    },
)

# Where the starting weights come from. ``imagenet`` takes torchvision's ImageNet-1k release.
WEIGHTS = Registry("weights", {"scratch": None, "imagenet": "IMAGENET1K_V1"})


def replace_head(model: nn.Module, head: str, num_classes: int) -> nn.Module:
    """Swap the final linear layer at dotted path ``head`` for a fresh one with ``num_classes``."""
    parent_path, _, attr = head.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old = getattr(parent, attr)
    if not isinstance(old, nn.Linear):
        raise TypeError(f"{head} is a {type(old).__name__}, expected the classifier nn.Linear")
    setattr(parent, attr, nn.Linear(old.in_features, num_classes))
    return model


def imagenet_state_dict(name: str, version: str) -> dict[str, torch.Tensor]:
    """ImageNet weights through torchvision's weights API and its cache ($TORCH_HOME)."""
    weights = torchvision.models.get_model_weights(name)[version]
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except OSError as e:  # URLError is an OSError: no network and not in the cache
        cache = torch.hub.get_dir() + "/checkpoints/" + weights.url.rsplit("/", 1)[-1]
        raise ConfigError(
            f"cannot load ImageNet weights for {name} ({e}); place {weights.url} at {cache}, "
            "or use weights: scratch"
        ) from e


def build_model(name: str, num_classes: int, weights: str = "scratch") -> nn.Module:
    """A torchvision ``name`` with ``weights`` (scratch | imagenet) and a ``num_classes`` head."""
    spec = MODELS[name]
    version = WEIGHTS[weights]
    model = torchvision.models.get_model(name, weights=None)
    if version is not None:
        model.load_state_dict(imagenet_state_dict(name, version))
    return replace_head(model, spec.head, num_classes)
