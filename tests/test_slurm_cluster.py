"""End-to-end checks of the local one-node SLURM cluster (sweeps/slurm/).

Run with:  SSLBENCH_SLURM=1 .venv/bin/pytest -q tests/test_slurm_cluster.py
(skipped unless SSLBENCH_SLURM=1 or sbatch is on PATH; see tests/slurm_fixtures.py).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slurm

FINAL_STATES = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
    "BOOT_FAIL", "DEADLINE", "PREEMPTED",
}


def sacct_state(job_id: str) -> str:
    out = subprocess.run(
        ["sacct", "-j", str(job_id), "-n", "-X", "-o", "State"],
        capture_output=True, text=True, timeout=10,
    ).stdout.split()
    # "CANCELLED by 0" -> "CANCELLED"
    return out[0] if out else ""


def wait_final_state(job_id: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = sacct_state(job_id)
        if state in FINAL_STATES:
            return state
        time.sleep(0.5)
    pytest.fail(f"job {job_id} not finished after {timeout}s (last sacct state: {state!r})")


def wait_done(job, timeout: float) -> None:
    """job.result() has no timeout and would hang the suite on a lost job."""
    deadline = time.monotonic() + timeout
    while not job.done():
        if time.monotonic() > deadline:
            job.cancel(check=False)
            pytest.fail(f"submitit job {job.job_id} not done after {timeout}s: {job.state}")
        time.sleep(0.5)


def test_sbatch_wrap_hostname(slurm_cluster, tmp_path):
    proc = subprocess.run(
        ["sbatch", "--parsable", "-p", "debug", "--chdir", str(tmp_path),
         "-o", str(tmp_path / "%j.out"), "--wrap", "hostname"],
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().split(";")[0]
    assert wait_final_state(job_id, timeout=30) == "COMPLETED"
    out = (tmp_path / f"{job_id}.out").read_text().strip()
    # one node: this host; several (SSLBENCH_SLURM_NODES): one of the namespaces' hostnames
    nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True,
                           text=True, timeout=10).stdout.split()
    assert out in (os.uname().nodename.split(".")[0], os.uname().nodename, *nodes)
    if len(nodes) > 1:
        assert out in nodes


def test_submitit_result(slurm_cluster, tmp_path):
    import submitit

    executor = submitit.AutoExecutor(folder=tmp_path / "submitit")
    assert executor.cluster == "slurm"
    executor.update_parameters(timeout_min=2, slurm_partition="debug")

    def answer():  # local function: cloudpickle ships it by value
        return 6 * 7

    job = executor.submit(answer)
    wait_done(job, timeout=45)
    assert job.result() == 42
    # the job ran with this interpreter (the repo's venv), not the system python
    assert sys.executable in job.paths.submission_file.read_text()
    assert wait_final_state(job.job_id, timeout=20) == "COMPLETED"


def test_scontrol_requeue_runs_again(slurm_cluster, tmp_path):
    import submitit

    starts = tmp_path / "starts.txt"

    def record_start(path):
        import os
        import time

        with open(path, "a") as f:
            f.write(os.environ.get("SLURM_RESTART_COUNT", "0") + "\n")
        with open(path) as f:
            n_starts = len(f.read().splitlines())
        if n_starts == 1:
            time.sleep(60)  # first run: stay alive until the test requeues it
        return n_starts

    executor = submitit.AutoExecutor(folder=tmp_path / "submitit")
    executor.update_parameters(timeout_min=2, slurm_partition="debug")
    job = executor.submit(record_start, str(starts))

    deadline = time.monotonic() + 30
    while not (starts.exists() and starts.read_text().strip()):
        if time.monotonic() > deadline:
            job.cancel(check=False)
            pytest.fail(f"job {job.job_id} did not start within 30s: {job.state}")
        time.sleep(0.2)

    proc = subprocess.run(["scontrol", "requeue", job.job_id],
                          capture_output=True, text=True, timeout=10)
    assert proc.returncode == 0, proc.stderr

    # killed after KillWait (5 s), eligible again after cred_expire+1 (11 s)
    wait_done(job, timeout=60)
    assert job.result() == 2
    assert starts.read_text().splitlines() == ["0", "1"]  # SLURM_RESTART_COUNT per run
    assert wait_final_state(job.job_id, timeout=20) == "COMPLETED"
