"""`make study EXECUTOR=slurm` against a real one-node Slurm (slurmctld, slurmd, munge).

The fixture writes a minimal slurm.conf for localhost, starts the daemons and stops them again;
if they cannot be installed or started the test fails with the reason, it never skips.
"""

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import FAULT_SEED, ROOT, TINY_MODEL, require_program, tiny_project

from normbench.runs import parse_exp_show, with_cell_records

# The one-node Slurm (its daemons, munged, /run/munge) exists once per machine: its tests never
# run at the same time as each other under pytest-xdist (one module, one worker).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group(name="slurm")]
STUDY = ["--executor", "slurm", "--norms", "dataset", "minmax", "--seeds", "1", "2",
         "--set", "train.epochs=1", "--slurm", "cpus_per_task=1", "timeout_min=20"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A one-node Slurm cluster on this machine; yields the environment that reaches it."""
    for program in ("munged", "slurmctld", "slurmd", "sbatch"):
        require_program(program)
    root = tmp_path_factory.mktemp("slurm")
    for d in ("state", "spool", "log"):
        (root / d).mkdir()
    mem_mib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2
    conf = root / "slurm.conf"
    conf.write_text(f"""ClusterName=normbench-test
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
NodeName=localhost CPUs={os.cpu_count()} RealMemory={mem_mib} State=UNKNOWN
PartitionName=test Nodes=localhost Default=YES MaxTime=INFINITE State=UP
""")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode != 0:
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        subprocess.run(["chown", "munge:munge", "/run/munge"])
        started = subprocess.run(["su", "-s", "/bin/sh", "munge", "-c", "munged"],
                                 capture_output=True, text=True)
        if started.returncode != 0:
            pytest.fail(f"munged did not start: {started.stderr}", pytrace=False)
    for daemon in ("slurmctld", "slurmd"):
        started = subprocess.run([daemon, "-f", str(conf)], env=env, capture_output=True,
                                 text=True)
        if started.returncode != 0:
            pytest.fail(f"{daemon} did not start: {started.stderr}", pytrace=False)
    deadline = time.monotonic() + 60
    while "idle" not in subprocess.run(["sinfo", "-h", "-o", "%T"], env=env,
                                       capture_output=True, text=True).stdout:
        if time.monotonic() > deadline:
            logs = "\n".join(p.read_text()[-2000:] for p in (root / "log").glob("*.log"))
            pytest.fail(f"the Slurm node never became idle; logs:\n{logs}", pytrace=False)
        time.sleep(1)
    yield env
    for pid_file in (root / "slurmd.pid", root / "slurmctld.pid"):
        if pid_file.is_file():
            os.kill(int(pid_file.read_text()), signal.SIGTERM)


def study(repo: Path, env: dict, args: list[str] = STUDY) -> subprocess.Popen:
    env = {**env, "PYTHONPATH": str(ROOT / "src"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"}
    return subprocess.Popen([sys.executable, "-u", "-m", "normbench.study", *args], cwd=repo,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_study_on_slurm_cancel_resubmit_and_nothing_twice(slurm, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    tiny_project(repo)

    # 1. Two jobs; one is killed with `scancel --signal=KILL` (its processes get SIGKILL, no
    # cleanup runs) at a seeded moment after it starts: it is reported with its log, the other
    # finishes.
    delay = random.Random(f"{FAULT_SEED}-scancel").uniform(0.0, 3.0)
    proc, seen, cancelled = study(repo, slurm), [], None
    for line in proc.stdout:
        seen.append(line)
        running = re.match(r"\s+(minmax-\S+) \(job (\d+)\): running", line)
        if running and cancelled is None:
            cancelled = running.group(1)
            time.sleep(delay)
            subprocess.run(["scancel", "--signal=KILL", running.group(2)], env=slurm,
                           check=True)
    out = "".join(seen)
    assert proc.wait(timeout=600) == 1, out
    assert "0 already done, 2 to run (slurm)" in out
    assert re.search(r"dataset-scratch-\S+ \(job \d+\): done", out), out
    assert f"study: experiment {cancelled} failed: " in out and "_log.out" in out
    assert "1 of 2 experiments failed" in out
    assert not (repo / "plots").exists() or not list((repo / "plots").glob(".*"))

    # 2. The same command submits the cancelled experiment alone; 3. then nothing.
    proc = study(repo, slurm)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out
    assert "1 already done, 1 to run (slurm)" in out and f"{cancelled} (job" in out
    assert "compare/index.html" in out
    proc = study(repo, slurm)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0 and "2 already done, 0 to run" in out and "(job" not in out, out

    # Every cell came back to the study repository once, and no cell was trained twice: a cell
    # the cancelled try finished was restored from the shared run-cache by the second try.
    show = subprocess.run([Path(sys.executable).parent / "dvc", "exp", "show", "--json"],
                          cwd=repo, capture_output=True, text=True, check=True).stdout
    runs = parse_exp_show(with_cell_records(repo, json.loads(show)))
    cells = sorted((r.setting, seed) for r in runs for (_, _, seed) in r.cells)
    assert cells == [("norm=dataset weights=scratch", 1), ("norm=dataset weights=scratch", 2),
                     ("norm=minmax weights=scratch", 1), ("norm=minmax weights=scratch", 2)]
    trained = []
    for log in (repo / ".dvc" / "tmp" / "slurm" / "logs").rglob("*_log.out"):
        text = log.read_text()
        exp = re.search(r"Reproducing experiment '([^']+)'", text)
        if exp:
            trained += [(exp.group(1), c) for c in re.findall(rf"({TINY_MODEL}-shapes-\d): final_acc", text)]
    assert len(trained) == len(set(trained)) == 4, trained


def exp_cells(repo: Path) -> list[tuple[str, int]]:
    show = subprocess.run([Path(sys.executable).parent / "dvc", "exp", "show", "--json"],
                          cwd=repo, capture_output=True, text=True, check=True).stdout
    return sorted((r.setting, seed) for r in parse_exp_show(with_cell_records(repo, json.loads(show)))
                  for (_, _, seed) in r.cells)


def test_a_study_killed_while_its_jobs_wait_and_run_follows_them_again(slurm, tmp_path):
    """SIGKILL of the study process (no handler runs: its jobs stay in Slurm) at a seeded moment;
    the same command again follows the jobs still queued or running under their ids."""
    from normbench.runstate import STATE_DIR

    repo = tmp_path / "repo"
    repo.mkdir()
    tiny_project(repo)
    # Each job asks for every CPU of the node: one runs, the other waits in the queue.
    args = [*STUDY[:STUDY.index("--slurm")], "--slurm", f"cpus_per_task={os.cpu_count()}",
            "timeout_min=20"]
    rng = random.Random(f"{FAULT_SEED}-slurm-study")
    moment, delay = rng.choice(("queued", "running")), rng.uniform(0.0, 2.0)
    what = f"study SIGKILLed {delay:.2f} s after its first job was {moment} (seed {FAULT_SEED})"
    proc, seen = study(repo, slurm, args), []
    for line in proc.stdout:
        seen.append(line)
        if re.match(rf"\s+\S+ \(job \d+\): {moment}$", line):
            time.sleep(delay)
            proc.kill()
            break
    assert proc.wait(timeout=60) == -signal.SIGKILL, what + "".join(seen)
    submitted = json.loads((repo / STATE_DIR / "submitted.json").read_text())
    jobs = {name: record["job_id"] for name, record in submitted.items()}
    alive = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(jobs.values())],
                           env=slurm, capture_output=True, text=True).stdout.split()
    assert alive, what  # the point: jobs outlive the study that submitted them

    proc = study(repo, slurm, args)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, what + out
    for name, job_id in jobs.items():
        if job_id in alive:
            assert f"{name} (job {job_id}): followed again, not resubmitted" in out, what + out
    # A job that ended meanwhile finished its experiment: nothing is submitted a second time.
    assert f"{len(jobs) - len(alive)} already done, {len(alive)} to run (slurm)" in out, what + out
    assert set(re.findall(r"\(job (\d+)\)", out)) == set(alive), what + out
    assert exp_cells(repo) == [("norm=dataset weights=scratch", 1),
                               ("norm=dataset weights=scratch", 2),
                               ("norm=minmax weights=scratch", 1),
                               ("norm=minmax weights=scratch", 2)], what + out
    left = subprocess.run(["squeue", "-h", "-o", "%i"], env=slurm, capture_output=True,
                          text=True).stdout.split()
    assert not set(left) & set(jobs.values()), what  # nothing of the study still in Slurm


def test_a_pretrained_study_on_slurm_trains_the_start_its_experiments_share_once(slurm,
                                                                                  tmp_path):
    from normbench.runstate import STATE_DIR
    from normbench.study import plan

    repo = tmp_path / "repo"
    repo.mkdir()
    tiny_project(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["start"]["pretrained"]["data"] = {"images_per_class": 6, "test_fraction": 0.25,
                                             "seed": 0}
    params["start"]["pretrained"]["train"].update(epochs=1, batch_size=16, val_fraction=0.25)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "commit", "-qam", "a small pretraining"], cwd=repo, check=True)
    # Two experiments of one pretrained start, on a node with room for both at once.
    args = ["--executor", "slurm", "--weights", "pretrained", "--norms", "dataset", "minmax",
            "--seeds", "1", "--set", "train.epochs=1", "--slurm", "cpus_per_task=1",
            "timeout_min=20"]
    proc = study(repo, slurm, args)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out
    first, second = plan(["dataset", "minmax"], ["pretrained"], [1], ["train.epochs=1"])
    jobs = {name: record["job_id"] for name, record in
            json.loads((repo / STATE_DIR / "submitted.json").read_text()).items()}
    assert set(jobs) == {f"start-{first.name}", first.name, second.name}, out
    logs = {name: next((repo / ".dvc" / "tmp" / "slurm" / "logs" / job).glob("*_log.out"))
            .read_text() for name, job in jobs.items()}
    ran = f"Running stage 'start@{TINY_MODEL}'"
    assert ran in logs[f"start-{first.name}"], logs
    for name in (first.name, second.name):  # restored from the start job's run-cache record
        assert f"Stage 'start@{TINY_MODEL}' is cached" in logs[name] and ran not in logs[name]
    assert exp_cells(repo) == [("norm=dataset weights=pretrained pretrain=dataset", 1),
                               ("norm=minmax weights=pretrained pretrain=dataset", 1)], out
