"""start@<model>: the weights every train cell of a model starts from (normbench.pretrain).

scratch: a marker; imagenet: torchvision's release, verified; pretrained: a model trained here on
the source dataset of ``start.pretrained``. Only the params block of the weights kind in use is a
dependency, so editing pretraining re-runs nothing that starts from scratch.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's library

from normbench.machine import pin_cpu  # noqa: E402

pin_cpu()  # before torch starts: pretraining trains too (normbench.machine)

import torch  # noqa: E402

from normbench.config import SpeedConfig, load_params, require, resolve_device  # noqa: E402
from normbench.io import atomic_path, run_main  # noqa: E402
from normbench.models import MODELS  # noqa: E402
from normbench.pretrain import check_start, make_start  # noqa: E402
from normbench.weights import check_mirror  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True, help=f"one of: {', '.join(MODELS)}")
    ap.add_argument("--out", required=True, help="output: the start file (.pt)")
    args = ap.parse_args()
    params = load_params()
    model = MODELS.check(args.model)
    kind = check_start(params, [model])
    mirror = check_mirror(require(params, "weights_mirror"))
    device = resolve_device(require(params, "device"))
    speed = SpeedConfig.from_params(require(params, "speed")).resolve(device)

    def on_epoch(record: dict) -> None:
        print(f"  pretraining epoch {record['epoch']:3d}  source val_acc "
              f"{record['val_acc']:.4f}  test_acc {record['test_acc']:.4f}", flush=True)

    start = make_start(kind, model, require(params, f"start.{kind}"), mirror, device, speed,
                       on_epoch, require(params, "per_model"))
    with atomic_path(args.out) as tmp:
        torch.save(start, tmp)
    done = (f", source {start['source']} val_acc {start['metrics']['val_acc']:.4f}, final "
            f"test_acc {start['metrics']['final_acc']:.4f}"
            if kind == "pretrained" else "")
    print(f"start@{model}: {kind}{done} -> {args.out}")


if __name__ == "__main__":
    run_main(main)
