"""metrics.json, the DVC metrics: what a reviewer compares, in percent, one row per figure."""

import pandas as pd
import pytest

from normbench.report import cell_records, metrics_summary


def frame(*rows: tuple[str, int, float, float]) -> pd.DataFrame:
    return pd.DataFrame([{"model": "resnet18", "dataset": d, "seed": s, "final_acc": acc,
                          "final_loss": 0.3, "val_acc": val, "above_chance_p": 1e-30,
                          "execution": "cpu fp32 eager", "drift_first_conv": 0.123456,
                          "drift_deep_conv": float("nan")} for d, s, acc, val in rows])


def test_one_seed_gives_its_cells_figures_in_percent_and_no_mean_row():
    summary = metrics_summary(frame(("digits", 1, 0.963888, 0.95), ("shapes", 1, 0.5, 0.25)))
    assert summary == {
        "resnet18-digits-1": {"final_acc_pct": 96.39, "val_acc_pct": 95.0,
                              "drift_first_conv_pct": 12.35},  # a NaN figure is left out
        "resnet18-shapes-1": {"final_acc_pct": 50.0, "val_acc_pct": 25.0,
                              "drift_first_conv_pct": 12.35}}


def test_two_seeds_add_the_mean_and_std_over_them_in_percent():
    summary = metrics_summary(frame(("digits", 1, 0.9, 0.8), ("digits", 2, 0.7, 0.6)))
    means = summary["resnet18-digits"]
    assert means["n_seeds"] == 2
    assert means["final_acc_pct_mean"] == pytest.approx(80.0)
    assert means["final_acc_pct_std"] == pytest.approx(14.14)  # sample std of 90 and 70
    assert means["val_acc_pct_mean"] == pytest.approx(70.0)
    assert "drift_deep_conv_pct_mean" not in means  # not recorded: no NaN in the metrics
    assert set(summary) == {"resnet18-digits-1", "resnet18-digits-2", "resnet18-digits"}


def test_the_cell_records_keep_every_key_as_the_train_stage_wrote_it():
    records = cell_records(frame(("digits", 7, 0.9, 0.8)))
    assert records == {"resnet18-digits-7": {
        "final_acc": 0.9, "final_loss": 0.3, "val_acc": 0.8, "above_chance_p": 1e-30,
        "execution": "cpu fp32 eager", "drift_first_conv": 0.123456}}


def test_compare_reads_the_cell_records_not_the_percent_metrics():
    from normbench.runs import CELL_RECORDS, parse_exp_show

    record = {"best_acc": 0.5, "final_acc": 0.5, "final_loss": 1.0, "execution": "cpu"}
    data = {"params": {"params.yaml": {"data": {"norm": "minmax", "weights": "scratch"}}},
            "metrics": {"metrics.json": {"data": {"resnet18-shapes-3": {"final_acc_pct": 50.0}}},
                        CELL_RECORDS: {"data": {"resnet18-shapes-3": record}}}}
    runs = parse_exp_show([{"rev": "abc", "data": data}])
    assert [r.cells for r in runs] == [{("resnet18", "shapes", 3): record}]
    del data["metrics"][CELL_RECORDS]  # a run whose report wrote no records: nothing to compare
    assert parse_exp_show([{"rev": "abc", "data": data}]) == []
