"""`make setup` refuses a Python older than pyproject.toml's requires-python, before installing."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_an_old_python_is_refused_before_anything_is_installed(tmp_path):
    for name in ("Makefile", "requirements.txt", "pyproject.toml"):
        (tmp_path / name).write_bytes((ROOT / name).read_bytes())
    floor = re.search(r'requires-python = ">=([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    assert floor and floor.group(1) == "3.11.4"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # A python3 that is 3.11.3: one patch release below the floor.
    fake = bin_dir / "python3"
    fake.write_text("#!/bin/sh\n"
                    'case "$1" in -V) echo "Python 3.11.3";; -c) exec /usr/bin/env -i '
                    f'{os.path.realpath("/usr/bin/python3")} -c "import sys; '
                    'sys.version_info = (3, 11, 3); exec(sys.argv[1])" "$2";; '
                    '*) exit 2;; esac\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["make", ".venv/.installed"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "normbench needs Python >= 3.11.4" in proc.stdout + proc.stderr
    assert "python3 is Python 3.11.3" in proc.stdout + proc.stderr
    assert not (tmp_path / ".venv").exists()


def test_setup_installs_normbench_so_python_m_normbench_runs_anywhere(tmp_path):
    """The Makefile's own install steps, offline, in a fresh copy: afterwards the venv's python
    imports normbench from that copy's src/ in any folder (no PYTHONPATH), as the README's
    commands after `source .venv/bin/activate` need."""
    copy = tmp_path / "clone"
    copy.mkdir()
    for name in ("Makefile", "requirements.txt", "pyproject.toml"):
        (copy / name).write_bytes((ROOT / name).read_bytes())
    shutil.copytree(ROOT / "src", copy / "src", ignore=shutil.ignore_patterns("*.egg-info"))
    # A venv that sees the project venv's packages (torch, dvc, setuptools...) through a .pth
    # file, so that `pip install -r requirements.txt` finds each pin installed: no network.
    venv = copy / ".venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # The venv's bundled setuptools would hide the project venv's pinned one.
    subprocess.run([venv / "bin/python", "-m", "pip", "uninstall", "-q", "-y", "setuptools"],
                   check=True)
    shared = [p for p in sys.path if p.endswith("site-packages")]
    (next(venv.glob("lib/python3*/site-packages")) / "project_venv.pth").write_text(
        "\n".join(shared) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INDEX": "1"}
    make = subprocess.run(["make", ".venv/.installed"], cwd=copy, env=env, capture_output=True,
                          text=True, timeout=300)
    assert make.returncode == 0, make.stdout + make.stderr
    where = tmp_path / "elsewhere"
    where.mkdir()
    run = subprocess.run([venv / "bin/python", "-m", "normbench", "--help"], cwd=where, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert re.search(r"^  compare +tables", run.stdout, flags=re.M)
    origin = subprocess.run([venv / "bin/python", "-c", "import normbench.grid as g; print(g.__file__)"],
                            cwd=where, env=env, capture_output=True, text=True, check=True)
    assert Path(origin.stdout.strip()).resolve() == (copy / "src/normbench/grid.py").resolve()


def test_dvc_plots_before_make_setup_writes_a_page_that_names_make_setup(tmp_path):
    """Without `make setup` (no offline page, no .dvc/config.local) `dvc plots show` still
    works, and its page says what to run: DVC itself would fail with "HTML template has to
    contain '{plot_divs}'" on a template file that is not there."""
    repo = tmp_path / "repo"
    repo.mkdir()
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    run = lambda *cmd: subprocess.run(cmd, cwd=repo, env=env, capture_output=True,  # noqa: E731
                                      text=True, timeout=120)
    assert run("git", "init", "-q").returncode == 0 and run("dvc", "init", "-q").returncode == 0
    (repo / ".dvc" / "config").write_bytes((ROOT / ".dvc" / "config").read_bytes())
    shutil.copytree(ROOT / ".dvc" / "plots", repo / ".dvc" / "plots",
                    ignore=shutil.ignore_patterns("offline.html"))
    (repo / "curve.csv").write_text("epoch,acc\n0,0.1\n1,0.5\n")
    (repo / "dvc.yaml").write_text("plots:\n  - curve.csv:\n      x: epoch\n      y: acc\n")
    proc = run("dvc", "plots", "show", "-o", "out")
    assert proc.returncode == 0, proc.stderr
    page = (repo / "out" / "index.html").read_text()
    assert "<code>make setup</code>" in page and "curve.csv" in page  # the plot is in it, hidden
    # `make setup`'s line in .dvc/config.local, which overrides .dvc/config's template
    assert run("dvc", "config", "--local", "plots.html_template", "plots/other.html").returncode == 0
    proc = run("dvc", "plots", "show", "-o", "out2")
    assert "HTML template has to contain" in proc.stderr  # plots/other.html does not exist


def test_a_rejected_set_value_says_params_yaml_holds_it_and_how_to_restore_it(tmp_path):
    from conftest import sh, tiny_project

    repo = tmp_path / "repo"
    repo.mkdir()
    tiny_project(repo)
    committed = (repo / "params.yaml").read_text()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["dvc", "exp", "run", "-S", "norm=minmaxx"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "minmaxx" in out and "minmax" in out.replace("minmaxx", "")  # the valid names
    assert "params.yaml now holds this value" in out and "`git checkout params.yaml`" in out
    assert "norm: minmaxx" in (repo / "params.yaml").read_text()  # what DVC left, as said
    sh(repo, "git", "checkout", "params.yaml")  # the fix it names works
    assert (repo / "params.yaml").read_text() == committed
