"""The trainer end to end on a tiny Fashion-MNIST in the real IDX layout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from trainer.config import config_hash, load_config
from trainer.loop import NonFiniteLossError, train


def overrides(root: Path, run_dir: Path, *extra: str) -> list[str]:
    return [f"data.root={root}", f"run_dir={run_dir}", "backbone.name=tiny_cnn",
            "backbone.width=4", "method.projector=32-32", "train.epochs=3",
            "train.batch_size=32", "data.val_samples=64", "aug.crop_size=28",
            "train.ckpt_every_steps=3", "train.progress=false", "train.tensorboard=false",
            "train.log_every_steps=4", *extra]


def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoint.pth", weights_only=True)["module"]


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test__run_folder_contents_and_backbone_export(fmnist_root: Path, tmp_path: Path) -> None:
    cfg = load_config(overrides=overrides(fmnist_root, tmp_path / "run"))
    run_dir = train(cfg)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["config_hash"] == config_hash(cfg) and saved["git_sha"]
    assert saved["peak_lr"] == pytest.approx(0.2 * 32 / 256)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    for key in ("loss", "invariance", "variance", "covariance", "probe_train_acc",
                "probe_val_acc", "std_mean", "std_min", "effective_rank", "lr"):
        assert all(key in r for r in epochs), key
    ckpt = torch.load(run_dir / "backbone.pth", weights_only=True)
    assert ckpt["format"] == "sslbench.backbone/1"
    meta = ckpt["meta"]
    assert meta["backbone"] == "tiny_cnn" and meta["backbone_kwargs"] == {"width": 4}
    assert meta["method"] == "vicreg" and meta["steps_done"] == meta["steps_total"] == 24
    assert not any(k.startswith(("projector", "method.")) for k in ckpt["state_dict"])
    # re-launching a finished run does nothing and changes nothing
    before = (run_dir / "checkpoint.pth").stat().st_mtime_ns
    train(cfg)
    assert (run_dir / "checkpoint.pth").stat().st_mtime_ns == before


def test__stop_and_resume_mid_epoch_is_bit_identical(fmnist_root: Path, tmp_path: Path) -> None:
    straight = train(load_config(overrides=overrides(fmnist_root, tmp_path / "a")))
    # 10 steps is mid-epoch (8 steps per epoch) and between checkpoints at 9 and 12.
    split = tmp_path / "b"
    train(load_config(overrides=overrides(fmnist_root, split, "train.max_steps=10")))
    assert torch.load(split / "checkpoint.pth", weights_only=True)["step"] == 10
    assert not (split / "DONE").exists()
    train(load_config(overrides=overrides(fmnist_root, split)))
    assert_bit_identical(final_state(straight), final_state(split))


def kill_after_first_checkpoint(args: list[str], run_dir: Path) -> int:
    """Start ``trainer.train args`` in a child, SIGKILL it once its first checkpoint exists;
    return the checkpoint's step (the backbone export must not exist yet)."""
    # Same thread count as this process: bit-exactness holds for a fixed reduction order.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-m", "trainer.train", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = run_dir / "checkpoint.pth"
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "the run wrote no checkpoint before it ended"
    assert not (run_dir / "backbone.pth").exists(), "the process should have been killed mid-run"
    return torch.load(ckpt, weights_only=True)["step"]


def test__killed_process_resumes_to_identical_weights(fmnist_root: Path, tmp_path: Path) -> None:
    straight = train(load_config(overrides=overrides(fmnist_root, tmp_path / "a",
                                                     "train.epochs=4")))
    killed = tmp_path / "k"
    args = overrides(fmnist_root, killed, "train.epochs=4", "train.ckpt_every_steps=2")
    step = kill_after_first_checkpoint(args, killed)
    assert 0 < step < 32, "the process should have been killed mid-run"
    assert not (killed / "backbone.pth").exists()
    train(load_config(overrides=args))
    assert_bit_identical(final_state(straight), final_state(killed))


