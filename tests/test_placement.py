"""GPU placement on a CPU: the rule, the claims of concurrent processes, and resolve_device."""

import collections
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from normbench import placement
from normbench.config import resolve_device
from normbench.placement import Gpu, claim_gpu, live_claims, pick
from normbench.registry import ConfigError
from conftest import ROOT

# A process that claims a GPU from a faked device list, prints its choice and holds the claim
# until its stdin closes. The list is what CUDA_VISIBLE_DEVICES would show of a node's cards.
CLAIMER = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    sys.path.insert(0, {src!r})
    from normbench.placement import Gpu, claim_gpu
    node = json.loads(os.environ["FAKE_NODE"])  # physical index -> (uuid, used MiB)
    visible = os.environ["CUDA_VISIBLE_DEVICES"].split(",")
    gpus = [Gpu(i, *node[p]) for i, p in enumerate(visible)]
    gpu = claim_gpu(gpus, Path(sys.argv[1]))
    print(json.dumps([gpu.ordinal, gpu.uuid]), flush=True)
    sys.stdin.read()
""").format(src=str(ROOT / "src"))


def claimers(folder, visible: list[str], node: dict) -> list[subprocess.Popen]:
    """Start one claiming process per CUDA_VISIBLE_DEVICES value, all at once."""
    env = {**os.environ, "FAKE_NODE": json.dumps(node)}
    return [subprocess.Popen([sys.executable, "-c", CLAIMER, str(folder)], text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             env={**env, "CUDA_VISIBLE_DEVICES": v}) for v in visible]


def choices(procs: list[subprocess.Popen]) -> list[tuple[int, str]]:
    return [tuple(json.loads(p.stdout.readline())) for p in procs]


def release(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.stdin.close()
        p.wait(timeout=30)


NODE = {str(i): (f"GPU-{i}", 500.0) for i in range(4)}


def test_pick_prefers_fewest_cells_then_free_memory_then_the_first():
    gpus = [Gpu(0, "a", 900.0), Gpu(1, "b", 100.0), Gpu(2, "c", 100.0)]
    assert pick(gpus, {}).uuid == "b"  # all idle: least memory in use, then the lower ordinal
    assert pick(gpus, {"b": 1}).uuid == "c"
    assert pick(gpus, {"b": 1, "c": 1}).uuid == "a"  # memory counts only among equal cells
    assert pick([Gpu(0, "a", None), Gpu(1, "b", None)], {"a": 2, "b": 1}).uuid == "b"


def test_eight_cells_started_at_once_spread_over_four_gpus(tmp_path):
    procs = claimers(tmp_path, ["0,1,2,3"] * 8, NODE)
    try:
        chosen = choices(procs)
        assert collections.Counter(uuid for _, uuid in chosen) == {f"GPU-{i}": 2 for i in range(4)}
        release(procs[:2])  # two cells end: their claims go, and the next cell takes their GPU
        later = claimers(tmp_path, ["0,1,2,3"], NODE)
        assert choices(later)[0][1] in {uuid for _, uuid in chosen[:2]}
        release(later)
    finally:
        release(procs[2:])
    assert live_claims(tmp_path) == {}
    assert not list(tmp_path.glob("*.claim"))


def test_a_killed_cell_no_longer_counts(tmp_path):
    procs = claimers(tmp_path, ["0,1"], NODE)
    assert choices(procs) == [(0, "GPU-0")]
    procs[0].send_signal(signal.SIGKILL)  # no exit handler runs: its claim file stays behind
    procs[0].wait(timeout=30)
    assert len(list(tmp_path.glob("*.claim"))) == 1
    assert live_claims(tmp_path) == {}
    assert not list(tmp_path.glob("*.claim"))


def test_claims_count_cards_whatever_each_process_sees(tmp_path):
    # Three jobs of one node, each with its own CUDA_VISIBLE_DEVICES, as Slurm or a user sets.
    first = claimers(tmp_path, ["1"], NODE)
    assert choices(first) == [(0, "GPU-1")]  # its cuda:0 is the node's card 1
    second = claimers(tmp_path, ["1,0"], NODE)
    assert choices(second) == [(1, "GPU-0")]  # card 1 is taken: its cuda:1, card 0
    third = claimers(tmp_path, ["0,1,2"], NODE)
    assert choices(third) == [(2, "GPU-2")]
    release(first + second + third)


def test_visible_gpus_come_from_torch_in_visible_order(monkeypatch):
    props = {0: "uuid-b", 1: "uuid-a"}
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: type("Props", (), {"uuid": props[i]})())
    monkeypatch.setattr(torch.cuda, "device_memory_used", lambda i: (i + 1) * 2**20 * 1024)
    assert placement.visible_gpus() == [Gpu(0, "uuid-b", 1024.0), Gpu(1, "uuid-a", 2048.0)]

    def no_nvml(i):
        raise ModuleNotFoundError("pynvml does not seem to be installed")
    monkeypatch.setattr(torch.cuda, "device_memory_used", no_nvml)
    assert [g.used_mib for g in placement.visible_gpus()] == [None, None]


@pytest.fixture
def two_fake_gpus(monkeypatch, tmp_path):
    """resolve_device on a CPU machine that pretends to have two idle GPUs."""
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    monkeypatch.setattr(placement, "visible_gpus",
                        lambda: [Gpu(0, "GPU-0", 10.0), Gpu(1, "GPU-1", 10.0)])
    monkeypatch.setattr(placement, "CLAIMS", tmp_path)
    return current


def test_auto_places_each_cell_and_makes_it_the_current_device(two_fake_gpus, tmp_path):
    # One process claims both in turn here, as two cells would: the second gets the other GPU.
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert two_fake_gpus == [0, 1]
    assert live_claims(tmp_path) == {"GPU-0": 1, "GPU-1": 1}
    for path in tmp_path.glob("*.claim"):
        path.unlink()


def test_a_pinned_device_must_exist(two_fake_gpus):
    assert resolve_device("cuda:1") == torch.device("cuda", 1) and two_fake_gpus == [1]
    for name in ("cuda:2", "cuda:x"):
        with pytest.raises(ConfigError, match=f"device: {name} does not exist here; valid "
                                              "choices: auto, cuda, cuda:0, cuda:1"):
            resolve_device(name)


def test_claim_folder_is_made_when_missing(tmp_path):
    folder = tmp_path / "a" / "b"
    gpu = claim_gpu([Gpu(0, "GPU-0", None)], folder)
    assert gpu.uuid == "GPU-0" and live_claims(folder) == {"GPU-0": 1}
    (folder / f"GPU-0.{os.getpid()}.claim").unlink()
