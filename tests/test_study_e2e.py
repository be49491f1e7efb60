"""`make study` end to end on a tiny configuration: interrupted, resumed, a failing experiment
reported without stopping the others, and a third run that has nothing left to do."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ROOT, sh, tiny_project, section, table_rows
from normbench.dvcqueue import queue_workers
from normbench.significance import fmt_p

pytestmark = pytest.mark.slow
# Enough images and epochs that every cell learns (final accuracy above chance, checked), so
# that the comparison runs its tests: seeds 1 and 2 reach 0.29-0.49 here, chance is 0.17.
STUDY = ["--norms", "dataset", "minmax", "--seeds", "1", "2", "--set", "train.epochs=4"]
IMAGES_PER_CLASS = 100
SETTINGS = ("norm=dataset weights=scratch", "norm=minmax weights=scratch")


def study(repo: Path, *args: str, **kwargs) -> subprocess.Popen:
    """`make study` as the Makefile runs it, in ``repo``, with this environment's dvc."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TORCH_HOME": str(repo / "torch"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.Popen([sys.executable, "-u", "-m", "normbench.study", *args], cwd=repo,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **kwargs)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=600)
    return proc.returncode, out


def cell_metrics(repo: Path) -> dict[str, dict[int, dict]]:
    """{setting: {seed: metrics of resnet18-shapes-<seed>}} of every finished experiment, read
    from `dvc exp show --json` here (not through normbench)."""
    found: dict[str, dict[int, dict]] = {}
    for entry in json.loads(sh(repo, "dvc", "exp", "show", "--json")):
        for exp in entry.get("experiments") or []:
            if (exp.get("executor") or {}).get("state", "success") != "success":
                continue  # failed, queued or running: DVC shows its stash's files, no results
            for rev in exp.get("revs") or []:
                data = rev.get("data") or {}
                params = ((data.get("params") or {}).get("params.yaml") or {}).get("data")
                if not (params and (data.get("metrics") or {}).get("metrics.json")):
                    continue  # a failed experiment
                # The report's record of every cell, from git (not a DVC metric).
                metrics = json.loads(sh(repo, "git", "show", f"{rev['rev']}:report/cells.json"))
                setting = f"norm={params['norm']} weights={params['weights']}"
                for seed in params["seeds"]:
                    found.setdefault(setting, {})[seed] = metrics[f"resnet18-shapes-{seed}"]
    return found


