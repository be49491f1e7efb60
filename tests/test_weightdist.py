import numpy as np
import pytest
import scipy.stats
import torch

from normbench.models import MODELS, build_model
from normbench.registry import ConfigError
from normbench.weightdist import (MAX_SAMPLES, PERCENTILES, ROLES, WeightRecorder, load,
                                  sample_indices, summarize)


def test_sample_indices_are_stable_sorted_and_complete_for_small_layers():
    a, b = sample_indices(100_000), sample_indices(100_000)
    assert np.array_equal(a, b) and len(a) == MAX_SAMPLES and np.all(np.diff(a) > 0)
    assert np.array_equal(sample_indices(1728), np.arange(1728))  # small: every value


def test_summary_equals_numpy_and_scipy():
    rng = np.random.default_rng(1)
    w0 = rng.standard_t(5, 5000)
    w = w0 + rng.normal(0, 0.1, 5000)
    s = summarize(w, w0)
    assert s["mean"] == pytest.approx(np.mean(w)) and s["std"] == pytest.approx(np.std(w))
    assert s["kurtosis"] == pytest.approx(scipy.stats.kurtosis(w))
    for q in PERCENTILES:
        assert s[f"p{q}"] == pytest.approx(np.percentile(w, q))
    assert s["drift"] == pytest.approx(np.linalg.norm(w - w0) / np.linalg.norm(w0))
    assert summarize(w0, w0)["drift"] == 0.0


def test_recorder_snapshots_equal_the_model_tensors(tmp_path):
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", 10)
    layers = MODELS["mobilenet_v2"].watched
    rec = WeightRecorder(model, layers)
    assert rec.record(model, 0) == {"drift_first_conv": 0.0, "drift_deep_conv": 0.0}
    with torch.no_grad():
        model.get_submodule(layers[0]).weight.mul_(1.5)  # a known change: drift exactly 0.5
    drifts = rec.record(model, 1)
    assert drifts["drift_first_conv"] == pytest.approx(0.5) and drifts["drift_deep_conv"] == 0.0
    rec.save(tmp_path / "wd")
    summary, samples = load(tmp_path / "wd")
    first = model.get_submodule(layers[0]).weight.detach().flatten().numpy()
    deep = model.get_submodule(layers[1]).weight.detach().flatten().numpy()
    assert np.array_equal(samples["first_conv"][1], first)  # 864 values: kept whole
    idx = sample_indices(deep.size)
    assert np.array_equal(samples["deep_conv"][1], deep[idx])  # a fixed subsample
    assert samples["deep_conv"].shape == (2, MAX_SAMPLES)
    assert summary["layers"]["first_conv"] == {"layer": "features.0.0", "numel": 864, "kept": 864}
    assert summary["epochs"][1]["first_conv"]["std"] == pytest.approx(first.astype(float).std())
    assert [e["epoch"] for e in summary["epochs"]] == [0, 1]
    assert set(summary["epochs"][0]) == {"epoch", *ROLES}


def test_missing_snapshots_say_how_to_rebuild(tmp_path):
    with pytest.raises(ConfigError, match=r"run `dvc repro train@resnet18-digits-1`"):
        load(tmp_path / "resnet18-digits-1")
