"""Feature extraction, weighted kNN and the fast linear probe on synthetic data."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from backbones import build_backbone
from eval.features import FeatureCache, extract_features, extract_tap_features, normalize_images
from eval.knn import knn_accuracy, knn_scores
from eval.linear import evaluate, fit_linear_grid, stratified_holdout


def _blobs(n: int, num_classes: int, dim: int, seed: int, spread: float = 3.0):
    g = torch.Generator().manual_seed(100)
    centers = torch.randn(num_classes, dim, generator=g) * spread
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % num_classes
    return centers[y] + torch.randn(n, dim, generator=g), y


def test_normalize_images_gray_to_rgb_and_crop() -> None:
    x = torch.full((2, 1, 28, 28), 255, dtype=torch.uint8)
    out = normalize_images(x, (0.5,), (0.5,), resize=32, crop=30)
    assert out.shape == (2, 3, 30, 30)
    assert torch.allclose(out, torch.ones_like(out), atol=1e-5)
    out = normalize_images(x, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 28, 28, "squash")
    assert out.shape == (2, 3, 28, 28)
    assert torch.allclose(out[0, 2], torch.full((28, 28), (1 - 0.406) / 0.225))


def test_extract_features_eval_mode_batch_invariant() -> None:
    torch.manual_seed(0)
    bb = build_backbone("tiny_cnn", width=8).train()
    x = torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8)
    a = extract_features(bb, x, mean=(0.3,), std=(0.3,), resize=28, crop=28, batch_size=3)
    b = extract_features(bb, x, mean=(0.3,), std=(0.3,), resize=28, crop=28, batch_size=10)
    assert a.shape == (10, 16) and bb.training  # mode restored
    assert torch.allclose(a, b, atol=1e-5)  # eval-mode BN: no batch dependence


def test_resnet_taps_shapes() -> None:
    bb = build_backbone("resnet18_small")
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    feats = extract_tap_features(bb, x, taps=("res4", "res5", "avgpool"), mean=(0.5,) * 3,
                                 std=(0.5,) * 3, resize=32, crop=32)
    assert feats["res4"].shape == (2, 256 * 9) and feats["res5"].shape == (2, 512 * 4)
    direct = extract_features(bb, x, mean=(0.5,) * 3, std=(0.5,) * 3, resize=32, crop=32)
    assert torch.allclose(feats["avgpool"], direct, atol=1e-5)


def test_feature_cache_reuses(tmp_path) -> None:
    cache, calls = FeatureCache(tmp_path), []

    def compute() -> torch.Tensor:
        calls.append(1)
        return torch.ones(3, 2)

    fields = {"checkpoint": "abc", "dataset": "x", "split": "train", "tap": "avgpool"}
    assert torch.equal(cache.get_or_compute(fields, compute), torch.ones(3, 2))
    cache.get_or_compute(fields, compute)
    assert len(calls) == 1 and len(list(tmp_path.glob("*.json"))) == 1


def test_knn_matches_reference_vote() -> None:
    x, y = _blobs(60, 3, 8, seed=0, spread=0.5)
    q, qy = _blobs(30, 3, 8, seed=1, spread=0.5)
    scores = knn_scores(x, y, q, k=5, temperature=0.1, num_classes=3, chunk_size=7)
    xn, qn = F.normalize(x, dim=1), F.normalize(q, dim=1)
    for i in range(len(q)):  # the InstDisc/DINO vote, one query at a time
        sim = xn @ qn[i]
        top = sim.topk(5)
        ref = torch.zeros(3).index_add_(0, y[top.indices], (top.values / 0.1).exp())
        assert torch.allclose(scores[i], ref, rtol=1e-5)


def test_knn_separable_reaches_100() -> None:
    x, y = _blobs(400, 4, 16, seed=0)
    q, qy = _blobs(200, 4, 16, seed=1)
    assert knn_accuracy(x, y, q, qy, k=20, temperature=0.07, num_classes=4) == 100.0
    assert knn_accuracy(x, y, q, qy, k=200, temperature=0.07, num_classes=4) == 100.0


def test_knn_known_accuracy_half() -> None:
    # Queries on class 0 with labels alternating 0/1: exactly half are right.
    x, y = _blobs(100, 2, 4, seed=0)
    q = x[y == 0][:20]
    qy = torch.arange(20) % 2
    assert knn_accuracy(x, y, q, qy, k=10, num_classes=2) == 50.0


def test_stratified_holdout() -> None:
    y = torch.arange(100) % 4
    fit, hold = stratified_holdout(y, 0.2, seed=0)
    assert len(hold) == 20 and set(y[hold].tolist()) == {0, 1, 2, 3}
    assert len(set(fit.tolist()) | set(hold.tolist())) == 100


def test_linear_grid_separable_and_chosen_on_holdout() -> None:
    x, y = _blobs(600, 5, 32, seed=0)
    q, qy = _blobs(300, 5, 32, seed=1)
    res = fit_linear_grid(x, y, lrs=[0.0, 0.1], wds=[0.0, 1e-4], epochs=5, batch_size=64)
    assert len(res.holdout_top1) == 4 and res.lr == 0.1  # lr 0 keeps the random init
    assert evaluate(res, q, qy)["top1"] == 100.0


def test_linear_grid_equals_single_heads() -> None:
    """A head in the batched grid trains exactly as when trained alone."""
    x, y = _blobs(200, 3, 8, seed=0, spread=0.3)
    kw = {"epochs": 3, "batch_size": 32, "holdout_fraction": 0.2, "refit": False}
    grid = fit_linear_grid(x, y, lrs=[0.05, 0.5], wds=[0.0, 0.01], **kw)
    for key, acc in grid.holdout_top1.items():
        lr, wd = (float(p.split("=")[1]) for p in key.split(","))
        alone = fit_linear_grid(x, y, lrs=[lr], wds=[wd], **kw)
        assert alone.holdout_top1[key] == pytest.approx(acc)


def test_linear_known_accuracy_with_label_noise() -> None:
    x, y = _blobs(400, 2, 8, seed=0)
    q, qy = _blobs(200, 2, 8, seed=1)
    qy = qy.clone()
    qy[:50] = 1 - qy[:50]  # 50 of 200 test labels flipped: 75 % is the ceiling and attained
    res = fit_linear_grid(x, y, lrs=[0.1], wds=[0.0], epochs=5)
    assert evaluate(res, q, qy, topk=(1,))["top1"] == 75.0
