"""Only like is compared with like: runs with other learning params are left out, with why."""

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest
from conftest import git_user, sh

from normbench.compare import held_fixed
from normbench.registry import ConfigError
from normbench.runs import parse_exp_show, reference_params, select, stale

PARAMS = {"norm": "dataset", "weights": "scratch", "models": ["resnet18"], "seeds": [1, 2],
          "datasets": ["digits", "shapes"], "device": "auto", "weights_version": "IMAGENET1K_V1",
          "speed": {"amp": "auto"}, "train": {"epochs": 8, "batch_size": 256},
          "data": {"digits": {"seed": 0}, "shapes": {"images_per_class": 500}}}


def entry(rev, name, cells, timestamp, **changes):
    params = {**PARAMS, **changes}
    return {"rev": rev, "name": name, "data": {
        "timestamp": timestamp, "params": {"params.yaml": {"data": params}},
        "metrics": {"metrics.json": {"data": {c: {"best_acc": a, "final_acc": a, "final_loss": 1.0,
                                                  "execution": "cpu fp32 eager"}
                                              for c, a in cells.items()}}}}}


def test_a_one_epoch_experiment_is_left_out_of_the_eight_epoch_comparison():
    base = entry("a1", "main", {"resnet18-digits-1": 0.9, "resnet18-digits-2": 0.91}, "2026-01-01")
    quick = entry("b2", "quick", {"resnet18-digits-1": 0.5}, "2026-01-02", norm="minmax",
                  train={"epochs": 1, "batch_size": 256})
    other = entry("c3", "minmax", {"resnet18-digits-1": 0.95}, "2026-01-03", norm="minmax",
                  device="cuda", seeds=[1])  # where it ran and which seeds: still comparable
    runs = parse_exp_show([{"rev": "workspace", "data": {"params": {"params.yaml": {
        "data": PARAMS}}}}, {**base, "experiments": [{"revs": [quick]}, {"revs": [other]}]}])
    like, reference, rev, _ = reference_params([{"rev": "workspace", "data": {"params": {
        "params.yaml": {"data": PARAMS}}}}], None)
    assert like == "the workspace" and rev is None
    sel = select(runs, reference)
    assert sel.left_out == ["quick, digits: train.epochs=1 (compared: 8)"]
    assert set(sel.cells.run) == {"main", "minmax"}
    minmax = sel.cells.loc[("norm=minmax weights=scratch", "resnet18", "digits", 1)]
    assert minmax.final_acc == 0.95 and minmax.run == "minmax"
    assert sel.conflicts.empty
    fixed = held_fixed(sel).set_index("param")
    assert fixed.loc["train.epochs", "digits"] == "8"
    assert fixed.loc["data.digits.seed", "digits"] == "0" and "norm" not in fixed.index


def test_the_same_cell_with_two_results_is_reported_and_one_result_counts_once():
    same = {"resnet18-digits-1": 0.9}
    runs = parse_exp_show([
        entry("a1", "old", {**same, "resnet18-digits-2": 0.91}, "2026-01-01"),
        entry("b2", "rerun", same, "2026-01-02"),  # restored or retrained identically
        entry("c3", "gpu", {"resnet18-digits-2": 0.93}, "2026-01-03")])  # same params, new number
    sel = select(runs, PARAMS)
    assert len(sel.cells) == 2  # seed 1 once, seed 2 once
    assert sel.cells.loc[("norm=dataset weights=scratch", "resnet18", "digits", 2)].final_acc == 0.93
    (conflict,) = sel.conflicts.to_dict("records")
    assert conflict == {"setting": "norm=dataset weights=scratch", "cell": "resnet18-digits-2",
                        "used (newer)": "gpu: 0.9300", "also found": "old: 0.9100"}


def test_each_dataset_is_judged_by_its_own_data_block():
    changed = {**PARAMS["data"], "shapes": {"images_per_class": 20}}
    runs = parse_exp_show([entry("a1", "small", {"resnet18-digits-1": 0.9,
                                                 "resnet18-shapes-1": 0.8}, "t", data=changed)])
    sel = select(runs, PARAMS)
    assert set(sel.cells.index.unique("dataset")) == {"digits"}
    assert sel.left_out == ["small, shapes: data.shapes.images_per_class=20 (compared: 500)"]


