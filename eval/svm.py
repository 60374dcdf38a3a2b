"""Batched linear SVMs: every (class, cost, fold) problem solved together on one device.

The problem is scikit-learn's ``LinearSVC(penalty="l2", loss="squared_hinge",
class_weight={1: 2, -1: 1}, intercept_scaling=1)`` (liblinear), i.e. for each problem p

    min_w  ½‖w‖² + Σᵢ Cᵢₚ · max(0, 1 − yᵢₚ wᵀx̃ᵢ)²,   x̃ᵢ = [xᵢ, intercept_scaling],

with Cᵢₚ = cost × class weight of yᵢₚ (0 for rows outside the problem's training set),
so the intercept is regularised exactly as liblinear's synthetic feature is. The
objective is strictly convex, so any exact solver reaches liblinear's optimum.

Solver: the finite Newton method for L2-SVMs (Keerthi & DeCoste, JMLR 2005) with
preconditioned conjugate gradients and an exact line search, batched over problems:

1. All problems share one data matrix; the optimum lies in the row space of the rows
   used, so we rotate into its eigenbasis ``Z = X̃V`` (``r = rank ≤ min(N, D+1)``
   columns, exact, ``ZᵀZ`` diagonal), where a Jacobi preconditioner is nearly ideal.
2. Each Newton step solves ``(I + 2 Zᵀ diag(c·active) Z) d = −g`` by CG; all problems'
   Hessian-vector products are two matmuls ``(N×r)·(r×P)``, which is what makes the
   batch fast on an accelerator (and still fast on CPU BLAS).
3. Converged problems leave the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from eval.features import resolve_device

# VISSL's VOC07 cost grid (VB/linear_image_classification/voc07/…svm.yaml; vicreg #10).
VISSL_COSTS: tuple[float, ...] = (0.01, 0.1, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 50.0, 100.0, 1000.0)
POS_WEIGHT, NEG_WEIGHT = 2.0, 1.0  # class_weight={1: 2, -1: 1} (fssb, VISSL)


@dataclass(frozen=True)
class SolverOptions:
    """Convergence settings of the batched solver.

    Attributes:
        tol: Stop a problem when ‖∇f‖ ≤ tol · ‖∇f(0)‖.
        max_newton: Newton iterations at most.
        max_cg: CG iterations per Newton step at most.
        direct_max_rank: Up to this basis size, Newton steps are solved exactly by batched
            Cholesky (cost N·r²·P) instead of CG (about 4·N·r·P per CG iteration).
        woodbury_ratio: Columns with at most ``ratio · r`` active rows take exact Woodbury
            Newton steps (one s×s Cholesky); the others use CG.
        cg_dtype: Precision of the inner CG solves. Newton directions only need to be
            approximate, so float32 halves their cost without changing the optimum.
        dtype: ``"float64"`` (as liblinear and VISSL) or ``"float32"``.
        device: ``None``/``"auto"``: CUDA when available.
    """

    tol: float = 1e-10
    max_newton: int = 60
    max_cg: int = 250
    direct_max_rank: int = 96  # exact Newton (batched Cholesky) up to this basis size
    cg_dtype: str = "float32"  # precision of the CG inner solves (float32 | float64)
    woodbury_ratio: float = 1.0  # Woodbury steps for columns with ≤ ratio·r active rows
    dtype: str = "float64"
    device: str | None = None


def l2_normalize(x: Tensor | np.ndarray) -> Tensor:
    """fssb/VISSL per-sample normalisation ``x / (‖x‖₂ + 1e-5)`` in float64."""
    x = torch.as_tensor(x, dtype=torch.float64)
    return x / (x.norm(dim=1, keepdim=True) + 1e-5)


def _basis(xa: Tensor) -> tuple[Tensor, Tensor]:
    """``(V, Z = xa V)``: an orthonormal basis of xa's row space, via the smaller Gram."""
    n, d = xa.shape
    if n >= d:
        evals, evecs = torch.linalg.eigh(xa.T @ xa)
        keep = evals > evals.max().clamp_min(1e-300) * 1e-12
        v = evecs[:, keep]
    else:
        evals, evecs = torch.linalg.eigh(xa @ xa.T)
        keep = evals > evals.max().clamp_min(1e-300) * 1e-12
        v = (xa.T @ evecs[:, keep]) / evals[keep].sqrt()
    return v, xa @ v


