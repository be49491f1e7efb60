"""train@<model>-<dataset>-<seed>: train one cell and write its metrics, curves and checkpoint."""

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's library

from normbench.machine import details, pin_cpu  # noqa: E402

pin_cpu()  # before torch starts: threads, vector width, MKL branch (normbench.machine)

# Only what checks the inputs is imported up here; torch, dvclive and the training loop (3 to 4
# CPU-s of imports) wait in main() until the inputs have passed.
import numpy as np  # noqa: E402

from normbench.arrays import load_arrays  # noqa: E402
from normbench.config import (SpeedConfig, TrainConfig, check_device, load_params,  # noqa: E402
                              require, resolve_device)
from normbench.datasets import DATASETS  # noqa: E402
from normbench.grid import cell_name  # noqa: E402
from normbench.io import atomic_path, read_json, run_main, write_json  # noqa: E402
from normbench.models import MODELS, WEIGHTS  # noqa: E402
from normbench.pretrain import build_from_start, check_norm, load_start, resolve_norm  # noqa: E402
from normbench.registry import ConfigError  # noqa: E402
from normbench.stats import read_channel_stats  # noqa: E402
from normbench.timing import write_timing  # noqa: E402
from normbench.weights import check_mirror  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True, help=f"one of: {', '.join(MODELS)}")
    ap.add_argument("--dataset", required=True, help=f"one of: {', '.join(DATASETS)}")
    ap.add_argument("--seed", required=True, type=int)
    ap.add_argument("--data", required=True, help="dataset folder (download stage)")
    ap.add_argument("--stats", required=True, help="dataset statistics JSON (stats stage)")
    ap.add_argument("--start", required=True, help="the model's start file (start stage)")
    ap.add_argument("--metrics", required=True, help="output: metrics JSON")
    ap.add_argument("--live", required=True, help="output: dvclive folder of per-epoch curves")
    ap.add_argument("--predictions", required=True, help="output: final epoch's test predictions")
    ap.add_argument("--checkpoint", required=True, help="output: final weights and config")
    ap.add_argument("--weightdist", required=True,
                    help="output: watched layers' weight distributions per epoch")
    args = ap.parse_args()

    # Check every input before any work, and all that needs no torch (the params, the data and
    # its statistics) before torch starts: a typo costs a fraction of a second, not a training
    # run. The device and the start file come after.
    params = load_params()
    model_name, dataset = MODELS.check(args.model), DATASETS.check(args.dataset)
    norm_name = check_norm(require(params, "norm"))
    weights = WEIGHTS.check(require(params, "weights"))
    mirror = check_mirror(require(params, "weights_mirror"))
    cfg = TrainConfig.from_params(require(params, "train")).for_model(
        require(params, "per_model"), model_name)
    device_name = check_device(require(params, "device"))
    speed_params = SpeedConfig.from_params(require(params, "speed"))
    arrays = load_arrays(args.data)
    rebuild = f"run `dvc repro stats@{dataset}` to rebuild them"
    channel_stats = read_channel_stats(read_json(args.stats, "dataset statistics", rebuild),
                                       f" in {args.stats}; {rebuild}")
    device = resolve_device(device_name)  # torch starts here
    speed = speed_params.resolve(device)
    start = load_start(args.start, model_name)
    if start["kind"] != weights:
        raise ConfigError(f"{args.start} holds {start['kind']} weights but weights is {weights}; "
                          f"run `dvc repro start@{model_name}`")
    norm, stats, norm_text = resolve_norm(norm_name, start, channel_stats)

    import torch
    import torchvision
    from dvclive import Live

    from normbench.train import seed_everything, train_cell
    from normbench.weightdist import WeightRecorder

    seed_everything(args.seed)
    model = build_from_start(start, len(arrays.classes), mirror)
    cell = cell_name(model_name, dataset, args.seed)
    origin = {"imagenet": f" ({start.get('version')})",
              "pretrained": f" ({start.get('norm')} on {start.get('source')})"}.get(weights, "")
    print(f"{cell}: norm={norm_text} weights={weights}{origin} device={device} "
          f"epochs={cfg.epochs} amp={speed.amp} compile={speed.compile}")

    with atomic_path(args.live) as live_dir:
        live = Live(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None)

        def on_epoch(record: dict) -> None:
            for key, value in record.items():
                if key != "epoch":
                    live.log_metric(key, value)
            live.next_step()  # dvclive's step == epoch: step 0 is the untrained model
            # "epoch N  test_acc" first: make study's progress line reads it (dvcqueue.py).
            print(f"  epoch {record['epoch']:3d}  test_acc {record['test_acc']:.4f}  "
                  f"test_loss {record['test_loss']:.4f}  val_acc {record['val_acc']:.4f}",
                  flush=True)

        recorder = WeightRecorder(model, MODELS[model_name].watched)
        result = train_cell(model, arrays, norm, stats, cfg, args.seed,
                            device, on_epoch=on_epoch, recorder=recorder, speed=speed)
        live.end()

    metrics = result.metrics()
    with atomic_path(args.weightdist) as tmp:
        recorder.save(tmp)
    with atomic_path(args.predictions) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, result.final_predictions)
    with atomic_path(args.checkpoint) as tmp:
        torch.save({
            "state_dict": result.final_state,
            "model": model_name, "dataset": dataset, "seed": args.seed,
            "norm": norm_name, "norm_applied": norm_text, "weights": weights,
            "start": {k: v for k, v in start.items() if k != "state_dict"},
            "classes": arrays.classes,
            "channel_stats": {"mean": list(stats.mean), "std": list(stats.std)},
            "train": dataclasses.asdict(cfg), "speed": result.speed, "metrics": metrics,
            "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__},
        }, tmp)
    write_json(args.metrics, metrics)  # metrics exist only for a finished cell
    timing = result.timing()
    # not an output: it differs on every run (normbench.timing), as the machine's model may
    write_timing(cell, {**timing, "machine": details(device)})
    learned = "" if result.learned else (f" (NOT above chance {metrics['chance_acc']:.3f}: "
                                         "no verdict will rest on this cell)")
    print(f"{cell}: final_acc {metrics['final_acc']:.4f}{learned}, val_acc "
          f"{metrics['val_acc']:.4f} (best on validation: epoch {metrics['best_epoch']}), "
          f"{timing['images_per_s']:.0f} img/s")


if __name__ == "__main__":
    run_main(main)
