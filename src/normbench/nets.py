"""The project's own modules, apart from the registry so that reading it needs no torch:
``smallcnn``'s network, and a deterministic equal of adaptive average pooling that
``normbench.models.build_model`` swaps into every model it builds.
"""

from __future__ import annotations

import torch
from torch import nn


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
