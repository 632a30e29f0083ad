"""Shared 1-D monotone solves for elementwise laws (the logistic mixture, NAF, SOS, UMNN), batched and
vectorised over entries, without autograd: :func:`safeguarded_newton` (Newton steps safeguarded by
bisection inside a bracket, the float64 twin of :func:`flowspec.reference.solve.safeguarded_newton`),
:func:`expand_bracket` (a bracket for an increasing map on the whole real line) and
:func:`implicit_step` (gradients of the root by the implicit function theorem)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from flowspec.errors import ConvergenceError

DEFAULT_MAX_ITER = 200
RTOL_ULPS = 16.0
DEFAULT_EXPANSIONS = 64


def default_rtol(dtype: torch.dtype) -> float:
    """16 ulps of the dtype."""
    return RTOL_ULPS * torch.finfo(dtype).eps


Scalar = Callable[[Tensor], tuple[Tensor, Tensor]]  # x -> (value, log slope), increasing elementwise


def safeguarded_newton(fn: Scalar, target: Tensor, low: Tensor, high: Tensor, floor: Tensor, *, rtol: float,
                       max_iter: int = DEFAULT_MAX_ITER, what: str = "the scalar solve") -> Tensor:
    """Elementwise root of the increasing ``fn(x) = target`` in [low, high]: Newton steps, bisection
    where a step leaves the bracket or does not halve the step before last (a step already below the
    tolerance is taken: at the rounding floor steps no longer shrink); an entry is done when
    its Newton step or its bracket is ≤ rtol·(|x| + floor). Raises :class:`ConvergenceError` with
    the relative residual |fn(x) − target|/max(1, |target|) at ``max_iter``. No autograd."""
    with torch.no_grad():
        width = (high - low).abs()
        lo, hi = low - rtol * (low.abs() + floor), high + rtol * (high.abs() + floor)
        x = 0.5 * (lo + hi)
        step_before = step = width + 1.0
        done = torch.zeros_like(x, dtype=torch.bool)
        for _ in range(max_iter):
            value, log_slope = fn(x)
            r = value - target
            lo, hi = torch.where(r < 0, x, lo), torch.where(r > 0, x, hi)
            newton = x - r * torch.exp(-log_slope)
            inside, newton_step = (newton > lo) & (newton < hi), (newton - x).abs()
            tol = rtol * (x.abs() + floor)
            final = (newton >= lo) & (newton <= hi) & (newton_step <= tol)  # the rounding floor: no halving rule
            use_newton = final | (inside & (newton_step <= 0.5 * step_before))
            new = torch.where(r == 0, x, torch.where(use_newton, newton, 0.5 * (lo + hi)))
            delta = (new - x).abs()
            converged = (r == 0) | final | (hi - lo <= tol)
            x = torch.where(done, x, new)
            done = done | converged
            if bool(done.all()):
                return x
            step_before, step = step, delta
        residual = (fn(x)[0] - target).abs() / target.abs().clamp(min=1.0)
    raise ConvergenceError(f"{what} did not converge ({int((~done).sum())} of {done.numel()} entries)",
                           residual=float(residual[~done].max()), iterations=max_iter, tolerance=rtol)


def implicit_step(x: Tensor, target: Tensor, mixture: Scalar) -> tuple[Tensor, Tensor]:
    """(x, log g′(x)) for the root x of g(x) = target, ``mixture(x) -> (g, log g′)`` increasing: x gets
    the gradients of the implicit function theorem (its value unchanged), log g′ its own."""
    ell, log_d = mixture(x)
    residual = target - ell
    inverse_slope = torch.exp(-log_d.detach()).clamp(max=torch.finfo(x.dtype).max)
    return x + (residual - residual.detach()) * inverse_slope, log_d


def expand_bracket(fn: Callable[[Tensor], Tensor], target: Tensor, low: Tensor, high: Tensor, *,
                   max_expansions: int = DEFAULT_EXPANSIONS, what: str = "the scalar solve") -> tuple[Tensor, Tensor]:
    """Elementwise [lo, hi] with fn(lo) ≤ target ≤ fn(hi) for an increasing ``fn`` on the whole real
    line, from the guess [low, high]: an end that misses moves outward by a width that doubles at
    each try. Raises :class:`ConvergenceError` with the relative residual of the nearer end after
    ``max_expansions`` doublings. No autograd."""
    with torch.no_grad():
        lo, hi = low.clone(), high.clone()
        width = (hi - lo).clamp(min=1.0)
        for _ in range(max_expansions):
            f_lo, f_hi = fn(lo), fn(hi)
            below, above = f_lo > target, f_hi < target
            if not bool((below | above).any()):
                return lo, hi
            lo, hi = torch.where(below, lo - width, lo), torch.where(above, hi + width, hi)
            width = 2.0 * width
        f_lo, f_hi = fn(lo), fn(hi)
        missed = (f_lo > target) | (f_hi < target)
        gap = torch.where(f_lo > target, f_lo - target, target - f_hi)
        residual = gap.abs() / target.abs().clamp(min=1.0)
    raise ConvergenceError(f"{what} found no bracket ({int(missed.sum())} of {missed.numel()} entries) "
                           f"within {max_expansions} doublings", residual=float(residual[missed].max()),
                           iterations=max_expansions, tolerance=0.0)
