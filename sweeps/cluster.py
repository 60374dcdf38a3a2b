"""Where runs execute: typed SLURM/eval options, submitit executors and job states.

Compute code (``trainer``, ``eval``) never sees any of this: a run is a config, and
this module decides whether it goes out through ``sbatch`` (a SLURM job array) or
as local processes through submitit's ``LocalExecutor``.
"""

from __future__ import annotations

import contextlib
import getpass
import io
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sweeps.spec import SpecError, parse_cli
from trainer.config import ConfigError, from_dict
from trainer.schema import at_least, registry_names

REPO_ROOT = Path(__file__).resolve().parents[1]
CLUSTERS = ("auto", "slurm", "local")
# Job states (sacct/squeue) in which a job still holds or waits for resources.
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED",
                 "CONFIGURING", "COMPLETING", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED",
                 "PREEMPTED"}


def _suites() -> list[str]:
    from eval.suites import SUITES

    return ["", *SUITES]


class ClusterError(RuntimeError):
    """SLURM cannot be used (not installed, controller unreachable, sbatch refused)."""


@dataclass(frozen=True)
class SlurmConfig:
    """Resources of one run's job. CLI: ``slurm.<field>=value``; spec: ``slurm:``.

    Multi-GPU and multi-node runs start one task per GPU: ``tasks_per_node`` defaults
    to ``gpus_per_node``, and the job's DDP world is ``nodes × tasks_per_node``.
    """

    partition: str = ""  # "" = the cluster's default partition
    account: str = ""
    qos: str = ""
    constraint: str = ""
    exclude: str = ""  # nodes to avoid
    # wall-clock limit of one job attempt
    timeout_min: int = field(default=24 * 60, metadata=at_least(1))
    mem_gb: float = field(default=0.0, metadata=at_least(0))  # per node; 0 = cluster default
    nodes: int = field(default=1, metadata=at_least(1))
    gpus_per_node: int = field(default=0, metadata=at_least(0))
    # 0 = gpus_per_node, or 1 without GPUs
    tasks_per_node: int = field(default=0, metadata=at_least(0))
    # also torch's thread count; 0 = 1 on SLURM, and on this machine (CLUSTER=local) its cores
    # shared by the runs at once and their tasks
    cpus_per_task: int = field(default=0, metadata=at_least(0))
    # runs at once: 0 = unlimited on SLURM, 1 for local processes (across launches)
    array_parallelism: int = field(default=0, metadata=at_least(0))
    # USR2 this long before the time limit -> checkpoint + requeue
    signal_delay_s: int = field(default=120, metadata=at_least(0))
    # requeues after a time limit / pre-emption before giving up
    max_num_timeout: int = field(default=30, metadata=at_least(0))
    job_name: str = "sslbench"
    setup: tuple[str, ...] = ()  # shell lines run before the job, e.g. "module load cuda"
    # extra sbatch flags, e.g. {mail-type: END, exclusive: true}; CLI slurm.additional.mail-type=END
    additional: dict[str, Any] = field(default_factory=dict)

    @property
    def num_tasks_per_node(self) -> int:
        """Tasks (DDP processes) per node."""
        return self.tasks_per_node or max(self.gpus_per_node, 1)


@dataclass(frozen=True)
class EvalConfig:
    """Optional eval chaining: per run, ``<script> <run>/backbone.pth --suite <suite>``.

    The script runs from the repository root; on success ``<run>/eval-<suite>.done`` is
    written, so a relaunch submits only the evals that are missing.

    CLI: ``eval.suite=mini``; spec: ``eval: {suite: mini}`` or ``eval: mini``.
    """

    # "" = no eval jobs; paper | fast | mini
    suite: str = field(default="", metadata=registry_names(_suites))
    script: str = "eval/run_all.py"  # relative to the repository root
    # records folder (--out); "" = eval/run_all.py's default, results/records, which
    # results/ reads; "{run_dir}" is replaced by the run's folder
    out: str = ""
    timeout_min: int = field(default=12 * 60, metadata=at_least(1))
    gpus_per_node: int = field(default=0, metadata=at_least(0))
    cpus_per_task: int = field(default=0, metadata=at_least(0))  # 0 = slurm.cpus_per_task
    extra_args: tuple[str, ...] = ()


