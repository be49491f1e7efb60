"""The pipeline's own pretraining: start files, norm: pretraining, and what re-runs when."""

import json
import time

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY_CELL, TINY_MODEL, copy_project, run_stage, sh
from torch import nn

from normbench.datasets import grating_classes, make_gratings
from normbench.models import MODELS, build_model
from normbench.normalizations import IMAGENET_MEAN, IMAGENET_STD, NORMALIZATIONS, ChannelStats
from normbench.pretrain import (PretrainConfig, build_from_start, check_start, imagenet_version,
                                resolve_norm)
from normbench.registry import ConfigError

TARGET = ChannelStats((0.1, 0.2, 0.3), (0.5, 0.5, 0.5))
PRETRAINED = {"kind": "pretrained", "model": "resnet18", "norm": "minmax", "source": "gratings",
              "channel_stats": {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.3, 0.4]}}


def test_norm_pretraining_resolves_as_the_weights_were_pretrained():
    norm, stats, text = resolve_norm("pretraining", {"kind": "imagenet"}, TARGET)
    assert norm is NORMALIZATIONS["imagenet"] and text == "pretraining (imagenet)"
    norm, stats, text = resolve_norm("pretraining", PRETRAINED, TARGET)
    assert norm is NORMALIZATIONS["minmax"] and stats == ChannelStats((0.4, 0.5, 0.6),
                                                                       (0.2, 0.3, 0.4))
    # Another norm binds the target's statistics whatever the start.
    assert resolve_norm("dataset", PRETRAINED, TARGET) == (NORMALIZATIONS["dataset"], TARGET,
                                                           "dataset")
    with pytest.raises(ConfigError, match="norm: pretraining needs pretrained weights"):
        resolve_norm("pretraining", {"kind": "scratch"}, TARGET)


def test_the_params_of_every_model_are_checked_in_seconds(params):
    params.update(weights="imagenet", norm="pretraining")
    params["start"]["imagenet"] = {"version": "IMAGENET1K_V2", "versions": {}}
    with pytest.raises(ConfigError, match="'IMAGENET1K_V2' for resnet18"):
        check_start(params, ["resnet50", "resnet18"])  # V2 exists for resnet50 only
    params["start"]["imagenet"]["versions"] = {"resnet18": "IMAGENET1K_V1"}
    assert check_start(params, ["resnet50", "resnet18"]) == "imagenet"
    assert imagenet_version(params["start"]["imagenet"], "resnet18") == "IMAGENET1K_V1"
    params.update(weights="scratch")
    with pytest.raises(ConfigError, match="weights is scratch; use weights: imagenet or "
                                          "pretrained, or another norm"):
        check_start(params, ["resnet18"])
    params.update(weights="pretrained", norm="dataset")
    params["start"]["pretrained"]["source"] = "gratingz"
    with pytest.raises(ConfigError, match="unknown dataset 'gratingz'; valid choices: digits"):
        check_start(params, ["resnet18"])


def test_the_default_pretraining_block_is_valid(params):
    cfg = PretrainConfig.from_params(params["start"]["pretrained"])
    assert cfg.source == "gratings" and cfg.train.epochs >= 1


def test_gratings_are_seeded_balanced_and_unlike_the_targets():
    a, b = make_gratings(8, 0.25, 3), make_gratings(8, 0.25, 3)
    assert np.array_equal(a.train.images, b.train.images)
    assert a.classes == grating_classes() and len(a.classes) == 16
    assert np.bincount(a.test.labels).tolist() == [2] * 16  # stratified: 8 x 0.25 each
    assert not np.array_equal(make_gratings(8, 0.25, 4).train.images, a.train.images)


@pytest.mark.parametrize("name", ["resnet18", "vgg16", "densenet121"])
def test_a_pretrained_start_keeps_the_backbone_and_gets_a_torchvision_head(name):
    torch.manual_seed(0)
    source = build_model(name, 16)
    start = {"kind": "pretrained", "model": name, "classes": [str(i) for i in range(16)],
             "state_dict": source.state_dict()}
    torch.manual_seed(1)
    model = build_from_start(start, 5)
    head = model.get_submodule(MODELS[name].head)
    assert isinstance(head, nn.Linear) and head.out_features == 5
    for key, value in source.state_dict().items():
        if not key.startswith(MODELS[name].head + "."):
            assert torch.equal(value, model.state_dict()[key]), key
    if name == "vgg16":  # torchvision's VGG init: N(0, 0.01), bias 0
        assert head.weight.std().item() == pytest.approx(0.01, rel=0.1)
    if name != "resnet18":  # DenseNet and VGG start their head's bias at 0
        assert torch.equal(head.bias, torch.zeros(5))


