"""The captured train step's pieces, on the CPU: its learning rate, its optimizer, its random
stream. The capture itself needs CUDA: tests/test_gpu.py compares captured and uncaptured."""

import pytest
import torch

from normbench import captured
from normbench.captured import CapturedSteps, lr_at
from normbench.config import SpeedConfig, TrainConfig
from normbench.datasets import make_shapes
from normbench.normalizations import NORMALIZATIONS, ChannelStats, Normalizer
from normbench.registry import ConfigError
from normbench.train import (Runner, batches_per_epoch, make_optimizer,
                             seed_everything, to_device, train_epoch)

CFG = TrainConfig(epochs=2, batch_size=16, eval_batch_size=32, lr=0.001, weight_decay=0.0,
                  optimizer="adam", scheduler="cosine", pad=4, flip=True, val_fraction=0.25)
STATS = ChannelStats((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
CPU = torch.device("cpu")


def tiny_net(classes: int) -> torch.nn.Module:
    """Conv, BatchNorm, ReLU, pool, linear. The conv has no bias, as in torchvision's nets: before
    BatchNorm its gradient is rounding noise, which Adam would scale up to full steps."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(8, classes))


@pytest.mark.parametrize("scheduler", ["cosine", "none"])
def test_the_lr_from_the_step_counter_is_the_schedulers(scheduler):
    cfg = TrainConfig(**{**CFG.__dict__, "scheduler": scheduler, "lr": 3e-3})
    total = 37
    opt, sched = make_optimizer(torch.nn.Linear(2, 2), cfg, total, CPU)
    for step in range(total + 1):
        scheduler_lr = opt.param_groups[0]["lr"]  # the rate of optimizer step ``step``
        assert lr_at(torch.tensor(step), cfg.lr, total, scheduler).item() == pytest.approx(
            scheduler_lr, rel=1e-12, abs=1e-18), step
        opt.step()
        sched.step()
    assert lr_at(torch.tensor(total), cfg.lr, total, scheduler).item() == (
        0.0 if scheduler == "cosine" else cfg.lr)


def test_fused_capturable_adam_with_a_device_lr_equals_adam_with_its_scheduler():
    """Same gradients into both: Adam + CosineAnnealingLR as the eager loop builds them, and
    the captured step's Adam (fused, capturable, lr a tensor set from the step counter)."""
    torch.manual_seed(0)
    start = [torch.randn(5, 3), torch.randn(7)]
    cfg = TrainConfig(**{**CFG.__dict__, "weight_decay": 1e-2})
    total = 25
    eager_params = [torch.nn.Parameter(p.clone()) for p in start]
    opt, sched = make_optimizer(torch.nn.ParameterList(eager_params), cfg, total, CPU)
    steps_params = [torch.nn.Parameter(p.clone()) for p in start]
    lr = torch.tensor(cfg.lr)
    fused = torch.optim.Adam(steps_params, lr=lr, weight_decay=cfg.weight_decay, fused=True,
                             capturable=True)
    count = torch.zeros((), dtype=torch.int64)
    for _ in range(total):
        grads = [torch.randn_like(p) for p in start]
        for p, g in zip(eager_params, grads):
            p.grad = g.clone()
        for p, g in zip(steps_params, grads):
            p.grad = g.clone()
        opt.step()
        sched.step()
        lr.copy_(lr_at(count, cfg.lr, total, cfg.scheduler))
        fused.step()
        count += 1
    for a, b, s in zip(eager_params, steps_params, start):
        assert not torch.equal(a, s)  # they moved
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)


def uneven_data():
    arrays = make_shapes(images_per_class=8, test_fraction=0.25, seed=0)  # 36 train images
    train = to_device(arrays.train, CPU)
    return arrays, train


def recorded_inputs(monkeypatch, module) -> list[torch.Tensor]:
    """Every model input ``module``'s training_inputs makes, in order."""
    seen, real = [], module.training_inputs

    def recording(*args, **kwargs):
        x = real(*args, **kwargs)
        seen.append(x.clone())
        return x
    monkeypatch.setattr(module, "training_inputs", recording)
    return seen


def test_the_captured_steps_draw_the_eager_loops_random_stream_and_learn_the_same(monkeypatch):
    """Uncaptured on the CPU, the captured step's code against train_epoch: the same batches,
    crops and flips (the generator's draws in the same order), and the same training up to the
    optimizer's rounding. 36 images in batches of 16: the last batch of 4 runs eagerly."""
    import normbench.train as train_module

    arrays, train = uneven_data()
    bounds = batches_per_epoch(len(train.labels), CFG.batch_size)
    assert [hi - lo for lo, hi in bounds] == [16, 16, 4]
    normalizer = Normalizer(NORMALIZATIONS["dataset"], STATS)
    total = CFG.epochs * len(bounds)

    seed_everything(1)
    eager_model = tiny_net(len(arrays.classes))
    eager_gen = torch.Generator().manual_seed(1)
    opt, sched = make_optimizer(eager_model, CFG, total, CPU)
    eager_runner = Runner(eager_model, SpeedConfig("none", "none", False), CPU)
    eager_inputs = recorded_inputs(monkeypatch, train_module)
    eager = [train_epoch(eager_runner, opt, sched, train, bounds, normalizer, CFG, eager_gen)
             for _ in range(CFG.epochs)]

    seed_everything(1)
    steps_model = tiny_net(len(arrays.classes))
    steps_gen = torch.Generator().manual_seed(1)
    steps = CapturedSteps(Runner(steps_model, SpeedConfig("none", "captured", False), CPU), CFG,
                          train, bounds, normalizer, steps_gen, total, capture=False)
    steps_inputs = recorded_inputs(monkeypatch, captured)
    results = [steps.epoch() for _ in range(CFG.epochs)]

    assert len(steps_inputs) == len(eager_inputs) == CFG.epochs * 3
    for a, b in zip(eager_inputs, steps_inputs):
        assert torch.equal(a, b)  # the same images, crops, flips and normalization
    assert torch.equal(steps_gen.get_state(), eager_gen.get_state())
    for (loss_a, correct_a), (loss_b, correct_b, lr) in zip(eager, results):
        assert loss_b.item() == pytest.approx(loss_a.item(), rel=1e-5)
        assert correct_b.item() == correct_a.item()
    assert lr == pytest.approx(opt.param_groups[0]["lr"], abs=1e-15)  # the cosine's end: 0
    for a, b in zip(eager_model.state_dict().values(), steps_model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)


def test_captured_needs_cuda_and_adam():
    with pytest.raises(ConfigError, match="speed.compile: captured needs a CUDA device .* use "
                                          "speed.compile: auto or none"):
        SpeedConfig("auto", "captured", False).resolve(CPU)
    _, train = uneven_data()
    runner = Runner(tiny_net(6), SpeedConfig("none", "captured", False), CPU)
    sgd = TrainConfig(**{**CFG.__dict__, "optimizer": "sgd"})
    with pytest.raises(ConfigError, match="captured needs train.optimizer: adam"):
        CapturedSteps(runner, sgd, train, [(0, 16)], Normalizer(NORMALIZATIONS["none"], STATS),
                      torch.Generator(), 1)

