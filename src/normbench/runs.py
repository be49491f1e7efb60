"""Runs (commits and DVC experiments) and which of them may be compared.

A comparison holds everything fixed except the setting (norm, weights) and the seed. A cell enters
it only if everything that decides what it learns matches the reference run's:

- every learning param (the ``train`` block, its dataset's ``data.<name>`` block, ``speed``, ...);
- its train stage's code and data: the dependency hashes that the run's own ``dvc.lock`` records
  for the cell;
- how it ran: device kind, precision and compile mode as resolved (``execution`` in its metrics),
  and on what kind of machine (``ran_on``: torch and torchvision versions, the CPU's maker,
  pinned vector width and thread count, or the GPU's name; normbench.machine). The CPU's model
  is not part of it: the train stage pins what made two x86-64 CPUs of one maker differ, and
  two makers' CPUs differ however pinned. A run that recorded no ``ran_on``, or one without
  the maker (older code), matches none that did.

A cell whose ``dvc.lock`` entry disagrees with the run's params.yaml (params edited without
``dvc repro``), or that has no entry, is stale and left out. Every left-out cell is listed with
the reason. The same cell found in two comparable runs with different results is reported,
never silently merged.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from normbench.grid import cell_name
from normbench.registry import ConfigError

SETTING_KEYS = ("norm", "weights")  # what a comparison varies, with the seed...
PRETRAIN_NORM = "start.pretrained.norm"  # ...and, for weights: pretrained, the pretraining norm
GRID_KEYS = ("models", "datasets", "seeds")  # which cells a run has, not what they learn
# Where data, weights and compute come from: files are hash-checked, and the device is the
# machine's own choice (on one machine `auto` is always the same device).
PLACE_KEYS = ("device", "weights_mirror", "data_root", "data_mirror", "download_dir")
# Metrics that must agree for two runs of a cell to count as the same result (timings may not).
RESULT_KEYS = ("best_acc", "final_acc", "final_loss")
MISSING = "(missing)"
# Every cell's record (report.cell_records), written by the report stage into its folder: in git
# in every commit and experiment like metrics.json, but not a DVC metric (metrics.json holds the
# reviewer's figures in percent). exp_show reads it from git for each run.
CELL_RECORDS = "report/cells.json"
TRAIN_STAGE = "train@{cell}"  # a cell's stage in dvc.lock
START_STAGE = "start@{model}"  # its model's start stage (the weights it starts from)


@dataclass
class Run:
    """One commit or experiment: its params, and the metrics of each of its cells."""

    rev: str
    name: str
    params: dict[str, Any]
    timestamp: str = ""  # ISO time of the commit or experiment
    cells: dict[tuple[str, str, int], dict] = field(default_factory=dict)  # (model, dataset, seed)
    lock: dict | None = None  # its dvc.lock's stages (``attach_locks``); None: not read

    @property
    def setting(self) -> str:
        return setting_of(self.params)


def setting_of(params: dict) -> str:
    """"norm=<n> weights=<w>", with " pretrain=<norm>" for the pipeline's own pretraining."""
    text = f"norm={params['norm']} weights={params['weights']}"
    if params["weights"] == "pretrained":
        text += f" pretrain={((params.get('start') or {}).get('pretrained') or {}).get('norm')}"
    return text


def _params(data: dict) -> dict | None:
    return ((data.get("params") or {}).get("params.yaml") or {}).get("data")


def _run_from(entry: dict) -> Run | None:
    data = entry.get("data") or {}
    params = _params(data)
    if not params or "norm" not in params or "weights" not in params:
        return None
    run = Run(entry["rev"], entry.get("name") or entry["rev"][:7], params,
              str(data.get("timestamp") or ""))
    for cell, cell_metrics in cell_records(data).items():
        model, dataset, seed = cell.rsplit("-", 2)
        run.cells[(model, dataset, int(seed))] = cell_metrics
    return run


def cell_records(data: dict) -> dict[str, dict]:
    """{cell: its whole record} of one rev of ``exp_show``: from CELL_RECORDS (added by
    exp_show), or in older commits from metrics.json, which then held {cell: {best_acc, ...}}
    (and means per model x dataset, which have no best_acc), or from one metrics/<cell>.json
    per cell. Today's metrics.json ({cell: {final_acc_pct, ...}}) has no record."""
    records = {}
    for path, metrics in (data.get("metrics") or {}).items():
        values = metrics.get("data") or {}
        per_cell = {Path(path).stem: values} if "best_acc" in values else values
        records |= {cell: m for cell, m in per_cell.items()
                    if isinstance(m, dict) and "best_acc" in m}  # else a mean, or broken
    return records


