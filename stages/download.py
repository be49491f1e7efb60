"""download@<dataset>: build one dataset and write it in the uniform array format."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's library

from normbench.arrays import save_arrays  # noqa: E402
from normbench.config import load_params, require  # noqa: E402
from normbench.datasets import DATASETS, build_dataset  # noqa: E402
from normbench.io import run_main  # noqa: E402
from normbench.sources import Source  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("dataset", help=f"one of: {', '.join(DATASETS)}")
    ap.add_argument("out", help="output folder")
    args = ap.parse_args()
    DATASETS.check(args.dataset)
    params = load_params()
    source = Source.from_params(params)  # real datasets only: where to find or fetch them
    arrays = build_dataset(args.dataset, require(params, f"data.{args.dataset}"), source)
    save_arrays(arrays, args.out)
    print(f"{args.dataset}: {len(arrays.train.labels)} train, {len(arrays.test.labels)} test, "
          f"{len(arrays.classes)} classes, {arrays.train.images.shape[1:]} -> {args.out}")


if __name__ == "__main__":
    run_main(main)
