"""Image-level training for the paper protocols: frozen-backbone linear heads with
augmentation, and full fine-tuning on the SimCLR 1 % / 10 % subsets.

Linear (VICReg/Barlow ``evaluate.py --weights freeze``): the backbone is frozen *and in
eval mode*; training images get RandomResizedCrop + flip, test images Resize + CenterCrop
(a split is image files or pixel arrays, ``eval.arrays``);
SGD with momentum, cosine per epoch. VISSL's multi-tap variant (Places205, iNat18) adds
an affine BatchNorm before each head, nesterov SGD and step decay; that is the
``head_bn`` / ``schedule="multistep"`` path of the same loop.

Fine-tuning (``--weights finetune``): backbone + linear head all trainable, ``model.train()``
(BN statistics update), two parameter groups (backbone lr, head lr), cosine per epoch.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eval.arrays import Split, eval_batches, train_batches
from eval.features import TAP_POOLING, normalize_images
from eval.images import EvalTransform, TrainTransform, warn_corrupt
from eval.knn import topk_accuracy

log = logging.getLogger("sslbench.eval")


@dataclass(frozen=True)
class Schedule:
    """Optimiser and schedule of one image-level training run."""

    epochs: int
    batch_size: int
    lr: float  # head lr (linear) / head lr (fine-tune)
    weight_decay: float
    momentum: float = 0.9
    nesterov: bool = False
    schedule: str = "cosine"  # cosine (per epoch, to 0) | multistep (×0.1 at milestones)
    milestones: tuple[int, ...] = ()
    lr_backbone: float = 0.0  # fine-tune only
    eval_every: int = 0  # 0: evaluate after the last epoch only


def _pooled_maps(backbone: nn.Module, x: Tensor, taps: Sequence[str]) -> dict[str, Tensor]:
    """``{tap: (B, C, g, g)}`` pooled maps; ``avgpool`` is ``(B, F, 1, 1)``."""
    stage = [t for t in taps if t != "avgpool"]
    out = {}
    if stage:
        maps = backbone.forward_taps(x)
        for tap in stage:
            (kernel, stride), ref, grid = TAP_POOLING[tap]
            m = maps[tap]
            out[tap] = (F.avg_pool2d(m, kernel, stride) if m.shape[-1] == ref
                        else F.adaptive_avg_pool2d(m, grid))
        if "avgpool" in taps:
            out["avgpool"] = maps["res5"].mean(dim=(2, 3), keepdim=True)
    else:
        out["avgpool"] = backbone(x)[:, :, None, None]
    return out


class TapHead(nn.Module):
    """Optional affine BatchNorm2d over the pooled map (VISSL ``eval_mlp``), then Linear."""

    def __init__(self, channels: int, flat: int, num_classes: int, use_bn: bool) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels) if use_bn else nn.Identity()
        self.fc = nn.Linear(flat, num_classes)
        nn.init.normal_(self.fc.weight, std=0.01)  # VICReg/Barlow/VISSL head init
        nn.init.zeros_(self.fc.bias)

    def forward(self, m: Tensor) -> Tensor:
        """Pooled map ``(B, C, g, g)`` → logits ``(B, num_classes)``."""
        return self.fc(self.bn(m).flatten(1))


def _lr_factor(sched: Schedule, epoch: int) -> float:
    if sched.schedule == "cosine":  # torch CosineAnnealingLR(T_max=epochs), stepped per epoch
        return 0.5 * (1 + math.cos(math.pi * epoch / sched.epochs))
    if sched.schedule == "multistep":
        return 0.1 ** sum(epoch >= m for m in sched.milestones)
    raise ValueError(f"unknown schedule '{sched.schedule}'; use cosine or multistep")


def _autocast(device: torch.device) -> torch.autocast:
    # NOTE: on CUDA the backbone runs under bf16 autocast (heads and losses in fp32) for
    # speed; vicreg/barlow evaluate.py run fp32. On CPU everything is fp32.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def _evaluate(predict: nn.Module | object, fs: Split, transform: EvalTransform,
              mean: Sequence[float], std: Sequence[float], batch_size: int, num_workers: int,
              device: torch.device) -> dict[str, dict[str, float]]:
    scores: dict[str, list[Tensor]] = {}
    labels, bad = [], 0
    for x, idx, ok in eval_batches(fs, transform, batch_size=batch_size,
                                   num_workers=num_workers):
        bad += int((~ok).sum())
        if not ok.any():
            continue
        x = normalize_images(x[ok].to(device), mean, std, transform.crop, transform.crop)
        for name, logits in predict(x).items():  # type: ignore[operator]
            scores.setdefault(name, []).append(logits.float().cpu())
        labels.append(torch.as_tensor(fs.labels)[idx[ok]])
    warn_corrupt(f"{fs.name}/{fs.split}", bad, len(fs))
    y = torch.cat(labels)
    return {name: {f"top{k}": v for k, v in topk_accuracy(torch.cat(s), y, (1, 5)).items()}
            for name, s in scores.items()}


def _train(params: list[dict], step_fn: object, train: Split, crop: int, sched: Schedule,
           mean: Sequence[float], std: Sequence[float], num_workers: int, device: torch.device,
           seed: int, evaluate: object) -> dict[str, dict[str, float]]:
    """The shared loop; returns the final evaluation plus ``best_*`` over evaluated epochs."""
    opt = torch.optim.SGD(params, lr=sched.lr, momentum=sched.momentum, nesterov=sched.nesterov,
                          weight_decay=sched.weight_decay)
    base = [g["lr"] for g in opt.param_groups]
    labels = torch.as_tensor(train.labels)
    result: dict[str, dict[str, float]] = {}
    best: dict[str, float] = {}
    bad = 0
    for epoch in range(sched.epochs):
        for group, lr in zip(opt.param_groups, base):
            group["lr"] = lr * _lr_factor(sched, epoch)
        for x, idx, ok in train_batches(train, TrainTransform(crop), batch_size=sched.batch_size,
                                        num_workers=num_workers, seed=seed * 1000 + epoch):
            bad += int((~ok).sum()) if epoch == 0 else 0
            if not ok.any():
                continue
            x = normalize_images(x[ok].to(device, non_blocking=True), mean, std, crop, crop)
            loss = step_fn(x, labels[idx[ok]].to(device))  # type: ignore[operator]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        last = epoch + 1 == sched.epochs
        if last or (sched.eval_every and (epoch + 1) % sched.eval_every == 0):
            result = evaluate()  # type: ignore[operator]
            for name, acc in result.items():
                best[name] = max(best.get(name, 0.0), acc["top1"])
            log.info("epoch %d/%d: %s", epoch + 1, sched.epochs,
                     {k: round(v["top1"], 2) for k, v in result.items()})
    warn_corrupt(f"{train.name}/{train.split}", bad, len(train))
    for name in result:
        result[name]["best_top1"] = best[name]
    return result


def linear_augmented(backbone: nn.Module, train: Split, test: Split, *, taps: Sequence[str],
                     head_bn: bool, sched: Schedule, train_crop: int, test_tf: EvalTransform,
                     mean: Sequence[float], std: Sequence[float], num_workers: int,
                     device: torch.device, seed: int = 0) -> dict[str, dict[str, float]]:
    """Linear heads on a frozen eval-mode backbone, trained on augmented images.

    Returns:
        ``{tap: {"top1", "top5", "best_top1"}}`` in percent on ``test``.
    """
    torch.manual_seed(seed)
    backbone = backbone.to(device).eval().requires_grad_(False)
    num_classes = len(train.classes)
    with torch.no_grad():
        probe = normalize_images(torch.zeros(1, 3, train_crop, train_crop, dtype=torch.uint8,
                                             device=device), mean, std, train_crop, train_crop)
        shapes = {t: m.shape for t, m in _pooled_maps(backbone, probe, taps).items()}
    heads = nn.ModuleDict({t: TapHead(s[1], s[1] * s[2] * s[3], num_classes, head_bn)
                           for t, s in shapes.items()}).to(device)
    # NOTE: VISSL regularize_bn=False: no weight decay on the heads' BN parameters.
    decay = [p for n, p in heads.named_parameters() if ".bn." not in n]
    no_decay = [p for n, p in heads.named_parameters() if ".bn." in n]
    params = [{"params": decay}] + ([{"params": no_decay, "weight_decay": 0.0}] if no_decay else [])

    def feats(x: Tensor) -> dict[str, Tensor]:
        with torch.no_grad(), _autocast(device):
            return {t: m.float() for t, m in _pooled_maps(backbone, x, taps).items()}

    def step(x: Tensor, y: Tensor) -> Tensor:
        heads.train()
        maps = feats(x)
        return sum(F.cross_entropy(heads[t](maps[t]), y) for t in heads)  # type: ignore[return-value]

    def predict(x: Tensor) -> dict[str, Tensor]:
        heads.eval()
        maps = feats(x)
        return {t: heads[t](maps[t]) for t in heads}

    def evaluate() -> dict[str, dict[str, float]]:
        return _evaluate(predict, test, test_tf, mean, std, sched.batch_size, num_workers, device)

    return _train(params, step, train, train_crop, sched, mean, std, num_workers, device, seed,
                  evaluate)


def finetune(backbone: nn.Module, train: Split, test: Split, *, num_classes: int,
             sched: Schedule, train_crop: int, test_tf: EvalTransform, mean: Sequence[float],
             std: Sequence[float], num_workers: int, device: torch.device,
             seed: int = 0) -> dict[str, float]:
    """Fine-tune a copy of the backbone plus a linear head; ``{"top1", "top5", "best_top1"}``."""
    torch.manual_seed(seed)
    model = copy.deepcopy(backbone).to(device).requires_grad_(True)
    head = nn.Linear(model.num_features, num_classes).to(device)
    nn.init.normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    params = [{"params": list(model.parameters()), "lr": sched.lr_backbone},
              {"params": list(head.parameters()), "lr": sched.lr}]

    def step(x: Tensor, y: Tensor) -> Tensor:
        model.train()
        with _autocast(device):
            logits = head(model(x).float())
        return F.cross_entropy(logits.float(), y)

    def predict(x: Tensor) -> dict[str, Tensor]:
        model.eval()
        with _autocast(device):
            return {"avgpool": head(model(x).float()).float()}

    def evaluate() -> dict[str, dict[str, float]]:
        return _evaluate(predict, test, test_tf, mean, std, sched.batch_size, num_workers, device)

    return _train(params, step, train, train_crop, sched, mean, std, num_workers, device, seed,
                  evaluate)["avgpool"]
