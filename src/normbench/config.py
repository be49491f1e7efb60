"""Reading and checking params.yaml: every wrong name or type fails before any work starts."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import yaml

from normbench.placement import place_cell
from normbench.registry import ConfigError, Registry
from normbench.validation import check_fraction

if TYPE_CHECKING:
    import torch

OPTIMIZERS = Registry("train.optimizer", {"adam": "adam", "sgd": "sgd"})
SCHEDULERS = Registry("train.scheduler", {"cosine": "cosine", "none": "none"})
DEVICES = ("auto", "cpu", "cuda", "cuda:<index>")
AMPS = Registry("speed.amp", {"auto": "auto", "bf16": "bf16", "none": "none"})
# torch.compile's modes; reduce-overhead adds CUDA graphs, which is what a launch-bound 32 px net
# needs (one replay instead of hundreds of kernel launches per step). captured: no torch.compile,
# the whole train step in one CUDA graph (normbench.captured; CUDA only, never chosen by auto).
COMPILE_MODES = Registry("speed.compile", {m: m for m in (
    "auto", "reduce-overhead", "default", "max-autotune", "captured", "none")})


# What the check stage adds to a rejected value: `dvc exp run -S key=value` writes the value into
# params.yaml before any stage runs (rewriting the file without its comments) and leaves it there
# when the run fails.
RESTORE_PARAMS = ("params.yaml now holds this value (`dvc exp run -S` writes it there before the "
                  "run, and a failed run leaves it): restore the committed file with "
                  "`git checkout params.yaml`, or run again with a valid value, e.g. "
                  "`dvc exp run -S norm=dataset`")


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file {path} not found; run from the project root")
    params = yaml.safe_load(path.read_text())
    if not isinstance(params, dict):
        raise ConfigError(f"{path} must hold a mapping of params, got {type(params).__name__}")
    return params


def require(params: Mapping[str, Any], key: str) -> Any:
    """``params[key]`` for a dotted key, or an error naming the missing key."""
    node: Any = params
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ConfigError(f"params.yaml has no {key!r}; see the README's params section")
        node = node[part]
    return node


def check_type(value: Any, typ: type, key: str) -> Any:
    """Accept ``value`` if it is a ``typ`` (an int where a float is asked); a bool is no number."""
    ok = isinstance(value, typ) and not (typ is not bool and isinstance(value, bool))
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ConfigError(f"{key} must be {typ.__name__}, got {type(value).__name__} {value!r}")
    return value


def check_block(block: Any, schema: Mapping[str, type], where: str) -> dict[str, Any]:
    """Check that a params mapping has exactly the keys of ``schema``, each of the right type."""
    if block is None and not schema:
        return {}
    if not isinstance(block, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {type(block).__name__} {block!r}")
    unknown = sorted(set(block) - set(schema))
    missing = sorted(set(schema) - set(block))
    if unknown or missing:
        raise ConfigError(
            f"{where}: unknown keys {unknown}, missing keys {missing}; "
            f"valid keys: {', '.join(schema)}"
        )
    return {k: check_type(block[k], t, f"{where}.{k}") for k, t in schema.items()}


@dataclass(frozen=True)
class TrainConfig:
    """The ``train`` block of params.yaml: TooTouch/Normalization-Test's settings by default."""

    epochs: int  # passes over the train split
    batch_size: int  # images per optimizer step
    eval_batch_size: int  # images per forward pass at evaluation (memory only, not results)
    lr: float  # peak learning rate
    weight_decay: float  # L2 penalty coefficient (Adam's coupled form)
    optimizer: str  # adam | sgd (momentum 0.9)
    scheduler: str  # cosine (per step, down to 0) | none
    pad: int  # zero padding in pixels before the random crop back to the image size
    flip: bool  # random horizontal flip, per image
    val_fraction: float  # share of the train split held out for validation (normbench.validation)

    @classmethod
    def from_params(cls, block: Any) -> "TrainConfig":
        schema = typing.get_type_hints(cls)
        cfg = cls(**check_block(block, schema, "train"))
        for key in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(cfg, key) < 1:
                raise ConfigError(f"train.{key} must be >= 1, got {getattr(cfg, key)}")
        if cfg.lr <= 0 or cfg.weight_decay < 0 or cfg.pad < 0:
            raise ConfigError("train.lr must be > 0, train.weight_decay and train.pad >= 0")
        check_fraction(cfg.val_fraction)
        OPTIMIZERS.check(cfg.optimizer)
        SCHEDULERS.check(cfg.scheduler)
        return cfg

    def for_model(self, per_model: Any, model: str) -> "TrainConfig":
        """This config with ``per_model[model]``'s keys in place of the shared ones.

        ``per_model`` (params.yaml) gives a model its own budget where the shared one leaves it
        at chance, e.g. ``{vgg16: {lr: 0.0001}}``: a model not named trains with this config.
        """
        if not isinstance(per_model, Mapping):
            raise ConfigError(f"per_model must be a mapping of model name to train keys, "
                              f"got {type(per_model).__name__} {per_model!r}")
        own = per_model.get(model) or {}
        fields = typing.get_type_hints(TrainConfig)
        if not isinstance(own, Mapping) or not set(own) <= set(fields):
            raise ConfigError(f"per_model.{model} must be a mapping of train keys, got {own!r}; "
                              f"valid keys: {', '.join(fields)}")
        try:
            return TrainConfig.from_params({**{k: getattr(self, k) for k in fields}, **own})
        except ConfigError as e:
            raise ConfigError(f"per_model.{model}: {e}") from None


