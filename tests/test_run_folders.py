"""One truth per run folder, one process per run folder, damaged files are one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.test_trainer import overrides
from trainer.config import config_hash, load_config, load_saved_config
from trainer.io import FolderLockedError, folder_lock
from trainer.loop import NonFiniteLossError, train
from trainer.rundir import RunFolderError
from trainer.train import main as train_main


def saved(run: Path) -> dict:
    return yaml.safe_load((run / "config.yaml").read_text())


def test__a_config_yaml_left_without_weights_is_replaced(fmnist_root: Path,
                                                         tmp_path: Path) -> None:
    """The issue's first case: a run dies before its first checkpoint; rerunning the folder
    with other settings must not leave the old settings in config.yaml."""
    run = tmp_path / "r"
    dead = load_config(overrides=overrides(fmnist_root, run, "optim.name=sgd",
                                           "optim.base_lr=1e12", "train.ckpt_every_steps=0",
                                           "train.log_every_steps=1"))
    with pytest.raises(NonFiniteLossError):
        train(dead)
    assert not (run / "checkpoint.pth").exists() and saved(run)["config_hash"] == config_hash(dead)
    assert (run / "metrics.jsonl").exists()
    cfg = load_config(overrides=overrides(fmnist_root, run, "optim.base_lr=0.5",
                                          "train.epochs=2"))
    train(cfg)
    body = saved(run)
    assert body["config"]["optim"]["base_lr"] == 0.5 and body["config"]["train"]["epochs"] == 2
    assert body["config_hash"] == config_hash(cfg) == torch.load(
        run / "checkpoint.pth", weights_only=True)["config_hash"]
    assert load_saved_config(run / "config.yaml") == cfg
    # the dead attempt's metrics are kept aside, not mixed into this run's
    stale = list(run.glob("metrics.jsonl.stale-*"))
    assert len(stale) == 1 and stale[0].name.startswith(f"metrics.jsonl.stale-"
                                                       f"{config_hash(dead)[:8]}")
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["kind"] == "step"]
    assert steps == sorted(set(steps))


def test__weights_of_another_experiment_are_refused_naming_what_differs(
        fmnist_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "r"
    train(load_config(overrides=overrides(fmnist_root, run, "train.max_steps=2")))
    before = (run / "config.yaml").read_text()
    with pytest.raises(RunFolderError, match=r"different config \(optim.base_lr: 0.2 -> 0.5"):
        train(load_config(overrides=overrides(fmnist_root, run, "optim.base_lr=0.5")))
    assert (run / "config.yaml").read_text() == before


def test__bookkeeping_changes_resume_the_run_and_are_recorded(fmnist_root: Path,
                                                              tmp_path: Path) -> None:
    """Same files under another path, another checkpoint cadence, device=cpu where auto
    resolved to cpu: the same experiment, resumed bit-identically, the change recorded."""
    straight = train(load_config(overrides=overrides(fmnist_root, tmp_path / "a")))
    run = tmp_path / "b"
    train(load_config(overrides=overrides(fmnist_root, run, "train.max_steps=10")))
    alias = tmp_path / "same-files"
    alias.symlink_to(fmnist_root, target_is_directory=True)
    cfg = load_config(overrides=[*overrides(fmnist_root, run), f"data.root={alias}",
                                 "train.ckpt_every_steps=5", "train.device=cpu"])
    train(cfg)
    a = torch.load(straight / "checkpoint.pth", weights_only=True)["module"]
    b = torch.load(run / "checkpoint.pth", weights_only=True)["module"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    body = saved(run)
    assert [s["start_step"] for s in body["sessions"]] == [0, 10]
    assert body["sessions"][1]["changed"] == {"data.root": [str(fmnist_root), str(alias)],
                                              "train.ckpt_every_steps": [3, 5],
                                              "train.device": ["auto", "cpu"],
                                              "train.max_steps": [10, 0]}
    assert body["config"]["data"]["root"] == str(alias)
    assert "data.root" in body["identity_excludes"]


def test__other_data_under_a_bookkeeping_path_is_refused(fmnist_root: Path,
                                                         tmp_path: Path) -> None:
    """data.root is bookkeeping only while it points at the same data: a folder holding
    another number of images is another experiment."""
    run = tmp_path / "r"
    train(load_config(overrides=overrides(fmnist_root, run, "train.max_steps=2")))
    fewer = tmp_path / "fewer"
    fewer.mkdir()
    from tests.conftest import make_fashion_like
    from trainer.datasets import write_idx

    for prefix, n in (("train", 160), ("t10k", 128)):
        images, labels = make_fashion_like(n, 5)
        write_idx(fewer / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(fewer / f"{prefix}-labels-idx1-ubyte.gz", labels)
    with pytest.raises(RunFolderError, match=r"steps_per_epoch: 8 -> 5"):
        train(load_config(overrides=[*overrides(fmnist_root, run), f"data.root={fewer}"]))


def test__a_locked_folder_refuses_a_second_trainer_naming_the_holder(fmnist_root: Path,
                                                                      tmp_path: Path) -> None:
    run = tmp_path / "r"
    cfg = load_config(overrides=overrides(fmnist_root, run))
    with folder_lock(run, "test holder"):
        with pytest.raises(FolderLockedError, match=rf"in use by pid {os.getpid()} on .*test "
                                                     "holder"):
            train(cfg)
    assert not (run / "config.yaml").exists()
    train(cfg)  # released: trains
    assert (run / "DONE").exists()


def test__two_trainer_processes_one_folder(fmnist_root: Path, tmp_path: Path) -> None:
    """The second process stops at once naming the first; after the first is killed
    (SIGKILL), the folder is not stuck and the run resumes to the end."""
    run = tmp_path / "r"
    args = overrides(fmnist_root, run, "train.epochs=30", "train.ckpt_every_steps=2")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "trainer.train", *args], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (run / "checkpoint.pth").exists() and time.time() < deadline:
            assert first.poll() is None, "the first trainer ended early"
            time.sleep(0.05)
        second = subprocess.run([sys.executable, "-m", "trainer.train", *args], env=env,
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        line = second.stderr.strip().splitlines()[-1]
        assert line.startswith(f"error: {run} is in use by pid {first.pid} on ")
        assert "(trainer, since" in line
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    step = torch.load(run / "checkpoint.pth", weights_only=True)["step"]
    assert step < 30 * 8
    done = train(load_config(overrides=[*args, "train.epochs=30", "train.max_steps=20"]))
    assert torch.load(done / "checkpoint.pth", weights_only=True)["step"] == max(step, 20)


DAMAGE = {
    "empty": lambda p: p.write_bytes(b""),
    "text": lambda p: p.write_text("this is not a checkpoint\n"),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "folder": lambda p: (p.unlink(), p.mkdir()),
}


@pytest.fixture(scope="module")
def trained(fmnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Path]:
    """A stopped run (4 of 24 steps) and a finished one (DONE, backbone.pth)."""
    root = tmp_path_factory.mktemp("trained")
    out = {}
    for finished in (False, True):
        run = root / f"finished-{finished}"
        train(load_config(overrides=overrides(fmnist_root, run,
                                              *(() if finished else ("train.max_steps=4",)))))
        out[finished] = run
    return out


@pytest.mark.parametrize("finished", [False, True], ids=["stopped", "finished"])
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test__a_damaged_checkpoint_is_one_line_naming_it(
        damage: str, finished: bool, trained: dict[bool, Path], fmnist_root: Path,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Mid-run and on a finished run (DONE, backbone.pth): exit 2, one line, the file named."""
    run = tmp_path / "run"
    shutil.copytree(trained[finished], run)
    DAMAGE[damage](run / "checkpoint.pth")
    assert train_main([], overrides(fmnist_root, run)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {run / 'checkpoint.pth'}: ") and "\n" not in err, err


def test__an_unreadable_config_yaml_beside_weights_is_rewritten_when_the_hash_agrees(
        fmnist_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "r"
    cfg = load_config(overrides=overrides(fmnist_root, run, "train.max_steps=2"))
    train(cfg)
    (run / "config.yaml").write_text("config: [unclosed\n")
    train(load_config(overrides=overrides(fmnist_root, run, "train.max_steps=4")))
    assert saved(run)["config_hash"] == config_hash(cfg)
    shutil.copy(run / "config.yaml", tmp_path / "keep.yaml")
    (run / "config.yaml").write_text("config: [unclosed\n")
    with pytest.raises(RunFolderError, match=r"config.yaml is unreadable: .*not valid YAML"):
        train(load_config(overrides=overrides(fmnist_root, run, "optim.base_lr=0.5")))


def test__a_precision_that_resolves_alike_is_the_same_experiment(fmnist_root: Path,
                                                                 tmp_path: Path) -> None:
    """precision=auto resolved to fp32 here; an explicit fp32 resumes it, bf16 is refused."""
    run = tmp_path / "r"
    train(load_config(overrides=overrides(fmnist_root, run, "train.max_steps=2")))
    assert saved(run)["precision"] == "fp32"
    with pytest.raises(RunFolderError, match=r"train.precision: 'auto' -> 'bf16'"):
        train(load_config(overrides=overrides(fmnist_root, run, "train.max_steps=4",
                                              "train.precision=bf16")))
    train(load_config(overrides=overrides(fmnist_root, run, "train.max_steps=4",
                                          "train.precision=fp32")))
    body = saved(run)
    assert body["sessions"][-1]["changed"]["train.precision"] == ["auto", "fp32"]
    assert torch.load(run / "checkpoint.pth", weights_only=True)["step"] == 4


def _ddp_train(rank: int, world: int, args: list[str], out: str) -> None:
    """One DDP rank: train, and write what happened to ``<out>.<rank>``."""
    try:
        train(load_config(overrides=args))
        result = {"pid": os.getpid(), "ok": True}
    except RunFolderError as e:
        result = {"pid": os.getpid(), "ok": False, "error": str(e)}
    Path(f"{out}.{rank}").write_text(json.dumps(result))


@pytest.mark.ddp
def test__under_ddp_rank_0_holds_the_folder_and_a_refusal_stops_every_rank(
        fmnist_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "r"
    root = Path(__file__).resolve().parent.parent

    def ddp(*extra: str) -> list[dict]:
        args = overrides(fmnist_root, run, "train.max_steps=4", *extra)
        code = ("import sys, json; from tests.ddp_utils import run_ddp; "
                "from tests.test_run_folders import _ddp_train; "
                "run_ddp(_ddp_train, 2, json.loads(sys.argv[1]), sys.argv[2])")
        subprocess.run([sys.executable, "-c", code, json.dumps(args), str(tmp_path / "out")],
                       cwd=root, check=True, timeout=300)  # a rank left waiting fails here
        return [json.loads((tmp_path / f"out.{r}").read_text()) for r in (0, 1)]

    first = ddp()
    assert all(r["ok"] for r in first)
    assert saved(run)["world_size"] == 2
    assert json.loads((run / ".lock").read_text())["pid"] == first[0]["pid"]
    refused = ddp("optim.base_lr=0.5")
    assert not refused[0]["ok"] and "different config (optim.base_lr: 0.2 -> 0.5" in \
        refused[0]["error"]
    assert not refused[1]["ok"] and "rank 0 could not enter" in refused[1]["error"]
