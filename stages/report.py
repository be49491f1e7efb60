"""report: tables and figures for the current setting, from the earlier stages' outputs."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's library

from normbench import weightdist  # noqa: E402
from normbench.config import load_params  # noqa: E402
from normbench.grid import Grid, cell_name  # noqa: E402
from normbench.io import atomic_path, read_json, run_main, write_json  # noqa: E402
from normbench.registry import ConfigError  # noqa: E402
from normbench.report import (build_report, cell_records, metrics_summary,  # noqa: E402
                              read_history, read_metrics, write_report)
from normbench.runs import CELL_RECORDS  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--metrics", required=True, help="folder of metrics/<cell>.json")
    ap.add_argument("--live", required=True, help="folder of the cells' dvclive folders")
    ap.add_argument("--stats", required=True, help="folder of <dataset>.json statistics")
    ap.add_argument("--weightdist", required=True, help="folder of the cells' weight snapshots")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--summary", required=True, help="output: the DVC metrics, in percent")
    args = ap.parse_args()

    records = Path(CELL_RECORDS)  # where compare reads every cell's record, in git
    if records.parent != Path(args.out):
        raise ConfigError(f"--out must be {records.parent} (normbench.runs.CELL_RECORDS), got {args.out}")
    params = load_params()
    grid = Grid.from_params(params, check_names=False)  # checked by the check stage, upstream
    metrics = read_metrics(grid, Path(args.metrics))
    history = read_history(grid, Path(args.live))
    stats = {d: read_json(Path(args.stats) / f"{d}.json", "dataset statistics",
                          f"run `dvc repro stats@{d}`") for d in grid.datasets}
    weights = {cell_name(*c): weightdist.load(Path(args.weightdist) / cell_name(*c))
               for c in grid.cells()}
    report = build_report(params, grid, metrics, history, stats, weights)
    with atomic_path(args.out) as tmp:
        write_report(report, history, tmp)
        write_json(tmp / records.name, cell_records(metrics))
    write_json(args.summary, metrics_summary(metrics))
    print(f"report -> {args.out}/index.html, {args.out}/README.md and {args.summary}")


if __name__ == "__main__":
    run_main(main)
