import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


LOOPBACK = ("127.0.0.1", "localhost", "::1")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Tests reach 127.0.0.1 only: a lookup of any other host fails loudly."""
    import socket

    real = socket.getaddrinfo

    def loopback_only(host, *args, **kwargs):
        if host not in LOOPBACK:
            raise OSError(f"tests stay offline, refused to look up {host!r}")
        return real(host, *args, **kwargs)
    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)


@pytest.fixture
def params() -> dict:
    """The project's params.yaml, to be edited by a test."""
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def run_stage(cwd: Path, stage: str, *args: str) -> subprocess.CompletedProcess:
    """Run stages/<stage>.py of this checkout with ``cwd`` as the project root."""
    return subprocess.run([sys.executable, str(ROOT / "stages" / f"{stage}.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def http_server(tmp_path):
    """A static file server on 127.0.0.1 for files a test writes: yields (base URL, folder)."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    folder = tmp_path / "served"
    folder.mkdir()
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output readable
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", folder
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def closed_port_url():
    """A 127.0.0.1 URL where nothing listens: what an unreachable network looks like, locally."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def sh(repo: Path, *cmd: str) -> str:
    """Run a command in ``repo`` with this environment's python and dvc first on PATH."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def tiny_project(repo: Path) -> None:
    """A committed git + DVC copy of the project, tiny grid: resnet18 on 48 shapes, 1 epoch."""
    ignore = shutil.ignore_patterns("__pycache__")
    for name in ("stages", "src"):
        shutil.copytree(ROOT / name, repo / name, ignore=ignore)
    shutil.copy(ROOT / "dvc.yaml", repo)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update(models=["resnet18"], datasets=["shapes"], seeds=[223], device="cpu")
    params["train"].update(epochs=1, batch_size=16)
    params["data"]["shapes"]["images_per_class"] = 8
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(repo, "git", "init", "-q")
    git_user(repo)
    sh(repo, "dvc", "init", "-q")
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    shutil.copytree(ROOT / ".dvc" / "plots", repo / ".dvc" / "plots")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "project")  # dvclive cannot start in a repo with no commit


def section(markdown: str, heading: str) -> str:
    """The one section of a markdown page whose heading starts with ``heading``."""
    found = [part for part in markdown.split("\n## ") if part.startswith(heading)]
    assert len(found) == 1, f"{len(found)} sections named {heading!r}"
    return found[0]


def table_rows(text: str) -> list[dict[str, str]]:
    """The rows of the first markdown table in ``text``, as {column: cell text}."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    split = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    assert split and set(lines[1]) <= set("|:- "), text  # a header and its rule
    return [dict(zip(split[0], row, strict=True)) for row in split[2:]]


def git_user(repo: Path) -> None:
    sh(repo, "git", "config", "user.email", "test@example.com")
    sh(repo, "git", "config", "user.name", "test")


def require_program(name: str) -> str:
    """The path of a system program a test drives for real; a clear failure if it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; run `make system-packages` (as root) or "
                    "`sudo apt-get install chromium slurmd slurmctld munge`", pytrace=False)
    return path


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the marks (--dist loadgroup)
def pytest_collection_modifyitems(items):
    """Under pytest-xdist, a module whose tests share a module-scoped fixture (a reproduced DVC
    repository, a trained model) runs on one worker, so that fixture is built once, not once per
    worker: each module gets an xdist_group of its own. Tests with an xdist_group mark of their
    own (a shared resource, e.g. Slurm or Chromium) keep it. Without xdist the mark does nothing.
    """
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        fixtures = getattr(item, "_fixtureinfo", None)
        defs = fixtures.name2fixturedefs.values() if fixtures else []
        if any(d.scope == "module" for chain in defs for d in chain):
            item.add_marker(pytest.mark.xdist_group(name=item.module.__name__))