def lock(deps: dict[str, str], **params) -> dict:
    """A dvc.lock's stages with one train cell."""
    return {"train@resnet18-digits-1": {
        "deps": [{"path": p, "hash": "md5", "md5": h} for p, h in deps.items()],
        "params": {"params.yaml": {"norm": "dataset", "train": {"epochs": 8, "batch_size": 256},
                                   **params}}}}


CODE = {"src/normbench/train.py": "aa11", "data/digits": "dd00.dir"}


def test_other_code_or_data_other_execution_and_stale_locks_are_left_out():
    runs = parse_exp_show([entry("a1", "same", {"resnet18-digits-1": 0.9}, "4"),
                           entry("b2", "newcode", {"resnet18-digits-1": 0.8}, "3"),
                           entry("c3", "gpu", {"resnet18-digits-1": 0.7}, "2"),
                           entry("d4", "edited", {"resnet18-digits-1": 0.6}, "1", norm="minmax")])
    runs[0].lock = lock(CODE)
    runs[1].lock = lock({**CODE, "src/normbench/train.py": "bb22"})
    runs[2].lock = lock(CODE)
    runs[2].cells[("resnet18", "digits", 1)]["execution"] = "cuda bf16 reduce-overhead"
    runs[3].lock = lock(CODE)  # records norm=dataset while its params.yaml says minmax
    ref_cells = {("resnet18", "digits", 1): {"execution": "cpu fp32 eager"}}
    sel = select(runs, PARAMS, lock(CODE), ref_cells)
    assert list(sel.cells.run) == ["same"]
    assert sel.left_out == [
        "newcode, digits: code or data differ (dvc.lock hashes): src/normbench/train.py",
        "gpu, digits: ran as cuda bf16 reduce-overhead (compared: cpu fp32 eager)",
        "edited, digits: stale: params.yaml was edited without `dvc repro`: norm=minmax "
        "(dvc.lock: dataset)"]
    fixed = held_fixed(sel).set_index("param")
    assert fixed.loc["execution", "digits"] == "cpu fp32 eager"
    assert fixed.loc["dvc.lock src/normbench/train.py", "digits"] == "aa11"


def test_a_cell_missing_from_its_lock_is_stale():
    assert stale(PARAMS, {}, "resnet18-digits-1").startswith("stale: dvc.lock has no entry")
    assert stale({**PARAMS, "norm": "dataset"}, lock(CODE), "resnet18-digits-1") is None


def test_without_a_reference_cell_the_newest_run_sets_code_and_execution():
    runs = parse_exp_show([entry("a1", "new", {"resnet18-digits-1": 0.9}, "2"),
                           entry("b2", "old", {"resnet18-digits-1": 0.8}, "1")])
    runs[0].lock = lock(CODE)
    runs[1].lock = lock({**CODE, "data/digits": "ee00.dir"})
    sel = select(runs, PARAMS, {}, {})
    assert list(sel.cells.run) == ["new"]
    assert sel.left_out == ["old, digits: code or data differ (dvc.lock hashes): data/digits"]


def test_like_names_a_run_and_an_unknown_one_lists_the_choices():
    entries = [entry("a1b2c3", "main", {}, "t", train={"epochs": 1})]
    label, params, rev, cells = reference_params(entries, "a1b2")
    assert params["train"] == {"epochs": 1} and rev == "a1b2c3" and label == "a1b2"
    with pytest.raises(ValueError, match="no run 'nope'.*valid choices: main"):
        reference_params(entries, "nope")


