"""make study: the plan, what is already done, progress lines, bad input."""

import pytest

import os
import signal

from normbench.dvcqueue import progress
from normbench.runstate import follow
from normbench.study import apply_sets, main, plan


def test_plan_names_say_what_an_experiment_runs():
    exps = plan(["dataset", "minmax"], ["scratch"], [1, 2], ["train.epochs=1"])
    assert [e.setting for e in exps] == ["norm=dataset weights=scratch",
                                         "norm=minmax weights=scratch"]
    assert exps[0].set_args() == ["-S", "norm=dataset", "-S", "weights=scratch",
                                  "-S", "seeds=[1,2]", "-S", "train.epochs=1"]
    again = plan(["dataset"], ["scratch"], [1, 2], ["train.epochs=1"])[0]
    assert again.name == exps[0].name and again.name.startswith("dataset-scratch-")
    assert plan(["dataset"], ["scratch"], [1, 2, 3], ["train.epochs=1"])[0].name != again.name
    split = plan(["dataset"], ["scratch", "imagenet"], [1, 2], split_seeds=True)
    assert [(e.weights, e.seeds) for e in split] == [("scratch", (1,)), ("scratch", (2,)),
                                                     ("imagenet", (1,)), ("imagenet", (2,))]



def test_the_mismatch_study_plans_norm_pretraining_only_for_pretrained_weights():
    exps = plan(["pretraining", "dataset"], ["scratch", "pretrained"], [1],
                pretrain_norms=["dataset", "minmax"])
    assert [e.setting for e in exps] == [
        "norm=dataset weights=scratch",
        "norm=pretraining weights=pretrained pretrain=dataset",
        "norm=dataset weights=pretrained pretrain=dataset",
        "norm=pretraining weights=pretrained pretrain=minmax",
        "norm=dataset weights=pretrained pretrain=minmax"]
    assert "-S" in exps[-1].set_args() and "start.pretrained.norm=minmax" in exps[-1].set_args()


LOG = """Reproducing experiment 'x'
Running stage 'download@shapes':
Stage 'train@resnet18-shapes-1' is cached - skipping run, checking out outputs
Running stage 'train@resnet18-shapes-2':
> python stages/train.py --model resnet18
resnet18-shapes-2: norm=minmax weights=scratch device=cpu epochs=8 amp=none compile=none
  epoch   0  test_acc 0.1000  test_loss 1.7968
  epoch   1  test_acc 0.1000  test_loss 1.7967
"""


def test_progress_names_the_cell_and_epoch():
    assert progress("") == "starting"
    assert progress(LOG) == "train@resnet18-shapes-2 epoch 1/8"
    assert progress(LOG.split("Running stage 'train")[0]) == (
        "train@resnet18-shapes-1 restored from the run-cache")
    assert progress(LOG + "Running stage 'report':\n") == "report"
    pretraining = LOG.replace("norm=minmax weights=scratch",
                              "norm=pretraining (dataset on gratings) weights=pretrained "
                              "(dataset on gratings)")
    assert progress(pretraining) == "train@resnet18-shapes-2 epoch 1/8"


def test_sets_are_read_as_yaml_and_bad_input_names_the_fix():
    assert apply_sets({"train": {"epochs": 8}}, ["train.epochs=1", "seeds=[1, 2]"]) == {
        "train": {"epochs": 1}, "seeds": [1, 2]}
    with pytest.raises(ValueError, match="must look like key=value"):
        apply_sets({}, ["train.epochs"])
    with pytest.raises(ValueError, match="unknown norm 'zscore'; valid choices: dataset"):
        main(["--norms", "zscore"])
    with pytest.raises(ValueError, match="unknown executor 'pbs'; valid choices: local, slurm"):
        main(["--executor", "pbs"])
    with pytest.raises(ValueError, match="train.epochs must be >= 1"):
        main(["--set", "train.epochs=0"])


