"""Shared pieces of the methods: MLP heads and VICReg's regularisation terms.

These are functions, not inherited behaviour: a method calls what it needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def parse_widths(spec: str) -> list[int]:
    """``"8192-8192-8192"`` → ``[8192, 8192, 8192]``; a clear error otherwise."""
    try:
        widths = [int(w) for w in spec.split("-")]
    except ValueError:
        raise ValueError(f"expected widths like '8192-8192-8192', got {spec!r}") from None
    if not widths or min(widths) <= 0:
        raise ValueError(f"expected positive widths like '8192-8192-8192', got {spec!r}")
    return widths


def mlp(
    in_dim: int,
    spec: str,
    *,
    hidden_bias: bool = True,
    last_bias: bool = True,
    last_bn: bool = False,
    last_bn_affine: bool = True,
) -> nn.Sequential:
    """Linear → BN → ReLU for every hidden width, then a last Linear (optionally BN).

    Args:
        in_dim: input width (the backbone's ``num_features``).
        spec: dash-separated widths; the last one is the output width.
        hidden_bias: bias on the hidden Linears (irrelevant before BN, kept for
            key-compatibility with the official checkpoints).
        last_bias: bias on the output Linear.
        last_bn: BatchNorm on the output (SimSiam, SimCLR v2).
        last_bn_affine: whether that last BN has γ/β.
    """
    widths = parse_widths(spec)
    layers: list[nn.Module] = []
    dims = [in_dim, *widths]
    for d_in, d_out in zip(dims[:-2], dims[1:-1]):
        layers += [nn.Linear(d_in, d_out, bias=hidden_bias), nn.BatchNorm1d(d_out), nn.ReLU(True)]
    layers.append(nn.Linear(dims[-2], dims[-1], bias=last_bias))
    if last_bn:
        layers.append(nn.BatchNorm1d(dims[-1], affine=last_bn_affine))
    return nn.Sequential(*layers)


def off_diagonal(m: Tensor) -> Tensor:
    """The off-diagonal elements of a square matrix, flattened."""
    n = m.shape[0]
    return m.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def variance_term(z: Tensor, *, eps: float = 1e-4, target_std: float = 1.0) -> Tensor:
    """VICReg's variance hinge: mean_j relu(γ − sqrt(Var(z_j) + ε)) on a (N, D) batch.

    ``Var`` is unbiased (N − 1), as in the official code. ``z`` must already hold
    the global batch (gather it first).
    """
    std = (z.var(dim=0, unbiased=True) + eps).sqrt()
    return F.relu(target_std - std).mean()


def covariance_term(z: Tensor) -> Tensor:
    """VICReg's covariance term: Σ_{i≠j} C(z)_ij² / D with C = z̄ᵀz̄ / (N − 1)."""
    n, d = z.shape
    z = z - z.mean(dim=0)
    cov = (z.T @ z) / (n - 1)
    return off_diagonal(cov).pow(2).sum() / d


def full_precision(z: Tensor) -> Tensor:
    """Upcast bf16/fp16 activations to fp32 for the loss (float64 stays float64)."""
    return z.float() if z.dtype in (torch.float16, torch.bfloat16) else z
