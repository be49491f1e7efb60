"""The matmul adaptive pooling equals torch's, forward and backward, and vgg16 uses it."""

import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from normbench.models import build_model
from normbench.nets import MatmulAdaptiveAvgPool2d, pooling_matrix

sizes = st.integers(1, 16)
outputs = st.integers(1, 8)


@settings(max_examples=200, deadline=None)
@given(h=sizes, w=sizes, h_out=outputs, w_out=outputs, seed=st.integers(0, 2**31 - 1))
def test_matmul_pooling_equals_torch_forward_and_backward(h, w, h_out, w_out, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, h, w, dtype=torch.float64, generator=gen)
    grad = torch.randn(2, 3, h_out, w_out, dtype=torch.float64, generator=gen)
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = MatmulAdaptiveAvgPool2d((h_out, w_out))(ours)
    expected = nn.AdaptiveAvgPool2d((h_out, w_out))(theirs)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    out.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-12, atol=1e-12)


def test_pooling_matrix_rows_are_torchs_bins():
    # 5 inputs into 3 bins: [0, 2), [1, 4), [3, 5) (PyTorch's floor/ceil bins overlap).
    m = pooling_matrix(3, 5, torch.zeros((), dtype=torch.float64))
    expected = torch.tensor([[1 / 2, 1 / 2, 0, 0, 0], [0, 1 / 3, 1 / 3, 1 / 3, 0],
                             [0, 0, 0, 1 / 2, 1 / 2]], dtype=torch.float64)
    torch.testing.assert_close(m, expected)
    # An int output size and None (keep the input's size) as nn.AdaptiveAvgPool2d takes them.
    x = torch.randn(1, 2, 4, 6, dtype=torch.float64)
    for size in (3, (None, 2), (2, None)):
        torch.testing.assert_close(MatmulAdaptiveAvgPool2d(size)(x), nn.AdaptiveAvgPool2d(size)(x))


def test_vgg16_pools_by_matmul_and_the_others_keep_their_mean():
    vgg = build_model("vgg16", 10)
    assert isinstance(vgg.avgpool, MatmulAdaptiveAvgPool2d) and vgg.avgpool.output_size == (7, 7)
    assert not any(isinstance(m, nn.AdaptiveAvgPool2d) for m in vgg.modules())
    assert isinstance(build_model("resnet18", 10).avgpool, nn.AdaptiveAvgPool2d)  # 1 x 1: a mean
    # No parameters or buffers: the state dict (ImageNet weights' keys) stays torchvision's.
    assert vgg.avgpool.state_dict() == {}
