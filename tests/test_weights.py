"""ImageNet weights through torchvision's cache, with files the tests write themselves."""

import pytest
import torch

from normbench import weights as W
from normbench.models import MODELS, build_model
from normbench.registry import ConfigError


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home"


def fake_weights_file(name: str, folder, seed: int = 0):
    """A weights file with torchvision's name and the right shapes, holding random values."""
    torch.manual_seed(seed)
    model = build_model(name, 1000)  # scratch, ImageNet's 1000-class head
    state = {k: torch.randn_like(v.float()).to(v.dtype) if v.is_floating_point() else v
             for k, v in model.state_dict().items()}
    path = folder / W.cache_path(W.weights_entry(name, "IMAGENET1K_V1")).name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path, state


def trust(monkeypatch, path):
    """Accept the test's own file: its hash stands in for the official one in the file name."""
    prefix = W.sha256(path)[:8]
    monkeypatch.setattr(W, "expected_sha256_prefix", lambda entry: prefix)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "densenet121"])
def test_pretrained_tensors_arrive_unchanged_except_the_head(name, torch_home, monkeypatch):
    entry = W.weights_entry(name, "IMAGENET1K_V1")
    path, state = fake_weights_file(name, W.cache_path(entry).parent)
    trust(monkeypatch, path)
    torch.manual_seed(123)  # the run's seed must not re-initialise anything but the head
    model = build_model(name, 7, "imagenet", version="IMAGENET1K_V1")
    head = MODELS[name].head
    got = model.state_dict()
    assert got[f"{head}.weight"].shape[0] == 7
    first_conv = MODELS[name].watched[0] + ".weight"
    assert torch.equal(got[first_conv], state[first_conv])
    for key, value in state.items():
        if not key.startswith(head + "."):
            assert torch.equal(got[key], value), key


def test_download_from_a_mirror_verifies_and_caches(torch_home, http_server, monkeypatch):
    base, served = http_server
    path, _ = fake_weights_file("resnet18", served)
    trust(monkeypatch, path)
    entry = W.weights_entry("resnet18", "IMAGENET1K_V1")
    got = W.fetch(entry, mirror=base + "/")
    assert got == W.cache_path(entry) and got.read_bytes() == path.read_bytes()
    path.unlink()  # now served by nobody: the cached copy must be used without the network
    assert W.fetch(entry, mirror=base) == got


def test_missing_file_offline_names_the_file_the_place_and_scratch(torch_home, closed_port_url):
    entry = W.weights_entry("resnet18", "IMAGENET1K_V1")
    with pytest.raises(ConfigError) as err:
        build_model("resnet18", 10, "imagenet", version="IMAGENET1K_V1", mirror=closed_port_url)
    message = str(err.value)
    assert "resnet18-f37072fd.pth" in message and str(W.cache_path(entry)) in message
    assert "weights: scratch" in message
    assert not W.cache_path(entry).exists()


def test_corrupted_cached_file_is_reported_not_loaded(torch_home):
    entry = W.weights_entry("resnet18", "IMAGENET1K_V1")
    path = W.cache_path(entry)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not the weights")
    with pytest.raises(ConfigError, match="is corrupted: its SHA-256 .* does not start with "
                                          "f37072fd"):
        build_model("resnet18", 10, "imagenet", version="IMAGENET1K_V1")


def test_download_with_a_wrong_hash_leaves_nothing(torch_home, http_server):
    base, served = http_server
    fake_weights_file("resnet18", served)  # served, but its hash is not f37072fd...
    entry = W.weights_entry("resnet18", "IMAGENET1K_V1")
    with pytest.raises(ConfigError, match="invalid hash value"):
        W.fetch(entry, mirror=base)
    assert not any(W.cache_path(entry).parent.iterdir())  # no partial file left behind


def test_unknown_version_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown ImageNet weights version 'V9' for resnet50 "
                                          r"\(start.imagenet\); valid choices: IMAGENET1K_V1, "
                                          "IMAGENET1K_V2"):
        W.weights_entry("resnet50", "V9")
    # vgg16's feature-extractor weights have no trained classifier: not a choice.
    with pytest.raises(ConfigError, match="for vgg16 .*valid choices: IMAGENET1K_V1$"):
        W.weights_entry("vgg16", "IMAGENET1K_FEATURES")
    for name in MODELS:  # the default version exists for every torchvision model
        if MODELS[name].own is None:
            assert W.weights_entry(name, "IMAGENET1K_V1").url.endswith(".pth")
    # The project's own network has no ImageNet weights: the error says what to use instead.
    with pytest.raises(ConfigError, match="smallcnn has no ImageNet weights .* use weights: "
                                          "scratch or pretrained"):
        W.weights_entry("smallcnn", "IMAGENET1K_V1")


def test_prefetch_fills_the_cache(torch_home, http_server, monkeypatch):
    from normbench import fetch_weights

    base, served = http_server
    path, _ = fake_weights_file("resnet18", served)
    trust(monkeypatch, path)
    imagenet = {"version": "IMAGENET1K_V1", "versions": {"resnet50": "IMAGENET1K_V2"}}
    fetch_weights.prefetch(["resnet18"], imagenet, base)
    assert W.cache_path(W.weights_entry("resnet18", "IMAGENET1K_V1")).is_file()
    with pytest.raises(ConfigError, match="unknown model 'resnet19'"):
        fetch_weights.prefetch(["resnet19"], imagenet, base)
    # A version that one model lacks stops before anything is downloaded.
    with pytest.raises(ConfigError, match="'IMAGENET1K_V2' for resnet18"):
        fetch_weights.prefetch(["resnet50", "resnet18"], {**imagenet, "version": "IMAGENET1K_V2"},
                               base)
