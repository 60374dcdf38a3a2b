"""Barlow Twins and SimCLR: losses against independent float64 references, properties,
closed forms, and the method wiring (param groups, forward passes, sweep specs)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from backbones import BACKBONES
from methods.barlow_twins import BarlowTwins, BarlowTwinsConfig, barlow_twins_loss
from methods.simclr import SimCLR, SimCLRConfig, simclr_loss
from trainer.config import resolve

SPECS = Path(__file__).resolve().parents[1] / "sweeps" / "specs"


def reference_barlow_twins(za: np.ndarray, zb: np.ndarray, lambd=0.0051, eps=1e-5) -> float:
    """Written from the official formulas (methods.md §2.1), element by element."""
    n, d = za.shape

    def standardize(z: np.ndarray) -> np.ndarray:  # train-mode BN, biased var, no affine
        out = np.empty_like(z)
        for j in range(d):
            m = sum(z[i, j] for i in range(n)) / n
            v = sum((z[i, j] - m) ** 2 for i in range(n)) / n
            for i in range(n):
                out[i, j] = (z[i, j] - m) / math.sqrt(v + eps)
        return out

    a, b = standardize(za), standardize(zb)
    total = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[k, i] * b[k, j] for k in range(n)) / n
            total += (1.0 - c) ** 2 if i == j else lambd * c * c
    return total


def reference_nt_xent(za: np.ndarray, zb: np.ndarray, tau: float) -> float:
    """Paper Alg. 1: ℓ(i, j) = −log exp(s_ij/τ) / Σ_{k≠i} exp(s_ik/τ), averaged over the 2N
    anchors; then ×2, the official code's sum of the two directions (methods.md §3.1)."""
    n = za.shape[0]
    z = [za[k] for k in range(n)] + [zb[k] for k in range(n)]

    def sim(u: np.ndarray, v: np.ndarray) -> float:
        return float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))

    total = 0.0
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        denom = sum(math.exp(sim(z[i], z[k]) / tau) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(sim(z[i], z[pos]) / tau) / denom)
    return 2 * total / (2 * n)


def _pair(n: int, d: int, seed: int, noise: float = 0.7) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    za = torch.randn(n, d, generator=g, dtype=torch.float64)
    return za, za + noise * torch.randn(n, d, generator=g, dtype=torch.float64)


# ----------------------------------------------------------------------------- Barlow Twins


@pytest.mark.parametrize("n,d,lambd", [(8, 5, 0.0051), (16, 7, 0.0051), (6, 12, 0.3)])
def test__barlow_twins_matches_reference_float64(n: int, d: int, lambd: float) -> None:
    za, zb = _pair(n, d, seed=n * d)
    zb = 3.0 * zb + 1.5  # unequal scales and means per view
    loss, parts = barlow_twins_loss(za, zb, lambd=lambd)
    ref = reference_barlow_twins(za.numpy(), zb.numpy(), lambd=lambd)
    assert loss.item() == pytest.approx(ref, abs=1e-6, rel=1e-9)
    assert set(parts) == {"on_diag", "off_diag"}
    assert (parts["on_diag"] + lambd * parts["off_diag"]).item() == pytest.approx(loss.item())


def test__barlow_twins_symmetric_in_the_views() -> None:
    za, zb = _pair(12, 6, seed=1)
    ab, ba = barlow_twins_loss(za, zb)[0], barlow_twins_loss(zb, za)[0]
    assert ab.item() == pytest.approx(ba.item(), rel=1e-12)


def test__barlow_twins_invariant_to_positive_affine_maps() -> None:
    za, zb = _pair(32, 8, seed=2)
    g = torch.Generator().manual_seed(3)
    scale = torch.rand(8, generator=g, dtype=torch.float64) * 2.5 + 0.5  # in [0.5, 3]
    shift = torch.randn(8, generator=g, dtype=torch.float64)
    base = barlow_twins_loss(za, zb)[0].item()
    mapped = barlow_twins_loss(za, zb * scale + shift)[0].item()
    # Only eps = 1e-5 in the standardisation breaks exact invariance (methods.md §10).
    assert mapped == pytest.approx(base, rel=1e-4)
    exact = barlow_twins_loss(za, zb * scale + shift, eps=0.0)[0].item()
    assert exact == pytest.approx(barlow_twins_loss(za, zb, eps=0.0)[0].item(), rel=1e-10)


