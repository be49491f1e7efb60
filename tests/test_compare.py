import numpy as np
import pandas as pd
import pytest
import scipy.optimize
import scipy.stats

from conftest import section

from normbench.compare import OutputsMissing, WeightSection, compare_pair, tables, verdicts, write
from normbench.runs import MissingOutputs, parse_exp_show, select

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


BASE = {"resnet18-cifar10-1": 0.90, "resnet18-cifar10-2": 0.91, "resnet18-cifar10-3": 0.92}
MINMAX = {"resnet18-cifar10-1": 0.95, "resnet18-cifar10-2": 0.96, "resnet18-cifar10-3": 0.98}
NONE = {"resnet18-cifar10-4": 0.905, "resnet18-cifar10-5": 0.915, "resnet18-cifar10-6": 0.9}
SHOW = [
    {"rev": "workspace", "data": {}},
    {**exp_entry("aaa", "main", "dataset", BASE),
     "experiments": [
         {"name": "e1", "revs": [exp_entry("bbb", "e1", "minmax", MINMAX)]},
         {"name": "e2", "revs": [exp_entry("ccc", "e2", "none", NONE)]},
     ]},
]
NO_PAIRS = lambda m, d: lambda *a: pytest.fail("no McNemar expected")  # noqa: E731


def result_of(show=SHOW, reference=PARAMS):
    cells = select(parse_exp_show(show), reference).cells
    return cells, tables(cells, "dataset", NO_PAIRS)


def test_same_seeds_are_paired_other_seeds_welch_and_holm_corrects_the_page():
    cells, result = result_of()
    tests = result["tests"].set_index("setting")
    minmax, none = tests.loc["norm=minmax weights=scratch"], tests.loc["norm=none weights=scratch"]
    p_pair = scipy.stats.ttest_rel([0.95, 0.96, 0.98], [0.90, 0.91, 0.92]).pvalue
    p_welch = scipy.stats.ttest_ind([0.905, 0.915, 0.9], [0.90, 0.91, 0.92],
                                    equal_var=False).pvalue
    assert minmax.test == "paired t" and minmax.p == pytest.approx(p_pair, rel=1e-12)
    assert none.test == "Welch" and none.p == pytest.approx(p_welch, rel=1e-12)
    # Holm over the two: the smaller p doubled, the larger kept (and never below the smaller).
    lo, hi = sorted([p_pair, p_welch])
    assert sorted(tests["p (Holm)"]) == pytest.approx([min(1, 2 * lo), max(min(1, 2 * lo), hi)])
    assert minmax.verdict == "better" and none.verdict == "no significant difference"
    assert minmax.baseline == "norm=dataset weights=scratch"
    assert minmax["delta (points)"] == round((np.mean([0.95, 0.96, 0.98]) - 0.91) * 100, 2)


def test_table2_holds_final_accuracy_with_delta_and_the_adjusted_mark():
    _, result = result_of()
    t2 = result["table2"]
    assert t2.loc[("resnet18", "norm=dataset weights=scratch"), "cifar10"] == "91.00 ± 1.00"
    values = np.array([0.95, 0.96, 0.98])
    minmax = t2.loc[("resnet18", "norm=minmax weights=scratch"), "cifar10"]
    assert minmax == (f"{values.mean() * 100:.2f} ± {values.std(ddof=1) * 100:.2f} "
                      f"[green:{(values.mean() - 0.91) * 100:+.2f}] (**)")
    assert t2.loc[("resnet18", "norm=none weights=scratch"), "cifar10"].endswith("(n.s.)")
    assert result["table3"].loc[("resnet18", "norm=minmax weights=scratch"), "cifar10"] \
        .startswith("**")  # the best mean in bold
    # The original study's figure is kept, from best_acc (here final + 0.01).
    assert result["best"].loc[("resnet18", "norm=dataset weights=scratch"), "cifar10"] \
        == "92.00 ± 1.00"


