"""Train and evaluate a torchvision detector with Detectron2's solver semantics.

Read from the d2-style config: ``SOLVER`` (SGD with momentum, ``WEIGHT_DECAY`` and
``WEIGHT_DECAY_NORM`` for norm parameters, ``WarmupMultiStepLR`` with linear or constant
warm-up from ``WARMUP_FACTOR``, ``GAMMA`` at ``STEPS``, ``MAX_ITER``, ``IMS_PER_BATCH``
images per iteration on one device), ``TEST.PRECISE_BN`` (BN statistics re-estimated on
``NUM_ITER`` training batches before evaluation), ``DATALOADER.NUM_WORKERS`` and the input
sizes. A non-finite loss stops the run with :class:`DetectionRunFailed` naming the
iteration and the log file.
"""

from __future__ import annotations

import logging
import math
import time
from bisect import bisect_right
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from eval.detection.configs import get
from eval.detection.data import DetectionDataset, DetectionSplit, collate
from eval.detection.metrics import Prediction
from eval.detection.tv_models import set_input_sizes

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


class DetectionRunFailed(RuntimeError):
    """A detection run stopped (divergence, crash); the message names its log."""


@dataclass
class TrainSummary:
    """What a finished training run reports.

    Attributes:
        iterations: Iterations run.
        seconds: Wall time of the loop.
        last_losses: The losses of the last iteration.
    """

    iterations: int
    seconds: float
    last_losses: dict[str, float]


class InfiniteSampler(Sampler[int]):
    """Seeded random permutations of ``range(size)``, one after the other, forever."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed = size, seed

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed)
        while True:
            yield from torch.randperm(self.size, generator=g).tolist()


def lr_factor(it: int, cfg: Mapping[str, Any]) -> float:
    """Detectron2's ``WarmupMultiStepLR`` multiplier of ``BASE_LR`` at iteration ``it``."""
    s = get(cfg, "SOLVER")
    factor = s["GAMMA"] ** bisect_right(list(s["STEPS"]), it)
    if it < s["WARMUP_ITERS"]:
        if s["WARMUP_METHOD"] == "constant":
            factor *= s["WARMUP_FACTOR"]
        else:
            alpha = it / s["WARMUP_ITERS"]
            factor *= s["WARMUP_FACTOR"] * (1 - alpha) + alpha
    return factor


def param_groups(model: nn.Module, cfg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Trainable parameters split as Detectron2 does: norm parameters get ``WEIGHT_DECAY_NORM``."""
    norm_params, other, seen = [], [], set()
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (norm_params if isinstance(module, _NORMS) else other).append(p)
    s = get(cfg, "SOLVER")
    return [{"params": other, "weight_decay": s["WEIGHT_DECAY"]},
            {"params": norm_params, "weight_decay": s["WEIGHT_DECAY_NORM"]}]


def _batches(dataset: DetectionDataset, cfg: Mapping[str, Any], seed: int
             ) -> Iterator[tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]]:
    loader = DataLoader(dataset, batch_size=get(cfg, "SOLVER.IMS_PER_BATCH"),
                        sampler=InfiniteSampler(len(dataset), seed), collate_fn=collate,
                        num_workers=get(cfg, "DATALOADER.NUM_WORKERS"), drop_last=True,
                        generator=torch.Generator().manual_seed(seed + 1))
    return iter(loader)


def _to(images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]],
        device: torch.device) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    return ([x.to(device, non_blocking=True) for x in images],
            [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets])


def train(model: GeneralizedRCNN, dataset: DetectionDataset, cfg: Mapping[str, Any],
          device: torch.device, log: logging.Logger, seed: int = 0,
          log_period: int = 20) -> TrainSummary:
    """Train ``model`` in place for ``SOLVER.MAX_ITER`` iterations (then precise BN if enabled).

    Raises:
        DetectionRunFailed: A loss became NaN or infinite.
    """
    torch.manual_seed(seed)
    model.to(device).train()
    set_input_sizes(model, cfg, train=True)
    s = get(cfg, "SOLVER")
    opt = torch.optim.SGD(param_groups(model, cfg), lr=s["BASE_LR"], momentum=s["MOMENTUM"],
                          nesterov=s["NESTEROV"])
    batches = _batches(dataset, cfg, seed)
    start, last = time.time(), {}
    log.info("training %d iterations, %d images/iteration, %d images", s["MAX_ITER"],
             s["IMS_PER_BATCH"], len(dataset))
    for it in range(s["MAX_ITER"]):
        for group in opt.param_groups:
            group["lr"] = s["BASE_LR"] * lr_factor(it, cfg)
        images, targets = _to(*next(batches), device)
        losses = model(images, targets)
        loss = sum(losses.values())
        last = {k: float(v.detach()) for k, v in losses.items()}
        if not math.isfinite(float(loss.detach())):
            log.error("iteration %d: non-finite loss %s", it, last)
            raise DetectionRunFailed(f"loss became infinite or NaN at iteration {it}: {last}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it % log_period == 0 or it == s["MAX_ITER"] - 1:
            parts = " ".join(f"{k}={v:.4f}" for k, v in last.items())
            log.info("iter %d lr %.5f loss %.4f %s (%.2fs/iter)", it, opt.param_groups[0]["lr"],
                     float(loss.detach()), parts, (time.time() - start) / (it + 1))
    seconds = time.time() - start
    if get(cfg, "TEST.PRECISE_BN.ENABLED"):
        precise_bn(model, batches, get(cfg, "TEST.PRECISE_BN.NUM_ITER"), device, log)
    return TrainSummary(int(s["MAX_ITER"]), seconds, last)


@torch.no_grad()
def precise_bn(model: nn.Module, batches: Iterator[Any], num_iters: int, device: torch.device,
               log: logging.Logger) -> None:
    """Re-estimate train-mode BN statistics as the mean over ``num_iters`` batches."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or num_iters <= 0:
        return
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the forward passes
    model.train()
    for _ in range(num_iters):
        model(*_to(*next(batches), device))
    for bn, m in zip(bns, momenta):
        bn.momentum = m
    log.info("precise BN: %d layers re-estimated on %d batches", len(bns), num_iters)


@torch.no_grad()
def predict(model: GeneralizedRCNN, split: DetectionSplit, cfg: Mapping[str, Any],
            device: torch.device, batch_size: int = 8, num_workers: int = 0,
            mask_threshold: float = 0.5) -> dict[int, Prediction]:
    """Detections on every image of ``split`` at the test input size."""
    was_training = model.training
    model.to(device).eval()
    set_input_sizes(model, cfg, train=False)
    dataset = DetectionDataset(split, train=False)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate,
                        num_workers=num_workers)
    out: dict[int, Prediction] = {}
    try:
        for images, targets in loader:
            outputs = model([x.to(device) for x in images])
            for t, o in zip(targets, outputs):
                masks = o.get("masks")
                out[int(t["index"])] = Prediction(
                    o["boxes"].cpu().numpy(), o["scores"].cpu().numpy(),
                    o["labels"].cpu().numpy().astype(np.int64) - 1,
                    None if masks is None else (masks[:, 0] > mask_threshold).cpu().numpy())
    finally:
        set_input_sizes(model, cfg, train=True)
        model.train(was_training)
    return out


def file_logger(path: Path, name: str) -> logging.Logger:
    """A logger writing to ``path`` (and propagating to the eval logger)."""
    log = logging.getLogger(f"sslbench.eval.detection.{name}")
    log.setLevel(logging.INFO)
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    return log
