import numpy as np
import pandas as pd
import pytest
import scipy.stats

from normbench.compare import (WeightSection, compare_pair, mcnemar, tables, verdicts, welch,
                               write)
from normbench.runs import parse_exp_show, select


def test_welch_matches_scipy():
    a, b = np.array([0.91, 0.92, 0.90]), np.array([0.95, 0.96, 0.97, 0.95])
    assert welch(a, b) == pytest.approx(scipy.stats.ttest_ind(a, b, equal_var=False).pvalue)


def test_mcnemar_on_a_constructed_contingency_table():
    # 50 both right, 40 both wrong, 8 right only for A, 2 right only for B.
    a = np.array([True] * 50 + [False] * 40 + [True] * 8 + [False] * 2)
    b = np.array([True] * 50 + [False] * 40 + [False] * 8 + [True] * 2)
    p = mcnemar(a, b)
    assert p == pytest.approx(scipy.stats.binomtest(8, 10, 0.5).pvalue)
    assert p == pytest.approx(2 * sum(scipy.stats.binom.pmf(k, 10, 0.5) for k in range(0, 3)))
    assert mcnemar(b, a) == pytest.approx(p) and mcnemar(a, a) == 1.0


PARAMS = {"weights": "scratch", "train": {"epochs": 8}}


def exp_entry(rev, name, norm, cells):
    """One revision as `dvc exp show --json` writes it."""
    return {"rev": rev, "name": name, "data": {
        "params": {"params.yaml": {"data": {**PARAMS, "norm": norm}}},
        "metrics": {"metrics.json": {"data": {c: {"best_acc": acc} for c, acc in cells.items()}}}}}


SHOW = [
    {"rev": "workspace", "data": {}},
    {**exp_entry("aaa", "main", "dataset", {"resnet18-cifar10-1": 0.90, "resnet18-cifar10-2": 0.91,
                                            "resnet18-cifar10-3": 0.92}),
     "experiments": [
         {"name": "e1", "revs": [exp_entry("bbb", "e1", "minmax", {
             "resnet18-cifar10-1": 0.95, "resnet18-cifar10-2": 0.96, "resnet18-cifar10-3": 0.97,
             "resnet18-cifar10-9": 0.5})]},
         {"name": "e2", "revs": [exp_entry("ccc", "e2", "none", {
             "resnet18-cifar10-1": 0.905, "resnet18-cifar10-2": 0.915, "resnet18-cifar10-3": 0.9})]},
     ]},
]


def test_exp_show_is_grouped_by_setting_and_tables_hold_the_numbers():
    runs = parse_exp_show(SHOW)
    assert [r.name for r in runs] == ["main", "e1", "e2"]
    cells = select(runs, PARAMS).cells
    base = "norm=dataset weights=scratch"
    result = tables(cells, base, pair_loader=lambda m, d: lambda *a: None)
    t2 = result["table2"]
    assert t2.loc[("resnet18", base), "cifar10"] == "91.00 ± 1.00"
    minmax = t2.loc[("resnet18", "norm=minmax weights=scratch"), "cifar10"]
    # every minmax seed counts, seed 9 included
    values = np.array([0.95, 0.96, 0.97, 0.5])
    assert minmax.startswith(f"{values.mean() * 100:.2f} ± {values.std(ddof=1) * 100:.2f} "
                             f"[red:{(values.mean() - 0.91) * 100:+.2f}]")
    tests = result["tests"].set_index("setting")
    p_none = welch(np.array([0.90, 0.91, 0.92]), np.array([0.905, 0.915, 0.9]))
    assert tests.loc["norm=none weights=scratch", "p"] == pytest.approx(p_none, abs=1e-4)
    assert tests.loc["norm=none weights=scratch", "test"] == "Welch"
    t3 = result["table3"]
    assert t3.loc[("resnet18", base), "cifar10"] == "**91.00 ± 1.00**"  # the best mean
    text = " ".join(verdicts(result["tests"], base))
    assert "not significantly different: " in text and "norm=none weights=scratch on resnet18" in text


def test_commits_with_one_metrics_file_per_cell_are_read_too():
    old = {"rev": "old", "name": "old", "data": {
        "params": {"params.yaml": {"data": {"norm": "none", "weights": "scratch"}}},
        "metrics": {"metrics/resnet18-digits-223.json": {"data": {"best_acc": 0.9}},
                    "metrics/resnet18-shapes-223.json": {"data": {"error": "broken"}}}}}
    (run,) = parse_exp_show([old])
    assert run.cells == {("resnet18", "digits", 223): {"best_acc": 0.9}}


def test_single_seed_pairs_use_mcnemar_and_different_seeds_no_test():
    base = pd.DataFrame({"rev": ["a"], "best_acc": [0.5]}, index=pd.Index([1], name="seed"))
    other = pd.DataFrame({"rev": ["b"], "best_acc": [0.7]}, index=pd.Index([1], name="seed"))
    right = np.array([True] * 7 + [False] * 3)
    c = compare_pair(base, other, lambda ra, rb, seed: (right[::-1].copy(), right))
    assert c.test == "McNemar" and c.delta == pytest.approx(0.2)
    moved = other.set_axis(pd.Index([2], name="seed"))
    assert compare_pair(base, moved, lambda *a: None).test == "none"


def test_write_makes_markdown_and_html_with_colours(tmp_path):
    runs = parse_exp_show(SHOW)
    base = "norm=dataset weights=scratch"
    selection = select(runs, PARAMS)
    result = tables(selection.cells, base, pair_loader=lambda m, d: lambda *a: None)
    weights = WeightSection(["**resnet18 on cifar10**: no difference"], pd.DataFrame(),
                            {"weights_resnet18-cifar10.png": b"\x89PNG fake"})
    write(tmp_path, base, runs, selection, result, None, None, weights)
    md = (tmp_path / "README.md").read_text()
    page = (tmp_path / "index.html").read_text()
    assert "$\\textcolor{red}{" in md and "<span style='color:red'>" in page
    assert "<b>91.00 ± 1.00</b>" in page and "<script" not in page
    assert "<b>resnet18 on cifar10</b>: no difference" in page
    assert (tmp_path / "weights_resnet18-cifar10.png").read_bytes() == b"\x89PNG fake"
    assert "![Weights across settings: resnet18-cifar10](weights_resnet18-cifar10.png)" in md
