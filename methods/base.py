"""The method contract: what a registered SSL method gives the trainer.

A method is one file: a frozen config dataclass with paper defaults, its heads,
a pure loss function, and a :class:`Method` subclass registered with
``@METHODS.register("name", ConfigClass)``. The trainer only talks to this
interface; it never names a method.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from backbones.registry import Registry
from methods.common import parse_widths

METHODS: Registry[type[Method]] = Registry("method")

# Field metadata of the method configs: what a setting may hold, checked by the trainer's
# config when it is built (``trainer.schema``; plain keys, so methods import no trainer).
WIDTHS = {"check": parse_widths}  # "2048-2048-128": dash-separated positive widths
POSITIVE = {"gt": 0}
NON_NEGATIVE = {"ge": 0}


@dataclass
class StepOutput:
    """What one training step of a method returns."""

    loss: Tensor  # scalar the trainer back-propagates
    features: Tensor  # (B, F) backbone features of view 0, for the online probe
    embeddings: Tensor  # (B, D) projector output of view 0, for collapse diagnostics
    logs: dict[str, Tensor] = field(default_factory=dict)  # loss parts, detached
    # Named embedding pairs (view a, view b) that plug-in regularizers may act on,
    # e.g. {"projector": (z_a, z_b), "predictor": (p_a, p_b)}; local rows, with grad.
    branches: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)


@dataclass(frozen=True)
class RegularizerConfig:
    """VICReg's variance/covariance terms as plug-ins any method can add (VICReg Table 4).

    Method configs inherit these fields. The terms act on ``StepOutput.branches[reg_on]``,
    gathered with gradient over ranks: ``var_reg_weight · ½[v(Z_a) + v(Z_b)]`` and
    ``cov_reg_weight · [c(Z_a) + c(Z_b)]``, the same conventions as :func:`vicreg_loss`.
    The paper uses μ = 1, ν = 0.01 for BYOL and SimSiam (App. C.4).

    NOTE: ``reg_normalize`` is ours, not Table 4's: the terms then act on l2-normalised
    rows with γ = 1/√D (the target of VICReg Table 8's normalised-embedding variant).
    A cosine loss ignores scale, so on raw embeddings the hinge can be met by a large
    mean plus one stretched direction; on unit rows it cannot. At CPU scale (README,
    collapse ablation) μ = 1 on raw embeddings left SimSiam without predictor collapsed
    (rank ≈ 1), while μ = 25 on normalised rows did not.
    """

    # μ added to the method's own loss; 0 = off
    var_reg_weight: float = field(default=0.0, metadata=NON_NEGATIVE)
    # ν added to the method's own loss; 0 = off
    cov_reg_weight: float = field(default=0.0, metadata=NON_NEGATIVE)
    # which branch pair: projector | predictor
    reg_on: str = field(default="projector", metadata={"choices": ("projector", "predictor")})
    # l2-normalise the rows first and use γ = 1/√D (VICReg Table 8's normalised variant)
    reg_normalize: bool = False


@dataclass
class ParamGroup:
    """A group of parameters with its optimisation settings.

    ``lr_scale`` multiplies the scheduled lr; ``fixed_lr`` keeps the peak lr for the
    whole run (SimSiam's predictor); ``exclude_wd_and_lars`` removes weight decay and
    LARS adaptation (the official rule for ``ndim == 1`` parameters).
    """

    name: str
    params: list[nn.Parameter]
    lr_scale: float = 1.0
    fixed_lr: bool = False
    exclude_wd_and_lars: bool = False


def split_by_ndim(name: str, module: nn.Module, **kwargs: Any) -> list[ParamGroup]:
    """Trainable parameters of ``module``: ndim > 1 weights, and ndim == 1 excluded."""
    params = [p for p in module.parameters() if p.requires_grad]
    groups = [
        ParamGroup(name, [p for p in params if p.ndim > 1], **kwargs),
        ParamGroup(f"{name}_bias_bn", [p for p in params if p.ndim <= 1],
                   exclude_wd_and_lars=True, **kwargs),
    ]
    return [g for g in groups if g.params]


def add_regularizers(out: StepOutput, cfg: RegularizerConfig) -> StepOutput:
    """Add the configured variance/covariance terms on ``out.branches[cfg.reg_on]``."""
    from methods.common import covariance_term, full_precision, variance_term
    from methods.dist import gather_with_grad

    if cfg.reg_on not in out.branches:
        raise ValueError(f"reg_on={cfg.reg_on!r} but this method exposes "
                         f"{sorted(out.branches)}")
    z_a, z_b = (gather_with_grad(full_precision(z)) for z in out.branches[cfg.reg_on])
    target_std = 1.0
    if cfg.reg_normalize:
        z_a, z_b = F.normalize(z_a, dim=1), F.normalize(z_b, dim=1)
        target_std = z_a.shape[1] ** -0.5
    loss, logs = out.loss, dict(out.logs)
    if cfg.var_reg_weight:
        var = (variance_term(z_a, target_std=target_std)
               + variance_term(z_b, target_std=target_std)) / 2
        loss = loss + cfg.var_reg_weight * var
        logs["reg_variance"] = var.detach()
    if cfg.cov_reg_weight:
        cov = covariance_term(z_a) + covariance_term(z_b)
        loss = loss + cfg.cov_reg_weight * cov
        logs["reg_covariance"] = cov.detach()
    return StepOutput(loss, out.features, out.embeddings, logs, out.branches)


class Method(nn.Module):
    """Base class: a backbone plus method-specific heads and a loss."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        # View b's own backbone and projector when the branches do not share weights
        # (VICReg Table 5); None = both views run through ``backbone``/``projector``.
        self.backbone_b: nn.Module | None = None
        self.projector_b: nn.Module | None = None

    def make_projector(self, in_dim: int) -> nn.Module:
        """A fresh projector for ``in_dim`` input features, from this method's config."""
        raise NotImplementedError(f"{type(self).__name__} does not define make_projector")

    def set_branch_b(self, backbone_b: nn.Module) -> None:
        """Run view b through its own backbone and projector: unshared weights.

        ``backbone_b`` may be another instance of the same architecture (unshared
        weights) or a different architecture with a different feature width (R50/R101,
        R50/ViT-S in VICReg Table 5); its projector is built by :meth:`make_projector`
        for that width, with the same widths as the first branch's, so both
        embeddings live in the same space.

        NOTE: the VICReg paper (§4.5, Table 5) trains "different weights" branches but
        does not say whether the expander is shared. A different-width backbone needs its
        own first layer anyway, so every unshared branch gets a whole projector of its
        own; heads after the projector (SimSiam's and BYOL's predictors) stay shared.
        """
        self.backbone_b = backbone_b
        self.projector_b = self.make_projector(int(backbone_b.num_features))

    def training_loss(self, views: Sequence[Tensor]) -> StepOutput:
        """Loss on a list of augmented views, each (B, 3, H, W)."""
        raise NotImplementedError

    def forward(self, views: Sequence[Tensor]) -> StepOutput:
        """The method's loss plus any plug-in regularizers its config switches on."""
        out = self.training_loss(views)
        cfg = getattr(self, "cfg", None)
        if isinstance(cfg, RegularizerConfig) and (cfg.var_reg_weight or cfg.cov_reg_weight):
            out = add_regularizers(out, cfg)
        return out

    def embed_views(self, views: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """``(h_a, z_a, z_b)``: view a's backbone features (B, F) and both projections (B, D).

        Each view runs through backbone and ``self.projector`` in its own forward call,
        as the official VICReg / Barlow Twins / BYOL / SimSiam code does, so every
        BatchNorm takes its statistics from one view's batch. With unshared branches
        (:meth:`set_branch_b`) view b goes through ``backbone_b`` and ``projector_b``.
        """
        x_a, x_b = views[:2]
        h_a = self.backbone(x_a)
        if self.backbone_b is None:
            return h_a, self.projector(h_a), self.projector(self.backbone(x_b))
        assert self.projector_b is not None
        return h_a, self.projector(h_a), self.projector_b(self.backbone_b(x_b))

    def param_groups(self) -> list[ParamGroup]:
        """Default: every trainable parameter, ndim == 1 ones excluded from wd/LARS."""
        return split_by_ndim("all", self)

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """Hook after each optimizer step (BYOL's EMA); default no-op."""

    def export_meta(self) -> dict[str, Any]:
        """Extra metadata stored in ``backbone.pth`` (e.g. a second branch's name)."""
        return {}
