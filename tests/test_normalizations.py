import pytest
import torch

from normbench.normalizations import (IMAGENET_MEAN, IMAGENET_STD, NORMALIZATIONS, ChannelStats)
from normbench.registry import ConfigError

STATS = ChannelStats(mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))


def pixels(*rgb_rows: list[list[int]]) -> torch.Tensor:
    """A 1 x 3 x H x W uint8 image from three channel planes."""
    return torch.tensor([rgb_rows], dtype=torch.uint8)


def test_registry_names_and_unknown_name():
    assert NORMALIZATIONS.names() == ["dataset", "imagenet", "instance", "minmax", "none"]
    with pytest.raises(ConfigError, match="unknown norm 'zscore'; valid choices: dataset, imagenet"):
        NORMALIZATIONS["zscore"]


def test_dataset_norm_uses_the_given_stats():
    x = pixels([[255, 0]], [[51, 102]], [[0, 255]])
    out = NORMALIZATIONS["dataset"](x, STATS)
    # (255/255 - 0.5) / 0.5 = 1, (0 - 0.5) / 0.5 = -1; (0.2 - 0.25) / 0.25 = -0.2, ...
    expected = torch.tensor([[[[1.0, -1.0]], [[-0.2, 0.6]], [[0.0, 1.0]]]])
    torch.testing.assert_close(out, expected)


def test_imagenet_norm_ignores_dataset_stats():
    x = pixels([[0]], [[255]], [[128]])
    out = NORMALIZATIONS["imagenet"](x, STATS).flatten()
    expected = [(0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], (1 - IMAGENET_MEAN[1]) / IMAGENET_STD[1],
                (128 / 255 - IMAGENET_MEAN[2]) / IMAGENET_STD[2]]
    torch.testing.assert_close(out, torch.tensor(expected))


def test_instance_norm_is_per_image_per_channel():
    # Red: pixels 0 and 255 -> mean 0.5, population std 0.5 -> -1, +1 (up to the 1e-5 epsilon).
    # Green is flat -> 0, not NaN.
    x = pixels([[0, 255]], [[7, 7]], [[0, 51]])
    out = NORMALIZATIONS["instance"](x, STATS)
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([-1.0, 1.0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(out[0, 1, 0], torch.tensor([0.0, 0.0]))
    torch.testing.assert_close(out[0, 2, 0], torch.tensor([-1.0, 1.0]), atol=2e-3, rtol=0)


def test_minmax_is_per_image_over_all_channels():
    x = pixels([[51, 102]], [[153, 204]], [[51, 255]])  # min 51, max 255 over the image
    out = NORMALIZATIONS["minmax"](x, STATS)
    expected = (torch.tensor([[51, 102], [153, 204], [51, 255]]).float() - 51) / 204
    torch.testing.assert_close(out[0, :, 0], expected)
    flat = NORMALIZATIONS["minmax"](pixels([[9]], [[9]], [[9]]), STATS)
    assert torch.equal(flat, torch.zeros_like(flat))


def test_none_is_pixels_over_255_and_batch_independent():
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    torch.testing.assert_close(NORMALIZATIONS["none"](x, STATS), x.float() / 255)
    for name in NORMALIZATIONS:  # per-image settings must not mix images of a batch
        full = NORMALIZATIONS[name](x, STATS)
        torch.testing.assert_close(full[1:2], NORMALIZATIONS[name](x[1:2], STATS))
        assert full.dtype == torch.float32 and full.shape == x.shape