def test_pretraining_params_edited_without_repro_make_the_cell_stale():
    recorded = lock(CODE, weights="pretrained")
    recorded["start@resnet18"] = {"params": {"params.yaml": {
        "weights": "pretrained", "start.pretrained": {"norm": "minmax", "seed": 0}}}}
    params = {**PARAMS, "weights": "pretrained",
              "start": {"pretrained": {"norm": "minmax", "seed": 0}}}
    assert stale(params, recorded, "resnet18-digits-1") is None
    edited = {**params, "start": {"pretrained": {"norm": "instance", "seed": 0}}}
    assert stale(edited, recorded, "resnet18-digits-1") == (
        "stale: params.yaml was edited without `dvc repro`: start.pretrained.norm=instance "
        "(dvc.lock: minmax)")


# --- make mutation: what parsing, staleness and selection must get right ---------------------

EXEC = "cpu fp32 eager"


def cells_of(*names, acc=0.9, **metrics):
    return {c: {"best_acc": acc, "final_acc": acc, "final_loss": 1.0, **metrics} for c in names}


def test_parse_exp_show_reads_both_metrics_layouts_and_skips_what_is_not_a_run():
    one = cells_of("resnet18-digits-1", execution=EXEC)
    data = {"params": {"params.yaml": {"data": PARAMS}}}
    entries = [
        # The workspace is never a run of its own (its params are the reference).
        {"rev": "workspace", "data": {**data, "metrics": {"metrics.json": {"data": one}}}},
        {"rev": "0123456789abcdef", "data": {  # no name, no timestamp; metrics.json with means
            **data, "metrics": {"metrics.json": {"data": {
                **cells_of("efficientnet-b0-digits-3", execution=EXEC),  # a hyphen in the model
                "efficientnet-b0-digits": {"final_acc_mean": 0.9}, "n": 1}}}}},
        {"rev": "b2", "name": "old", "data": {  # an older commit: one metrics/<cell>.json a cell
            **data, "timestamp": "2025-01-01", "metrics": {
                "metrics/resnet18-shapes-2.json": {"data": one["resnet18-digits-1"]}}}},
        {"rev": "c3", "name": "noweights", "data": {  # params without a setting: not a run
            "params": {"params.yaml": {"data": {"norm": "dataset"}}},
            "metrics": {"metrics.json": {"data": one}}}},
        {"rev": "d4", "name": "nonorm", "data": {
            "params": {"params.yaml": {"data": {"weights": "scratch"}}},
            "metrics": {"metrics.json": {"data": one}}}},
        {"rev": "e5", "name": "nometrics", "data": data},  # no cells: nothing to compare
    ]
    runs = parse_exp_show(entries)
    assert [(r.rev, r.name, r.timestamp) for r in runs] == [
        ("0123456789abcdef", "0123456", ""), ("b2", "old", "2025-01-01")]
    assert list(runs[0].cells) == [("efficientnet-b0", "digits", 3)]
    assert runs[1].cells == {("resnet18", "shapes", 2): one["resnet18-digits-1"]}


def test_only_finished_experiments_are_results():
    """A queued or running experiment is listed with its temporary workspace's metrics (the
    commit's own until its report runs; never collected if its worker was killed)."""
    base = entry("a1b2c3d4", "main", {"resnet18-digits-1": 0.9}, "1")
    done = entry("d0", "done", {"resnet18-digits-2": 0.8}, "2", norm="minmax")
    running = entry("r1", "running", {"resnet18-digits-2": 0.7}, "3", norm="instance")
    queued = entry("q2", "queued", {"resnet18-digits-2": 0.6}, "4", norm="none")
    plain = entry("p3", "plain", {"resnet18-digits-2": 0.5}, "5", norm="imagenet")  # exp run
    base["experiments"] = [
        {"executor": {"state": "success", "name": "dvc-task"}, "revs": [done]},
        {"executor": {"state": "running", "name": "dvc-task"}, "revs": [running]},
        {"executor": {"state": "queued", "name": "dvc-task"}, "revs": [queued]},
        {"executor": None, "revs": [plain]}]
    assert [r.name for r in parse_exp_show([base])] == ["main", "done", "plain"]
    with pytest.raises(ValueError) as e:
        reference_params([base], "running")
    assert "valid choices: done, main, plain" in str(e.value)


