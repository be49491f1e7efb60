"""`make study`: every setting as a DVC experiment with several seeds, run, then compared.

A study is a list of DVC experiments, one per setting (norm x weights) and, if split, per seed;
each carries every param it runs with as ``-S`` overrides, so its name (a hash of them) says what
it is. An executor runs the experiments that are missing (``local``: DVC's own queue on this
machine; ``slurm``: one job each on a cluster), and ``compare`` reads them back as one study.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from normbench import startshare
from normbench.config import SpeedConfig, load_params, require
from normbench.eta import Eta
from normbench.grid import Grid, cell_name, check_per_model
from normbench.io import run_main
from normbench.models import WEIGHTS
from normbench.normalizations import NORMALIZATIONS
from normbench.pretrain import NORM_CHOICES, PRETRAINING, check_norm, check_start
from normbench.registry import ConfigError
from normbench.runs import cell_records, exp_show, finished_experiments
from normbench.runstate import Experiment, study_lock

EXECUTORS = ("local", "slurm")  # DVC's queue on this machine | one Slurm job per experiment
COMPARE_DIR = "compare"


def plan(norms: list[str], weights: list[str], seeds: list[int], extra: list[str] = (),
         split_seeds: bool = False, pretrain_norms: list[str] = ("dataset",)
         ) -> list[Experiment]:
    """The study's experiments: one per norm x weights (x pretraining norm for ``pretrained``)
    (x seed when ``split_seeds``).

    ``extra`` are further ``key=value`` overrides that every experiment runs with (e.g.
    ``train.epochs=1``); they are part of each name, so a study with other extras is another one.
    """
    groups = [(s,) for s in seeds] if split_seeds else [tuple(seeds)]
    exps = []
    for w in weights:
        for p in (pretrain_norms if w == "pretrained" else [None]):
            pretrain = (f"start.pretrained.norm={p}",) if p else ()
            for n in norms:
                if n == PRETRAINING and w == "scratch":
                    continue  # scratch weights were never pretrained: no such setting
                for group in groups:
                    seeds_arg = "seeds=[" + ",".join(map(str, group)) + "]"
                    exps.append(Experiment(n, w, group, (f"norm={n}", f"weights={w}", *pretrain,
                                                         seeds_arg, *extra), p))
    return exps


# --- which experiments are done ------------------------------------------------------------

def _finished(rev: dict) -> bool:
    """Whether an experiment's cell records hold every cell its params ask for."""
    data = rev.get("data") or {}
    params = ((data.get("params") or {}).get("params.yaml") or {}).get("data")
    metrics = cell_records(data)
    if not params:
        return False
    try:
        cells = Grid.from_params(params).cells()
    except ConfigError:
        return False
    return all("final_acc" in (metrics.get(cell_name(*c)) or {}) for c in cells)


def completed(repo: Path) -> set[str]:
    """Names of the experiments of HEAD that finished every cell."""
    names = set()
    for entry in exp_show(repo, all_commits=False):
        for rev in finished_experiments(entry):
            if rev.get("name") and _finished(rev):
                names.add(rev["name"])
    return names


# --- the command ------------------------------------------------------------------------------

def apply_sets(params: dict, sets: list[str]) -> dict:
    """``key.sub=value`` overrides, the value read as YAML, as `dvc exp run -S` does."""
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"--set {item!r} must look like key=value, e.g. train.epochs=1")
        node = params
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(value)
    return params


