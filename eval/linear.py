"""Linear probes on cached frozen features: a grid of (lr, wd) heads trained in one pass.

This is the "fast" protocol. Every head of the grid sees the same mini-batches; the
logits of all heads come from one batched matmul, and each head gets its own SGD
learning rate and weight decay, so the grid costs about one probe's data passes
(DINOv2's ``AllClassifiers`` idea). The head is chosen on a stratified held-out part
of the *training* features, never on the evaluation set, then refit on all training
features with the chosen (lr, wd).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from eval.features import resolve_device
from eval.knn import topk_accuracy


@dataclass
class LinearResult:
    """A fitted linear classifier and how it was chosen.

    Attributes:
        lr: Chosen learning rate.
        wd: Chosen weight decay.
        weight: ``(num_classes, F)`` on the CPU.
        bias: ``(num_classes,)``.
        mean: Per-feature mean subtracted before the head (``None``: no standardisation).
        std: Per-feature std divided out before the head.
        holdout_top1: ``{"lr=…,wd=…": top-1 %}`` of every grid point on the held-out split.
    """

    lr: float
    wd: float
    weight: Tensor
    bias: Tensor
    mean: Tensor | None = None
    std: Tensor | None = None
    holdout_top1: dict[str, float] = field(default_factory=dict)

    def logits(self, feats: Tensor) -> Tensor:
        """Class scores ``(N, num_classes)`` of features ``(N, F)``."""
        x = feats.float().to(self.weight.device)
        if self.mean is not None and self.std is not None:
            x = (x - self.mean) / self.std
        return x @ self.weight.T + self.bias


def stratified_holdout(labels: Tensor, fraction: float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Split indices into (fit, holdout), taking ``fraction`` of every class (≥ 1 if it has 2+)."""
    g = torch.Generator().manual_seed(seed)
    fit, hold = [], []
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n = round(fraction * len(idx))
        n = max(n, 1) if len(idx) >= 2 and fraction > 0 else n
        hold.append(idx[:n])
        fit.append(idx[n:])
    return torch.cat(fit).sort().values, torch.cat(hold).sort().values


def _cosine(step: int, total: int) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * step / max(total, 1)))


def train_heads(
    x: Tensor, y: Tensor, *, lrs: Tensor, wds: Tensor, num_classes: int, epochs: int,
    batch_size: int = 256, momentum: float = 0.9, seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """SGD on G independent linear heads at once (cosine schedule per step, no warmup).

    Args:
        x: ``(N, F)`` features, already on the target device.
        y: ``(N,)`` labels on the same device.
        lrs: ``(G,)`` peak learning rate per head.
        wds: ``(G,)`` weight decay per head (applied to weight and bias, as torch SGD does).
        num_classes: Output width.
        epochs: Passes over ``x``.
        batch_size: Samples per step (the last partial batch is kept).
        momentum: Heavy-ball momentum (torch SGD semantics).
        seed: Seeds the init (N(0, 0.01), VICReg's head init) and the data order.

    Returns:
        ``(W, b)``: ``(G, F, C)`` and ``(G, C)``.
    """
    dev, num_heads = x.device, lrs.shape[0]
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(x.shape[1], num_classes, generator=g) * 0.01).to(dev)
    w = w.expand(num_heads, -1, -1).clone().requires_grad_(True)
    b = torch.zeros(num_heads, num_classes, device=dev, requires_grad=True)
    buf_w, buf_b = torch.zeros_like(w), torch.zeros_like(b)
    lr_w, wd_w = lrs.view(-1, 1, 1).to(dev), wds.view(-1, 1, 1).to(dev)
    steps_per_epoch = math.ceil(x.shape[0] / batch_size)
    total, step = epochs * steps_per_epoch, 0
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=g).to(dev)
        for i in range(0, x.shape[0], batch_size):
            idx = perm[i:i + batch_size]
            logits = torch.matmul(x[idx], w) + b[:, None]  # (G, B, C)
            # Sum over heads of each head's mean CE: every head gets its own gradient.
            loss = F.cross_entropy(logits.flatten(0, 1), y[idx].repeat(num_heads),
                                   reduction="sum") / idx.numel()
            gw, gb = torch.autograd.grad(loss, (w, b))
            factor = _cosine(step, total)
            with torch.no_grad():
                buf_w.mul_(momentum).add_(gw + wd_w * w)
                buf_b.mul_(momentum).add_(gb + wd_w[:, :, 0] * b)
                w.sub_(factor * lr_w * buf_w)
                b.sub_(factor * lr_w[:, :, 0] * buf_b)
            step += 1
    return w.detach(), b.detach()


