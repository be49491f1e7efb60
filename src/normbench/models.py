"""The model registry: torchvision architectures, their classifier head, and the layers we watch.

Architectures stay exactly torchvision's (ImageNet weights only fit the original shapes); only the
last linear layer is replaced for the target dataset's class count. One small network of the
project's own, ``smallcnn``, has no ImageNet weights: it trains in seconds on a CPU, for a quick
look at a setting and for the tests of the pipeline's machinery.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torchvision
from torch import nn

from normbench.registry import ConfigError, Registry
from normbench.weights import fetch, weights_entry


def default_linear_init(layer: nn.Linear) -> None:
    """PyTorch's own nn.Linear init (already drawn), which torchvision's ResNets keep."""


def densenet_head_init(layer: nn.Linear) -> None:
    """torchvision's DenseNet: PyTorch's weight init (already drawn), bias 0."""
    nn.init.zeros_(layer.bias)


def small_normal_head_init(layer: nn.Linear) -> None:
    """torchvision's VGG and MobileNetV2: weights N(0, 0.01), bias 0."""
    nn.init.normal_(layer.weight, 0, 0.01)
    nn.init.zeros_(layer.bias)


class SmallCNN(nn.Module):
    """Three 3x3 conv blocks (16, 32, 64 channels, BatchNorm, ReLU), global average pooling and a
    linear head: about 24k weights, ~200 times fewer than resnet18 (measured on the embedded data:
    a one-epoch cell of 48 images trains in about a second on one CPU thread)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))

        self.features = nn.Sequential(block(3, 16), nn.MaxPool2d(2), block(16, 32),
                                      nn.MaxPool2d(2), block(32, 64),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


@dataclass(frozen=True)
class ModelSpec:
    head: str  # dotted path of the final nn.Linear
    watched: tuple[str, str]  # first conv, one deeper conv: the weight-distribution layers
    head_init: Callable[[nn.Linear], None] = default_linear_init  # as torchvision inits it
    # The project's own architecture; None: torchvision's of the registry name, with its
    # ImageNet weights available.
    own: Callable[[], nn.Module] | None = None


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
        "smallcnn": ModelSpec("fc", ("features.0.0", "features.4.0"), own=SmallCNN),
    },
)

# Where the starting weights come from: the run's seed, torchvision's ImageNet-1k release, or this
# pipeline's own pretraining (normbench.pretrain, the start@<model> stage).
WEIGHTS = Registry("weights", {"scratch": "random initialisation",
                               "imagenet": "torchvision's ImageNet-1k weights",
                               "pretrained": "this pipeline's own pretraining"})


def pooling_matrix(n_out: int, n_in: int, like: torch.Tensor) -> torch.Tensor:
    """The n_out x n_in matrix of adaptive average pooling along one axis, on ``like``'s device.

    Row i averages input indices floor(i * n_in / n_out) .. ceil((i + 1) * n_in / n_out) - 1:
    exactly PyTorch's adaptive pooling bins (they overlap, or repeat an index, where n_in does
    not divide into n_out).
    """
    i = torch.arange(n_out, device=like.device)
    start = i * n_in // n_out
    stop = ((i + 1) * n_in + n_out - 1) // n_out  # ceil in integers
    j = torch.arange(n_in, device=like.device)
    inside = (j >= start[:, None]) & (j < stop[:, None])
    return inside.to(like.dtype) / (stop - start).to(like.dtype)[:, None]


class MatmulAdaptiveAvgPool2d(nn.Module):
    """nn.AdaptiveAvgPool2d computed as two matrix products: ``rows @ x @ cols.T``.

    Why: CUDA's adaptive_avg_pool2d backward adds gradients with atomics, so it has no
    deterministic kernel, and vgg16 at 32 px reaches it (its 1 x 1 feature map is pooled to
    7 x 7). A matmul's backward is a matmul, deterministic under the cells' deterministic mode.
    The same numbers as PyTorch's pooling up to float rounding (under bf16 autocast the matrices
    are bf16: exact for vgg16's weights 1 and 1/2 at 32 and 64 px); the cost is negligible
    (pooling matrices of at most 7 x 7 here). No parameters, so state dicts and ImageNet weights
    are unchanged.
    """

    def __init__(self, output_size: int | tuple[int | None, int | None]) -> None:
        super().__init__()
        self.output_size = (output_size, output_size) if isinstance(output_size, int) \
            else tuple(output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        h_out, w_out = (n or size for n, size in zip(self.output_size, (h, w)))  # None: keep
        return pooling_matrix(h_out, h, x) @ x @ pooling_matrix(w_out, w, x).T

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


def deterministic_pooling(model: nn.Module) -> nn.Module:
    """Swap every nn.AdaptiveAvgPool2d with an output larger than 1 x 1 for the matmul version.

    A 1 x 1 output is a mean (deterministic already), as in the resnets, densenets and
    mobilenet_v2; among MODELS only vgg16's ``avgpool`` (7 x 7) is swapped.
    """
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size not in (1, (1, 1)):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr,
                    MatmulAdaptiveAvgPool2d(module.output_size))
    return model


def replace_head(model: nn.Module, head: str, num_classes: int,
                 init: Callable[[nn.Linear], None] = default_linear_init) -> nn.Module:
    """Swap the final linear layer at dotted path ``head`` for a fresh one with ``num_classes``,
    initialised by ``init`` (the architecture's own, ``ModelSpec.head_init``)."""
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
    Adaptive average pooling is swapped for a deterministic equal (``deterministic_pooling``).
    """
    spec = MODELS[name]
    entry = None
    if weights == "pretrained":
        raise ConfigError("weights: pretrained starts from the start@ stage's checkpoint "
                          "(normbench.pretrain.build_from_start), not from build_model")
    if WEIGHTS.check(weights) == "imagenet":
        entry = weights_entry(name, version)
        fetch(entry, mirror)
    model = (spec.own() if spec.own is not None
             else torchvision.models.get_model(name, weights=entry))
    return replace_head(deterministic_pooling(model), spec.head, num_classes, spec.head_init)
