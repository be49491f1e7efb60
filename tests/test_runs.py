"""Only like is compared with like: runs with other learning params are left out, with why."""

import pytest

from normbench.compare import held_fixed
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
