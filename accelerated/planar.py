"""Planar flow (survey eq. 15-16) with the invertibility reparameterisation (see :mod:`flowspec.reference.planar`).

    f(x) = x + û·tanh(wᵀx + b),    û = u + (m(wᵀu) − wᵀu)·w/‖w‖²,    m(a) = −1 + softplus(a).

log|det| = log(1 + tanh'(a)·m) with a = wᵀx + b and m = wᵀû = m(wᵀu) > −1, evaluated as
log(tanh²(a) + (1 − tanh²(a))·softplus(wᵀu)): a sum of non-negative terms, so no cancellation when
wᵀu is very negative (1 + m small).

Inverse: α = wᵀx solves the scalar equation g(α) = α + m·tanh(α + b) = wᵀz, with g strictly
increasing (g' ≥ min(1, 1 + m) > 0) and its root within |m| of wᵀz. :meth:`Planar._solve` runs a
safeguarded Newton iteration per sample (a Newton step that leaves the current bracket, or does not
halve the previous step, is replaced by bisection) until |g(α) − wᵀz| ≤ rtol·(|wᵀz| + |m| + 1), the size of the terms of g, and raises
:class:`~flowspec.errors.ConvergenceError` with that relative residual otherwise. Then
x = z − û·tanh(α + b). Gradients flow through the inverse by one Newton step taken with autograd at
the solved α (the implicit function theorem: dα = −(∂g − ∂wᵀz)/g').

Solver settings are attributes, not config: ``max_iter`` (default 100) and ``rtol`` (default
32·ε of the dtype).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from flowspec import registry
from flowspec.errors import ConvergenceError, NumericalError

from .base import Flow, register, softplus


def vector_size(kind: str, shape: Any) -> int:
    """D from a ``shape`` [D], validated by the kind's registered config check."""
    registry.get(kind).validate_config({"shape": list(shape) if isinstance(shape, (list, tuple)) else shape})
    return int(shape[0])


@register("planar")
class Planar(Flow):
    """f(x) = x + û·tanh(wᵀx + b) on vectors of size D (module docstring)."""

    def __init__(self, shape: Sequence[int], *, validate_args: bool | None = None):
        super().__init__(validate_args=validate_args)
        d = vector_size(self.kind, shape)
        self._shape = (d,)
        self.u = nn.Parameter(torch.randn(d) / math.sqrt(d))
        self.w = nn.Parameter(torch.randn(d) / math.sqrt(d))
        self.b = nn.Parameter(torch.zeros(()))
        self.max_iter = 100
        self.rtol: float | None = None

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self._shape

    def config(self) -> dict[str, Any]:
        return {"shape": list(self._shape)}

    def _u_hat(self) -> tuple[Tensor, Tensor]:
        """(û, softplus(wᵀu)); wᵀû = softplus(wᵀu) − 1."""
        ww = self.w @ self.w
        if self.validate_args and not bool(ww > 0):
            raise NumericalError("planar flow with w = 0: the reparameterisation of u divides by ‖w‖²")
        wu = self.w @ self.u
        sp = softplus(wu)
        return self.u + (sp - 1.0 - wu) * self.w / ww, sp

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        u_hat, sp = self._u_hat()
        th = torch.tanh(x @ self.w + self.b)
        z = x + th[:, None] * u_hat
        th2 = th * th
        return z, torch.log(th2 + (1.0 - th2) * sp)

    def _inverse(self, z: Tensor, context: Tensor | None) -> Tensor:
        u_hat, sp = self._u_hat()
        m = sp - 1.0
        target = z @ self.w
        with torch.no_grad():
            alpha = self._solve(target, m, self.b)
        th = torch.tanh(alpha + self.b)
        slope = (1.0 + m * (1.0 - th * th)).detach()
        alpha = alpha - (alpha + m * th - target) / slope
        return z - torch.tanh(alpha + self.b)[:, None] * u_hat

    def _solve(self, target: Tensor, m: Tensor, b: Tensor) -> Tensor:
        """α with g(α) = α + m·tanh(α + b) = target, per sample (module docstring)."""
        rtol = 32.0 * torch.finfo(target.dtype).eps if self.rtol is None else self.rtol
        scale = target.abs() + m.abs() + 1.0
        low, high = target - m.abs() - 1.0, target + m.abs() + 1.0
        alpha, last_step = target.clone(), high - low
        for _ in range(self.max_iter):
            th = torch.tanh(alpha + b)
            residual = alpha + m * th - target
            done = residual.abs() <= rtol * scale
            if bool(done.all()):
                return alpha
            low = torch.where(residual < 0, alpha, low)
            high = torch.where(residual > 0, alpha, high)
            newton = alpha - residual / (1.0 + m * (1.0 - th * th))
            # a Newton step inside the bracket that does not halve the step before it: bisect (a
            # Newton sequence can otherwise oscillate slowly inside the bracket)
            fast = (newton > low) & (newton < high) & ((newton - alpha).abs() <= 0.5 * last_step)
            step = torch.where(fast, newton, 0.5 * (low + high))
            last_step = torch.where(done, last_step, (step - alpha).abs())
            alpha = torch.where(done, alpha, step)
        residual = (alpha + m * torch.tanh(alpha + b) - target).abs() / scale
        if bool((residual <= rtol).all()):
            return alpha
        raise ConvergenceError(
            "planar flow inverse: the scalar equation along w did not converge",
            residual=float(residual.max()), iterations=self.max_iter, tolerance=rtol,
        )
