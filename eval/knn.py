"""Weighted k-nearest-neighbour classification on frozen features.

The vote of Wu et al. 2018 (InstDisc/NPID, ``lemniscate.pytorch`` test.py) as used by
DINO's ``eval_knn.py``: features are L2-normalised, similarity is the cosine, the k most
similar training samples vote for their class with weight ``exp(s / T)``, and classes are
ranked by their summed weight (eval-protocols §8). k = 20 with T = 0.07 is DINO's default;
k = 200 is the InstDisc setting.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from eval.features import resolve_device


@torch.no_grad()
def knn_scores(
    train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, *, k: int = 20,
    temperature: float = 0.07, num_classes: int, chunk_size: int = 1024,
    device: str | torch.device | None = None,
) -> Tensor:
    """Per-class vote ``(N_test, num_classes)`` of the weighted kNN.

    Args:
        train_feats: ``(N_train, F)`` memory features (normalised here).
        train_labels: ``(N_train,)`` class indices.
        test_feats: ``(N_test, F)`` query features (normalised here).
        k: Neighbours per query (capped at ``N_train``).
        temperature: T in ``exp(s / T)``.
        num_classes: Number of classes.
        chunk_size: Queries per similarity block (memory bound: chunk × N_train floats).
        device: ``None``/``"auto"``: CUDA when available.

    Returns:
        float32 scores on the CPU.
    """
    dev = resolve_device(device)
    train = F.normalize(train_feats.float().to(dev), dim=1)
    labels = train_labels.long().to(dev)
    k = min(k, train.shape[0])
    out = []
    # NOTE: DINO splits the queries into 100 chunks, which breaks below 100 queries;
    # a fixed chunk size gives identical numbers and works at any size.
    for start in range(0, test_feats.shape[0], chunk_size):
        q = F.normalize(test_feats[start:start + chunk_size].float().to(dev), dim=1)
        sim, idx = (q @ train.T).topk(k, dim=1)  # (B, k)
        weights = (sim / temperature).exp()
        votes = torch.zeros(q.shape[0], num_classes, device=dev)
        votes.scatter_add_(1, labels[idx], weights)
        out.append(votes.cpu())
    return torch.cat(out) if out else torch.zeros(0, num_classes)


def topk_accuracy(scores: Tensor, labels: Tensor, topk: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Top-k accuracies in percent; k above the number of classes counts as all-correct."""
    labels = labels.long().to(scores.device)
    ranked = scores.argsort(dim=1, descending=True)
    res = {}
    for k in topk:
        hit = (ranked[:, :k] == labels[:, None]).any(dim=1)
        res[k] = 100.0 * hit.float().mean().item() if len(labels) else float("nan")
    return res


def knn_accuracy(
    train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, test_labels: Tensor, *,
    k: int = 20, temperature: float = 0.07, num_classes: int,
    device: str | torch.device | None = None,
) -> float:
    """Top-1 accuracy (percent) of the weighted kNN classifier.

    Args:
        train_feats: ``(N_train, F)`` memory features.
        train_labels: ``(N_train,)`` class indices.
        test_feats: ``(N_test, F)`` query features.
        test_labels: ``(N_test,)`` class indices.
        k: Neighbours per query.
        temperature: T in ``exp(s / T)``.
        num_classes: Number of classes.
        device: ``None``/``"auto"``: CUDA when available.

    Returns:
        Top-1 accuracy in percent (0–100).
    """
    scores = knn_scores(train_feats, train_labels, test_feats, k=k, temperature=temperature,
                        num_classes=num_classes, device=device)
    return topk_accuracy(scores, test_labels, (1,))[1]
