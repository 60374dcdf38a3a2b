"""The one generic submitit job: ``Job(fn, arg)`` calls ``fn(arg)`` inside a SLURM/local job.

It does what every run needs around the compute and nothing else:

- sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` from
  submitit's ``JobEnvironment`` so that ``trainer.dist.init_distributed`` builds the
  DDP group of a multi-task (multi-GPU, multi-node) job;
- pins torch's thread count to the CPUs the job was given;
- records the attempt (job id, restart count) in ``<run>/job.json`` and, when ``fn``
  raises, the error in ``<run>/ERROR`` (read by ``sweeps.status``);
- ``checkpoint()`` returns ``DelayedSubmission(self)``: on pre-emption or a time limit
  submitit requeues the same job, and ``fn`` (the trainer) resumes from the run's own
  latest on-disk checkpoint. An external ``scontrol requeue`` does not call
  ``checkpoint()``; the original pickle runs again and resumes the same way.

The trainer never imports submitit; this module is the only bridge.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("sslbench.sweeps")
ERROR_FILE = "ERROR"
JOB_FILE = "job.json"
EVAL_DONE = "eval-{suite}.done"  # in the run folder, after a successful eval


def dist_env() -> dict[str, str]:
    """torchrun-style variables for this task of a multi-task submitit job ({} if single)."""
    try:
        import submitit

        env = submitit.JobEnvironment()
    except (ImportError, RuntimeError):  # not inside a submitit job
        return {}
    if env.num_tasks <= 1:
        return {}
    # the first node of the job's node list hosts rank 0 and the rendezvous
    master = "127.0.0.1" if env.cluster == "local" else node_address(env.hostnames[0])
    # One port per job, stable across requeues; the job id is unique while the job runs.
    digits = re.sub(r"\D", "", env.raw_job_id) or "0"
    return {"RANK": str(env.global_rank), "WORLD_SIZE": str(env.num_tasks),
            "LOCAL_RANK": str(env.local_rank), "MASTER_ADDR": master,
            "MASTER_PORT": str(20000 + int(digits) % 20000)}


def node_address(node: str) -> str:
    """The IP address of SLURM node ``node``: its name resolved here, else its ``NodeAddr``.

    On most clusters node names resolve through DNS or /etc/hosts. Where they do not (a
    node whose ``NodeAddr`` differs from its name), ``scontrol show node`` gives the
    address slurmctld itself uses. Falls back to the name.
    """
    try:
        return socket.gethostbyname(node)
    except OSError:
        pass
    try:
        out = subprocess.run(["scontrol", "-o", "show", "node", node], capture_output=True,
                             text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    m = re.search(r"\bNodeAddr=(\S+)", out)
    return m.group(1) if m else node


def _job_info() -> dict[str, Any]:
    e = os.environ
    job_id = e.get("SLURM_ARRAY_JOB_ID") and f"{e['SLURM_ARRAY_JOB_ID']}_{e['SLURM_ARRAY_TASK_ID']}"
    return {"job_id": job_id or e.get("SLURM_JOB_ID") or e.get("SUBMITIT_LOCAL_JOB_ID", ""),
            "restart_count": int(e.get("SLURM_RESTART_COUNT", "0")), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _node_list() -> list[str]:
    """The job's hostnames (SLURM), [] outside SLURM."""
    try:
        import submitit

        env = submitit.JobEnvironment()
        return list(env.hostnames) if env.cluster == "slurm" else []
    except (ImportError, RuntimeError):
        return []


