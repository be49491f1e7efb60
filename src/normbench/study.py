"""`make study`: every setting as a DVC experiment with several seeds, run, then compared.

A study is a list of DVC experiments, one per setting (norm x weights) and, if split, per seed;
each carries every param it runs with as ``-S`` overrides, so its name (a hash of them) says what
it is. An executor runs the experiments that are missing (``local``: DVC's own queue on this
machine; ``slurm``: one job each on a cluster), and ``compare`` reads them back as one study.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Experiment:
    """One DVC experiment of a study: one setting, with its seeds."""

    norm: str
    weights: str
    seeds: tuple[int, ...]
    params: tuple[str, ...]  # every `-S key=value` it runs with: setting, seeds and extras

    @property
    def name(self) -> str:
        """``<norm>-<weights>-<hash>``: the same params always give the same name."""
        digest = hashlib.sha1("\n".join(self.params).encode()).hexdigest()[:8]
        return f"{self.norm}-{self.weights}-{digest}"

    @property
    def setting(self) -> str:
        """The setting as compare names it."""
        return f"norm={self.norm} weights={self.weights}"

    def set_args(self) -> list[str]:
        """The arguments of `dvc exp run` that make this experiment."""
        return [arg for p in self.params for arg in ("-S", p)]


def plan(norms: list[str], weights: list[str], seeds: list[int], extra: list[str] = (),
         split_seeds: bool = False) -> list[Experiment]:
    """The study's experiments: one per norm x weights (x seed when ``split_seeds``).

    ``extra`` are further ``key=value`` overrides that every experiment runs with (e.g.
    ``train.epochs=1``); they are part of each name, so a study with other extras is another one.
    """
    groups = [(s,) for s in seeds] if split_seeds else [tuple(seeds)]
    exps = []
    for w in weights:
        for n in norms:
            for group in groups:
                seeds_arg = "seeds=[" + ",".join(map(str, group)) + "]"
                exps.append(Experiment(n, w, group,
                                       (f"norm={n}", f"weights={w}", seeds_arg, *extra)))
    return exps
