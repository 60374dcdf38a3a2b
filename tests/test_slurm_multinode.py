"""Multi-node training on the real two-node SLURM cluster (``SSLBENCH_SLURM_NODES=2``).

Each node is a ``slurmd`` in its own network + UTS namespace (sweeps/slurm/start.sh), so
a job on ``slurm.nodes=2`` runs its tasks on two hosts with their own names and
addresses, and gloo talks across the bridge. Checked here, through our own launcher:

- DDP across nodes (1 and 2 tasks per node) equals one process on the global batch: the
  loss, every gradient and the state after a step for every method, and the trainer's
  final weights after N steps; ranks and the rendezvous come from SLURM;
- faults: ``scontrol requeue`` of the 2-node job, the second node dying mid-run
  (its slurmd and the job's processes there killed), and a pre-emption signal; each
  resumes from the last checkpoint and ends with the weights of an uninterrupted run;
- chained eval jobs and ``sweeps.status`` on a multi-node run.

Run with:  SSLBENCH_SLURM=1 .venv/bin/pytest -q tests/test_slurm_multinode.py
(skipped, with the reason, where the cluster cannot have two nodes; see tests/slurm_fixtures.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from sweeps import launch, status
from sweeps.cluster import SlurmConfig, make_executor
from sweeps.job import Job
from tests.test_sweeps_slurm import (
    SLURM,
    STAND_IN_EVAL,
    entries,
    module_state,
    tiny_spec,
    wait_all,
    wait_for_file,
)

pytestmark = pytest.mark.slurm
NODES = ["sslb-node1", "sslb-node2"]  # start.sh's names for SSLBENCH_SLURM_NODES=2
MASTER = "10.213.0.11"  # sslb-node1's address on the cluster's bridge
# the fault runs: 2 nodes x 1 task, long enough to be hit mid-training
FAULT_EPOCHS = 10  # x 8 steps: the faults come right after the first checkpoint (step 2)


@pytest.fixture(scope="module")
def two_nodes(slurm_cluster):
    if slurm_cluster.nodes < 2:
        pytest.skip(f"needs the two-node SLURM cluster: {slurm_cluster.why_one_node}")
    return slurm_cluster


def plan(spec: Path, root: Path, *extra: str, tasks: int = 1) -> launch.Sweep:
    return launch.plan(spec=spec, cluster="slurm", root=root,
                       overrides=[*SLURM, "slurm.nodes=2", f"slurm.tasks_per_node={tasks}",
                                  *extra])


def task_logs(sweep: launch.Sweep, job_id: str) -> str:
    """The stderr of every task of ``job_id`` (submitit: logs/<id>_<task>_log.err)."""
    return "".join(p.read_text() for p in sorted(sweep.logs.glob(f"{job_id}_*_log.err")))


def assert_close_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Same keys, values equal up to the reduction order of the all-reduce."""
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), atol=1e-5, rtol=0), (
            k, (a[k].double() - b[k].double()).abs().max().item())


def resumed_steps(log: str) -> list[int]:
    return [int(s) for s in re.findall(r"resumed \S+ at step (\d+)", log)]


def sacct_state(job_id: str) -> str:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id],
                         capture_output=True, text=True, timeout=30).stdout.split()
    return out[0] if out else ""


# ----------------------------------------------------------------------------- DDP equality


def cross_node_steps(out_dir: str) -> str:
    """In each task of a multi-node job: one DDP step of every method (tests/test_ddp.py's
    worker) on the job's process group; rank 0 saves loss, gradients and state."""
    import methods  # noqa: F401
    from methods.base import METHODS
    from tests.test_ddp import _ddp_worker
    from trainer.dist import init_distributed

    info = init_distributed("cpu")
    assert info.world_size > 1, "expected a multi-task job"
    for name in METHODS.names():
        _ddp_worker(info.rank, info.world_size, name, f"{out_dir}/{name}.pt")
    return out_dir


