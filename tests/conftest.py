import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def params() -> dict:
    """The project's params.yaml, to be edited by a test."""
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def run_stage(cwd: Path, stage: str, *args: str) -> subprocess.CompletedProcess:
    """Run stages/<stage>.py of this checkout with ``cwd`` as the project root."""
    return subprocess.run([sys.executable, str(ROOT / "stages" / f"{stage}.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)
