import numpy as np
import pytest
import torch

from normbench.models import MODELS, build_model
from normbench.registry import ConfigError
from normbench.weightdist import (MAX_SAMPLES, PERCENTILES, ROLES, WeightRecorder, load,
                                  sample_indices, summarize)


def test_sample_indices_are_stable_sorted_and_complete_for_small_layers():
    a, b = sample_indices(100_000), sample_indices(100_000)
    assert np.array_equal(a, b) and len(a) == MAX_SAMPLES and np.all(np.diff(a) > 0)
    assert np.array_equal(sample_indices(1728), np.arange(1728))  # small: every value


def test_summary_of_a_hand_computed_example():
    """Every number worked out by hand, not with the expression the code uses.

    w0 = (3, 0, 4, 0): ||w0|| = 5. w = (3, 1, 4, 0): w - w0 = (0, 1, 0, 0), so drift = 1/5.
    w: mean 2, deviations (1, -1, 2, -2): population variance 10/4 = 2.5 (the sample variance
    would be 10/3), fourth moment 34/4 = 8.5, kurtosis 8.5 / 2.5**2 = 1.36, excess -1.64.
    Percentiles of the sorted (0, 1, 3, 4), linear between ranks: q % sits at rank 3q/100.
    """
    w0 = np.array([3.0, 0.0, 4.0, 0.0])
    w = np.array([3.0, 1.0, 4.0, 0.0])
    s = summarize(w, w0)
    assert s == pytest.approx({
        "mean": 2.0, "std": 2.5 ** 0.5, "kurtosis": -1.64, "drift": 0.2,
        "p1": 0.03, "p5": 0.15, "p25": 0.75, "p50": 2.0, "p75": 3.25, "p95": 3.85, "p99": 3.97})
    assert set(s) == {"mean", "std", "kurtosis", "drift", *(f"p{q}" for q in PERCENTILES)}
    # Relative to the initial weights: w0 -> w is 1/5 of ||w0||, w -> w0 is 1/sqrt(26) of ||w||.
    assert summarize(w0, w)["drift"] == pytest.approx(1 / 26 ** 0.5)
    assert summarize(10 * w, 10 * w0)["drift"] == pytest.approx(0.2)  # scale-free
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
    # The epoch-1 numbers are those of the tensor scaled by 1.5 (torch's std, not numpy's).
    epoch0, epoch1 = (summary["epochs"][e]["first_conv"] for e in (0, 1))
    assert epoch1["std"] == pytest.approx(
        model.get_submodule(layers[0]).weight.double().std(correction=0).item())
    assert epoch1["std"] == pytest.approx(1.5 * epoch0["std"])
    assert epoch1["mean"] == pytest.approx(1.5 * epoch0["mean"])
    assert epoch1["p50"] == pytest.approx(1.5 * epoch0["p50"])
    assert epoch1["kurtosis"] == pytest.approx(epoch0["kurtosis"])  # scale-free
    assert epoch1["drift"] == pytest.approx(0.5)
    assert [e["epoch"] for e in summary["epochs"]] == [0, 1]
    assert set(summary["epochs"][0]) == {"epoch", *ROLES}


def test_missing_snapshots_say_how_to_rebuild(tmp_path):
    with pytest.raises(ConfigError, match=r"run `dvc repro train@resnet18-digits-1`"):
        load(tmp_path / "resnet18-digits-1")