def _pcg(hv: Callable[[Tensor], Tensor], b: Tensor, precond: Callable[[Tensor], Tensor],
         rtol: Tensor, max_iter: int) -> tuple[Tensor, Tensor]:
    """Solve ``H x = b`` column-wise by preconditioned CG; returns (x, iterations per column)."""
    x = torch.zeros_like(b)
    r = b.clone()
    z = precond(r)
    p = z.clone()
    rz = (r * z).sum(0)
    target = rtol * b.norm(dim=0)
    live = torch.ones_like(rz, dtype=torch.bool)
    iterations = torch.zeros_like(rz, dtype=torch.long)
    for _ in range(max_iter):
        iterations += live
        hp = hv(p)
        alpha = torch.where(live, rz / (p * hp).sum(0).clamp_min(1e-300), 0.0)
        x += alpha * p
        r -= alpha * hp
        live = r.norm(dim=0) > target
        if not live.any():
            break
        z = precond(r)
        rz_new = (r * z).sum(0)
        p = z + (rz_new / rz.clamp_min(1e-300)) * p
        rz = rz_new
    return x, iterations


def _line_search(w: Tensor, d: Tensor, yq: Tensor, cw: Tensor, margin: Tensor) -> Tensor:
    """Exact minimiser over t ≥ 0 of f(w + t d) (piecewise quadratic), per column."""
    wd, dd = (w * d).sum(0), (d * d).sum(0)

    def deriv(t: Tensor) -> tuple[Tensor, Tensor]:
        m = margin - t * yq
        a = (m > 0) * cw
        return wd + t * dd - 2 * (a * yq * m).sum(0), dd + 2 * (a * yq * yq).sum(0)

    lo, hi = torch.zeros_like(wd), torch.ones_like(wd)
    for _ in range(60):  # grow the bracket until f' ≥ 0 at hi
        f_hi, _ = deriv(hi)
        grow = f_hi < 0
        if not grow.any():
            break
        lo, hi = torch.where(grow, hi, lo), torch.where(grow, 2 * hi, hi)
    t = hi.clone()
    for _ in range(50):  # safeguarded Newton on f'
        f, h = deriv(t)
        lo, hi = torch.where(f < 0, t, lo), torch.where(f > 0, t, hi)
        step = t - f / h.clamp_min(1e-300)
        t = torch.where((step <= lo) | (step >= hi), (lo + hi) / 2, step)
        if (f.abs() <= 1e-12 * (dd * t.abs() + wd.abs() + 1)).all() or ((hi - lo) < 1e-14).all():
            break
    return t


def _newton_direct(z: Tensor, act: Tensor, g: Tensor) -> Tensor:
    """Exact Newton directions ``−H⁻¹g`` by batched Cholesky (small ``r`` only)."""
    h = 2 * torch.einsum("nr,np,ns->prs", z, act, z)  # (p, r, r)
    h.diagonal(dim1=1, dim2=2).add_(1.0)
    return -torch.cholesky_solve(g.T.unsqueeze(-1), torch.linalg.cholesky(h)).squeeze(-1).T


