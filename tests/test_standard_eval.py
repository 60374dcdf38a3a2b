"""The eval battery on the standard small benchmarks: array splits (CIFAR, STL-10) and
ImageNet-100 files, through the real readers, the feature cache and the records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from backbones import build_backbone
from dataroom.imagenet100 import IMAGENET100_LIST
from dataroom.synthetic import write_tree
from dataroom.synthetic_sets import write_tiny_cifar, write_tiny_stl10
from eval.arrays import eval_batches, train_batches
from eval.bench_standard import SoloLinearConfig, method_lr
from eval.config import DataPaths, RunSettings
from eval.features import FeatureCache, extract_features
from eval.images import EvalTransform, TrainTransform
from eval.registry import Context
from eval.run_all import main, resolve_suite
from eval.suites import SUITES

FAST = ["device=cpu", "num_workers=0"]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_cifar(tmp_path_factory.mktemp("cifar"), "cifar10", train=60, test=30)


def _checkpoint(folder: Path, data: dict | None = None, method: str = "simclr") -> Path:
    torch.manual_seed(0)
    bb = build_backbone("resnet18_small", width=4)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"method": {"name": method}, "backbone": {"name": "resnet18_small", "width": 4},
              "train": {"seed": 3, "epochs": 2}, "data": data or {"name": "fashion_mnist"}}
    (folder / "config.yaml").write_text(yaml.safe_dump({"config_hash": "feed", "config": config}))
    meta = {"backbone": "resnet18_small", "backbone_kwargs": {"width": 4}, "num_features": 32,
            "method": method, "config_hash": "feed", "git_sha": "abc", "steps_done": 1,
            "steps_total": 1}
    path = folder / "backbone.pth"
    torch.save({"format": "sslbench.backbone/1", "state_dict": bb.state_dict(), "meta": meta},
               path)
    return path


def _context(tmp_path: Path, data: DataPaths, meta: dict | None = None) -> Context:
    torch.manual_seed(0)
    bb = build_backbone("resnet18_small", width=4)
    return Context(bb, meta or {"method": "vicreg"}, "sha", RunSettings(device="cpu"), data,
                   FeatureCache(tmp_path / "cache"))


def test__array_features_match_direct_extraction_and_are_cached(cifar_root, tmp_path) -> None:
    ctx = _context(tmp_path, DataPaths(cifar10=str(cifar_root)).resolve(str(tmp_path)))
    train = ctx.load("cifar10", "train")
    assert ctx.fingerprints == {"cifar10/train": train.fingerprint}
    feats, labels = ctx.features(train, EvalTransform(32, 32), ("avgpool",))
    direct = extract_features(ctx.backbone, train.images.take(np.arange(len(train))),
                              mean=ctx.mean, std=ctx.std, resize=32, crop=32)
    assert torch.allclose(feats["avgpool"], direct, atol=1e-5)
    assert torch.equal(labels, torch.from_numpy(train.labels))
    before = sorted(p.name for p in (tmp_path / "cache").iterdir())
    again, _ = ctx.features(train, EvalTransform(32, 32), ("avgpool",))
    assert torch.equal(again["avgpool"], feats["avgpool"])
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == before


def test__array_batches_resize_crop_and_augment(cifar_root) -> None:
    from dataroom.cifar import read_cifar

    test = read_cifar("cifar10", cifar_root, "test")
    x, idx, ok = next(eval_batches(test, EvalTransform(36, 28), batch_size=8, num_workers=0))
    assert x.shape == (8, 3, 28, 28) and x.dtype == torch.uint8 and ok.all()
    assert idx.tolist() == list(range(8))
    same, _, _ = next(eval_batches(test, EvalTransform(32, 32), batch_size=8, num_workers=0))
    assert torch.equal(same, test.images.take(np.arange(8)))  # no-op at the native size
    torch.manual_seed(1)
    a = [b for b in train_batches(test, TrainTransform(24), batch_size=7, num_workers=0, seed=4)]
    torch.manual_seed(1)
    b = [b for b in train_batches(test, TrainTransform(24), batch_size=7, num_workers=0, seed=4)]
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    order = torch.cat([p[1] for p in a])
    assert sorted(order.tolist()) == list(range(30)) and order.tolist() != list(range(30))
    assert a[0][0].shape == (7, 3, 24, 24)


def test__method_lr_follows_solo_learn_and_checks_entries() -> None:
    cfg = SoloLinearConfig()
    assert method_lr(cfg, "simsiam") == 30.0 and method_lr(cfg, "barlow_twins") == 0.1
    assert method_lr(cfg, "external") == cfg.lr
    with pytest.raises(ValueError, match="'simclr:1' is not <method>=<positive lr>"):
        method_lr(SoloLinearConfig(lr_by_method=("simclr:1",)), "simclr")


def test__cifar10_suite_end_to_end(cifar_root, tmp_path) -> None:
    ckpt = _checkpoint(tmp_path / "run", {"name": "cifar10", "root": str(cifar_root)})
    records = main(str(ckpt), "cifar10", data_root=str(tmp_path / "nothing"),
                   out=str(tmp_path / "records"),
                   overrides=[*FAST, "cifar10_linear.epochs=2", "cifar10_linear.milestones=1",
                              f"cache_dir={tmp_path / 'cache'}"])
    by = {(r["benchmark"], r["metric"]): r for r in records}
    assert set(by) == {("cifar10_knn", m) for m in ("top1_k20", "top5_k20", "top1_k200",
                                                    "top5_k200")} | {
        ("cifar10_linear", "top1"), ("cifar10_linear", "top5")}
    for r in records:  # found through the run's data.root
        assert r["status"] == "ok" and 0.0 <= r["value"] <= 100.0
        assert r["protocol"] == "paper" and r["suite"] == "cifar10"
    lin = by[("cifar10_linear", "top1")]
    assert lin["extra"]["lr"] == 1.0  # solo-learn's SimCLR linear lr
    assert set(lin["dataset_fingerprint"]) == {"cifar10/train", "cifar10/test"}
    assert lin["config"]["run"]["mean"] == [0.4914, 0.4822, 0.4465]
    on_disk = json.loads((tmp_path / "records" / f"{lin['id']}.json").read_text())
    assert on_disk["value"] == lin["value"]


def test__where_the_eval_finds_arrays(cifar_root, tmp_path, monkeypatch) -> None:
    ckpt = _checkpoint(tmp_path / "run")  # pretrained on Fashion-MNIST: no CIFAR root
    out = str(tmp_path / "records")
    monkeypatch.delenv("SSLBENCH_CIFAR10", raising=False)
    skipped = main(str(ckpt), "cifar10", data_root=str(tmp_path / "none"), out=out,
                   only="cifar10_knn", overrides=FAST)
    assert {r["status"] for r in skipped} == {"skipped"}
    assert "cifar10/train: not found in data.cifar10" in skipped[0]["reason"]
    assert "set data.cifar10=<folder> or $SSLBENCH_CIFAR10" in skipped[0]["reason"]
    monkeypatch.setenv("SSLBENCH_CIFAR10", str(cifar_root))
    found = main(str(ckpt), "cifar10", data_root=str(tmp_path / "none"), out=out,
                 only="cifar10_knn", overrides=FAST)
    assert {r["status"] for r in found} == {"ok"}
    monkeypatch.delenv("SSLBENCH_CIFAR10")
    explicit = main(str(ckpt), "cifar10", out=str(tmp_path / "r2"), only="cifar10_knn",
                    overrides=[*FAST, f"data.cifar10={cifar_root}"])
    assert [r["value"] for r in explicit] == [r["value"] for r in found]


def test__stl10_suite_runs_on_96px_arrays(tmp_path) -> None:
    root = write_tiny_stl10(tmp_path / "stl", train=20, test=10, unlabeled=5)
    ckpt = _checkpoint(tmp_path / "run", method="vicreg")
    records = main(str(ckpt), "stl10", out=str(tmp_path / "records"),
                   overrides=[*FAST, f"data.stl10={root}", "stl10_linear.epochs=1",
                              "stl10_linear.milestones=1", "stl10_linear.batch_size=8",
                              "stl10_knn.ks=5"])
    assert {r["status"] for r in records} == {"ok"}
    assert {(r["benchmark"], r["metric"]) for r in records} >= {("stl10_linear", "top1"),
                                                                ("stl10_knn", "top1_k5")}
    assert records[0]["dataset_fingerprint"].keys() == {"stl10/train", "stl10/test"}


def test__imagenet100_knn_on_an_imagenet_tree(tmp_path) -> None:
    wnids = IMAGENET100_LIST.read_text().split()[:100]
    layout = {f"{s}/{w}": 1 for s in ("train", "val") for w in wnids}
    layout["train/n01440764"] = 2  # not in the subset
    write_tree(tmp_path / "imagenet", layout, size=(20, 24))
    ckpt = _checkpoint(tmp_path / "run")
    records = main(str(ckpt), "imagenet100", out=str(tmp_path / "records"), only="imagenet100_knn",
                   overrides=[*FAST, f"data.imagenet={tmp_path / 'imagenet'}",
                              "imagenet100_knn.resize=16", "imagenet100_knn.crop=16"])
    assert {r["status"] for r in records} == {"ok"}
    assert records[0]["dataset_fingerprint"].keys() == {"imagenet100/train", "imagenet100/val"}


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "stl10", "imagenet100"])
def test__suites_resolve_with_solo_learn_settings(name) -> None:
    suite, _ = resolve_suite(name, [], None)
    assert suite.protocol == "paper" and list(suite.benchmarks) == [f"{name}_knn",
                                                                     f"{name}_linear"]
    linear = suite.benchmarks[f"{name}_linear"]
    assert (linear.epochs, linear.batch_size, linear.weight_decay, linear.milestones) == (
        100, 256, 0.0, (60, 80))
    assert suite.benchmarks[f"{name}_knn"].ks == (20, 200)
    assert name in SUITES


def test__a_foreign_pickle_is_a_skip_naming_it_not_a_search(tmp_path) -> None:
    import os
    import pickle

    root = write_tiny_cifar(tmp_path / "cifar", "cifar10", train=20, test=10)
    bad = root / "cifar-10-batches-py" / "test_batch"

    class Exploit:
        def __reduce__(self):  # noqa: ANN204
            return os.system, (f"touch {tmp_path / 'pwned'}",)

    bad.write_bytes(pickle.dumps(Exploit(), protocol=4))
    ckpt = _checkpoint(tmp_path / "run")
    (rec, *_) = main(str(ckpt), "cifar10", out=str(tmp_path / "records"), only="cifar10_knn",
                     overrides=[*FAST, f"data.cifar10={root}"])
    assert rec["status"] == "skipped" and "test_batch: refused to load global" in rec["reason"]
    assert not (tmp_path / "pwned").exists()
