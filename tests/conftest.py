import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# Under pytest-xdist each worker trains at the same time as the others, in-process and in the
# processes it starts (stage scripts, DVC's queue, Slurm jobs: they inherit this environment).
# torch's default of one thread per core in every one of them oversubscribes the CPU, and the
# surplus OpenMP threads spin: measured on 2 cores, a tiny train stage took ~50 % more CPU time
# with 2 threads than with 1. So each worker gets its share of the cores (set before any test
# module imports torch); an OMP_NUM_THREADS of the caller's own is kept.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(
        1, len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

# DVC starts a detached analytics process after each command run where its config does not turn
# analytics off (`dvc init`, the first commands in a new test repository): 68 processes and ~25
# CPU-s a suite, measured, and each would try the network the tests do not have.
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

# A cell that compiles saves its graphs in the compile cache (normbench.compile_cache): the tests'
# go to a folder of this run, not the checkout's .compile-cache/. A caller's own folder is kept
# (bench/gpu_session.py shares its cache with `pytest -m gpu`).
os.environ.setdefault("NORMBENCH_COMPILE_CACHE", tempfile.mkdtemp(prefix="normbench-compile-"))


LOOPBACK = ("127.0.0.1", "localhost", "::1")
# The seed of every fault a test injects at a chosen moment (tests/test_faults.py, the Slurm ones
# in tests/test_cluster.py): a failure repeats with NORMBENCH_FAULT_SEED set to the seed it names.
FAULT_SEED = int(os.environ.get("NORMBENCH_FAULT_SEED", "20261201"))


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


# The model of the machinery tests (DVC, its queue, Slurm, faults, studies, pages): the project's
# own small network, whose one-epoch cell of 48 images trains in about a second on one thread
# (resnet18's: ~20 CPU-s). The tests of the user flows end to end keep a torchvision model.
TINY_MODEL = "smallcnn"
TINY_CELL = f"{TINY_MODEL}-shapes-223"


def tiny_project(repo: Path, model: str = TINY_MODEL) -> None:
    """A committed git + DVC copy of the project, tiny grid: ``model`` on 48 shapes, 1 epoch."""
    ignore = shutil.ignore_patterns("__pycache__")
    for name in ("stages", "src"):
        shutil.copytree(ROOT / name, repo / name, ignore=ignore)
    for name in ("dvc.yaml", ".gitignore", "timings/.keep.json"):
        (repo / name).parent.mkdir(exist_ok=True)
        shutil.copy(ROOT / name, repo / name)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update(models=[model], datasets=["shapes"], seeds=[223], device="cpu")
    params["train"].update(epochs=1, batch_size=16, val_fraction=0.2)  # 8 of 38 train images held out
    params["data"]["shapes"]["images_per_class"] = 8
    if model == TINY_MODEL:  # 4 steps an epoch, not 1 of its batch 64: two settings then differ
        params["per_model"][model]["batch_size"] = 8
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(repo, "git", "init", "-q")
    git_user(repo)
    sh(repo, "dvc", "init", "-q")
    for config in ("config", "config.local"):  # config.local: `make setup`'s plots page
        if (ROOT / ".dvc" / config).is_file():
            shutil.copy(ROOT / ".dvc" / config, repo / ".dvc" / config)
    shutil.copytree(ROOT / ".dvc" / "plots", repo / ".dvc" / "plots")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "project")  # dvclive cannot start in a repo with no commit


@pytest.fixture(scope="session")
def reproduced_tiny_project(tmp_path_factory) -> Path:
    """``tiny_project`` after ``dvc repro``, committed: built once per test session, under
    pytest-xdist by the first worker that asks (the others wait for it), and shared read-only.

    A module that only needs this state copies it with ``copy_project`` instead of training the
    same cell again; a test whose point is that DVC trains something must not start from it.
    """
    root = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        root = root.parent  # the session's folder, shared by its workers
    base, done = root / "tiny-reproduced", root / "tiny-reproduced.done"
    with open(root / "tiny-reproduced.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.is_file():
            shutil.rmtree(base, ignore_errors=True)  # what a worker that failed half-way left
            base.mkdir()
            tiny_project(base)
            sh(base, "dvc", "repro")
            sh(base, "git", "add", "-A")
            sh(base, "git", "commit", "-qm", "baseline")
            done.touch()
    return base


def copy_project(source: Path, repo: Path) -> None:
    """A copy of a git + DVC project (its DVC cache is inside, in .dvc/cache) at ``repo``."""
    shutil.copytree(source, repo, symlinks=True, dirs_exist_ok=True)


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


# The longest modules, longest first (as measured on a 2-core machine): `make test` hands whole
# modules to its pytest-xdist workers in collection order (--dist loadfile --no-loadscope-reorder),
# so these start first and the last ones to start are short: the workers finish together. The
# other modules follow as collected.
LONGEST_FIRST = ("test_long_use.py", "test_study_e2e.py", "test_pipeline.py", "test_faults.py",
                 "test_pretrain.py", "test_bench.py", "test_queue_records.py", "test_cluster.py",
                 "test_shared_remote.py", "test_stages.py", "test_plots.py", "test_train.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: modules stay whole