# --- end to end, in a temporary DVC repository ----------------------------------------------

SMALL = {"images_per_class": 6, "test_fraction": 0.25, "seed": 0}


@pytest.fixture(scope="module")
def repo(tmp_path_factory, reproduced_tiny_project):
    """The session's reproduced tiny project (scratch weights), with a small pretraining block:
    no dependency of a scratch start, so `dvc repro` re-runs nothing."""
    repo = tmp_path_factory.mktemp("pretrain")
    copy_project(reproduced_tiny_project, repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    pre = params["start"]["pretrained"]
    pre["data"] = SMALL
    pre["train"].update(epochs=1, batch_size=16, val_fraction=0.25)  # 18 of 72 held out
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(repo, "dvc", "repro")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "scratch")
    return repo


def edit(repo, **changes) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for key, value in changes.items():
        node = params
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.mark.slow
def test_scratch_never_pretrains_and_ignores_pretraining_params(repo):
    start = torch.load(repo / "starts" / f"{TINY_MODEL}.pt", weights_only=False)
    assert start == {"kind": "scratch", "model": TINY_MODEL}
    edit(repo, **{"start.pretrained.seed": 7, "start.pretrained.train.epochs": 3})
    try:
        assert "Data and pipelines are up to date" in sh(repo, "dvc", "status")
        assert "pretraining epoch" not in sh(repo, "dvc", "repro")
    finally:
        sh(repo, "git", "checkout", "params.yaml")


@pytest.mark.slow
def test_pretrain_then_fine_tune_then_report(repo):
    edit(repo, weights="pretrained", norm="pretraining")
    try:
        out = sh(repo, "dvc", "repro")
        assert "pretraining epoch   1" in out and f"Running stage 'train@{TINY_CELL}'" in out
        start = torch.load(repo / "starts" / f"{TINY_MODEL}.pt", weights_only=False)
        assert start["kind"] == "pretrained" and start["source"] == "gratings"
        assert start["classes"] == grating_classes() and start["norm"] == "dataset"
        source = make_gratings(**SMALL)
        u = source.train.images.astype(np.float64) / 255
        np.testing.assert_allclose(start["channel_stats"]["mean"], u.mean(axis=(0, 1, 2)))
        np.testing.assert_allclose(start["channel_stats"]["std"], u.std(axis=(0, 1, 2)))
        assert start["train"]["epochs"] == 1 and start["seed"] == 0
        # The pretraining holds out validation as a cell does: a choice made on it (per_model
        # is its budget too) reads the source's validation accuracy, never its test accuracy.
        assert start["train"]["val_fraction"] == 0.25
        assert start["metrics"]["val_chance_acc"] == pytest.approx(2 / 18)  # 1 or 2 per class
        assert set(start["versions"]) == {"torch", "torchvision"}
        assert start["state_dict"]["fc.weight"].shape == (16, 64)  # 16 gratings, 64 features
        ckpt = torch.load(repo / "checkpoints" / f"{TINY_CELL}.pt", weights_only=False)
        assert ckpt["start"]["source"] == "gratings" and "state_dict" not in ckpt["start"]
        assert ckpt["norm_applied"] == "pretraining (dataset on gratings)"
        assert ckpt["channel_stats"]["mean"] == start["channel_stats"]["mean"]  # the source's
        assert (repo / "report" / "index.html").is_file()
        # Editing pretraining re-runs exactly the pretraining and the cells that start from it.
        edit(repo, **{"start.pretrained.seed": 7})
        out = sh(repo, "dvc", "repro")
        ran = {line.split("'")[1] for line in out.splitlines()
               if line.startswith("Running stage '")}
        assert ran == {f"start@{TINY_MODEL}", f"train@{TINY_CELL}", "report"}, out
    finally:
        sh(repo, "git", "checkout", "params.yaml")


@pytest.mark.slow
def test_norm_pretraining_with_scratch_fails_in_seconds(repo):
    edit(repo, norm="pretraining")
    try:
        start = time.monotonic()
        proc = run_stage(repo, "check", "data/valid_names.json")
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert "norm: pretraining normalizes as the weights were pretrained" in proc.stderr
        assert time.monotonic() - start < 60
    finally:
        sh(repo, "git", "checkout", "params.yaml")
