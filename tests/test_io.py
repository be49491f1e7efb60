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


# A stage that cannot write an output for lack of room (simulated with the file size limit, as
# `ulimit -f` sets it, and with a full disk's errno): one line naming the path and the figures,
# the previous output unchanged, nothing half-written left.
WRITE = {
    "json": "from normbench.io import write_json\nwrite_json(OUT, {'x': '0' * 400_000})",
    "torch": "import torch\nfrom normbench.io import atomic_path\n"
             "with atomic_path(OUT) as tmp:\n    torch.save(torch.zeros(100_000), tmp)",
}
LIMIT = 64 * 1024  # bytes: each write above is ~400 kB


def limited(limit: int):
    import resource
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.parametrize("writer", sorted(WRITE))
def test_a_write_beyond_the_file_size_limit_fails_clearly_and_keeps_the_old_output(
        writer, tmp_path):
    (tmp_path / ".dvc" / "tmp").mkdir(parents=True)  # a DVC repository: temporaries go there
    out = tmp_path / "metrics" / "cell.json"
    out.parent.mkdir()
    out.write_bytes(b"previous")
    code = (f"from normbench.io import run_main\nOUT = {str(out)!r}\n"
            f"def main():\n" + "".join(f"    {line}\n" for line in WRITE[writer].splitlines())
            + "run_main(main)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
                          preexec_fn=limited(LIMIT))
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: cannot write {out}: a file reached the size limit of "
                                  f"{LIMIT / 2**20:.1f} MiB (`ulimit -f`); it needs more than "
                                  f"the {LIMIT / 2**20:.1f} MiB written"), proc.stderr
    assert out.read_bytes() == b"previous"
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [out]  # no partial file left


def test_a_full_disk_is_named_and_other_failures_are_not(tmp_path, monkeypatch):
    import errno

    from normbench import io

    def fail_with(error):
        with pytest.raises(Exception) as raised:
            with io.atomic_path(tmp_path / "out.bin") as tmp:
                tmp.write_bytes(b"x" * 3 * 2**20)
                raise error
        return raised.value

    full = fail_with(OSError(errno.ENOSPC, "No space left on device"))
    assert isinstance(full, StageFailed)
    assert str(full).startswith(f"cannot write {tmp_path / 'out.bin'}: the disk is full; it needs "
                                f"more than the 3.0 MiB written before the write failed")
    assert not (tmp_path / "out.bin").exists()
    assert isinstance(fail_with(ValueError("a bug")), ValueError)  # not taken for a full disk
    # torch's writer says only RuntimeError: a disk with (almost) nothing free tells, for its
    # errors alone (a CUDA out-of-memory error is not a full disk, whatever the disk).
    torch_error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 640")
    assert fail_with(torch_error) is torch_error
    monkeypatch.setattr(io.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    assert "the disk is full" in str(fail_with(torch_error))
    oom = RuntimeError("CUDA out of memory")
    assert fail_with(oom) is oom
    # A file system's own size limit, with no `ulimit -f` set.
    big = fail_with(OSError(errno.EFBIG, "File too large"))
    assert "a file reached the size limit of its file system" in str(big)
