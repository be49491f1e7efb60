"""`make repro` ends by saying whether this machine reproduced the committed results."""

import copy
import json
import subprocess
import sys

import yaml
from conftest import copy_project, sh

from normbench.reproduction import BASELINE_RECIPE, verdict
from normbench.runs import CELL_RECORDS

LOCK = {
    "stats@shapes": {"deps": [{"path": "data/shapes", "md5": "d1.dir"},
                              {"path": "src/normbench/stats.py", "md5": "c1"}],
                     "outs": [{"path": "data/stats/shapes.json", "md5": "s1"}]},
    "train@resnet18-shapes-1": {
        "deps": [{"path": "data/stats/shapes.json", "md5": "s1"},
                 {"path": "src/normbench/train.py", "md5": "c2"}],
        "params": {"params.yaml": {"norm": "dataset"}},
        "outs": [{"path": "metrics/resnet18-shapes-1.json", "md5": "m1"}]},
    "report": {"deps": [{"path": "metrics", "md5": "all.dir"}],
               "outs": [{"path": "metrics.json", "md5": "j1"}]},
}
METRICS = {"resnet18-shapes-1": {"final_acc": 0.9, "final_loss": 0.25, "execution": "cpu"},
           "resnet18-shapes": {"final_acc_mean": 0.9}}


def edited(lock: dict, stage: str, kind: str, md5: str) -> dict:
    out = copy.deepcopy(lock)
    out[stage][kind][-1]["md5"] = md5
    return out


def test_the_same_hashes_are_a_reproduction():
    text = verdict(LOCK, copy.deepcopy(LOCK), METRICS, METRICS)
    assert text.startswith("Reproduced: all 3 outputs of the committed dvc.lock")


def test_other_outputs_from_the_same_inputs_are_counted_with_the_cells_that_moved():
    here = edited(edited(edited(LOCK, "stats@shapes", "outs", "s2"),
                         "train@resnet18-shapes-1", "outs", "m2"), "report", "outs", "j2")
    here["train@resnet18-shapes-1"]["deps"][0]["md5"] = "s2"  # what the new stats make it read
    here["report"]["deps"][0]["md5"] = "all2.dir"
    moved = copy.deepcopy(METRICS)
    moved["resnet18-shapes-1"].update(final_acc=0.8775, final_loss=0.3)
    text = verdict(LOCK, here, METRICS, moved)
    assert text.startswith("NOT reproduced on this machine: 3 of 3 outputs differ")
    assert ("1 of 1 cells moved: resnet18-shapes-1 final_acc -2.25 points, final_loss +0.0500"
            in text)
    assert text.endswith(BASELINE_RECIPE)


def test_outputs_that_moved_without_moving_a_metric_say_so():
    here = edited(LOCK, "stats@shapes", "outs", "s2")
    text = verdict(LOCK, here, METRICS, METRICS)
    assert "1 of 3 outputs differ from the committed dvc.lock (data/stats/shapes.json)" in text
    assert "0 of 1 cells moved." in text


def test_it_names_the_kinds_of_machine_that_wrote_each_side():
    here = edited(LOCK, "train@resnet18-shapes-1", "outs", "m2")
    amd, intel = (copy.deepcopy(METRICS) for _ in range(2))
    amd["resnet18-shapes-1"]["ran_on"] = "torch 2.14.1, cpu x86_64 AuthenticAMD avx2 1 thread"
    intel["resnet18-shapes-1"].update(ran_on="torch 2.14.1, cpu x86_64 GenuineIntel avx2 1 thread",
                                      final_acc=0.875)
    other = verdict(LOCK, here, amd, intel)
    assert ("HEAD's cells ran on `torch 2.14.1, cpu x86_64 AuthenticAMD avx2 1 thread`, this "
            "machine's on `torch 2.14.1, cpu x86_64 GenuineIntel avx2 1 thread`" in other)
    same = verdict(LOCK, here, amd, {**amd, "resnet18-shapes-1": {
        **amd["resnet18-shapes-1"], "final_acc": 0.875}})
    assert ("ran on the same kind of machine, `torch 2.14.1, cpu x86_64 AuthenticAMD avx2 1 "
            "thread`: a difference the CPU pins do not cover" in same)
    gpu = {c: {**m, "ran_on": "torch 2.14.1, cuda NVIDIA H200"} if "final_acc" in m else m
           for c, m in METRICS.items()}
    assert "GPU results are recorded, not pinned" in verdict(LOCK, here, gpu, gpu)
    assert "HEAD's cells" not in verdict(LOCK, here, METRICS, intel)  # HEAD's say nothing
    assert other.endswith(BASELINE_RECIPE) and same.endswith(BASELINE_RECIPE)


def test_other_code_or_params_is_no_reproduction_test():
    code = edited(LOCK, "stats@shapes", "deps", "c9")
    assert verdict(LOCK, code, METRICS, METRICS).startswith(
        "Not a reproduction test: 1 stage(s) ran with other code, data or params than HEAD's "
        "dvc.lock records (stats@shapes)")
    params = copy.deepcopy(LOCK)
    params["train@resnet18-shapes-1"]["params"]["params.yaml"]["norm"] = "minmax"
    assert "(train@resnet18-shapes-1)" in verdict(LOCK, params, METRICS, METRICS)
    assert verdict({}, LOCK, {}, METRICS).startswith("HEAD has no dvc.lock")


def test_after_dvc_repro_it_reads_the_workspace_against_head(reproduced_tiny_project, tmp_path):
    repo = tmp_path / "repo"
    copy_project(reproduced_tiny_project, repo)

    def says() -> str:
        proc = subprocess.run([sys.executable, "-m", "normbench.reproduction"], cwd=repo,
                              capture_output=True, text=True, env={"PYTHONPATH": str(repo / "src"),
                                                                   "PATH": "/usr/bin:/bin"})
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert says().startswith("Reproduced: all ")
    # HEAD as another machine would have committed it: other weights, another accuracy
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    train = next(s for name, s in lock["stages"].items() if name.startswith("train@"))
    train["outs"][0]["md5"] = "0" * 32
    metrics = json.loads((repo / CELL_RECORDS).read_text())
    cell = next(c for c, m in metrics.items() if "final_acc" in m)
    here = metrics[cell]["final_acc"]
    metrics[cell]["final_acc"] = here + 0.125
    workspace = {p: (repo / p).read_text() for p in ("dvc.lock", CELL_RECORDS)}
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    (repo / CELL_RECORDS).write_text(json.dumps(metrics))
    sh(repo, "git", "commit", "-qam", "another machine's results")
    for path, text in workspace.items():
        (repo / path).write_text(text)
    text = says()
    assert text.startswith("NOT reproduced on this machine: 1 of "), text
    assert f"1 of 1 cells moved: {cell} final_acc -12.50 points" in text
    assert "`dvc exp run -n baseline`" in text
