"""The whole train step in one CUDA graph (``speed.compile: captured``): unverified on a GPU.

At 32 px a train step is hundreds of small kernels, each launched from Python: augmentation with
its random draws, normalization, forward, loss and metric sums, backward, Adam, the learning
rate. This module runs that step as a function of device tensors alone (the batch's position in
the epoch, the step counter, the learning rate, the metric sums all live on the device), so it
can be captured once in a CUDA graph and replayed per batch: one launch per step, and no
inductor, so the warm-up is a few eager steps and one capture instead of a compile.

The same code runs uncaptured (``capture=False``, and on a CPU): a captured step must give what
the uncaptured one gives, since a replay launches the same kernels on the same inputs.

- Random draws come from the cell's generator, registered with the graph: a replay advances it
  as the same step run eagerly would, so the stream is the eager loop's.
- Adam is ``fused`` and ``capturable`` with its learning rate a device tensor, which the step
  sets from its step counter by the scheduler's closed form (``lr_at``).
- The graph has the shape of a full batch; a short last batch runs the same step uncaptured.
- Warm-up: the first ``WARMUP_STEPS`` full steps run eagerly on a side stream (optimizer state,
  cuBLAS and cuDNN set themselves up), as torch.cuda.graph asks; they are real training steps.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch
import torch.nn.functional as F

from normbench.config import TrainConfig
from normbench.normalizations import Normalizer
from normbench.registry import ConfigError
from normbench.train import DeviceSplit, Runner, training_inputs

WARMUP_STEPS = 3  # eager full steps before the capture (torch's own examples use 3)


def lr_at(step: torch.Tensor, base_lr: float, total_steps: int, scheduler: str) -> torch.Tensor:
    """The learning rate of optimizer step ``step`` (0 = the first), float64 on ``step``'s device.

    ``cosine``: CosineAnnealingLR's closed form, ``base_lr * (1 + cos(pi * step / total)) / 2``
    (the scheduler itself updates recursively: the two agree to float rounding); ``none``:
    ``base_lr``.
    """
    if scheduler == "none":
        return torch.full_like(step, base_lr, dtype=torch.float64)
    return base_lr * 0.5 * (1.0 + torch.cos(step.double() * (math.pi / total_steps)))


class CapturedSteps:
    """Training epochs of one cell whose full-batch step is captured in a CUDA graph.

    ``epoch()`` returns what ``train_epoch`` returns (summed loss and correct predictions, as
    device tensors) and the learning rate after the epoch.
    """

    def __init__(self, runner: Runner, cfg: TrainConfig, split: DeviceSplit,
                 bounds: list[tuple[int, int]], normalizer: Normalizer, gen: torch.Generator,
                 total_steps: int, capture: bool | None = None) -> None:
        if cfg.optimizer != "adam":
            raise ConfigError(f"speed.compile: captured needs train.optimizer: adam (fused and "
                              f"capturable), got {cfg.optimizer}; use speed.compile: auto")
        self.runner, self.cfg, self.split, self.bounds = runner, cfg, split, bounds
        self.normalizer, self.gen, self.total_steps = normalizer, gen, total_steps
        device = split.labels.device
        self.capture = device.type == "cuda" if capture is None else capture

        def zero(dtype: torch.dtype) -> torch.Tensor:
            return torch.zeros((), dtype=dtype, device=device)
        self.lr = torch.tensor(cfg.lr, dtype=torch.float32, device=device)  # the fused kernel's
        self.opt = torch.optim.Adam(runner.model.parameters(), lr=self.lr,
                                    weight_decay=cfg.weight_decay, fused=True, capturable=True)
        self.step_count = zero(torch.int64)  # optimizer steps so far: the schedule's clock
        self.offset = zero(torch.int64)  # where the next batch starts in this epoch's order
        self.loss_sum, self.correct = zero(torch.float64), zero(torch.int64)
        self.order = torch.empty(len(split.labels), dtype=torch.int64, device=device)
        self.full = bounds[0][1] - bounds[0][0] if bounds else 0  # the graph's batch size
        self.positions = torch.arange(self.full, device=device)  # 0 .. full - 1
        self.graph: torch.cuda.CUDAGraph | None = None
        self.eager_full_steps = 0
        # The last step's model input, and a hook called after every step: what a test
        # compares between a captured and an uncaptured run (inside the graph, x is static).
        self.last_inputs: torch.Tensor | None = None
        self.on_step: Callable[[CapturedSteps], None] | None = None

    def step(self, n: int) -> None:
        """One optimizer step on the next ``n`` images of this epoch's order, from device state
        alone: what the graph captures."""
        positions = self.positions[:n] + self.offset
        idx = self.order.index_select(0, positions)
        # The same function and draws as train_epoch: the generator's stream is the eager loop's.
        x = training_inputs(self.split.images.index_select(0, idx), self.normalizer,
                            self.cfg.pad, self.cfg.flip, self.gen)
        y = self.split.labels.index_select(0, idx)
        runner = self.runner
        # No autocast cache: cached bf16 weights would outlive the captured region.
        with torch.autocast(runner.device.type, dtype=torch.bfloat16, enabled=runner.amp,
                            cache_enabled=False):
            logits = runner.model(x)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        self.lr.copy_(lr_at(self.step_count, self.cfg.lr, self.total_steps, self.cfg.scheduler))
        self.opt.step()
        self.step_count += 1
        self.offset += n
        self.loss_sum += loss.detach().double() * n
        self.correct += (logits.detach().argmax(1) == y).sum()
        self.last_inputs = x

    def epoch(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One pass in a fresh random order: (summed loss, correct count, learning rate after)."""
        self.runner.model.train()
        # The epoch's order drawn as train_epoch draws it, outside the graph.
        self.order.copy_(torch.randperm(len(self.split.labels), generator=self.gen,
                                        device=self.order.device))
        for state in (self.offset, self.loss_sum, self.correct):
            state.zero_()
        for lo, hi in self.bounds:
            if hi - lo != self.full or not self.capture:
                self._eager(hi - lo)
            elif self.graph is not None:
                self.graph.replay()
            elif self.eager_full_steps < WARMUP_STEPS:
                self._eager(hi - lo, side_stream=True)
                self.eager_full_steps += 1
            else:
                self._capture()
            if self.on_step is not None:
                self.on_step(self)
        lr = lr_at(self.step_count, self.cfg.lr, self.total_steps, self.cfg.scheduler).item()
        return self.loss_sum.clone(), self.correct.clone(), lr

    def _eager(self, n: int, side_stream: bool = False) -> None:
        self.opt.zero_grad(set_to_none=True)
        if not side_stream:
            self.step(n)
            return
        # torch.cuda.graph's rule: warm-up steps before a capture run on a side stream.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self.step(n)
        torch.cuda.current_stream().wait_stream(stream)

    def _capture(self) -> None:
        """Capture one full step and replay it (a capture records, it does not run); if capture
        fails, the cell stops or, with ``speed.compile_fallback``, goes on uncaptured."""
        graph = torch.cuda.CUDAGraph()
        if not hasattr(graph, "register_generator_state"):  # torch before 2.5
            self.runner.give_up(RuntimeError(f"torch {torch.__version__} cannot capture draws "
                                             "of a generator of its own (no "
                                             "CUDAGraph.register_generator_state)"), CAPTURE)
            self.capture = False
            self._eager(self.full)
            return
        graph.register_generator_state(self.gen)
        # Gradients are allocated inside the graph's memory pool: each replay writes them there.
        self.opt.zero_grad(set_to_none=True)
        try:
            with torch.cuda.graph(graph):
                self.step(self.full)
        except RuntimeError as e:  # an op that synchronizes, or one the graph cannot hold
            with contextlib.suppress(RuntimeError):  # the failed capture's own error, again
                torch.cuda.synchronize()
            self.runner.give_up(e, CAPTURE)
            self.capture = False
            self._eager(self.full)
            return
        self.graph = graph
        graph.replay()


CAPTURE = "capturing the train step in a CUDA graph (speed.compile: captured)"
