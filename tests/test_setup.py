"""`make setup` refuses a Python older than pyproject.toml's requires-python, before installing."""

import os
import re
import subprocess
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
