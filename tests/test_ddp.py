"""Real 2-process DDP (gloo, CPU): one step equals a single process on the whole batch.

Parametrised over the method registry: adding a method adds its DDP check. Global-
batch BatchNorm (our CPU SyncBN) is on, so every BN sees the full batch.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

import methods  # noqa: F401
from backbones import BACKBONES
from methods.base import METHODS
from tests.ddp_utils import run_ddp
from trainer.config import OptimConfig
from trainer.dist import convert_sync_bn
from trainer.loop import TrainModule
from trainer.optim import build_optimizer, set_lr

pytestmark = pytest.mark.ddp
GLOBAL_BATCH, WORLD = 8, 2


def small_config(name: str):
    """The method's paper config with every head width shrunk to 16 (registry-wide)."""
    cfg = METHODS.get(name).config_cls()
    changes = {f.name: re.sub(r"\d+", "16", getattr(cfg, f.name))
               for f in dataclasses.fields(cfg)
               if isinstance(getattr(cfg, f.name), str)
               and re.fullmatch(r"\d+(-\d+)*", getattr(cfg, f.name))}
    return dataclasses.replace(cfg, **changes)


def build(name: str, unshared: bool = False) -> TrainModule:
    """A small method; ``unshared``: view b through its own, wider tiny_cnn (own projector)."""
    torch.manual_seed(0)
    backbone = BACKBONES.build("tiny_cnn", width=4)
    cfg = small_config(name)
    if unshared and hasattr(cfg, "use_ema"):
        cfg = dataclasses.replace(cfg, use_ema=False)
    method = METHODS.get(name).factory(backbone, cfg)
    if unshared:
        method.set_branch_b(BACKBONES.build("tiny_cnn", width=6))
    return TrainModule(method, num_classes=3).double()


def inputs() -> tuple[list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(GLOBAL_BATCH, 3, 12, 12, generator=g, dtype=torch.float64)
             for _ in range(2)]
    return views, torch.randint(0, 3, (GLOBAL_BATCH,), generator=g)


def step(model: torch.nn.Module, module: TrainModule, views, labels) -> tuple[float, dict]:
    opt = build_optimizer(module.method.param_groups(), OptimConfig(weight_decay=1e-4))
    set_lr(opt, peak=0.1, factor=1.0)
    out, _, probe_loss = model(views, labels)
    (out.loss + probe_loss).backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    opt.step()
    module.method.after_optimizer_step(0, 10)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    return out.loss.detach(), {"grads": grads, "state": state}


def _ddp_worker(rank: int, world: int, name: str, out_path: str, unshared: bool = False
                ) -> None:
    module = convert_sync_bn(build(name, unshared), torch.device("cpu"))
    model = DistributedDataParallel(module)
    views, labels = inputs()
    local = GLOBAL_BATCH // world
    sl = slice(rank * local, (rank + 1) * local)
    loss, res = step(model, module, [v[sl] for v in views], labels[sl])
    torch.distributed.all_reduce(loss)
    if rank == 0:
        torch.save({"loss": loss / world, **res}, out_path)


@pytest.mark.parametrize(("name", "unshared"), [
    *((n, False) for n in METHODS.names()),
    ("vicreg", True),  # unshared branches of different widths (VICReg Table 5)
    ("simclr", True),  # its unshared path forwards the views separately
])
def test__two_process_step_equals_single_process(name: str, unshared: bool,
                                                 tmp_path: Path) -> None:
    module = build(name, unshared)
    views, labels = inputs()
    loss, single = step(module, module, views, labels)
    out = tmp_path / "ddp.pt"
    run_ddp(_ddp_worker, WORLD, name, str(out), unshared)
    ddp = torch.load(out, weights_only=True)
    torch.testing.assert_close(ddp["loss"], loss, rtol=1e-9, atol=1e-10)
    assert ddp["grads"].keys() == single["grads"].keys() and single["grads"]
    for k, g in single["grads"].items():
        torch.testing.assert_close(ddp["grads"][k], g, rtol=1e-7, atol=1e-10, msg=k)
    for k, v in single["state"].items():  # weights after the step, BN running stats, EMA
        torch.testing.assert_close(ddp["state"][k], v, rtol=1e-7, atol=1e-10, msg=k)


def test__sync_bn_conversion_keeps_keys() -> None:
    module = build("vicreg")
    converted = convert_sync_bn(copy.deepcopy(module), torch.device("cpu"))
    assert converted.state_dict().keys() == module.state_dict().keys()


def test__sync_bn_conversion_keeps_parameters_and_requires_grad() -> None:
    module = build("vicreg")
    bn = module.method.backbone.layers[0][1]
    bn.weight.requires_grad_(False)
    converted = convert_sync_bn(module, torch.device("cpu"))
    new_bn = converted.method.backbone.layers[0][1]
    assert type(new_bn).__name__ == "GlobalBatchNorm"
    assert new_bn.weight is bn.weight and not new_bn.weight.requires_grad
    assert new_bn.running_mean is bn.running_mean