def test_ctrl_c_stops_following_after_the_poll_it_hits_even_if_the_poll_swallows_it():
    calls = []

    def poll() -> bool:
        calls.append(1)
        if len(calls) == 2:
            try:
                os.kill(os.getpid(), signal.SIGINT)  # a library catching it would hide it
            except KeyboardInterrupt:
                pass
        return len(calls) > 5  # without our handler the Ctrl-C is lost: no raise, test fails

    before = signal.getsignal(signal.SIGINT)  # SIG_IGN where the tests run in the background
    with pytest.raises(KeyboardInterrupt):
        follow(poll, 0.01)
    assert len(calls) == 2
    assert signal.getsignal(signal.SIGINT) is before  # restored
    follow(lambda: True, 0.01)  # done at once: returns


def test_slurm_options_are_checked_before_anything_is_submitted():
    from normbench.cluster import slurm_parameters

    assert slurm_parameters(["timeout_min=600", "slurm_partition=gpu"]) == {
        "timeout_min": 600, "slurm_partition": "gpu"}
    with pytest.raises(ValueError, match="need timeout_min"):
        slurm_parameters(["slurm_partition=gpu"])
    with pytest.raises(ValueError, match=r"unknown Slurm option\(s\) \['partition'\]; valid "
                                         "choices: .*slurm_partition"):
        slurm_parameters(["partition=gpu"])
    with pytest.raises(ValueError, match="must look like key=value"):
        slurm_parameters(["gpu"])


def test_cells_are_timed_from_the_logs_and_the_time_left_is_the_mean_shared_by_the_jobs():
    from normbench.dvcqueue import train_cells
    from normbench.eta import Eta

    # The log above: shapes-1 restored, shapes-2 training; once the report runs, both finished.
    assert train_cells(LOG, succeeded=False) == ("resnet18-shapes-2", ["resnet18-shapes-1"])
    report = LOG + "Running stage 'report':\n"
    assert train_cells(report, succeeded=False) == (None, ["resnet18-shapes-1",
                                                           "resnet18-shapes-2"])
    assert train_cells(LOG, succeeded=True)[1] == ["resnet18-shapes-1", "resnet18-shapes-2"]
    assert train_cells("", succeeded=False) == (None, [])

    now = [0.0]
    eta = Eta({"done-before": 2, "a": 3, "b": 3}, clock=lambda: now[0])
    eta.end("done-before")
    assert eta.line(2) == "cells: 2 done / 6 to do; time left: known once a cell has trained"
    assert eta.observe("a", "c1", []) == 0
    now[0] = 5.0
    assert eta.observe("b", None, ["c1"]) == 1  # restored from the run-cache: done, not timed
    assert eta.seconds_left(2) is None
    now[0] = 100.0
    assert eta.observe("a", "c2", ["c1"]) == 1  # c1 trained from 0 to 100 s
    assert eta.observe("a", "c2", ["c1"]) == 0  # seen again: counted once
    # 4 done, 4 to do at 100 s a cell, 2 experiments at once: 200 s
    assert eta.seconds_left(2) == 200.0
    assert eta.line(2) == ("cells: 4 done / 4 to do; about 3.3 min left (mean 1.7 min a cell "
                           "over 1 trained, 2 at once)")
    now[0] = 400.0
    eta.observe("a", None, ["c2", "c3"])  # c2 took 300 s; c3 finished between two polls
    assert eta.durations == [100.0, 300.0]
    assert eta.seconds_left(1) == 2 * 200.0  # b's 2 cells left, one at a time
    eta.end("a")
    eta.end("b")  # every cell done, whatever the logs showed
    assert eta.cells_done() == 8 and eta.seconds_left(1) == 0.0
    assert eta.line(1) == "cells: 8 done / 0 to do (mean 3.3 min a cell over 2 trained)"


def test_a_failed_experiments_cells_to_do_leave_the_count_and_the_time_left():
    from normbench.eta import Eta

    now = [0.0]
    eta = Eta({"a": 2, "b": 3}, clock=lambda: now[0])
    eta.observe("a", "c1", [])
    eta.observe("b", "c1", [])
    now[0] = 60.0
    eta.observe("a", "c2", ["c1"])
    eta.observe("b", "c2", ["c1"])
    eta.stop("b")  # failed while training c2: c1 stays done, c2 and c3 will not train now
    assert eta.cells_done() == 2 and eta.total == 3
    now[0] = 120.0
    eta.observe("a", None, ["c1", "c2"])
    eta.end("a")
    assert eta.seconds_left(1) == 0.0
    assert eta.line(1).startswith("cells: 3 done / 0 to do")
