"""The training loop of one cell (model x dataset x seed) on a device-resident dataset.

The whole uint8 dataset lives on the training device; each batch is cropped, flipped and
normalized there, so no worker processes or PIL are involved and the CPU path is the same code as
the GPU path.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from normbench.config import TrainConfig
from normbench.arrays import Arrays
from normbench.normalizations import ChannelStats, Normalization
from normbench.weightdist import WeightRecorder


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the cell stops and writes no metrics."""


@dataclass(frozen=True)
class DeviceSplit:
    images: torch.Tensor  # uint8, N x 3 x H x W, on the training device
    labels: torch.Tensor  # int64, N


def to_device(arrays: Arrays, device: torch.device) -> tuple[DeviceSplit, DeviceSplit]:
    """Train and test splits as NCHW uint8 tensors on ``device`` (4x smaller than float32)."""
    def move(split) -> DeviceSplit:
        images = torch.from_numpy(np.ascontiguousarray(split.images)).permute(0, 3, 1, 2)
        return DeviceSplit(images.contiguous().to(device), torch.from_numpy(split.labels).to(device))
    return move(arrays.train), move(arrays.test)


def seed_everything(seed: int) -> None:
    """Seed torch's global generator (model initialisation) and ask for deterministic kernels."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


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


@torch.no_grad()
def evaluate(model: nn.Module, split: DeviceSplit, normalize: Callable[[torch.Tensor], torch.Tensor],
             batch_size: int) -> tuple[float, float, torch.Tensor]:
    """Mean cross-entropy, accuracy (fraction correct) and the predicted class of every image."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=split.labels.device)
    preds = []
    for start in range(0, len(split.labels), batch_size):
        x = normalize(split.images[start:start + batch_size])
        y = split.labels[start:start + batch_size]
        logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
        preds.append(logits.argmax(1))
    pred = torch.cat(preds)
    n = len(split.labels)
    return loss_sum.item() / n, (pred == split.labels).double().mean().item(), pred.cpu()


def make_optimizer(model: nn.Module, cfg: TrainConfig, total_steps: int):
    params = model.parameters()
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    if cfg.scheduler == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    return opt, sched


def batches_per_epoch(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) of every batch; a last batch of one image is dropped (BatchNorm needs two)."""
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    return [b for b in bounds if b[1] - b[0] > 1]


@dataclass
class CellResult:
    history: list[dict]  # one record per epoch; epoch 0 is the untrained model
    best_epoch: int
    best_state: dict[str, torch.Tensor]  # weights at the best epoch, on the CPU
    best_predictions: np.ndarray  # predicted test label per image at the best epoch
    train_seconds: float  # wall time of all epochs, evaluation included
    images_per_s: float  # training throughput, evaluation excluded
    extra: dict = field(default_factory=dict)

    def metrics(self) -> dict:
        best = self.history[self.best_epoch]
        last = self.history[-1]
        return {
            "best_acc": best["test_acc"],
            "best_epoch": self.best_epoch,
            "final_acc": last["test_acc"],
            "final_loss": last["test_loss"],
            "epochs": last["epoch"],
            "train_seconds": round(self.train_seconds, 3),
            "images_per_s": round(self.images_per_s, 1),
            # How far the watched layers moved by the end (relative L2), when they were recorded.
            **{k: v for k, v in last.items() if k.startswith("drift_")},
        }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_cell(model: nn.Module, arrays: Arrays, norm: Normalization, stats: ChannelStats,
               cfg: TrainConfig, seed: int, device: torch.device,
               on_epoch: Callable[[dict], None] = lambda record: None,
               recorder: WeightRecorder | None = None) -> CellResult:
    """Train ``model`` on ``arrays`` and evaluate after every epoch; raise TrainingDiverged on NaN.

    ``on_epoch`` receives each epoch's record (for live logging) as soon as it exists;
    ``recorder`` takes a weight snapshot at epoch 0 and after every epoch.
    """
    model = model.to(device)
    train, test = to_device(arrays, device)
    normalize = lambda x: norm(x, stats)  # noqa: E731
    gen = torch.Generator(device=device).manual_seed(seed)
    bounds = batches_per_epoch(len(train.labels), cfg.batch_size)
    opt, sched = make_optimizer(model, cfg, total_steps=cfg.epochs * len(bounds))

    def record_eval(epoch: int, extra: dict) -> tuple[dict, torch.Tensor]:
        test_loss, test_acc, pred = evaluate(model, test, normalize, cfg.eval_batch_size)
        drifts = recorder.record(model, epoch) if recorder is not None else {}
        record = {"epoch": epoch, **extra, "test_loss": test_loss, "test_acc": test_acc, **drifts}
        on_epoch(record)
        return record, pred

    start = time.perf_counter()
    record, best_pred = record_eval(0, {})
    history, best_epoch = [record], 0
    best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    step_seconds = 0.0
    seen = 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        _sync(device)
        t0 = time.perf_counter()
        perm = torch.randperm(len(train.labels), generator=gen, device=device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        for lo, hi in bounds:
            idx = perm[lo:hi]
            x = normalize(augment(train.images[idx], cfg.pad, cfg.flip, gen))
            y = train.labels[idx]
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach().double() * (hi - lo)
            correct += (logits.detach().argmax(1) == y).sum()
        n = sum(hi - lo for lo, hi in bounds)
        train_loss = loss_sum.item() / n  # .item() waits for the device: the timing is honest
        step_seconds += time.perf_counter() - t0
        seen += n
        if not math.isfinite(train_loss):
            raise TrainingDiverged(
                f"train loss became {train_loss} in epoch {epoch}; no metrics were written. "
                f"Try a lower train.lr (now {cfg.lr}) or another norm."
            )
        record, pred = record_eval(epoch, {"train_loss": train_loss,
                                           "train_acc": correct.item() / n,
                                           "lr": opt.param_groups[0]["lr"]})
        history.append(record)
        if epoch == 1 or record["test_acc"] > history[best_epoch]["test_acc"]:
            best_epoch, best_pred = epoch, pred
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return CellResult(
        history=history,
        best_epoch=best_epoch,
        best_state=best_state,
        best_predictions=best_pred.numpy().astype(np.int16),
        train_seconds=time.perf_counter() - start,
        images_per_s=seen / max(step_seconds, 1e-9),
    )