def _standardize(x: Tensor, use: bool) -> tuple[Tensor | None, Tensor | None]:
    if not use:
        return None, None
    return x.mean(0), x.std(0).clamp_min(1e-6)


def fit_linear_grid(
    train_feats: Tensor, train_labels: Tensor, *, lrs: Sequence[float], wds: Sequence[float],
    epochs: int, holdout_fraction: float = 0.1, batch_size: int = 256,
    num_classes: int | None = None, momentum: float = 0.9, standardize: bool = True,
    refit: bool = True, seed: int = 0, device: str | torch.device | None = None,
) -> LinearResult:
    """Fast-protocol linear probe: grid in one pass, chosen on held-out training data.

    Args:
        train_feats: ``(N, F)`` frozen features.
        train_labels: ``(N,)`` class indices.
        lrs: Learning-rate grid.
        wds: Weight-decay grid (every (lr, wd) pair is one head).
        epochs: Epochs per fit.
        holdout_fraction: Fraction of each class held out to choose the head.
        batch_size: Samples per SGD step.
        num_classes: Output width; default ``max(label) + 1``.
        momentum: SGD momentum.
        standardize: Subtract the per-feature mean and divide by the std of the fit set
            (a BatchNorm without affine parameters, as in fssb's linear heads).
        refit: Retrain the chosen (lr, wd) on all training features (train + holdout).
        seed: Holdout split, init and data order.
        device: ``None``/``"auto"``: CUDA when available.

    Returns:
        The chosen head (on the CPU) with the holdout accuracy of every grid point.
    """
    dev = resolve_device(device)
    num_classes = num_classes or int(train_labels.max()) + 1
    grid = [(lr, wd) for lr in lrs for wd in wds]
    lr_t = torch.tensor([p[0] for p in grid], dtype=torch.float32)
    wd_t = torch.tensor([p[1] for p in grid], dtype=torch.float32)
    x_all, y_all = train_feats.float().to(dev), train_labels.long().to(dev)
    fit_idx, hold_idx = stratified_holdout(train_labels.long().cpu(), holdout_fraction, seed)
    x_fit, y_fit = x_all[fit_idx.to(dev)], y_all[fit_idx.to(dev)]
    mean, std = _standardize(x_fit, standardize)
    norm = (lambda x: (x - mean) / std) if mean is not None else (lambda x: x)
    w, b = train_heads(norm(x_fit), y_fit, lrs=lr_t, wds=wd_t, num_classes=num_classes,
                       epochs=epochs, batch_size=batch_size, momentum=momentum, seed=seed)
    holdout: dict[str, float] = {}
    if len(hold_idx):
        x_hold = norm(x_all[hold_idx.to(dev)])
        pred = (torch.matmul(x_hold, w) + b[:, None]).argmax(-1)  # (G, N_hold)
        acc = (pred == y_all[hold_idx.to(dev)]).float().mean(1).mul(100).cpu()
        holdout = {f"lr={lr:g},wd={wd:g}": float(a) for (lr, wd), a in zip(grid, acc)}
        best = int(acc.argmax())  # first maximum: ties go to the earlier grid point
    else:
        best = 0
    lr, wd = grid[best]
    if refit and len(hold_idx):
        mean, std = _standardize(x_all, standardize)
        norm = (lambda x: (x - mean) / std) if mean is not None else (lambda x: x)
        w, b = train_heads(norm(x_all), y_all, lrs=lr_t[best:best + 1], wds=wd_t[best:best + 1],
                           num_classes=num_classes, epochs=epochs, batch_size=batch_size,
                           momentum=momentum, seed=seed)
        best = 0
    return LinearResult(
        lr=lr, wd=wd, weight=w[best].T.contiguous().cpu(), bias=b[best].cpu(),
        mean=None if mean is None else mean.cpu(), std=None if std is None else std.cpu(),
        holdout_top1=holdout,
    )


def evaluate(
    result: LinearResult, feats: Tensor, labels: Tensor, topk: Sequence[int] = (1, 5),
) -> dict[str, float]:
    """Top-k accuracies (percent) of a fitted head: ``{"top1": …, "top5": …}``."""
    scores = result.logits(feats)
    return {f"top{k}": v for k, v in topk_accuracy(scores, labels.long(), topk).items()}
