"""The training loop of one cell (model x dataset x seed) on a device-resident dataset.

The whole uint8 dataset lives on the training device; each batch is cropped, flipped and
normalized there, so no worker processes or PIL are involved and the CPU path is the same code as
the GPU path. On a GPU the model runs under bf16 autocast and torch.compile with CUDA graphs
(``speed`` params): at 32 px these nets are bound by kernel launches, not arithmetic.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from normbench.config import SpeedConfig, TrainConfig
from normbench.arrays import Arrays, Split
from normbench import compile_cache
from normbench.compile_cache import CompileCache
from normbench.io import StageFailed
from normbench.machine import ran_on
from normbench.normalizations import ChannelStats, Norm, Normalizer
from normbench.significance import ALPHA, above_chance
from normbench.validation import choose_epoch, hold_out
from normbench.weightdist import WeightRecorder

T = TypeVar("T")


class TrainingDiverged(StageFailed):
    """The loss became NaN or infinite: the cell stops and writes no metrics."""


class CompileFailed(StageFailed):
    """torch.compile failed and ``speed.compile_fallback`` does not allow the eager path."""


def compile_errors() -> tuple[type[Exception], ...]:
    """What torch.compile raises when it cannot trace or build a graph (inductor's included).

    Imported on demand: torch._dynamo adds seconds to the start of every eager cell.
    """
    from torch._dynamo.exc import TorchDynamoException
    from torch._inductor.exc import CppCompileError

    return TorchDynamoException, CppCompileError


class Runner:
    """The model's forward pass as ``speed`` asks: bf16 autocast, torch.compile, or plain fp32.

    torch.compile builds lazily: a compile error surfaces at the first call of each new input
    shape or train/eval mode, in the forward or the backward. ``guarded`` catches it there and,
    if ``compile_fallback`` allows, switches to the eager model for the rest of the cell.
    """

    def __init__(self, model: nn.Module, speed: SpeedConfig, device: torch.device,
                 cache: CompileCache | None = None) -> None:
        self.model = model
        self.device = device
        self.speed = speed
        self.amp = speed.amp == "bf16"
        self.compiled: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.cache: CompileCache | None = None
        self.fallback_reason: str | None = None  # why the cell runs eager although compile was set
        if speed.compile not in ("none", "captured"):  # captured: normbench.captured
            try:
                # dynamic=False: one graph per input shape, never a symbolic batch size. The
                # loops keep to two shapes (``fixed_shapes``): a dynamic graph would cost a
                # second full compile and slower kernels for the rest of the cell.
                self.compiled = torch.compile(model, mode=speed.compile, dynamic=False)
            except RuntimeError as e:  # e.g. a Python version torch cannot compile for
                self.give_up(e)
        # What an earlier cell of the same model, shapes and settings compiled: loaded before
        # the first compile, saved after the first epoch (normbench.compile_cache).
        self.cache = cache if self.compiled is not None else None
        if self.cache is not None:
            self.cache.start()

    @property
    def fixed_shapes(self) -> bool:
        """Whether every compiled call must keep one batch size per mode: the two graphs of a
        cell are train at ``batch_size`` and eval at ``eval_batch_size``."""
        return self.compiled is not None

    def forward(self, x: torch.Tensor, eager: bool = False) -> torch.Tensor:
        """The model on ``x``; ``eager``: without the compiled graph (a short last batch)."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            if self.compiled is None or eager:
                return self.model(x)
            if self.device.type == "cuda":
                # A new step: outputs of the previous CUDA graph replay may be overwritten.
                torch.compiler.cudagraph_mark_step_begin()
            return self.compiled(x)

    def guarded(self, fn: Callable[[], T]) -> T:
        """Run ``fn()``; after a compile error, run it again eagerly (if allowed)."""
        if self.compiled is None:
            return fn()
        try:
            return fn()
        except compile_errors() as e:
            self.give_up(e)
            return fn()

    def give_up(self, error: Exception, what: str | None = None) -> None:
        """Stop the cell with ``error`` and the fixes or, with ``compile_fallback``, warn and go
        on eagerly; ``what`` failed (default: torch.compile in this cell's mode)."""
        # torch's messages put the cause in their first paragraph and debugging hints after it.
        cause = " ".join(str(error).strip().split("\n\n")[0].split())[:400]
        what = what or f"torch.compile (mode {self.speed.compile})"
        reason = f"{what} failed: {type(error).__name__}: {cause}"
        if self.cache is not None:  # nothing to save: cells waiting for this one go on
            self.cache.abandon()
        if not self.speed.compile_fallback:
            raise CompileFailed(f"{reason}. Set speed.compile: none to train eagerly, or "
                                "speed.compile_fallback: true to fall back automatically"
                                ) from error
        print(f"warning: {reason}; training eagerly (speed.compile_fallback: true)", flush=True)
        self.compiled, self.fallback_reason = None, reason

    def after_epoch(self) -> None:
        """A training epoch ended: both graphs exist, so the first one saves them."""
        if self.cache is not None:
            self.cache.finish()

    def cache_report(self) -> dict:
        """The compile cache's part of a cell's timing (empty when nothing compiles)."""
        return self.cache.report() if self.cache is not None else {}

    def used(self) -> dict:
        """What this cell actually ran with (recorded in the checkpoint)."""
        return {"amp": self.speed.amp, "compile": self.speed.compile,
                "compiled": self.speed.compile != "none" and self.fallback_reason is None,
                "compile_fallback_reason": self.fallback_reason}


@dataclass(frozen=True)
class DeviceSplit:
    images: torch.Tensor  # uint8, N x 3 x H x W, on the training device
    labels: torch.Tensor  # int64, N


def to_device(split: Split, device: torch.device) -> DeviceSplit:
    """A split as NCHW uint8 tensors on ``device`` (4x smaller than float32)."""
    images = torch.from_numpy(np.ascontiguousarray(split.images)).permute(0, 3, 1, 2)
    return DeviceSplit(images.contiguous().to(device),
                       torch.from_numpy(np.ascontiguousarray(split.labels)).to(device))


def seed_everything(seed: int) -> None:
    """Seed torch's global generator (model initialisation) and ask for deterministic kernels."""
    # cuBLAS is deterministic only with a fixed workspace; it must be set before CUDA starts.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    # Deterministic mode also fills fresh memory with NaN (a guard against reading it uninitialised)
    # at a cost in speed; results do not depend on it, since every kernel writes what it reads.
    torch.utils.deterministic.fill_uninitialized_memory = False


def augment(x: torch.Tensor, pad: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Per-image random crop after zero padding by ``pad`` pixels, and random horizontal flip.

    The same augmentation as torchvision's RandomCrop(size, padding=pad) + RandomHorizontalFlip(),
    done for the whole uint8 batch at once with one gather.
    """
    n, c, h, w = x.shape
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (n, 1), generator=gen, device=x.device)
        ox = torch.randint(0, 2 * pad + 1, (n, 1), generator=gen, device=x.device)
        rows = (oy + torch.arange(h, device=x.device))[:, None, :, None]  # n x 1 x h x 1
        cols = (ox + torch.arange(w, device=x.device))[:, None, None, :]  # n x 1 x 1 x w
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chan = torch.arange(c, device=x.device)[None, :, None, None]
        x = padded[batch, chan, rows, cols]
    if flip:
        mirror = torch.rand(n, generator=gen, device=x.device) < 0.5
        x = torch.where(mirror[:, None, None, None], x.flip(3), x)
    return x


def training_inputs(images: torch.Tensor, normalizer: Normalizer, pad: int, flip: bool,
                    gen: torch.Generator) -> torch.Tensor:
    """A uint8 batch as the model sees it in training: cropped, flipped and normalized.

    The normalization is fitted to each image as stored and applied to its padded crop, so a
    per-image setting never counts the padding: the image's own pixels get exactly their test-time
    values, and the border is that image's black.
    """
    return normalizer.apply(augment(images, pad, flip, gen), normalizer.affine(images))


@torch.no_grad()
def evaluate(runner: Runner, split: DeviceSplit, normalize: Callable[[torch.Tensor], torch.Tensor],
             batch_size: int) -> tuple[float, float, torch.Tensor]:
    """Mean cross-entropy, accuracy (fraction correct) and the predicted class of every image."""
    runner.model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=split.labels.device)
    preds = []
    n = len(split.labels)
    size = batch_size if runner.fixed_shapes else min(batch_size, n)  # the eval graph's batch
    for start in range(0, n, size):
        images, y = split.images[start:start + size], split.labels[start:start + size]
        if runner.fixed_shapes and len(y) < size:
            # The last batch padded to the graph's shape: in eval mode BatchNorm uses its
            # running statistics, so each image's logits do not depend on the others.
            images = torch.cat([images, images.new_zeros((size - len(y), *images.shape[1:]))])
        x = normalize(images)
        logits = runner.guarded(lambda: runner.forward(x))[:len(y)]
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
        preds.append(logits.argmax(1))
    pred = torch.cat(preds)
    return loss_sum.item() / n, (pred == split.labels).double().mean().item(), pred.cpu()


def eval_batch(eval_batch_size: int, *splits: Split) -> int:
    """The one eval batch of a cell: ``eval_batch_size``, or its largest evaluated split where
    that is smaller. Every split's last batch is padded to it, so validation and test share
    the cell's one eval graph."""
    return min(eval_batch_size, max(len(s.labels) for s in splits))


def make_optimizer(model: nn.Module, cfg: TrainConfig, total_steps: int, device: torch.device):
    params = model.parameters()
    # On CUDA: one kernel for all parameters instead of several per tensor (None: torch's default).
    fused = True if device.type == "cuda" else None
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    else:
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay,
                              fused=fused)
    if cfg.scheduler == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    return opt, sched


def epoch_runner(runner: Runner, cfg: TrainConfig, split: DeviceSplit,
                 bounds: list[tuple[int, int]], normalizer: Normalizer, gen: torch.Generator,
                 total_steps: int) -> Callable[[], tuple[torch.Tensor, torch.Tensor, float]]:
    """One training epoch per call: (summed loss, correct count, learning rate after it).

    ``speed.compile: captured`` runs the whole step as one CUDA graph (normbench.captured);
    every other mode runs ``train_epoch`` with ``make_optimizer``'s optimizer and scheduler.
    """
    if runner.speed.compile == "captured":
        from normbench.captured import CapturedSteps  # it imports this module

        return CapturedSteps(runner, cfg, split, bounds, normalizer, gen, total_steps).epoch
    opt, sched = make_optimizer(runner.model, cfg, total_steps, runner.device)

    def epoch() -> tuple[torch.Tensor, torch.Tensor, float]:
        loss_sum, correct = train_epoch(runner, opt, sched, split, bounds, normalizer, cfg, gen)
        return loss_sum, correct, opt.param_groups[0]["lr"]
    return epoch


def batches_per_epoch(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) of every batch; a last batch of one image is dropped (BatchNorm needs two)."""
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    return [b for b in bounds if b[1] - b[0] > 1]


def chance_level(labels: torch.Tensor) -> float:
    """Accuracy of always answering the split's most common class (fraction)."""
    return torch.bincount(labels).max().item() / len(labels)


def execution(device: torch.device, speed: dict) -> str:
    """How a cell ran, as resolved: device kind, precision, compile mode ("cpu fp32 eager").

    Cells that ran differently are not compared (kernels, rounding and random streams differ).
    """
    precision = "bf16" if speed.get("amp") == "bf16" else "fp32"
    # The captured step's numbers are its own whether or not the graph ran (normbench.captured).
    captured = speed.get("compile") == "captured"
    mode = speed.get("compile") if speed.get("compiled") or captured else "eager"
    return f"{device.type} {precision} {mode}"


@dataclass
class CellResult:
    """A trained cell. Everything kept is from the final epoch; an epoch is chosen on the
    validation split only (``best_epoch``). ``best_acc``, the maximum over epochs of the test
    accuracy, is the original study's figure: selected on the test set, used by no choice."""

    history: list[dict]  # one record per epoch; epoch 0 is the untrained model
    best_epoch: int  # the epoch of the highest validation accuracy (normbench.validation)
    final_state: dict[str, torch.Tensor]  # weights after the last epoch, on the CPU
    final_predictions: np.ndarray  # predicted test label per image after the last epoch
    chance_acc: float  # accuracy of always answering the most common test class
    above_chance_p: float  # one-sided binomial test of the final accuracy against chance_acc
    val_chance_acc: float  # the same two for the validation split: what a choice reads
    val_above_chance_p: float
    execution: str  # device kind, precision, compile mode as resolved (``execution``)
    ran_on: str  # versions and the kind of machine (normbench.machine.ran_on)
    train_seconds: float  # wall time of all epochs, evaluation and compilation included
    images_per_s: float  # training throughput, evaluation excluded
    speed: dict = field(default_factory=dict)  # what the cell ran with (Runner.used)
    peak_gpu_mib: float | None = None  # peak memory allocated on the GPU (MiB); None on a CPU
    compile_cache: dict = field(default_factory=dict)  # cold or warm, hits (Runner.cache_report)

    @property
    def learned(self) -> bool:
        """Whether the final test accuracy is above chance (binomial p < ALPHA)."""
        return self.above_chance_p < ALPHA

    def timing(self) -> dict:
        """What the run took: different on every run, so never in a hashed output
        (:mod:`normbench.timing`)."""
        gpu = {} if self.peak_gpu_mib is None else {"peak_gpu_mib": round(self.peak_gpu_mib, 1)}
        return {"train_seconds": round(self.train_seconds, 3),
                "images_per_s": round(self.images_per_s, 1), **gpu, **self.compile_cache}

    def metrics(self) -> dict:
        """What was learned: a function of the inputs and the seed (no timing), so that a rerun on
        the same machine writes the same bytes."""
        last = self.history[-1]
        return {
            "final_acc": last["test_acc"],  # what verdicts use: no selection on the test set
            "final_loss": last["test_loss"],
            "val_acc": last["val_acc"],  # what choices use (per_model, bench/model_budget.py)
            "val_loss": last["val_loss"],
            "best_epoch": self.best_epoch,  # chosen on validation
            "best_val_acc": self.history[self.best_epoch]["val_acc"],
            # The original study's figure: max over epochs of the test accuracy, so selected on
            # the test set and optimistic; no choice and no verdict uses it.
            "best_acc": max(h["test_acc"] for h in self.history[1:]),
            "epochs": last["epoch"],
            "chance_acc": self.chance_acc,
            "above_chance_p": self.above_chance_p,
            "learned": self.learned,
            "val_chance_acc": self.val_chance_acc,
            "val_above_chance_p": self.val_above_chance_p,
            "execution": self.execution,
            "ran_on": self.ran_on,
            # How far the watched layers moved by the end (relative L2), when they were recorded.
            **{k: v for k, v in last.items() if k.startswith("drift_")},
        }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_epoch(runner: Runner, opt: torch.optim.Optimizer, sched, split: DeviceSplit,
                bounds: list[tuple[int, int]], normalizer: Normalizer,
                cfg: TrainConfig, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over ``split`` in a fresh random order.

    Returns the summed loss and the number of correct predictions as device tensors: nothing in
    the loop waits for the device, so the GPU never idles between steps.
    """
    runner.model.train()
    device = split.labels.device
    perm = torch.randperm(len(split.labels), generator=gen, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    full = bounds[0][1] - bounds[0][0] if bounds else 0  # the train graph's batch
    for lo, hi in bounds:
        idx = perm[lo:hi]
        x = training_inputs(split.images[idx], normalizer, cfg.pad, cfg.flip, gen)
        y = split.labels[idx]
        # A short last batch runs eagerly: padding it would change BatchNorm's batch statistics,
        # and its own graph would cost a compile for one step per epoch.
        eager = hi - lo != full

        def forward_backward() -> tuple[torch.Tensor, torch.Tensor]:
            opt.zero_grad(set_to_none=True)
            logits = runner.forward(x, eager=eager)
            loss = F.cross_entropy(logits.float(), y)
            loss.backward()
            return logits, loss

        logits, loss = runner.guarded(forward_backward)
        opt.step()
        sched.step()
        loss_sum += loss.detach().double() * (hi - lo)
        correct += (logits.detach().argmax(1) == y).sum()
    runner.after_epoch()
    return loss_sum, correct


def train_cell(model: nn.Module, arrays: Arrays, norm: Norm, stats: ChannelStats,
               cfg: TrainConfig, seed: int, device: torch.device,
               on_epoch: Callable[[dict], None] = lambda record: None,
               recorder: WeightRecorder | None = None,
               speed: SpeedConfig = SpeedConfig("none", "none", False)) -> CellResult:
    """Train ``model`` on ``arrays``'s train split less its validation split
    (``cfg.val_fraction``, normbench.validation), evaluate on both held-out splits after every
    epoch; raise TrainingDiverged on NaN.

    ``on_epoch`` receives each epoch's record (for live logging) as soon as it exists;
    ``recorder`` takes a weight snapshot at epoch 0 and after every epoch; ``speed`` (resolved,
    no ``auto``) sets bf16 autocast and torch.compile (or the captured step), the plain fp32
    eager path by default.
    """
    model = model.to(device)
    fit, held = hold_out(arrays.train, cfg.val_fraction)
    bounds = batches_per_epoch(len(fit.labels), cfg.batch_size)
    eval_size = eval_batch(cfg.eval_batch_size, held, arrays.test)
    runner = Runner(model, speed, device, compile_cache.for_cell(
        model, arrays, (bounds[0][1] - bounds[0][0], eval_size), speed, device))
    train, val, test = (to_device(s, device) for s in (fit, held, arrays.test))
    normalizer = Normalizer(norm, stats, device)
    gen = torch.Generator(device=device).manual_seed(seed)
    run_epoch = epoch_runner(runner, cfg, train, bounds, normalizer, gen, cfg.epochs * len(bounds))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def record_eval(epoch: int, extra: dict) -> tuple[dict, torch.Tensor, torch.Tensor]:
        val_loss, val_acc, val_pred = evaluate(runner, val, normalizer, eval_size)
        test_loss, test_acc, pred = evaluate(runner, test, normalizer, eval_size)
        drifts = recorder.record(model, epoch) if recorder is not None else {}
        record = {"epoch": epoch, **extra, "val_loss": val_loss, "val_acc": val_acc,
                  "test_loss": test_loss, "test_acc": test_acc, **drifts}
        on_epoch(record)
        return record, pred, val_pred

    start = time.perf_counter()
    record, pred, val_pred = record_eval(0, {})
    history = [record]
    step_seconds = 0.0
    seen = 0
    n = sum(hi - lo for lo, hi in bounds)
    for epoch in range(1, cfg.epochs + 1):
        _sync(device)
        t0 = time.perf_counter()
        loss_sum, correct, lr = run_epoch()
        train_loss = loss_sum.item() / n  # .item() waits for the device: the timing is honest
        step_seconds += time.perf_counter() - t0
        seen += n
        if not math.isfinite(train_loss):
            raise TrainingDiverged(
                f"train loss became {train_loss} in epoch {epoch}; no metrics were written. "
                f"Try a lower train.lr (now {cfg.lr}) or another norm."
            )
        record, pred, val_pred = record_eval(epoch, {"train_loss": train_loss,
                                                     "train_acc": correct.item() / n,
                                                     "lr": lr})
        history.append(record)
    chance, val_chance = chance_level(test.labels), chance_level(val.labels)
    correct = int((pred == test.labels.cpu()).sum())
    val_correct = int((val_pred == val.labels.cpu()).sum())
    return CellResult(
        history=history,
        best_epoch=choose_epoch(history),
        final_state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        final_predictions=pred.numpy().astype(np.int16),
        chance_acc=chance,
        above_chance_p=above_chance(correct, len(test.labels), chance),
        val_chance_acc=val_chance,
        val_above_chance_p=above_chance(val_correct, len(val.labels), val_chance),
        execution=execution(device, runner.used()),
        ran_on=ran_on(device),
        train_seconds=time.perf_counter() - start,
        images_per_s=seen / max(step_seconds, 1e-9),
        speed=runner.used(),
        peak_gpu_mib=torch.cuda.max_memory_allocated(device) / 2**20
        if device.type == "cuda" else None,
        compile_cache=runner.cache_report(),
    )
