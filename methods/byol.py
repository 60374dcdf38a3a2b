"""BYOL: Bootstrap Your Own Latent.

- [0] Grill, Strub, Altché, Tallec, Richemond, et al. Bootstrap Your Own Latent: A New
  Approach to Self-Supervised Learning. NeurIPS 2020. https://arxiv.org/abs/2006.07733
- Official code: deepmind/deepmind-research @d8df415, ``byol/`` (methods.md §4).

NOTE: the target network is a deep copy of the online backbone + projector (as
lightly, solo-learn and lucidrains do); the official code initialises it from a
different RNG key. The gap to the official init decays as ∏_k τ_k (≈ 2% after 1000 steps).

NOTE: the EMA covers parameters only (official). The target runs in train mode, so its
BatchNorms use batch statistics and update their own running buffers by their own
forward pass, as the official target does; they are copied once at init, never EMA'd.

NOTE: τ_k = 1 − (1 − τ_base)(cos(πk/K) + 1)/2 with k the 0-based index of the step just
taken, and ξ ← ξ + (1 − τ)(θ − ξ) uses the online weights *after* that step (official).

NOTE: multi-GPU as official (§4.5): nothing is gathered; the loss is a per-sample mean of
the local batch and DDP averages the gradients, so with global-batch BN (the trainer's
SyncBN, which also converts the target's BNs) a W-process step equals one process on the
whole batch. The EMA then runs identically on every rank.

NOTE: projector and predictor follow the official MLP: hidden Linear with bias, BN,
ReLU, then Linear *without* bias and no output BN (lightly/solo-learn add a last bias).
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods.base import METHODS, WIDTHS, Method, RegularizerConfig, StepOutput
from methods.common import full_precision, mlp, parse_widths


@dataclass(frozen=True)
class BYOLConfig(RegularizerConfig):
    """BYOL's paper/official defaults (1000-epoch preset)."""

    # hidden-output widths of the online/target projector
    projector: str = field(default="4096-256", metadata=WIDTHS)
    # q_θ; its output width must equal the projector's
    predictor: str = field(default="4096-256", metadata=WIDTHS)
    # τ_base, EMA decay at step 0 (Grill et al. 2020, §3.3)
    base_tau: float = field(default=0.996, metadata={"ge": 0, "le": 1})
    use_predictor: bool = True  # False: identity predictor (VICReg Table 4 ablation)
    use_ema: bool = True  # False: target = online network with stop-gradient


def byol_head(in_dim: int, spec: str) -> nn.Sequential:
    """The official BYOL MLP: Linear(bias) → BN → ReLU → Linear(no bias)."""
    return mlp(in_dim, spec, hidden_bias=True, last_bias=False)


def ema_momentum(step: int, total_steps: int, base_tau: float) -> float:
    """τ_k = 1 − (1 − τ_base)·(cos(πk/K) + 1)/2: τ_base at k = 0, 1 at k = K."""
    return 1 - (1 - base_tau) * (math.cos(math.pi * step / max(total_steps, 1)) + 1) / 2


def byol_loss(p_a: Tensor, p_b: Tensor, t_a: Tensor, t_b: Tensor
              ) -> tuple[Tensor, dict[str, Tensor]]:
    """L_BYOL = ℓ(p_a, sg(t_b)) + ℓ(p_b, sg(t_a)), ℓ = mean_batch (2 − 2·cos); in [0, 8].

    ``p_*`` are online predictions and ``t_*`` target projections, (N, D) each. The
    rows are l2-normalised as x·rsqrt(max(Σx², 1e-12)), as in the official code.
    """
    if not p_a.shape == p_b.shape == t_a.shape == t_b.shape or p_a.ndim != 2:
        raise ValueError(f"expected four (N, D) batches of equal shape, got {p_a.shape}, "
                         f"{p_b.shape}, {t_a.shape}, {t_b.shape}")

    def regression(p: Tensor, t: Tensor) -> Tensor:
        p, t = F.normalize(p, dim=1, eps=1e-6), F.normalize(t.detach(), dim=1, eps=1e-6)
        return (2 - 2 * (p * t).sum(dim=1)).mean()

    loss_ab, loss_ba = regression(p_a, t_b), regression(p_b, t_a)
    return loss_ab + loss_ba, {"loss_ab": loss_ab, "loss_ba": loss_ba}


@METHODS.register("byol", BYOLConfig)
class BYOL(Method):
    """Online backbone + projector + predictor regressing an EMA target (two views).

    Args:
        backbone: the online encoder; the target starts as a deep copy of it.
        cfg: the method's settings.
    """

    def __init__(self, backbone: nn.Module, cfg: BYOLConfig) -> None:
        super().__init__(backbone)
        self.cfg = cfg
        self.projector = self.make_projector(backbone.num_features)
        dim = parse_widths(cfg.projector)[-1]
        self.predictor: nn.Module = nn.Identity()
        if cfg.use_predictor:
            if parse_widths(cfg.predictor)[-1] != dim:
                raise ValueError(f"predictor {cfg.predictor!r} must end in the projector's "
                                 f"width {dim}")
            self.predictor = byol_head(dim, cfg.predictor)
        # A submodule with requires_grad=False: in the state dict (so checkpointed),
        # skipped by param_groups (which keeps trainable parameters only).
        self.target: nn.Module | None = None
        if cfg.use_ema:
            self.target = nn.Sequential(OrderedDict(
                backbone=copy.deepcopy(backbone), projector=copy.deepcopy(self.projector),
            )).requires_grad_(False)

    def make_projector(self, in_dim: int) -> nn.Module:
        return byol_head(in_dim, self.cfg.projector)

    def set_branch_b(self, backbone_b: nn.Module) -> None:
        """Unshared branches only without EMA: the target is a copy of one online branch."""
        if self.target is not None:
            raise ValueError("byol: unshared branches (backbone_b) need method.use_ema=false; "
                             "the EMA target averages one online network, so a second "
                             "online branch would have no target of its own")
        super().set_branch_b(backbone_b)

    def training_loss(self, views: Sequence[Tensor]) -> StepOutput:
        """Symmetric loss of the first two views, each (B, 3, H, W)."""
        x_a, x_b = views[:2]  # the target sees the same views
        h_a, z_a, z_b = self.embed_views(views)  # (B, F), (B, D), (B, D)
        p_a, p_b = self.predictor(z_a), self.predictor(z_b)  # (B, D)
        if self.target is None:
            t_a, t_b = z_a.detach(), z_b.detach()
        else:
            with torch.no_grad():
                t_a, t_b = self.target(x_a), self.target(x_b)  # (B, D)
        with torch.autocast(z_a.device.type, enabled=False):
            loss, parts = byol_loss(*(full_precision(x) for x in (p_a, p_b, t_a, t_b)))
        logs = {k: v.detach() for k, v in parts.items()}
        return StepOutput(loss=loss, features=h_a, embeddings=z_a.detach(), logs=logs,
                          branches={"projector": (z_a, z_b), "predictor": (p_a, p_b)})

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """EMA of the online backbone + projector into the target: ξ ← ξ + (1 − τ)(θ − ξ)."""
        if self.target is None:
            return
        tau = ema_momentum(step, total_steps, self.cfg.base_tau)
        online = [*self.backbone.parameters(), *self.projector.parameters()]
        target = list(self.target.parameters())
        if len(online) != len(target):
            raise RuntimeError("online and target networks no longer have the same parameters")
        torch._foreach_lerp_(target, online, 1.0 - tau)