def test_study_resumes_reports_failures_and_compares(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    tiny_project(repo, "resnet18")  # `make study` end to end on a torchvision model
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["shapes"]["images_per_class"] = IMAGES_PER_CLASS
    params["train"]["val_fraction"] = 0.1  # 48 of the 480 train images held out
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(repo, "git", "commit", "-qam", "more images")

    # 1. Interrupted (Ctrl-C) once the first cell has finished and the second one started: one
    # experiment at a time (JOBS=auto would run both side by side on a machine of 2 cores or
    # more, and the experiment running would be the one that printed first).
    proc = study(repo, *STUDY, "--jobs", "1")
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "running: train@resnet18-shapes-2" in line:
            proc.send_signal(signal.SIGINT)
            break
    code, out = finish(proc)
    out = "".join(seen) + out
    assert code == 130, out
    assert "run the same command to resume" in out
    assert queue_workers(repo) == []  # interrupted too: nothing of the study is left running
    first = out.split(": running")[0].split()[-1]  # the experiment that was running

    # 2. Resumed, with two more experiments that fail (ImageNet weights cannot be fetched here):
    # they are reported by name with their logs, and the others finish and are compared.
    code, out = finish(study(repo, *STUDY, "--weights", "scratch", "imagenet", "--jobs", "2"))
    assert code == 1, out
    assert "4 experiments (2 norms x 2 weights)" in out and "0 already done, 4 to run" in out
    assert "baseline: norm=dataset, against every setting with the same weights" in out
    failed = [line for line in out.splitlines() if line.startswith("study: experiment ")]
    assert len(failed) == 2 and all("-imagenet-" in f and " failed: " in f for f in failed), out
    log = Path(failed[0].split(" failed: ")[1])
    assert "error: cannot get ImageNet weights resnet18-" in log.read_text()
    assert "2 of 4 experiments failed" in out
    # Cells done / to do as they finish: the two ImageNet experiments fail before any cell, so
    # their 4 cells leave the count (nothing will train them now): the last line says the
    # other 4 are done and none is to do, and the time rests on the cells trained here.
    counts = re.findall(r"cells: (\d+) done / (\d+) to do(?:; about .+ left)? \(mean .+ a cell "
                        r"over (\d+) trained", out)
    assert counts and counts[-1][:2] == ("4", "0") and int(counts[-1][2]) >= 1, out
    assert queue_workers(repo) == []  # when the study returns, no worker of it is left running
    resumed = next(Path(p) for p in (repo / ".dvc" / "tmp" / "exps" / "run").glob("*/*.out")
                   if f"Reproducing experiment '{first}'" in Path(p).read_text()
                   and "is cached - skipping run" in Path(p).read_text())
    text = resumed.read_text()
    assert "Stage 'train@resnet18-shapes-1' is cached - skipping run" in text  # not retrained
    assert "Running stage 'train@resnet18-shapes-2'" in text

    # The comparison, checked against the per-seed metrics of both experiments.
    runs = cell_metrics(repo)
    assert set(runs) == set(SETTINGS) and all(set(runs[s]) == {1, 2} for s in SETTINGS), runs
    assert all(m["learned"] for s in SETTINGS for m in runs[s].values()), runs  # else no test
    final = {s: [runs[s][seed]["final_acc"] for seed in (1, 2)] for s in SETTINGS}
    page = (repo / "compare" / "README.md").read_text()
    table2 = {r["setting"]: r for r in table_rows(section(page, "Table 2: final test accuracy"))}
    assert set(table2) == set(SETTINGS)
    base = np.array(final[SETTINGS[0]])
    assert table2[SETTINGS[0]]["shapes"] == (f"{base.mean() * 100:.2f} ± "
                                             f"{base.std(ddof=1) * 100:.2f}")
    assert "train.epochs" in section(page, "Held fixed")  # the params held fixed are stated
    # Both settings ran seeds 1 and 2: the sign-flip test over the two seeds, the only test
    # of the page. Its p is 1/2 at best (of 4 sign flips, the observed one and its mirror), so
    # no verdict, and the page says how many seeds one needs.
    d = np.subtract(final[SETTINGS[1]], final[SETTINGS[0]])
    p = 0.5 if abs(d.sum()) > abs(d[0] - d[1]) else 1.0
    delta = (np.mean(final[SETTINGS[1]]) - np.mean(final[SETTINGS[0]])) * 100
    tests = table_rows(section(page, "Tests"))
    assert len(tests) == 1, tests
    row = tests[0]
    assert (row["setting"], row["baseline"], row["test"]) == (*SETTINGS[::-1], "sign-flip")
    assert (row["p"], row["smallest p"], row["p (Holm)"]) == (fmt_p(p), "0.5", "-")
    assert float(row["delta (points)"]) == pytest.approx(delta, abs=0.006)
    assert (row["verdict"], row["seeds for a verdict"]) == ("too few seeds", "6")
    assert f"**shapes**:<br>{SETTINGS[1]} against {SETTINGS[0]}, resnet18: no verdict, too " \
        f"few seeds ({delta:+.2f} points; exact sign-flip test, p={fmt_p(p)}, but it cannot " \
        "go below 0.5 with these seeds; a verdict on this page needs at least 6 seeds per " \
        "setting)" in section(page, "What differs")

    # The weights: the final drift over seeds, sign-flip over both seeds, too few for a
    # verdict; the Wasserstein-1 permutation p is shown as a description only.
    weights = section(page, "What normalization does to the weights")
    drift = {role: {s: [runs[s][seed][f"drift_{role}"] for seed in (1, 2)] for s in SETTINGS}
             for role in ("first_conv", "deep_conv")}
    d = {role: np.subtract(*(drift[role][s] for s in SETTINGS[::-1])) for role in drift}
    ps = [0.5 if abs(x.sum()) > abs(x[0] - x[1]) else 1.0 for x in d.values()]
    rows = {r["layer"]: r for r in table_rows(weights) if r["setting"] == SETTINGS[1]}
    layers = ["first conv (conv1)", "deeper conv (layer4.1.conv2)"]  # in the order of ``drift``
    assert set(rows) == set(layers), rows
    for layer, raw in zip(layers, ps):
        row = rows[layer]
        assert (row["reference"], row["test"]) == (SETTINGS[0], "sign-flip"), row
        assert (row["p"], row["smallest p"], row["p (Holm)"]) == (fmt_p(raw), "0.5", "-"), row
        assert 0 < float(row["permutation p (described)"]) <= 1, row
    first = drift["first_conv"]
    assert "**resnet18 on shapes, first conv (conv1)**, against norm=dataset" in weights
    assert (f"No verdict: minmax (too few seeds: final drift "
            f"{np.mean(first[SETTINGS[1]]) * 100:.3g} % vs {np.mean(first[SETTINGS[0]]) * 100:.3g}"
            f" %, exact sign-flip test, p={fmt_p(ps[0])}, cannot go below 0.5 with these "
            "seeds)") in weights
    assert (repo / "compare" / "weights_resnet18-shapes.png").read_bytes()[:4] == b"\x89PNG"

    # 3. Nothing left to do for the scratch study: nothing is queued, the comparison is rewritten.
    code, out = finish(study(repo, *STUDY))
    assert code == 0, out
    assert "2 already done, 0 to run" in out and "compare/index.html" in out
