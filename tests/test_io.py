"""io.py, which every stage imports, stands apart from the training loop: no import circle."""

import os
import signal
import subprocess
import sys

import pytest
from conftest import ROOT

from normbench.io import StageFailed, run_main
from normbench.train import CompileFailed, TrainingDiverged


def test_importing_io_does_not_import_train():
    # A fresh interpreter: this one has imported normbench.train already.
    code = "import sys, normbench.io; print('normbench.train' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("error", [TrainingDiverged, CompileFailed])
def test_run_main_reports_training_failures_in_one_line(error, capsys):
    assert issubclass(error, StageFailed) and issubclass(error, RuntimeError)

    def main() -> None:
        raise error("what went wrong; the fix")

    previous = signal.getsignal(signal.SIGTERM)  # run_main installs its own: put it back
    try:
        with pytest.raises(SystemExit) as exit_:
            run_main(main)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert exit_.value.code == 1
    assert capsys.readouterr().err == "error: what went wrong; the fix\n"