def finished_experiments(entry: dict) -> list[dict]:
    """The revs of a commit's experiments that finished, in ``dvc exp show --json``.

    A queued or running experiment is listed too, with the metrics of its temporary workspace:
    the commit's own until its report stage runs, and never collected if its queue worker was
    killed. Those are not results.
    """
    return [rev for exp in entry.get("experiments") or []
            if (exp.get("executor") or {}).get("state", "success") == "success"
            for rev in exp.get("revs") or []]


def parse_exp_show(entries: list[dict]) -> list[Run]:
    """Commits and their finished experiments from ``dvc exp show --json`` (the workspace is
    skipped)."""
    runs = []
    for entry in entries:
        if entry.get("rev") == "workspace":
            continue
        runs.append(_run_from(entry))
        runs.extend(_run_from(rev) for rev in finished_experiments(entry))
    return [r for r in runs if r is not None and r.cells]


# pragma: no mutate start (I/O: runs dvc; `make mutation` covers parsing and selection)
EXP_SHOW_WAIT_S = 30.0  # how long a queue task may lack a readable record (or a workspace)


def exp_show(repo: Path, all_commits: bool = True, wait_s: float = EXP_SHOW_WAIT_S) -> list[dict]:
    """``dvc exp show --json`` of the repository (every commit, or HEAD only).

    Tried again, once a second for up to ``wait_s``, while it fails on a queue task's ``.run``
    record, missing or half-written: `exp show` reads the record of every active task, and DVC
    calls a task active as soon as a worker takes it, before the record exists, and rewrites
    the record in place (seen in test_study_e2e: a study started right after a Ctrl-C); and
    while it fails on the temporary workspace of a task that has just ended.
    A task that ended well but lost its record fails it for good: it is taken off DVC's queue
    (``dvcqueue.repair``, which says so), and `exp show` runs again.
    """
    from normbench.dvcqueue import INVALID_TASK, repair

    cmd = ["dvc", "exp", "show", "--json", *(["--all-commits"] if all_commits else [])]
    deadline = None  # from the first failure: `exp show --all-commits` alone can take 40 s
    while True:
        proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
        if proc.returncode == 0:
            return with_cell_records(repo, json.loads(proc.stdout))
        if INVALID_TASK.search(proc.stderr) and repair(repo):
            continue  # a task that had ended without its record: off the queue now
        unreadable = _unreadable_task_record(proc.stderr)
        # Nothing to repair: a task taken off the queue between two reads of DVC's, for a moment.
        gone = _GONE_WORKSPACE.search(proc.stderr)
        passing = unreadable or gone or INVALID_TASK.search(proc.stderr)
        deadline = deadline or time.monotonic() + wait_s
        if not passing or time.monotonic() >= deadline:
            hint = (_orphaned_task_hint(proc.stderr, wait_s) if unreadable
                    else _gone_workspace_hint(repo, gone.group(1), wait_s) if gone else "")
            raise ConfigError(f"`dvc exp show` failed in {repo}: {proc.stderr.strip()}{hint}")
        time.sleep(1)


# DVC keeps each experiment as a git ref named after the commit it is based on; other refs under
# refs/exps/ are its queue's and executors' own (refs/exps/celery/..., refs/exps/exec/...).
EXP_REF = re.compile(r"^refs/exps/([0-9a-f]{2})/([0-9a-f]{38})/[^/]+$")


@dataclass(frozen=True)
class History:
    """What ``exp_show(all_commits=False)`` leaves out: every commit but HEAD that
    ``--all-commits`` reads (those of HEAD's history, branches, tags and remotes), and the DVC
    experiments based on them."""

    commits: int
    experiments: int

    def line(self, option: str) -> str:
        """One line naming what is left out and the option that includes it; "" if nothing."""
        if not (self.commits or self.experiments):
            return ""
        return (f"left out: the history, {self.commits} other commit(s) and "
                f"{self.experiments} experiment(s) based on them ({option} includes them)")