@pytest.mark.parametrize("tasks", [1, 2])
def test__two_node_ddp_equals_one_process_on_the_global_batch(
        two_nodes, fmnist_root: Path, tmp_path: Path, tasks: int) -> None:
    world = 2 * tasks
    # (1) the trainer through the launcher: N steps across the two nodes
    spec = tiny_spec(tmp_path / "ddp.yaml", fmnist_root)
    sweep = plan(spec, tmp_path / "runs", "train.epochs=2", tasks=tasks)
    (run,) = sweep.runs
    assert launch.launch(sweep) == 0
    script = next(sweep.logs.glob("*_submission.sh")).read_text()
    assert "#SBATCH --nodes=2" in script and f"#SBATCH --ntasks-per-node={tasks}" in script
    # (2) one step of every method, loss + gradients + state, in a 2-node job of our Job
    steps_dir = tmp_path / "steps"
    steps_dir.mkdir()
    ex = make_executor("slurm", tmp_path / "steps-logs",
                       SlurmConfig(partition="debug", nodes=2, tasks_per_node=tasks,
                                   timeout_min=10))
    step_job = ex.submit(Job(cross_node_steps, str(steps_dir), str(steps_dir)))
    # meanwhile: the single-process references
    from trainer.loop import train

    single = module_state(train(dataclasses.replace(run.cfg, run_dir=str(tmp_path / "single"))))
    (row,) = wait_all(sweep, timeout=180)
    assert row.state == "done", row.detail
    info = json.loads((run.folder / "job.json").read_text())
    assert info["world_size"] == world and info["nodes"] == NODES, info
    assert info["master_addr"] == MASTER, info  # the first node's address, not localhost
    # every task: its global rank, node-local rank and node from SLURM
    log = task_logs(sweep, entries(sweep)[run.key]["job_id"])
    seen = set(re.findall(r"task rank (\d+)/(\d+), local rank (\d+) on (\S+), "
                          r"rendezvous ([\d.]+):", log))
    assert seen == {(str(r), str(world), str(r % tasks), NODES[r // tasks], MASTER)
                    for r in range(world)}, seen
    assert_close_states(single, module_state(run.folder))

    deadline = time.monotonic() + 180
    while not step_job.done():
        assert time.monotonic() < deadline, f"step job {step_job.job_id} not done"
        time.sleep(0.5)
    assert step_job.results() == [str(steps_dir)] * world
    from tests import test_ddp

    for name in test_ddp.METHODS.names():
        module = test_ddp.build(name)
        views, labels = test_ddp.inputs()
        loss, ref = test_ddp.step(module, module, views, labels)
        ddp = torch.load(steps_dir / f"{name}.pt", weights_only=True)
        torch.testing.assert_close(ddp["loss"], loss, rtol=1e-9, atol=1e-10, msg=name)
        assert ddp["grads"].keys() == ref["grads"].keys() and ref["grads"], name
        for k, g in ref["grads"].items():
            torch.testing.assert_close(ddp["grads"][k], g, rtol=1e-7, atol=1e-10,
                                       msg=f"{name} {k}")
        for k, v in ref["state"].items():
            torch.testing.assert_close(ddp["state"][k], v, rtol=1e-7, atol=1e-10,
                                       msg=f"{name} {k}")


@pytest.mark.parametrize("tasks", [1, 2])
def test__two_node_ddp_on_a_jpeg_folder_with_loader_workers_equals_one_process(
        two_nodes, tmp_path: Path, tasks: int) -> None:
    """The real-image pipeline across nodes: both nodes read one JPEG tree (the nodes share
    the filesystem), each rank decodes its share of every global batch in a loader worker;
    after N steps the weights equal one process on the global batch."""
    from dataroom.synthetic import write_tree
    from tests.test_trainer_files import CLASSES

    tree = tmp_path / "jpegs"  # 4 x 16 train, 4 x 4 val, photo-like 40 x 48 JPEGs
    write_tree(tree, {**{f"train/{c}": 16 for c in CLASSES},
                      **{f"val/{c}": 4 for c in CLASSES}}, size=(40, 48))
    spec = tiny_spec(tmp_path / "files.yaml", tree)
    # test_trainer_files' DDP settings: global-batch BN, plain SGD with a large step
    sweep = plan(spec, tmp_path / "runs", "data.name=image_folder", "data.num_workers=1",
                 "data.val_samples=16", "train.batch_size=16", "train.epochs=2",
                 "aug.crop_size=16", "train.sync_bn=true", "optim.name=sgd",
                 "optim.base_lr=0.5", "optim.warmup_epochs=0", tasks=tasks)
    (run,) = sweep.runs
    assert (run.cfg.data.name, run.cfg.data.root, run.cfg.data.num_workers) == (
        "image_folder", str(tree), 1)
    assert launch.launch(sweep) == 0
    from trainer.loop import train

    single = module_state(train(dataclasses.replace(run.cfg, run_dir=str(tmp_path / "single"))))
    (row,) = wait_all(sweep, timeout=180)
    assert row.state == "done", row.detail
    info = json.loads((run.folder / "job.json").read_text())
    assert info["world_size"] == 2 * tasks and info["nodes"] == NODES, info
    assert info["master_addr"] == MASTER, info
    saved = yaml.safe_load((run.folder / "config.yaml").read_text())
    assert saved["train_images"] == 64 and saved["steps_per_epoch"] == 4, saved
    # 8 steps; test_trainer_files' tolerance: the BN running statistics (up to ~2.4 here)
    # differ by the all-reduce's order, measured up to 7.4e-6 (3e-6 relative)
    ddp = module_state(run.folder)
    assert ddp.keys() == single.keys() and single
    for k in single:
        torch.testing.assert_close(ddp[k], single[k], rtol=1e-4, atol=1e-5, msg=k)
    # and the steps moved the weights (an equality of untrained weights proves nothing)
    steps = torch.load(run.folder / "checkpoint.pth", weights_only=True)["step"]
    assert steps == 8, steps
    from trainer.dist import init_distributed
    from trainer.loop import build_run

    init = build_run(run.cfg, init_distributed("cpu"), tmp_path / "init").module.state_dict()
    assert any(not torch.equal(init[k], single[k]) for k in single
               if single[k].is_floating_point())


# ----------------------------------------------------------------------------- faults

@pytest.fixture(scope="module")
def uninterrupted(two_nodes, fmnist_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """The fault runs' config on the same 2 x 1 layout, never interrupted: submitted once
    (it runs beside the first fault test's job: 1 CPU per node each); call it for its
    final weights. With two ranks the all-reduce is a sum of two numbers, so the result
    is bit-exact whatever the order, and a resumed run must equal it exactly."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    sweep = fault_sweep(fmnist_root, folder)
    assert launch.launch(sweep) == 0

    def weights() -> dict[str, torch.Tensor]:
        (row,) = wait_all(sweep, timeout=240)
        assert row.state == "done", row.detail
        return module_state(sweep.runs[0].folder)

    return weights


def fault_sweep(fmnist_root: Path, tmp_path: Path, **sections) -> launch.Sweep:
    spec = tiny_spec(tmp_path / "fault.yaml", fmnist_root, **sections)
    # a 60 min limit: submitit counts a USR2 in the first 48 min as a pre-emption
    return plan(spec, tmp_path / "runs", f"train.epochs={FAULT_EPOCHS}", "slurm.timeout_min=60")


def check_resumed_and_equal(sweep: launch.Sweep, job_id: str, uninterrupted) -> dict:
    """The run resumed mid-way from its checkpoint and ended with the uninterrupted weights."""
    (run,) = sweep.runs
    info = json.loads((run.folder / "job.json").read_text())
    assert info["nodes"] == NODES and info["world_size"] == 2, info
    resumed = resumed_steps(task_logs(sweep, job_id))
    assert resumed and 0 < resumed[0] < FAULT_EPOCHS * 8, resumed
    a, b = uninterrupted(), module_state(run.folder)
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), k
    return info


def test__scontrol_requeue_of_the_two_node_job_resumes_and_its_eval_chains(
        two_nodes, uninterrupted, fmnist_root: Path, tmp_path: Path) -> None:
    stand_in = tmp_path / "run_all.py"
    stand_in.write_text(STAND_IN_EVAL)
    sweep = fault_sweep(fmnist_root, tmp_path,
                        eval={"suite": "mini", "script": str(stand_in), "out": "{run_dir}/ev"})
    (run,) = sweep.runs
    assert launch.launch(sweep) == 0
    entry = entries(sweep)[run.key]
    job_id = entry["job_id"]
    # the eval job: one node, one task, after the 2-node training job
    eval_script = (Path(entry["eval_stdout"]).parent
                   / f"{entry['eval_job_id']}_submission.sh").read_text()
    assert f"--dependency=afterok:{job_id}" in eval_script
    assert "#SBATCH --nodes=1" in eval_script and "#SBATCH --ntasks-per-node=1" in eval_script
    wait_for_file(run.folder / "checkpoint.pth", timeout=90)
    _, (row,) = status.collect(sweep.folder)
    assert (row.state, row.eval_state) == ("running", "pending"), row
    subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=30)
    (row,) = wait_all(sweep, timeout=240)
    assert (row.state, row.eval_state) == ("done", "done"), row
    info = check_resumed_and_equal(sweep, job_id, uninterrupted)
    assert info["restart_count"] >= 1 and info["checkpoint_requeues"] == 0, info
    assert json.loads((run.folder / "ev" / "result.json").read_text()) == {"suite": "mini"}
    assert sacct_state(job_id) == "COMPLETED" and sacct_state(entry["eval_job_id"]) == "COMPLETED"
    assert re.search(rf"{re.escape(run.label)}\s.*done", status.format_table(
        sweep.folder, *status.collect(sweep.folder)))


def test__preemption_signal_checkpoints_once_on_rank_0_and_requeues(
        two_nodes, uninterrupted, fmnist_root: Path, tmp_path: Path) -> None:
    sweep = fault_sweep(fmnist_root, tmp_path)
    (run,) = sweep.runs
    assert launch.launch(sweep) == 0
    job_id = entries(sweep)[run.key]["job_id"]
    wait_for_file(run.folder / "checkpoint.pth", timeout=90)
    # what SLURM sends before a time limit or pre-emption (--signal=USR2@...): every task
    # of the step, on both nodes, gets it
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=30)
    (row,) = wait_all(sweep, timeout=240)
    assert row.state == "done", row.detail
    info = check_resumed_and_equal(sweep, job_id, uninterrupted)
    assert info["restart_count"] >= 1 and info["checkpoint_requeues"] == 1, info
    log = task_logs(sweep, job_id)
    # both ranks got it, as a pre-emption (not a time-out: the attempt is far from its limit)
    assert set(re.findall(r"submitit: Caught signal SIGUSR2 on (\S+): this job is preempted",
                          log)) == set(NODES), log[-3000:]
    # rank 0 alone checkpoints (pickles the job) and requeues it; rank 1 only waits
    assert log.count("checkpoint(): requeueing") == 1, log[-3000:]
    assert len(re.findall(r"submitit: Requeued job \d+", log)) == 1, log[-3000:]
    assert log.count("since I am a slave (procid=1)") == 1, log[-3000:]


def test__second_node_dies_mid_run_and_a_relaunch_resumes_it(
        two_nodes, uninterrupted, fmnist_root: Path, tmp_path: Path) -> None:
    uninterrupted()  # it must not run on sslb-node2 when everything there is killed
    sweep = fault_sweep(fmnist_root, tmp_path)
    (run,) = sweep.runs
    assert launch.launch(sweep) == 0
    job_id = entries(sweep)[run.key]["job_id"]
    wait_for_file(run.folder / "checkpoint.pth", timeout=90)
    # power loss of sslb-node2: every process in its namespace (slurmd, the job's
    # slurmstepd and python task)
    pids = subprocess.run(["ip", "netns", "pids", NODES[1]], capture_output=True, text=True,
                          check=True).stdout.split()
    slurmd_pid = (two_nodes.state_dir / "run" / f"slurmd-{NODES[1]}.pid").read_text().strip()
    assert slurmd_pid in pids and len(pids) >= 3, pids
    subprocess.run(["kill", "-KILL", *pids], check=False)
    killed_at = time.monotonic()
    # rank 0 on sslb-node1 loses its peer: the job fails or SLURM requeues it
    deadline = killed_at + 120
    while sacct_state(job_id) == "RUNNING" and not (run.folder / "ERROR").exists():
        assert time.monotonic() < deadline, "the job kept running without its second node"
        time.sleep(0.5)
    # the node comes back (start.sh restarts what is missing)
    proc = subprocess.run(["bash", str(launch.REPO_ROOT / "sweeps/slurm/start.sh")],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SSLBENCH_SLURM_NODES": "2"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the relaunch resumes it (or finds it requeued by SLURM and leaves it be)
    deadline = time.monotonic() + 120
    while sacct_state(job_id) in ("RUNNING", "COMPLETING"):
        assert time.monotonic() < deadline, f"job {job_id}: {sacct_state(job_id)}"
        time.sleep(0.5)
    first = sacct_state(job_id)
    assert launch.launch(fault_sweep(fmnist_root, tmp_path)) == 0
    (row,) = wait_all(sweep, timeout=240)
    assert row.state == "done", row.detail
    new_id = entries(sweep)[run.key]["job_id"]
    assert new_id != job_id or first in ("PENDING", "REQUEUED"), (job_id, new_id, first)
    check_resumed_and_equal(sweep, new_id, uninterrupted)
