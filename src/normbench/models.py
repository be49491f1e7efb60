"""The model registry: torchvision architectures, their classifier head, and the layers we watch.

Architectures stay exactly torchvision's (ImageNet weights only fit the original shapes); only the
last linear layer is replaced for the target dataset's class count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torchvision
from torch import nn

from normbench.registry import Registry
from normbench.weights import fetch, weights_entry


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

# Where the starting weights come from: the run's seed, or torchvision's ImageNet-1k release
# (its version is the `weights_version` param).
WEIGHTS = Registry("weights", {"scratch": "random initialisation",
                               "imagenet": "torchvision's ImageNet-1k weights"})


def replace_head(model: nn.Module, head: str, num_classes: int) -> nn.Module:
    """Swap the final linear layer at dotted path ``head`` for a fresh one with ``num_classes``."""
    parent_path, _, attr = head.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old = getattr(parent, attr)
    if not isinstance(old, nn.Linear):
        raise TypeError(f"{head} is a {type(old).__name__}, expected the classifier nn.Linear")
    setattr(parent, attr, nn.Linear(old.in_features, num_classes))
    return model


def build_model(name: str, num_classes: int, weights: str = "scratch",
                version: str | None = None, mirror: str | None = None) -> nn.Module:
    """torchvision's ``name`` with ``weights`` (scratch | imagenet) and a ``num_classes`` head.

    ``version`` (e.g. IMAGENET1K_V1) and ``mirror`` (a base URL) matter for imagenet only.
    ImageNet weights are verified in $TORCH_HOME (downloaded there first if missing) and then
    loaded by torchvision's own builder, which also converts old key names where it must.
    """
    spec = MODELS[name]
    entry = None
    if WEIGHTS.check(weights) == "imagenet":
        entry = weights_entry(name, version)
        fetch(entry, mirror)
    model = torchvision.models.get_model(name, weights=entry)
    return replace_head(model, spec.head, num_classes)
