"""Session fixture that provides the local SLURM cluster of sweeps/slurm/.

Two compute nodes (each slurmd in its own network + UTS namespace) where this
machine allows it (root, ``unshare``/``nsenter``/``ip``), else one;
``SSLBENCH_SLURM_NODES`` picks the count.

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
    nodes: int = 1  # compute nodes (>= 2: one network + UTS namespace each)
    why_one_node: str = ""  # why a multi-node cluster was not started

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "log"


def _run(script: str, timeout: float, *args: str, nodes: int = 1
         ) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPTS / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "SSLBENCH_SLURM_NODES": str(nodes)},
    )


def namespaces_unavailable() -> str:
    """Why this machine cannot host the multi-node cluster ('' if it can)."""
    if os.geteuid() != 0:
        return "not root"
    for tool in ("ip", "unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is not on PATH"
    try:
        probe = subprocess.run(["unshare", "--net", "--uts", "--mount", "true"],
                               capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unshare failed: {e}"
    if probe.returncode != 0:
        return f"cannot create network/UTS namespaces: {probe.stderr.strip()[:200]}"
    return ""


def wanted_nodes() -> tuple[int, str]:
    """(nodes, why not more): SSLBENCH_SLURM_NODES if set, else 2 where namespaces work."""
    if os.environ.get("SSLBENCH_SLURM_NODES"):
        return int(os.environ["SSLBENCH_SLURM_NODES"]), "SSLBENCH_SLURM_NODES=1"
    why = namespaces_unavailable()
    return (1, why) if why else (2, "")


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

    nodes, why_one = wanted_nodes()
    # a cluster that is up already is reused, whatever its node count
    running = state_dir / "run" / "nodes"
    up_nodes = int(running.read_text().strip() or 1) if running.exists() else 1
    was_running = _run("start.sh", 30, "--status", nodes=up_nodes).returncode == 0
    if was_running:
        if up_nodes != nodes:
            why_one = f"the cluster already running in {state_dir} has {up_nodes} node(s)"
        nodes = up_nodes
    else:
        for script, timeout in (("install.sh", 900), ("start.sh", 180)):
            try:
                proc = _run(script, timeout, nodes=nodes)
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
        yield SlurmCluster(state_dir=state_dir, conf=conf, was_running=was_running,
                           nodes=nodes, why_one_node="" if nodes > 1 else why_one)
    finally:
        if old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old_conf
        if not was_running:
            _run("stop.sh", 120)