def _newton_woodbury(z_ext: Tensor, act: Tensor, g: Tensor, max_elems: int = 1 << 24) -> Tensor:
    """Exact ``−H⁻¹g`` through the s active rows (Woodbury), for problems with s ≤ r.

    ``H⁻¹ = I − Z_Aᵀ (½ A⁻¹ + Z_A Z_Aᵀ)⁻¹ Z_A``: one s×s Cholesky per problem. Large
    costs leave few margin violators, which is exactly where CG struggles. ``z_ext`` is
    ``Z`` with an extra zero row, the index used to pad columns with fewer active rows.
    """
    n = z_ext.shape[0] - 1
    counts = (act > 0).sum(0)
    order = counts.argsort()
    rows = torch.arange(n, device=act.device)[:, None]
    d = torch.empty_like(g)
    start = 0
    while start < len(order):  # chunks of similar size, bounded memory
        stop = start + 1
        while stop < len(order) and (stop - start + 1) * int(counts[order[stop]]) ** 2 <= max_elems:
            stop += 1
        cols = order[start:stop]
        size = max(int(counts[cols].max()), 1)
        a = act[:, cols]
        idx = torch.where(a > 0, rows, n).sort(dim=0).values[:size].T  # (k, s); n = padding
        za = z_ext[idx]  # (k, s, r), zero rows for padding
        m = za @ za.transpose(1, 2)  # Z_A Z_Aᵀ
        a_idx = torch.cat([a, torch.zeros_like(a[:1])]).T.gather(1, idx)  # (k, s)
        m.diagonal(dim1=1, dim2=2).add_(torch.where(idx < n, 0.5 / a_idx.clamp_min(1e-300), 1.0))
        rhs = za @ g[:, cols].T.unsqueeze(-1)  # (k, s, 1) = Z_A g
        u = torch.cholesky_solve(rhs, torch.linalg.cholesky(m))  # (k, s, 1)
        d[:, cols] = (za.transpose(1, 2) @ u).squeeze(-1).T - g[:, cols]
        start = stop
    return d


def _direction(z: Tensor, z_ext: Tensor, z_cg: Tensor, act: Tensor, g: Tensor, rtol: Tensor,
               opts: SolverOptions) -> Tensor:
    """Newton directions: Woodbury where few rows are active, else exact or CG in r-space."""
    rank = z.shape[1]
    few = (act > 0).sum(0) <= opts.woodbury_ratio * rank
    d = torch.empty_like(g)
    if few.any():
        d[:, few] = _newton_woodbury(z_ext, act[:, few], g[:, few])
    rest = ~few
    if rest.any():
        a, gr = act[:, rest], g[:, rest]
        if rank <= opts.direct_max_rank:
            d[:, rest] = _newton_direct(z, a, gr)
            return d
        # Jacobi in the eigenbasis: exact when all rows are active with equal weights.
        # CG runs in ``z_cg``'s precision (float32 in "mixed" mode); the gradient and the
        # line search stay in float64, so the Newton iterates still converge to ``tol``.
        a_cg = a.to(z_cg.dtype)
        jac = 1 + 2 * (z_cg * z_cg).T @ a_cg
        sol, _ = _pcg(lambda v: v + 2 * z_cg.T @ (a_cg * (z_cg @ v)), -gr.to(z_cg.dtype),
                      lambda r: r / jac, rtol[rest].clamp_min(1e-5).to(z_cg.dtype), opts.max_cg)
        d[:, rest] = sol.to(g.dtype)
    return d


def _newton(z: Tensor, z_cg: Tensor, y: Tensor, cw: Tensor, w: Tensor,
            opts: SolverOptions) -> Tensor:
    """Minimise every column's objective in the ``z`` basis, starting from ``w`` (updated)."""
    todo = torch.arange(y.shape[1], device=z.device)
    z_ext = torch.cat([z, torch.zeros_like(z[:1])])
    # Relative tolerance against the gradient at w = 0, which is −2 Zᵀ(c·y).
    g0 = (2 * z.T @ (cw * y)).norm(dim=0).clamp_min(1e-300)
    for _ in range(opts.max_newton):
        wt, yt, ct = w[:, todo], y[:, todo], cw[:, todo]
        margin = 1 - yt * (z @ wt)  # (N, p)
        act = (margin > 0) * ct  # c · 1[active]
        g = wt - 2 * z.T @ (act * yt * margin)  # (r, p)
        gn = g.norm(dim=0)
        live = gn > opts.tol * g0[todo]
        if not live.any():
            break
        todo, wt, yt, ct, margin, act, g, gn = (
            todo[live], wt[:, live], yt[:, live], ct[:, live], margin[:, live], act[:, live],
            g[:, live], gn[live])
        rtol = torch.clamp((gn / g0[todo]).sqrt(), max=0.1)
        d = _direction(z, z_ext, z_cg, act, g, rtol, opts)
        t = _line_search(wt, d, yt * (z @ d), ct, margin)
        w[:, todo] = wt + t * d
    return w


