import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from normbench.normalizations import (IMAGENET_MEAN, IMAGENET_STD, NORMALIZATIONS, ChannelStats,
                                      Normalizer, normalize)
from normbench.registry import ConfigError
from normbench.train import augment, training_inputs

STATS = ChannelStats(mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))


def pixels(*rgb_rows: list[list[int]]) -> torch.Tensor:
    """A 1 x 3 x H x W uint8 image from three channel planes."""
    return torch.tensor([rgb_rows], dtype=torch.uint8)


def norm(name: str, x: torch.Tensor, stats: ChannelStats = STATS) -> torch.Tensor:
    return normalize(x, NORMALIZATIONS[name], stats)


def test_registry_names_and_unknown_name():
    assert NORMALIZATIONS.names() == ["dataset", "imagenet", "instance", "minmax", "none"]
    with pytest.raises(ConfigError, match="unknown norm 'zscore'; valid choices: dataset, imagenet"):
        NORMALIZATIONS["zscore"]


def test_dataset_norm_uses_the_given_stats():
    x = pixels([[255, 0]], [[51, 102]], [[0, 255]])
    # (255/255 - 0.5) / 0.5 = 1, (0 - 0.5) / 0.5 = -1; (0.2 - 0.25) / 0.25 = -0.2, ...
    expected = torch.tensor([[[[1.0, -1.0]], [[-0.2, 0.6]], [[0.0, 1.0]]]])
    torch.testing.assert_close(norm("dataset", x), expected)


def test_imagenet_norm_ignores_dataset_stats():
    x = pixels([[0]], [[255]], [[128]])
    expected = [(0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], (1 - IMAGENET_MEAN[1]) / IMAGENET_STD[1],
                (128 / 255 - IMAGENET_MEAN[2]) / IMAGENET_STD[2]]
    torch.testing.assert_close(norm("imagenet", x).flatten(), torch.tensor(expected))


def test_instance_norm_is_per_image_per_channel():
    # Red: pixels 0 and 255 -> mean 0.5, population std 0.5 -> -1, +1 (up to the 1e-5 epsilon).
    # Green is flat -> 0, not NaN. Blue 0 and 51: mean 0.1, std 0.1 -> -1, +1 (epsilon: 0.1 %).
    out = norm("instance", pixels([[0, 255]], [[7, 7]], [[0, 51]]))
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([-1.0, 1.0]) / np.sqrt(1 + 4e-5),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(out[0, 1, 0], torch.tensor([0.0, 0.0]))
    torch.testing.assert_close(out[0, 2, 0], torch.tensor([-1.0, 1.0]) / np.sqrt(1 + 1e-3),
                               atol=1e-6, rtol=0)


def test_minmax_is_per_image_over_all_channels():
    x = pixels([[51, 102]], [[153, 204]], [[51, 255]])  # min 51, max 255 over the image
    expected = (torch.tensor([[51, 102], [153, 204], [51, 255]]).float() - 51) / 204
    torch.testing.assert_close(norm("minmax", x)[0, :, 0], expected)
    flat = norm("minmax", pixels([[9]], [[9]], [[9]]))
    assert torch.equal(flat, torch.zeros_like(flat))


def test_none_is_pixels_over_255():
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    torch.testing.assert_close(norm("none", x), x.float() / 255)


def test_constants_are_built_once_on_the_device():
    n = Normalizer(NORMALIZATIONS["dataset"], STATS, "cpu")
    assert n.mean.shape == (1, 3, 1, 1) and n.mean.flatten().tolist() == [0.5, 0.25, 0.0]
    assert n.std.flatten().tolist() == [0.5, 0.25, 1.0]


# --- properties (hypothesis): train and test normalize the same content the same way ---------

images = arrays(np.uint8, st.tuples(st.integers(1, 4), st.just(3), st.integers(2, 7),
                                    st.integers(2, 7)))


