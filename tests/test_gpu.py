"""The fast path on a real CUDA GPU: `pytest -m gpu` (bench/gpu_session.sh runs it there).

`make test` deselects these (pyproject's addopts), as CI has no GPU; asked for on a machine
without CUDA they fail, naming the reason, rather than skip.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

from normbench.arrays import Arrays, save_arrays
from normbench.captured import CapturedSteps
from normbench.config import SpeedConfig, TrainConfig
from normbench.datasets import make_shapes
from normbench.models import build_model
from normbench.normalizations import NORMALIZATIONS, Normalizer, normalize
from normbench.placement import live_claims
from normbench.stats import channel_stats, stats_table
from normbench.timing import TIMINGS
from normbench.train import (Runner, batches_per_epoch, evaluate, seed_everything, to_device,
                             train_cell)
from conftest import ROOT, run_stage

pytestmark = pytest.mark.gpu

# Batches that do not divide the splits: every cell meets a last partial batch in training and
# in evaluation, as real datasets do (50,000 / 256 leaves 80).
CFG = TrainConfig(epochs=8, batch_size=64, eval_batch_size=128, lr=0.001, weight_decay=0.0,
                  optimizer="adam", scheduler="cosine", pad=4, flip=True, val_fraction=0.1)


@pytest.fixture(scope="module")
def cuda() -> torch.device:
    if not torch.cuda.is_available():
        pytest.fail("no CUDA device here: the gpu tests need one (bench/gpu_session.sh runs "
                    "them on a GPU machine)", pytrace=False)
    return torch.device("cuda", 0)


@pytest.fixture(scope="module")
def shapes() -> Arrays:
    return make_shapes(images_per_class=200, test_fraction=0.25, seed=0)  # 810+90 train, 300 test


def fast_cell(arrays: Arrays, device: torch.device, seed: int = 1, model: str = "resnet18"):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    speed = SpeedConfig("auto", "auto", False).resolve(device)
    seed_everything(seed)
    net = build_model(model, len(arrays.classes))
    result = train_cell(net, arrays, NORMALIZATIONS["dataset"], channel_stats(arrays.train.images),
                        CFG, seed, device, speed=speed)
    return result, {k: dict(v) for k, v in counters.items()}


def test_auto_is_bf16_with_cuda_graphs_on_this_gpu(cuda):
    assert SpeedConfig("auto", "auto", False).resolve(cuda) == SpeedConfig(
        "bf16", "reduce-overhead", False)


def test_fast_cell_learns_with_one_graph_per_shape_and_mode(cuda, shapes):
    result, counters = fast_cell(shapes, cuda)
    assert result.speed["compiled"] and result.speed["compile_fallback_reason"] is None
    # Exactly two graphs: eval at eval_batch_size (the last batch padded) and train at
    # batch_size (the last short batch eager). More means a recompilation per step or epoch;
    # past dynamo's limit a frame silently runs eagerly.
    assert counters["stats"]["unique_graphs"] == 2, counters["stats"]
    # CUDA graphs were really used: inductor skips them (and says why) for e.g. CPU tensors,
    # mutated inputs or ops that cannot be captured, deterministic ones included.
    assert not counters.get("inductor", {}).get("cudagraph_skips"), counters.get("inductor")
    assert result.peak_gpu_mib is not None and result.peak_gpu_mib > 0
    # The same cell in fp32 on a CPU: loss 2.1 -> 0.8-0.9, accuracy 0.68-0.71 (seeds 1, 2).
    losses = [h["train_loss"] for h in result.history[1:]]
    assert losses[-1] < 0.7 * losses[0]
    metrics = result.metrics()
    assert metrics["final_acc"] > 0.6, metrics  # six classes: chance is 0.17
    assert metrics["learned"] is True and metrics["final_acc"] > metrics["chance_acc"]
    assert metrics["final_acc"] == pytest.approx(
        float((result.final_predictions == shapes.test.labels).mean()))


def test_fast_cell_is_identical_when_run_again_on_this_gpu(cuda, shapes):
    a, _ = fast_cell(shapes, cuda)
    b, _ = fast_cell(shapes, cuda)
    assert a.history == b.history
    assert (a.final_predictions == b.final_predictions).all()


def test_compiled_steps_match_the_eager_steps(cuda, shapes):
    """One step's loss and gradient: CUDA graphs change nothing, bf16 only rounds."""
    stats = channel_stats(shapes.train.images)
    x = torch.from_numpy(shapes.train.images[:64]).permute(0, 3, 1, 2).contiguous().to(cuda)
    x = normalize(x, NORMALIZATIONS["dataset"], stats)
    y = torch.from_numpy(shapes.train.labels[:64]).to(cuda)

    def step(amp: str, compile_mode: str) -> tuple[float, torch.Tensor]:
        torch._dynamo.reset()
        seed_everything(7)
        model = build_model("resnet18", len(shapes.classes)).to(cuda).train()
        runner = Runner(model, SpeedConfig(amp, compile_mode, False), cuda)
        loss = torch.nn.functional.cross_entropy(runner.forward(x).float(), y)
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters()])
        return loss.item(), grad

    def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
        return torch.nn.functional.cosine_similarity(a, b, dim=0).item()

    plain_loss, plain_grad = step("none", "none")
    graphs_loss, graphs_grad = step("none", "reduce-overhead")
    fast_loss, fast_grad = step("bf16", "reduce-overhead")
    # fp32 through inductor and CUDA graphs: only the order of float operations changes.
    assert graphs_loss == pytest.approx(plain_loss, rel=1e-3)
    assert cosine(graphs_grad, plain_grad) > 0.999
    # bf16 keeps 8 bits of mantissa. On a CPU, at this initialisation, eager bf16 moved the loss
    # by 0.2 % and left the gradient at cosine 0.94 to fp32's (compiled bf16: 0.96 to eager's).
    assert fast_loss == pytest.approx(plain_loss, rel=2e-2)
    assert cosine(fast_grad, plain_grad) > 0.9


