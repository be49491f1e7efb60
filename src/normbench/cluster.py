"""`make study EXECUTOR=slurm`: a study's experiments as Slurm jobs, through submitit.

One job per experiment (one setting with its seeds; `--split-seeds` makes it one per setting and
seed, for more GPUs at once). A job clones the study repository at its HEAD into a folder of its
own, so DVC's workspace lock never collides, and points the clone's DVC cache at the study
repository's cache on the shared filesystem: every cell a job trains lands there with its
run-cache record, so nothing is trained twice, and a resubmitted job restores its finished cells.
The job then pushes its experiment's git ref back to the study repository (`dvc exp push
--no-cache origin <name>`), where `dvc exp show` and `compare` see it, and removes its clone.
Experiments that share a pretrained start run after one job that makes it (`make_start`).

Job states come from `squeue` while a job is queued or running, and from submitit's result file
after: that needs no Slurm accounting database.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from normbench.registry import ConfigError
from normbench.runstate import Experiment, Submitted, follow, head_commit

JOBS_DIR = Path(".dvc") / "tmp" / "slurm"  # in the study repository: job logs and clones


def _run(*cmd: str, cwd: Path | None = None) -> None:
    """Run a command in a job, its output going to the job's log."""
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=cwd, check=True)


def _clone(origin: str, commit: str, name: str) -> Path:
    """A clone of ``origin`` at ``commit`` for the job ``name``, its DVC cache the study's."""
    clone = Path(origin) / JOBS_DIR / "clones" / name
    shutil.rmtree(clone, ignore_errors=True)  # what a cancelled earlier try left
    _run("git", "clone", "-q", "--no-checkout", origin, str(clone))
    _run("git", "checkout", "-q", commit, cwd=clone)
    # The study repository's cache holds the cells and their run-cache records: shared.
    _run("dvc", "cache", "dir", "--local", str(Path(origin) / ".dvc" / "cache"), cwd=clone)
    return clone


def run_experiment(origin: str, commit: str, name: str, set_args: list[str]) -> str:
    """The job: train one experiment in a clone of its own and send it back to ``origin``."""
    clone = _clone(origin, commit, name)
    _run("dvc", "exp", "run", "--name", name, *set_args, cwd=clone)
    _run("dvc", "exp", "push", "--no-cache", "origin", name, cwd=clone)
    shutil.rmtree(clone)
    return name


def make_start(origin: str, commit: str, name: str, set_args: list[str],
               stages: list[str]) -> str:
    """The job of a start that several experiments share (:mod:`normbench.startshare`): make
    ``stages`` once, with the params of the first of them, into the shared cache and run-cache;
    the experiments run after it and restore it. Nothing comes back but the run-cache."""
    clone = _clone(origin, commit, name)
    _run("dvc", "exp", "run", *set_args, *stages, cwd=clone)
    shutil.rmtree(clone)
    return name


def slurm_parameters(options: list[str]) -> dict:
    """submitit parameters from ``key=value`` strings, the values read as YAML (1 -> int)."""
    import submitit

    if any("=" not in o for o in options):
        raise ConfigError(f"Slurm options must look like key=value, e.g. timeout_min=600; got "
                          f"{options}")
    params = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in options)}
    valid = submitit.AutoExecutor._valid_parameters() | {
        f"slurm_{p}" for p in submitit.SlurmExecutor._valid_parameters()}
    unknown = sorted(set(params) - valid)
    if unknown:
        raise ConfigError(f"unknown Slurm option(s) {unknown}; valid choices: "
                          f"{', '.join(sorted(valid))}")
    if "timeout_min" not in params:  # submitit's default would stop every job after 5 minutes
        raise ConfigError("Slurm options need timeout_min, the minutes a job may run, e.g. "
                          'SLURM="timeout_min=600 slurm_partition=gpu"')
    return params


def _require_clean(repo: Path) -> str:
    """HEAD, which the jobs clone: uncommitted changes would not reach them."""
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                            capture_output=True, text=True, check=True).stdout
    if status.strip():
        raise ConfigError("Slurm jobs clone the repository's HEAD, and it has uncommitted "
                          f"changes:\n{status.rstrip()}\ncommit them (or stash them) first")
    return head_commit(repo)


def _queue_states(job_ids: list[str]) -> dict[str, str]:
    """Slurm's state of the jobs still queued or running (PENDING, RUNNING, ...)."""
    if not job_ids:
        return {}  # `squeue -j ""` would list every job of the cluster
    out = subprocess.run(["squeue", "-h", "-o", "%i %T", "-j", ",".join(job_ids)],
                         capture_output=True, text=True).stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def job_state(job, queued: dict[str, str]) -> str:
    """queued | running | done | failed, for a submitit job."""
    from submitit.core.utils import pickle_load

    if job.job_id in queued:
        return "running" if queued[job.job_id] in ("RUNNING", "COMPLETING") else "queued"
    if job.paths.result_pickle.exists():
        return "done" if pickle_load(job.paths.result_pickle)[0] == "success" else "failed"
    return "failed"  # gone from the queue without a result: cancelled, killed or timed out


def start_jobs(waits: Mapping[str, list[tuple[str, str]]]) -> dict[str, list[str]]:
    """{experiment: the start stages a job makes before it} from :func:`startshare.waits`:
    one start job per experiment that others wait for, making every stage they wait for."""
    stages: dict[str, set[str]] = {}
    for pairs in waits.values():
        for first, stage in pairs:
            stages.setdefault(first, set()).add(stage)
    return {first: sorted(s) for first, s in stages.items()}


