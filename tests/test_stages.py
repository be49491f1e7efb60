"""The stage entry points fail fast, with the fix in the message, and overwrite nothing."""

import json
import time

import pytest
import yaml
from conftest import TINY_MODEL, run_stage

CELL = "resnet18-digits-223"
# The killed cells train the small model: what they check is the stage's files, not the network.
LONG_CELL = f"{TINY_MODEL}-digits-223"


def train_args(tmp_path, model: str = "resnet18"):
    cell = f"{model}-digits-223"
    return ["--model", model, "--dataset", "digits", "--seed", "223",
            "--data", "data/digits", "--stats", "data/stats/digits.json",
            "--start", f"starts/{model}.pt",
            "--metrics", f"metrics/{cell}.json", "--live", f"plots/{cell}",
            "--predictions", f"predictions/{cell}.npy", "--checkpoint", f"checkpoints/{cell}.pt",
            "--weightdist", f"weightdist/{cell}"]


@pytest.fixture
def project(tmp_path, params):
    """A project folder with params and an earlier run's metrics file."""
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / f"{CELL}.json").write_text('{"best_acc": 0.5}\n')

    def write(**changes):
        (tmp_path / "params.yaml").write_text(yaml.safe_dump({**params, **changes}))
        return tmp_path
    return write


@pytest.mark.parametrize("changes, message", [
    ({"norm": "zscore"}, "unknown norm 'zscore'; valid choices: dataset, imagenet, instance, "
                         "minmax, none"),
    ({"weights": "random"}, "unknown weights 'random'; valid choices: scratch, imagenet"),
    ({"device": "tpu"}, "unknown device 'tpu'; valid choices: auto, cpu, cuda"),
    ({"norm": 3}, "norm must be a string, got int 3"),
    ({"weights_mirror": "ftp.example"}, "weights_mirror must be null or a base URL"),
    ({"train": {"epochs": "ten"}}, "train: unknown keys"),
    ({"speed": {"amp": "fp16", "compile": "auto", "compile_fallback": False}},
     "unknown speed.amp 'fp16'; valid choices: auto, bf16, none"),
    ({}, "dataset folder data/digits is missing train_images.npy; run `dvc repro download@digits`"),
])
def test_train_rejects_bad_input_before_training(project, tmp_path, changes, message):
    cwd = project(**changes)
    start = time.monotonic()
    proc = run_stage(cwd, "train", *train_args(tmp_path))
    assert proc.returncode == 1
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert time.monotonic() - start < 60  # seconds, not a training run
    assert (tmp_path / "metrics" / f"{CELL}.json").read_text() == '{"best_acc": 0.5}\n'
    assert not any((tmp_path / d).exists() for d in ("plots", "checkpoints", "weightdist"))


def with_data(tmp_path) -> None:
    """A small dataset and its statistics where the train stage looks for digits'."""
    from normbench.arrays import save_arrays
    from normbench.datasets import make_shapes
    from normbench.io import write_json
    from normbench.stats import stats_table

    arrays = make_shapes(4, 0.5, 0)
    save_arrays(arrays, tmp_path / "data" / "digits")
    write_json(tmp_path / "data" / "stats" / "digits.json", stats_table(arrays.train.images))


