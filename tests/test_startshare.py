"""One pretraining per start: which experiments wait, what DVC's log says about a start, the
local executor holding an experiment back until its start is made, and `make study` on two
queue workers training a shared pretrained start once."""

import copy
import os
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY_MODEL, copy_project, sh

from normbench import dvcqueue, startshare
from normbench.study import apply_sets, plan

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def starts_of(exps, params=PARAMS) -> dict:
    return {e.name: startshare.start_stages(apply_sets(copy.deepcopy(params), list(e.params)))
            for e in exps}


def test_the_first_experiment_to_train_a_start_trains_it_and_only_a_trained_start_waits():
    exps = plan(["pretraining", "dataset", "minmax"], ["scratch", "imagenet", "pretrained"], [1],
                pretrain_norms=["dataset", "minmax"])
    pre = {p: [e.name for e in exps if e.pretrain == p] for p in ("dataset", "minmax")}
    stage = f"start@{PARAMS['models'][0]}"
    # Each pretraining norm is its own start: its first experiment trains it, the two others
    # (other fine-tuning norms) wait for that one; scratch and ImageNet starts train nothing.
    assert startshare.waits(starts_of(exps)) == {
        name: [(names[0], stage)] for names in pre.values() for name in names[1:]}
    # Another pretraining seed, device, speed or per-model block is another start (the start
    # stage's params); so is another model (two stages, one each).
    for other in ("start.pretrained.seed=5", "device=cuda", "speed.amp=none",
                  f"per_model.{PARAMS['models'][0]}.lr=0.01"):
        assert startshare.waits(starts_of([*plan(["dataset"], ["pretrained"], [1]),
                                           *plan(["minmax"], ["pretrained"], [1], [other])])) == {}
    assert startshare.waits(starts_of([*plan(["dataset"], ["pretrained"], [1]),
                                       *plan(["minmax"], ["pretrained"], [1], ["lr=9"])])) != {}
    two = plan(["dataset", "minmax"], ["pretrained"], [1], ["models=[resnet18,smallcnn]"])
    assert startshare.waits(starts_of(two)) == {
        two[1].name: [(two[0].name, "start@resnet18"), (two[0].name, "start@smallcnn")]}
    # Seeds of the fine-tuning do not change the start: one experiment per seed shares it.
    split = plan(["dataset"], ["pretrained"], [1, 2], split_seeds=True)
    assert startshare.waits(starts_of(split)) == {split[1].name: [(split[0].name, stage)]}


RUN = "Running stage 'start@resnet18':\n> python stages/start.py --model resnet18\n"
NEXT = "Updating lock file 'dvc.lock'\n\nRunning stage 'train@resnet18-shapes-1':\n"


@pytest.mark.parametrize("log, made", [
    ("", False),
    (RUN + "  pretraining epoch 1/4\n", False),  # still training it
    (RUN + NEXT, True),  # DVC saved it to the run-cache before the next stage
    ("Stage 'start@resnet18' is cached - skipping run, checking out outputs\n", True),
    ("Stage 'start@resnet18' didn't change, skipping\n", True),
    ("Running stage 'start@smallcnn':\n" + NEXT, False),  # another model's start
    (RUN.replace("resnet18", "resnet18x") + NEXT, False),  # names match whole
    ("ERROR: Stage 'start@resnet18' not found inside 'dvc.yaml' file\n" + NEXT, False),
])
def test_a_start_is_made_once_dvcs_log_has_moved_past_it(log, made):
    assert startshare.made(log, "start@resnet18") is made


def fake_queue(monkeypatch, polls: list[dict]) -> tuple[list, list, list]:
    """DVC's queue as ``run_local`` reads it, ``polls[i]`` ({name: Task}) at its i-th poll
    (empty before): (names queued, the names queued as each poll began, workers started)."""
    queued, events, started, now = [], [], [], {}

    def follow(poll, poll_s):
        for tasks in polls:
            now.clear()
            now.update(tasks)
            events.append(queued.copy())
            if poll():
                return
        pytest.fail("the executor never saw every experiment end")

    monkeypatch.setattr(dvcqueue, "queue_tasks", lambda repo: dict(now))
    monkeypatch.setattr(dvcqueue, "follow", follow)
    monkeypatch.setattr(dvcqueue, "run_dvc",
                        lambda repo, *args: queued.append(args[args.index("--name") + 1]))
    monkeypatch.setattr(dvcqueue, "start_queue", lambda repo, jobs: started.append(jobs))
    monkeypatch.setattr(dvcqueue, "experiment_names", lambda repo: set())
    monkeypatch.setattr(dvcqueue, "forget", lambda *a, **k: [])
    monkeypatch.setattr(dvcqueue, "queue_workers", lambda repo: [1])
    monkeypatch.setattr(dvcqueue, "stop_idle_workers", lambda *a, **k: [])
    monkeypatch.setattr(dvcqueue, "prune_logs", lambda repo: None)
    return queued, events, started


def tasks(log_dir: Path, **by_name: str | tuple[str, str]) -> dict:
    """{name: Task} from name=status, or name=(status, its log so far)."""
    out = {}
    for name, state in by_name.items():
        status, text = state if isinstance(state, tuple) else (state, None)
        log = None
        if text is not None:
            log = log_dir / f"{name}-{len(text)}.log"
            log.write_text(text)
        out[name] = dvcqueue.Task(name, status, f"r-{name}", log)
    return out


