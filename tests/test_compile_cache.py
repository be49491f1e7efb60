"""The compile cache: a second process loads what the first compiled, and compiles nothing."""

import fcntl
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from conftest import ROOT
from normbench.compile_cache import (CACHE_ENV, CacheKey, CompileCache, cache_counts,
                                     cache_folder)
from normbench.registry import ConfigError

# One cell of a small net on 36 shapes, compiled by inductor on the CPU (mode default), in a
# process of its own; it prints its timing (compile_cache: cold or warm, torch's cache counts)
# and its history.
CELL = """
import json, sys
sys.path.insert(0, {src!r})
import torch
from normbench.config import SpeedConfig, TrainConfig
from normbench.datasets import make_shapes
from normbench.normalizations import NORMALIZATIONS, ChannelStats
from normbench.train import seed_everything, train_cell

cfg = TrainConfig(epochs=1, batch_size=16, eval_batch_size=8, lr=0.001, weight_decay=0.0,
                  optimizer="adam", scheduler="cosine", pad=4, flip=True, val_fraction=0.25)
seed_everything(5)
net = torch.nn.Sequential(
    torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
    torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 6))
result = train_cell(net, make_shapes(8, 0.25, 0), NORMALIZATIONS["dataset"],
                    ChannelStats((0.5,) * 3, (0.25,) * 3), cfg, 5, torch.device("cpu"),
                    speed=SpeedConfig("none", "default", False))
print(json.dumps({{"timing": result.timing(), "history": result.history}}))
""".format(src=str(ROOT / "src"))


def run_cell(cache, inductor):
    """The cell in a fresh process with torch's own caches in ``inductor`` (empty: as on a fresh
    machine, only the compile cache can spare it a compile)."""
    env = {**os.environ, CACHE_ENV: str(cache), "TORCHINDUCTOR_CACHE_DIR": str(inductor)}
    proc = subprocess.run([sys.executable, "-c", CELL], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def two_cells(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compile-cache")
    cold = run_cell(tmp / "cache", tmp / "inductor-1")
    warm = run_cell(tmp / "cache", tmp / "inductor-2")
    return tmp / "cache", cold, warm


def test_a_second_process_loads_the_cells_graphs_and_compiles_none(two_cells):
    folder, cold, warm = two_cells
    first, second = cold["timing"], warm["timing"]
    assert first["compile_cache"] == "cold" and first["fxgraph_misses"] >= 2  # eval, train
    assert first["aot_autograd_misses"] >= 2
    assert second["compile_cache"] == "warm"
    assert second["fxgraph_misses"] == 0 and second["aot_autograd_misses"] == 0
    assert second["fxgraph_hits"] >= 2 or second["aot_autograd_hits"] >= 2
    assert warm["history"] == cold["history"]  # the same graphs: the same numbers
    [saved] = folder.glob("*.bin")
    record = json.loads(saved.with_suffix(".json").read_text())
    assert (record["classes"], record["image"], record["batch"], record["eval_batch"]) == (
        6, [3, 32, 32], 16, 8)
    assert record["device"] == "cpu" and record["compile"] == "default"
    assert record["bytes"] == saved.stat().st_size > 0


def test_a_cell_waits_for_the_cell_compiling_its_key_then_loads_its_file(two_cells, tmp_path):
    """The lock of a key held elsewhere (another cell compiling it): start() waits until that
    cell's file appears and its lock goes, then loads the file instead of compiling."""
    folder, _, _ = two_cells
    [saved] = folder.glob("*.bin")
    key = CacheKey(**{k: tuple(v) if k == "image" else v
                      for k, v in json.loads(saved.with_suffix(".json").read_text()).items()
                      if k in CacheKey.__dataclass_fields__})
    cache = CompileCache(key, tmp_path)
    cache_counts()  # imports torch._dynamo now: seconds the first time, which start() would wait
    holder = open(cache.path.with_suffix(".lock"), "a")
    fcntl.flock(holder, fcntl.LOCK_EX)

    def the_other_cell_finishes():
        time.sleep(1.5)
        cache.path.write_bytes(saved.read_bytes())
        holder.close()
    threading.Thread(target=the_other_cell_finishes).start()
    cache.start()
    assert cache.state == "warm" and cache.wait_s >= 1.0
    assert cache._lock is None  # it loaded: nothing of its own to save


def test_a_cold_cell_without_a_compiler_saves_nothing_and_frees_its_key(tmp_path):
    key = CacheKey("net:0", 2, (3, 8, 8), 4, 4, "none", "default", "x", "cpu")
    cache = CompileCache(key, tmp_path)
    cache.start()
    assert cache.state == "cold"
    cache.finish()  # nothing compiled in this process since start()
    assert not cache.path.exists()
    other = CompileCache(key, tmp_path)
    other.start()  # would wait LOCK_WAIT_S if the key were still locked
    assert other.state == "cold" and other.wait_s < 1.0


def test_the_cache_folder_is_absolute_or_the_projects(monkeypatch, tmp_path):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    assert str(cache_folder()) == ".compile-cache"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert cache_folder() == tmp_path
    monkeypatch.setenv(CACHE_ENV, "relative")
    with pytest.raises(ConfigError, match="must be an absolute path"):
        cache_folder()


def test_keys_differ_by_model_shape_and_settings():
    base = dict(model="resnet:aa", classes=10, image=(3, 32, 32), batch=256, eval_batch=1024,
                amp="bf16", compile="reduce-overhead", torch="2.11.0", device="NVIDIA H200")
    names = {CacheKey(**{**base, field: value}).name() for field, value in [
        ("model", "resnet:bb"), ("classes", 100), ("image", (3, 64, 64)), ("batch", 128),
        ("eval_batch", 512), ("amp", "none"), ("compile", "default"), ("torch", "2.14.1"),
        ("device", "NVIDIA H100")]}
    assert len(names | {CacheKey(**base).name()}) == 10
    assert CacheKey(**base).name().startswith("resnet-10c-32x32-b256-e1024-bf16-reduce-overhead-")


def test_an_unreadable_cache_file_means_a_cold_start_that_overwrites_it(tmp_path, capsys):
    key = CacheKey("net:0", 2, (3, 8, 8), 4, 4, "none", "default", "x", "cpu")
    cache = CompileCache(key, tmp_path)
    cache.path.write_bytes(b"not torch's artifacts")
    cache.start()
    assert cache.state == "cold" and cache._lock is not None  # it compiles, then saves
    assert "could not be loaded" in capsys.readouterr().out
    cache.abandon()
