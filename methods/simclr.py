"""SimCLR: contrastive learning with the NT-Xent loss.

- [0] Chen, Kornblith, Norouzi, Hinton. A Simple Framework for Contrastive Learning
  of Visual Representations. ICML 2020. https://arxiv.org/abs/2002.05709
- [1] Chen, Kornblith, Swersky, Norouzi, Hinton. Big Self-Supervised Models are Strong
  Semi-Supervised Learners (SimCLR v2). NeurIPS 2020. https://arxiv.org/abs/2006.10029
- Official code: google-research/simclr @383d414, ``tf2/objective.py``, ``tf2/model.py``
  (methods.md §3).

NOTE: the loss *sums* the two directions (anchors from view a, then from view b), each
a mean over the local anchors, as the official ``add_contrastive_loss``. That is 2× the
paper's L (Alg. 1), and 2× lightly's / solo-learn's value; multiply by ½ for the paper's
scale. The published numbers come from the code; under LARS the scale only matters for
the non-adapted BN/bias parameters and through weight decay.

NOTE: both views go through backbone and projector in ONE forward pass on [x_a; x_b],
as the official code, so every BatchNorm takes statistics over 2N images (the other
methods forward each view separately). Under DDP + global BN the statistics cover the
2N images of all ranks, the same set as one process on the full batch. With unshared
branches (``backbone_b``, VICReg Table 5) one pass per branch is the only option, so
each network's BatchNorm sees its own view's N images.

NOTE: negatives are gathered across ranks with gradient; anchors stay local, with
labels offset by rank × local batch. Each anchor has 1 positive and 2N − 2 negatives
(its own similarity is masked out). With DDP averaging the step equals a
single-process step on the full batch (methods.md §3.5).

NOTE: the projector is SimCLR v2's (``tf2`` default, 3 layers 2048-2048-128): bias-free
Linears, BN on every layer, and the output BN has a scale γ but no shift β. The v1
paper's head (its 69.3% headline) is 2 layers: ``projector: "2048-128"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods.base import METHODS, POSITIVE, WIDTHS, Method, RegularizerConfig, StepOutput
from methods.common import full_precision, mlp, parse_widths
from methods.dist import gather_with_grad, rank


@dataclass(frozen=True)
class SimCLRConfig(RegularizerConfig):
    """SimCLR's official defaults (v2 projection head)."""

    # Linear widths; BN after each, ReLU between
    projector: str = field(default="2048-2048-128", metadata=WIDTHS)
    # τ (official default and ImageNet command)
    temperature: float = field(default=0.1, metadata=POSITIVE)


class _Scale(nn.Module):
    """Per-dimension learnable scale γ: with a non-affine BN before it, a BN without β."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight


def simclr_loss(
    z_a: Tensor, z_b: Tensor, *, temperature: float = 0.1
) -> tuple[Tensor, dict[str, Tensor]]:
    """NT-Xent of two (N_local, D) projection batches, as the official code computes it.

    Local batches must be equal in size (the trainer guarantees it).

    Args:
        z_a: projections of view a, (N_local, D); l2-normalised here.
        z_b: projections of view b, (N_local, D).
        temperature: τ, dividing the cosine similarities.

    Returns:
        ``loss_a + loss_b`` (mean cross-entropy over the local anchors of each view,
        against the 2N − 1 other global candidates) and the parts ``loss_a``, ``loss_b``
        and ``contrast_acc`` (how often a view-a anchor ranks its positive first).
    """
    if z_a.shape != z_b.shape or z_a.ndim != 2:
        raise ValueError(f"expected two (N, D) batches of equal shape, got {z_a.shape}, "
                         f"{z_b.shape}")
    # x / sqrt(max(Σx², 1e-12)), the official tf.math.l2_normalize
    h_a, h_b = F.normalize(z_a, dim=1, eps=1e-6), F.normalize(z_b, dim=1, eps=1e-6)
    h_a_all, h_b_all = gather_with_grad(h_a), gather_with_grad(h_b)  # (N, D)
    n_local, n = h_a.shape[0], h_a_all.shape[0]
    if n < 2:
        raise ValueError("SimCLR needs a global batch of at least 2 samples")
    labels = torch.arange(n_local, device=z_a.device) + rank() * n_local
    is_self = F.one_hot(labels, n).bool()  # (N_local, N)
    aa = (h_a @ h_a_all.T / temperature).masked_fill(is_self, float("-inf"))
    bb = (h_b @ h_b_all.T / temperature).masked_fill(is_self, float("-inf"))
    ab = h_a @ h_b_all.T / temperature  # (N_local, N); the positive is column `labels`
    ba = h_b @ h_a_all.T / temperature
    loss_a = F.cross_entropy(torch.cat([ab, aa], dim=1), labels)
    loss_b = F.cross_entropy(torch.cat([ba, bb], dim=1), labels)
    with torch.no_grad():
        acc = (torch.cat([ab, aa], dim=1).argmax(dim=1) == labels).to(z_a.dtype).mean()
    return loss_a + loss_b, {"loss_a": loss_a, "loss_b": loss_b, "contrast_acc": acc}


@METHODS.register("simclr", SimCLRConfig)
class SimCLR(Method):
    """Backbone + projection head trained with :func:`simclr_loss` (two views)."""

    def __init__(self, backbone: nn.Module, cfg: SimCLRConfig) -> None:
        super().__init__(backbone)
        self.cfg = cfg
        self.projector = self.make_projector(backbone.num_features)

    def make_projector(self, in_dim: int) -> nn.Module:
        head = mlp(in_dim, self.cfg.projector, hidden_bias=False, last_bias=False,
                   last_bn=True, last_bn_affine=False)
        return nn.Sequential(*head, _Scale(parse_widths(self.cfg.projector)[-1]))

    def training_loss(self, views: Sequence[Tensor]) -> StepOutput:
        x_a, x_b = views[:2]
        n = x_a.shape[0]
        if self.backbone_b is None:
            h = self.backbone(torch.cat([x_a, x_b]))  # (2B, F): BN statistics over both views
            z = self.projector(h)  # (2B, D)
            h_a, z_a, z_b = h[:n], z[:n], z[n:]
        else:  # unshared branches: each network sees (and normalises over) its own view
            h_a, z_a, z_b = self.embed_views(views)
        # NOTE: the loss is computed in fp32 even under bf16/fp16 autocast: logits / τ
        # with τ = 0.1 span ±10, where half precision loses the small differences.
        with torch.autocast(z_a.device.type, enabled=False):
            loss, parts = simclr_loss(full_precision(z_a), full_precision(z_b),
                                      temperature=self.cfg.temperature)
        logs = {k: v.detach() for k, v in parts.items()}
        return StepOutput(loss=loss, features=h_a, embeddings=z_a.detach(), logs=logs,
                          branches={"projector": (z_a, z_b)})
