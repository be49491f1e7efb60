"""check: params.yaml's grid, norm and weights are valid, before any dataset is built.

download@<dataset> depends on this stage's output, so DVC runs it first; a typo in `datasets`
then fails here with the valid names, not with DVC's "Parameters 'data.<typo>' are missing".
The output is the list of valid names, not the grid, so adding a dataset to the grid re-runs
this check but none of the other datasets' stages.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's library

from normbench.config import RESTORE_PARAMS, load_params  # noqa: E402
from normbench.datasets import DATASETS  # noqa: E402
from normbench.grid import check_grid  # noqa: E402
from normbench.io import run_main, write_json  # noqa: E402
from normbench.models import MODELS  # noqa: E402
from normbench.pretrain import check_start  # noqa: E402
from normbench.registry import ConfigError  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out", help="output: the valid model and dataset names")
    args = ap.parse_args()
    params = load_params()
    try:
        grid = check_grid(params)
        kind = check_start(params, grid.models)  # e.g. an ImageNet version a model lacks: seconds
    except ConfigError as e:
        raise ConfigError(f"{e}\n{RESTORE_PARAMS}") from None
    write_json(args.out, {"models": MODELS.names(), "datasets": DATASETS.names()})
    print(f"grid ok: {len(grid.cells())} cells, weights {kind}")


if __name__ == "__main__":
    run_main(main)
