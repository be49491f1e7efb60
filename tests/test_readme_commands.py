"""Every command in a README code block works as written: the quick ones run here, as written, in
a tiny copy of the project (one cell of 48 images, 1 epoch); the others are listed with the
reason they are not run. A command added to the README in neither list fails here."""

import re
import shlex

from conftest import ROOT, TINY_CELL, copy_project, sh

# Run below, in this order, in the tiny project.
RUN = (
    "dvc exp run -n baseline",
    "dvc exp run -S norm=minmax -n minmax",
    "dvc params diff baseline minmax",
    "dvc metrics diff baseline minmax",
    "dvc exp show --only-changed",
    "dvc exp show --drop '.*' --keep 'Experiment|norm|weights$|.*final_acc_pct$'",
    "dvc plots diff baseline minmax",
)
NOT_RUN = {
    "make repro": "trains the default (2 cells, about 4 min); test_setup.py runs its set-up",
    "make test": "the whole suite (15 to 20 min)",
    "source .venv/bin/activate": "changes the calling shell only; test_setup.py installs the venv "
                                 "and runs normbench from it",
    "make study": "trains 100 cells; test_study_e2e.py runs a tiny study",
    'make study NORMS="dataset minmax" SEEDS="1 2 3 4 5 6 7" BASELINE=dataset': "trains 28 cells",
    'make study WEIGHTS="scratch pretrained"': "pretrains and trains 90 cells",
    'make study WEIGHTS=pretrained PRETRAIN_NORMS="dataset minmax" '
    'NORMS="pretraining dataset minmax"': "pretrains twice and trains 60 cells",
}


def readme_commands() -> list[str]:
    """Each line of the README's ```bash blocks (the others, like the layout, are no commands),
    without its comment."""
    text = (ROOT / "README.md").read_text()
    bash = re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)
    lines = [line for block in bash for line in block.splitlines()]
    return [re.sub(r"\s+#.*$", "", line).strip() for line in lines if line.strip()]


def test_every_readme_command_is_run_here_or_listed_with_why_not():
    commands = readme_commands()
    unknown = [c for c in commands if c not in RUN and c not in NOT_RUN]
    assert unknown == [], f"add these to RUN or NOT_RUN (with the reason): {unknown}"
    gone = [c for c in (*RUN, *NOT_RUN) if c not in commands]
    assert gone == [], f"no longer in the README: {gone}"


def test_the_readme_commands_run_as_written(reproduced_tiny_project, tmp_path):
    repo = tmp_path / "repo"
    copy_project(reproduced_tiny_project, repo)
    out = {command: sh(repo, *shlex.split(command)) for command in RUN}
    # Which setting each side ran, by name.
    assert re.search(r"norm\s+dataset\s+minmax", out["dvc params diff baseline minmax"])
    # Only the figures that changed, each a row of the cell in percent (no timings, no p-values).
    rows = [line.split()[1] for line in out["dvc metrics diff baseline minmax"].splitlines()[1:]]
    assert rows and all(re.fullmatch(rf"{TINY_CELL}\.\w+_pct", r) for r in rows), rows
    assert "minmax" in out["dvc exp show --only-changed"]
    narrow = out[RUN[5]]
    assert "final_acc_pct" in narrow and "val_acc_pct" not in narrow and "minmax" in narrow
    assert (repo / "dvc_plots" / "index.html").is_file()