@settings(max_examples=60, deadline=None)
@given(x=images, name=st.sampled_from(NORMALIZATIONS.names()), pad=st.integers(1, 4),
       seed=st.integers(0, 2**31 - 1))
def test_content_pixels_are_normalized_as_at_test_time_wherever_the_crop_puts_them(
        x, name, pad, seed):
    x = torch.from_numpy(x)
    normalizer = Normalizer(NORMALIZATIONS[name], STATS)
    train = training_inputs(x, normalizer, pad, True, torch.Generator().manual_seed(seed))
    # The same crops and flips, applied to a mask of the content and to the test-time values.
    content = augment(torch.ones_like(x), pad, True, torch.Generator().manual_seed(seed)) == 1
    test_values = augment(normalizer(x), pad, True, torch.Generator().manual_seed(seed))
    assert torch.equal(train[content], test_values[content])
    # The border is each image's own black, normalized by that image's statistics.
    black = Normalizer.apply(torch.zeros_like(x), normalizer.affine(x))
    assert torch.equal(train[~content], black[~content])


@settings(max_examples=40, deadline=None)
@given(x=images, name=st.sampled_from(NORMALIZATIONS.names()), seed=st.integers(0, 2**31 - 1))
def test_no_padding_and_no_flip_is_exactly_the_test_time_input(x, name, seed):
    x = torch.from_numpy(x)
    normalizer = Normalizer(NORMALIZATIONS[name], STATS)
    train = training_inputs(x, normalizer, 0, False, torch.Generator().manual_seed(seed))
    assert torch.equal(train, normalizer(x))


@settings(max_examples=40, deadline=None)
@given(x=images, name=st.sampled_from(NORMALIZATIONS.names()))
def test_per_image_settings_do_not_mix_the_images_of_a_batch(x, name):
    x = torch.from_numpy(x)
    full = norm(name, x)
    assert full.dtype == torch.float32 and full.shape == x.shape
    for i in range(len(x)):
        torch.testing.assert_close(full[i:i + 1], norm(name, x[i:i + 1]), rtol=0, atol=0)


@settings(max_examples=40, deadline=None)
@given(x=images)
def test_per_image_settings_match_their_definition_in_float64(x):
    u = x.astype(np.float64) / 255
    mean = u.mean(axis=(2, 3), keepdims=True)
    std = np.sqrt(u.var(axis=(2, 3), keepdims=True) + 1e-5)
    np.testing.assert_allclose(norm("instance", torch.from_numpy(x)).numpy(), (u - mean) / std,
                               atol=1e-5)
    lo = u.min(axis=(1, 2, 3), keepdims=True)
    span = np.maximum(u.max(axis=(1, 2, 3), keepdims=True) - lo, 1 / 255)
    np.testing.assert_allclose(norm("minmax", torch.from_numpy(x)).numpy(), (u - lo) / span,
                               atol=1e-6)


# --- device and dtype of the bound constants (found by mutation testing, `make mutation`) -----

def test_constants_live_on_the_requested_device_and_normalize_follows_the_input():
    # The meta device stands in for a GPU: constants left on the CPU would make every
    # constant setting fail there ("Tensor on device cpu is not on the expected device meta").
    n = Normalizer(NORMALIZATIONS["dataset"], STATS, "meta")
    assert n.mean.device.type == "meta" and n.std.device.type == "meta"
    assert n.mean.shape == (1, 3, 1, 1) and n.std.shape == (1, 3, 1, 1)
    x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8, device="meta")
    for name in NORMALIZATIONS.names():
        out = norm(name, x)
        assert out.device.type == "meta" and out.dtype == torch.float32 and out.shape == x.shape


def test_constants_are_float32_whatever_the_default_dtype():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        n = Normalizer(NORMALIZATIONS["dataset"], STATS)
        assert n.mean.dtype == torch.float32 and n.std.dtype == torch.float32
        x = pixels([[255, 0]], [[51, 102]], [[0, 255]])
        assert norm("dataset", x).dtype == torch.float32
    finally:
        torch.set_default_dtype(previous)