def test_like_finds_experiments_by_name_and_reads_their_cells():
    base = entry("a1b2c3d4", "main", {"resnet18-digits-1": 0.9}, "1")
    exp = entry("f0e1d2c3", "exp-7", {"resnet18-digits-2": 0.8}, "2", train={"epochs": 2})
    unnamed = entry("99887766554433", None, {}, "3")
    entries = [{**base, "experiments": [{"revs": [{"name": "queued"}, exp]}]}, unnamed]
    label, params, rev, cells = reference_params(entries, "exp-7")
    assert (label, params["train"], rev) == ("exp-7", {"epochs": 2}, "f0e1d2c3")
    assert list(cells) == [("resnet18", "digits", 2)]
    _, _, rev, _ = reference_params(entries, "main")  # a name, not a prefix of its revision
    assert rev == "a1b2c3d4"
    # The workspace is the default even where it is listed after the commits.
    workspace = {"rev": "workspace", "data": {"params": {"params.yaml": {"data": PARAMS}}}}
    label, params, rev, cells = reference_params([base, workspace], None)
    assert (label, rev, cells) == ("the workspace", None, {}) and params == PARAMS
    # A run whose params name no setting: its params count, it has no cells to offer.
    bare = {"rev": "abcdef1", "name": "bare", "data": {"params": {"params.yaml": {
        "data": {"train": {"epochs": 3}}}}}}
    assert reference_params([bare], "bare") == ("bare", {"train": {"epochs": 3}}, "abcdef1", {})
    with pytest.raises(ValueError) as e:
        reference_params(entries, "nope")
    assert str(e.value) == ("no run 'nope' with params to compare like; valid choices: 9988776, "
                            "exp-7, main, queued")


def test_learning_params_keep_the_start_block_of_the_runs_own_weights_only():
    from normbench.runs import learning_params

    params = {**PARAMS, "weights": "pretrained", "start": {
        "pretrained": {"norm": "minmax", "seed": 0, "epochs": 5}, "imagenet": {"mirror": "x"}}}
    assert learning_params(params, "shapes") == {
        "weights_version": "IMAGENET1K_V1", "speed.amp": "auto", "train.epochs": 8,
        "train.batch_size": 256, "data.shapes.images_per_class": 500,
        "start.pretrained.seed": 0, "start.pretrained.epochs": 5}
    assert learning_params({**PARAMS, "start": {"imagenet": {}}}, "digits") == {
        "weights_version": "IMAGENET1K_V1", "speed.amp": "auto", "train.epochs": 8,
        "train.batch_size": 256, "data.digits.seed": 0, "start.scratch": None}


def test_cell_deps_leave_out_the_start_file_and_read_either_hash_key():
    from normbench.runs import cell_deps

    recorded = {"train@resnet18-digits-1": {"deps": [
        {"path": "src/normbench/train.py", "md5": "aa11"},
        {"path": "data/digits", "hash": "ff99"},  # a dependency recorded by another hash key
        {"path": "starts/resnet18.pt", "md5": "5555"}]}}
    assert cell_deps(recorded, "resnet18-digits-1") == {"src/normbench/train.py": "aa11",
                                                       "data/digits": "ff99"}
    assert cell_deps(recorded, "resnet18-digits-2") is None


def test_stale_names_every_param_that_changed_and_what_is_missing():
    recorded = lock(CODE, weights_version="IMAGENET1K_V1", train={"epochs": 8, "warmup": None})
    recorded["train@efficientnet-b0-digits-1"] = recorded.pop("train@resnet18-digits-1")
    recorded["start@efficientnet-b0"] = {"params": {"params.yaml": {
        "start.pretrained": {"norm": "minmax"}}}}
    params = {k: v for k, v in PARAMS.items() if k != "weights_version"}  # removed since
    params["train"] = {"epochs": 4}
    assert stale(params, recorded, "efficientnet-b0-digits-1") == (
        "stale: params.yaml was edited without `dvc repro`: start.pretrained.norm=(missing) "
        "(dvc.lock: minmax); train.epochs=4 (dvc.lock: 8); train.warmup=(missing) (dvc.lock: "
        "None); weights_version=(missing) (dvc.lock: IMAGENET1K_V1)")