def check_device(name: Any) -> str:
    """``name`` if it names a device (whether this machine has it is :func:`resolve_device`'s)."""
    if not isinstance(name, str) or not (name in ("auto", "cpu", "cuda") or
                                         name.startswith("cuda:")):
        raise ConfigError(f"unknown device {name!r}; valid choices: {', '.join(DEVICES)}")
    return name


def resolve_device(name: Any) -> torch.device:
    """The device a cell trains on; asking for CUDA without it is an error.

    ``auto`` and ``cuda`` place the cell on the least-loaded visible GPU (normbench.placement):
    where a cell runs is a run-time choice, so it is no param that would change its hash.
    ``cuda:<index>`` pins it; ``auto`` falls back to the CPU on a machine without CUDA. A CUDA
    device is made the process's current device.
    """
    check_device(name)
    # torch is imported here, not with this module: reading and checking params needs none of
    # it, and importing it costs seconds of CPU in every process that does.
    import torch

    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"device: {name} asked for, but this machine has no CUDA device; "
                          "use device: auto or device: cpu")
    if name in ("auto", "cuda"):
        return place_cell()
    count = torch.cuda.device_count()
    index = name.removeprefix("cuda:")
    if not (index.isdigit() and int(index) < count):
        raise ConfigError(f"device: {name} does not exist here; valid choices: auto, cuda, "
                          + ", ".join(f"cuda:{i}" for i in range(count)))
    torch.cuda.set_device(int(index))  # as place_cell does: stray allocations land there too
    return torch.device("cuda", int(index))


@dataclass(frozen=True)
class SpeedConfig:
    """The ``speed`` block of params.yaml: how fast a cell trains, not what it learns.

    ``auto`` picks the fast path on CUDA and the plain fp32 eager path on a CPU, where bf16 and
    compilation cost more than they save. The resolved values go into each checkpoint.
    """

    amp: str  # auto | bf16 (autocast forward and backward; weights, optimizer stay fp32) | none
    compile: str  # auto | reduce-overhead | default | max-autotune | captured | none
    compile_fallback: bool  # torch.compile failing: train eager with a warning (true) or stop

    @classmethod
    def from_params(cls, block: Any) -> "SpeedConfig":
        cfg = cls(**check_block(block, typing.get_type_hints(cls), "speed"))
        AMPS.check(cfg.amp)
        COMPILE_MODES.check(cfg.compile)
        return cfg

    def resolve(self, device: torch.device) -> "SpeedConfig":
        """Replace ``auto`` by what it means on ``device``; refuse what ``device`` cannot do."""
        import torch

        cuda = device.type == "cuda"
        if self.compile == "captured" and not cuda:
            raise ConfigError(f"speed.compile: captured needs a CUDA device (the step is "
                              f"captured in a CUDA graph), and this cell runs on {device}; "
                              "use speed.compile: auto or none")
        bf16 = cuda and torch.cuda.is_bf16_supported(including_emulation=False)
        amp = ("bf16" if bf16 else "none") if self.amp == "auto" else self.amp
        mode = ("reduce-overhead" if cuda else "none") if self.compile == "auto" else self.compile
        return SpeedConfig(amp=amp, compile=mode, compile_fallback=self.compile_fallback)
