"""Only like is compared with like: runs with other learning params are left out, with why."""

import pytest

from normbench.compare import held_fixed
from normbench.runs import differences, parse_exp_show, reference_params, select

PARAMS = {"norm": "dataset", "weights": "scratch", "models": ["resnet18"], "seeds": [1, 2],
          "datasets": ["digits", "shapes"], "device": "auto", "weights_version": "IMAGENET1K_V1",
          "speed": {"amp": "auto"}, "train": {"epochs": 8, "batch_size": 256},
          "data": {"digits": {"seed": 0}, "shapes": {"images_per_class": 500}}}


def entry(rev, name, cells, timestamp, **changes):
    params = {**PARAMS, **changes}
    return {"rev": rev, "name": name, "data": {
        "timestamp": timestamp, "params": {"params.yaml": {"data": params}},
        "metrics": {"metrics.json": {"data": {c: {"best_acc": a, "final_acc": a, "final_loss": 1.0}
                                              for c, a in cells.items()}}}}}


def test_a_one_epoch_experiment_is_left_out_of_the_eight_epoch_comparison():
    base = entry("a1", "main", {"resnet18-digits-1": 0.9, "resnet18-digits-2": 0.91}, "2026-01-01")
    quick = entry("b2", "quick", {"resnet18-digits-1": 0.5}, "2026-01-02", norm="minmax",
                  train={"epochs": 1, "batch_size": 256})
    other = entry("c3", "minmax", {"resnet18-digits-1": 0.95}, "2026-01-03", norm="minmax",
                  device="cuda", seeds=[1])  # where it ran and which seeds: still comparable
    runs = parse_exp_show([{"rev": "workspace", "data": {"params": {"params.yaml": {
        "data": PARAMS}}}}, {**base, "experiments": [{"revs": [quick]}, {"revs": [other]}]}])
    like, reference = reference_params([{"rev": "workspace", "data": {"params": {
        "params.yaml": {"data": PARAMS}}}}], None)
    assert like == "the workspace"
    sel = select(runs, reference)
    assert sel.left_out == ["quick, digits: train.epochs=1 (compared: 8)"]
    assert set(sel.cells.run) == {"main", "minmax"}
    minmax = sel.cells.loc[("norm=minmax weights=scratch", "resnet18", "digits", 1)]
    assert minmax.best_acc == 0.95 and minmax.run == "minmax"
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
    assert sel.cells.loc[("norm=dataset weights=scratch", "resnet18", "digits", 2)].best_acc == 0.93
    (conflict,) = sel.conflicts.to_dict("records")
    assert conflict == {"setting": "norm=dataset weights=scratch", "cell": "resnet18-digits-2",
                        "used (newer)": "gpu: 0.9300", "also found": "old: 0.9100"}


def test_each_dataset_is_judged_by_its_own_data_block():
    changed = {**PARAMS["data"], "shapes": {"images_per_class": 20}}
    assert differences({**PARAMS, "data": changed}, PARAMS, "digits") == []
    assert differences({**PARAMS, "data": changed}, PARAMS, "shapes") == [
        "data.shapes.images_per_class=20 (compared: 500)"]
    assert differences({**PARAMS, "speed": {"amp": "none"}}, PARAMS, "digits") == [
        "speed.amp=none (compared: auto)"]


def test_like_names_a_run_and_an_unknown_one_lists_the_choices():
    entries = [entry("a1b2c3", "main", {}, "t", train={"epochs": 1})]
    assert reference_params(entries, "a1b2")[1]["train"] == {"epochs": 1}
    with pytest.raises(ValueError, match="no run 'nope'.*valid choices: main"):
        reference_params(entries, "nope")