def test_padded_evaluation_predicts_what_eager_evaluation_predicts(cuda, shapes):
    """fp32 through inductor and CUDA graphs, the last of 300 test images padded into a batch of
    128, against the eager model on the whole split: the same predictions but for near-ties
    (the kernels differ, so logits may differ in their last bits), the same mean loss to 1e-3."""
    torch._dynamo.reset()
    seed_everything(3)
    model = build_model("resnet18", len(shapes.classes)).to(cuda)
    test = to_device(shapes.test, cuda)
    normalizer = Normalizer(NORMALIZATIONS["dataset"], channel_stats(shapes.train.images), cuda)
    eager = evaluate(Runner(model, SpeedConfig("none", "none", False), cuda), test, normalizer,
                     300)
    padded = evaluate(Runner(model, SpeedConfig("none", "reduce-overhead", False), cuda), test,
                      normalizer, 128)
    assert (padded[2] == eager[2]).float().mean().item() >= 299 / 300
    assert padded[0] == pytest.approx(eager[0], rel=1e-3)


def captured_run(arrays: Arrays, device: torch.device, capture: bool, epochs: int = 3):
    """resnet18 on shapes through the captured step's code, with or without the CUDA graph:
    every step's model input, each epoch's sums and LR, the final predictions and weights."""
    seed_everything(1)
    model = build_model("resnet18", len(arrays.classes)).to(device)
    runner = Runner(model, SpeedConfig("bf16", "captured", False), device)
    train, test = (to_device(s, device) for s in (arrays.train, arrays.test))
    bounds = batches_per_epoch(len(train.labels), CFG.batch_size)
    normalizer = Normalizer(NORMALIZATIONS["dataset"], channel_stats(arrays.train.images), device)
    gen = torch.Generator(device=device).manual_seed(1)
    steps = CapturedSteps(runner, CFG, train, bounds, normalizer, gen, epochs * len(bounds),
                          capture=capture)
    inputs = []
    steps.on_step = lambda s: inputs.append(s.last_inputs.clone())
    history = []
    for _ in range(epochs):
        loss_sum, correct, lr = steps.epoch()
        history.append((loss_sum.item(), correct.item(), lr))
    _, _, pred = evaluate(runner, test, normalizer, CFG.eval_batch_size)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    return steps, inputs, history, pred, weights