def test_no_significant_difference_states_what_the_test_could_detect():
    _, result = result_of()
    none = result["tests"].set_index("setting").loc["norm=none weights=scratch"]
    a, b = np.array([0.90, 0.91, 0.92]), np.array([0.905, 0.915, 0.9])
    va, vb = a.var(ddof=1) / 3, b.var(ddof=1) / 3
    se, df = np.sqrt(va + vb), (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)  # Welch-Satterthwaite
    alpha = 0.05 / 2  # two comparisons on the page: the level Holm asks of the first
    crit = scipy.stats.t.ppf(1 - alpha / 2, df)

    def power(k):  # two-sided power at a noncentrality of k standard errors
        return scipy.stats.nct.sf(crit, df, k) + scipy.stats.nct.cdf(-crit, df, k)
    k80 = scipy.optimize.brentq(lambda k: power(k) - 0.8, 0, 12)  # power(12) > 0.99 here
    assert none["detectable (points)"] == pytest.approx(k80 * se * 100, abs=0.006)
    assert none["seeds needed"] > 3
    text = " ".join(verdicts(result["tests"], "dataset", ["norm=dataset weights=scratch",
                                                          "norm=none weights=scratch"]))
    assert (f"could detect {none['detectable (points)']:.2f} points with 80% power at the page's "
            f"corrected level, the observed "
            f"{none['delta (points)']:+.2f} would need {int(none['seeds needed'])} seeds") in text


def test_zero_variance_gets_words_not_p_zero():
    same = {"resnet18-cifar10-1": 0.90, "resnet18-cifar10-2": 0.90}
    show = [exp_entry("a", "a", "dataset", same), exp_entry("b", "b", "minmax", same)]
    _, result = result_of(show)
    row = result["tests"].iloc[0]
    assert row.p is None and row["p (Holm)"] is None and row.verdict == "no difference"
    assert "identical in every seed" in row.note


def test_pretrained_settings_are_compared_with_the_baseline_norm_pretrained():
    show = [exp_entry("a", "a", "dataset", BASE), exp_entry("b", "b", "minmax", MINMAX,
                                                             weights="imagenet")]
    cells, result = result_of(show)
    assert result["tests"].empty  # never against the scratch baseline
    lines = verdicts(result["tests"], "dataset", list(cells.index.unique("setting")))
    assert lines == ["No runs of the baseline norm=dataset weights=imagenet: no setting with "
                     "weights=imagenet is compared (none against a substitute)."]
    show.append(exp_entry("c", "c", "dataset", BASE | {"resnet18-cifar10-3": 0.93},
                          weights="imagenet"))
    _, result = result_of(show)
    rows = result["tests"].set_index(["setting", "baseline"])
    row = rows.loc[("norm=minmax weights=imagenet", "norm=dataset weights=imagenet")]
    assert row["test"] == "paired t"
    # Does starting from ImageNet help? The same norm from scratch: +0.33 points on seed 3 only.
    transfer = rows.loc[("norm=dataset weights=imagenet", "norm=dataset weights=scratch")]
    assert transfer["delta (points)"] == pytest.approx(100 * 0.01 / 3, abs=0.01)
    assert len(rows) == 2


def test_cells_that_did_not_learn_carry_no_verdict():
    flop = {**MINMAX, "resnet18-cifar10-2": cell(0.1, learned=False)}
    show = [exp_entry("a", "a", "dataset", BASE), exp_entry("b", "b", "minmax", flop)]
    _, result = result_of(show)
    row = result["tests"].iloc[0]
    assert row.test == "none" and row.p is None and row.verdict == "no test"
    assert "did not learn" in row.note and "setting seed(s) 2" in row.note