def build_options(spec_section: dict[str, Any], cli_items: list[str], cls: type,
                  where: str) -> Any:
    """``cls`` from a spec section (``where`` = "<file>: <section>") with CLI items on top."""
    try:
        from_dict(cls, spec_section)
    except ConfigError as e:
        raise SpecError(f"{where}: {e}") from None
    data = dict(spec_section)
    try:
        for diff in parse_cli(cli_items, strings_ok=True):
            ((_, body),) = diff.items()
            data = _merge(data, body if isinstance(body, dict) else {})
        return from_dict(cls, data)
    except ConfigError as e:
        section = where.rsplit(":", 1)[-1].strip()
        raise SpecError(f"command line {section}.*: {e}") from None


def check_eval(e: EvalConfig, where: str) -> None:
    """Check the chained eval's settings as ``eval/run_all.py`` will (a custom script is
    left to check its own); raises a SpecError naming the setting."""
    script = Path(e.script) if Path(e.script).is_absolute() else REPO_ROOT / e.script
    if not e.suite or script.resolve() != (REPO_ROOT / "eval" / "run_all.py").resolve():
        return
    from eval import run_all

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = run_all.parse_args(["backbone.pth", "--suite", e.suite, *e.extra_args])
        run_all.resolve_suite(args.suite, args.overrides, args.only)
    except SystemExit:
        detail = err.getvalue().strip().splitlines()[-1:] or ["bad arguments"]
        raise SpecError(f"{where}: extra_args {list(e.extra_args)}: {detail[0]}") from None
    except (KeyError, ValueError) as x:
        raise SpecError(f"{where}: {x.args[0] if isinstance(x, KeyError) else x}") from None


