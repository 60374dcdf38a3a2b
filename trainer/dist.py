"""Process-group set-up (torchrun or SLURM environment) and global-batch BatchNorm.

One code path serves 1 and N processes: with a single process nothing is
initialised and every collective in :mod:`methods.dist` is the identity.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn

from methods.dist import all_reduce_sum_with_grad, is_distributed


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank, world size, local rank and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _slurm_master_addr() -> str:
    nodes = os.environ.get("SLURM_JOB_NODELIST", "127.0.0.1")
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True,
                             text=True, check=True).stdout.split()
        return out[0] if out else "127.0.0.1"
    except (OSError, subprocess.CalledProcessError):
        return nodes.split(",")[0]


def _env_ranks() -> tuple[int, int, int]:
    """(rank, world, local_rank) from torchrun's or SLURM's variables, else single."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        env.setdefault("MASTER_ADDR", _slurm_master_addr())
        env.setdefault("MASTER_PORT", str(15000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
    return 0, 1, 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Initialise the process group from the environment (NCCL on GPU, gloo on CPU)."""
    rank, world, local_rank = _env_ranks()
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is available")
    dev = (torch.device("cuda", local_rank % torch.cuda.device_count()) if use_cuda
           else torch.device("cpu"))
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", init_method="env://",
                                rank=rank, world_size=world, timeout=timedelta(minutes=30))
    return DistInfo(rank, world, local_rank, dev)


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics come from the global batch, on any device.

    torch's ``SyncBatchNorm`` only runs on GPUs; this one uses autograd-aware
    all-reduces, so it runs on CPU (gloo) and gives the single-process gradient
    under DDP. The state-dict keys are BatchNorm's, unchanged.
    """

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() / x.shape[1]], device=x.device, dtype=x.dtype)
        dist.all_reduce(count)
        mean = all_reduce_sum_with_grad(x.sum(dims)) / count
        var = all_reduce_sum_with_grad((x - mean.view(shape)).pow(2).sum(dims)) / count
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                n = count.item()
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
                unbiased = var.detach() * n / max(n - 1, 1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
                self.num_batches_tracked.add_(1)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_bn(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm → torch SyncBatchNorm on GPU, :class:`GlobalBatchNorm` elsewhere."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
            module, GlobalBatchNorm):
        ref = next(iter(module.state_dict().values()), torch.empty(0))
        out = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats, device=ref.device,
                              dtype=module.weight.dtype if module.affine else ref.dtype)
        # Reuse the parameter and buffer objects (as torch's converter does), so that
        # requires_grad, optimizer references and sharing are all preserved.
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            setattr(out, name, getattr(module, name))
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, convert_sync_bn(child, device))
    return out


