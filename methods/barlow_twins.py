"""Barlow Twins: redundancy reduction between the embeddings of two views.

- [0] Zbontar, Jing, Misra, LeCun, Deny. Barlow Twins: Self-Supervised Learning via
  Redundancy Reduction. ICML 2021. https://arxiv.org/abs/2103.03230
- Official code: facebookresearch/barlowtwins @8e8d284, ``main.py`` (methods.md §2).

NOTE: λ = 0.0051 (official ``--lambd`` default); the paper text says 5·10⁻³.

NOTE: the loss-side BatchNorm (affine=False, biased variance, eps 1e-5, batch
statistics) is written as a function over the *global* batch, the equivalent of the
official SyncBN module; it has no running statistics, which nothing reads.

NOTE: the official code sums the per-rank cross-correlation with a plain
``all_reduce`` that autograd does not see, so its DDP gradient is 1/W of the gradient
of the global loss (methods.md §2.5). We sum with :func:`all_reduce_sum_with_grad`,
so a W-process step equals a single-process step on the full batch. To mimic an
official W-GPU run exactly, scale the loss by 1/W.

NOTE: two lr groups as in the official code: weights at ``base_lr`` (0.2) and
biases/BN parameters at ``bias_lr_ratio`` × that (0.0048 / 0.2), the latter excluded
from weight decay and LARS. The official ``--weight-decay`` is 1e-6 while the paper
says 1.5e-6; the run-level optimizer (LARS, base_lr, wd) lives in
``sweeps/specs/barlow_twins.yaml``.

NOTE: c divides by the global batch actually seen, not the configured one; they differ
only on a partial last batch, which our trainer drops.

NOTE: each view runs through backbone and projector in its own forward call, as in
the official code, so every BatchNorm takes statistics from one view's batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from methods.base import (
    METHODS,
    NON_NEGATIVE,
    POSITIVE,
    WIDTHS,
    Method,
    ParamGroup,
    RegularizerConfig,
    StepOutput,
)
from methods.common import full_precision, mlp, off_diagonal
from methods.dist import all_reduce_sum_with_grad, world_size


@dataclass(frozen=True)
class BarlowTwinsConfig(RegularizerConfig):
    """Barlow Twins' official defaults."""

    # every Linear without bias, BN + ReLU between
    projector: str = field(default="8192-8192-8192", metadata=WIDTHS)
    # λ, weight of the redundancy-reduction term (eq. 1)
    lambd: float = field(default=0.0051, metadata=NON_NEGATIVE)
    bn_eps: float = field(default=1e-5, metadata=POSITIVE)  # eps of the loss-side BatchNorm
    # lr of biases/BN params ÷ lr of weights (0.0048 / 0.2)
    bias_lr_ratio: float = field(default=0.024, metadata=NON_NEGATIVE)


def _global_standardize(z: Tensor, n: int, eps: float) -> Tensor:
    """Training-mode BatchNorm without affine over the global batch of ``n`` rows."""
    mean = all_reduce_sum_with_grad(z.sum(dim=0)) / n  # (D,)
    var = all_reduce_sum_with_grad((z - mean).pow(2).sum(dim=0)) / n  # biased, (D,)
    return (z - mean) * torch.rsqrt(var + eps)


def barlow_twins_loss(
    z_a: Tensor, z_b: Tensor, *, lambd: float = 0.0051, eps: float = 1e-5
) -> tuple[Tensor, dict[str, Tensor]]:
    """Barlow Twins loss of two (N_local, D) embedding batches, as the official code.

    Each view is standardised per dimension over the global batch, then
    ``c = ẑ_aᵀ ẑ_b / N`` and ``loss = Σ_i (1 − c_ii)² + λ Σ_{i≠j} c_ij²``. Under a
    process group the sums run over all ranks with gradient, so every rank returns the
    global loss. Local batches must be equal in size (the trainer guarantees it).

    Args:
        z_a: projector outputs of view a, (N_local, D).
        z_b: projector outputs of view b, (N_local, D).
        lambd: λ, the weight of the off-diagonal (redundancy-reduction) term.
        eps: eps of the loss-side BatchNorm.

    Returns:
        The loss and its unweighted parts ``on_diag`` and ``off_diag``.
    """
    if z_a.shape != z_b.shape or z_a.ndim != 2:
        raise ValueError(f"expected two (N, D) batches of equal shape, got {z_a.shape}, "
                         f"{z_b.shape}")
    n = z_a.shape[0] * world_size()  # equal local batches, as the trainer guarantees
    if n < 2:
        raise ValueError("Barlow Twins needs a global batch of at least 2 samples")
    za_hat, zb_hat = _global_standardize(z_a, n, eps), _global_standardize(z_b, n, eps)
    c = all_reduce_sum_with_grad(za_hat.T @ zb_hat) / n  # (D, D) cross-correlation
    on_diag = (1 - torch.diagonal(c)).pow(2).sum()
    off_diag = off_diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag, {"on_diag": on_diag, "off_diag": off_diag}


@METHODS.register("barlow_twins", BarlowTwinsConfig)
class BarlowTwins(Method):
    """Backbone + bias-free projector trained with :func:`barlow_twins_loss`."""

    def __init__(self, backbone: nn.Module, cfg: BarlowTwinsConfig) -> None:
        super().__init__(backbone)
        self.cfg = cfg
        self.projector = self.make_projector(backbone.num_features)

    def make_projector(self, in_dim: int) -> nn.Module:
        return mlp(in_dim, self.cfg.projector, hidden_bias=False, last_bias=False)

    def training_loss(self, views: Sequence[Tensor]) -> StepOutput:
        h_a, z_a, z_b = self.embed_views(views)  # (B, F), (B, D), (B, D)
        # NOTE: the official loss runs under fp16 autocast; we compute it in fp32, since
        # the D×D cross-correlation loses too much in half precision.
        with torch.autocast(z_a.device.type, enabled=False):
            loss, parts = barlow_twins_loss(full_precision(z_a), full_precision(z_b),
                                            lambd=self.cfg.lambd, eps=self.cfg.bn_eps)
        logs = {k: v.detach() for k, v in parts.items()}
        return StepOutput(loss=loss, features=h_a, embeddings=z_a.detach(), logs=logs,
                          branches={"projector": (z_a, z_b)})

    def param_groups(self) -> list[ParamGroup]:
        """Weights at the full lr; biases/BN at ``bias_lr_ratio`` of it, no wd or LARS."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            ParamGroup("weights", [p for p in params if p.ndim > 1]),
            ParamGroup("biases_bn", [p for p in params if p.ndim <= 1],
                       lr_scale=self.cfg.bias_lr_ratio, exclude_wd_and_lars=True),
        ]
        return [g for g in groups if g.params]
