"""BYOL and SimSiam: losses against float64 references from the papers, EMA, param groups."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from backbones import BACKBONES
from methods.byol import BYOL, BYOLConfig, byol_loss, ema_momentum
from methods.simsiam import SimSiam, SimSiamConfig, simsiam_loss
from trainer.config import OptimConfig, resolve
from trainer.optim import build_optimizer, set_lr

SPECS = Path(__file__).resolve().parents[1] / "sweeps" / "specs"


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row cosine, written out: Σ a_j b_j / (sqrt(Σ a_j²) · sqrt(Σ b_j²))."""
    out = np.empty(a.shape[0])
    for i in range(a.shape[0]):
        dot = sum(float(x) * float(y) for x, y in zip(a[i], b[i]))
        out[i] = dot / (math.sqrt(sum(float(x) ** 2 for x in a[i]))
                        * math.sqrt(sum(float(y) ** 2 for y in b[i])))
    return out


def reference_byol(p_a, p_b, t_a, t_b) -> float:
    """Grill et al. 2020 eq. 2 symmetrised: Σ_directions mean_i ‖p̂_i − t̂_i‖² = 2 − 2 cos."""
    return float(np.mean(2 - 2 * cosine_rows(p_a, t_b)) + np.mean(2 - 2 * cosine_rows(p_b, t_a)))


def reference_simsiam(p_a, p_b, z_a, z_b) -> float:
    """Chen & He 2021 Algorithm 1: L = D(p1, z2)/2 + D(p2, z1)/2, D = −mean cos."""
    return float(-np.mean(cosine_rows(p_a, z_b)) / 2 - np.mean(cosine_rows(p_b, z_a)) / 2)


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def build(cls: type, **cfg) -> BYOL | SimSiam:
    torch.manual_seed(0)
    config_cls = BYOLConfig if cls is BYOL else SimSiamConfig
    small = dict(projector="32-16", predictor="8-16")
    return cls(BACKBONES.build("tiny_cnn", width=4), config_cls(**{**small, **cfg})).double()


def views(seed: int = 1) -> list[torch.Tensor]:
    return [randn(8, 3, 12, 12, seed=seed), randn(8, 3, 12, 12, seed=seed + 1)]


# ----------------------------------------------------------------------------- losses


@pytest.mark.parametrize("n,d,seed", [(8, 5, 0), (16, 32, 1), (3, 2, 2)])
def test__losses_match_float64_references(n: int, d: int, seed: int) -> None:
    p_a, p_b, z_a, z_b = (randn(n, d, seed=seed * 10 + i) * (i + 0.5) for i in range(4))
    arrays = [x.numpy() for x in (p_a, p_b, z_a, z_b)]
    loss, parts = byol_loss(p_a, p_b, z_a, z_b)
    assert loss.item() == pytest.approx(reference_byol(*arrays), abs=1e-6)
    assert (parts["loss_ab"] + parts["loss_ba"]).item() == pytest.approx(loss.item(), abs=1e-12)
    ref = reference_simsiam(*arrays)
    assert simsiam_loss(p_a, p_b, z_a, z_b).item() == pytest.approx(ref, abs=1e-6)


