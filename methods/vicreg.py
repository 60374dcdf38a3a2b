"""VICReg: Variance-Invariance-Covariance Regularization.

- [0] Bardes, Ponce, LeCun. VICReg: Variance-Invariance-Covariance Regularization
  for Self-Supervised Learning. ICLR 2022. https://arxiv.org/abs/2105.04906
- Official code: facebookresearch/vicreg @4e12602, ``main_vicreg.py``.

NOTE: the variance term *averages* the two branches (official code,
``std_loss = mean(relu(1 - std_x)) / 2 + mean(relu(1 - std_y)) / 2``), whereas the
paper's Eq. 6 / Algorithm 1 *sum* them. The published numbers come from the code,
so at μ = 25 our variance term is half the paper's (solo-learn follows the paper).

NOTE: the invariance term is the MSE on the *local* batch; only the variance and
covariance terms see the global batch (embeddings gathered with gradient before
centring). With DDP averaging the step equals a single-process step on the full
batch (methods.md §1.7); the per-rank printed loss differs, so we log its mean.

NOTE: the covariance divides by N − 1 of the batch actually seen; the official code
divides by the configured batch size − 1, which differs only on a partial last
batch. Our trainer always drops partial batches, so the two agree.

NOTE: each view runs through backbone and projector in its own forward call, as in
the official code, so every BatchNorm takes statistics from one view's batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods.base import METHODS, NON_NEGATIVE, POSITIVE, WIDTHS, Method, StepOutput
from methods.common import covariance_term, full_precision, mlp, variance_term
from methods.dist import gather_with_grad


@dataclass(frozen=True)
class VICRegConfig:
    """VICReg's paper/official defaults."""

    # expander widths; last Linear has no bias
    projector: str = field(default="8192-8192-8192", metadata=WIDTHS)
    invariance_weight: float = field(default=25.0, metadata=NON_NEGATIVE)  # λ, eq. 6
    variance_weight: float = field(default=25.0, metadata=NON_NEGATIVE)  # μ
    covariance_weight: float = field(default=1.0, metadata=NON_NEGATIVE)  # ν
    variance_eps: float = field(default=1e-4, metadata=POSITIVE)  # ε
    target_std: float = field(default=1.0, metadata=POSITIVE)  # γ


def vicreg_loss(
    z_a: Tensor,
    z_b: Tensor,
    *,
    invariance_weight: float = 25.0,
    variance_weight: float = 25.0,
    covariance_weight: float = 1.0,
    eps: float = 1e-4,
    target_std: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """VICReg loss of two (N_local, D) embedding batches, as the official code computes it.

    Returns the total and its weighted-free parts ``invariance``, ``variance``,
    ``covariance``. When a process group is initialised the embeddings are gathered
    with gradient across ranks for the variance and covariance terms.
    """
    if z_a.shape != z_b.shape or z_a.ndim != 2:
        raise ValueError(f"expected two (N, D) batches of equal shape, got {z_a.shape}, "
                         f"{z_b.shape}")
    invariance = F.mse_loss(z_a, z_b)
    z_a, z_b = gather_with_grad(z_a), gather_with_grad(z_b)
    if z_a.shape[0] < 2:
        raise ValueError("VICReg needs a global batch of at least 2 samples")
    variance = (variance_term(z_a, eps=eps, target_std=target_std)
                + variance_term(z_b, eps=eps, target_std=target_std)) / 2
    covariance = covariance_term(z_a) + covariance_term(z_b)
    loss = (invariance_weight * invariance + variance_weight * variance
            + covariance_weight * covariance)
    return loss, {"invariance": invariance, "variance": variance, "covariance": covariance}


@METHODS.register("vicreg", VICRegConfig)
class VICReg(Method):
    """Backbone + expander trained with :func:`vicreg_loss` (two views)."""

    def __init__(self, backbone: nn.Module, cfg: VICRegConfig) -> None:
        super().__init__(backbone)
        self.cfg = cfg
        self.projector = self.make_projector(backbone.num_features)

    def make_projector(self, in_dim: int) -> nn.Module:
        return mlp(in_dim, self.cfg.projector, last_bias=False)

    def training_loss(self, views: Sequence[Tensor]) -> StepOutput:
        h_a, z_a, z_b = self.embed_views(views)  # (B, F), (B, D), (B, D)
        c = self.cfg
        # NOTE: the official code runs the loss under fp16 autocast; we compute it in
        # fp32 (the D×D covariance loses too much in bf16) at a small cost.
        with torch.autocast(z_a.device.type, enabled=False):
            loss, parts = vicreg_loss(
                full_precision(z_a), full_precision(z_b), invariance_weight=c.invariance_weight,
                variance_weight=c.variance_weight, covariance_weight=c.covariance_weight,
                eps=c.variance_eps, target_std=c.target_std,
            )
        logs = {k: v.detach() for k, v in parts.items()}
        return StepOutput(loss=loss, features=h_a, embeddings=z_a.detach(), logs=logs,
                          branches={"projector": (z_a, z_b)})