def test__barlow_twins_collapse_gives_d() -> None:
    d = 16
    z = torch.full((32, d), 3.0, dtype=torch.float64)
    loss, parts = barlow_twins_loss(z, z.clone())
    assert loss.item() == d and parts["off_diag"].item() == 0.0
    row = torch.randn(1, d, dtype=torch.float64).expand(24, d)  # any constant rows
    assert barlow_twins_loss(row, row * 2)[0].item() == pytest.approx(d, abs=1e-12)


def test__barlow_twins_whitened_identical_and_antipodal() -> None:
    n, d = 64, 8
    x = torch.randn(n, d, dtype=torch.float64)
    x = x - x.mean(0)
    evals, evecs = torch.linalg.eigh(x.T @ x / n)
    x = x @ evecs @ torch.diag(evals.rsqrt()) @ evecs.T  # xᵀx / n = I
    assert barlow_twins_loss(x, x.clone())[0].item() == pytest.approx(
        d * (1e-5 / (1 + 1e-5)) ** 2, rel=1e-6)
    assert barlow_twins_loss(x, -x)[0].item() == pytest.approx(4 * d, rel=1e-4)


def test__barlow_twins_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="equal shape"):
        barlow_twins_loss(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="equal shape"):
        barlow_twins_loss(torch.randn(4), torch.randn(4))
    with pytest.raises(ValueError, match="at least 2"):
        barlow_twins_loss(torch.randn(1, 3), torch.randn(1, 3))


def test__barlow_twins_param_groups_follow_official_lrs() -> None:
    model = BarlowTwins(BACKBONES.build("tiny_cnn", width=4), BarlowTwinsConfig(projector="16-16"))
    groups = {g.name: g for g in model.param_groups()}
    assert set(groups) == {"weights", "biases_bn"}
    w, b = groups["weights"], groups["biases_bn"]
    assert w.lr_scale == 1.0 and not w.exclude_wd_and_lars
    assert b.lr_scale == pytest.approx(0.0048 / 0.2) and b.exclude_wd_and_lars
    assert all(p.ndim > 1 for p in w.params) and all(p.ndim == 1 for p in b.params)
    ids = [id(p) for g in groups.values() for p in g.params]
    assert sorted(ids) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    linears = [m for m in model.projector if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 2 and all(m.bias is None for m in linears)


# ----------------------------------------------------------------------------- SimCLR


@pytest.mark.parametrize("n,d,tau", [(8, 5, 0.1), (16, 7, 0.5), (5, 12, 0.2)])
def test__simclr_matches_reference_float64(n: int, d: int, tau: float) -> None:
    za, zb = _pair(n, d, seed=n + d)
    loss, parts = simclr_loss(za, zb, temperature=tau)
    assert loss.item() == pytest.approx(reference_nt_xent(za.numpy(), zb.numpy(), tau),
                                        abs=1e-6, rel=1e-9)
    assert set(parts) == {"loss_a", "loss_b", "contrast_acc"}
    assert (parts["loss_a"] + parts["loss_b"]).item() == pytest.approx(loss.item())


@pytest.mark.parametrize("n,tau,expected", [(16, 0.1, 0.0027221), (4, 0.5, None)])
def test__simclr_closed_form_aligned_orthogonal(n: int, tau: float, expected) -> None:
    z = torch.eye(n, dtype=torch.float64) * 2.0  # z_i = z'_i, different pairs orthogonal
    loss = simclr_loss(z, z.clone(), temperature=tau)[0].item()
    closed = 2 * math.log(1 + 2 * (n - 1) * math.exp(-1 / tau))  # official = 2 × paper L
    assert loss == pytest.approx(closed, rel=1e-12)
    if expected is not None:
        assert loss == pytest.approx(expected, abs=5e-8)


def test__simclr_total_collapse_gives_2_log_2n_minus_1() -> None:
    z = torch.ones(8, 4, dtype=torch.float64)
    assert simclr_loss(z, z.clone())[0].item() == pytest.approx(2 * math.log(15), rel=1e-12)


def test__simclr_symmetric_and_invariant_to_row_rescaling() -> None:
    za, zb = _pair(10, 6, seed=5)
    base = simclr_loss(za, zb)[0].item()
    assert simclr_loss(zb, za)[0].item() == pytest.approx(base, rel=1e-12)
    g = torch.Generator().manual_seed(6)
    scale = torch.rand(10, 1, generator=g, dtype=torch.float64) * 10 + 0.01
    assert simclr_loss(za * scale, zb)[0].item() == pytest.approx(base, rel=1e-12)
    assert simclr_loss(za, zb / scale)[0].item() == pytest.approx(base, rel=1e-12)


def test__simclr_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="equal shape"):
        simclr_loss(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="equal shape"):
        simclr_loss(torch.randn(4, 3, 1), torch.randn(4, 3, 1))
    with pytest.raises(ValueError, match="at least 2"):
        simclr_loss(torch.randn(1, 3), torch.randn(1, 3))