def check_study(repo: Path, experiments: list[Experiment]) -> None:
    """Every experiment's params are valid before anything is queued or submitted."""
    for exp in experiments:
        params = apply_sets(load_params(repo / "params.yaml"), list(exp.params))
        models = Grid.from_params(params).models
        check_start(params, models)
        check_per_model(params, models)  # the train block too
        SpeedConfig.from_params(require(params, "speed"))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Run every setting with several seeds, then "
                                 "compare them (make study).")
    ap.add_argument("--norms", nargs="+", default=list(NORMALIZATIONS),
                    help=f"fine-tuning norms, of: {', '.join(NORM_CHOICES)}")
    ap.add_argument("--pretrain-norms", nargs="+", default=["dataset"],
                    help="norms of the pipeline's own pretraining (for --weights pretrained)")
    ap.add_argument("--weights", nargs="+", default=["scratch"])
    ap.add_argument("--baseline", default="dataset",
                    help="the norm every other norm is compared with, under the same weights")
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="further params for every experiment, e.g. train.epochs=1")
    ap.add_argument("--jobs", default="auto", help="experiments at once (local executor)")
    ap.add_argument("--executor", default="local", help=f"one of: {', '.join(EXECUTORS)}")
    ap.add_argument("--slurm", nargs="*", default=[], metavar="KEY=VALUE",
                    help="Slurm options for --executor slurm, e.g. slurm_partition=gpu")
    ap.add_argument("--split-seeds", action="store_true",
                    help="one experiment per setting and seed (more jobs at once on a cluster)")
    ap.add_argument("--repo", default=".")
    args = ap.parse_args(argv)
    repo = Path(args.repo)
    for name in args.norms:
        check_norm(name)
    for name in args.pretrain_norms:
        NORMALIZATIONS.check(name)
    for name in args.weights:
        WEIGHTS.check(name)
    if check_norm(args.baseline) not in args.norms:
        raise ConfigError(f"the baseline norm {args.baseline!r} is not among the study's norms "
                          f"({' '.join(args.norms)}); add it to NORMS or choose BASELINE from them")
    if args.executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {args.executor!r}; valid choices: "
                          f"{', '.join(EXECUTORS)}")
    if args.jobs != "auto" and not (args.jobs.isdigit() and int(args.jobs) > 0):
        raise ConfigError(f"--jobs must be auto or a positive integer, got {args.jobs!r}")
    experiments = plan(args.norms, args.weights, args.seeds, args.set, args.split_seeds,
                       args.pretrain_norms)
    check_study(repo, experiments)
    with study_lock(repo):  # one study per repository; a second one is told which runs
        run(repo, experiments, args)


def exp_params(repo: Path, exp: Experiment) -> dict:
    """The params ``exp`` runs with: the repository's, with its ``-S`` overrides."""
    return apply_sets(load_params(repo / "params.yaml"), list(exp.params))


def cell_count(repo: Path, exp: Experiment) -> int:
    """How many cells (model x dataset x seed) ``exp`` trains."""
    return len(Grid.from_params(exp_params(repo, exp)).cells())


def run(repo: Path, experiments: list[Experiment], args: argparse.Namespace) -> None:
    """Run what is missing of ``experiments`` on the chosen executor, then compare them all."""
    done = completed(repo)
    todo = [e for e in experiments if e.name not in done]
    eta = Eta({e.name: cell_count(repo, e) for e in experiments})
    for exp in experiments:
        if exp.name in done:
            eta.end(exp.name)
    from normbench.dvcqueue import default_jobs, run_local

    jobs = default_jobs() if args.jobs == "auto" else int(args.jobs)
    print(f"study: {len(experiments)} experiments ({len(args.norms)} norms x "
          f"{len(args.weights)} weights), seeds {' '.join(map(str, args.seeds))}; "
          f"{len(experiments) - len(todo)} already done, {len(todo)} to run "
          f"({args.executor}{f', {jobs} at once' if args.executor == 'local' else ''}); "
          f"baseline: norm={args.baseline}, against every setting with the same weights",
          flush=True)
    print(f"study: {eta.line(jobs)}", flush=True)
    outcomes = {}
    try:
        waits = startshare.waits({e.name: startshare.start_stages(exp_params(repo, e))
                                  for e in todo})
        if todo and args.executor == "local":
            from normbench import gpushare

            share = gpushare.for_this_gpu()
            with gpushare.sharing(repo, jobs, share.mps) as mps:
                if share.why:
                    print(f"study: cells per GPU: {share.why}{'; MPS on' if mps else ''}",
                          flush=True)
                outcomes = run_local(repo, todo, jobs, eta=eta, waits=waits)
        elif todo:
            from normbench.cluster import run_on_slurm

            outcomes = run_on_slurm(repo, todo, args.slurm, waits=waits)
    except KeyboardInterrupt:
        raise SystemExit(130) from None  # the executor has stopped its jobs and said how to resume
    failed = {n: o for n, o in outcomes.items() if o != "done"}
    finished = [e for e in experiments if e.name not in failed]
    if finished:
        from normbench import compare

        compare.main(["--repo", str(repo), "--out", str(repo / COMPARE_DIR),
                      "--like", finished[0].name, "--baseline", args.baseline,
                      "--runs", *(e.name for e in finished)])
        print(f"study: open {repo / COMPARE_DIR / 'index.html'}")
    for name, outcome in failed.items():
        print(f"study: experiment {name} {outcome}", file=sys.stderr)
    for exp in experiments:
        if exp.name in failed and exp.norm == args.baseline:
            print(f"study: the baseline experiment {exp.name} ({exp.setting}) {failed[exp.name]}: "
                  f"no setting with weights={exp.weights} is compared (none against a "
                  "substitute)", file=sys.stderr)
    if failed:
        raise ConfigError(f"{len(failed)} of {len(experiments)} experiments failed (logs "
                          "above); run the same command again to retry only those")


if __name__ == "__main__":
    run_main(main)
