"""Autograd-aware collectives used by losses that must see the global batch.

Every helper is the identity when no process group is initialised, so the pure
loss functions run single-process unchanged.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True when a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for this rank's slot.

    This is the official VICReg ``FullGatherLayer`` semantics: each rank's loss
    depends on all ranks' rows, so the gradient of a row is the sum over ranks of
    the per-rank gradients. With DDP's gradient averaging this makes a W-process step
    equal to a single-process step over the concatenated batch (methods.md §1.7).
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        out = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads: Tensor) -> Tensor:  # type: ignore[override]
        all_grads = torch.stack(grads)
        dist.all_reduce(all_grads)
        return all_grads[dist.get_rank()]


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` (B, ...) from all ranks along dim 0, keeping the gradient."""
    if not is_distributed():
        return x
    return torch.cat(_GatherWithGrad.apply(x), dim=0)


def gather_no_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from all ranks along dim 0 (no gradient)."""
    if not is_distributed():
        return x
    out = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


class _AllReduceSumWithGrad(torch.autograd.Function):
    """Sum over ranks; the backward all-reduces (sums) the incoming gradient.

    For a loss L = f(Σ_r x_r) evaluated identically on every rank, rank r's
    gradient w.r.t. x_r is Σ_r' ∂L_r'/∂x_r = W·f'(...); DDP then divides by W,
    which gives the single-process gradient.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def all_reduce_sum_with_grad(x: Tensor) -> Tensor:
    """Sum ``x`` over ranks with an autograd-aware backward (identity when single)."""
    if not is_distributed():
        return x
    return _AllReduceSumWithGrad.apply(x)


def all_reduce_mean(x: Tensor) -> Tensor:
    """Mean of a (detached) tensor over ranks, for logging."""
    if not is_distributed():
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / dist.get_world_size()
