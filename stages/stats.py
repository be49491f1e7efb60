"""stats@<dataset>: channel statistics of the train split, before and after each normalization."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's library

from normbench.arrays import load_arrays  # noqa: E402
from normbench.io import run_main, write_json  # noqa: E402
from normbench.stats import stats_table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("data", help="dataset folder written by the download stage")
    ap.add_argument("out", help="output JSON file")
    args = ap.parse_args()
    arrays = load_arrays(args.data, mmap=True)
    table = stats_table(arrays.train.images)
    write_json(args.out, table)
    print(f"{args.data}: mean {[round(m, 4) for m in table['mean']]}, "
          f"std {[round(s, 4) for s in table['std']]} -> {args.out}")


if __name__ == "__main__":
    run_main(main)