def test_single_seed_pairs_use_mcnemar_and_different_seeds_no_test():
    frame = lambda rev, seed, acc: pd.DataFrame(  # noqa: E731
        {"rev": [rev], "final_acc": [acc], "learned": [True]}, index=pd.Index([seed], name="seed"))
    # 10 images both right, 10 both wrong, 1 right only for a, 9 right only for b.
    a = np.array([True] * 10 + [False] * 10 + [True] + [False] * 9)
    b = np.array([True] * 10 + [False] * 10 + [False] + [True] * 9)
    calls = []
    t = compare_pair(frame("a", 1, 0.5), frame("b", 1, 0.7),
                     lambda ra, rb, seed: calls.append((ra, rb, seed)) or (a, b))
    assert calls == [("a", "b", 1)]
    only_a, only_b = 1, 9
    assert t.test == "McNemar" and t.delta == pytest.approx(0.2)
    assert t.p == pytest.approx(scipy.stats.binomtest(only_a, only_a + only_b).pvalue)
    moved = compare_pair(frame("a", 1, 0.5), frame("b", 2, 0.7), NO_PAIRS("m", "d"))
    assert moved.test == "none" and moved.p is None


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
    assert "<b>96.33 ± 1.53</b>" in page and "<script" not in page
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
    assert row["fine-tuned: pretraining"] == "91.00 ± 1.00"
    assert row["fine-tuned: dataset"].startswith("96.33 ± 1.53 [green:+5.33] (")
    tests = result["tests"]
    matched = tests[tests.baseline == "norm=pretraining weights=pretrained pretrain=minmax"]
    (p,) = matched.p
    assert p == pytest.approx(scipy.stats.ttest_rel([0.95, 0.96, 0.98], [0.90, 0.91, 0.92]).pvalue)
    # Instance pretraining: seeds 4-6 against 1-3, so Welch.
    welch = tests[tests.baseline == "norm=pretraining weights=pretrained pretrain=instance"]
    assert welch.test.tolist() == ["Welch"]
    assert table.loc[("resnet18", "cifar10", "instance"), "fine-tuned: pretraining"] == "90.67 ± 0.76"
    # norm=pretraining against the baseline norm (Table 2) and the baseline norm against the
    # matched pairing (this table) are one test, counted once by Holm and marked in both.
    assert len(tests) == 2 and set(tests.setting) == {
        "norm=dataset weights=pretrained pretrain=minmax",
        "norm=dataset weights=pretrained pretrain=instance"}
    t2 = result["table2"].loc[("resnet18", "norm=pretraining weights=pretrained pretrain=minmax"),
                              "cifar10"]
    assert t2.startswith("91.00 ± 1.00 [red:-5.33] (") and t2.endswith(
        row["fine-tuned: dataset"].rsplit(" ", 1)[1])


def test_the_verdict_figure_is_a_png_with_a_panel_per_model_and_dataset(monkeypatch):
    import matplotlib.pyplot as plt

    from normbench import verdict_figure as vf

    cells, result = result_of()
    panels = []
    real = plt.subplots
    monkeypatch.setattr(plt, "subplots", lambda *a, **k: panels.append(a) or real(*a, **k))
    labels = []
    monkeypatch.setattr(plt.Axes, "annotate", lambda self, text, *a, **k: labels.append(text))
    png = vf.verdict_figure(cells, result["tests"], "dataset")
    assert png.startswith(b"\x89PNG") and panels == [(1, 1)]
    assert labels == ["baseline", "better", "n.s."]  # dataset, minmax, none (Holm-adjusted)


# --- make mutation: the verdicts in words, the marks, and the tables as the page shows them ---

DYADIC = {"dataset": [0.5, 0.625, 0.75],  # exact in binary: deltas of exactly zero stay zero
          "minmax": [0.75, 0.8125, 1.0], "none": [0.25, 0.3125, 0.5],
          "instance": [0.75, 0.5, 0.625], "imagenet": [0.5, 0.625, 0.75]}


def dyadic_show():
    show = []
    for norm, accs in DYADIC.items():
        cells = {f"resnet18-digits-{seed}": acc for seed, acc in enumerate(accs, 1)}
        if norm == "imagenet":  # this setting's seed 2 stayed at chance
            cells["resnet18-digits-2"] = cell(0.1, learned=False)
        if norm in ("dataset", "minmax"):  # one shared seed on shapes: McNemar
            cells["resnet18-shapes-7"] = 0.5 if norm == "dataset" else 0.625
        show.append(exp_entry(norm, norm, norm, cells))
    return show


