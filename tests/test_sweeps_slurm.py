"""Sweeps through a real SLURM cluster (sweeps/slurm/): arrays, eval chaining, requeue, DDP.

Run with:  SSLBENCH_SLURM=1 .venv/bin/pytest -q tests/test_sweeps_slurm.py
(skipped unless SSLBENCH_SLURM=1 or sbatch is on PATH; see tests/slurm_fixtures.py).
The local cluster has 2 CPUs: every job asks for 1 CPU per task, so at most 2 run at once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from sweeps import launch, manifest, status

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parents[1]
SLURM = ["slurm.partition=debug", "slurm.cpus_per_task=1", "slurm.timeout_min=10"]


def tiny_spec(path: Path, data_root: Path, **sections) -> Path:
    base = {"method": {"name": "vicreg", "projector": "32-32"},
            "backbone": {"name": "tiny_cnn", "width": 4},
            "data": {"root": str(data_root), "val_samples": 64}, "aug": {"crop_size": 28},
            "train": {"epochs": 3, "batch_size": 32, "progress": False, "tensorboard": False,
                      "ckpt_every_steps": 2, "log_every_steps": 4}}
    path.write_text(yaml.safe_dump({"base": base, **sections}, sort_keys=False))
    return path


def wait_all(sweep: launch.Sweep, timeout: float) -> list[status.RunStatus]:
    """Poll sweep-status until no run (and no eval) is pending or running."""
    deadline = time.monotonic() + timeout
    while True:
        _, rows = status.collect(sweep.folder)
        busy = [r for r in rows if r.state in ("pending", "running", "new")
                or r.eval_state in ("pending", "running", "not run")]
        if not busy:
            return rows
        if time.monotonic() > deadline:
            ids = [r.job_id for r in rows]
            subprocess.run(["scancel", *ids], capture_output=True)
            pytest.fail(f"sweep not finished after {timeout}s: "
                        f"{[(r.label, r.state, r.eval_state, r.job_id) for r in rows]}")
        time.sleep(0.5)


def wait_for_file(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            pytest.fail(f"{path} did not appear within {timeout}s")
        time.sleep(0.05)


def entries(sweep: launch.Sweep) -> dict[str, dict]:
    return manifest.load(sweep.folder)["runs"]


def module_state(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "checkpoint.pth", weights_only=True)["module"]


STAND_IN_EVAL = """\
import argparse, json, pathlib
p = argparse.ArgumentParser()
p.add_argument("ckpt"); p.add_argument("--suite"); p.add_argument("--out")
a = p.parse_args()
assert pathlib.Path(a.ckpt).is_file(), a.ckpt
pathlib.Path(a.out).mkdir(parents=True, exist_ok=True)
pathlib.Path(a.out, "result.json").write_text(json.dumps({"suite": a.suite}))
"""


def test__array_of_two_runs_with_eval_chain_and_relaunch_submits_nothing(
        slurm_cluster, fmnist_root: Path, tmp_path: Path, capsys) -> None:
    # eval/run_all.py's CLI, without the work (the real script may not exist yet)
    stand_in = tmp_path / "run_all.py"
    stand_in.write_text(STAND_IN_EVAL)
    spec = tiny_spec(tmp_path / "arr.yaml", fmnist_root, seeds=[0, 1],
                     eval={"suite": "mini", "script": str(stand_in), "out": "{run_dir}/ev"})
    sweep = launch.plan(spec=spec, cluster="auto", root=tmp_path / "runs", overrides=SLURM)
    assert sweep.cluster == "slurm"
    assert launch.launch(sweep) == 0
    runs = entries(sweep)
    train_ids = sorted(e["job_id"] for e in runs.values())
    array = {i.split("_")[0] for i in train_ids}
    assert len(array) == 1 and [i.split("_")[1] for i in train_ids] == ["0", "1"]  # one array
    for e in runs.values():  # each eval job waits for its own array task
        script = Path(e["eval_stdout"]).parent / f"{e['eval_job_id']}_submission.sh"
        assert f"--dependency=afterok:{e['job_id']}" in script.read_text()
    rows = wait_all(sweep, timeout=120)
    assert [(r.state, r.eval_state) for r in rows] == [("done", "done")] * 2
    for r in sweep.runs:
        records = [json.loads(x) for x in (r.folder / "metrics.jsonl").read_text().splitlines()]
        assert [x["epoch"] for x in records if x["kind"] == "epoch"] == [1, 2, 3]
        assert (r.folder / "backbone.pth").exists() and (r.folder / "DONE").exists()
        assert json.loads((r.folder / "ev" / "result.json").read_text()) == {"suite": "mini"}
        assert (r.folder / "eval-mini.done").exists()
    states = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", ",".join(train_ids)],
                            capture_output=True, text=True).stdout.split()
    assert states == ["COMPLETED", "COMPLETED"]
    # re-launching the finished sweep submits nothing
    before = manifest.load(sweep.folder)["submissions"]
    capsys.readouterr()
    again = launch.plan(spec=spec, cluster="slurm", root=tmp_path / "runs", overrides=SLURM)
    assert launch.launch(again) == 0
    assert "nothing to submit" in capsys.readouterr().out
    assert manifest.load(sweep.folder)["submissions"] == before


def test__requeued_and_time_limited_runs_resume_from_their_checkpoints(
        slurm_cluster, fmnist_root: Path, tmp_path: Path) -> None:
    # 'requeue': external `scontrol requeue` (no checkpoint() call; the original pickle
    # reruns); long enough to still be training when SLURM kills it (KillWait 5 s).
    # 'timelimit': the USR2 SLURM sends `signal_delay_s` before the time limit; submitit
    # calls Job.checkpoint() -> DelayedSubmission(self) and requeues the job itself.
    spec = tiny_spec(tmp_path / "pre.yaml", fmnist_root,
                     runs=[{"name": "requeue", "train": {"epochs": 120}},
                           {"name": "timelimit", "train": {"epochs": 40}}])
    sweep = launch.plan(spec=spec, cluster="slurm", root=tmp_path / "runs", overrides=SLURM)
    requeue, timelimit = sweep.runs
    assert launch.launch(sweep) == 0
    ids = {k: e["job_id"] for k, e in entries(sweep).items()}
    # the uninterrupted reference, meanwhile, with the job's thread count
    ref_dir = tmp_path / "reference"
    ref_yaml = tmp_path / "ref.yaml"
    ref_yaml.write_text(yaml.safe_dump({**requeue.cfg.to_dict(), "run_dir": str(ref_dir)}))
    ref = subprocess.Popen([sys.executable, "-m", "trainer.train", "-c", str(ref_yaml)], cwd=REPO,
                           env={**os.environ, "OMP_NUM_THREADS": "1"},
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # Both runs are long enough (a quiet CI machine is fast) to be hit mid-training; the
    # requeue goes first because it must land before its run ends.
    wait_for_file(requeue.folder / "checkpoint.pth", timeout=60)
    subprocess.run(["scontrol", "requeue", ids[requeue.key]], check=True)
    wait_for_file(timelimit.folder / "checkpoint.pth", timeout=60)
    subprocess.run(["scancel", "--signal=USR2", ids[timelimit.key]], check=True)
    rows = wait_all(sweep, timeout=150)
    assert ref.wait(timeout=120) == 0, ref.stderr.read()
    assert [r.state for r in rows] == ["done", "done"]
    for run, requeues in ((requeue, 0), (timelimit, 1)):
        info = json.loads((run.folder / "job.json").read_text())
        assert info["restart_count"] >= 1 and info["checkpoint_requeues"] >= requeues, info
        log = Path(entries(sweep)[run.key]["stderr"]).read_text()
        total = run.cfg.train.epochs * 8
        resumed = [int(s) for s in re.findall(r"resumed \S+ at step (\d+)", log)]
        assert resumed and 0 < resumed[0] < total, (resumed, log[-2000:])
    assert "checkpoint(): requeueing" in Path(entries(sweep)[timelimit.key]["stderr"]).read_text()
    a, b = module_state(ref_dir), module_state(requeue.folder)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test__two_task_job_trains_with_ddp_like_one_process(
        slurm_cluster, fmnist_root: Path, tmp_path: Path) -> None:
    spec = tiny_spec(tmp_path / "ddp.yaml", fmnist_root)
    sweep = launch.plan(spec=spec, cluster="slurm", root=tmp_path / "runs",
                        overrides=[*SLURM, "slurm.tasks_per_node=2", "train.epochs=2"])
    (run,) = sweep.runs
    assert launch.launch(sweep) == 0
    script = next((sweep.folder / "logs").glob("*_submission.sh")).read_text()
    assert "#SBATCH --ntasks-per-node=2" in script
    (row,) = wait_all(sweep, timeout=120)
    assert row.state == "done", row.detail
    assert json.loads((run.folder / "job.json").read_text())["world_size"] == 2
    assert yaml.safe_load((run.folder / "config.yaml").read_text())["world_size"] == 2
    from trainer.loop import train

    single = train(dataclasses.replace(run.cfg, run_dir=str(tmp_path / "single")))
    a, b = module_state(single), module_state(run.folder)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), atol=1e-5, rtol=0), (
            k, (a[k].double() - b[k].double()).abs().max().item())


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("SSLBENCH_SLURM_SLOW") != "1",
                    reason="a real 1-minute SLURM time limit (~1.5-2 min); SSLBENCH_SLURM_SLOW=1")
def test__real_time_limit_requeues_until_the_run_is_done(
        slurm_cluster, fmnist_root: Path, tmp_path: Path) -> None:
    # --time=1 with --signal=USR2@30: SLURM's signal timer has ~30-60 s resolution, so the
    # USR2 comes 10-48 s into each attempt; the run needs more compute than one attempt.
    spec = tiny_spec(tmp_path / "tl.yaml", fmnist_root)
    sweep = launch.plan(spec=spec, cluster="slurm", root=tmp_path / "runs",
                        overrides=[*SLURM, "slurm.timeout_min=1", "slurm.signal_delay_s=30",
                                   "train.epochs=150", "train.ckpt_every_steps=20"])
    (run,) = sweep.runs
    assert launch.launch(sweep) == 0
    (row,) = wait_all(sweep, timeout=400)
    assert row.state == "done", row.detail
    info = json.loads((run.folder / "job.json").read_text())
    assert info["checkpoint_requeues"] >= 1 and info["restart_count"] >= 1, info
    log = Path(entries(sweep)[run.key]["stderr"]).read_text()
    assert "this job is timed-out" in log and re.search(r"resumed \S+ at step [1-9]", log)
