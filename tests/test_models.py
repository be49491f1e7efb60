import pytest
import torch
from torch import nn

from normbench.models import MODELS, build_model, replace_head
from normbench.registry import ConfigError


@pytest.mark.parametrize("name", MODELS.names())
def test_head_matches_class_count_and_watched_layers_are_convs(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7)
    spec = MODELS[name]
    head = model.get_submodule(spec.head)
    assert isinstance(head, nn.Linear) and head.out_features == 7
    first, deeper = (model.get_submodule(p) for p in spec.watched)
    assert isinstance(first, nn.Conv2d) and first.in_channels == 3  # the input layer
    assert isinstance(deeper, nn.Conv2d) and deeper.in_channels > 3
    if name in ("resnet18", "mobilenet_v2"):  # the default grid's models run on 32 px images
        model.eval()
        with torch.no_grad():
            assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)


def test_replace_head_keeps_the_backbone():
    torch.manual_seed(0)
    model = build_model("resnet18", 1000)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    replace_head(model, "fc", 3)
    after = model.state_dict()
    assert after["fc.weight"].shape == (3, 512)
    for k, v in before.items():
        if not k.startswith("fc."):
            assert torch.equal(v, after[k]), k


def test_same_seed_same_initial_weights():
    torch.manual_seed(5)
    a = build_model("mobilenet_v2", 4).state_dict()
    torch.manual_seed(5)
    b = build_model("mobilenet_v2", 4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_model_and_weights():
    with pytest.raises(ConfigError, match="unknown model 'vgg19'; valid choices: resnet18"):
        build_model("vgg19", 10)
    with pytest.raises(ConfigError, match="valid choices: scratch, imagenet, pretrained"):
        build_model("resnet18", 10, weights="random")
    with pytest.raises(ConfigError, match="weights: pretrained starts from the start@ stage"):
        build_model("resnet18", 10, weights="pretrained")
    with pytest.raises(TypeError, match="expected the classifier nn.Linear"):
        replace_head(build_model("resnet18", 10), "layer1", 3)