def history_left_out(repo: Path) -> History:
    """Count, with git alone (`dvc exp show --all-commits` reads every commit: 40 s for 150),
    the commits and experiments that HEAD's comparison leaves out."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True,
                              check=True).stdout
    head = git("rev-parse", "HEAD").strip()
    commits = int(git("rev-list", "--count", "HEAD", "--branches", "--tags", "--remotes")) - 1
    bases = [m[1] + m[2] for ref in git("for-each-ref", "--format=%(refname)", "refs/exps")
             .splitlines() if (m := EXP_REF.match(ref))]
    return History(commits, sum(base != head for base in bases))


def with_cell_records(repo: Path, entries: list[dict]) -> list[dict]:
    """``entries`` with each commit's and finished experiment's CELL_RECORDS from git, as one
    more metrics file of the rev (what DVC would show if it were a metric); a rev without it
    (older commits) is left as it is. The workspace's is read from disk."""
    for entry in entries:
        if entry.get("rev") == "workspace" and (repo / CELL_RECORDS).is_file():
            records = json.loads((repo / CELL_RECORDS).read_text())
            entry.setdefault("data", {}).setdefault("metrics", {})[CELL_RECORDS] = {"data": records}
    revs = [rev for entry in entries if entry.get("rev") not in (None, "workspace")
            for rev in (entry, *finished_experiments(entry)) if rev.get("rev")]
    if not revs:
        return entries
    # One git process for every rev: "<sha>:<path>" in, "<oid> blob <size>\n<bytes>\n" or
    # "<sha>:<path> missing\n" out.
    request = "".join(f"{rev['rev']}:{CELL_RECORDS}\n" for rev in revs).encode()
    out = subprocess.run(["git", "cat-file", "--batch"], cwd=repo, input=request,
                         capture_output=True, check=True).stdout
    at = 0
    for rev in revs:
        header_end = out.index(b"\n", at)
        header = out[at:header_end].split()
        at = header_end + 1
        if header[-1] == b"missing":
            continue
        size = int(header[2])
        records = json.loads(out[at:at + size])
        at += size + 1
        rev.setdefault("data", {}).setdefault("metrics", {})[CELL_RECORDS] = {"data": records}
    return entries


_MISSING = "No such file or directory"  # DVC's words for a task record that is not there...
_HALF_WRITTEN = "JSON file structure is corrupted"  # ...and for one cut short
# A task's temporary workspace removed as the task ends, between DVC's listing of the active tasks
# and its reading of them (seen in test_faults: a study started again as a task ended).
_GONE_WORKSPACE = re.compile(r"directory '([^']*\.dvc/tmp/exps/tmp[^'/]*)/[^']*' does not exist")


def _unreadable_task_record(stderr: str) -> bool:
    return ".run'" in stderr and (_MISSING in stderr or _HALF_WRITTEN in stderr)


def _orphaned_task_hint(stderr: str, wait_s: float) -> str:
    """The fix for a task whose worker died before or while writing its record (SIGKILL, OOM):
    DVC calls it active for ever, and only `dvc queue kill` lets it go, by marking failed a task
    that no live worker runs (it refuses, and stops nothing, while a live worker holds one). A
    half-written record must go first: DVC reads a failed task's record too, and only a missing
    one is skipped there."""
    found = re.search(r"'([^']*exps/run/([0-9a-f]{7,40})/[^']*\.run)'", stderr)
    record, rev = (found.group(1), found.group(2)[:7]) if found else ("<record>", "<task>")
    kill = f"dvc queue kill {rev}"
    if _HALF_WRITTEN in stderr:
        return (f"\nqueue task {rev} has had a half-written record for {wait_s:.0f} s: its worker "
                f"probably died while writing it. `rm {record} && {kill}` lets the task go; "
                "then run the same command again.")
    return (f"\nqueue task {rev} has had no record for {wait_s:.0f} s: its worker probably died "
            f"before writing it. `{kill}` lets the task go; then run the same command again.")


def _gone_workspace_hint(repo: Path, workspace: str, wait_s: float) -> str:
    """The fix for a task DVC still lists as running whose temporary workspace is gone for good
    (its worker killed as it ended, or the folder deleted by hand): the task's record names the
    workspace, and `dvc queue kill` marks a task that no live worker runs as failed."""
    records = sorted((repo / ".dvc" / "tmp" / "exps" / "run").glob("*/*.run"))
    revs = [r.parent.name[:7] for r in records if _record_root(r) == workspace]
    kill = f"dvc queue kill {revs[0]}" if revs else "dvc queue kill <task> (`dvc queue status`)"
    return (f"\na queue task has been listed as running for {wait_s:.0f} s without its workspace "
            f"{workspace}: its worker probably died as it ended. `{kill}` lets the task go; then "
            "run the same command again.")


