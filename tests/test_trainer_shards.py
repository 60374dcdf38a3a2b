"""The trainer on tar shards (``data.name=shards``): a run with loader workers, SIGKILL
mid-epoch then resume to bit-identical weights, and the refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dataroom.shards import open_source, write_shards
from tests.ddp_utils import run_ddp
from tests.test_trainer import assert_bit_identical, final_state, kill_after_first_checkpoint
from tests.test_trainer_files import SPE, _ddp_train, small
from trainer.config import load_config
from trainer.loop import train


@pytest.fixture(scope="module")
def shard_dir(jpeg_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "set"
    write_shards(open_source(str(jpeg_tree)), out, shard_size=20_000)
    return out


def test__shards_train_with_loader_workers_and_a_probe(shard_dir: Path, jpeg_tree: Path,
                                                       tmp_path: Path) -> None:
    run = train(load_config(overrides=small(
        tmp_path / "r", "data.name=shards", f"data.root={shard_dir}", "data.num_workers=2",
        f"data.val_root={jpeg_tree / 'val'}")))
    lines = (run / "metrics.jsonl").read_text().splitlines()
    epochs = [r for r in map(json.loads, lines) if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert all(r["bad_images"] == 0 and 0 <= r["probe_val_acc"] <= 1 for r in epochs)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train_images"] == 64 and saved["steps_per_epoch"] == SPE


def test__killed_process_resumes_mid_epoch_on_shards_to_identical_weights(
        shard_dir: Path, tmp_path: Path) -> None:
    """tests/test_trainer.py's kill test, on shards read by two loader workers."""
    extra = ("data.name=shards", f"data.root={shard_dir}", "train.epochs=3",
             "data.num_workers=2")
    straight = train(load_config(overrides=small(tmp_path / "a", *extra)))
    killed = tmp_path / "k"
    args = small(killed, *extra, "train.ckpt_every_steps=3")
    step = kill_after_first_checkpoint(args, killed)
    assert 0 < step < 3 * SPE, "the process should have been killed mid-run"
    assert not (killed / "backbone.pth").exists()
    train(load_config(overrides=args))
    assert_bit_identical(final_state(straight), final_state(killed))


@pytest.mark.ddp
def test__two_process_ddp_on_shards_stopped_mid_epoch_resumes_bit_identical(
        shard_dir: Path, tmp_path: Path) -> None:
    """A pre-empted multi-GPU week on shards, in small: 2 gloo ranks with 2 loader workers
    each stop mid-epoch (train.max_steps), a relaunch resumes from the checkpoint, and the
    weights equal the uninterrupted 2-rank run's bit for bit. (The world size is part of the
    shard layout, dataroom/stream.py, so 2 ranks are compared with 2 ranks.)"""
    extra = ("data.name=shards", f"data.root={shard_dir}", "data.num_workers=2",
             "train.epochs=2", "train.sync_bn=true")
    run_ddp(_ddp_train, 2, small(tmp_path / "straight", *extra))
    stopped = tmp_path / "stopped"
    run_ddp(_ddp_train, 2, small(stopped, *extra, f"train.max_steps={SPE + 1}"))
    assert not (stopped / "DONE").exists()
    steps = [r["step"] for r in map(json.loads, (stopped / "metrics.jsonl").read_text()
                                    .splitlines()) if r["kind"] == "step"]
    assert max(steps) <= SPE + 1 < 2 * SPE  # stopped inside epoch 2
    run_ddp(_ddp_train, 2, small(stopped, *extra))
    assert (stopped / "DONE").exists()
    assert_bit_identical(final_state(tmp_path / "straight"), final_state(stopped))
    saved = yaml.safe_load((stopped / "config.yaml").read_text())
    assert saved["world_size"] == 2 and len(saved["sessions"]) == 2


def test__bad_shard_root_is_one_line_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "trainer.train", "--dry-run",
                           *small(tmp_path / "r", "data.name=shards",
                                  f"data.root={tmp_path / 'none'}")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "no shard manifest" in err[0]
