"""`python -m normbench <command>` behaves as `python -m normbench.<module>` does."""

import os
import subprocess
import sys

from conftest import ROOT


def normbench(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"),
           "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([sys.executable, "-m", "normbench", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_known_failure_is_one_line_naming_it_not_a_traceback(tmp_path):
    # Not a DVC repository: compare's own error, as `python -m normbench.compare` prints it.
    proc = normbench("compare", "--repo", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_unknown_command_names_the_valid_ones(tmp_path):
    proc = normbench("comapre", cwd=tmp_path)
    assert proc.returncode == 2
    assert "valid: compare, study, reproduction, weights, plots-page" in proc.stderr