def _record_root(record: Path) -> str | None:
    try:
        return json.loads(record.read_text()).get("root_dir")
    except (OSError, ValueError):
        return None


# pragma: no mutate end


def reference_params(entries: list[dict], like: str | None
                     ) -> tuple[str, dict, str | None, dict[tuple, dict]]:
    """What every compared cell must match: the workspace's run, or run ``like``.

    Returns its label, params, git revision (None: the workspace, whose dvc.lock is on disk) and
    cell metrics.
    """
    revs = [e for entry in entries for e in [entry, *finished_experiments(entry)]]
    for rev in revs:
        wanted = rev.get("rev") == "workspace" if like is None else (
            like in (rev.get("name"), rev.get("rev")) or rev.get("rev", "").startswith(like))
        params = _params(rev.get("data") or {})
        if wanted and params:
            run = _run_from(rev)
            git_rev = None if rev.get("rev") == "workspace" else rev["rev"]
            return (like or "the workspace"), params, git_rev, run.cells if run else {}
    names = sorted({r.get("name") or r.get("rev", "")[:7] for r in revs
                    if r.get("rev") != "workspace"})
    raise ConfigError(f"no run {like!r} with params to compare like; valid choices: "
                      f"{', '.join(names)}")


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"epochs": 8}}`` -> ``{"train.epochs": 8}``."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def learning_params(params: dict, dataset: str) -> dict[str, Any]:
    """The params, flattened, that decide what a cell of ``dataset`` learns besides its setting.

    Of the ``start`` blocks only the one of the run's own weights kind counts (a scratch cell
    does not depend on the pretraining params), without the pretraining norm (a setting).
    """
    skip = {*SETTING_KEYS, *GRID_KEYS, *PLACE_KEYS, "data", "start"}
    kept = {k: v for k, v in params.items() if k not in skip}
    kept["data"] = {dataset: (params.get("data") or {}).get(dataset)}
    kind = params.get("weights")
    kept["start"] = {kind: (params.get("start") or {}).get(kind)}
    return {k: v for k, v in flatten(kept).items() if k != PRETRAIN_NORM}


# --- dvc.lock: what each cell was trained with ----------------------------------------------

# pragma: no mutate start (I/O: reads git)
def read_lock(repo: Path, rev: str | None) -> dict:
    """The ``stages`` of dvc.lock at git revision ``rev`` (None: the workspace's file)."""
    if rev is None:
        path = repo / "dvc.lock"
        text = path.read_text() if path.is_file() else ""
    else:
        proc = subprocess.run(["git", "show", f"{rev}:dvc.lock"], cwd=repo, capture_output=True,
                              text=True)
        text = proc.stdout if proc.returncode == 0 else ""
    return (yaml.safe_load(text) or {}).get("stages") or {}


def attach_locks(repo: Path, runs: list[Run]) -> None:
    """Read every run's dvc.lock from git (an experiment is a git commit too)."""
    for run in runs:
        run.lock = read_lock(repo, run.rev)


# pragma: no mutate end


STARTS_DIR = "starts/"  # start files: what the setting's weights are, compared as a setting


def cell_deps(lock: dict, cell: str) -> dict[str, str] | None:
    """{path: md5} of a cell's train stage in a dvc.lock (its start file aside: the weights are
    part of the setting, and their params are compared), or None when it has no entry."""
    stage = lock.get(TRAIN_STAGE.format(cell=cell))
    if stage is None:
        return None
    return {d["path"]: str(d.get("md5") or d.get("hash")) for d in stage.get("deps") or []
            if not d["path"].startswith(STARTS_DIR)}


def stale(params: dict, lock: dict, cell: str) -> str | None:
    """Why a cell's dvc.lock entries (its train stage, and its model's start stage, where the
    pretraining params live) do not match its run's params.yaml, or None if they do."""
    stage = lock.get(TRAIN_STAGE.format(cell=cell))
    if stage is None:
        return "stale: dvc.lock has no entry for the cell (run `dvc repro`)"
    start = lock.get(START_STAGE.format(model=cell.rsplit("-", 2)[0])) or {}
    recorded = {**flatten((stage.get("params") or {}).get("params.yaml") or {}),
                **flatten((start.get("params") or {}).get("params.yaml") or {})}
    now = flatten({k: params.get(k, MISSING) for k in {k.split(".")[0] for k in recorded}})
    wrong = [f"{k}={now.get(k, MISSING)} (dvc.lock: {v})" for k, v in sorted(recorded.items())
             if now.get(k, MISSING) != v]
    return ("stale: params.yaml was edited without `dvc repro`: " + "; ".join(wrong)
            if wrong else None)


