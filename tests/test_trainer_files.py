"""The trainer on image files (JPEG trees written by ``dataroom.synthetic``): loader workers,
mid-epoch resume after SIGKILL, DDP equality, each rank's share, bad images, unlabeled
folders with and without a probe, and the refusals (missing root, dry-run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from dataroom import TooManyBadImages
from dataroom.synthetic import write_tree
from tests.ddp_utils import run_ddp
from tests.test_trainer import assert_bit_identical, final_state, kill_after_first_checkpoint
from trainer.config import load_config
from trainer.loop import train

CLASSES = ("apple", "boat", "cloud", "dog")
BATCH, SPE = 16, 4  # 64 training images: 4 steps per epoch


def small(run_dir: Path, *extra: str) -> list[str]:
    return [f"run_dir={run_dir}", "backbone.name=tiny_cnn", "backbone.width=4",
            "method.projector=32-32", "aug.crop_size=16", f"train.batch_size={BATCH}",
            "train.epochs=2", "train.ckpt_every_steps=3", "train.log_every_steps=2",
            "train.progress=false", "train.tensorboard=false", "train.device=cpu",
            "data.val_samples=16", "data.num_workers=0", *extra]


def folder(root: Path) -> list[str]:
    return ["data.name=image_folder", f"data.root={root}"]


@pytest.fixture(scope="module")
def unlabeled_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 JPEGs at several depths, no classes."""
    root = tmp_path_factory.mktemp("unlabeled")
    write_tree(root, {"a": 20, "a/b": 20, "c/d/e": 20, ".": 4}, size=(40, 48), seed=500)
    return root


def records(run_dir: Path, kind: str = "epoch") -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test__jpeg_folder_trains_with_loader_workers(jpeg_tree: Path, tmp_path: Path) -> None:
    run = train(load_config(overrides=small(tmp_path / "r", *folder(jpeg_tree),
                                            "data.num_workers=2")))
    epochs = records(run)
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert all(r["bad_images"] == 0 for r in epochs)
    assert all(0 <= r["probe_val_acc"] <= 1 and r["std_mean"] > 0 for r in epochs)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train_images"] == 64 and saved["steps_per_epoch"] == SPE
    assert "online probe on" in saved["probe"] and str(jpeg_tree / "val") in saved["probe"]
    meta = torch.load(run / "backbone.pth", weights_only=True)["meta"]
    assert meta["steps_done"] == 2 * SPE
    assert "bad_images" in torch.load(run / "checkpoint.pth", weights_only=True)


def test__gpu_decode_path_trains_on_the_cpu_device(jpeg_tree: Path, tmp_path: Path) -> None:
    """``data.decode=gpu``: the device decoder's logic, run on the CPU device."""
    run = train(load_config(overrides=small(tmp_path / "r", *folder(jpeg_tree), "data.decode=gpu",
                                            "train.epochs=1")))
    assert [r["bad_images"] for r in records(run)] == [0]


def test__stop_mid_epoch_and_resume_is_bit_identical_across_worker_counts(
        jpeg_tree: Path, tmp_path: Path) -> None:
    straight = train(load_config(overrides=small(tmp_path / "a", *folder(jpeg_tree))))
    split = tmp_path / "b"
    train(load_config(overrides=small(split, *folder(jpeg_tree), "train.max_steps=5",
                                      "data.num_workers=2")))
    assert torch.load(split / "checkpoint.pth", weights_only=True)["step"] == 5  # mid-epoch 1
    train(load_config(overrides=small(split, *folder(jpeg_tree), "data.num_workers=1")))
    assert_bit_identical(final_state(straight), final_state(split))
    assert [r["epoch"] for r in records(split)] == [1, 2]


def test__killed_process_resumes_mid_epoch_to_identical_weights(jpeg_tree: Path,
                                                                 tmp_path: Path) -> None:
    """The existing kill test on a JPEG folder read by two loader workers."""
    extra = (*folder(jpeg_tree), "train.epochs=3", "data.num_workers=2")
    straight = train(load_config(overrides=small(tmp_path / "a", *extra)))
    killed = tmp_path / "k"
    args = small(killed, *extra, "train.ckpt_every_steps=3")
    step = kill_after_first_checkpoint(args, killed)
    assert 0 < step < 3 * SPE, "the process should have been killed mid-run"
    assert not (killed / "backbone.pth").exists()
    train(load_config(overrides=args))
    assert_bit_identical(final_state(straight), final_state(killed))


def _ddp_train(rank: int, world: int, overrides: list[str]) -> None:
    train(load_config(overrides=overrides))