def _merge(base: dict[str, Any], diff: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in diff.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ----------------------------------------------------------------------------- SLURM access


def _local_cluster_conf() -> Path | None:
    """slurm.conf of the repo's one-node cluster (sweeps/slurm/start.sh), if it exists."""
    state = Path(os.environ.get("SSLBENCH_SLURM_DIR", "/tmp/sslbench-slurm"))
    conf = state / "etc" / "slurm.conf"
    return conf if conf.exists() else None


def detect_cluster(requested: str) -> str:
    """``auto`` → ``slurm`` when ``sbatch`` (and ``srun``) are on PATH, else ``local``."""
    if requested not in CLUSTERS:
        raise SpecError(f"CLUSTER={requested!r}: expected one of {', '.join(CLUSTERS)}")
    if requested != "auto":
        return requested
    return "slurm" if shutil.which("sbatch") and shutil.which("srun") else "local"


def configure_client() -> None:
    """Let SLURM clients find the cluster; raise if ``SLURM_CONF`` names a missing file.

    When neither ``SLURM_CONF`` nor ``/etc/slurm/slurm.conf`` exists, the repo's local
    cluster config (``sweeps/slurm/start.sh``, ``/tmp/sslbench-slurm``) is used if present;
    otherwise the clients try their own discovery (configless DNS records).
    """
    if "SLURM_CONF" not in os.environ and not Path("/etc/slurm/slurm.conf").exists():
        conf = _local_cluster_conf()
        if conf is not None:
            os.environ["SLURM_CONF"] = str(conf)
    conf_env = os.environ.get("SLURM_CONF", "")
    if conf_env and not Path(conf_env).exists():  # clients would retry for 60 s
        raise ClusterError(f"SLURM_CONF={conf_env} does not exist; point it at the cluster's "
                           "slurm.conf, or run the sweep on this machine with CLUSTER=local")


def ensure_slurm() -> None:
    """Check that the SLURM controller answers; raise a ClusterError naming the fix."""
    if not (shutil.which("sbatch") and shutil.which("srun")):
        raise ClusterError("CLUSTER=slurm but sbatch/srun are not on PATH; "
                           "use CLUSTER=local to run the sweep as local processes")
    configure_client()
    try:
        proc = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
        ok = proc.returncode == 0 and "UP" in proc.stdout
        detail = next(iter((proc.stdout + proc.stderr).strip().splitlines()), "")
    except (OSError, subprocess.TimeoutExpired) as e:
        ok, detail = False, str(e)
    if not ok:
        raise ClusterError(
            f"the SLURM controller is unreachable (scontrol ping: {detail or 'no answer'}). "
            "Start it (sudo sweeps/slurm/start.sh; export SLURM_CONF=...) or run the sweep "
            "on this machine with CLUSTER=local")


def local_resources(slurm: SlurmConfig) -> SlurmConfig:
    """What a SLURM request becomes on this machine: one node, at most its GPUs.

    A CPU request keeps its task count (CPU DDP); a GPU request gets one task per
    visible GPU (one task on a machine without any). The global batch, and so the
    results up to the reduction order, do not depend on the number of tasks.
    ``cpus_per_task`` is capped at the machine's cores; 0 (unset) shares the cores
    between the runs at once (``array_parallelism``) and their tasks.
    """
    if slurm.gpus_per_node == 0:
        gpus, tasks = 0, slurm.nodes * slurm.num_tasks_per_node
    else:
        import torch

        gpus = min(slurm.nodes * slurm.gpus_per_node, torch.cuda.device_count())
        tasks = max(gpus, 1)
    cores = os.cpu_count() or 1
    share = max(1, cores // ((slurm.array_parallelism or 1) * tasks))
    return replace(slurm, nodes=1, gpus_per_node=gpus, tasks_per_node=tasks,
                   cpus_per_task=min(slurm.cpus_per_task or share, cores))


def make_executor(cluster: str, folder: Path, slurm: SlurmConfig, *, dependency: str = "",
                  **resources: Any) -> Any:
    """A submitit executor for ``cluster`` with the resources of ``slurm``.

    Args:
        cluster: ``slurm`` or ``local``.
        folder: submitit's folder (scripts, pickles, logs).
        slurm: The resources and sbatch options.
        dependency: An sbatch ``--dependency`` (e.g. ``afterok:12_3``), SLURM only.
        **resources: Fields of ``slurm`` to replace for this executor (eval jobs use
            ``nodes=1, tasks_per_node=1, ...``).
    """
    import submitit

    slurm = replace(slurm, **resources)
    ex = submitit.AutoExecutor(folder=folder, cluster=cluster,
                               slurm_max_num_timeout=slurm.max_num_timeout,
                               local_max_num_timeout=slurm.max_num_timeout)
    params: dict[str, Any] = dict(
        name=slurm.job_name, timeout_min=slurm.timeout_min, nodes=slurm.nodes,
        tasks_per_node=slurm.num_tasks_per_node, cpus_per_task=slurm.cpus_per_task or 1,
        gpus_per_node=slurm.gpus_per_node or None, mem_gb=slurm.mem_gb or None)
    # Jobs import the repo's packages whatever the submission folder: put the repo on the path.
    setup = [f"export PYTHONPATH={shlex.quote(str(REPO_ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}",
             *slurm.setup]
    if cluster == "slurm":
        extra = dict(slurm.additional)
        if dependency:
            extra.update({"dependency": dependency, "kill-on-invalid-dep": "yes"})
        params.update(
            slurm_partition=slurm.partition or None, slurm_account=slurm.account or None,
            slurm_qos=slurm.qos or None, slurm_constraint=slurm.constraint or None,
            slurm_exclude=slurm.exclude or None, slurm_signal_delay_s=slurm.signal_delay_s,
            slurm_array_parallelism=slurm.array_parallelism or 256, slurm_setup=setup,
            slurm_additional_parameters=extra or None)
    else:
        params.update(local_setup=setup)
    ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return ex


def _run(cmd: list[str]) -> str | None:
    """stdout of ``cmd``, or None when it fails."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """Current state of each SLURM job id (``123`` or ``123_4``): squeue, then sacct.

    Unknown ids are left out. States are SLURM's (``RUNNING``, ``COMPLETED``, ...).

    Raises:
        ClusterError: squeue is missing or fails (controller unreachable).
    """
    ids = sorted({j for j in job_ids if j})
    if not ids:
        return {}
    configure_client()
    if shutil.which("squeue") is None:
        raise ClusterError("squeue is not on PATH")
    # no -j: squeue fails on ids it has forgotten; list this user's jobs instead
    out = _run(["squeue", "-h", "-r", "-o", "%i|%T", "-u", getpass.getuser()])
    if out is None:
        raise ClusterError("squeue failed: the SLURM controller is unreachable")
    states: dict[str, str] = {}
    for line in out.splitlines():
        jid, _, state = line.partition("|")
        if jid.strip() in ids:
            states[jid.strip()] = state.strip()
    rest = [j for j in ids if j not in states]
    if rest:
        out = _run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(rest)]) or ""
        for line in out.splitlines():
            jid, _, state = line.partition("|")
            if jid in rest:
                states[jid] = state.split()[0] if state else ""
    return states


def local_alive(job_id: str) -> bool:
    """Whether a local job (its controller's PID) is still running on this machine."""
    if not job_id.isdigit():
        return False
    try:
        cmdline = Path(f"/proc/{job_id}/cmdline").read_bytes()
    except OSError:
        return False
    return b"submitit" in cmdline
