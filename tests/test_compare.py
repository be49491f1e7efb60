import numpy as np
import pandas as pd
import pytest
import scipy.stats

from conftest import section

from normbench.compare import OutputsMissing, WeightSection, compare_pair, tables, verdicts, write
from normbench.runs import MissingOutputs, parse_exp_show, select
from normbench.significance import Design, detectable_shift, fmt_p

PARAMS = {"weights": "scratch", "train": {"epochs": 8}}
EXEC = "cpu fp32 eager"


def cell(acc, learned=True):
    return {"final_acc": acc, "best_acc": acc + 0.01, "final_loss": 1.0, "learned": learned,
            "chance_acc": 0.1, "above_chance_p": 1e-9 if learned else 0.5, "execution": EXEC}


def exp_entry(rev, name, norm, cells, weights="scratch"):
    """One revision as `dvc exp show --json` writes it."""
    return {"rev": rev, "name": name, "data": {
        "params": {"params.yaml": {"data": {**PARAMS, "norm": norm, "weights": weights}}},
        "metrics": {"metrics.json": {"data": {c: cell(acc) if not isinstance(acc, dict) else acc
                                              for c, acc in cells.items()}}}}}


SEEDS = range(1, 8)  # 7 seeds: the least with which 2 paired tests can reach 0.05 / 2
BASE_V = [0.90, 0.91, 0.92, 0.89, 0.905, 0.915, 0.895]
UP = [0.05, 0.05, 0.06, 0.04, 0.055, 0.05, 0.06]  # minmax: better in every seed
NONE_V = [0.905, 0.915, 0.9, 0.91, 0.895, 0.92, 0.9]  # seeds 8-14: other seeds
BASE = {f"resnet18-cifar10-{s}": v for s, v in zip(SEEDS, BASE_V)}
MINMAX = {f"resnet18-cifar10-{s}": v + u for s, v, u in zip(SEEDS, BASE_V, UP)}
NONE = {f"resnet18-cifar10-{s + 7}": v for s, v in zip(SEEDS, NONE_V)}
MINMAX_V = np.array(BASE_V) + np.array(UP)
SHOW = [
    {"rev": "workspace", "data": {}},
    {**exp_entry("aaa", "main", "dataset", BASE),
     "experiments": [
         {"name": "e1", "revs": [exp_entry("bbb", "e1", "minmax", MINMAX)]},
         {"name": "e2", "revs": [exp_entry("ccc", "e2", "none", NONE)]},
     ]},
]
NO_PAIRS = lambda m, d: lambda *a: pytest.fail("no McNemar expected")  # noqa: E731


@pytest.fixture(autouse=True)
def fresh_power_estimates():
    """Each test computes what its tests could detect (the figures are cached per process)."""
    detectable_shift.cache_clear()


def result_of(show=SHOW, reference=PARAMS):
    cells = select(parse_exp_show(show), reference).cells
    return cells, tables(cells, "dataset", NO_PAIRS)


def shown(values) -> str:
    values = np.asarray(values) * 100
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"


def relabeling_p(a, b) -> float:
    """The two-sided exact relabeling p of two equal-sized groups, from scipy (its doubled
    one-sided p is ours: with equal sizes the null distribution is symmetric). The values are
    given in whole thousandths: in floats scipy's tolerance misses ties that sums in another
    order break (0.845 instead of 0.893 here)."""
    a, b = (np.round(np.asarray(v) * 1000) for v in (a, b))
    return scipy.stats.permutation_test((b, a), lambda x, y: np.sum(x) - np.sum(y),
                                        permutation_type="independent",
                                        n_resamples=np.inf).pvalue