def fit_svms(
    x: Tensor, y: Tensor, weight: Tensor, costs: Sequence[float], *,
    intercept_scaling: float = 1.0, opts: SolverOptions | None = None,
    init: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Solve Q × len(costs) squared-hinge SVMs sharing the feature matrix ``x``.

    Args:
        x: ``(N, D)`` features (normalise them first if the protocol does).
        y: ``(N, Q)`` labels in {−1, +1}, one column per problem.
        weight: ``(N, Q)`` per-sample weight: the class weight, 0 for rows outside the
            problem's training set (another CV fold, not in a low-shot sample).
        costs: The cost grid; problem (q, j) uses ``C_i = costs[j] · weight[i, q]``.
        intercept_scaling: Value of liblinear's synthetic bias feature.
        opts: Solver settings.
        init: Optional starting point ``(coef (D, Q), intercept (Q,))`` for the smallest cost.

    Returns:
        ``(coef, intercept)``: ``(D, Q, J)`` and ``(Q, J)``, float64 on the CPU.
    """
    opts = opts or SolverOptions()
    dev, dtype = resolve_device(opts.device), getattr(torch, opts.dtype)
    weight = torch.as_tensor(weight)
    rows = (weight > 0).any(dim=1)
    xr = torch.as_tensor(x)[rows].to(dev, dtype)
    xa = torch.cat([xr, torch.full((xr.shape[0], 1), intercept_scaling, dtype=dtype,
                                   device=dev)], 1)
    v, z = _basis(xa)
    z_cg = z.float() if opts.cg_dtype == "float32" else z
    yr, wr = torch.as_tensor(y)[rows].to(dev, dtype), weight[rows].to(dev, dtype)
    w = torch.zeros(z.shape[1], yr.shape[1], dtype=dtype, device=dev)
    if init is not None:  # project [coef; intercept / scaling] onto the basis
        bias = torch.as_tensor(init[1])[None] / intercept_scaling
        wa = torch.cat([torch.as_tensor(init[0]), bias])
        w = v.T @ wa.to(dev, dtype)
    out = torch.zeros(xa.shape[1], yr.shape[1], len(costs), dtype=torch.float64)
    # NOTE: costs are solved in ascending order, each warm-started from the previous
    # solution (a continuation path); the optimum is unique, so only the speed changes.
    for j in sorted(range(len(costs)), key=lambda i: costs[i]):
        w = _newton(z, z_cg, yr, wr * costs[j], w.clone(), opts)
        out[:, :, j] = (v @ w).double().cpu()
    return out[:-1], out[-1] * intercept_scaling


def class_weights(labels_pm: Tensor) -> Tensor:
    """Per-sample class weights (2 for +1, 1 for −1) of labels ``(N, Q)`` in {−1, +1}."""
    return torch.where(torch.as_tensor(labels_pm) > 0, POS_WEIGHT, NEG_WEIGHT).double()


def decision(x: Tensor, coef: Tensor, intercept: Tensor) -> np.ndarray:
    """Scores ``x @ coef + intercept`` in float64 as numpy; coef ``(D, …)``, intercept ``(…)``."""
    x = torch.as_tensor(x, dtype=torch.float64)
    return (torch.tensordot(x, coef, dims=1) + intercept).numpy()