def test__nan_loss_stops_with_clear_error_and_keeps_last_good(fmnist_root: Path,
                                                              tmp_path: Path) -> None:
    run = tmp_path / "nan"
    cfg = load_config(overrides=overrides(
        fmnist_root, run, "optim.name=sgd", "optim.base_lr=1e12", "optim.warmup_epochs=0.5",
        "train.ckpt_every_steps=1"))
    with pytest.raises(NonFiniteLossError, match="last good checkpoint"):
        train(cfg)
    state = torch.load(run / "checkpoint.pth", weights_only=True)
    assert state["step"] >= 1
    assert all(torch.isfinite(v).all() for v in state["module"].values() if v.is_floating_point())
    assert not (run / "backbone.pth").exists()


def test__checkpoint_of_another_config_is_refused(fmnist_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "r"
    train(load_config(overrides=overrides(fmnist_root, run, "train.max_steps=2")))
    with pytest.raises(RuntimeError, match="different config"):
        train(load_config(overrides=overrides(fmnist_root, run, "optim.base_lr=0.5")))


def test__cli_rejects_typos(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "trainer.train", "--dry-run", "train.epoch=3"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "valid keys" in out.stderr and "epochs" in out.stderr


def test__unshared_branches_train_resume_and_export_both(fmnist_root: Path,
                                                         tmp_path: Path) -> None:
    """VICReg Table 5 at toy scale: view b through a wider tiny_cnn with its own projector."""
    from eval.checkpoint import load_backbone

    extra = ("backbone_b=tiny_cnn", "backbone_b.width=6")
    straight = train(load_config(overrides=overrides(fmnist_root, tmp_path / "a", *extra)))
    split = tmp_path / "b"
    train(load_config(overrides=overrides(fmnist_root, split, *extra, "train.max_steps=10")))
    train(load_config(overrides=overrides(fmnist_root, split, *extra)))
    state = final_state(straight)
    assert_bit_identical(state, final_state(split))
    assert any(k.startswith("method.backbone_b.") for k in state)
    assert any(k.startswith("method.projector_b.") for k in state)
    a = torch.load(straight / "backbone.pth", weights_only=True)
    b = torch.load(straight / "backbone_b.pth", weights_only=True)
    assert a["meta"]["branch"] == "a" and b["meta"]["branch"] == "b"
    assert a["meta"]["branch_b"] == {"backbone": "tiny_cnn", "backbone_kwargs": {"width": 6},
                                     "num_features": 12, "file": "backbone_b.pth"}
    for ckpt, prefix in ((a, "method.backbone."), (b, "method.backbone_b.")):
        assert ckpt["state_dict"].keys() == {k[len(prefix):] for k in state
                                            if k.startswith(prefix)}
        for k, v in ckpt["state_dict"].items():
            assert torch.equal(v, state[prefix + k]), k
    net_b, _ = load_backbone(straight / "backbone_b.pth")
    assert net_b.num_features == 12


def test__fp16_skipped_step_leaves_the_byol_target_alone(fmnist_root: Path,
                                                         tmp_path: Path) -> None:
    """fp16 on the CPU: a step the GradScaler skips (inf gradients) moves neither the
    online weights nor BYOL's EMA target; the next good step moves both."""
    from trainer.dist import init_distributed
    from trainer.loop import build_run, train_step

    cfg = load_config(overrides=overrides(fmnist_root, tmp_path / "run", "method.name=byol",
                                          "method.predictor=32-32", "train.precision=fp16"))
    run = build_run(cfg, init_distributed("cpu"), tmp_path / "run")
    method = run.module.method

    def snapshot() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return ([p.detach().clone() for p in method.backbone.parameters()],
                [p.detach().clone() for p in method.target.parameters()])

    # Target and online start equal; perturb the online side so an EMA step would show.
    with torch.no_grad():
        for p in method.backbone.parameters():
            p.add_(0.01)
    online0, target0 = snapshot()
    run.scaler = torch.amp.GradScaler("cpu", init_scale=3e38)  # the scaled loss overflows
    train_step(run, 0, 10)
    online1, target1 = snapshot()
    assert run.scaler.get_scale() < 3e38
    assert all(torch.equal(a, b) for a, b in zip(online0, online1))
    assert all(torch.equal(a, b) for a, b in zip(target0, target1))
    run.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    train_step(run, 1, 10)
    online2, target2 = snapshot()
    assert not all(torch.equal(a, b) for a, b in zip(online1, online2))
    assert not all(torch.equal(a, b) for a, b in zip(target1, target2))