def test_the_captured_step_gives_what_the_same_step_gives_uncaptured(cuda, shapes):
    """A replay launches the step's kernels on the same inputs: the same random crops and flips
    (the cell's generator registered with the graph), the same sums, LR, weights, predictions.
    900 images in batches of 64: 14 full steps (3 eager, a capture, replays), 1 eager of 4."""
    graphed, graphed_inputs, graphed_history, graphed_pred, graphed_weights = captured_run(
        shapes, cuda, capture=True)
    assert graphed.graph is not None and graphed.eager_full_steps == 3
    assert graphed.runner.fallback_reason is None
    _, inputs, history, pred, weights = captured_run(shapes, cuda, capture=False)
    assert len(graphed_inputs) == len(inputs) == 3 * 15
    assert all(torch.equal(a, b) for a, b in zip(graphed_inputs, inputs))
    assert graphed_history == history
    assert torch.equal(graphed_pred, pred)
    assert all(torch.equal(graphed_weights[k], weights[k]) for k in weights)
    assert history[-1][2] == pytest.approx(0.0, abs=1e-12)  # the cosine ends at zero


def test_a_captured_cell_learns(cuda, shapes):
    seed_everything(1)
    net = build_model("resnet18", len(shapes.classes))
    result = train_cell(net, shapes, NORMALIZATIONS["dataset"], channel_stats(shapes.train.images),
                        CFG, 1, cuda, speed=SpeedConfig("auto", "captured", False).resolve(cuda))
    assert result.speed["compiled"] and result.speed["compile_fallback_reason"] is None
    metrics = result.metrics()
    assert metrics["execution"] == "cuda bf16 captured"
    assert metrics["final_acc"] > 0.6 and metrics["learned"], metrics  # chance: 0.17
    losses = [h["train_loss"] for h in result.history[1:]]
    assert losses[-1] < 0.7 * losses[0]


def test_train_stage_end_to_end_at_64_px(cuda, tmp_path, params):
    """stages/train.py as DVC runs it, on Tiny-ImageNet-sized images, with `speed: auto`."""
    arrays = make_shapes(images_per_class=50, test_fraction=0.25, seed=0, image_size=64)
    save_arrays(arrays, tmp_path / "data" / "shapes")
    (tmp_path / "data" / "stats").mkdir()
    (tmp_path / "data" / "stats" / "shapes.json").write_text(
        json.dumps(stats_table(arrays.train.images)))
    params["train"].update(epochs=2, batch_size=64, eval_batch_size=128)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cell = "resnet18-shapes-1"
    start = run_stage(tmp_path, "start", "--model", "resnet18", "--out", "starts/resnet18.pt")
    assert start.returncode == 0, start.stdout + start.stderr
    proc = run_stage(tmp_path, "train", "--model", "resnet18", "--dataset", "shapes",
                     "--seed", "1", "--data", "data/shapes", "--stats", "data/stats/shapes.json",
                     "--start", "starts/resnet18.pt",
                     "--metrics", f"metrics/{cell}.json", "--live", f"plots/{cell}",
                     "--predictions", f"predictions/{cell}.npy",
                     "--checkpoint", f"checkpoints/{cell}.pt", "--weightdist", f"weightdist/{cell}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "device=cuda:0" in proc.stdout and "amp=bf16 compile=reduce-overhead" in proc.stdout
    metrics = json.loads((tmp_path / "metrics" / f"{cell}.json").read_text())
    timing = json.loads((tmp_path / TIMINGS / f"{cell}.json").read_text())
    assert timing["peak_gpu_mib"] > 0 and metrics["epochs"] == 2
    assert metrics["execution"] == "cuda bf16 reduce-overhead"
    checkpoint = torch.load(tmp_path / "checkpoints" / f"{cell}.pt", weights_only=False)
    assert checkpoint["speed"]["compiled"] is True


HOLDER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {src!r})
    from normbench.config import resolve_device
    device = resolve_device("auto")
    print(device, flush=True)
    sys.stdin.read()
""").format(src=str(ROOT / "src"))


def test_two_cells_claim_this_gpu_and_a_hidden_gpu_means_the_cpu(cuda):
    from normbench.placement import CLAIMS

    uuid = str(torch.cuda.get_device_properties(0).uuid)
    before = live_claims(CLAIMS).get(uuid, 0) if CLAIMS.exists() else 0
    procs = [subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        assert [p.stdout.readline().strip() for p in procs] == ["cuda:0", "cuda:0"]
        assert live_claims(CLAIMS)[uuid] == before + 2
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=60)
    assert live_claims(CLAIMS).get(uuid, 0) == before
    hidden = subprocess.run([sys.executable, "-c", HOLDER], input="", capture_output=True,
                            text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert hidden.stdout.strip() == "cpu", hidden.stderr