def test_every_kind_of_verdict_in_words():
    a = np.array([True] * 3 + [False] * 5)  # 8 test images: 1 right only for a, 2 only for b
    b = np.array([True] * 2 + [False, True, True] + [False] * 3)
    cells = select(parse_exp_show(dyadic_show()), PARAMS).cells
    result = tables(cells, "dataset", lambda m, d: lambda *args: (a, b))
    base = DYADIC["dataset"]
    p = {n: scipy.stats.ttest_rel(DYADIC[n], base).pvalue for n in ("minmax", "none", "instance")}
    p["mcnemar"] = scipy.stats.binomtest(1, 3).pvalue  # = 1
    # Holm over the four p (imagenet has none), written out: none < minmax < instance = McNemar.
    adj = {"none": 4 * p["none"]}
    adj["minmax"] = max(adj["none"], 3 * p["minmax"])
    adj["instance"] = adj["mcnemar"] = 1.0
    tests = result["tests"].set_index(["dataset", "setting"])
    instance = tests.loc[("digits", "norm=instance weights=scratch")]
    assert instance["delta (points)"] == 0 and pd.isna(instance["seeds needed"])
    assert instance["detectable (points)"] == round(instance["detectable (points)"], 2)
    assert pd.isna(tests.loc[("shapes", "norm=minmax weights=scratch"), "detectable (points)"])
    against = " against norm=dataset weights=scratch, resnet18: "
    lines = verdicts(result["tests"], "dataset", list(cells.index.unique("setting")))
    assert lines == [
        "**digits**:<br>"
        f"norm=imagenet weights=scratch{against}no test (-17.50 points; did not learn (final "
        "accuracy not above chance): setting seed(s) 2: no verdict)<br>"
        f"norm=instance weights=scratch{against}no significant difference (+0.00 points, paired "
        f"t p=1, Holm-adjusted 1; this test could detect {instance['detectable (points)']:.2f} "
        "points with 80% power at the page's corrected level, the observed +0.00 would need "
        "more than 1000 seeds)<br>"
        f"norm=minmax weights=scratch{against}better (+22.92 points, paired t "
        f"p={p['minmax']:.3g}, Holm-adjusted {adj['minmax']:.3g})<br>"
        f"norm=none weights=scratch{against}worse (-27.08 points, paired t p={p['none']:.3g}, "
        f"Holm-adjusted {adj['none']:.3g})",
        "**shapes**:<br>"
        f"norm=minmax weights=scratch{against}no significant difference (+12.50 points, McNemar "
        "p=1, Holm-adjusted 1)"]
    table2 = result["table2"]
    none = np.array(DYADIC["none"])
    assert table2.loc[("resnet18", "norm=none weights=scratch"), "digits"] == (
        f"{none.mean() * 100:.2f} ± {none.std(ddof=1) * 100:.2f} [red:-27.08] (*)")
    assert table2.loc[("resnet18", "norm=imagenet weights=scratch"), "digits"].endswith(
        " [red:-17.50] (no test)")  # (50 + 10 + 75) / 3 against 62.5 %: seed 2 at chance


def test_marks_and_verdict_words_at_their_thresholds():
    from normbench.compare import mark, verdict_word
    from normbench.significance import Test

    up, down = Test("paired t", 0.02, p=0.001), Test("Welch", -0.02, p=0.001)
    assert [mark(up, q) for q in (None, 0.0099, 0.01, 0.049, 0.05)] == [
        " (no test)", " (**)", " (*)", " (*)", " (n.s.)"]
    assert [verdict_word(up, q) for q in (0.049, 0.05)] == ["better",
                                                           "no significant difference"]
    assert verdict_word(down, 0.049) == "worse"
    assert verdict_word(Test("none", 0.0, note="identical in every seed: no difference"),
                        None) == "no difference"
    assert verdict_word(Test("none", 0.01, note="one seed in a setting"), None) == "no test"


