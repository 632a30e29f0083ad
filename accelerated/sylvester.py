"""Sylvester flows (survey eq. 31-33), batched; see :mod:`flowspec.reference.sylvester` for the map,
the config, the parameterizations of Q and the invertibility margin.

    f(x) = x + Q·R·tanh(R̃·Qᵀx + b),    log|det| = Σ_i log1p(r_ii·r̃_ii·h′(a_i))   (det identity, eq. 33)

with h′ = 4e/(1 + e)², e = exp(−2|a|), accurate where tanh rounds to ±1 (a slope r_ii·r̃_ii of 10⁸
still sees h′ there). Without a context Q, R and R̃ are built once per call; with one (amortized
parameters θ + θ_context·c) they are built per sample, Q̂ orthonormalised per sample with the
converged samples frozen, so a sample's result does not depend on its batch.

**Orthogonalisation** (``parameterization="orthogonal"``): the iteration of the reference on
(batch, D, M) tensors, gradients flowing through every step; ``orth_tol=None`` is √ε of the flow's
dtype; :class:`~flowspec.errors.ConvergenceError` with the largest ‖QᵀQ − I‖_F left at the cap.

**Inverse**: back-substitution over the M coordinates of span(Q), from the last, each a batched
scalar solve of α + ρ·tanh(s·α + c) = t (ρ = r_ii, s = r̃_ii ≥ 0; slope ≥ δ = 0.01) by safeguarded
Newton inside the bracket [t − |ρ| − 1, t + |ρ| + 1] (a Newton step that leaves the bracket, or is
longer than half the previous step, is replaced by bisection: near the flat centre of a slope that
dips to δ, Newton alone can oscillate about the root with an amplitude that decays only slowly) until |residual| ≤ rtol·(|t| + |ρ| + 1) or the bracket is a few ulps wide (the steep
case, where no float meets the residual test), raising :class:`~flowspec.errors.ConvergenceError`
with the relative residual at ``max_iter``. Each solved coordinate is then corrected by one Newton
step taken with autograd from the already corrected later coordinates, which gives the implicit
function theorem's gradients: the back-substitution of J⁻¹ for the triangular Jacobian.
Solver settings are attributes, as for the planar flow: ``max_iter`` (default 100) and ``rtol``
(default 32·ε of the dtype).

Hook ``orthonormal_basis(context=None)``: the Q the forward uses, (D, M), or (B, D, M) with a context.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from flowspec.errors import ConvergenceError, NumericalError
from flowspec.reference.sylvester import MU, SylvesterConfig, parse_config

from .base import Flow, register, softplus


def sech2(a: Tensor) -> Tensor:
    """1 − tanh²(a) = 4e/(1 + e)², e = exp(−2|a|), accurate to rounding for every a."""
    e = torch.exp(-2.0 * a.abs())
    return 4.0 * e / (1.0 + e) ** 2


def _diag(t: Tensor) -> Tensor:
    return torch.diagonal(t, dim1=-2, dim2=-1)


def _apply(mats: Tensor, vecs: Tensor) -> Tensor:
    """Per-sample matrix-vector products: (B|1, P, N) with (B, N) → (B, P); one shared matrix as a
    single matrix product (a broadcast batch of matrix-vector products is several times slower)."""
    if mats.shape[0] == 1:
        return vecs @ mats[0].mT
    return (mats @ vecs.unsqueeze(-1)).squeeze(-1)


def _init_params(cfg: SylvesterConfig) -> dict[str, Tensor]:
    """A user's starting point: Q̂ with random orthonormal columns or v ~ N(0, 1), small random
    triangles, b = 0, zero context weights (the amortization starts switched off)."""
    d, m = cfg.d, cfg.m
    out = {"r": torch.triu(0.1 * torch.randn(m, m)), "r_tilde": torch.triu(0.1 * torch.randn(m, m)),
           "b": torch.zeros(m)}
    if cfg.parameterization == "orthogonal":
        out["q"] = torch.linalg.qr(torch.randn(d, m))[0]
    elif cfg.parameterization == "householder":
        out["v"] = torch.randn(cfg.reflections, d)
    for name, shape in cfg.raw_shapes().items():
        if cfg.context_dim:
            out[f"{name}_context"] = torch.zeros(shape + (cfg.context_dim,))
    return out


@register("sylvester")
class Sylvester(Flow):
    """f(x) = x + Q·R·tanh(R̃·Qᵀx + b) on vectors of size D (module docstring)."""

    conformance_hooks = frozenset({"orthonormal_basis"})

    def __init__(self, shape: Sequence[int], *, m: int | None = None, parameterization: str = "orthogonal",
                 reflections: int | None = None, reverse: bool | None = None, orth_tol: float | None = None,
                 orth_max_iter: int | None = None, context_dim: int = 0, validate_args: bool | None = None):
        super().__init__(validate_args=validate_args)
        given = {"shape": list(shape) if isinstance(shape, (list, tuple)) else shape, "m": m,
                 "parameterization": parameterization, "reflections": reflections, "reverse": reverse,
                 "orth_tol": orth_tol, "orth_max_iter": orth_max_iter, "context_dim": context_dim}
        self.cfg = parse_config({k: v for k, v in given.items() if v is not None})
        self.context_shape = (self.cfg.context_dim,) if self.cfg.context_dim else None
        for name, value in _init_params(self.cfg).items():
            setattr(self, name, nn.Parameter(value))
        self.max_iter = 100
        self.rtol: float | None = None

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self.cfg.d,)

    def config(self) -> dict[str, Any]:
        return self.cfg.to_config()

    # ------------------------------------------------------------------ the pieces
    def _raw(self, name: str, context: Tensor | None) -> Tensor:
        """θ with a leading batch axis of 1, or θ + θ_context·c per sample (B, ...)."""
        theta = getattr(self, name)
        if context is None:
            return theta.unsqueeze(0)
        return theta + torch.einsum("...c,bc->b...", getattr(self, f"{name}_context"), context)

    def _basis(self, context: Tensor | None) -> Tensor:
        """Q, (B|1, D, M)."""
        cfg = self.cfg
        if cfg.parameterization == "orthogonal":
            return self._orthonormalize(self._raw("q", context))
        if cfg.parameterization == "householder":
            return self._householder(self._raw("v", context))
        eye = torch.eye(cfg.d, dtype=self._dtype(), device=self._anchor.device)
        return (eye.flip(1) if cfg.reverse else eye)[:, :cfg.m].unsqueeze(0)

    def _orthonormalize(self, q_hat: Tensor) -> Tensor:
        """Q ← Q·(I + ½(I − QᵀQ)) from Q̂/‖Q̂‖_F per sample, the step at which ‖QᵀQ − I‖_F ≤ tol
        being a sample's last (frozen afterwards)."""
        dtype = q_hat.dtype
        tol = math.sqrt(torch.finfo(dtype).eps) if self.cfg.orth_tol is None else self.cfg.orth_tol
        norm = torch.linalg.matrix_norm(q_hat, keepdim=True)
        q = q_hat / norm.clamp_min(torch.finfo(dtype).tiny)  # Q̂ = 0 stays 0 and does not converge
        eye = torch.eye(q.shape[-1], dtype=dtype, device=q.device)
        finished = torch.zeros(q.shape[0], dtype=torch.bool, device=q.device)
        residual = torch.full_like(finished, math.inf, dtype=dtype)
        for _ in range(self.cfg.orth_max_iter):
            defect = eye - q.mT @ q
            residual = torch.where(finished, residual, torch.linalg.matrix_norm(defect.detach()))
            q = torch.where(finished[:, None, None], q, q + 0.5 * (q @ defect))
            finished = finished | (residual <= tol)
            if bool(finished.all()):
                return q
        raise ConvergenceError("sylvester flow: the orthogonalisation of Q̂ did not converge (is Q̂ rank-deficient?)",
                               residual=float(residual.max()), iterations=self.cfg.orth_max_iter, tolerance=tol)

    def _householder(self, v: Tensor) -> Tensor:
        """The first M columns of H₁·…·H_K per sample (v: (B|1, K, D))."""
        vv = (v * v).sum(-1)
        if self.validate_args and not bool((vv > 0).all()):
            k = int(torch.nonzero((vv <= 0).any(0))[0])
            raise NumericalError(f"sylvester flow: Householder vector v[{k}] is zero")
        eye = torch.eye(self.cfg.d, dtype=v.dtype, device=v.device)
        q = eye[:, :self.cfg.m].expand(v.shape[0], -1, -1)
        for k in reversed(range(v.shape[1])):
            vk = v[:, k, :]
            q = q - (2.0 / vv[:, k])[:, None, None] * vk.unsqueeze(-1) * (vk.unsqueeze(-2) @ q)
        return q

    def _parts(self, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(Q, R, R̃, b) with a leading batch axis (B, or 1 without a context); R̃'s diagonal is
        S/(1 + S·softplus(−r_ii)/μ), S = softplus(raw), which keeps r_ii·r̃_ii > −μ."""
        r, rt = self._raw("r", context), self._raw("r_tilde", context)
        r_diag = _diag(r)
        s = softplus(_diag(rt))
        rt_diag = s / (1.0 + s * softplus(-r_diag) / MU)
        upper_r = torch.triu(r, 1) + torch.diag_embed(r_diag)
        upper_rt = torch.triu(rt, 1) + torch.diag_embed(rt_diag)
        return self._basis(context), upper_r, upper_rt, self._raw("b", context)

    def orthonormal_basis(self, context: Tensor | None = None) -> Tensor:
        """Hook: the Q of the forward, (D, M), or (B, D, M) with a context."""
        q = self._basis(context)
        return q[0] if context is None else q.expand(context.shape[0], -1, -1)

    # ------------------------------------------------------------------ the map
    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        q, r, rt, b = self._parts(context)
        a = _apply(rt, _apply(q.mT, x)) + b
        z = x + _apply(q, _apply(r, torch.tanh(a)))
        return z, torch.log1p(_diag(r) * _diag(rt) * sech2(a)).sum(-1)

    def _inverse(self, z: Tensor, context: Tensor | None) -> Tensor:
        q, r, rt, b = self._parts(context)
        batch, m = z.shape[0], self.cfg.m
        r, rt, b = r.expand(batch, m, m), rt.expand(batch, m, m), b.expand(batch, m)
        w = _apply(q.mT, z)
        ys: list[Tensor] = []  # y_{i+1}, …, y_M of the coordinates solved so far (autograd-tracked)
        hs: list[Tensor] = []
        for i in reversed(range(m)):
            c, target = b[:, i], w[:, i]
            if ys:
                c = c + (rt[:, i, i + 1:] * torch.stack(ys, -1)).sum(-1)
                target = target - (r[:, i, i + 1:] * torch.stack(hs, -1)).sum(-1)
            rho, s = r[:, i, i], rt[:, i, i]
            with torch.no_grad():
                alpha = self._solve(target, rho, s, c)
            slope = (1.0 + rho * s * sech2(s * alpha + c)).detach()
            alpha = alpha - (alpha + rho * torch.tanh(s * alpha + c) - target) / slope  # implicit gradients
            ys.insert(0, alpha)
            hs.insert(0, torch.tanh(s * alpha + c))
        return z - _apply(q, _apply(r, torch.stack(hs, -1)))

    def _solve(self, target: Tensor, rho: Tensor, s: Tensor, c: Tensor) -> Tensor:
        """α with α + ρ·tanh(s·α + c) = target per sample (module docstring)."""
        eps = torch.finfo(target.dtype).eps
        rtol = 32.0 * eps if self.rtol is None else self.rtol
        reach = rho.abs() + 1.0
        scale = target.abs() + reach
        low, high = target - reach, target + reach
        alpha, last_step = target.clone(), 2.0 * reach
        for _ in range(self.max_iter):
            u = s * alpha + c
            residual = alpha + rho * torch.tanh(u) - target
            done = (residual.abs() <= rtol * scale) | (high - low <= 4.0 * eps * torch.maximum(low.abs(), high.abs()))
            if bool(done.all()):
                return alpha
            low = torch.where(residual < 0, alpha, low)
            high = torch.where(residual > 0, alpha, high)
            newton = alpha - residual / (1.0 + rho * s * sech2(u))
            fast = (newton > low) & (newton < high) & ((newton - alpha).abs() <= 0.5 * last_step)
            step = torch.where(fast, newton, 0.5 * (low + high))
            last_step = (step - alpha).abs()
            alpha = torch.where(done, alpha, step)
        residual = (alpha + rho * torch.tanh(s * alpha + c) - target).abs() / scale
        raise ConvergenceError(
            "sylvester flow inverse: a scalar equation of the back-substitution did not converge",
            residual=float(residual.max()), iterations=self.max_iter, tolerance=rtol,
        )