def test_key_differences_name_missing_params_and_every_changed_dependency():
    from normbench.runs import Key

    key = Key({"train.epochs": 8, "train.warmup": None}, {"a.py": "1", "b.py": "2", "c.py": "3"},
              EXEC)
    assert key.differences({"train.epochs": 8, "train.lr": None}, None, EXEC) == [
        "train.lr=None (compared: (missing))", "train.warmup=(missing) (compared: None)"]
    assert key.differences({"train.epochs": 8, "train.warmup": None},
                           {"a.py": "9", "b.py": "2", "d.py": "4"}, EXEC) == [
        "code or data differ (dvc.lock hashes): a.py, c.py, d.py"]


def test_the_reference_lock_and_execution_win_over_the_newest_run():
    # The reference ran digits with CODE on a CPU; the newest run has other code, the next one
    # ran on a GPU, the oldest matches. Shapes: the reference has no cell, so the newest sets it.
    runs = parse_exp_show([entry("a1", "newcode", {"resnet18-digits-1": 0.9}, "3"),
                           entry("b2", "gpu", {"resnet18-digits-1": 0.8}, "2"),
                           entry("c3", "match", {"resnet18-digits-1": 0.7,
                                                 "resnet18-shapes-1": 0.6}, "1")])
    md5 = "0123456789abcdef0123456789abcdef"
    reference_lock = lock({**CODE, "data/digits": md5})
    runs[0].lock = lock({**CODE, "src/normbench/train.py": "bb22"})
    runs[1].lock = reference_lock
    runs[1].cells[("resnet18", "digits", 1)]["execution"] = "cuda bf16 eager"
    runs[2].lock = {**reference_lock,
                    "train@resnet18-shapes-1": reference_lock["train@resnet18-digits-1"]}
    sel = select(runs, PARAMS, reference_lock, {("resnet18", "digits", 1): {"execution": EXEC}})
    assert sel.cells.run.to_dict() == {
        ("norm=dataset weights=scratch", "resnet18", "digits", 1): "match",
        ("norm=dataset weights=scratch", "resnet18", "shapes", 1): "match"}
    assert sel.cells.rev.tolist() == ["c3", "c3"]
    assert sel.left_out == [
        "newcode, digits: code or data differ (dvc.lock hashes): data/digits, "
        "src/normbench/train.py",
        "gpu, digits: ran as cuda bf16 eager (compared: cpu fp32 eager)"]
    assert sel.fixed["digits"]["dvc.lock data/digits"] == "01234567"  # 8 characters shown
    assert sel.fixed["shapes"]["execution"] == EXEC  # set by the match run's shapes cell


def test_other_weights_kinds_share_the_references_code_and_execution_not_its_start_block():
    imagenet = {"start": {"imagenet": {"mirror": "a"}, "pretrained": {"norm": "minmax", "seed": 1}}}
    runs = parse_exp_show([
        entry("a1", "imagenet-gpu", {"resnet18-digits-1": 0.9}, "4", weights="imagenet",
              **imagenet),
        entry("b2", "imagenet", {"resnet18-digits-1": 0.8}, "3", weights="imagenet", **imagenet),
        entry("c3", "pretrained", {"resnet18-digits-1": 0.7}, "2", weights="pretrained",
              **imagenet),
        entry("d4", "pretrained-seed2", {"resnet18-digits-1": 0.6}, "1", weights="pretrained",
              start={"pretrained": {"norm": "minmax", "seed": 2}})])
    runs[0].cells[("resnet18", "digits", 1)]["execution"] = "cuda bf16 eager"
    reference = {**PARAMS, **imagenet}  # a scratch run whose params.yaml has both start blocks
    sel = select(runs, reference, None, {("resnet18", "digits", 1): {"execution": EXEC}})
    assert sel.cells.run.tolist() == ["imagenet", "pretrained"]
    assert sel.left_out == [
        "imagenet-gpu, digits: ran as cuda bf16 eager (compared: cpu fp32 eager)",
        "pretrained-seed2, digits: start.pretrained.seed=2 (compared: 1)"]


