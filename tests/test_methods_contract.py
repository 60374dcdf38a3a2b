"""Registry-wide method contract: adding a method adds these tests, no new file."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import methods  # noqa: F401
from backbones import BACKBONES
from methods.base import METHODS, Method, RegularizerConfig, StepOutput
from tests.test_ddp import small_config

NAMES = METHODS.names()


def build(name: str, **changes) -> Method:
    torch.manual_seed(0)
    cfg = dataclasses.replace(small_config(name), **changes)
    return METHODS.get(name).factory(BACKBONES.build("tiny_cnn", width=4), cfg)


def views(n: int = 8) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(n, 3, 16, 16, generator=g) for _ in range(2)]


@pytest.mark.parametrize("name", NAMES)
def test__config_is_frozen_dataclass_with_defaults(name: str) -> None:
    entry = METHODS.get(name)
    cfg = entry.config_cls()
    assert dataclasses.is_dataclass(cfg)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.__setattr__(dataclasses.fields(cfg)[0].name, None)


@pytest.mark.parametrize("name", NAMES)
def test__one_step_finite_loss_and_backbone_gradients(name: str) -> None:
    method = build(name)
    out = method(views())
    assert isinstance(out, StepOutput) and out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.features.shape == (8, method.backbone.num_features)
    assert out.embeddings.ndim == 2 and out.embeddings.shape[0] == 8
    assert all(v.ndim == 0 for v in out.logs.values())
    out.loss.backward()
    assert_gradients_reach(method.backbone)


def assert_gradients_reach(net: torch.nn.Module) -> None:
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def assert_groups_cover_each_trainable_once(method: Method) -> list[int]:
    grouped = [id(p) for g in method.param_groups() for p in g.params]
    trainable = [id(p) for p in method.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable)
    assert len(grouped) == len(set(grouped))
    return grouped


@pytest.mark.parametrize("name", NAMES)
def test__param_groups_cover_each_trainable_parameter_once(name: str) -> None:
    assert_groups_cover_each_trainable_once(build(name))


@pytest.mark.parametrize("name", NAMES)
def test__state_dict_round_trip(name: str) -> None:
    a, b = build(name), build(name)
    with torch.no_grad():
        for p in a.parameters():
            p.add_(0.01)
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    x = views()
    torch.testing.assert_close(a(x).loss, b(x).loss)


@pytest.mark.parametrize("name", NAMES)
def test__plug_in_variance_regularizer_adds_its_term(name: str) -> None:
    cfg_cls = METHODS.get(name).config_cls
    if not issubclass(cfg_cls, RegularizerConfig):
        pytest.skip(f"{name} has its own variance term")
    x = views()
    plain = build(name)(x)
    reg = build(name, var_reg_weight=2.0)(x)
    assert "reg_variance" in reg.logs
    expected = plain.loss + 2.0 * reg.logs["reg_variance"]
    torch.testing.assert_close(reg.loss, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test__normalized_variance_regularizer_uses_unit_rows_and_gamma_one_over_sqrt_d(
        name: str) -> None:
    if not issubclass(METHODS.get(name).config_cls, RegularizerConfig):
        pytest.skip(f"{name} has its own variance term")
    reg = build(name, var_reg_weight=1.0, reg_normalize=True)(views())
    z_a, z_b = (torch.nn.functional.normalize(z.detach().double(), dim=1)
                for z in reg.branches["projector"])
    gamma = z_a.shape[1] ** -0.5
    expected = sum(torch.relu(gamma - (z.var(dim=0) + 1e-4).sqrt()).mean()
                   for z in (z_a, z_b)) / 2
    assert 0 < expected < gamma  # the hinge is active on these random embeddings
    torch.testing.assert_close(reg.logs["reg_variance"].double(), expected, rtol=1e-5,
                               atol=1e-7)


# ----------------------------------------------------------------------------- unshared branches
# VICReg Table 5: each view through its own backbone (and projector), same architecture
# with unshared weights or a different one. BYOL's EMA target follows one online network,
# so BYOL takes unshared branches only with use_ema=false.


def build_unshared(name: str, width_b: int = 6) -> Method:
    extra = {"use_ema": False} if name == "byol" else {}
    method = build(name, **extra)
    method.set_branch_b(BACKBONES.build("tiny_cnn", width=width_b))  # 12 features vs 8
    return method


@pytest.mark.parametrize("name", NAMES)
def test__unshared_branch_b_runs_view_b_through_its_own_network(name: str) -> None:
    method = build_unshared(name)
    assert method.backbone_b.num_features != method.backbone.num_features
    x = views()
    out = method(x)
    z_a, z_b = out.branches["projector"]
    torch.testing.assert_close(z_a, method.projector(method.backbone(x[0])))
    torch.testing.assert_close(z_b, method.projector_b(method.backbone_b(x[1])))
    out.loss.backward()
    for net in (method.backbone, method.backbone_b, method.projector_b):
        assert_gradients_reach(net)


@pytest.mark.parametrize("name", NAMES)
def test__unshared_param_groups_cover_branch_b_once(name: str) -> None:
    method = build_unshared(name)
    grouped = assert_groups_cover_each_trainable_once(method)
    assert {id(p) for p in method.backbone_b.parameters()} <= set(grouped)


def test__unshared_same_architecture_starts_from_different_weights() -> None:
    method = build("vicreg")
    method.set_branch_b(BACKBONES.build("tiny_cnn", width=4))
    a, b = method.backbone.state_dict(), method.backbone_b.state_dict()
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point()
               and a[k].ndim > 1)


def test__byol_with_ema_refuses_unshared_branches() -> None:
    method = build("byol")
    with pytest.raises(ValueError, match="use_ema=false"):
        method.set_branch_b(BACKBONES.build("tiny_cnn", width=4))