@pytest.mark.ddp
def test__two_process_ddp_on_a_jpeg_folder_equals_one_process(jpeg_tree: Path,
                                                              tmp_path: Path) -> None:
    """gloo, global-batch BN: 2 ranks × 8 rows give the weights of 1 process × 16 rows."""
    extra = (*folder(jpeg_tree), "train.epochs=1", "train.sync_bn=true",
             "optim.name=sgd", "optim.base_lr=0.5", "optim.warmup_epochs=0")
    single = train(load_config(overrides=small(tmp_path / "one", *extra)))
    run_ddp(_ddp_train, 2, small(tmp_path / "two", *extra))
    a, b = final_state(single), final_state(tmp_path / "two")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    init = _initial_state(extra, tmp_path)
    assert any(not torch.equal(init[k], a[k]) for k in a if a[k].is_floating_point())


def _initial_state(extra: tuple[str, ...], tmp_path: Path) -> dict[str, torch.Tensor]:
    from trainer.dist import init_distributed
    from trainer.loop import build_run

    cfg = load_config(overrides=small(tmp_path / "init", *extra))
    run = build_run(cfg, init_distributed("cpu"), tmp_path / "init")
    return {k: v.clone() for k, v in run.module.state_dict().items()}


def test__each_rank_reads_only_its_share(jpeg_tree: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the trainer's data-source interface: rank r of 2 opens exactly the files of
    rows r·8..r·8+7 of each global batch, and cuts the views one process cuts for them."""
    import dataroom.loader as loader_mod
    from dataroom import ViewSpec
    from trainer.augment import resolve_views
    from trainer.datasets import build_train_set

    opened: list[str] = []
    real = loader_mod.read_bytes
    monkeypatch.setattr(loader_mod, "read_bytes", lambda p: (opened.append(p), real(p))[1])
    cfg = load_config(overrides=small(tmp_path / "r", *folder(jpeg_tree)))
    stream = build_train_set(cfg.data)
    views = [ViewSpec.of(v) for v in resolve_views(cfg.aug)]

    def batches(rank: int, world: int) -> list:
        opened.clear()
        return list(stream.open(views=views, seed=0, global_batch=BATCH, rank=rank,
                                world_size=world, start_step=1, stop_step=SPE,
                                num_workers=0, decode="cpu", device="cpu"))

    whole = batches(0, 1)  # steps 1..3 of epoch 0: no image twice
    paths = {}
    for rank in range(2):
        part = batches(rank, 2)
        rows = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)
        assert [p.step for p in part] == [w.step for w in whole] == [1, 2, 3]
        for w, p in zip(whole, part):
            assert torch.equal(p.indices, w.indices[rows])
            for vw, vp in zip(w.views, p.views):
                assert torch.equal(vp, vw[rows])
        assert len(opened) == (SPE - 1) * BATCH // 2
        paths[rank] = set(opened)
    assert not paths[0] & paths[1]


def _bad_tree(root: Path) -> list[Path]:
    """62 good JPEGs + a zero-byte and a truncated one (64 = every image drawn each epoch)."""
    good = write_tree(root, {f"train/{c}": 16 for c in CLASSES}, size=(40, 48), seed=900)
    zero, cut = good[3], good[40]
    zero.write_bytes(b"")
    cut.write_bytes(cut.read_bytes()[:60])
    return [zero, cut]


def test__bad_images_are_counted_per_epoch(tmp_path: Path) -> None:
    _bad_tree(tmp_path / "data")
    run = train(load_config(overrides=small(tmp_path / "r", *folder(tmp_path / "data"),
                                            "data.max_bad_fraction=0.05")))
    assert [r["bad_images"] for r in records(run)] == [2, 2]
    assert records(run, "step")[-1]["bad_images"] == 2
    ledger = torch.load(run / "checkpoint.pth", weights_only=True)["bad_images"]
    assert ledger["counts"] == {"0": 2, "1": 2}
    # stopped mid-epoch 1 and resumed: the epoch's count so far comes back from the checkpoint
    split = tmp_path / "s"
    args = small(split, *folder(tmp_path / "data"), "data.max_bad_fraction=0.05")
    train(load_config(overrides=[*args, "train.max_steps=7"]))
    mid = torch.load(split / "checkpoint.pth", weights_only=True)
    # both bad files of epoch 1 fall in its first 3 steps: the resumed step 7 draws none, so
    # epoch 1's count of 2 below can only come from the checkpoint
    assert mid["step"] == 7 and mid["bad_images"]["counts"]["1"] == 2
    train(load_config(overrides=args))
    assert [r["bad_images"] for r in records(split)] == [2, 2]
    assert torch.load(split / "checkpoint.pth", weights_only=True)["bad_images"] == ledger


def test__too_many_bad_images_stop_the_run_listing_them(tmp_path: Path) -> None:
    bad = _bad_tree(tmp_path / "data")
    args = small(tmp_path / "r", *folder(tmp_path / "data"), "train.log_every_steps=4")
    with pytest.raises(TooManyBadImages) as e:
        train(load_config(overrides=args))
    message = str(e.value)
    assert all(str(p) in message for p in bad) and "data.max_bad_fraction=0.001" in message
    proc = subprocess.run([sys.executable, "-m", "trainer.train", *small(tmp_path / "cli",
                           *folder(tmp_path / "data"), "train.log_every_steps=4")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: data: 2 images of epoch 0 could not be decoded")
    assert "Traceback" not in proc.stderr and str(bad[0]) in last


def _ddp_train_keep_stop(rank: int, world: int, overrides: list[str], out: str) -> None:
    try:
        train(load_config(overrides=overrides))
    except TooManyBadImages as e:
        Path(out, f"stop-rank{rank}.txt").write_text(str(e))


@pytest.mark.ddp
def test__ddp_stop_on_bad_images_lists_the_files_of_every_rank(tmp_path: Path) -> None:
    """2 gloo ranks: both bad files of epoch 0 fall in rank 0's rows (rows 0-7 of their
    global batches), none in rank 1's; both ranks stop at the same step naming both files
    (rank 1 named none before the paths were gathered)."""
    bad = _bad_tree(tmp_path / "data")
    run_ddp(_ddp_train_keep_stop, 2, small(tmp_path / "r", *folder(tmp_path / "data"),
                                           "train.log_every_steps=4"), str(tmp_path))
    for rank in (0, 1):
        message = (tmp_path / f"stop-rank{rank}.txt").read_text()
        assert message.startswith("data: 2 images of epoch 0 could not be decoded")
        assert all(str(p) in message for p in bad), (rank, message)


def test__unlabeled_folder_without_val_root_trains_with_the_probe_off(
        unlabeled_tree: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", "sslbench.trainer")
    run = train(load_config(overrides=small(tmp_path / "r", "data.name=unlabeled_folder",
                                            f"data.root={unlabeled_tree}")))
    assert sum("online probe off" in m for m in caplog.messages) == 1
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["probe"].startswith("online probe off") and saved["train_images"] == 64
    for r in records(run):
        assert r["probe"] == "off" and "probe_val_acc" not in r and "probe_train_acc" not in r
        assert r["std_mean"] > 0 and r["effective_rank"] > 0  # collapse diagnostics run


def test__unlabeled_folder_with_val_root_scores_a_probe(unlabeled_tree: Path, jpeg_tree: Path,
                                                        tmp_path: Path) -> None:
    run = train(load_config(overrides=small(tmp_path / "r", "data.name=unlabeled_folder",
                                            f"data.root={unlabeled_tree}",
                                            f"data.val_root={jpeg_tree / 'val'}")))
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert "data.val_root" in saved["probe"] and "(16 images)" in saved["probe"]
    epochs = records(run)
    assert all(0 <= r["probe_val_acc"] <= 1 and "probe" not in r for r in epochs)


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer.train", *args], capture_output=True,
                          text=True, timeout=300, env=env)


def _inproc(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    from trainer.train import cli

    code = cli(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test__missing_or_empty_root_is_one_line_naming_the_layout(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty").mkdir()
    proc = _cli(*small(tmp_path / "r", *folder(tmp_path / "nowhere")))  # a real run, no traceback
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "nowhere/train does not exist" in line and "<root>/<split>/<class>" in line
    assert not (tmp_path / "r").exists()  # nothing written before step 0
    for flag in ([], ["--dry-run"]):
        code, _, err = _inproc(capsys, *flag, *small(tmp_path / "r", *folder(tmp_path / "empty")))
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert "empty/train does not exist" in err and "<root>/<split>/<class>" in err
    monkeypatch.delenv("SSLBENCH_IMAGENET", raising=False)
    code, _, err = _inproc(capsys, "--dry-run", *small(tmp_path / "r", "data.name=imagenet"))
    assert code == 2 and "$SSLBENCH_IMAGENET" in err and "train/<wnid>/*.JPEG" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = _inproc(capsys, "--dry-run", *small(
        tmp_path / "r", "data.name=unlabeled_folder", f"data.root={tmp_path / 'empty'}"))
    assert code == 2 and "no images found" in err and "<root>/**/<images>" in err
    assert not (tmp_path / "r").exists()


def test__dry_run_validates_the_dataset(jpeg_tree: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    code, out, err = _inproc(capsys, "--dry-run", *small(tmp_path / "r", *folder(jpeg_tree)))
    assert code == 0, err
    assert yaml.safe_load(out)["config"]["data"]["root"] == str(jpeg_tree)
    code, _, err = _inproc(capsys, "--dry-run", *small(tmp_path / "r", "data.name=imagenett"))
    assert code == 2 and "imagenet, imagenet100" in err
    code, _, err = _inproc(capsys, "--dry-run", "data.class_list=x.txt")  # fashion_mnist
    assert code == 2 and "data.class_list does not apply" in err
    code, _, err = _inproc(capsys, "--dry-run", *small(tmp_path / "r", *folder(jpeg_tree),
                                                       "data.num_samples=10"))
    assert code == 2 and "data.num_samples applies to in-memory datasets" in err
    code, _, err = _inproc(capsys, "--dry-run", *small(tmp_path / "r", *folder(jpeg_tree),
                                                       f"data.class_list={tmp_path / 'no.txt'}"))
    assert code == 2 and "class list" in err and "no.txt" in err


def test__a_batch_larger_than_the_training_set_is_one_line_before_anything_runs(
        jpeg_tree: Path, fmnist_root: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    # 64 training images in the tree: 64 fits, 65 leaves an epoch without a step
    code, _, err = _inproc(capsys, "--dry-run", *small(tmp_path / "r", *folder(jpeg_tree),
                                                       "train.batch_size=64"))
    assert code == 0, err
    for flag in (["--dry-run"], []):
        code, _, err = _inproc(capsys, *flag, *small(tmp_path / "r", *folder(jpeg_tree),
                                                     "train.batch_size=65"))
        assert code == 2 and err.strip().splitlines() == [
            "config error: train.batch_size=65 exceeds the 64 training images of "
            "data.name=image_folder: lower the batch (or give more images)"]
    code, _, err = _inproc(capsys, "--dry-run", f"data.root={fmnist_root}", "data.num_samples=100",
                           "train.batch_size=128")
    assert code == 2 and "train.batch_size=128 exceeds the 100 training images" in err
    # an in-memory set smaller than the batch without num_samples: found when it is read
    code, _, err = _inproc(capsys, *small(tmp_path / "r2", f"data.root={fmnist_root}",
                                          "train.batch_size=512"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "train.batch_size=512 exceeds the" in err and "data.name=fashion_mnist" in err


def test__paper_spec_without_imagenet_stops_before_submitting(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """``make sweep METHOD=vicreg`` without a data folder: never Fashion-MNIST, never a job."""
    from sweeps import launch

    monkeypatch.delenv("SSLBENCH_IMAGENET", raising=False)
    for flag in (["--dry-run"], []):
        code = launch.cli(["--method", "vicreg", "--cluster", "local", "--root", str(tmp_path),
                           *flag])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert "data.name=imagenet" in err and "$SSLBENCH_IMAGENET" in err
        assert "train/<wnid>/*.JPEG" in err and "SPEC=sweeps/specs/cpu.yaml" in err
    code = launch.cli(["--method", "simsiam", "--cluster", "local", "--root", str(tmp_path),
                       "--dry-run", f"data.root={tmp_path / 'nowhere'}"])
    err = capsys.readouterr().err
    assert code == 2 and "nowhere/train does not exist" in err and "SPEC=sweeps" in err
    assert not list(tmp_path.iterdir())  # nothing planned on disk, nothing submitted


def test__files_vs_memory_benchmark_runs_at_toy_size(tmp_path: Path) -> None:
    """A smoke run of benchmarks/train_files_vs_memory.py (no timing is checked)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import train_files_vs_memory as bench
    finally:
        sys.path.pop(0)
    out = tmp_path / "r.json"
    result = bench.main(["--images", "32", "--classes", "2", "--size", "40x48", "--crop", "16",
                         "--backbone", "tiny_cnn", "--projector", "16-16", "--batch", "8",
                         "--steps", "1", "--rounds", "2", "--warmup", "1", "--workers", "0",
                         "--folder", str(tmp_path / "jpegs"), "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["schema"] == "sslbench.train_files_vs_memory/1" and saved == result
    assert all(len(v) == 2 and min(v) > 0 for v in saved["rounds_img_per_s"].values())
    assert saved["files_over_memory"] > 0 and saved["loader_workers"] == 0
