"""``python -m sweeps.launch``: expand a sweep spec and submit its runs (``make sweep``).

    python -m sweeps.launch --method vicreg                          # sweeps/specs/vicreg.yaml
    python -m sweeps.launch --method simsiam --spec sweeps/specs/cpu.yaml --cluster local
    python -m sweeps.launch --spec sweeps/specs/cpu.yaml --dry-run slurm.partition=debug seeds=[0,1]

Runs go to ``<root>/<sweep>/<method>-<backbone>-s<seed>-<hash8>``. Finished runs
(``DONE``) and runs whose job still waits or runs are skipped; the others are
submitted, and the trainer resumes each from its latest checkpoint. On SLURM the
runs go out as one job array and the launcher returns; locally they run as
submitit ``LocalExecutor`` processes (``slurm.array_parallelism`` at a time, default
1, counting jobs a killed earlier launcher left running) and the launcher waits for them.
Planning checks every run (``--dry-run`` too): its config, its factories, a local device,
and the chained eval's settings. One launcher per sweep folder (``<sweep>/.lock``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sweeps import manifest
from sweeps.cluster import (
    REPO_ROOT,
    ClusterError,
    EvalConfig,
    SlurmConfig,
    build_options,
    check_eval,
    detect_cluster,
    ensure_slurm,
    local_alive,
    local_resources,
    make_executor,
    slurm_states,
)
from sweeps.job import EVAL_DONE, EvalCommand, Job, run_eval
from sweeps.manifest import ManifestError
from sweeps.spec import (
    PlannedRun,
    SpecError,
    SweepSpec,
    check_method,
    default_spec,
    expand,
    load_spec,
    split_cli,
)
from sweeps.status import collect, format_table, is_done, job_active, last_step
from trainer.config import ConfigError, DataRootError, preflight
from trainer.io import FolderLockedError, folder_lock


@dataclass(frozen=True)
class Sweep:
    """A fully resolved sweep: where it goes, how it runs, and its runs."""

    name: str
    folder: Path
    spec: SweepSpec
    method: str | None
    cluster: str
    slurm: SlurmConfig
    eval: EvalConfig
    runs: list[PlannedRun]

    @property
    def logs(self) -> Path:
        """submitit's folder (job scripts, pickles, stdout/stderr per job)."""
        return self.folder / "logs"


def plan(method: str | None = None, spec: str | Path | None = None, cluster: str = "auto",
         overrides: Sequence[str] = (), name: str = "", root: str | Path = "runs") -> Sweep:
    """Resolve the spec, the options and every run, without touching any cluster.

    Raises:
        SpecError: Unknown METHOD, malformed spec or option (the message says where).
    """
    if method:
        check_method(method)
    parsed = load_spec(spec or default_spec(method or "vicreg"))
    run_items, sections, seeds = split_cli(list(overrides))
    slurm = build_options(parsed.slurm, sections["slurm"], SlurmConfig, f"{parsed.path}: slurm")
    evalc = build_options(parsed.eval, sections["eval"], EvalConfig, f"{parsed.path}: eval")
    if not name:
        name = parsed.name
        if method and method != parsed.name:
            name = f"{parsed.name}-{method}"
    folder = Path(root) / name
    runs = expand(parsed, method, run_items, folder, seeds)
    where = detect_cluster(cluster)
    for run in runs:  # what the schema cannot see: factories, and local devices
        try:
            preflight(run.cfg, device=where == "local")
        except DataRootError as e:  # before anything is submitted
            raise SpecError(f"{parsed.path}: run '{run.label}': {e}. Give the folder "
                            "(data.root=... or the variable named), or train on the embedded "
                            "Fashion-MNIST with SPEC=sweeps/specs/cpu.yaml") from None
        except ConfigError as e:
            raise SpecError(f"{parsed.path}: run '{run.label}': {e}") from None
    check_eval(evalc, f"{parsed.path}: eval")
    if where == "local":
        slurm = local_resources(slurm)
    elif not slurm.cpus_per_task:
        slurm = replace(slurm, cpus_per_task=1)  # SLURM's own default
    return Sweep(name, folder, parsed, method, where, slurm, evalc, runs)


# ----------------------------------------------------------------------------- what to run


def _eval_done(sweep: Sweep, run: PlannedRun) -> Path:
    return run.folder / EVAL_DONE.format(suite=sweep.eval.suite)


