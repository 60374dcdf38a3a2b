"""Collapse diagnostics of an embedding batch, and the metrics logger."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from trainer.io import append_jsonl


@torch.no_grad()
def embedding_stats(z: Tensor) -> dict[str, float]:
    """Per-dimension std (mean, min), std of l2-normalised rows, and effective rank.

    - ``std_mean`` / ``std_min``: std of each embedding dimension over the batch; a
      collapsed representation drives them to 0 (VICReg's variance term targets 1).
    - ``std_l2``: mean per-dimension std of the l2-normalised embeddings, SimSiam's
      collapse indicator (≈ 1/√D when healthy, 0 when collapsed).
    - ``effective_rank``: exp of the entropy of the normalised singular values of
      the (uncentred) embedding matrix (Roy & Vetterli 2007; RankMe, Garrido et al.
      2023): 1 for rank-one embeddings, up to min(N, D).
    - ``effective_rank_centered``: the same on the centred matrix, which a large
      common mean cannot dominate (it shows a rank-one collapse sitting on a mean).
    """
    z = z.double()
    std = z.std(dim=0)
    zn = F.normalize(z, dim=1)
    return {
        "std_mean": std.mean().item(),
        "std_min": std.min().item(),
        "std_l2": zn.std(dim=0).mean().item(),
        "effective_rank": effective_rank(z),
        "effective_rank_centered": effective_rank(z - z.mean(dim=0)),
    }


def effective_rank(z: Tensor) -> float:
    """exp(entropy of σ / Σσ) of a (N, D) matrix; 0 for an all-zero matrix."""
    s = torch.linalg.svdvals(z.double())
    if s.sum() <= 0:
        return 0.0
    p = s / s.sum()
    return math.exp(-(p * torch.log(p.clamp_min(1e-30))).sum().item())


class MetricsLogger:
    """Writes ``metrics.jsonl`` and, optionally, TensorBoard scalars (rank 0 only)."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.tb: Any = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(run_dir) / "tb"))

    def log(self, kind: str, step: int, values: dict[str, float]) -> None:
        """Append a record ``{"kind": ..., "step": ..., **values}``."""
        if not self.enabled:
            return
        append_jsonl(self.path, {"kind": kind, "step": step, **values})
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and k not in ("epoch",):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
