"""SimSiam: Exploring Simple Siamese Representation Learning.

- [0] Chen, He. Exploring Simple Siamese Representation Learning. CVPR 2021.
  https://arxiv.org/abs/2011.10566
- Official code: facebookresearch/simsiam @a7bc177 (methods.md §5); nothing copied.

NOTE: the official output Linear of the projector has a bias with requires_grad=False
(a no-op before BN(affine=False)); we build it without a bias, so that state-dict key
is absent. The official hidden width is the backbone's width (2048 for ResNet-50);
here it is the explicit ``projector`` spec, equal for ResNet-50.

NOTE: weight decay 1e-4 applies to *all* parameters, BN and biases included
(official), so :meth:`SimSiam.param_groups` excludes nothing; with ``fix_pred_lr`` the
predictor keeps the peak lr (``--fix-pred-lr`` of the official README command).

NOTE: ``use_bn=False`` (not in the SimSiam paper) drops every BN of both heads, as in the
VICReg paper's Table 4 rows without "BN". It matters for that ablation: with the output
BN(affine=False) each dimension has unit batch variance, so the plug-in variance hinge
(std ≥ 1) is inactive and cannot act on ``z``.

NOTE: multi-GPU as official (§5.1, §5.5): nothing is gathered; the loss is the local
per-sample mean, DDP averages, and the trainer's SyncBN covers every BN (projector and
predictor included), so a W-process step equals one process on the whole batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods.base import METHODS, WIDTHS, Method, ParamGroup, RegularizerConfig, StepOutput
from methods.common import full_precision, mlp, parse_widths


@dataclass(frozen=True)
class SimSiamConfig(RegularizerConfig):
    """SimSiam's paper/official defaults (ImageNet, ResNet-50)."""

    # f's MLP; output BN, no affine (Chen & He 2021, §3)
    projector: str = field(default="2048-2048-2048", metadata=WIDTHS)
    # h: bottleneck 512, output width = projector's
    predictor: str = field(default="512-2048", metadata=WIDTHS)
    use_predictor: bool = True  # False: identity predictor (collapses; paper Table 1)
    fix_pred_lr: bool = True  # keep the predictor at the peak lr (paper §4.2)
    use_bn: bool = True  # False: no BN in projector/predictor (VICReg Table 4, "BN" column)


def plain_mlp(in_dim: int, spec: str) -> nn.Sequential:
    """Linear → ReLU per hidden width, then a last Linear; every Linear has a bias, no BN."""
    dims = [in_dim, *parse_widths(spec)]
    layers: list[nn.Module] = []
    for d_in, d_out in zip(dims[:-2], dims[1:-1]):
        layers += [nn.Linear(d_in, d_out), nn.ReLU(True)]
    return nn.Sequential(*layers, nn.Linear(dims[-2], dims[-1]))


def simsiam_projector(in_dim: int, spec: str, use_bn: bool = True) -> nn.Sequential:
    """Linear(no bias) → BN → ReLU per hidden layer, Linear(no bias) → BN(affine=False).

    With ``use_bn=False`` it is :func:`plain_mlp` instead.
    """
    if not use_bn:
        return plain_mlp(in_dim, spec)
    return mlp(in_dim, spec, hidden_bias=False, last_bias=False, last_bn=True,
               last_bn_affine=False)


def simsiam_predictor(in_dim: int, spec: str, use_bn: bool = True) -> nn.Sequential:
    """Linear(no bias) → BN → ReLU → Linear(bias), no output BN; else :func:`plain_mlp`."""
    if not use_bn:
        return plain_mlp(in_dim, spec)
    return mlp(in_dim, spec, hidden_bias=False, last_bias=True)


def simsiam_loss(p_a: Tensor, p_b: Tensor, z_a: Tensor, z_b: Tensor) -> Tensor:
    """−½[mean cos(p_a, sg(z_b)) + mean cos(p_b, sg(z_a))], in [−1, 1] (paper Alg. 1).

    The stop-gradient is applied here: no gradient ever reaches ``z_a`` or ``z_b``
    through this loss. Cosines use ``eps = 1e-8`` as ``nn.CosineSimilarity``.
    """
    if not p_a.shape == p_b.shape == z_a.shape == z_b.shape or p_a.ndim != 2:
        raise ValueError(f"expected four (N, D) batches of equal shape, got {p_a.shape}, "
                         f"{p_b.shape}, {z_a.shape}, {z_b.shape}")
    cos_ab = F.cosine_similarity(p_a, z_b.detach(), dim=1, eps=1e-8).mean()
    cos_ba = F.cosine_similarity(p_b, z_a.detach(), dim=1, eps=1e-8).mean()
    return -0.5 * (cos_ab + cos_ba)


@METHODS.register("simsiam", SimSiamConfig)
class SimSiam(Method):
    """Backbone + projector f and predictor h, trained with :func:`simsiam_loss`.

    Args:
        backbone: the encoder's trunk; the projector completes the paper's f.
        cfg: the method's settings.
    """

    def __init__(self, backbone: nn.Module, cfg: SimSiamConfig) -> None:
        super().__init__(backbone)
        self.cfg = cfg
        self.projector = self.make_projector(backbone.num_features)
        dim = parse_widths(cfg.projector)[-1]
        self.predictor: nn.Module = nn.Identity()
        if cfg.use_predictor:
            if parse_widths(cfg.predictor)[-1] != dim:
                raise ValueError(f"predictor {cfg.predictor!r} must end in the projector's "
                                 f"width {dim}")
            self.predictor = simsiam_predictor(dim, cfg.predictor, cfg.use_bn)

    def make_projector(self, in_dim: int) -> nn.Module:
        return simsiam_projector(in_dim, self.cfg.projector, self.cfg.use_bn)

    def training_loss(self, views: Sequence[Tensor]) -> StepOutput:
        """Symmetric loss of the first two views, each (B, 3, H, W)."""
        h_a, z_a, z_b = self.embed_views(views)  # (B, F), (B, D), (B, D)
        p_a, p_b = self.predictor(z_a), self.predictor(z_b)  # (B, D)
        with torch.autocast(z_a.device.type, enabled=False):
            loss = simsiam_loss(*(full_precision(x) for x in (p_a, p_b, z_a, z_b)))
        return StepOutput(loss=loss, features=h_a, embeddings=z_a.detach(),
                          branches={"projector": (z_a, z_b), "predictor": (p_a, p_b)})

    def param_groups(self) -> list[ParamGroup]:
        """Encoder (backbone + projector) and predictor; weight decay on every parameter."""
        pred = [p for p in self.predictor.parameters() if p.requires_grad]
        pred_ids = {id(p) for p in pred}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in pred_ids]
        groups = [ParamGroup("encoder", rest)]
        if pred:
            groups.append(ParamGroup("predictor", pred, fixed_lr=self.cfg.fix_pred_lr))
        return groups
