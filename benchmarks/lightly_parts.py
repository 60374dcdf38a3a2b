"""lightly's side of the throughput benchmark: its heads, losses, LARS and transforms.

What a lightly (1.6) user would write for each method, structured as lightly's own
benchmark modules, at the head widths of our config; ``benchmarks/throughput.py`` times it
against our trainer. Kept apart so that the timing harness reads without lightly's API.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from lightly import loss as lightly_loss
from lightly import transforms as lightly_transforms
from lightly.models.modules import heads
from lightly.models.utils import (
    deactivate_requires_grad,
    get_weight_decay_parameters,
    update_momentum,
)
from lightly.utils.lars import LARS
from lightly.utils.scheduler import cosine_schedule
from PIL import Image
from torch import Tensor, nn

from methods.common import parse_widths
from trainer.datasets import ImageSet


class PILImages(torch.utils.data.Dataset):
    """The pool as a lightly user's dataset: PIL RGB images through ``transform``."""

    def __init__(self, images: ImageSet, transform: Callable[[Image.Image], Any]) -> None:
        self.pixels = images.images.permute(0, 2, 3, 1).contiguous().numpy()  # (N, H, W, 3)
        self.labels, self.transform = images.labels.tolist(), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.transform(Image.fromarray(self.pixels[i])), self.labels[i]


class LightlyModel(nn.Module):
    """lightly's parts, structured as lightly's benchmark modules.

    No prediction head (VICReg, Barlow Twins, SimCLR): one forward over both views. With
    one (BYOL, SimSiam): a forward per view, loss ``scale · [d(p_a, t_b) + d(p_b, t_a)]``
    with t a momentum teacher's projections (BYOL, scale 2) or sg(z) (SimSiam, ½).
    """

    def __init__(self, backbone: nn.Module, projection_head: nn.Module, criterion: nn.Module,
                 prediction_head: nn.Module | None = None, use_teacher: bool = False) -> None:
        super().__init__()
        self.backbone, self.projection_head, self.criterion = backbone, projection_head, criterion
        self.prediction_head, self.teacher = prediction_head, None
        if use_teacher:
            self.teacher = nn.Sequential(copy.deepcopy(backbone), copy.deepcopy(projection_head))
            deactivate_requires_grad(self.teacher)

    def before_step(self, step: int, total_steps: int) -> None:
        """BYOL: lightly's ``update_momentum``, τ from its ``cosine_schedule``."""
        if self.teacher is not None:
            m = cosine_schedule(step, total_steps, 0.996, 1.0)
            update_momentum(self.backbone, self.teacher[0], m)
            update_momentum(self.projection_head, self.teacher[1], m)

    def forward(self, x_a: Tensor, x_b: Tensor) -> tuple[Tensor, Tensor]:
        """The loss and the backbone features of view a, (B, F)."""
        if self.prediction_head is None:
            h = self.backbone(torch.cat([x_a, x_b]))  # (2B, F)
            z_a, z_b = self.projection_head(h).chunk(2)  # (B, D) each
            return self.criterion(z_a, z_b), h[: len(x_a)]
        h_a = self.backbone(x_a)  # (B, F)
        z_a, z_b = self.projection_head(h_a), self.projection_head(self.backbone(x_b))
        p_a, p_b = self.prediction_head(z_a), self.prediction_head(z_b)
        t_a, t_b, scale = z_a.detach(), z_b.detach(), 0.5
        if self.teacher is not None:
            with torch.no_grad():
                t_a, t_b, scale = self.teacher(x_a), self.teacher(x_b), 2.0
        return scale * (self.criterion(p_a, t_b) + self.criterion(p_b, t_a)), h_a


def _hidden_and_out(spec: str, num_layers: int | None = None) -> tuple[int, int, int]:
    widths = parse_widths(spec)
    if len(widths) != (num_layers or len(widths)) or len(set(widths[:-1])) > 1:
        raise ValueError(f"lightly's head needs {num_layers or 'its'} layers of equal hidden "
                         f"width, got {spec!r}")
    return widths[0], widths[-1], len(widths)


def lightly_model(method: str, backbone: nn.Module, method_cfg: Any) -> LightlyModel:
    """lightly's ``method`` around ``backbone``, at the head widths of our ``method_cfg``."""
    f, loss = backbone.num_features, lightly_loss
    if method == "vicreg":
        hidden, out, n = _hidden_and_out(method_cfg.projector)
        return LightlyModel(backbone, heads.VICRegProjectionHead(f, hidden, out, n),
                            loss.VICRegLoss())
    if method == "barlow_twins":
        hidden, out, _ = _hidden_and_out(method_cfg.projector, 3)
        return LightlyModel(backbone, heads.BarlowTwinsProjectionHead(f, hidden, out),
                            loss.BarlowTwinsLoss(lambda_param=method_cfg.lambd))
    if method == "simclr":
        hidden, out, n = _hidden_and_out(method_cfg.projector)
        return LightlyModel(backbone, heads.SimCLRProjectionHead(f, hidden, out, n),
                            loss.NTXentLoss(temperature=method_cfg.temperature))
    byol = method == "byol"
    hidden, out, _ = _hidden_and_out(method_cfg.projector, 2 if byol else 3)
    pred_hidden, _, _ = _hidden_and_out(method_cfg.predictor, 2)
    project, predict = ((heads.BYOLProjectionHead, heads.BYOLPredictionHead) if byol else
                        (heads.SimSiamProjectionHead, heads.SimSiamPredictionHead))
    return LightlyModel(backbone, project(f, hidden, out), loss.NegativeCosineSimilarity(),
                        predict(out, pred_hidden, out), use_teacher=byol)


def lightly_transform(method: str, size: int) -> Callable[[Image.Image], list[Tensor]]:
    """The two-view transform a lightly user pairs with ``method``."""
    T = lightly_transforms
    if method in ("byol", "barlow_twins"):  # lightly's Barlow Twins benchmark uses BYOL's
        return T.BYOLTransform(T.BYOLView1Transform(input_size=size),
                               T.BYOLView2Transform(input_size=size))
    return {"vicreg": T.VICRegTransform, "simclr": T.SimCLRTransform,
            "simsiam": T.SimSiamTransform}[method](input_size=size)


def lightly_optimizer(model: nn.Module, name: str, lr: float,
                      weight_decay: float) -> torch.optim.Optimizer:
    """lightly's LARS (``name="lars"``) with its benchmarks' no-weight-decay split, or torch
    SGD (``"sgd"``, SimSiam)."""
    if name == "sgd":
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    student = [m for m in model.children() if any(p.requires_grad for p in m.parameters())]
    decay, no_decay = get_weight_decay_parameters(student)
    return LARS([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr,
                momentum=0.9, weight_decay=weight_decay)