def pooled_sd(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return np.sqrt((((a - a.mean()) ** 2).sum() + ((b - b.mean()) ** 2).sum())
                   / (len(a) + len(b) - 2))


def test_same_seeds_are_paired_other_seeds_relabeled_and_holm_corrects_the_page():
    cells, result = result_of()
    tests = result["tests"].set_index("setting")
    minmax, none = tests.loc["norm=minmax weights=scratch"], tests.loc["norm=none weights=scratch"]
    p_pair = 2 / 2 ** 7  # better in all 7 seeds: the observed signs and their mirror
    p_none = relabeling_p(BASE_V, NONE_V)
    assert minmax.test == "sign-flip" and minmax.p == pytest.approx(p_pair, rel=1e-12)
    assert none.test == "relabeling" and none.p == pytest.approx(p_none, rel=1e-9)
    assert minmax["smallest p"] == p_pair and none["smallest p"] == pytest.approx(2 / 3432)
    # Holm over the two: the smaller p doubled, the larger kept (and never below the smaller).
    lo, hi = sorted([p_pair, p_none])
    assert sorted(tests["p (Holm)"]) == pytest.approx([min(1, 2 * lo), max(min(1, 2 * lo), hi)])
    assert minmax.verdict == "better" and none.verdict == "no significant difference"
    assert minmax.baseline == "norm=dataset weights=scratch"
    assert minmax["delta (points)"] == round(np.mean(UP) * 100, 2)


def test_table2_holds_final_accuracy_with_delta_and_the_adjusted_mark():
    _, result = result_of()
    t2 = result["table2"]
    assert t2.loc[("resnet18", "norm=dataset weights=scratch"), "cifar10"] == shown(BASE_V)
    minmax = t2.loc[("resnet18", "norm=minmax weights=scratch"), "cifar10"]
    # Holm-adjusted 2 x 2/128 = 0.03125: (*), not (**)
    assert minmax == f"{shown(MINMAX_V)} [green:{np.mean(UP) * 100:+.2f}] (*)"
    assert t2.loc[("resnet18", "norm=none weights=scratch"), "cifar10"].endswith("(n.s.)")
    assert result["table3"].loc[("resnet18", "norm=minmax weights=scratch"), "cifar10"] \
        .startswith("**")  # the best mean in bold
    # The original study's figure is kept, from best_acc (here final + 0.01).
    assert result["best"].loc[("resnet18", "norm=dataset weights=scratch"), "cifar10"] \
        == shown(np.array(BASE_V) + 0.01)


def test_no_significant_difference_states_what_the_test_could_detect():
    _, result = result_of()
    none = result["tests"].set_index("setting").loc["norm=none weights=scratch"]
    # Two tests in the family: stated at 0.05 / 2, for the pooled spread of the 14 cells.
    found = detectable_shift(Design(0, 7, 7), 0.05 / 2) * pooled_sd(BASE_V, NONE_V) * 100
    assert none["detectable (points)"] == round(found, 2)
    text = " ".join(verdicts(result["tests"], "dataset", ["norm=dataset weights=scratch",
                                                          "norm=none weights=scratch"]))
    assert (f"norm=none weights=scratch against norm=dataset weights=scratch, resnet18: no "
            f"significant difference ({(np.mean(NONE_V) - np.mean(BASE_V)) * 100:+.2f} points, "
            f"exact relabeling test, p={fmt_p(relabeling_p(BASE_V, NONE_V))}, Holm-adjusted "
            f"{fmt_p(max(2 * 2 / 128, relabeling_p(BASE_V, NONE_V)))}; this test could detect "
            f"{round(found, 2):.2f} points with 80% power at the page's corrected level)") in text


def test_a_constant_difference_and_identical_results_are_tests_like_any_other():
    same = {f"resnet18-cifar10-{s}": 0.9 for s in range(1, 7)}
    shifted = {c: 0.9 + 1 / 360 for c in same}  # one more image right in every seed
    _, result = result_of([exp_entry("a", "a", "dataset", same),
                           exp_entry("b", "b", "minmax", shifted),
                           exp_entry("c", "c", "none", same)])
    rows = result["tests"].set_index("setting")
    up, equal = rows.loc["norm=minmax weights=scratch"], rows.loc["norm=none weights=scratch"]
    assert (up.test, up.p, up["p (Holm)"], up.verdict) == ("sign-flip", 2 / 64, 4 / 64,
                                                           "no significant difference")
    assert (equal.p, equal["p (Holm)"], equal.note) == (1.0, 1.0, "identical in every seed")
    assert pd.isna(equal["detectable (points)"]) and pd.isna(up["detectable (points)"])
    lines = " ".join(verdicts(result["tests"], "dataset", list(rows.index)))
    assert ("no significant difference (+0.00 points, exact sign-flip test, p=1, Holm-adjusted "
            "1; no spread over seeds, so what it could detect is not estimated)") in lines


def test_pretrained_settings_are_compared_with_the_baseline_norm_pretrained():
    show = [exp_entry("a", "a", "dataset", BASE), exp_entry("b", "b", "minmax", MINMAX,
                                                             weights="imagenet")]
    cells, result = result_of(show)
    # Against scratch with the same norm it would be minmax scratch: none ran. Never against
    # the scratch baseline.
    assert result["tests"].empty
    lines = verdicts(result["tests"], "dataset", list(cells.index.unique("setting")))
    assert lines == ["No runs of the baseline norm=dataset weights=imagenet: no setting with "
                     "weights=imagenet is compared with norm=dataset (none against a "
                     "substitute)."]
    show.append(exp_entry("c", "c", "dataset", BASE | {"resnet18-cifar10-3": 0.93},
                          weights="imagenet"))
    cells, result = result_of(show)
    rows = result["tests"].set_index(["setting", "baseline"])
    row = rows.loc[("norm=minmax weights=imagenet", "norm=dataset weights=imagenet")]
    assert row["test"] == "sign-flip"
    # Does starting from ImageNet help? The same norm from scratch: +1 point on seed 3 only.
    transfer = rows.loc[("norm=dataset weights=imagenet", "norm=dataset weights=scratch")]
    assert transfer["delta (points)"] == pytest.approx(100 * 0.01 / 7, abs=0.01)
    assert len(rows) == 2
    assert not any(line.startswith("No runs of the baseline")
                   for line in verdicts(result["tests"], "dataset",
                                        list(cells.index.unique("setting"))))


def test_a_missing_pretrained_baseline_is_named_and_a_present_one_is_not():
    show = [pretrained("m1", "pretraining", "minmax", BASE),
            pretrained("m2", "minmax", "minmax", MINMAX)]
    reference = {**PARAMS, "start": {"pretrained": {"norm": "dataset"}}}
    cells, result = result_of(show, reference)
    settings = list(cells.index.unique("setting"))
    assert verdicts(result["tests"], "dataset", settings)[0] == (
        "No runs of the baseline norm=dataset weights=pretrained pretrain=minmax: no setting "
        "with weights=pretrained pretrain=minmax is compared with norm=dataset (none against a "
        "substitute).")
    show.append(pretrained("m3", "dataset", "minmax", BASE))
    cells, result = result_of(show, reference)
    lines = verdicts(result["tests"], "dataset", list(cells.index.unique("setting")))
    assert [line.split(":")[0] for line in lines] == ["**cifar10**"]  # no "missing" line


def test_cells_that_did_not_learn_carry_no_verdict():
    flop = {**MINMAX, "resnet18-cifar10-2": cell(0.1, learned=False)}
    show = [exp_entry("a", "a", "dataset", BASE), exp_entry("b", "b", "minmax", flop)]
    _, result = result_of(show)
    row = result["tests"].iloc[0]
    assert row.test == "none" and pd.isna(row.p) and row.verdict == "no test"
    assert "did not learn" in row.note and "setting seed(s) 2" in row.note
    assert pd.isna(row["seeds for a verdict"])


def frame(rev, seeds, accs):
    return pd.DataFrame({"rev": rev, "final_acc": accs, "learned": True},
                        index=pd.Index(seeds, name="seed"))


def test_one_shared_seed_says_whether_the_models_differ_and_gives_no_verdict():
    # 10 images both right, 10 both wrong, 1 right only for a, 9 right only for b.
    a = np.array([True] * 10 + [False] * 10 + [True] + [False] * 9)
    b = np.array([True] * 10 + [False] * 10 + [False] + [True] * 9)
    calls = []
    t = compare_pair(frame("a", [1], [0.5]), frame("b", [1], [0.7]),
                     lambda ra, rb, seed: calls.append((ra, rb, seed)) or (a, b))
    assert calls == [("a", "b", 1)]
    p = scipy.stats.binomtest(1, 10).pvalue  # 0.021
    assert t.test == "McNemar" and t.delta == pytest.approx(0.2)
    assert (t.p, t.smallest_p) == (None, None)  # no p over seeds: not in the Holm family
    assert t.note == (f"one seed each (seed 1): the two trained models differ (McNemar's exact "
                      f"test over the 30 test images, p={fmt_p(p)}, uncorrected); that is no "
                      "test of the settings, whose effect only seeds show")
    same = compare_pair(frame("a", [1], [0.5]), frame("b", [1], [0.5]), lambda *_: (a, a))
    assert "the two trained models are not shown to differ (McNemar" in same.note
    moved = compare_pair(frame("a", [1], [0.5]), frame("b", [2], [0.7]), NO_PAIRS("m", "d"))
    assert (moved.test, moved.p, moved.smallest_p) == ("relabeling", 1.0, 1.0)


def test_comparisons_without_a_possible_verdict_leave_the_holm_family():
    # Table 2's users ran one seed (McNemar: "minmax better (**)" on shapes, where 3 seeds said
    # n.s.) or three: neither may count in Holm's m, nor give a verdict.
    # A fourth comparison, on svhn, has a cell that did not learn: no test, and it does not
    # count in the m of "seeds for a verdict" either.
    flop = {f"resnet18-svhn-{s}": cell(0.1, learned=False) for s in SEEDS}
    mixed = [exp_entry("a", "a", "dataset", {**BASE, "resnet18-shapes-1": 0.5, **flop,
                                              **{f"resnet18-digits-{s}": 0.8 for s in (1, 2, 3)}}),
             exp_entry("b", "b", "minmax", {**MINMAX, "resnet18-shapes-1": 0.9, **flop,
                                             **{f"resnet18-digits-{s}": 0.9 for s in (1, 2, 3)}})]
    a = np.array([True] * 5 + [False] * 45)
    b = np.array([True] * 45 + [False] * 5)
    cells = select(parse_exp_show(mixed), PARAMS).cells
    result = tables(cells, "dataset", lambda m, d: lambda *args: (a, b))
    rows = result["tests"].set_index("dataset")
    assert rows.loc["cifar10", "p (Holm)"] == rows.loc["cifar10", "p"] == 2 / 128  # m = 1
    assert rows.loc["cifar10", "verdict"] == "better"
    for dataset, test in (("shapes", "McNemar"), ("digits", "sign-flip")):
        row = rows.loc[dataset]
        assert (row.test, row.verdict) == (test, "too few seeds") and pd.isna(row["p (Holm)"])
        assert pd.isna(row["detectable (points)"])
        # A verdict on this page of 3 comparisons that learned needs 2/2^n <= 0.05 / 3: 7
        # paired seeds (counting svhn's, 0.05 / 4 would ask for 8).
        assert row["seeds for a verdict"] == 7
    assert rows.loc["svhn", "verdict"] == "no test" and pd.isna(rows.loc["svhn",
                                                                       "seeds for a verdict"])
    assert rows.loc["digits", "p"] == 0.25 and rows.loc["digits", "smallest p"] == 0.25
    # What the one test of the family could detect is stated at 0.05 / 1, not 0.05 / 3.
    d = MINMAX_V - np.array(BASE_V)
    found = detectable_shift(Design(7, 0, 0), 0.05) * d.std(ddof=1) / np.sqrt(2) * 100
    assert rows.loc["cifar10", "detectable (points)"] == round(found, 2)
    assert result["table2"].loc[("resnet18", "norm=minmax weights=scratch"), "shapes"] == (
        "90.00 [green:+40.00] (too few seeds)")
    text = " ".join(verdicts(result["tests"], "dataset", list(cells.index.unique("setting"))))
    assert ("norm=minmax weights=scratch against norm=dataset weights=scratch, resnet18: no "
            "verdict, too few seeds (+10.00 points; exact sign-flip test, p=0.25, but it cannot "
            "go below 0.25 with these seeds; a verdict on this page needs at least 7 seeds per "
            "setting)") in text
    assert "no verdict, too few seeds (+40.00 points; one seed each (seed 1): the two trained " \
        "models differ (McNemar's exact test over the 50 test images" in text


def test_a_pair_whose_predictions_are_not_in_the_cache_gets_no_test_and_the_page_says_why(
        tmp_path):
    frame = lambda rev, acc: pd.DataFrame(  # noqa: E731
        {"rev": [rev], "final_acc": [acc], "learned": [True]}, index=pd.Index([1], name="seed"))

    def absent(rev_a, rev_b, seed):
        raise OutputsMissing("predictions/resnet18-d-1.npy of main (aaaaaaa), not in the local "
                             "DVC cache")
    t = compare_pair(frame("a", 0.5), frame("b", 0.7), absent)
    assert t.test == "none" and t.p is None and t.delta == pytest.approx(0.2)
    assert t.note == ("McNemar's test needs predictions/resnet18-d-1.npy of main (aaaaaaa), not "
                      "in the local DVC cache: no test")
    missing = MissingOutputs()
    missing.add("main (aaaaaaa)", "predictions/resnet18-d-1.npy")
    runs = parse_exp_show(SHOW)
    selection = select(runs, PARAMS)
    write(tmp_path, "dataset", runs, selection, tables(selection.cells, "dataset", NO_PAIRS),
          None, None, WeightSection([], pd.DataFrame(), {}), missing)
    text = section((tmp_path / "README.md").read_text(), "Outputs not in the local DVC cache")
    assert "main (aaaaaaa): predictions/resnet18-d-1.npy" in text and "`dvc pull`" in text


def test_write_makes_markdown_and_html_with_colours(tmp_path):
    runs = parse_exp_show(SHOW)
    selection = select(runs, PARAMS)
    result = tables(selection.cells, "dataset", NO_PAIRS)
    weights = WeightSection(["**resnet18 on cifar10**: no difference"], pd.DataFrame(),
                            {"weights_resnet18-cifar10.png": b"\x89PNG fake"})
    write(tmp_path, "dataset", runs, selection, result, None, None, weights)
    md = (tmp_path / "README.md").read_text()
    page = (tmp_path / "index.html").read_text()
    assert "$\\textcolor{green}{" in md and "<span style='color:green'>" in page
    assert f"<b>{shown(MINMAX_V)}</b>" in page and "<script" not in page
    assert "<b>resnet18 on cifar10</b>: no difference" in page
    assert (tmp_path / "weights_resnet18-cifar10.png").read_bytes() == b"\x89PNG fake"
    assert "![Weights across settings: resnet18-cifar10](weights_resnet18-cifar10.png)" in md


def test_left_out_runs_with_one_reason_share_a_line():
    from normbench.compare import group_left_out

    lines = [f"r{i}, digits: train.epochs=1 (compared: 8)" for i in range(5)]
    lines += ["x, shapes: ran as cuda bf16 eager (compared: cpu fp32 eager)",
              "y, shapes: ran as cuda bf16 eager (compared: cpu fp32 eager)"]
    assert group_left_out(lines) == [
        "5 runs (r0, r1, r2, ...), digits: train.epochs=1 (compared: 8)",
        "x, y, shapes: ran as cuda bf16 eager (compared: cpu fp32 eager)"]


def test_references_of_each_kind_of_setting():
    from normbench.compare import references

    assert references("norm=minmax weights=scratch", "dataset") == ["norm=dataset weights=scratch"]
    assert references("norm=dataset weights=scratch", "dataset") == []
    assert references("norm=minmax weights=imagenet", "dataset") == [
        "norm=dataset weights=imagenet", "norm=minmax weights=scratch"]
    assert references("norm=minmax weights=pretrained pretrain=instance", "dataset") == [
        "norm=dataset weights=pretrained pretrain=instance",
        "norm=pretraining weights=pretrained pretrain=instance", "norm=minmax weights=scratch"]
    assert references("norm=pretraining weights=pretrained pretrain=minmax", "dataset") == [
        "norm=dataset weights=pretrained pretrain=minmax"]


def pretrained(rev, norm, pretrain, cells):
    entry = exp_entry(rev, rev, norm, cells, weights="pretrained")
    entry["data"]["params"]["params.yaml"]["data"]["start"] = {"pretrained": {"norm": pretrain}}
    return entry


def test_the_mismatch_table_tests_each_cell_against_its_matched_pairing():
    show = [pretrained("m1", "pretraining", "minmax", BASE),  # matched: minmax, its own stats
            pretrained("m2", "dataset", "minmax", MINMAX),
            pretrained("i1", "pretraining", "instance", NONE),
            pretrained("i2", "dataset", "instance", BASE)]
    _, result = result_of(show, {**PARAMS, "start": {"pretrained": {"norm": "dataset"}}})
    table = result["mismatch"]
    row = table.loc[("resnet18", "cifar10", "minmax")]
    up = f"{np.mean(UP) * 100:.2f}"
    assert row["fine-tuned: pretraining"] == shown(BASE_V)
    assert row["fine-tuned: dataset"].startswith(f"{shown(MINMAX_V)} [green:+{up}] (")
    tests = result["tests"]
    matched = tests[tests.baseline == "norm=pretraining weights=pretrained pretrain=minmax"]
    (p,) = matched.p
    assert p == 2 / 128
    # Instance pretraining: seeds 8-14 against 1-7, so relabeling.
    other = tests[tests.baseline == "norm=pretraining weights=pretrained pretrain=instance"]
    assert other.test.tolist() == ["relabeling"]
    assert table.loc[("resnet18", "cifar10", "instance"), "fine-tuned: pretraining"] == shown(
        NONE_V)
    # norm=pretraining against the baseline norm (Table 2) and the baseline norm against the
    # matched pairing (this table) are one test, counted once by Holm and marked in both.
    assert len(tests) == 2 and set(tests.setting) == {
        "norm=dataset weights=pretrained pretrain=minmax",
        "norm=dataset weights=pretrained pretrain=instance"}
    t2 = result["table2"].loc[("resnet18", "norm=pretraining weights=pretrained pretrain=minmax"),
                              "cifar10"]
    assert t2.startswith(f"{shown(BASE_V)} [red:-{up}] (") and t2.endswith(
        row["fine-tuned: dataset"].rsplit(" ", 1)[1])


def figure_labels(monkeypatch, cells, tests) -> dict[tuple[str, str, str], str]:
    """(model, dataset, setting) -> the verdict figure's label, as drawn (annotate spied on)."""
    import matplotlib.pyplot as plt

    from normbench import verdict_figure as vf

    labels = []
    monkeypatch.setattr(plt.Axes, "annotate", lambda self, text, *a, **k: labels.append(text))
    vf.verdict_figure(cells, tests, "dataset")
    drawn = [(m, d, s) for m, d in sorted({(m, d) for _, m, d, _ in cells.index})
             for s in cells.xs((m, d), level=("model", "dataset")).index.unique("setting")]
    assert len(drawn) == len(labels)
    return dict(zip(drawn, labels))


def test_every_pair_in_the_tables_carries_the_same_mark_in_the_figure(monkeypatch):
    # norm=pretraining is tested against the baseline norm in the other direction (the matched
    # pairing is the baseline norm's reference): the figure must find the test either way.
    # 8 seeds: 3 tests at 2/2^8 each stay below 0.05 after Holm over the 4 of the family.
    base = {f"resnet18-cifar10-{s}": 0.9 + 0.005 * s for s in range(1, 9)}
    up = {c: v + 0.03 + 0.001 * (len(c) % 3) for c, v in base.items()}
    other_seeds = {f"resnet18-cifar10-{s + 8}": 0.9 + 0.005 * s + 0.002 * (-1) ** s
                   for s in range(1, 9)}  # interleaved with base: n.s.
    show = [pretrained("m1", "pretraining", "minmax", base),
            pretrained("m2", "dataset", "minmax", up),
            pretrained("m3", "none", "minmax", {c: v + 0.02 for c, v in up.items()}),
            pretrained("i1", "pretraining", "instance", other_seeds),
            pretrained("i2", "dataset", "instance", base),
            exp_entry("s1", "s1", "dataset", {"resnet18-cifar10-1": 0.5}),
            exp_entry("s2", "s2", "minmax", {"resnet18-cifar10-1": 0.6})]
    cells = select(parse_exp_show(show), {**PARAMS, "start": {"pretrained": {"norm": "dataset"}}}
                   ).cells
    result = tables(cells, "dataset", lambda m, d: lambda *a: (np.ones(4, bool), np.ones(4, bool)))
    labels = figure_labels(monkeypatch, cells, result["tests"])
    word = {"(**)": None, "(*)": None, "(n.s.)": "n.s.", "(too few seeds)": "few seeds",
            "(no test)": "no test"}
    checked = set()
    for (model, setting), row in result["table2"].iterrows():
        for dataset, text in row.items():
            if not isinstance(text, str):
                continue
            label = labels[(model, dataset, setting)]
            if "[" not in text:  # no delta: the baseline itself
                assert label == "baseline", (setting, label)
                continue
            mark = "(" + text.rsplit(" (", 1)[1]
            expected = word[mark] or ("better" if "[green:" in text else "worse")
            assert label == expected, (setting, text, label)
            checked.add(expected)
    assert checked == {"better", "worse", "n.s.", "few seeds"}  # every kind of mark was met
    assert labels[("resnet18", "cifar10",
                   "norm=pretraining weights=pretrained pretrain=minmax")] == "worse"


def test_the_verdict_figure_is_a_png_with_a_panel_per_model_and_dataset(monkeypatch):
    import matplotlib.pyplot as plt

    from normbench import verdict_figure as vf

    cells, result = result_of()
    panels = []
    real = plt.subplots
    monkeypatch.setattr(plt, "subplots", lambda *a, **k: panels.append(a) or real(*a, **k))
    png = vf.verdict_figure(cells, result["tests"], "dataset")
    assert png.startswith(b"\x89PNG") and panels == [(1, 1)]
    assert list(figure_labels(monkeypatch, cells, result["tests"]).values()) == [
        "baseline", "better", "n.s."]  # dataset, minmax, none (Holm-adjusted)


# --- make mutation: the verdicts in words, the marks, and the tables as the page shows them ---

DYADIC = {"dataset": [0.5, 0.625, 0.75, 0.5, 0.625, 0.75, 0.5],  # exact in binary: a delta
          # of exactly zero stays zero; 7 seeds: the least for 3 tests at 0.05 / 3
          "minmax": [0.75, 0.8125, 1.0, 0.625, 0.875, 0.875, 0.6875],  # higher in every seed
          "none": [0.25, 0.3125, 0.5, 0.375, 0.375, 0.625, 0.3125],  # lower in every seed
          "instance": [0.75, 0.5, 0.625, 0.5, 0.75, 0.625, 0.5],  # the same mean, reshuffled
          "imagenet": [0.5, 0.625, 0.75, 0.5, 0.625, 0.75, 0.5]}


def dyadic_show():
    show = []
    for norm, accs in DYADIC.items():
        cells = {f"resnet18-digits-{seed}": acc for seed, acc in enumerate(accs, 1)}
        if norm == "imagenet":  # this setting's seed 2 stayed at chance
            cells["resnet18-digits-2"] = cell(0.1, learned=False)
        if norm in ("dataset", "minmax"):  # one shared seed on shapes: McNemar
            cells["resnet18-shapes-7"] = 0.5 if norm == "dataset" else 0.625
        if norm == "none":  # three other seeds on shapes: a relabeling test, at least 1/4
            cells |= {f"resnet18-shapes-{s}": v for s, v in ((1, 0.25), (2, 0.375), (3, 0.5))}
        show.append(exp_entry(norm, norm, norm, cells))
    return show


def test_every_kind_of_verdict_in_words():
    a = np.array([True] * 3 + [False] * 5)  # 8 test images: 1 right only for a, 2 only for b
    b = np.array([True] * 2 + [False, True, True] + [False] * 3)
    cells = select(parse_exp_show(dyadic_show()), PARAMS).cells
    result = tables(cells, "dataset", lambda m, d: lambda *args: (a, b))
    base = np.array(DYADIC["dataset"])
    # Holm over the three tests that can reach 0.05 (digits: minmax, none, instance): minmax
    # and none at 2/2^7 (every seed one way), instance at 1 (its delta is exactly 0).
    adj = {"minmax": 3 * 2 / 128, "none": 3 * 2 / 128, "instance": 1.0}
    tests = result["tests"].set_index(["dataset", "setting"])
    instance = tests.loc[("digits", "norm=instance weights=scratch")]
    d = np.array(DYADIC["instance"]) - base
    found = detectable_shift(Design(7, 0, 0), 0.05 / 3) * d.std(ddof=1) / np.sqrt(2) * 100
    assert instance["delta (points)"] == 0 and instance["detectable (points)"] == round(found, 2)
    # A verdict on this page of 5 comparisons whose cells learned: 2/2^n <= 0.01 (8 paired
    # seeds) or 2/C(2n, n) <= 0.01 (5 + 5 other seeds).
    assert instance["seeds for a verdict"] == 8
    assert tests.loc[("shapes", "norm=none weights=scratch"), "seeds for a verdict"] == 5
    assert pd.isna(tests.loc[("shapes", "norm=minmax weights=scratch"), "detectable (points)"])
    # No test, nothing to detect: 7 seeds, but a cell that did not learn.
    assert pd.isna(tests.loc[("digits", "norm=imagenet weights=scratch"), "detectable (points)"])
    against = " against norm=dataset weights=scratch, resnet18: "
    imagenet = (np.mean([0.5, 0.1, *DYADIC["imagenet"][2:]]) - base.mean()) * 100
    lines = verdicts(result["tests"], "dataset", list(cells.index.unique("setting")))
    assert lines == [
        "**digits**:<br>"
        f"norm=imagenet weights=scratch{against}no test ({imagenet:+.2f} points; did not learn "
        "(final accuracy not above chance): setting seed(s) 2: no verdict)<br>"
        f"norm=instance weights=scratch{against}no significant difference (+0.00 points, exact "
        f"sign-flip test, p=1, Holm-adjusted 1; this test could detect {found:.2f} points with "
        "80% power at the page's corrected level)<br>"
        f"norm=minmax weights=scratch{against}better (+19.64 points, exact sign-flip test, "
        f"p=0.0156, Holm-adjusted 0.0469)<br>"
        f"norm=none weights=scratch{against}worse (-21.43 points, exact sign-flip test, "
        f"p=0.0156, Holm-adjusted 0.0469)",
        "**shapes**:<br>"
        f"norm=minmax weights=scratch{against}no verdict, too few seeds (+12.50 points; one seed "
        "each (seed 7): the two trained models are not shown to differ (McNemar's exact test "
        "over the 8 test images, p=1, uncorrected); that is no test of the settings, whose "
        "effect only seeds show; a verdict on this page needs at least 8 seeds per setting)<br>"
        f"norm=none weights=scratch{against}no verdict, too few seeds (-12.50 points; exact "
        "relabeling test, p=0.75, but it cannot go below 0.25 with these seeds; a verdict on "
        "this page needs at least 5 seeds per setting)"]
    assert (tests.loc[("digits", "norm=minmax weights=scratch"), "delta (points)"]
            == round((np.mean(DYADIC["minmax"]) - base.mean()) * 100, 2) == 19.64)
    assert [tests.loc[("digits", f"norm={n} weights=scratch"), "p (Holm)"]
            for n in adj] == list(adj.values())
    table2 = result["table2"]
    assert table2.loc[("resnet18", "norm=none weights=scratch"), "digits"] == (
        f"{shown(DYADIC['none'])} [red:-21.43] (*)")
    assert table2.loc[("resnet18", "norm=imagenet weights=scratch"), "digits"].endswith(
        f" [red:{imagenet:+.2f}] (no test)")
    assert table2.loc[("resnet18", "norm=none weights=scratch"), "shapes"].endswith(
        " [red:-12.50] (too few seeds)")
    assert table2.loc[("resnet18", "norm=instance weights=scratch"), "digits"].endswith(
        " [red:+0.00] (n.s.)")  # a delta of exactly 0 is not coloured as a gain


def test_marks_and_verdict_words_at_their_thresholds():
    from normbench.compare import mark, verdict_word
    from normbench.significance import Test

    up = Test("sign-flip", 0.02, p=0.001, smallest_p=0.001)
    down = Test("relabeling", -0.02, p=0.001, smallest_p=0.001)
    assert [mark("better", q) for q in (0.0099, 0.01, 0.049, 0.05)] == [
        " (**)", " (*)", " (*)", " (n.s.)"]
    assert mark("too few seeds", None) == " (too few seeds)"
    assert mark("no test", None) == " (no test)"
    assert [verdict_word(up, q) for q in (0.049, 0.05)] == ["better",
                                                           "no significant difference"]
    assert verdict_word(down, 0.049) == "worse"
    assert verdict_word(Test("sign-flip", 0.01, p=0.25, smallest_p=0.25), None) == \
        "too few seeds"
    assert verdict_word(Test("McNemar", 0.01, note="one seed each"), None) == "too few seeds"
    assert verdict_word(Test("none", 0.01, note="did not learn"), None) == "no test"


def test_an_adjusted_p_just_below_alpha_is_never_shown_as_alpha():
    from normbench.compare import _format_tests, _sentence

    row = pd.Series({"setting": "norm=minmax weights=scratch", "model": "resnet18",
                     "baseline": "norm=dataset weights=scratch", "test": "sign-flip",
                     "delta (points)": 1.5, "p": 0.0031225, "smallest p": 0.001,
                     "p (Holm)": 0.04996, "verdict": "better"})
    assert _sentence(row).endswith("better (+1.50 points, exact sign-flip test, p=0.00312, "
                                   "Holm-adjusted 0.04996)")
    assert _format_tests(pd.DataFrame([row]))["p (Holm)"].tolist() == ["0.04996"]


def test_a_page_too_large_for_any_seed_count_says_so():
    from normbench.compare import _sentence

    row = pd.Series({"setting": "norm=minmax weights=scratch", "model": "resnet18",
                     "baseline": "norm=dataset weights=scratch", "test": "sign-flip",
                     "delta (points)": -2.0, "p": 0.25, "smallest p": 0.25, "p (Holm)": None,
                     "verdict": "too few seeds", "seeds for a verdict": np.nan})
    assert _sentence(row).endswith("no verdict, too few seeds (-2.00 points; exact sign-flip "
                                   "test, p=0.25, but it cannot go below 0.25 with these seeds; "
                                   "a verdict on this page needs more than 64 seeds per setting)")


def test_a_lone_comparison_states_what_it_detects_at_alpha_itself():
    show = [exp_entry("a", "a", "dataset", BASE), exp_entry("c", "c", "none", NONE)]
    _, result = result_of(show)
    (row,) = result["tests"].to_dict("records")
    found = detectable_shift(Design(0, 7, 7), 0.05) * pooled_sd(BASE_V, NONE_V) * 100
    assert row["detectable (points)"] == round(found, 2)  # one comparison: alpha, uncorrected
    assert row["seeds for a verdict"] == 4  # 2/C(8, 4) = 0.029 <= 0.05 < 2/C(6, 3)


def test_cells_that_did_not_learn_are_named_by_side_and_seed():
    frame = lambda accs, learned: pd.DataFrame(  # noqa: E731
        {"rev": "r", "final_acc": accs, "learned": learned}, index=pd.Index([1, 2, 3], name="seed"))
    t = compare_pair(frame([0.1, 0.9, 0.1], [False, True, False]),
                     frame([0.9, 0.1, 0.9], [True, False, None]), NO_PAIRS("m", "d"))
    assert (t.test, t.p) == ("none", None) and t.delta == pytest.approx((1.9 - 1.1) / 3)
    assert t.note == ("did not learn (final accuracy not above chance): baseline seed(s) 1, 3; "
                      "setting seed(s) 2: no verdict")


def test_the_mismatch_table_skips_other_weights_and_the_page_has_no_blank_column():
    from normbench.compare import _table, side_by_side

    show = [exp_entry("n1", "n1", "dataset", BASE, weights="imagenet"),  # sorts first
            pretrained("m1", "pretraining", "minmax", BASE),
            pretrained("m2", "minmax", "minmax", MINMAX)]
    cells, result = result_of(show, {**PARAMS, "start": {"pretrained": {"norm": "dataset"}}})
    assert result["mismatch"].to_dict("index") == {("resnet18", "cifar10", "minmax"): {
        "fine-tuned: minmax": f"{shown(MINMAX_V)} [green:+{np.mean(UP) * 100:.2f}] (*)",
        "fine-tuned: pretraining": shown(BASE_V)}}  # one test: 2/2^7 = 0.0156
    for name in ("mismatch", "table3"):
        page = _table(result[name], True)
        assert "<th></th>" not in page and page.count("<th>") == len(
            result[name].reset_index().columns)
    assert side_by_side(cells.iloc[:0], "final_acc").empty


def test_left_out_lines_split_at_the_run_name_and_four_runs_are_counted():
    from normbench.compare import group_left_out

    why = "digits: code or data differ (dvc.lock hashes): data/digits, src/train.py"
    assert group_left_out([f"r{i}, {why}" for i in range(4)]) == [
        f"4 runs (r0, r1, r2, ...), {why}"]
    assert group_left_out([f"r{i}, {why}" for i in range(3)]) == [f"r0, r1, r2, {why}"]


def test_the_page_renders_tables_with_marks_and_no_index_or_nan():
    from normbench.compare import _format_tests, _markup, _table, held_fixed
    from normbench.runs import Selection

    assert _markup("a<br>b **91.00** [green:+1.00] [red:-2.00] <i>", True) == (
        "a<br>b <b>91.00</b> <span style='color:green'>+1.00</span> "
        "<span style='color:red'>-2.00</span> &lt;i&gt;")
    assert _markup("[green:+1.00] [red:-2.00]", False) == (
        "$\\textcolor{green}{+1.00}$ $\\textcolor{red}{-2.00}$")
    df = pd.DataFrame({"value": ["0.10", "**1**"], "n": [1.5, np.nan]},
                      index=pd.Index(["x", "y"], name="row"))
    assert _table(df, True).split("<tbody>")[1].split() == (
        "<tr> <td>x</td> <td>0.10</td> <td>1.5</td> </tr> "
        "<tr> <td>y</td> <td><b>1</b></td> <td></td> </tr> </tbody> </table>").split()
    assert _table(df, False).splitlines() == ["| row   | value   | n   |",
                                             "|:------|:--------|:----|",
                                             "| x     | 0.10    | 1.5 |",
                                             "| y     | **1**   | nan |"]
    assert _format_tests(pd.DataFrame({"p": [0.0123456], "smallest p": [0.0078125],
                                       "p (Holm)": [0.5], "detectable (points)": [3.44]})).to_dict(
        "records") == [{"p": "0.0123", "smallest p": "0.00781", "p (Holm)": "0.5",
                        "detectable (points)": 3.44}]
    tests = pd.DataFrame({"p": [None, None], "smallest p": [None, None],  # no row has a test
                          "p (Holm)": [None, None], "seeds for a verdict": [np.nan, 4.0],
                          "note": [None, "why"]})
    assert _format_tests(tests).to_dict("records") == [
        {"p": "-", "smallest p": "-", "p (Holm)": "-", "seeds for a verdict": "", "note": ""},
        {"p": "-", "smallest p": "-", "p (Holm)": "-", "seeds for a verdict": "4",
         "note": "why"}]
    assert _format_tests(pd.DataFrame()).empty
    fixed = Selection(pd.DataFrame(), [], pd.DataFrame(),
                      {"digits": {"data.digits.seed": 0, "execution": "cuda bf16 eager"},
                       "shapes": {"train.lr": 0.1, "data.shapes.n": 500, "execution": EXEC}})
    assert held_fixed(fixed).to_dict("records") == [  # a param of one dataset only: blank
        {"param": "data.digits.seed", "digits": "0", "shapes": ""},
        {"param": "execution", "digits": "cuda bf16 eager", "shapes": EXEC},
        {"param": "train.lr", "digits": "", "shapes": "0.1"},
        {"param": "data.shapes.n", "digits": "", "shapes": "500"}]


def test_detectable_and_seeds_for_a_verdict_are_stated_at_the_pages_corrected_level():
    _, result = result_of()  # two tests in the family: alpha / 2
    tests = result["tests"].set_index("setting")
    # Paired (minmax): from the spread of the per-seed differences, a cell's sd being theirs
    # over sqrt(2); 7 paired seeds reach 2/128 <= 0.025.
    found = detectable_shift(Design(7, 0, 0), 0.05 / 2) * np.std(UP, ddof=1) / np.sqrt(2)
    minmax = tests.loc["norm=minmax weights=scratch"]
    assert minmax["detectable (points)"] == round(found * 100, 2)
    assert minmax["seeds for a verdict"] == 7  # 2/2^6 = 0.031 > 0.025 >= 2/2^7
    # Relabeling (none): from the pooled spread of the two settings' cells.
    found = detectable_shift(Design(0, 7, 7), 0.05 / 2) * pooled_sd(BASE_V, NONE_V)
    assert tests.loc["norm=none weights=scratch", "detectable (points)"] == round(found * 100, 2)
    assert tests.loc["norm=none weights=scratch", "seeds for a verdict"] == 5  # 2/70 > 0.025


def test_a_fine_tuning_norm_named_dataset_does_not_clash_with_the_dataset_column(tmp_path):
    show = [pretrained("m1", "pretraining", "minmax", BASE),
            pretrained("m2", "dataset", "minmax", MINMAX)]
    reference = {**PARAMS, "start": {"pretrained": {"norm": "dataset"}}}
    runs = parse_exp_show(show)
    selection = select(runs, reference)
    result = tables(selection.cells, "dataset", NO_PAIRS)
    write(tmp_path, "dataset", runs, selection, result, None, None,
          WeightSection([], pd.DataFrame(), {}))
    assert "fine-tuned: dataset" in (tmp_path / "README.md").read_text()