def test_the_executor_holds_an_experiment_back_until_its_start_is_made(tmp_path, monkeypatch):
    lead, late, free = plan(["dataset", "minmax", "none"], ["pretrained"], [1])
    a, b, c = lead.name, late.name, free.name
    queued, events, started = fake_queue(monkeypatch, [
        tasks(tmp_path, **{a: ("Running", RUN), c: "Success"}),
        tasks(tmp_path, **{a: ("Running", RUN + "  pretraining epoch 1/4\n"), c: "Success"}),
        tasks(tmp_path, **{a: ("Running", RUN + NEXT), c: "Success"}),
        tasks(tmp_path, **{a: "Success", b: "Running", c: "Success"}),
        tasks(tmp_path, **{a: "Success", b: "Success", c: "Success"})])
    outcomes = dvcqueue.run_local(tmp_path, [lead, late, free], 2,
                                  waits={b: [(a, "start@resnet18")]})
    assert outcomes == dict.fromkeys((a, b, c), "done")
    # Queued at once: the one that trains the start, and one with nothing to wait for; the
    # other once the log shows the start made (the third poll), with a worker started for it.
    assert events == [[a, c]] * 3 + [[a, c, b]] * 2
    assert started == [2, 2]


def test_a_held_experiment_is_queued_when_the_one_it_waits_for_fails_and_followed_to_its_end(
        tmp_path, monkeypatch, capsys):
    lead, late = plan(["dataset", "minmax"], ["pretrained"], [1])
    a, b = lead.name, late.name
    old = {b: dvcqueue.Task(b, "Failed", "r-old")}  # its try in an earlier study
    # The first fails before it has made the start; the held one is queued (second poll), then
    # missing from one read (a worker took it between DVC's two lists) while its old failed
    # task still shows, then runs and ends.
    queued, events, _ = fake_queue(monkeypatch, [
        {**old, **tasks(tmp_path, **{a: "Running"})}, {**old, **tasks(tmp_path, **{a: "Failed"})},
        {**old, **tasks(tmp_path, **{a: "Failed"})}, tasks(tmp_path, **{a: "Failed", b: "Running"}),
        tasks(tmp_path, **{a: "Failed", b: "Success"})])
    outcomes = dvcqueue.run_local(tmp_path, [lead, late], 2, waits={b: [(a, "start@resnet18")]})
    # Held while the first ran; queued by the poll that saw it fail (no start was made: it
    # trains the start itself); followed through the read that missed it, to its own end.
    assert events == [[a]] * 2 + [[a, b]] * 3
    assert outcomes[b] == "done" and outcomes[a].startswith("failed")
    assert f"{b}: failed" not in capsys.readouterr().out  # the old try is not this one


def test_queueing_is_tried_again_while_a_worker_holds_dvcs_lock(tmp_path, monkeypatch):
    calls = tmp_path / "calls"
    fake = tmp_path / "dvc"
    # A dvc that finds the stash busy twice (as a worker starting a task leaves it), then
    # queues; and one that fails for another reason, at once.
    fake.write_text("#!/bin/sh\necho x >> " + str(calls) + "\n"
                    "[ \"$1\" = bad ] && { echo 'ERROR: unexpected error' >&2; exit 255; }\n"
                    "[ $(wc -l < " + str(calls) + ") -le 2 ] && { echo \"ERROR: "
                    "'refs/exps/celery/stash' is busy, it is being blocked by:\" >&2; "
                    "exit 255; }\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    dvcqueue.run_dvc(tmp_path, "exp", "run", "--queue")
    assert len(calls.read_text().split()) == 3
    with pytest.raises(dvcqueue.ConfigError, match="unexpected error"):
        dvcqueue.run_dvc(tmp_path, "bad")
    assert len(calls.read_text().split()) == 4  # not tried again
    calls.write_text("")
    with pytest.raises(dvcqueue.ConfigError, match="is busy"):
        dvcqueue.run_dvc(tmp_path, "exp", busy_s=0)  # held for longer than it waits


@pytest.mark.slow
def test_a_study_on_two_workers_pretrains_a_shared_start_once(reproduced_tiny_project, tmp_path,
                                                              monkeypatch):
    repo = tmp_path / "repo"
    copy_project(reproduced_tiny_project, repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["start"]["pretrained"]["data"] = {"images_per_class": 6, "test_fraction": 0.25,
                                             "seed": 0}
    params["start"]["pretrained"]["train"].update(epochs=1, batch_size=16, val_fraction=0.25)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(repo, "git", "commit", "-qam", "a small pretraining")
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "src"))
    monkeypatch.setenv("TORCH_HOME", str(repo / "torch"))
    out = sh(repo, sys.executable, "-m", "normbench.study", "--weights", "pretrained",
             "--norms", "dataset", "minmax", "--seeds", "223", "--jobs", "2")
    lead, late = plan(["dataset", "minmax"], ["pretrained"], [223])
    assert f"{late.name}: waits for start@{TINY_MODEL} of {lead.name}" in out, out
    logs = {e.name: sh(repo, "dvc", "queue", "logs", e.name) for e in (lead, late)}
    assert f"Running stage 'start@{TINY_MODEL}'" in logs[lead.name], logs[lead.name]
    # The second restores the first one's start: trained once, not twice side by side.
    assert f"Stage 'start@{TINY_MODEL}' is cached" in logs[late.name], logs[late.name]
    assert f"Running stage 'start@{TINY_MODEL}'" not in logs[late.name]
