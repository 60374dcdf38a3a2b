"""Session fixture that provides the local one-node SLURM cluster of sweeps/slurm/.

Use it from a test module with::

    from tests.slurm_fixtures import slurm_cluster  # noqa: F401

The cluster is brought up (``install.sh`` then ``start.sh``) when ``SSLBENCH_SLURM=1``
is set or ``sbatch`` is already on PATH; otherwise the tests are skipped. A cluster
that was already running before the session is reused and left running; one that the
fixture started is stopped (``stop.sh``) at the end of the session. While the fixture
is active, ``SLURM_CONF`` points at the cluster's config so that sbatch/squeue/sacct
and submitit (and the jobs, through sbatch's ``--export=ALL``) talk to it.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = REPO_ROOT / "sweeps" / "slurm"


@dataclasses.dataclass(frozen=True)
class SlurmCluster:
    state_dir: Path
    conf: Path  # value of SLURM_CONF
    was_running: bool  # True: reused a cluster that was up before the session

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "log"


def _run(script: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPTS / script)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def slurm_cluster():
    requested = os.environ.get("SSLBENCH_SLURM") == "1"
    if not requested and shutil.which("sbatch") is None:
        pytest.skip(
            "SLURM tests need a local cluster: set SSLBENCH_SLURM=1 (as root; installs the "
            "Debian packages and starts sweeps/slurm/start.sh) or put sbatch on PATH"
        )
    # how the cluster could not be brought up: an error if asked for explicitly,
    # a skip if only auto-detected through sbatch on PATH
    give_up = pytest.fail if requested else pytest.skip

    state_dir = Path(os.environ.get("SSLBENCH_SLURM_DIR", "/tmp/sslbench-slurm"))
    conf = state_dir / "etc" / "slurm.conf"

    status = subprocess.run(
        ["bash", str(SCRIPTS / "start.sh"), "--status"], capture_output=True, timeout=30
    )
    was_running = status.returncode == 0
    if not was_running:
        for script, timeout in (("install.sh", 900), ("start.sh", 180)):
            try:
                proc = _run(script, timeout)
            except subprocess.TimeoutExpired:
                give_up(f"sweeps/slurm/{script} timed out after {timeout}s")
            if proc.returncode != 0:
                give_up(
                    f"sweeps/slurm/{script} failed (rc={proc.returncode}):\n"
                    f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
                )

    old_conf = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    try:
        yield SlurmCluster(state_dir=state_dir, conf=conf, was_running=was_running)
    finally:
        if old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old_conf
        if not was_running:
            _run("stop.sh", 120)