def test_train_on_cuda_without_cuda_names_the_alternatives(project, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the stage's process sees no CUDA device
    with_data(tmp_path)  # the data is checked before the device
    proc = run_stage(project(device="cuda"), "train", *train_args(tmp_path))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert ("device: cuda asked for, but this machine has no CUDA device; use device: auto or "
            "device: cpu") in proc.stderr
    assert (tmp_path / "metrics" / f"{CELL}.json").read_text() == '{"best_acc": 0.5}\n'


def test_train_refuses_statistics_without_channel_moments_naming_the_stage(project, tmp_path):
    with_data(tmp_path)
    (tmp_path / "data" / "stats" / "digits.json").write_text('{"n_images": 2}')
    proc = run_stage(project(), "train", *train_args(tmp_path))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert ("dataset statistics without a per-channel mean and std in data/stats/digits.json; "
            "run `dvc repro stats@digits` to rebuild them") in proc.stderr


def test_train_rejects_unknown_model_from_the_command_line(project, tmp_path):
    args = train_args(tmp_path)
    args[1] = "resnet19"
    proc = run_stage(project(), "train", *args)
    assert proc.returncode == 1 and "unknown model 'resnet19'; valid choices: resnet18" in proc.stderr


def test_download_unknown_dataset_and_missing_params(project, tmp_path):
    proc = run_stage(project(), "download", "imagenette", "data/imagenette")
    assert proc.returncode == 1
    assert ("unknown dataset 'imagenette'; valid choices: digits, shapes, gratings, cifar10, "
            "cifar100, svhn, tiny_imagenet_200") in proc.stderr
    proc = run_stage(project(data={}), "download", "digits", "data/digits")
    assert proc.returncode == 1 and "params.yaml has no 'data.digits'" in proc.stderr
    assert not (tmp_path / "data").exists()


def test_stats_on_missing_dataset(project, tmp_path):
    proc = run_stage(project(), "stats", "data/shapes", "data/stats/shapes.json")
    assert proc.returncode == 1 and "run `dvc repro download@shapes`" in proc.stderr


def test_imagenet_weights_offline_fail_before_training(project, tmp_path, closed_port_url,
                                                        monkeypatch):
    with_data(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    cwd = project(weights="imagenet", weights_mirror=closed_port_url)
    # The weights are fetched by the start stage, before any cell trains.
    proc = run_stage(cwd, "start", "--model", "resnet18", "--out", "starts/resnet18.pt")
    assert proc.returncode == 1, proc.stderr
    assert "cannot get ImageNet weights resnet18-f37072fd.pth" in proc.stderr
    assert "or use weights: scratch" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "starts").exists()
    # Without its start file, a cell says which stage makes it, and writes nothing.
    proc = run_stage(cwd, "train", *train_args(tmp_path))
    assert proc.returncode == 1, proc.stderr
    assert ("start file starts/resnet18.pt is missing or unreadable" in proc.stderr
            and "run `dvc repro start@resnet18`" in proc.stderr), proc.stderr
    assert (tmp_path / "metrics" / f"{CELL}.json").read_text() == '{"best_acc": 0.5}\n'
    assert not (tmp_path / "plots").exists()


def start_a_long_cell(project, tmp_path, epochs: int = 50):
    """A train cell with an earlier run's curve in place, started and past its first epoch:
    (the process, every file's bytes before it started)."""
    import subprocess
    import sys

    from conftest import ROOT
    from normbench.arrays import save_arrays
    from normbench.datasets import make_shapes
    from normbench.io import write_json
    from normbench.stats import stats_table

    arrays = make_shapes(40, 0.5, 0)
    save_arrays(arrays, tmp_path / "data" / "digits")
    write_json(tmp_path / "data" / "stats" / "digits.json", stats_table(arrays.train.images))
    (tmp_path / "plots" / LONG_CELL).mkdir(parents=True, exist_ok=True)
    (tmp_path / "plots" / LONG_CELL / "old.tsv").write_text("an earlier run's curve\n")
    cwd = project(device="cpu", train={**yaml.safe_load((ROOT / "params.yaml").read_text())[
        "train"], "epochs": epochs, "batch_size": 16})
    start = run_stage(cwd, "start", "--model", TINY_MODEL, "--out", f"starts/{TINY_MODEL}.pt")
    assert start.returncode == 0, start.stderr  # scratch: the start file, nothing trained
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    proc = subprocess.Popen([sys.executable, str(ROOT / "stages" / "train.py"),
                             *train_args(tmp_path, TINY_MODEL)], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if "epoch   1" in line:  # training, with its temporary folders in place
            break
    return proc, before


def test_train_killed_with_sigterm_leaves_the_tracked_folders_as_they_were(project, tmp_path):
    """What `scancel` or `dvc queue kill` does to a running cell: no temporary folder remains."""
    import signal

    proc, before = start_a_long_cell(project, tmp_path)
    assert list((tmp_path / "plots").glob(f".{LONG_CELL}.*")), "the cell should be writing by now"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # no leftover temporary, no output touched


def test_a_cell_killed_outright_leaves_its_partial_outputs_where_no_stage_looks(project,
                                                                                 tmp_path):
    """SIGKILL runs no cleanup: in a DVC repository the half-written outputs sit in DVC's temp
    folder, not in plots/ (a dependency of the report), and the cell's next run removes them."""
    import signal

    from normbench.io import PARTIAL_DIR

    (tmp_path / ".dvc").mkdir()
    proc, before = start_a_long_cell(project, tmp_path)
    proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL
    outside = lambda: {p: p.read_bytes() for p in tmp_path.rglob("*")  # noqa: E731
                       if p.is_file() and ".dvc" not in p.relative_to(tmp_path).parts}
    assert outside() == {p: b for p, b in before.items() if ".dvc" not in p.parts}
    assert [p.name for p in (tmp_path / PARTIAL_DIR).iterdir() if LONG_CELL in p.name], \
        "the killed cell's partial outputs should be in DVC's temp folder"
    again = run_stage(project(device="cpu", train={**yaml.safe_load(
        (tmp_path / "params.yaml").read_text())["train"], "epochs": 1}), "train",
        *train_args(tmp_path, TINY_MODEL))
    assert again.returncode == 0, again.stderr
    assert list((tmp_path / PARTIAL_DIR).iterdir()) == []  # the rerun removed the leftovers
    assert json.loads((tmp_path / "metrics" / f"{LONG_CELL}.json").read_text())["epochs"] == 1


# Run by test_the_stages_start_light in a fresh interpreter: argv is the checkout's root. Prints
# which of torch and torchvision are imported after each step.
LIGHT_START = """
import importlib.util, runpy, shutil, sys, tempfile
from pathlib import Path
root = Path(sys.argv[1])
sys.path.insert(0, str(root / "src"))

def imported():
    return " ".join(m for m in ("torch", "torchvision") if m in sys.modules)

for stage in ("check", "download", "stats", "report"):
    spec = importlib.util.spec_from_file_location(stage, root / "stages" / f"{stage}.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
import normbench.study, normbench.compare, normbench.__main__
print("imported:", imported())
project = Path(tempfile.mkdtemp())
shutil.copy(root / "params.yaml", project)
sys.argv = ["check.py", str(project / "valid_names.json")]
import os; os.chdir(project)
runpy.run_path(str(root / "stages" / "check.py"), run_name="__main__")
print("checked:", imported())
# A cell with a bad input (no dataset folder here: the last check before torch starts; its
# statistics are in place) is refused before torch starts.
Path("s.json").write_text('{"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}')
sys.argv = ["train.py", "--model", "smallcnn", "--dataset", "shapes", "--seed", "1", "--data",
            "data/shapes", "--stats", "s.json", "--start", "s.pt", "--metrics", "m.json", "--live",
            "live", "--predictions", "p.npy", "--checkpoint", "c.pt", "--weightdist", "w"]
try:
    runpy.run_path(str(root / "stages" / "train.py"), run_name="__main__")
except SystemExit as e:
    print(f"train refused ({e.code}):", imported())
from normbench.models import build_model
build_model("smallcnn", 3)
print("built smallcnn:", imported())
"""


def test_the_stages_start_light():
    """check, download, stats and report (and a study's and compare's commands) read registries
    and records, never a tensor: importing torch would cost each of them about 2 CPU-s, more
    than a check's own work, in every `dvc repro` and every test. A cell checks its inputs
    before torch starts, so a typo is refused in a fraction of a second. The model registry builds
    smallcnn with torch alone: torchvision (1.5 CPU-s more where nothing imported
    torch._dynamo before it) waits for a torchvision model."""
    import subprocess
    import sys

    from conftest import ROOT

    proc = subprocess.run([sys.executable, "-c", LIGHT_START, str(ROOT)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "imported: " and lines[1].startswith("grid ok: "), proc.stdout
    assert lines[2:] == ["checked: ", "train refused (1): ", "built smallcnn: torch"], proc.stdout
    assert "error: dataset folder data/shapes is missing train_images.npy" in proc.stderr
