"""CIFAR-10/100 and STL-10 through the trainer's registry and in-memory path; the online
probe on a set with unlabeled images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dataroom.arrays import RowStack
from dataroom.readers import DatasetError
from dataroom.synthetic_sets import write_tiny_cifar, write_tiny_stl10
from trainer.config import load_config
from trainer.datasets import DATASETS
from trainer.loop import probe_loss, train


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cifar(tmp_path_factory.mktemp("cifar"), "cifar10", train=120, test=40)


@pytest.fixture(scope="module")
def stl_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_stl10(tmp_path_factory.mktemp("stl"), train=20, test=10, unlabeled=44)


def test__cifar10_image_set(cifar_root, monkeypatch) -> None:
    train = DATASETS.build("cifar10", root=str(cifar_root), split="train")
    test = DATASETS.build("cifar10", root=str(cifar_root), split="test")
    assert train.images.shape == (120, 3, 32, 32) and train.images.dtype == torch.uint8
    assert isinstance(train.images, torch.Tensor) and len(test) == 40
    assert train.mean == test.mean == (0.4914, 0.4822, 0.4465)  # solo-learn's, as the eval
    assert test.std == train.std == (0.2470, 0.2435, 0.2616) and len(train.classes) == 10
    assert sorted(train.labels.unique().tolist()) == list(range(10))
    monkeypatch.setenv("SSLBENCH_CIFAR10", str(cifar_root))
    assert torch.equal(DATASETS.build("cifar10", root="", split="test").images, test.images)
    with pytest.raises(DatasetError, match="holds cifar-10-batches-py .*not cifar-100-python"):
        DATASETS.build("cifar100", root=str(cifar_root), split="train")


def test__stl10_pretrains_on_train_plus_unlabeled(stl_root) -> None:
    train = DATASETS.build("stl10", root=str(stl_root), split="train")
    assert isinstance(train.images, RowStack) and len(train) == 64
    assert (train.labels[:20] >= 0).all() and (train.labels[20:] == -1).all()
    labelled = DATASETS.build("stl10", root=str(stl_root), split="labelled")
    assert torch.equal(train.images[torch.arange(20)], labelled.images)
    assert train.mean == labelled.mean == (0.4914, 0.4823, 0.4466)
    sub = train.subset(30)  # a first-N subset stays lazy
    assert isinstance(sub.images, RowStack) and len(sub) == 30
    test = DATASETS.build("stl10", root=str(stl_root), split="test")
    assert isinstance(test.images, torch.Tensor) and test.images.shape == (10, 3, 96, 96)


def test__imagenet100_is_read_from_image_files(imagenet_tree: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """No longer a placeholder: the file loader's stream of the 100 classes."""
    monkeypatch.delenv("SSLBENCH_IMAGENET", raising=False)
    from trainer.datasets import StreamSet, is_streamed

    stream = DATASETS.build("imagenet100", root=str(imagenet_tree), split="train")
    assert is_streamed("imagenet100") and isinstance(stream, StreamSet)
    assert stream.num_images == 4100 and len(stream.classes) == 100 and stream.val is not None
    with pytest.raises(DatasetError, match=r"\$SSLBENCH_IMAGENET"):
        DATASETS.build("imagenet100", root="", split="train")


def test__probe_loss_ignores_unlabeled_rows() -> None:
    logits = torch.randn(6, 4)
    labels = torch.tensor([2, -1, 0, -1, 3, 1])
    keep = labels >= 0
    expected = F.cross_entropy(logits[keep], labels[keep])
    assert torch.allclose(probe_loss(logits, labels), expected)
    none = probe_loss(logits, torch.full((6,), -1))
    assert none.item() == 0.0 and torch.isfinite(none)


def test__training_on_stl_with_unlabeled_images(stl_root, tmp_path) -> None:
    cfg = load_config([], [
        "data.name=stl10", f"data.root={stl_root}", "data.val_samples=10",
        "backbone.name=resnet18", "backbone.width=8", "method.name=vicreg",
        "method.projector=32-32", "aug.crop_size=32", "train.batch_size=16", "train.epochs=1",
        "train.device=cpu", "train.progress=false", "train.tensorboard=false",
        "train.diag_samples=16", f"run_dir={tmp_path / 'run'}"])
    run_dir = train(cfg)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    import json

    epoch = [json.loads(x) for x in lines if '"kind": "epoch"' in x][-1]
    assert np.isfinite(epoch["loss"]) and 0.0 <= epoch["probe_train_acc"] <= 1.0
    assert 0.0 <= epoch["probe_val_acc"] <= 1.0 and (run_dir / "backbone.pth").exists()


def test__sweep_probes_use_only_labelled_stl_images(stl_root) -> None:
    from sweeps.probe import labelled_splits

    cfg = load_config([], ["data.name=stl10", f"data.root={stl_root}", "aug.crop_size=96"])
    train, test, crop = labelled_splits(cfg, 1000)
    assert len(train) == 20 and (train.labels >= 0).all() and len(test) == 10 and crop == 96
    assert len(labelled_splits(cfg, 7)[0]) == 7
