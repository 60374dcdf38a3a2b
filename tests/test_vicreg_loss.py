"""VICReg's loss against an independent float64 reference and hand-checkable values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from methods.vicreg import vicreg_loss


def reference_vicreg(za: np.ndarray, zb: np.ndarray, lam=25.0, mu=25.0, nu=1.0, eps=1e-4):
    """Written from the official formulas (methods.md §1.1), element by element."""
    n, d = za.shape
    inv = sum((za[i, j] - zb[i, j]) ** 2 for i in range(n) for j in range(d)) / (n * d)

    def var(z):
        out = 0.0
        for j in range(d):
            col = z[:, j]
            m = col.sum() / n
            v = ((col - m) ** 2).sum() / (n - 1)
            out += max(0.0, 1.0 - math.sqrt(v + eps))
        return out / d

    def cov(z):
        zc = z - z.mean(axis=0, keepdims=True)
        total = 0.0
        for a in range(d):
            for b in range(d):
                if a != b:
                    c = (zc[:, a] * zc[:, b]).sum() / (n - 1)
                    total += c * c
        return total / d

    return lam * inv + mu * (var(za) + var(zb)) / 2 + nu * (cov(za) + cov(zb))


@pytest.mark.parametrize("n,d,scale", [(8, 5, 1.0), (16, 7, 0.3), (5, 12, 2.0)])
def test__matches_reference_float64(n: int, d: int, scale: float) -> None:
    g = torch.Generator().manual_seed(n * d)
    za = torch.randn(n, d, generator=g, dtype=torch.float64) * scale
    zb = za + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)
    loss, parts = vicreg_loss(za, zb)
    ref = reference_vicreg(za.numpy(), zb.numpy())
    assert loss.item() == pytest.approx(ref, abs=1e-6, rel=1e-9)
    assert set(parts) == {"invariance", "variance", "covariance"}


def test__weights_are_applied_per_term() -> None:
    g = torch.Generator().manual_seed(0)
    za, zb = torch.randn(10, 4, generator=g).double(), torch.randn(10, 4, generator=g).double()
    ref = reference_vicreg(za.numpy(), zb.numpy(), lam=2.0, mu=0.0, nu=3.0)
    loss, _ = vicreg_loss(za, zb, invariance_weight=2.0, variance_weight=0.0, covariance_weight=3.0)
    assert loss.item() == pytest.approx(ref, abs=1e-9)


def test__collapsed_constant_embeddings_give_24_75() -> None:
    z = torch.ones(32, 16, dtype=torch.float64) * 3.0
    loss, parts = vicreg_loss(z, z.clone())
    # inv = 0, cov = 0, variance = 1 - sqrt(1e-4) = 0.99 on each branch, averaged.
    assert parts["invariance"].item() == 0.0
    assert parts["covariance"].item() == 0.0
    assert loss.item() == pytest.approx(25 * 0.99, abs=1e-12)


def test__whitened_identical_batches_give_zero() -> None:
    n, d = 64, 8
    x = torch.randn(n, d, dtype=torch.float64)
    x = x - x.mean(0)
    # Whiten so that xᵀx / (n-1) = I exactly.
    cov = x.T @ x / (n - 1)
    evals, evecs = torch.linalg.eigh(cov)
    x = x @ evecs @ torch.diag(evals.rsqrt()) @ evecs.T
    loss, _ = vicreg_loss(x, x.clone())
    assert abs(loss.item()) < 1e-20


def test__shift_changes_only_invariance() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(20, 6, generator=g, dtype=torch.float64)
    c = torch.randn(6, generator=g, dtype=torch.float64)
    base, _ = vicreg_loss(x, x)
    shifted, _ = vicreg_loss(x, x + c)
    assert (shifted - base).item() == pytest.approx(25 * (c**2).mean().item(), abs=1e-10)


def test__symmetric_in_the_views() -> None:
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(12, 5, generator=g), torch.randn(12, 5, generator=g)
    assert vicreg_loss(a, b)[0].item() == pytest.approx(vicreg_loss(b, a)[0].item(), rel=1e-6)


def test__variance_gradient_zero_above_target_std() -> None:
    z = (torch.randn(64, 4, dtype=torch.float64) * 5).requires_grad_()
    _, parts = vicreg_loss(z, z.detach().clone(), invariance_weight=0, covariance_weight=0)
    parts["variance"].backward()
    assert z.grad is not None and torch.count_nonzero(z.grad) == 0


def test__bad_input_raises() -> None:
    with pytest.raises(ValueError, match="equal shape"):
        vicreg_loss(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="at least 2"):
        vicreg_loss(torch.randn(1, 3), torch.randn(1, 3))
