"""Pre-fetch the ImageNet weights of the configured models into $TORCH_HOME (`make weights`).

Run it where there is network, then copy $TORCH_HOME to the offline machine (or point TORCH_HOME
at a shared folder): `weights: imagenet` then loads from that cache without any network call.
"""

from __future__ import annotations

import sys

from normbench.config import load_params, require
from normbench.io import run_main
from normbench.models import MODELS
from normbench.pretrain import imagenet_version
from normbench.weights import fetch, weights_entry


def prefetch(models: list[str], imagenet: dict, mirror: str | None) -> None:
    """Every model's release first (a wrong version stops before any download), then the files."""
    entries = [weights_entry(MODELS.check(name), imagenet_version(imagenet, name))
               for name in models]
    for name, entry in zip(models, entries):
        path = fetch(entry, mirror)
        print(f"{name}: {entry.name} verified at {path}")


def main() -> None:
    params = load_params(sys.argv[1] if len(sys.argv) > 1 else "params.yaml")
    prefetch(require(params, "models"), require(params, "start.imagenet"),
             require(params, "weights_mirror"))


if __name__ == "__main__":
    run_main(main)