def test__simclr_head_is_bias_free_with_scale_only_output_bn() -> None:
    model = SimCLR(BACKBONES.build("tiny_cnn", width=4), SimCLRConfig(projector="16-16-8"))
    linears = [m for m in model.projector if isinstance(m, torch.nn.Linear)]
    bns = [m for m in model.projector if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(linears) == 3 and all(m.bias is None for m in linears)
    assert len(bns) == 3 and [bn.affine for bn in bns] == [True, True, False]
    assert model.projector[-1].weight.shape == (8,)  # γ of the output BN; no β


# ----------------------------------------------------------------------------- forwards


@pytest.mark.parametrize("cls,cfg,forwards", [
    (BarlowTwins, BarlowTwinsConfig(projector="16-16"), 2),  # one forward per view
    (SimCLR, SimCLRConfig(projector="16-8"), 1),  # both views in one pass
])
def test__forward_passes_per_step(cls, cfg, forwards: int) -> None:
    torch.manual_seed(0)
    model = cls(BACKBONES.build("tiny_cnn", width=4), cfg)
    views = [torch.randn(6, 3, 12, 12) for _ in range(2)]
    out = model(views)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.features.shape == (6, 8) and set(out.branches) == {"projector"}
    bn = model.backbone.layers[0][1]
    assert bn.num_batches_tracked.item() == forwards
    out.loss.backward()
    assert all(p.grad is not None for p in model.backbone.parameters())


@pytest.mark.parametrize("cls,cfg", [
    (BarlowTwins, BarlowTwinsConfig(projector="16-16", var_reg_weight=1.0, cov_reg_weight=0.1)),
    (SimCLR, SimCLRConfig(projector="16-8", var_reg_weight=1.0, cov_reg_weight=0.1)),
])
def test__vicreg_plug_in_terms_apply(cls, cfg) -> None:
    torch.manual_seed(0)
    model = cls(BACKBONES.build("tiny_cnn", width=4), cfg)
    out = model([torch.randn(6, 3, 12, 12) for _ in range(2)])
    assert {"reg_variance", "reg_covariance"} <= set(out.logs)


@pytest.mark.parametrize("name,recipe,base_lr", [("barlow_twins", "vicreg", 0.2),
                                                 ("simclr", "simclr", 0.3)])
def test__sweep_spec_resolves(name: str, recipe: str, base_lr: float) -> None:
    spec = yaml.safe_load((SPECS / f"{name}.yaml").read_text())
    assert spec["grid"] == {} and spec["seeds"] == [0]
    cfg = resolve([spec["base"]])
    assert cfg.method.name == name and cfg.backbone.name == "resnet50"
    assert cfg.aug.recipe == recipe and cfg.optim.name == "lars"
    assert cfg.optim.base_lr == base_lr and cfg.optim.weight_decay == 1e-6