def test_reasons_of_one_dataset_add_up_and_the_next_cell_is_still_judged():
    runs = parse_exp_show([entry("a1", "half", {"resnet18-digits-1": 0.9,
                                                "resnet18-digits-2": 0.8}, "1")])
    runs[0].lock = lock({**CODE, "data/digits": "ee00.dir"})  # seed 1: other data
    runs[0].lock["train@resnet18-digits-2"] = lock(CODE)["train@resnet18-digits-1"]
    stale_run = parse_exp_show([entry("b2", "nolock", {"resnet18-digits-4": 0.7}, "0")])[0]
    stale_run.lock = {}
    sel = select([*runs, stale_run], PARAMS, lock(CODE),
                 {("resnet18", "digits", 1): {"execution": EXEC}})
    assert sel.cells.run.to_dict() == {
        ("norm=dataset weights=scratch", "resnet18", "digits", 2): "half"}
    assert sel.left_out == [
        "half, digits: code or data differ (dvc.lock hashes): data/digits",
        "nolock, digits: stale: dvc.lock has no entry for the cell (run `dvc repro`)"]
    runs[0].lock["train@resnet18-digits-2"] = {}  # now no cell matches
    runs[0].cells[("resnet18", "digits", 2)]["execution"] = "cuda bf16 eager"
    sel = select(runs, PARAMS, lock(CODE), {("resnet18", "digits", 1): {"execution": EXEC}})
    assert sel.cells.empty and sel.fixed == {}
    assert sel.left_out == ["half, digits: code or data differ (dvc.lock hashes): data/digits; "
                            "code or data differ (dvc.lock hashes): data/digits, "
                            "src/normbench/train.py; ran as cuda bf16 eager (compared: cpu "
                            "fp32 eager)"]


def test_cells_from_before_execution_was_recorded_compare_with_each_other():
    runs = parse_exp_show([entry("a1", "old", {"resnet18-digits-1": 0.9}, "1")])
    del runs[0].cells[("resnet18", "digits", 1)]["execution"]
    sel = select(runs, PARAMS, None, {("resnet18", "digits", 2): {}})
    assert sel.cells.run.tolist() == ["old"] and sel.left_out == []
    assert sel.fixed["digits"]["execution"] == "(missing)"
    # Against a reference that recorded how it ran, such a cell is left out.
    sel = select(runs, PARAMS, None, {("resnet18", "digits", 2): {"execution": EXEC}})
    assert sel.left_out == ["old, digits: ran as (missing) (compared: cpu fp32 eager)"]
    # And the other way round: a reference without it leaves out cells that have it.
    runs = parse_exp_show([entry("b2", "new", {"resnet18-digits-1": 0.9}, "1")])
    sel = select(runs, PARAMS, None, {("resnet18", "digits", 2): {}})
    assert sel.left_out == ["new, digits: ran as cpu fp32 eager (compared: (missing))"]


def test_other_weights_kinds_are_held_to_the_references_dvc_lock():
    runs = parse_exp_show([entry("a1", "imagenet-newcode", {"resnet18-digits-1": 0.9}, "2",
                                 weights="imagenet"),
                           entry("b2", "imagenet", {"resnet18-digits-1": 0.8}, "1",
                                 weights="imagenet")])
    runs[0].lock = lock({**CODE, "src/normbench/train.py": "bb22"}, weights="imagenet")
    runs[1].lock = lock(CODE, weights="imagenet")
    sel = select(runs, PARAMS, lock(CODE), {("resnet18", "digits", 1): {"execution": EXEC}})
    assert sel.cells.run.tolist() == ["imagenet"]
    assert sel.left_out == ["imagenet-newcode, digits: code or data differ (dvc.lock hashes): "
                            "src/normbench/train.py"]