def decide(sweep: Sweep, entries: dict[str, Any], states: dict[str, str]) -> dict[str, str]:
    """Per run key: ``done``, ``active`` (its job waits/runs), ``resume`` or ``new``."""
    out = {}
    for r in sweep.runs:
        entry = entries.get(r.key, {})
        if is_done(r.folder):
            out[r.key] = "done"
        elif entry.get("cluster") == sweep.cluster and job_active(
                entry.get("job_id", ""), sweep.cluster, states):
            out[r.key] = "active"
        elif (r.folder / "checkpoint.pth").exists():
            out[r.key] = "resume"
        else:
            out[r.key] = "new"
    return out


def describe(sweep: Sweep, actions: dict[str, str]) -> str:
    """The dry-run / launch table: runs, folders and what happens to each."""
    s = sweep.slurm
    res = (f"{s.nodes} node(s) x {s.num_tasks_per_node} task(s), {s.cpus_per_task} cpu/task, "
           f"{s.gpus_per_node} gpu/node, {s.timeout_min} min")
    if sweep.cluster == "slurm":
        res += "".join(f", {k}={v}" for k, v in (("partition", s.partition), ("account", s.account),
                                                  ("qos", s.qos), ("constraint", s.constraint))
                       if v)
    lines = [f"sweep '{sweep.name}': {len(sweep.runs)} run(s) from {sweep.spec.path}"
             f"{f' (METHOD={sweep.method})' if sweep.method else ''} -> {sweep.folder}/",
             f"cluster: {sweep.cluster} ({res})"]
    if sweep.eval.suite:
        lines.append(f"eval: {sweep.eval.script} --suite {sweep.eval.suite} after each run")
    width = max(len(r.label) for r in sweep.runs)
    lines.append(f"  {'#':>3}  {'run':<{width}}  {'action':<8} folder")
    for i, r in enumerate(sweep.runs):
        act = actions[r.key]
        if act == "resume":
            act = f"resume@{last_step(r.folder) or '?'}"
        lines.append(f"  {i:>3}  {r.label:<{width}}  {act:<8} {r.folder}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- submission


def train_job(sweep: Sweep, run: PlannedRun) -> Job:
    """The submitit callable of one run."""
    from trainer.loop import train

    return Job(train, run.cfg, str(run.folder), num_threads=sweep.slurm.cpus_per_task)


def eval_job(sweep: Sweep, run: PlannedRun) -> Job:
    """The eval job of one run: ``eval/run_all.py <run>/backbone.pth --suite ...``."""
    e = sweep.eval
    script = Path(e.script) if Path(e.script).is_absolute() else REPO_ROOT / e.script
    folder = run.folder.resolve()
    cmd = EvalCommand(str(script), str(folder / "backbone.pth"), e.suite,
                      str(_eval_done(sweep, run).resolve()),
                      e.out.replace("{run_dir}", str(folder)), tuple(e.extra_args),
                      str(REPO_ROOT))
    return Job(run_eval, cmd, str(run.folder), num_threads=e.cpus_per_task or
               sweep.slurm.cpus_per_task, kind="eval")


def _eval_executor(sweep: Sweep, dependency: str = "") -> Any:
    e = sweep.eval
    return make_executor(sweep.cluster, sweep.logs, sweep.slurm, dependency=dependency,
                         nodes=1, tasks_per_node=1, timeout_min=e.timeout_min,
                         cpus_per_task=e.cpus_per_task or sweep.slurm.cpus_per_task,
                         gpus_per_node=e.gpus_per_node)


def _record(sweep: Sweep, runs: list[PlannedRun], jobs: list[Any], prefix: str = "") -> None:
    """Write the runs and their job ids into ``sweep.json``."""
    with manifest.update(sweep.folder) as data:
        data.update(name=sweep.name, spec=str(sweep.spec.path), method=sweep.method,
                    cluster=sweep.cluster)
        for run, job in zip(runs, jobs):
            entry = data["runs"].setdefault(run.key, {})
            entry.update(label=run.label, run_dir=str(run.folder), cluster=sweep.cluster,
                         seed=run.cfg.train.seed)
            entry.update({f"{prefix}job_id": str(job.job_id), f"{prefix}submitted": manifest.now(),
                          f"{prefix}stdout": str(job.paths.stdout),
                          f"{prefix}stderr": str(job.paths.stderr)})
            if prefix:
                entry["eval_done_file"] = str(_eval_done(sweep, run))
        if jobs:
            data["submissions"].append({"time": manifest.now(), "cluster": sweep.cluster,
                                        "kind": prefix.rstrip("_") or "train",
                                        "job_ids": [str(j.job_id) for j in jobs]})


def _register(sweep: Sweep) -> None:
    """Make sure every planned run is listed in the manifest (status shows 'new' ones)."""
    with manifest.update(sweep.folder) as data:
        data.update(name=sweep.name, spec=str(sweep.spec.path), method=sweep.method,
                    cluster=data.get("cluster", sweep.cluster))
        for run in sweep.runs:
            entry = data["runs"].setdefault(run.key, {"cluster": sweep.cluster})
            entry.update(label=run.label, run_dir=str(run.folder), seed=run.cfg.train.seed)


def submit_slurm(sweep: Sweep, todo: list[PlannedRun], evals: list[tuple[PlannedRun, str]]
                 ) -> list[Any]:
    """Submit ``todo`` as one job array, then the eval jobs (``afterok`` on their run)."""
    jobs: list[Any] = []
    if todo:
        ex = make_executor("slurm", sweep.logs, sweep.slurm)
        try:
            with ex.batch():
                for run in todo:
                    jobs.append(ex.submit(train_job(sweep, run)))
        except Exception as e:  # submitit raises its own errors with sbatch's stderr
            raise ClusterError(f"sbatch failed: {e}") from None
        _record(sweep, todo, jobs)
    by_key = {r.key: str(j.job_id) for r, j in zip(todo, jobs)}
    eval_runs, eval_jobs = [], []
    for run, after in evals:
        dep = by_key.get(run.key) or after
        try:
            job = _eval_executor(sweep, f"afterok:{dep}" if dep else "").submit(
                eval_job(sweep, run))
        except Exception as e:
            raise ClusterError(f"sbatch of the eval job for {run.key} failed: {e}") from None
        eval_runs.append(run)
        eval_jobs.append(job)
    if eval_jobs:
        _record(sweep, eval_runs, eval_jobs, prefix="eval_")
    return jobs + eval_jobs


def run_local(sweep: Sweep, todo: list[PlannedRun], evals: list[tuple[PlannedRun, str]],
              poll_s: float = 0.5) -> int:
    """Run ``todo`` (then their evals) as local processes, N at a time; returns #failed."""
    queue: list[tuple[str, PlannedRun]] = [("train", r) for r in todo]
    queue += [("eval", r) for r, _ in evals]
    parallel = sweep.slurm.array_parallelism or 1
    running: list[tuple[str, PlannedRun, Any]] = []
    failed = 0
    try:
        while queue or running:
            # jobs of an earlier launcher of this sweep that still run count against the limit
            others = _others_alive(sweep, {str(job.job_id) for _, _, job in running})
            while queue and len(running) + others < parallel:
                kind, run = queue.pop(0)
                job = _submit_local(sweep, kind, run)
                running.append((kind, run, job))
                print(f"[local] started {kind} of {run.label} (pid {job.job_id})", flush=True)
            time.sleep(poll_s)
            for item in [x for x in running if x[2].done()]:
                running.remove(item)
                kind, run, job = item
                ok = job.exception() is None and (kind == "eval" or is_done(run.folder))
                failed += not ok
                print(f"[local] {kind} of {run.label}: {'done' if ok else 'FAILED'}", flush=True)
                if ok and kind == "train" and sweep.eval.suite:
                    queue.append(("eval", run))
    except KeyboardInterrupt:
        for _, _, job in running:
            job.cancel(check=False)
        raise
    return failed


def _others_alive(sweep: Sweep, mine: set[str]) -> int:
    """Local jobs recorded in the manifest, still alive, not started by this launcher."""
    entries = manifest.load(sweep.folder).get("runs", {})
    ids = {e.get(k, "") for e in entries.values() for k in ("job_id", "eval_job_id")}
    return sum(1 for j in ids if j and j not in mine and local_alive(j))


def _submit_local(sweep: Sweep, kind: str, run: PlannedRun) -> Any:
    if kind == "train":
        job = make_executor("local", sweep.logs, sweep.slurm).submit(train_job(sweep, run))
        _record(sweep, [run], [job])
    else:
        job = _eval_executor(sweep).submit(eval_job(sweep, run))
        _record(sweep, [run], [job], prefix="eval_")
    return job


def launch(sweep: Sweep, wait: bool = False) -> int:
    """Submit what is left to do of ``sweep``; returns a process exit code.

    One launcher per sweep folder: a second one stops naming the first (a local sweep's
    launcher holds the folder until its runs end; a SLURM one while it submits).

    Raises:
        FolderLockedError: Another launcher holds the sweep folder.
    """
    if sweep.cluster == "slurm":
        ensure_slurm()
    with folder_lock(sweep.folder, f"sweep launcher, {sweep.cluster}"):
        code = _launch(sweep)
    return wait_for(sweep) if wait and sweep.cluster == "slurm" and code == 0 else code


def _launch(sweep: Sweep) -> int:
    entries = manifest.load(sweep.folder).get("runs", {})
    ids = [e.get(k, "") for e in entries.values() for k in ("job_id", "eval_job_id")]
    states = slurm_states(ids) if sweep.cluster == "slurm" else {}
    actions = decide(sweep, entries, states)
    print(describe(sweep, actions), flush=True)
    _register(sweep)
    todo = [r for r in sweep.runs if actions[r.key] in ("new", "resume")]
    evals = _evals_to_submit(sweep, entries, states, actions)
    if not todo and not evals:
        print("nothing to submit: every run is done or already queued")
        return 0
    if sweep.cluster == "local":
        failed = run_local(sweep, todo, [e for e in evals if actions[e[0].key] == "done"])
        print(format_table(sweep.folder, *collect(sweep.folder)))
        return 1 if failed else 0
    jobs = submit_slurm(sweep, todo, evals)
    print(f"submitted {len(jobs)} job(s): {', '.join(str(j.job_id) for j in jobs)}\n"
          f"watch with: make sweep-status SWEEP={sweep.folder}   (logs: {sweep.folder}/logs/)")
    return 0


def _evals_to_submit(sweep: Sweep, entries: dict[str, Any], states: dict[str, str],
                     actions: dict[str, str]) -> list[tuple[PlannedRun, str]]:
    """(run, job id it must wait for) of each run whose eval is neither done nor queued."""
    if not sweep.eval.suite:
        return []
    out = []
    for r in sweep.runs:
        entry = entries.get(r.key, {})
        if _eval_done(sweep, r).exists() or job_active(
                entry.get("eval_job_id", ""), sweep.cluster, states):
            continue
        after = entry.get("job_id", "") if actions[r.key] == "active" else ""
        out.append((r, after))
    return out


def wait_for(sweep: Sweep, poll_s: float = 5.0, timeout_s: float = 0) -> int:
    """Block until no run of the sweep is pending or running; 1 if any failed."""
    start = time.monotonic()
    while True:
        data, rows = collect(sweep.folder)
        busy = [r for r in rows if r.state in ("pending", "running")
                or r.eval_state in ("pending", "running")]
        if not busy or (timeout_s and time.monotonic() - start > timeout_s):
            print(format_table(sweep.folder, data, rows))
            return 1 if any(r.state == "failed" for r in rows) else 0
        time.sleep(poll_s)


def main(method: str | None, spec: str | None, cluster: str, overrides: list[str], name: str,
         root: str, dry_run: bool, wait: bool) -> int:
    """Plan the sweep, then print it (``--dry-run``) or launch it."""
    try:
        sweep = plan(method, spec, cluster, overrides, name, root)
        if dry_run:
            print(describe(sweep, decide(sweep, manifest.load(sweep.folder).get("runs", {}), {})))
            return 0
        return launch(sweep, wait)
    except (SpecError, ClusterError, ManifestError, FolderLockedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def cli(argv: list[str] | None = None) -> int:
    """Parse the command line and run :func:`main`."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", "-m", default=None, help="method (METHOD); picks the default spec")
    p.add_argument("--spec", "-s", default=None,
                   help="spec file (default: sweeps/specs/<method>.yaml)")
    p.add_argument("--cluster", default="auto", choices=("auto", "slurm", "local"))
    p.add_argument("--name", default="", help="sweep name (default: spec name[-method])")
    p.add_argument("--root", default="runs", help="parent of sweep folders (default: runs)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the runs and their folders; submit nothing")
    p.add_argument("--wait", action="store_true", help="SLURM: wait until every run has ended")
    p.add_argument("overrides", nargs="*",
                   help="key=value: run config keys, slurm.*, eval.*, seeds=[...]")
    args = p.parse_args(argv)
    return main(**vars(args))


if __name__ == "__main__":
    sys.exit(cli())
