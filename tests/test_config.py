import pytest
import torch

from normbench.config import SpeedConfig, TrainConfig, check_block, load_params, resolve_device
from normbench.grid import Grid
from normbench.models import WEIGHTS
from normbench.registry import ConfigError

GOOD = dict(epochs=2, batch_size=8, eval_batch_size=16, lr=0.001, weight_decay=0.0,
            optimizer="adam", scheduler="cosine", pad=4, flip=True, val_fraction=0.1)


def test_train_config_accepts_the_params_file_and_ints_for_floats():
    cfg = TrainConfig.from_params({**GOOD, "lr": 1, "weight_decay": 0})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert TrainConfig.from_params(load_params("params.yaml")["train"]).batch_size == 256


@pytest.mark.parametrize("key, value, message", [
    ("epochs", "abc", "train.epochs must be int, got str 'abc'"),
    ("epochs", 2.5, "train.epochs must be int, got float"),
    ("flip", 1, "train.flip must be bool, got int"),
    ("batch_size", True, "train.batch_size must be int, got bool"),
    ("epochs", 0, "train.epochs must be >= 1"),
    ("optimizer", "rmsprop", "unknown train.optimizer 'rmsprop'; valid choices: adam, sgd"),
    ("scheduler", "step", "valid choices: cosine, none"),
])
def test_train_config_rejects_bad_values(key, value, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_params({**GOOD, key: value})


def test_unknown_and_missing_keys_are_named():
    bad = {**GOOD, "epoch": 3}
    del bad["epochs"]
    with pytest.raises(ConfigError, match=r"unknown keys \['epoch'\], missing keys \['epochs'\]"):
        TrainConfig.from_params(bad)
    with pytest.raises(ConfigError, match="data.x must be a mapping"):
        check_block([1], {"a": int}, "data.x")


def test_a_model_of_per_model_trains_with_its_own_keys_and_only_it():
    shared = TrainConfig.from_params(GOOD)
    per_model = {"vgg16": {"lr": 0.0001, "batch_size": 64}}
    own = shared.for_model(per_model, "vgg16")
    assert (own.lr, own.batch_size, own.epochs) == (0.0001, 64, GOOD["epochs"])
    assert shared.for_model(per_model, "resnet18") == shared
    assert shared.for_model({}, "vgg16") == shared


@pytest.mark.parametrize("per_model, message", [
    ({"vgg16": {"learning_rate": 0.1}}, r"per_model.vgg16 must be a mapping of train keys.*"
                                        r"valid keys: epochs, batch_size"),
    ({"vgg16": {"lr": -1.0}}, "per_model.vgg16: train.lr must be > 0"),
    ({"vgg16": {"batch_size": "64"}}, "per_model.vgg16: train.batch_size must be int"),
    ({"vgg16": 0.1}, "per_model.vgg16 must be a mapping of train keys"),
    ([0.1], "per_model must be a mapping of model name to train keys"),
    ({"vgg19": {"lr": 0.1}}, "unknown model 'vgg19'; valid choices: resnet18"),
    ({"vgg16": {}}, r"per_model has no entry for resnet18; add `resnet18: \{\}`"),
])
def test_per_model_names_models_and_train_keys_or_fails_saying_which(per_model, message, params):
    from normbench.grid import check_grid

    with pytest.raises(ConfigError, match=message):
        check_grid({**params, "per_model": per_model})


def test_grid_validates_names_against_registries():
    params = {"models": ["resnet18"], "datasets": ["digits", "shapes"], "seeds": [1, 2]}
    assert len(Grid.from_params(params).cells()) == 4
    with pytest.raises(ConfigError, match="unknown model 'resnet19'; valid choices: resnet18, "):
        Grid.from_params({**params, "models": ["resnet19"]})
    with pytest.raises(ConfigError, match="unknown dataset 'mnist'; valid choices: digits, shapes"):
        Grid.from_params({**params, "datasets": ["mnist"]})
    with pytest.raises(ConfigError, match="seeds"):
        Grid.from_params({**params, "seeds": ["a"]})


def test_weights_and_device_choices():
    with pytest.raises(ConfigError, match="unknown weights 'random'; valid choices: scratch, "
                                          "imagenet"):
        WEIGHTS.check("random")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="valid choices: auto, cpu, cuda"):
        resolve_device("gpu")


def test_cuda_asked_for_on_a_machine_without_cuda(monkeypatch):
    """Runs everywhere: the machine is made to have no CUDA, whatever it really has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")  # auto falls back to the CPU
    assert resolve_device("cpu") == torch.device("cpu")
    for name in ("cuda", "cuda:0"):  # an explicit ask is an error, never a silent CPU run
        with pytest.raises(ConfigError, match=f"device: {name} asked for, but this machine has "
                                              "no CUDA device; use device: auto or device: cpu"):
            resolve_device(name)


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "params.yaml")


def test_speed_config_resolves_auto_per_device():
    auto = SpeedConfig.from_params({"amp": "auto", "compile": "auto", "compile_fallback": False})
    cpu = auto.resolve(torch.device("cpu"))
    assert (cpu.amp, cpu.compile) == ("none", "none")  # the plain fp32 eager loop on a CPU
    explicit = SpeedConfig("bf16", "default", True)
    assert explicit.resolve(torch.device("cpu")) == explicit
    assert SpeedConfig.from_params(load_params("params.yaml")["speed"]).amp == "auto"


@pytest.mark.parametrize("block, message", [
    ({"amp": "fp16", "compile": "auto", "compile_fallback": False},
     "unknown speed.amp 'fp16'; valid choices: auto, bf16, none"),
    ({"amp": "auto", "compile": "cudagraphs", "compile_fallback": False},
     "unknown speed.compile 'cudagraphs'; valid choices: auto, reduce-overhead, default"),
    ({"amp": "auto", "compile": "auto", "compile_fallback": "yes"},
     "speed.compile_fallback must be bool, got str 'yes'"),
    ({"amp": "auto", "compile": "auto"}, r"missing keys \['compile_fallback'\]"),
])
def test_speed_config_rejects_bad_values(block, message):
    with pytest.raises(ConfigError, match=message):
        SpeedConfig.from_params(block)