FAKE_DVC = """#!/bin/sh
# `dvc exp show`, failing as DVC does while a stopped task's record is being removed, until
# the count in ./tries reaches {fails}; then {{"ok": 1}}.
n=$(cat tries 2>/dev/null || echo 0); echo $((n + 1)) > tries
if [ "$n" -lt {fails} ]; then
  echo "ERROR: {error}" >&2; exit 255
fi
echo '[{{"ok": 1}}]'
"""


MISSING = ("unexpected error - [Errno 2] No such file or directory: "
           "'/r/.dvc/tmp/exps/run/abc/abc.run'")
HALF_WRITTEN = "unable to read: '.dvc/tmp/exps/run/abc/abc.run', JSON file structure is corrupted"
# An ended task's temporary workspace, removed as `exp show` read it (a study started again as
# the task ended, seen in test_faults).
GONE_WORKSPACE = ("failed to show experiments - directory '/r/.dvc/tmp/exps/tmpblqvbpow/.dvc' "
                  "does not exist")


def fake_dvc(tmp_path, monkeypatch, fails: int, error: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (tmp_path / "tries").unlink(missing_ok=True)
    (bin_dir / "dvc").write_text(FAKE_DVC.format(fails=fails, error=error))
    (bin_dir / "dvc").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


@pytest.mark.parametrize("error", [MISSING, HALF_WRITTEN, GONE_WORKSPACE])
def test_exp_show_waits_out_an_unreadable_task_record(tmp_path, monkeypatch, error):
    from normbench import runs

    fake_dvc(tmp_path, monkeypatch, fails=2, error=error)
    assert runs.exp_show(tmp_path, wait_s=10) == [{"ok": 1}]
    assert (tmp_path / "tries").read_text().strip() == "3"

    # A record (or a task's end) that never comes: the error, once the wait is over.
    fake_dvc(tmp_path, monkeypatch, fails=99, error=error)
    start = time.monotonic()
    with pytest.raises(ConfigError, match=f"`dvc exp show` failed in .*{re.escape(error)}"):
        runs.exp_show(tmp_path, wait_s=1.5)
    assert 1.5 <= time.monotonic() - start < 10
    assert int((tmp_path / "tries").read_text()) >= 2


def test_exp_show_fails_at_once_on_any_other_error(tmp_path, monkeypatch):
    from normbench import runs

    fake_dvc(tmp_path, monkeypatch, fails=5,
             error="unexpected error - [Errno 2] No such file or directory: '/r/params.yaml'")
    with pytest.raises(ConfigError, match="params.yaml"):
        runs.exp_show(tmp_path)
    assert (tmp_path / "tries").read_text().strip() == "1"


@pytest.mark.slow
@pytest.mark.parametrize("record", ["missing", "half-written"])
def test_a_task_whose_worker_died_gets_a_fix_that_works(tmp_path, monkeypatch, record):
    """Real DVC: a queued experiment runs, then its worker's death before (or while) writing the
    task's record is staged: the result gone and the `.run` record removed (or cut short), as a
    SIGKILL leaves them. `exp show` fails on it for ever; the error names the task and a command,
    and that command clears it."""
    from normbench import runs

    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    sh(tmp_path, "git", "init", "-q")
    git_user(tmp_path)
    sh(tmp_path, "dvc", "init", "-q")
    (tmp_path / "params.yaml").write_text("x: 1\n")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  s:\n    cmd: cp params.yaml out.txt\n    params: [x]\n    outs: [out.txt]\n")
    sh(tmp_path, "git", "add", "-A")
    sh(tmp_path, "git", "commit", "-qm", "init")
    sh(tmp_path, "dvc", "exp", "run", "--queue", "-S", "x=2", "-n", "e1")
    sh(tmp_path, "dvc", "queue", "start")
    deadline = time.monotonic() + 300  # a loaded machine: the worker alone takes seconds to start
    while "Success" not in sh(tmp_path, "dvc", "queue", "status"):
        assert time.monotonic() < deadline, sh(tmp_path, "dvc", "queue", "status")
        time.sleep(1)
    exps = tmp_path / ".dvc" / "tmp" / "exps"
    [result] = (exps / "celery" / "result").glob("celery-task-meta-*")
    [run] = exps.glob("run/*/*.run")
    result.unlink()
    if record == "missing":
        run.unlink()
    else:
        run.write_text(run.read_text()[:20])

    with pytest.raises(ConfigError, match="has had (no|a half-written) record for 1 s") as err:
        runs.exp_show(tmp_path, wait_s=1)
    fix = re.search(r"`([^`]*dvc queue kill ([0-9a-f]{7}))`", str(err.value))
    assert run.parent.name.startswith(fix.group(2))
    sh(tmp_path, "bash", "-c", fix.group(1))
    assert runs.exp_show(tmp_path, wait_s=0)[0]["rev"] == "workspace"


def test_runs_on_another_kind_of_machine_are_left_out_naming_both():
    """Same execution, other torch or vector width: other numbers, so not pooled (the CPU model
    is not recorded in the metrics, so it cannot split runs)."""
    here = "torch 2.14.1+cu130, torchvision 0.29.1, cpu x86_64 avx2 1 thread"
    runs = parse_exp_show([
        entry("a1", "here", {"resnet18-digits-1": 0.9}, "3"),
        entry("b2", "newer-torch", {"resnet18-digits-2": 0.8}, "2"),
        entry("c3", "also-here", {"resnet18-digits-2": 0.7}, "1"),
        entry("d4", "unrecorded", {"resnet18-digits-2": 0.6}, "0")])
    for run, machine in zip(runs, (here, here.replace("2.14.1", "2.15.0"), here, None)):
        if machine:
            run.cells[next(iter(run.cells))]["ran_on"] = machine
    sel = select(runs, PARAMS, None, {("resnet18", "digits", 1): {"execution": EXEC,
                                                                  "ran_on": here}})
    assert set(sel.cells.run) == {"here", "also-here"}
    assert sel.left_out == [
        f"newer-torch, digits: ran as {EXEC} on {here.replace('2.14.1', '2.15.0')} "
        f"(compared: {EXEC} on {here})",
        f"unrecorded, digits: ran as {EXEC} (compared: {EXEC} on {here})"]
    assert sel.fixed["digits"]["execution"] == f"{EXEC} on {here}"  # on the page, by name


def test_the_workspace_run_keeps_its_cells_from_its_records_on_disk(tmp_path):
    # metrics.json holds percentages only; a cell's record is report/cells.json, which exp_show
    # reads from git for commits and from disk for the workspace.
    from normbench.runs import CELL_RECORDS, with_cell_records
    (tmp_path / CELL_RECORDS).parent.mkdir()
    (tmp_path / CELL_RECORDS).write_text(json.dumps(
        {"resnet18-digits-1": {"best_acc": 0.9, "final_acc": 0.875, "final_loss": 0.3}}))
    workspace = [{"rev": "workspace", "data": {"params": {"params.yaml": {"data": PARAMS}}}}]
    *_, cells = reference_params(with_cell_records(tmp_path, workspace), None)
    assert cells == {("resnet18", "digits", 1): {"best_acc": 0.9, "final_acc": 0.875,
                                                  "final_loss": 0.3}}


def test_a_task_listed_as_running_without_its_workspace_gets_a_fix(tmp_path, monkeypatch):
    """A workspace gone for good (a worker killed as its task ended): after the wait, the error
    names the task whose record holds that workspace, and the command that lets it go."""
    from normbench import runs

    record = tmp_path / ".dvc" / "tmp" / "exps" / "run" / "4f2a9c1e77" / "4f2a9c1e77.run"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"root_dir": "/r/.dvc/tmp/exps/tmpblqvbpow", "status": 2}))
    fake_dvc(tmp_path, monkeypatch, fails=99, error=GONE_WORKSPACE)
    with pytest.raises(ConfigError, match=r"without its workspace /r/\.dvc/tmp/exps/tmpblqvbpow"
                       r".*`dvc queue kill 4f2a9c1` lets the task go"):
        runs.exp_show(tmp_path, wait_s=1)