@dataclass
class Job:
    """``fn(arg)`` as a checkpointable submitit job writing its state into ``run_dir``.

    Args:
        fn: A module-level function (pickled by reference), e.g. ``trainer.loop.train``.
        arg: Its single argument, e.g. the run's ``RunConfig``.
        run_dir: Where ``job.json`` and ``ERROR`` go.
        num_threads: torch threads per task (the job's CPUs per task); 0 = torch's default.
        kind: ``train`` or ``eval``, for logs and file names.
    """

    fn: Callable[[Any], Any]
    arg: Any
    run_dir: str
    num_threads: int = 0
    kind: str = "train"
    calls: int = field(default=0, compare=False)  # carried over by checkpoint() requeues

    def __call__(self) -> Any:
        """Set up the task's DDP environment and threads, then return ``fn(arg)``."""
        if os.environ.get("SUBMITIT_EXECUTOR"):  # inside a job: log to the job's stderr file
            logging.basicConfig(level=logging.INFO, force=True,
                                format="%(asctime)s %(name)s: %(message)s")
        env = dist_env()
        os.environ.update(env)
        rank = int(env.get("RANK", "0"))
        if env:
            log.info("task rank %s/%s, local rank %s on %s, rendezvous %s:%s", env["RANK"],
                     env["WORLD_SIZE"], env["LOCAL_RANK"], socket.gethostname(),
                     env["MASTER_ADDR"], env["MASTER_PORT"])
        run_dir = Path(self.run_dir)
        suffix = "" if self.kind == "train" else f".{self.kind}"
        if self.num_threads:
            os.environ["OMP_NUM_THREADS"] = str(self.num_threads)  # and for subprocesses (eval)
            if "torch" in sys.modules:  # the trainer is loaded; eval jobs never load torch here
                sys.modules["torch"].set_num_threads(self.num_threads)
        self.calls += 1
        info = {**_job_info(), "kind": self.kind, "world_size": int(env.get("WORLD_SIZE", "1")),
                "checkpoint_requeues": self.calls - 1, "master_addr": env.get("MASTER_ADDR", ""),
                "nodes": _node_list()}
        log.info("%s job %s (restart %d) for %s", self.kind, info["job_id"],
                 info["restart_count"], run_dir)
        if rank == 0:
            _write_json(run_dir / f"job{suffix}.json", info)
            (run_dir / f"{ERROR_FILE}{suffix}").unlink(missing_ok=True)
        try:
            return self.fn(self.arg)
        except Exception:
            if rank == 0:
                _write_text(run_dir / f"{ERROR_FILE}{suffix}", traceback.format_exc())
            raise
        finally:
            _destroy_process_group()

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Requeue this same job; the trainer resumes from ``run_dir/checkpoint.pth``."""
        from submitit.helpers import DelayedSubmission

        log.info("checkpoint(): requeueing %s job for %s", self.kind, self.run_dir)
        return DelayedSubmission(self)


def _destroy_process_group() -> None:
    if "torch" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    _write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def _write_text(path: Path, text: str) -> None:
    from sweeps.manifest import atomic_write_text

    atomic_write_text(path, text)


# ----------------------------------------------------------------------------- eval


@dataclass(frozen=True)
class EvalCommand:
    """``python <script> <checkpoint> --suite <suite> [--out <out>] [extra ...]`` in ``cwd``."""

    script: str
    checkpoint: str
    suite: str
    done_file: str  # written after a successful run
    out: str = ""  # "" = the script's default records folder
    extra_args: tuple[str, ...] = ()
    cwd: str = ""

    def argv(self) -> list[str]:
        """The command line."""
        out = ["--out", self.out] if self.out else []
        return [sys.executable, self.script, self.checkpoint, "--suite", self.suite, *out,
                *self.extra_args]


def run_eval(cmd: EvalCommand) -> str:
    """Run the eval battery on a finished run; raises with the output's tail on failure."""
    log.info("eval: %s", " ".join(cmd.argv()))
    proc = subprocess.run(cmd.argv(), cwd=cmd.cwd or None, capture_output=True, text=True)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise RuntimeError(f"eval exited with {proc.returncode}: {' '.join(cmd.argv())}\n{tail}")
    _write_text(Path(cmd.done_file), time.strftime("%Y-%m-%dT%H:%M:%S\n"))
    return cmd.done_file