def test_a_lone_comparison_states_what_it_detects_at_alpha_itself():
    show = [exp_entry("a", "a", "dataset", BASE), exp_entry("c", "c", "none", NONE)]
    _, result = result_of(show)
    (row,) = result["tests"].to_dict("records")
    a, b = np.array([0.90, 0.91, 0.92]), np.array([0.905, 0.915, 0.9])
    va, vb = a.var(ddof=1) / 3, b.var(ddof=1) / 3
    se, df = np.sqrt(va + vb), (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)
    crit = scipy.stats.t.ppf(1 - 0.05 / 2, df)  # one comparison: alpha, uncorrected

    def power(k):
        return scipy.stats.nct.sf(crit, df, k) + scipy.stats.nct.cdf(-crit, df, k)
    k80 = scipy.optimize.brentq(lambda k: power(k) - 0.8, 0, 8)  # power(8) > 0.99 here
    assert row["detectable (points)"] == pytest.approx(k80 * se * 100, abs=0.006)
    assert row["detectable (points)"] == round(row["detectable (points)"], 2)  # as shown


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
        "fine-tuned: minmax": "96.33 ± 1.53 [green:+5.33] (**)",
        "fine-tuned: pretraining": "91.00 ± 1.00"}}
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
    assert _format_tests(pd.DataFrame({"p": [0.0123456], "p (Holm)": [0.5]})).to_dict(
        "records") == [{"p": "0.0123", "p (Holm)": "0.5"}]
    tests = pd.DataFrame({"p": [None, None], "p (Holm)": [None, None],  # no row has a test
                          "seeds needed": [np.nan, 4.0], "note": [None, "why"]})
    assert _format_tests(tests).to_dict("records") == [
        {"p": "-", "p (Holm)": "-", "seeds needed": "", "note": ""},
        {"p": "-", "p (Holm)": "-", "seeds needed": 4.0, "note": "why"}]
    assert _format_tests(pd.DataFrame()).empty
    fixed = Selection(pd.DataFrame(), [], pd.DataFrame(),
                      {"digits": {"data.digits.seed": 0, "execution": "cuda bf16 eager"},
                       "shapes": {"train.lr": 0.1, "data.shapes.n": 500, "execution": EXEC}})
    assert held_fixed(fixed).to_dict("records") == [  # a param of one dataset only: blank
        {"param": "data.digits.seed", "digits": "0", "shapes": ""},
        {"param": "execution", "digits": "cuda bf16 eager", "shapes": EXEC},
        {"param": "train.lr", "digits": "", "shapes": "0.1"},
        {"param": "data.shapes.n", "digits": "", "shapes": "500"}]


def power_at(k, df, alpha):
    """Two-sided power of a t-test at a noncentrality of k standard errors (scipy's noncentral
    t gives NaN far in its tails, where the far tail is 0 and the near one 1)."""
    crit = scipy.stats.t.ppf(1 - alpha / 2, df)
    return (np.nan_to_num(scipy.stats.nct.sf(crit, df, k), nan=1.0)
            + np.nan_to_num(scipy.stats.nct.cdf(-crit, df, k), nan=0.0))


def test_detectable_and_seeds_needed_are_stated_at_the_pages_corrected_level():
    _, result = result_of()  # two comparisons: alpha / 2
    tests = result["tests"].set_index("setting")
    alpha = 0.05 / 2
    # Paired (minmax): the per-seed differences 5, 5 and 6 points.
    d = np.array([0.95, 0.96, 0.98]) - np.array([0.90, 0.91, 0.92])
    sd = d.std(ddof=1)
    k80 = scipy.optimize.brentq(lambda k: power_at(k, 2, alpha) - 0.8, 0, 40)
    minmax = tests.loc["norm=minmax weights=scratch"]
    assert minmax["detectable (points)"] == pytest.approx(k80 * sd / np.sqrt(3) * 100, abs=0.006)
    need = next(n for n in range(2, 1001)
                if power_at(d.mean() / (sd / np.sqrt(n)), n - 1, alpha) >= 0.8)
    assert minmax["seeds needed"] == need
    # Welch (none): n seeds a side with the observed variances.
    va = np.var([0.90, 0.91, 0.92], ddof=1)
    vb = np.var([0.905, 0.915, 0.9], ddof=1)
    delta = np.mean([0.905, 0.915, 0.9]) - 0.91

    def welch_df(n):
        return (va / n + vb / n) ** 2 / ((va / n) ** 2 / (n - 1) + (vb / n) ** 2 / (n - 1))
    need = next(n for n in range(2, 1001)
                if power_at(delta / np.sqrt((va + vb) / n), welch_df(n), alpha) >= 0.8)
    assert tests.loc["norm=none weights=scratch", "seeds needed"] == need
    k80 = scipy.optimize.brentq(lambda k: power_at(k, welch_df(3), alpha) - 0.8, 0, 40)
    welch = k80 * np.sqrt((va + vb) / 3) * 100  # 3.4446: shown as 3.44
    assert tests.loc["norm=none weights=scratch", "detectable (points)"] == round(welch, 2)


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