def start_job_name(experiment: str) -> str:
    return f"start-{experiment}"


def dependency(own: object, after: list[str]) -> str | None:
    """Slurm's ``--dependency`` of a job: the user's own ``slurm_dependency`` and, after the
    jobs ``after`` whatever their end (``afterany``), joined as both must hold."""
    ours = f"afterany:{':'.join(after)}" if after else None
    if own is not None and ours and "?" in str(own):
        raise ConfigError(f"slurm_dependency={own} uses '?' (any of), which Slurm cannot join "
                          "with the start job's afterany (all of); use ',' in it, or drop it")
    return ",".join(str(d) for d in (own, ours) if d is not None) or None


def attach_or_submit(repo: Path, commit: str, experiments: list[Experiment],
                     submit: Callable[..., Any],
                     waits: Mapping[str, list[tuple[str, str]]] | None = None) -> dict:
    """{name: submitit job}: the job a killed earlier study submitted for this commit, while
    Slurm still has it queued or running; a new job for every other one, recorded in
    :class:`Submitted` the moment it is submitted. ``submit(after, fn, *args)``: a job of
    ``fn(*args)`` that runs after the job ids ``after``.

    Experiments that share a start (``waits``) run after one start job that makes it (Slurm's
    ``afterany``: were it to fail, they would each make it), named ``start-<the first
    experiment>``, instead of each training it at the same time; none where every experiment
    of the start is followed again.
    """
    from submitit import SlurmJob

    submitted = Submitted(repo)
    starts = start_jobs(waits or {})
    by_name = {e.name: e for e in experiments}
    after = {e.name: [start_job_name(f) for f in sorted(
        {e.name, *(f for f, _ in (waits or {}).get(e.name, []))} & set(starts))]
        for e in experiments}
    work = [*((start_job_name(f), make_start, [by_name[f].set_args(), stages])
              for f, stages in starts.items()),
            *((e.name, run_experiment, [e.set_args()]) for e in experiments)]
    earlier = {name: submitted.job_id(name, commit) for name, *_ in work}
    alive = _queue_states([j for j in earlier.values() if j])
    needed = {s for name, before in after.items() if earlier[name] not in alive for s in before}
    jobs = {}
    for name, fn, args in work:
        if earlier[name] in alive:
            jobs[name] = SlurmJob(folder=repo / JOBS_DIR / "logs" / "%j", job_id=earlier[name])
            print(f"  {name} (job {earlier[name]}): followed again, not resubmitted",
                  flush=True)
        elif name in by_name or name in needed:
            jobs[name] = submit([jobs[s].job_id for s in after.get(name, []) if s in jobs], fn,
                                str(repo), commit, name, *args)
            submitted.record(name, commit, jobs[name].job_id)
    return jobs


def run_on_slurm(repo: Path, experiments: list[Experiment], options: list[str],
                 poll_s: float = 5.0, waits: Mapping[str, list[tuple[str, str]]] | None = None
                 ) -> dict[str, str]:
    """Submit one job per experiment (and per shared start, see :func:`attach_or_submit`) and
    follow them; {experiment: done | failed: <log path>}.

    Jobs that a killed earlier study left queued or running are followed, not submitted again.
    Ctrl-C cancels the jobs (scancel); cells they finished stay in the shared cache.
    """
    import submitit

    repo = repo.resolve()
    commit = _require_clean(repo)
    params = slurm_parameters(options)
    own = params.pop("slurm_dependency", None)

    def submit(after: list[str], fn: Callable[..., Any], *args: Any) -> Any:
        # An executor per job: submitit keeps a dependency once set (None means "unchanged").
        executor = submitit.AutoExecutor(folder=repo / JOBS_DIR / "logs" / "%j",
                                         cluster="slurm")
        executor.update_parameters(name="normbench", **params,
                                   slurm_dependency=dependency(own, after))
        return executor.submit(fn, *args)

    # The job imports this module with the same Python, from this checkout.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    if waits:
        dependency(own, ["0"])  # a dependency it cannot join: refused before any job is submitted
    jobs = attach_or_submit(repo, commit, experiments, submit, waits)
    names = {e.name for e in experiments}
    states: dict[str, str] = {}

    def poll() -> bool:
        queued = _queue_states([j.job_id for j in jobs.values()])
        for name, job in jobs.items():
            state = job_state(job, queued)
            if states.get(name) != state:
                states[name] = state
                why = (f" ({job.paths.stdout}): the experiments after it make the start each"
                       if state == "failed" and name not in names else "")
                print(f"  {name} (job {job.job_id}): {state}{why}", flush=True)
        return all(s in ("done", "failed") for s in states.values())

    try:
        follow(poll, poll_s)
    except KeyboardInterrupt:
        for job in reversed(jobs.values()):  # a cancelled start job would free its followers
            job.cancel(check=False)
        print("study interrupted: its Slurm jobs are cancelled; finished cells are in the shared "
              "DVC cache; run the same command to resume", file=sys.stderr)
        raise
    return {name: "done" if state == "done" else
            f"failed: {jobs[name].paths.stdout} (errors: {jobs[name].paths.stderr})"
            for name, state in states.items() if name in names}