@dataclass
class Key:
    """What a cell of one dataset must share with the reference to be compared."""

    params: dict[str, Any]  # learning_params
    deps: dict[str, str] | None  # the train stage's dependency hashes (None: not known yet)
    execution: str | None  # device kind, precision, compile mode (None: not known yet)

    def differences(self, params: dict, deps: dict[str, str] | None, execution: str) -> list[str]:
        """What differs; the first cell whose params match sets deps and execution if unknown."""
        out = [f"{k}={params.get(k, MISSING)} (compared: {self.params.get(k, MISSING)})"
               for k in sorted(set(params) | set(self.params))
               if params.get(k, MISSING) != self.params.get(k, MISSING)]
        if out:
            return out
        if self.deps is None:
            self.deps = deps
        if self.execution is None:
            self.execution = execution
        changed = sorted(p for p in set(deps or {}) | set(self.deps or {})
                         if (deps or {}).get(p) != (self.deps or {}).get(p))
        if changed:
            out.append("code or data differ (dvc.lock hashes): " + ", ".join(changed))
        if execution != self.execution:
            out.append(f"ran as {execution} (compared: {self.execution})")
        return out


def how_it_ran(metrics: dict) -> str:
    """A cell's ``execution`` and, where recorded, ``ran_on``, as one text ("cpu fp32 eager on
    torch 2.14.1, ..."): cells are compared only when it is equal."""
    execution, machine = metrics.get("execution", MISSING), metrics.get("ran_on")
    return f"{execution} on {machine}" if machine else execution


def reference_keys(params: dict, lock: dict, cells: dict[tuple, dict],
                   datasets: set[str]) -> dict[str, Key]:
    """Per dataset, the reference's key: from its params, its dvc.lock and its cells' metrics.

    Deps and execution that the reference has no cell of the dataset for are left unknown: the
    newest comparable cell sets them (``Key.differences``).
    """
    keys = {}
    for dataset in sorted(datasets):
        ours = [(c, m) for c, m in cells.items() if c[1] == dataset]
        deps = next((d for c, _ in ours if (d := cell_deps(lock, cell_name(*c))) is not None),
                    None)
        execution = next((how_it_ran(m) for _, m in ours), None)
        keys[dataset] = Key(learning_params(params, dataset), deps, execution)
    return keys


def key_for(keys: dict[str, Key], dataset: str, params: dict, reference: dict) -> Key:
    """The reference key of ``dataset`` for a run of ``params``: the reference's own, with the
    start block of the run's weights kind where the two kinds differ."""
    key = keys[dataset]
    kind = params.get("weights")
    if kind == reference.get("weights"):
        return key
    alias = f"{dataset}@{kind}"
    if alias not in keys:
        keys[alias] = Key(learning_params({**reference, "weights": kind}, dataset), key.deps,
                          key.execution)
    return keys[alias]


@dataclass
class Selection:
    """The cells a comparison uses, and what it left out and why."""

    cells: pd.DataFrame  # index (setting, model, dataset, seed); columns rev, run, metrics
    left_out: list[str]  # "<run>, <dataset>: <what differs>"
    conflicts: pd.DataFrame  # a cell with different results in two comparable runs
    fixed: dict[str, Any]  # the params held fixed, per dataset where they differ by dataset


def _same_result(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in RESULT_KEYS)


CELL_COLUMNS = ("final_acc", "best_acc", "learned", "chance_acc", "above_chance_p")


