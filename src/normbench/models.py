"""The model registry: torchvision architectures, their classifier head, and the layers we watch.

Architectures stay exactly torchvision's (ImageNet weights only fit the original shapes); only the
last linear layer is replaced for the target dataset's class count. One small network of the
project's own, ``smallcnn``, has no ImageNet weights: it trains in seconds on a CPU, for a quick
look at a setting and for the tests of the pipeline's machinery.

torch and torchvision are imported where a model is built, not here: the stages and commands that
only read the registry (check, report, a study's checks) then start without them (about 3
CPU-seconds a process, most of a check's run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from normbench.registry import ConfigError, Registry

if TYPE_CHECKING:
    from torch import nn


def default_linear_init(layer: nn.Linear) -> None:
    """PyTorch's own nn.Linear init (already drawn), which torchvision's ResNets keep."""


def densenet_head_init(layer: nn.Linear) -> None:
    """torchvision's DenseNet: PyTorch's weight init (already drawn), bias 0."""
    from torch import nn

    nn.init.zeros_(layer.bias)


def small_normal_head_init(layer: nn.Linear) -> None:
    """torchvision's VGG and MobileNetV2: weights N(0, 0.01), bias 0."""
    from torch import nn

    nn.init.normal_(layer.weight, 0, 0.01)
    nn.init.zeros_(layer.bias)


@dataclass(frozen=True)
class ModelSpec:
    head: str  # dotted path of the final nn.Linear
    watched: tuple[str, str]  # first conv, one deeper conv: the weight-distribution layers
    head_init: Callable[[nn.Linear], None] = default_linear_init  # as torchvision inits it
    # The project's own architecture, a class in normbench.nets; None: torchvision's of the
    # registry name, with its ImageNet weights available.
    own: str | None = None


MODELS: Registry[ModelSpec] = Registry(
    "model",
    {
        "resnet18": ModelSpec("fc", ("conv1", "layer4.1.conv2")),
        "resnet50": ModelSpec("fc", ("conv1", "layer4.2.conv3")),
        "densenet121": ModelSpec(
            "classifier", ("features.conv0", "features.denseblock4.denselayer16.conv2"),
            densenet_head_init,
        ),
        "densenet161": ModelSpec(
            "classifier", ("features.conv0", "features.denseblock4.denselayer24.conv2"),
            densenet_head_init,
        ),
        "vgg16": ModelSpec("classifier.6", ("features.0", "features.28"), small_normal_head_init),
        "mobilenet_v2": ModelSpec("classifier.1", ("features.0.0", "features.18.0"),
                                  small_normal_head_init),
        "smallcnn": ModelSpec("fc", ("features.0.0", "features.4.0"), own="SmallCNN"),
    },
)

# Where the starting weights come from: the run's seed, torchvision's ImageNet-1k release, or this
# pipeline's own pretraining (normbench.pretrain, the start@<model> stage).
WEIGHTS = Registry("weights", {"scratch": "random initialisation",
                               "imagenet": "torchvision's ImageNet-1k weights",
                               "pretrained": "this pipeline's own pretraining"})


def replace_head(model: nn.Module, head: str, num_classes: int,
                 init: Callable[[nn.Linear], None] = default_linear_init) -> nn.Module:
    """Swap the final linear layer at dotted path ``head`` for a fresh one with ``num_classes``,
    initialised by ``init`` (the architecture's own, ``ModelSpec.head_init``)."""
    from torch import nn

    parent_path, _, attr = head.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old = getattr(parent, attr)
    if not isinstance(old, nn.Linear):
        raise TypeError(f"{head} is a {type(old).__name__}, expected the classifier nn.Linear")
    new = nn.Linear(old.in_features, num_classes)
    init(new)
    setattr(parent, attr, new)
    return model


def build_model(name: str, num_classes: int, weights: str = "scratch",
                version: str | None = None, mirror: str | None = None) -> nn.Module:
    """torchvision's ``name`` with ``weights`` (scratch | imagenet) and a ``num_classes`` head.

    ``version`` (e.g. IMAGENET1K_V1) and ``mirror`` (a base URL) matter for imagenet only;
    ``pretrained`` starts are built by normbench.pretrain.build_from_start.
    ImageNet weights are verified in $TORCH_HOME (downloaded there first if missing) and then
    loaded by torchvision's own builder, which also converts old key names where it must.
    Adaptive average pooling is swapped for a deterministic equal (``nets.deterministic_pooling``).
    """
    from normbench import nets
    from normbench.weights import fetch, weights_entry

    spec = MODELS[name]
    entry = None
    if weights == "pretrained":
        raise ConfigError("weights: pretrained starts from the start@ stage's checkpoint "
                          "(normbench.pretrain.build_from_start), not from build_model")
    if WEIGHTS.check(weights) == "imagenet":
        entry = weights_entry(name, version)
        fetch(entry, mirror)
    if spec.own is not None:
        model = getattr(nets, spec.own)()
    else:
        import torchvision  # about 1.5 CPU-seconds more than torch alone: only where it builds

        model = torchvision.models.get_model(name, weights=entry)
    return replace_head(nets.deterministic_pooling(model), spec.head, num_classes, spec.head_init)
