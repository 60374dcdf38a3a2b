"""Sweeps without SLURM: spec expansion, folders, dry-run, errors, status, a local sweep."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

from sweeps import launch, manifest, status
from sweeps.cluster import (
    ClusterError,
    SlurmConfig,
    detect_cluster,
    ensure_slurm,
    local_resources,
    make_executor,
)
from sweeps.job import ERROR_FILE, Job, dist_env, node_address
from sweeps.spec import SPEC_DIR, SpecError, available_methods
from trainer.config import config_hash, default_run_dir

TINY = {"method": {"name": "vicreg", "projector": "32-32"},
        "backbone": {"name": "tiny_cnn", "width": 4},
        "aug": {"crop_size": 28},
        "train": {"epochs": 3, "batch_size": 32, "progress": False, "tensorboard": False}}


def write_spec(path: Path, **sections) -> Path:
    path.write_text(yaml.safe_dump(sections, sort_keys=False))
    return path


def tiny_base(root: Path | None = None) -> dict:
    base = json.loads(json.dumps(TINY))
    base["data"] = {"val_samples": 64, **({"root": str(root)} if root else {})}
    return base


# ----------------------------------------------------------------------------- expansion


def test__expansion_is_runs_x_grid_x_seeds_with_the_documented_precedence(tmp_path: Path) -> None:
    base = tiny_base()
    base["optim"] = {"weight_decay": 1e-3, "momentum": 0.5}
    spec = write_spec(
        tmp_path / "s.yaml", base=base,
        method_overrides={"vicreg": {"optim": {"momentum": 0.8, "lars_eta": 0.01}},
                          "simsiam": {"optim": {"name": "sgd"}}},
        runs=[{"name": "a"}, {"name": "b", "optim": {"momentum": 0.7}}],
        grid={"optim.base_lr": [0.1, 0.2]}, seeds=[0, 1])
    sweep = launch.plan(spec=spec, cluster="local", root=tmp_path / "runs",
                        overrides=["train.epochs=5"])
    assert len(sweep.runs) == 2 * 2 * 2 and sweep.name == "s"
    assert sweep.runs[0].label == "a optim.base_lr=0.1 seed=0"
    by_label = {r.label: r.cfg for r in sweep.runs}
    a, b = by_label["a optim.base_lr=0.2 seed=1"], by_label["b optim.base_lr=0.1 seed=0"]
    assert a.optim.weight_decay == 1e-3  # base
    assert a.optim.momentum == 0.8 and a.optim.lars_eta == 0.01  # method_overrides.vicreg
    assert b.optim.momentum == 0.7  # run beats method_overrides
    assert a.optim.base_lr == 0.2 and a.train.seed == 1 and a.optim.name == "lars"
    assert all(c.train.epochs == 5 for c in by_label.values())  # CLI beats all
    # the CLI beats the grid; identical configs collapse into one run
    same = launch.plan(spec=spec, cluster="local", root=tmp_path / "runs",
                       overrides=["optim.base_lr=0.5"])
    assert len(same.runs) == 2 * 2 and {r.cfg.optim.base_lr for r in same.runs} == {0.5}
    # METHOD beats base/run/grid and picks its method_overrides
    simsiam = launch.plan(method="simsiam", spec=spec, cluster="local", root=tmp_path / "runs",
                          overrides=["method.projector=32-32", "method.predictor=8-32"])
    assert simsiam.name == "s-simsiam"
    assert {(r.cfg.method.name, r.cfg.optim.name) for r in simsiam.runs} == {("simsiam", "sgd")}


def test__folders_are_named_from_the_resolved_config(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", base=tiny_base(), seeds=[0, 1])
    first = launch.plan(spec=spec, cluster="local", root=tmp_path)
    again = launch.plan(spec=spec, cluster="slurm", root=tmp_path)  # any cluster, same folders
    assert [r.folder for r in first.runs] == [r.folder for r in again.runs]
    for r in first.runs:
        assert re.fullmatch(r"vicreg-tiny_cnn-s[01]-[0-9a-f]{8}", r.folder.name)
        assert r.folder.parent == tmp_path / "s" and r.cfg.run_dir == str(r.folder)
        assert r.folder == default_run_dir(r.cfg, tmp_path / "s")
        assert r.folder.name.endswith(config_hash(r.cfg)[:8])
    stop_early = launch.plan(spec=spec, cluster="local", root=tmp_path,
                             overrides=["train.max_steps=3"])
    assert [r.folder for r in stop_early.runs] == [r.folder for r in first.runs]
    other = launch.plan(spec=spec, cluster="local", root=tmp_path, overrides=["train.epochs=4"])
    assert not {r.folder for r in other.runs} & {r.folder for r in first.runs}


@pytest.mark.usefixtures("imagenet_env")  # the paper specs read ImageNet
@pytest.mark.parametrize("spec", sorted(p.name for p in SPEC_DIR.glob("*.yaml")))
def test__every_repo_spec_expands(spec: str, tmp_path: Path) -> None:
    methods = available_methods() if spec == "cpu.yaml" else [None]
    for m in methods:
        sweep = launch.plan(method=m, spec=SPEC_DIR / spec, cluster="local", root=tmp_path)
        assert sweep.runs
        if m:
            assert {r.cfg.method.name for r in sweep.runs} == {m}


@pytest.mark.usefixtures("imagenet_env")
def test__vicreg_default_spec_is_the_paper_recipe(tmp_path: Path) -> None:
    sweep = launch.plan(method="vicreg", cluster="slurm", root=tmp_path)
    assert sweep.spec.path == SPEC_DIR / "vicreg.yaml" and sweep.name == "vicreg"
    (run,) = sweep.runs
    c = run.cfg
    assert (c.backbone.name, c.optim.name, c.optim.base_lr, c.optim.weight_decay) == (
        "resnet50", "lars", 0.2, 1e-6)
    assert (c.optim.warmup_epochs, c.optim.final_lr_fraction, c.train.batch_size,
            c.train.epochs, c.aug.recipe) == (10, 0.001, 2048, 1000, "vicreg")
    assert sweep.slurm.nodes * sweep.slurm.num_tasks_per_node == 32  # the paper's 32 GPUs


@pytest.mark.usefixtures("imagenet_env")
@pytest.mark.parametrize("method, gpus", [("vicreg", 32), ("barlow_twins", 32), ("simclr", 32),
                                          ("byol", 32), ("simsiam", 8)])
def test__paper_specs_ask_slurm_for_gpus_and_cores(method: str, gpus: int,
                                                   tmp_path: Path) -> None:
    # a paper recipe (ResNet-50, ImageNet, batch 512-4096) must not go out as a 1-CPU job
    sweep = launch.plan(method=method, cluster="slurm", root=tmp_path)
    s = sweep.slurm
    assert s.nodes * s.gpus_per_node == gpus and s.num_tasks_per_node == s.gpus_per_node
    assert s.cpus_per_task >= 8 and s.timeout_min >= 24 * 60
    batch = sweep.runs[0].cfg.train.batch_size
    assert batch % gpus == 0 and batch // gpus >= 64  # every GPU gets a real share


def test__cpu_spec_gives_each_method_its_optimizer(tmp_path: Path) -> None:
    simsiam = launch.plan(method="simsiam", spec=SPEC_DIR / "cpu.yaml", cluster="local",
                          root=tmp_path)
    vicreg = launch.plan(method="vicreg", spec=SPEC_DIR / "cpu.yaml", cluster="local",
                         root=tmp_path)
    assert simsiam.runs[0].cfg.optim.name == "sgd" and vicreg.runs[0].cfg.optim.name == "lars"
    for s in (simsiam, vicreg):
        c = s.runs[0].cfg
        assert (c.backbone.name, c.aug.crop_size, c.data.name) == (
            "resnet18_small", 28, "fashion_mnist")
    assert simsiam.folder == tmp_path / "cpu-simsiam"


# ----------------------------------------------------------------------------- CLI, errors


def test__dry_run_prints_runs_and_folders_and_writes_nothing(tmp_path: Path, capsys) -> None:
    spec = write_spec(tmp_path / "s.yaml", base=tiny_base(), grid={"optim.base_lr": [0.1, 0.3]})
    rc = launch.cli(["--spec", str(spec), "--cluster", "local", "--root", str(tmp_path / "r"),
                     "--dry-run", "seeds=[3]", "slurm.cpus_per_task=1"])
    out = capsys.readouterr().out
    assert rc == 0 and "2 run(s)" in out and "cluster: local" in out
    for lr in ("0.1", "0.3"):
        assert f"optim.base_lr={lr} seed=3" in out
    assert len(re.findall(r"new +\S+/r/s/vicreg-tiny_cnn-s3-[0-9a-f]{8}", out)) == 2
    assert not (tmp_path / "r").exists()


BAD_SPECS = [
    ({"bse": {}}, "unknown top-level key(s) bse"),
    ({"grid": {"optim.base_lr": 0.1}}, "grid.optim.base_lr: expected a non-empty list"),
    ({"seeds": ["a"]}, "seeds: expected a non-empty list of integers"),
    ({"runs": [{"optim": {}}]}, "runs[0]: expected a mapping with a string 'name'"),
    ({"base": {"optim": {"base_lrr": 0.1}}},
     "base (method vicreg): unknown config key(s) base_lrr"),
    ({"grid": {"optim.lr": [0.1]}}, "grid.optim.lr=0.1 (method vicreg): unknown config key(s) lr"),
    ({"runs": [{"name": "x", "train": {"epochs": "many"}}]},
     "runs[x] (method vicreg): train.epochs"),
    ({"method_overrides": {"vicreg": {"optim": {"nme": "sgd"}}}}, "method_overrides.vicreg:"),
    ({"slurm": {"partion": "debug"}}, "slurm: unknown config key(s) partion"),
    ({"eval": {"suite": 3}}, "eval: suite: expected str"),
]


@pytest.mark.parametrize("body,message", BAD_SPECS)
def test__malformed_spec_names_file_and_key(body: dict, message: str, tmp_path: Path,
                                            capsys) -> None:
    spec = write_spec(tmp_path / "bad.yaml", **body)
    with pytest.raises(SpecError) as e:
        launch.plan(spec=spec, cluster="local", root=tmp_path)
    assert str(e.value).startswith(str(spec)) and message in str(e.value)
    assert launch.cli(["--spec", str(spec), "--dry-run", "--cluster", "local"]) == 2
    assert message in capsys.readouterr().err


def test__bad_yaml_unknown_method_and_bad_cli_key(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: {method: [\n")
    with pytest.raises(SpecError, match=f"{bad}: not valid YAML"):
        launch.plan(spec=bad, cluster="local")
    assert launch.cli(["--method", "nope", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "unknown METHOD 'nope'" in err and all(m in err for m in available_methods())
    spec = write_spec(tmp_path / "s.yaml", base=tiny_base())
    with pytest.raises(SpecError, match="command line override: unknown config key.*epoch"):
        launch.plan(spec=spec, cluster="local", overrides=["train.epoch=3"])
    with pytest.raises(SpecError, match="CLUSTER='pbs'"):
        launch.plan(spec=spec, cluster="pbs")


def test__cluster_auto_detection_and_unreachable_controller(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch
    assert detect_cluster("auto") == "local"
    with pytest.raises(ClusterError, match="CLUSTER=local"):
        ensure_slurm()
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for tool in ("sbatch", "srun"):
        (fake_bin / tool).write_text("#!/bin/sh\nexit 1\n")
        (fake_bin / tool).chmod(0o755)
    # scontrol: the real one when installed (a controller on a closed port), else a stub
    real = shutil.which("scontrol", path=os.defpath + ":/usr/bin:/usr/sbin")
    if real:
        (fake_bin / "scontrol").symlink_to(real)
    else:
        (fake_bin / "scontrol").write_text("#!/bin/sh\necho 'Slurmctld(primary) at x is DOWN'\n"
                                           "exit 1\n")
        (fake_bin / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", str(fake_bin))
    assert detect_cluster("auto") == "slurm"
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=x\nSlurmctldHost=nohost(127.0.0.1)\nSlurmctldPort=9\n"
                    "AuthType=auth/munge\nNodeName=a CPUs=1\nPartitionName=p Nodes=ALL\n")
    monkeypatch.setenv("SLURM_CONF", str(conf))
    with pytest.raises(ClusterError, match="controller is unreachable.*CLUSTER=local"):
        ensure_slurm()
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "missing.conf"))
    with pytest.raises(ClusterError, match="does not exist.*CLUSTER=local"):
        ensure_slurm()


# ----------------------------------------------------------------------------- job, executor


def test__ddp_environment_comes_from_submitit_job_environment(monkeypatch) -> None:
    for k in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(k, raising=False)
    env = dict(SUBMITIT_EXECUTOR="slurm", SLURM_JOB_ID="1234", SLURM_NTASKS="4",
               SLURM_PROCID="3", SLURM_LOCALID="1", SLURM_JOB_NUM_NODES="2", SLURM_NODEID="1",
               SLURM_JOB_NODELIST="gpu[07-08]")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    # gpu07 does not resolve here, and no scontrol answers for it: the name itself
    monkeypatch.setenv("PATH", "/nonexistent")
    assert dist_env() == {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1",
                          "MASTER_ADDR": "gpu07", "MASTER_PORT": str(20000 + 1234)}
    monkeypatch.setenv("SLURM_JOB_NODELIST", "localhost,gpu08")  # resolves: its address
    assert dist_env()["MASTER_ADDR"] == "127.0.0.1"
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert dist_env() == {}
    monkeypatch.delenv("SUBMITIT_EXECUTOR")
    assert dist_env() == {}  # not inside a job


def test__node_address_falls_back_to_slurms_node_addr(tmp_path: Path, monkeypatch) -> None:
    # a node whose name does not resolve: the NodeAddr slurmctld has for it
    scontrol = tmp_path / "scontrol"
    scontrol.write_text('#!/bin/sh\n[ "$3 $4" = "node gpu07" ] && '
                        'echo "NodeName=gpu07 Arch=x86_64 NodeAddr=10.1.2.7 NodeHostName=gpu07"\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert node_address("gpu07.invalid") == "gpu07.invalid"
    assert node_address("gpu07") in ("10.1.2.7", _resolved("gpu07"))
    assert node_address("localhost") == "127.0.0.1"


def _resolved(name: str) -> str:
    import socket

    try:
        return socket.gethostbyname(name)
    except OSError:
        return ""


def _boom(arg: str) -> None:
    raise ValueError(f"boom {arg}")


def test__job_records_errors_and_checkpoint_requeues_itself(tmp_path: Path) -> None:
    job = Job(_boom, "x", str(tmp_path))
    with pytest.raises(ValueError):
        job()
    assert "ValueError: boom x" in (tmp_path / ERROR_FILE).read_text()
    assert json.loads((tmp_path / "job.json").read_text())["kind"] == "train"
    again = job.checkpoint()
    assert again.function is job and again.args == ()
    ok = Job(str.upper, "y", str(tmp_path))
    assert ok() == "Y" and not (tmp_path / ERROR_FILE).exists()  # a new attempt clears it


@pytest.mark.skipif(shutil.which("srun") is None, reason="submitit's SLURM executor needs srun")
def test__sbatch_flags_come_from_slurm_config(tmp_path: Path) -> None:
    cfg = SlurmConfig(partition="gpu", account="proj", qos="high", constraint="a100",
                      timeout_min=90, mem_gb=64, nodes=2, gpus_per_node=4, cpus_per_task=8,
                      array_parallelism=3, additional={"mail-type": "END"})
    ex = make_executor("slurm", tmp_path, cfg, dependency="afterok:12_3")
    text = ex._executor._make_submission_file_text("cmd", "uid")
    for flag in ("--partition=gpu", "--account=proj", "--qos=high", "--constraint=a100",
                 "--time=90", "--mem=64GB", "--nodes=2", "--ntasks-per-node=4",
                 "--gpus-per-node=4", "--cpus-per-task=8", "--mail-type=END",
                 "--dependency=afterok:12_3", "--kill-on-invalid-dep=yes", "--signal=USR2@120"):
        assert f"#SBATCH {flag}" in text, flag
    assert ex._executor.parameters["array_parallelism"] == 3


def test__local_resources_fit_this_machine() -> None:
    paper = local_resources(SlurmConfig(nodes=4, gpus_per_node=8, cpus_per_task=999))
    assert paper.nodes == 1 and paper.cpus_per_task == os.cpu_count()
    assert paper.num_tasks_per_node == max(paper.gpus_per_node, 1)
    cpu_ddp = local_resources(SlurmConfig(tasks_per_node=2))
    assert (cpu_ddp.nodes, cpu_ddp.num_tasks_per_node) == (1, 2)


def test__unset_cpus_per_task_shares_the_cores_locally_and_is_1_on_slurm(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert local_resources(SlurmConfig()).cpus_per_task == 8  # one run at a time: all cores
    assert local_resources(SlurmConfig(array_parallelism=2)).cpus_per_task == 4
    assert local_resources(SlurmConfig(nodes=2, tasks_per_node=2)).cpus_per_task == 2
    assert local_resources(SlurmConfig(array_parallelism=16)).cpus_per_task == 1
    assert local_resources(SlurmConfig(cpus_per_task=3)).cpus_per_task == 3  # as asked
    # through the launcher: a spec without a slurm section (sweeps/specs/demo.yaml)
    local = launch.plan(spec=SPEC_DIR / "demo.yaml", cluster="local", root=tmp_path)
    assert local.slurm.cpus_per_task == 8
    job = launch.train_job(local, local.runs[0])
    assert job.num_threads == 8
    on_slurm = launch.plan(spec=SPEC_DIR / "demo.yaml", cluster="slurm", root=tmp_path)
    assert on_slurm.slurm.cpus_per_task == 1  # SLURM's default; a spec asks for more


# ----------------------------------------------------------------------------- status


def _fake_sweep(tmp_path: Path, cluster: str, states: dict[str, dict]) -> Path:
    sweep = tmp_path / "sw"
    with manifest.update(sweep) as data:
        data["cluster"] = cluster
        for key, st in states.items():
            folder = sweep / key
            folder.mkdir(parents=True)
            for name, text in st.get("files", {}).items():
                (folder / name).write_text(text)
            data["runs"][key] = {"label": key, "run_dir": str(folder), "cluster": cluster,
                                 **st.get("entry", {})}
    return sweep


def test__status_states_from_folders_and_sacct(tmp_path: Path, monkeypatch, capsys) -> None:
    log = tmp_path / "7_3_0_log.err"
    log.write_text("starting\nslurmstepd: error: *** JOB 7_3 CANCELLED AT 12:00 ***\n")
    steps = "\n".join(json.dumps({"kind": "step", "step": s}) for s in (5, 10)) + "\n"
    sweep = _fake_sweep(tmp_path, "slurm", {
        "done": {"files": {"DONE": "24\n", "config.yaml": "total_steps: 24\n"},
                 "entry": {"job_id": "7_0"}},
        "pending": {"entry": {"job_id": "7_1"}},
        "running": {"files": {"metrics.jsonl": steps, "config.yaml": "total_steps: 24\n"},
                    "entry": {"job_id": "7_2"}},
        "cancelled": {"entry": {"job_id": "7_3", "stderr": str(log)}},
        "raised": {"files": {ERROR_FILE: "Traceback...\nNonFiniteLossError: loss became NaN\n"},
                   "entry": {"job_id": "7_4"}},
        "stopped": {"files": {"checkpoint.pth": ""}, "entry": {"job_id": "7_5"}},
        "new": {},
    })
    monkeypatch.setattr(status, "slurm_states", lambda ids: {
        "7_0": "COMPLETED", "7_1": "PENDING", "7_2": "RUNNING", "7_3": "CANCELLED",
        "7_4": "FAILED", "7_5": "COMPLETED"})
    _, rows = status.collect(sweep)
    got = {r.key: r.state for r in rows}
    assert got == {"done": "done", "pending": "pending", "running": "running",
                   "cancelled": "failed", "raised": "failed", "stopped": "stopped", "new": "new"}
    by_key = {r.key: r for r in rows}
    assert by_key["running"].progress == "10/24" and by_key["done"].progress == "24/24"
    assert "CANCELLED" in by_key["cancelled"].detail and "JOB 7_3 CANCELLED" in by_key[
        "cancelled"].detail
    assert status.main([str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "7 runs" in out and "NonFiniteLossError: loss became NaN" in out
    assert re.search(r"running +running +10/24 +7_2", out)

    def unreachable(ids: list[str]) -> dict[str, str]:
        raise ClusterError("squeue failed")

    monkeypatch.setattr(status, "slurm_states", unreachable)
    _, rows = status.collect(sweep)
    got = {r.key: r.state for r in rows}
    assert got["running"] == "unknown" and got["done"] == "done" and got["raised"] == "failed"


def test__local_status_uses_the_process_table(tmp_path: Path) -> None:
    import subprocess

    # a live process whose command line names submitit, like a LocalExecutor controller
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "submitit"])
    try:
        sweep = _fake_sweep(tmp_path, "local", {
            "gone": {"files": {"checkpoint.pth": ""}, "entry": {"job_id": "999999999"}},
            "alive": {"entry": {"job_id": str(proc.pid)}},
            "not_ours": {"entry": {"job_id": str(os.getpid())}}})
        _, rows = status.collect(sweep)
    finally:
        proc.kill()
        proc.wait()
    assert {r.key: r.state for r in rows} == {"gone": "stopped", "alive": "running",
                                              "not_ours": "stopped"}


# ----------------------------------------------------------------------------- local sweep


STAND_IN_EVAL = """\
import argparse, json, pathlib
p = argparse.ArgumentParser()
p.add_argument("ckpt"); p.add_argument("--suite"); p.add_argument("--out")
a = p.parse_args()
assert pathlib.Path(a.ckpt).is_file(), a.ckpt
pathlib.Path(a.out).mkdir(parents=True, exist_ok=True)
pathlib.Path(a.out, "result.json").write_text(json.dumps({"suite": a.suite, "ckpt": a.ckpt}))
"""


def test__local_sweep_runs_chains_eval_and_reports_a_failed_run(
        fmnist_root: Path, tmp_path: Path, capsys) -> None:
    stand_in = tmp_path / "run_all.py"  # eval/run_all.py's CLI, without the work
    stand_in.write_text(STAND_IN_EVAL)
    spec = write_spec(tmp_path / "loc.yaml", base=tiny_base(fmnist_root),
                      runs=[{"name": "ok"}, {"name": "bad", "train": {"batch_size": 1024}}],
                      eval={"suite": "mini", "script": str(stand_in), "out": "{run_dir}/ev"})
    sweep = launch.plan(spec=spec, cluster="local", root=tmp_path / "runs",
                        overrides=["slurm.array_parallelism=2", "train.epochs=1"])
    assert launch.launch(sweep) == 1  # one run failed; the other finished
    ok, bad = sweep.runs
    for name in ("metrics.jsonl", "backbone.pth", "DONE", "config.yaml"):
        assert (ok.folder / name).exists(), name
    result = json.loads((ok.folder / "ev" / "result.json").read_text())
    assert result == {"suite": "mini", "ckpt": str((ok.folder / "backbone.pth").resolve())}
    assert (ok.folder / "eval-mini.done").exists() and not (bad.folder / "eval-mini.done").exists()
    assert "exceeds the 256 training images" in (bad.folder / ERROR_FILE).read_text()
    data, rows = status.collect(sweep.folder)
    assert data["cluster"] == "local" and set(data["runs"]) == {ok.key, bad.key}
    states = {r.label: (r.state, r.eval_state) for r in rows}
    assert states["ok"] == ("done", "done") and states["bad"][0] == "failed"
    assert "exceeds the 256 training images" in status.format_table(sweep.folder, data, rows)
    # relaunching skips the finished run (and its eval) and retries only the failed one
    capsys.readouterr()
    assert launch.main(None, str(spec), "local", ["slurm.array_parallelism=2",
                                                  "train.epochs=1"], "", str(tmp_path / "runs"),
                       dry_run=True, wait=False) == 0
    out = capsys.readouterr().out
    assert re.search(r"ok +done", out) and re.search(r"bad +new", out)


def test__package_entry_points_have_help() -> None:
    import subprocess

    for module in ("sweeps.launch", "sweeps.status", "sweeps.probe"):
        proc = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                              text=True, cwd=Path(__file__).resolve().parents[1])
        assert proc.returncode == 0 and "usage" in proc.stdout


def test__eval_command_defaults_to_the_records_folder_results_reads(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", base=tiny_base(), eval="fast")
    sweep = launch.plan(spec=spec, cluster="local", root=tmp_path)
    (run,) = sweep.runs
    cmd = launch.eval_job(sweep, run).arg
    argv = cmd.argv()
    assert argv[1] == str(Path(launch.REPO_ROOT) / "eval" / "run_all.py")
    assert argv[2:] == [str(run.folder.resolve() / "backbone.pth"), "--suite", "fast"]
    assert cmd.cwd == str(launch.REPO_ROOT)  # run_all's default --out: results/records
    assert cmd.done_file == str(run.folder.resolve() / "eval-fast.done")


@pytest.mark.parametrize("method", ["vicreg", "barlow_twins", "simclr"])
def test__branches_spec_is_vicreg_table_5(method: str, tmp_path: Path) -> None:
    sweep = launch.plan(method=method, spec=SPEC_DIR / "branches.yaml", cluster="local",
                        root=tmp_path)
    got = {r.label.split()[0]: (r.cfg.backbone.name, r.cfg.backbone_b.name) for r in sweep.runs}
    assert got == {"shared": ("resnet50", ""), "unshared": ("resnet50", "resnet50"),
                   "r50_r101": ("resnet50", "resnet101"),
                   "r50_vits": ("resnet50", "vit_small_patch16")}
    assert all(r.cfg.method.name == method and r.cfg.train.epochs == 100 for r in sweep.runs)


def test__probe_reports_each_finished_run_with_its_diagnostics(fmnist_root: Path,
                                                               tmp_path: Path, capsys) -> None:
    from sweeps import probe

    spec = write_spec(tmp_path / "p.yaml", base=tiny_base(fmnist_root),
                      runs=[{"name": "a"}, {"name": "b", "method": {"variance_weight": 0}}])
    sweep = launch.plan(spec=spec, cluster="local", root=tmp_path / "runs",
                        overrides=["train.epochs=1"])
    assert launch.launch(sweep) == 0
    a, b = sweep.runs
    (b.folder / "backbone.pth").rename(b.folder / "unfinished")  # left out, not an error
    assert probe.main([str(sweep.folder)], labelled=128, random_init=True) == 0
    table = capsys.readouterr().out
    body = json.loads((a.folder / probe.PROBE_FILE).read_text())
    assert body["labelled"] == 128 and body["num_test"] == 128
    assert 0 <= body["knn"] <= 100 and 0 <= body["linear"] <= 100
    diag = probe.last_epoch(a.folder)
    assert diag["epoch"] == 1
    row = next(line for line in table.splitlines() if line.startswith("| a |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:3] == [f"{diag['std_mean']:.4f}", f"{diag['std_l2']:.4f}"]
    assert cells[3] == (f"{diag['effective_rank']:.1f} "
                        f"({diag['effective_rank_centered']:.1f})")
    assert cells[5:] == [f"{body['linear']:.1f}", f"{body['knn']:.1f}"]
    assert not any(line.startswith("| b ") for line in table.splitlines())
    assert sum(line.startswith("| random init: tiny_cnn") for line in table.splitlines()) == 1
    # probe.json is reused while the backbone is unchanged, and redone when it changes
    before = (a.folder / probe.PROBE_FILE).stat().st_mtime_ns
    assert probe.probe_run(a.folder, 128) == body
    assert (a.folder / probe.PROBE_FILE).stat().st_mtime_ns == before
    ckpt = torch.load(a.folder / "backbone.pth", weights_only=True)
    ckpt["state_dict"] = {k: torch.zeros_like(v) for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, a.folder / "backbone.pth")
    redone = probe.probe_run(a.folder, 128)
    assert redone["backbone_sha256"] != body["backbone_sha256"]
    assert redone["knn"] != body["knn"] or redone["linear"] != body["linear"]
    (a.folder / probe.PROBE_FILE).write_text('{"labelled": 128, "lin')  # torn: probed again
    assert probe.probe_run(a.folder, 128) == redone


def test__demo_compares_pretrained_random_init_and_raw_pixels(fmnist_root: Path,
                                                              tmp_path: Path, capsys) -> None:
    from sweeps import demo
    from trainer.config import load_config
    from trainer.loop import train

    cfg = load_config(overrides=[f"data.root={fmnist_root}", f"run_dir={tmp_path / 'run'}",
                                 "backbone.name=tiny_cnn", "backbone.width=4",
                                 "method.projector=32-32", "train.epochs=1",
                                 "train.batch_size=32", "data.val_samples=64",
                                 "aug.crop_size=28", "train.progress=false",
                                 "train.tensorboard=false"])
    rows = demo.compare(train(cfg), labelled=128)
    assert list(rows) == ["vicreg pretrained", "same backbone, random init", "raw pixels"]
    assert all(0 <= r["linear"] <= 100 for r in rows.values())
    assert rows["raw pixels"]["knn"] != rows["raw pixels"]["knn"]  # NaN: no kNN on pixels
    # the pretrained and the random-init backbone are different networks
    assert rows["vicreg pretrained"] != rows["same backbone, random init"]
    out = capsys.readouterr().out
    assert "probes fit on 128 labelled training images, evaluated on 128 test images" in out


def test__probe_holdout_is_the_tail_of_the_training_set_unseen_in_pretraining(
        fmnist_root: Path) -> None:
    from sweeps import probe
    from trainer.config import ConfigError, load_config
    from trainer.datasets import DATASETS

    full = DATASETS.build("fashion_mnist", root=str(fmnist_root), split="train")  # 256 images
    cfg = load_config(overrides=[f"data.root={fmnist_root}", "data.num_samples=192",
                                 "aug.crop_size=28"])
    fit, held, crop = probe.labelled_splits(cfg, 128, holdout=64)
    assert crop == 28 and len(fit) == 128 and len(held) == 64
    assert torch.equal(fit.images, full.images[:128])
    assert torch.equal(held.images, full.images[192:]) and torch.equal(held.labels,
                                                                        full.labels[192:])
    assert held.mean == full.mean  # normalised like the training images
    for bad, labelled, why in (("data.num_samples=0", 128, "pretrained on the first 256"),
                               ("data.num_samples=193", 128, "data.num_samples<=192"),
                               ("data.num_samples=192", 200, "must not overlap")):
        cfg = load_config(overrides=[f"data.root={fmnist_root}", bad])
        with pytest.raises(ConfigError, match=why):
            probe.labelled_splits(cfg, labelled, holdout=64)