def select(runs: list[Run], reference: dict, reference_lock: dict | None = None,
           reference_cells: dict[tuple, dict] | None = None) -> Selection:
    """The comparable cells of ``runs``; of a cell seen twice with one result, either run's.

    ``reference`` is the reference run's params; ``reference_lock`` and ``reference_cells`` its
    dvc.lock stages and cell metrics. Runs without a lock (``Run.lock`` None) are compared by
    params and execution only. Two comparable runs with different results for one cell mean the
    machine changed: both are listed in ``conflicts`` and the newer run's result is used.
    """
    datasets = {d for run in runs for (_, d, _) in run.cells}
    keys = reference_keys(reference, reference_lock or {}, reference_cells or {}, datasets)
    chosen: dict[tuple, tuple[Run, dict]] = {}
    left_out, conflicts = [], []
    for run in sorted(runs, key=lambda r: r.timestamp, reverse=True):  # newest first
        reasons: dict[str, list[str]] = {}
        for (model, dataset, seed), metrics in sorted(run.cells.items()):
            cell = cell_name(model, dataset, seed)
            why = [] if run.lock is None else [r for r in [stale(run.params, run.lock, cell)] if r]
            if not why:
                deps = None if run.lock is None else cell_deps(run.lock, cell)
                why = key_for(keys, dataset, run.params, reference).differences(
                                                learning_params(run.params, dataset),
                                                deps, how_it_ran(metrics))
            if why:
                reasons.setdefault(dataset, [])
                reasons[dataset] += [w for w in why if w not in reasons[dataset]]
                continue
            key = (run.setting, model, dataset, seed)
            if key not in chosen:
                chosen[key] = (run, metrics)
            elif not _same_result(chosen[key][1], metrics):
                kept = chosen[key][0]
                conflicts.append({"setting": run.setting, "cell": cell,
                                  "used (newer)": f"{kept.name}: "
                                                  f"{chosen[key][1]['final_acc']:.4f}",
                                  "also found": f"{run.name}: {metrics['final_acc']:.4f}"})
        left_out += [f"{run.name}, {d}: {'; '.join(why)}" for d, why in reasons.items()]
    rows = [{"setting": s, "model": m, "dataset": d, "seed": seed, "rev": run.rev,
             "run": run.name, **{k: metrics.get(k) for k in CELL_COLUMNS}}
            for (s, m, d, seed), (run, metrics) in chosen.items()]
    cells = (pd.DataFrame(rows).set_index(["setting", "model", "dataset", "seed"]).sort_index()
             if rows else pd.DataFrame())
    used = sorted({d for (_, _, d, _) in chosen})
    fixed = {d: {**keys[d].params, "execution": keys[d].execution,
                 **{f"dvc.lock {p}": h[:8] for p, h in sorted((keys[d].deps or {}).items())}}
             for d in used}
    return Selection(cells, left_out, pd.DataFrame(conflicts), fixed)


@dataclass
class MissingOutputs:
    """Outputs a comparison wanted that the local DVC cache does not have, per revision.

    A commit made on another machine (or an experiment pulled without its data) names outputs
    this cache never received; they are listed with the commands that bring them, and the
    comparison goes on without them.
    """

    FIX = ("Bring them with `dvc pull` (a commit) or `dvc exp pull <remote> <experiment>` from a "
           "DVC remote that has them, or train them again here with `dvc repro` at that revision "
           "(`dvc exp apply <experiment>` first for an experiment): the same files only where "
           "this machine reproduces that revision's results (`make repro` says whether it does).")

    paths: dict[str, set[str]] = field(default_factory=dict)  # revision label -> paths

    def add(self, rev: str, path: str) -> None:
        self.paths.setdefault(rev, set()).add(path)

    def lines(self) -> list[str]:
        """One line per revision: "<run> (<rev>): <path>, <path>"."""
        return [f"{rev}: {', '.join(sorted(paths))}" for rev, paths in sorted(self.paths.items())]


def revision_label(cells: pd.DataFrame, rev: str) -> str:
    """"<run name> (<rev[:7]>)" of a revision of the selected cells."""
    names = cells.run[cells.rev == rev]
    return f"{names.iloc[0]} ({rev[:7]})" if len(names) else rev[:7]


# pragma: no mutate block (to the end: I/O, reads the DVC cache)
def read_cell_outputs(repo: Path, cells: pd.DataFrame, *paths: str,
                      missing: MissingOutputs) -> dict[tuple, list[bytes]]:
    """Each selected cell's DVC-cached outputs at its run's revision, keyed like ``cells``.

    ``paths`` are formatted with ``cell=<cell name>``, e.g. ``weightdist/{cell}/summary.json``.
    A cell whose files are not in the local cache is left out, and named in ``missing``.
    """
    from dvc.exceptions import DvcException  # heavy: only needed when outputs are read
    from dvc.repo import Repo
    from dvc_data.index.index import DataIndexError

    found = {}
    for rev, group in cells.groupby("rev"):
        with Repo.open(str(repo), rev=rev) as dvc_repo:
            for key in group.index:
                files = [p.format(cell=cell_name(*key[1:])) for p in paths]
                try:
                    found[key] = [dvc_repo.dvcfs.read_bytes(f) for f in files]
                except (OSError, DataIndexError, DvcException):  # DVC's kinds of "not here"
                    for f in files:
                        missing.add(revision_label(cells, rev), f)
    return found