def _pair(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of p and t that are aligned (p = 3t), orthogonal or antipodal (p = −2t)."""
    t = randn(6, 4, seed=3)
    if kind == "aligned":
        return 3.0 * t, t
    if kind == "antipodal":
        return -2.0 * t, t
    e1, e2 = torch.zeros(6, 4, dtype=torch.float64), torch.zeros(6, 4, dtype=torch.float64)
    e1[:, 0], e2[:, 1] = torch.rand(6, dtype=torch.float64) + 0.5, 2.0
    return e1, e2


@pytest.mark.parametrize("kind,byol_value,simsiam_value", [
    ("aligned", 0.0, -1.0), ("orthogonal", 2.0, 0.0), ("antipodal", 4.0, 1.0)])
def test__hand_checkable_values(kind: str, byol_value: float, simsiam_value: float) -> None:
    p, t = _pair(kind)
    loss, parts = byol_loss(p, p, t, t)
    assert parts["loss_ab"].item() == pytest.approx(byol_value, abs=1e-12)  # per direction
    assert loss.item() == pytest.approx(2 * byol_value, abs=1e-12)  # summed, in [0, 8]
    assert simsiam_loss(p, p, t, t).item() == pytest.approx(simsiam_value, abs=1e-12)


def test__ranges_and_minimum_at_identical_inputs() -> None:
    for seed in range(5):
        p_a, p_b, z_a, z_b = (randn(7, 3, seed=seed * 4 + i) for i in range(4))
        assert 0.0 <= byol_loss(p_a, p_b, z_a, z_b)[0].item() <= 8.0
        s = simsiam_loss(p_a, p_b, z_a, z_b).item()
        assert -1.0 <= s <= 1.0
        assert s >= simsiam_loss(z_b, z_a, z_a, z_b).item() == pytest.approx(-1.0, abs=1e-12)
        assert byol_loss(z_b, z_a, z_a, z_b)[0].item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("loss_fn", [lambda *x: byol_loss(*x)[0], simsiam_loss])
def test__stop_gradient_on_targets(loss_fn) -> None:
    p_a, p_b, z_a, z_b = (randn(5, 4, seed=i).requires_grad_() for i in range(4))
    grads = torch.autograd.grad(loss_fn(p_a, p_b, z_a, z_b), [p_a, p_b, z_a, z_b],
                                allow_unused=True)
    assert grads[0].abs().sum() > 0 and grads[1].abs().sum() > 0
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads[2:])


def test__shape_errors() -> None:
    a, b = randn(4, 3, seed=0), randn(4, 5, seed=1)
    with pytest.raises(ValueError):
        byol_loss(a, a, a, b)
    with pytest.raises(ValueError):
        simsiam_loss(a, b, a, a)


# ----------------------------------------------------------------------------- BYOL


def test__tau_schedule_endpoints() -> None:
    k = 1000
    assert ema_momentum(0, k, 0.996) == pytest.approx(0.996, abs=1e-15)
    assert ema_momentum(k // 2, k, 0.996) == pytest.approx(1 - 0.004 / 2, abs=1e-15)
    assert ema_momentum(k, k, 0.996) == pytest.approx(1.0, abs=1e-15)


def test__no_gradient_reaches_the_target_and_ema_update_is_exact() -> None:
    model = build(BYOL, base_tau=0.9)
    out = model(views())
    out.loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in model.target.parameters())
    assert model.backbone.layers[0][0].weight.grad.abs().sum() > 0
    with torch.no_grad():  # make θ ≠ ξ, as after an optimizer step
        for p in [*model.backbone.parameters(), *model.projector.parameters()]:
            p.add_(randn(*p.shape, seed=p.numel()))
    online = [p.detach().clone() for p in [*model.backbone.parameters(),
                                          *model.projector.parameters()]]
    before = [p.detach().clone() for p in model.target.parameters()]
    buffers = [b.clone() for b in model.target.buffers()]
    model.after_optimizer_step(3, 10)
    tau = ema_momentum(3, 10, 0.9)
    for xi, xi_new, theta in zip(before, model.target.parameters(), online, strict=True):
        torch.testing.assert_close(xi_new - xi, (1 - tau) * (theta - xi), rtol=0, atol=1e-14)
    # BN running statistics are not EMA'd: the target's own forward updates them
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.target.buffers()))


def test__target_bn_runs_on_batch_statistics_and_updates_its_own_buffers() -> None:
    model = build(BYOL)
    bn = model.target.backbone.layers[0][1]
    before = bn.running_mean.clone()
    model(views())
    assert not torch.equal(bn.running_mean, before)
    assert int(bn.num_batches_tracked) == 2  # one forward per view


def test__target_in_state_dict_not_in_param_groups() -> None:
    model = build(BYOL)
    keys = model.state_dict().keys()
    assert any(k.startswith("target.backbone.") for k in keys)
    assert any(k.startswith("target.projector.") for k in keys)
    grouped = [p for g in model.param_groups() for p in g.params]
    target_ids = {id(p) for p in model.target.parameters()}
    assert not target_ids & {id(p) for p in grouped}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sorted(map(id, grouped)) == sorted(map(id, trainable))
    clone = build(BYOL, base_tau=0.5)
    clone.load_state_dict(model.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(clone.state_dict().values(),
                                                 model.state_dict().values()))


def test__use_ema_false_targets_the_online_network() -> None:
    model = build(BYOL, use_ema=False)
    assert model.target is None and not any("target" in k for k in model.state_dict())
    out = model(views())
    z_a, z_b = out.branches["projector"]
    p_a, p_b = out.branches["predictor"]
    expected, _ = byol_loss(p_a, p_b, z_a.detach(), z_b.detach())
    torch.testing.assert_close(out.loss, expected, rtol=0, atol=0)
    model.after_optimizer_step(0, 10)  # no target: a no-op


def test__use_predictor_false_is_the_identity() -> None:
    model = build(BYOL, use_predictor=False)
    out = model(views())
    assert out.branches["predictor"][0] is out.branches["projector"][0]
    assert not any(k.startswith("predictor") for k in model.state_dict())


def test__plugin_variance_term_on_a_branch() -> None:
    out = build(BYOL, var_reg_weight=1.0, reg_on="predictor")(views())
    plain = build(BYOL)(views())
    assert out.loss.item() == pytest.approx(plain.loss.item() + out.logs["reg_variance"].item())


# ----------------------------------------------------------------------------- SimSiam


def test__simsiam_param_groups_decay_everything_and_fix_the_predictor_lr() -> None:
    model = build(SimSiam)
    groups = {g.name: g for g in model.param_groups()}
    assert set(groups) == {"encoder", "predictor"}
    assert groups["predictor"].fixed_lr and not groups["encoder"].fixed_lr
    assert not any(g.exclude_wd_and_lars for g in groups.values())
    assert {id(p) for p in groups["predictor"].params} == {id(p) for p in
                                                          model.predictor.parameters()}
    trainable = sorted(id(p) for p in model.parameters())
    assert sorted(id(p) for g in groups.values() for p in g.params) == trainable
    opt = build_optimizer(model.param_groups(), OptimConfig(name="sgd", weight_decay=1e-4))
    set_lr(opt, peak=0.1, factor=0.25)
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["predictor"]["lr"] == 0.1 and by_name["encoder"]["lr"] == 0.025
    assert all(g["weight_decay"] == 1e-4 for g in opt.param_groups)
    assert not any(g.fixed_lr for g in build(SimSiam, fix_pred_lr=False).param_groups())
    assert [g.name for g in build(SimSiam, use_predictor=False).param_groups()] == ["encoder"]


def test__simsiam_heads_follow_the_official_layout() -> None:
    model = build(SimSiam)
    linears = [m for m in model.projector if isinstance(m, torch.nn.Linear)]
    assert all(m.bias is None for m in linears)
    assert not model.projector[-1].affine  # BN(affine=False) on the output
    assert model.predictor[-1].bias is not None and model.predictor[0].bias is None
    out = model(views())
    z_a, z_b = out.branches["projector"]
    p_a, p_b = out.branches["predictor"]
    torch.testing.assert_close(out.loss, simsiam_loss(p_a, p_b, z_a, z_b), rtol=0, atol=0)


def test__simsiam_without_bn_lets_the_variance_term_act() -> None:
    with_bn = build(SimSiam, use_predictor=False, var_reg_weight=1.0)(views())
    assert with_bn.logs["reg_variance"].item() == 0.0  # BN(affine=False): std ≥ 1 always
    model = build(SimSiam, use_bn=False, var_reg_weight=1.0)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules())
    assert model(views()).logs["reg_variance"].item() > 0


# ----------------------------------------------------------------------------- sweep specs


@pytest.mark.parametrize("spec", ["byol", "simsiam", "collapse"])
def test__sweep_specs_resolve(spec: str) -> None:
    body = yaml.safe_load((SPECS / f"{spec}.yaml").read_text())
    runs = body.get("runs") or [{}]
    for run in runs:
        overrides = {k: v for k, v in run.items() if k != "name"}
        cfg = resolve([yaml.safe_load(yaml.safe_dump(body["base"])), overrides])
        assert cfg.method.name in {"byol", "simsiam", "vicreg"}
