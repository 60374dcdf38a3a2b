"""Optimizers (LARS with the official semantics, SGD, AdamW) and the lr schedule."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from methods.base import ParamGroup
from trainer.config import OptimConfig


class LARS(torch.optim.Optimizer):
    """LARS as in the official VICReg / Barlow Twins code.

    For each parameter not excluded (``p.ndim == 1`` or the group's
    ``exclude_wd_and_lars``): ``g ← grad + wd·p``, then ``g ← q·g`` with the trust
    ratio ``q = η‖p‖/‖g‖`` (``q = 1`` when either norm is 0). Then for every
    parameter ``μ ← m·μ + g`` and ``p ← p − lr·μ``: the lr is applied *after* the
    momentum, so an lr change does not rescale the stored momentum.

    - [0] You, Gitman, Ginsburg. Large Batch Training of Convolutional Networks. 2017.
    """

    def __init__(self, params: Any, lr: float = 0.0, weight_decay: float = 0.0,
                 momentum: float = 0.9, eta: float = 0.001) -> None:
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta,
                        exclude_wd_and_lars=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            adapt = [p for p in params if p.ndim > 1 and not group["exclude_wd_and_lars"]]
            adapt_ids = {id(p) for p in adapt}
            fixed = [p for p in params if id(p) not in adapt_ids]
            updates = list(self._adapted(adapt, group)) + [p.grad for p in fixed]
            ordered = adapt + fixed
            bufs = []
            for p in ordered:
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                bufs.append(state["mu"])
            torch._foreach_mul_(bufs, group["momentum"])
            torch._foreach_add_(bufs, updates)
            torch._foreach_add_(ordered, bufs, alpha=-group["lr"])

    @staticmethod
    def _adapted(params: list[Tensor], group: dict[str, Any]) -> list[Tensor]:
        if not params:
            return []
        grads = [p.grad for p in params]
        if group["weight_decay"] != 0:
            grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
        p_norm = torch.stack(torch._foreach_norm(params))
        g_norm = torch.stack(torch._foreach_norm(grads))
        one = torch.ones_like(p_norm)
        q = torch.where(p_norm > 0, torch.where(g_norm > 0, group["eta"] * p_norm / g_norm, one),
                        one)
        return list(torch._foreach_mul(grads, list(q.unbind())))


def peak_lr(cfg: OptimConfig, global_batch: int) -> float:
    """The lr after warm-up: ``base_lr × global_batch / 256`` (or √ / none scaling).

    ``sqrt`` follows SimCLR's convention ``lr = base_lr × √global_batch``.
    """
    if cfg.lr_scaling == "linear":
        return cfg.base_lr * global_batch / 256
    if cfg.lr_scaling == "sqrt":
        return cfg.base_lr * math.sqrt(global_batch)
    if cfg.lr_scaling == "none":
        return cfg.base_lr
    raise ValueError(f"optim.lr_scaling must be linear, sqrt or none, got {cfg.lr_scaling!r}")


def lr_factor(cfg: OptimConfig, step: int, steps_per_epoch: int, epochs: int) -> float:
    """The schedule's multiplier of the peak lr at ``step`` (0-based), set every step.

    ``warmup_cosine`` is VICReg's ``adjust_learning_rate``: linear from 0 over the
    warm-up steps, then cosine from 1 to ``final_lr_fraction``. ``cosine_per_epoch``
    is SimSiam's: constant within an epoch, ``½(1 + cos(π·epoch/epochs))``, ending at
    ``final_lr_fraction``.
    """
    total = steps_per_epoch * epochs
    end = cfg.final_lr_fraction
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "cosine_per_epoch":
        q = 0.5 * (1 + math.cos(math.pi * (step // steps_per_epoch) / epochs))
        return q + end * (1 - q)
    if cfg.schedule != "warmup_cosine":
        raise ValueError(f"optim.schedule must be warmup_cosine, cosine_per_epoch or constant, "
                         f"got {cfg.schedule!r}")
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return step / warmup
    t, T = step - warmup, max(total - warmup, 1)
    q = 0.5 * (1 + math.cos(math.pi * t / T))
    return q + end * (1 - q)


def build_optimizer(groups: Sequence[ParamGroup], cfg: OptimConfig,
                    use_fused: bool = False) -> torch.optim.Optimizer:
    """An optimizer over the method's parameter groups; lr is set by :func:`set_lr`."""
    torch_groups = [
        dict(params=g.params, name=g.name, lr_scale=g.lr_scale, fixed_lr=g.fixed_lr,
             exclude_wd_and_lars=g.exclude_wd_and_lars,
             weight_decay=0.0 if g.exclude_wd_and_lars else cfg.weight_decay)
        for g in groups
    ]
    if cfg.name == "lars":
        return LARS(torch_groups, momentum=cfg.momentum, eta=cfg.lars_eta)
    extra = {"fused": True} if use_fused else {}
    if cfg.name == "sgd":
        return torch.optim.SGD(torch_groups, lr=0.0, momentum=cfg.momentum, **extra)
    if cfg.name == "adamw":
        return torch.optim.AdamW(torch_groups, lr=0.0, betas=cfg.betas, **extra)
    raise ValueError(f"optim.name must be lars, sgd or adamw, got {cfg.name!r}")


def set_lr(optimizer: torch.optim.Optimizer, peak: float, factor: float) -> float:
    """Set every group's lr for this step; returns the scheduled base lr."""
    for g in optimizer.param_groups:
        g["lr"] = peak * g.get("lr_scale", 1.0) * (1.0 if g.get("fixed_lr") else factor)
    return peak * factor


def scaled_step(scaler: torch.amp.GradScaler, loss: Tensor,
                optimizers: Sequence[torch.optim.Optimizer]) -> bool:
    """Backward through ``scaler`` and step every optimizer; False if the step was skipped.

    A disabled scaler (fp32, bf16) always steps. An fp16 scaler skips the step when the
    gradients hold inf/NaN and then lowers its scale, which is how the skip is detected.
    """
    before = scaler.get_scale() if scaler.is_enabled() else 0.0
    scaler.scale(loss).backward()
    for opt in optimizers:
        scaler.step(opt)
    scaler.update()
    return not scaler.is_enabled() or scaler.get_scale() >= before
