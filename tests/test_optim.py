"""LARS's official semantics and the lr schedule's endpoints."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from methods.base import split_by_ndim
from trainer.config import OptimConfig
from trainer.optim import LARS, build_optimizer, lr_factor, peak_lr, scaled_step, set_lr


def _reference_lars_step(p, grad, mu, lr, wd, eta, momentum, exclude):
    """One LARS step written from the official code's description (methods.md §1.4)."""
    g = grad.clone()
    if not exclude:
        g = g + wd * p
        pn, gn = p.norm(), g.norm()
        q = eta * pn / gn if (pn > 0 and gn > 0) else torch.tensor(1.0)
        g = g * q
    mu = momentum * mu + g
    return p - lr * mu, mu


def test__lars_matches_reference_over_steps() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))
    opt = build_optimizer(split_by_ndim("all", model), OptimConfig(weight_decay=0.1, lars_eta=0.02))
    assert isinstance(opt, LARS)
    params = [p.detach().clone() for p in model.parameters()]
    mus = [torch.zeros_like(p) for p in params]
    for step in range(3):
        lr = set_lr(opt, peak=0.5, factor=1.0 - 0.2 * step)
        model.zero_grad()
        model(torch.randn(8, 6)).pow(2).sum().backward()
        grads = [p.grad.detach().clone() for p in model.parameters()]
        opt.step()
        for i, (p, g) in enumerate(zip(params, grads)):
            params[i], mus[i] = _reference_lars_step(p, g, mus[i], lr, 0.1, 0.02, 0.9,
                                                     exclude=p.ndim == 1)
        for p_ref, p in zip(params, model.parameters()):
            torch.testing.assert_close(p, p_ref, rtol=1e-6, atol=1e-7)


def test__lars_excludes_ndim1_from_decay_and_adaptation() -> None:
    bias = nn.Parameter(torch.tensor([1.0, 2.0]))
    weight = nn.Parameter(torch.ones(2, 2))
    opt = LARS([{"params": [bias, weight], "weight_decay": 10.0, "exclude_wd_and_lars": False}],
               lr=1.0, eta=0.001, momentum=0.0)
    bias.grad = torch.tensor([0.5, 0.5])
    weight.grad = torch.ones(2, 2)
    opt.step()
    # bias: plain SGD step with its raw gradient (no decay, no trust ratio)
    torch.testing.assert_close(bias.detach(), torch.tensor([0.5, 1.5]))
    # weight: (g + wd p) = 11, trust ratio = 0.001 * ||p|| / ||g|| = 0.001 * 2 / 22
    expected = 1.0 - 11.0 * (0.001 * 2.0 / 22.0)
    torch.testing.assert_close(weight.detach(), torch.full((2, 2), expected))


def test__lars_trust_ratio_is_one_for_zero_norms() -> None:
    w = nn.Parameter(torch.zeros(3, 3))
    opt = LARS([{"params": [w]}], lr=1.0, momentum=0.0, weight_decay=0.0)
    w.grad = torch.ones(3, 3)
    opt.step()
    torch.testing.assert_close(w.detach(), -torch.ones(3, 3))


def test__lars_adapted_update_invariant_to_loss_scale() -> None:
    outs = []
    for scale in (1.0, 37.0):
        torch.manual_seed(1)
        lin = nn.Linear(5, 5, bias=False)
        opt = LARS([{"params": list(lin.parameters())}], lr=0.1, weight_decay=0.0)
        (scale * lin(torch.ones(2, 5)).sum()).backward()
        opt.step()
        outs.append(lin.weight.detach().clone())
    torch.testing.assert_close(outs[0], outs[1])


def test__lr_is_applied_after_momentum() -> None:
    w = nn.Parameter(torch.zeros(1))
    opt = LARS([{"params": [w]}], lr=1.0, momentum=0.9)
    for lr in (1.0, 0.0, 2.0):
        for g in opt.param_groups:
            g["lr"] = lr
        w.grad = torch.ones(1)
        opt.step()
    # mu: 1, 1.9, 2.71 ; p: -1, -1, -1 - 2*2.71
    assert w.item() == pytest.approx(-1 - 2 * 2.71)


def test__schedule_endpoints_vicreg() -> None:
    cfg = OptimConfig(warmup_epochs=10, final_lr_fraction=0.001)
    spe, epochs = 50, 100
    assert lr_factor(cfg, 0, spe, epochs) == 0.0
    assert lr_factor(cfg, 250, spe, epochs) == pytest.approx(0.5)
    assert lr_factor(cfg, 500, spe, epochs) == pytest.approx(1.0)
    last = lr_factor(cfg, spe * epochs - 1, spe, epochs)
    assert last == pytest.approx(0.001, rel=1e-3)
    assert peak_lr(OptimConfig(base_lr=0.2), 2048) == pytest.approx(1.6)
    assert peak_lr(OptimConfig(base_lr=0.075, lr_scaling="sqrt"), 4096) == pytest.approx(4.8)


def test__schedule_cosine_per_epoch_and_fixed_lr_group() -> None:
    cfg = OptimConfig(schedule="cosine_per_epoch", final_lr_fraction=0.0)
    assert lr_factor(cfg, 0, 10, 4) == 1.0 == lr_factor(cfg, 9, 10, 4)  # constant in an epoch
    assert lr_factor(cfg, 20, 10, 4) == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))
    w1, w2 = nn.Parameter(torch.ones(2, 2)), nn.Parameter(torch.ones(2, 2))
    opt = torch.optim.SGD([{"params": [w1], "lr_scale": 1.0, "fixed_lr": False},
                           {"params": [w2], "lr_scale": 1.0, "fixed_lr": True}], lr=0.0)
    set_lr(opt, peak=0.05, factor=0.25)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.0125, 0.05])


def test__embedding_stats_detect_collapse() -> None:
    from trainer.diagnostics import embedding_stats

    g = torch.Generator().manual_seed(0)
    healthy = torch.randn(256, 16, generator=g, dtype=torch.float64)
    stats = embedding_stats(healthy)
    assert stats["std_mean"] == pytest.approx(1.0, abs=0.1)
    assert stats["effective_rank"] > 14 and stats["effective_rank_centered"] > 14
    # rank-one collapse on a large mean: every row is mean + t * direction
    t = torch.randn(256, 1, generator=g, dtype=torch.float64)
    collapsed = 50 + t * torch.ones(1, 16, dtype=torch.float64)
    stats = embedding_stats(collapsed)
    assert stats["effective_rank_centered"] == pytest.approx(1.0, abs=1e-6)
    assert stats["std_min"] == pytest.approx(stats["std_mean"])  # one shared direction
    zero = embedding_stats(torch.zeros(8, 4, dtype=torch.float64))
    assert zero["std_mean"] == 0.0 and zero["effective_rank"] == 0.0


def test__scaled_step_reports_an_fp16_overflow_skip_and_leaves_weights() -> None:
    net = nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    before = [p.detach().clone() for p in net.parameters()]
    x = torch.ones(2, 3)
    # A real overflow: the scaled loss (3e38 × 10) is inf in float32.
    scaler = torch.amp.GradScaler("cpu", init_scale=3e38)
    assert not scaled_step(scaler, net(x).sum() * 10, [opt])
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert scaler.get_scale() < 3e38  # backed off
    opt.zero_grad()
    assert scaled_step(torch.amp.GradScaler("cpu", init_scale=1.0), net(x).sum(), [opt])
    assert not torch.equal(before[0], net.weight)
    opt.zero_grad()
    assert scaled_step(torch.amp.GradScaler("cpu", enabled=False), net(x).sum(), [opt])
