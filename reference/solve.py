"""The reference inverse: analytic where the kind has one, otherwise a damped Newton solve.

Newton runs on the full autograd Jacobian of one sample, from x0 = y (or the origin where f(y)
overflows), and stops when the residual
``‖f(x) − y‖₂ ≤ rtol · max(‖y‖₂, 1)`` (relative to ‖y‖, with a floor of 1 so that y ≈ 0 is still a
meaningful target), then takes one polishing step (kept if it does not increase the residual) so
that the answer is accurate to rounding, not merely to the tolerance. Each step is damped by
backtracking until the residual decreases. A solve that
does not meet the tolerance raises :class:`ConvergenceError` carrying its relative residual.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from flowspec import registry
from flowspec.errors import ConvergenceError, NumericalError
from flowspec.spec import FlowSpec

from .core import Array, check_context, check_input, flat_forward_one, jacobian_one, stack_samples

DEFAULT_RTOL = 1e-12
DEFAULT_SCALAR_RTOL = 16.0 * float(np.finfo(np.float64).eps)
DEFAULT_SCALAR_MAX_ITER = 200
DEFAULT_MAX_ITER = 100
_MAX_HALVINGS = 40


def _norm(v: Array) -> float:
    """Euclidean norm that does not overflow for entries near the float64 limit."""
    biggest = float(np.max(np.abs(v))) if v.size else 0.0
    if biggest == 0.0 or not np.isfinite(biggest):
        return biggest
    return biggest * float(np.linalg.norm(v / biggest))


def _scale(y: Array) -> float:
    return max(_norm(y), 1.0)


def _newton_step(spec: FlowSpec, x: Array, r: Array, context: Any) -> Array:
    shape = tuple(registry.get(spec.kind).event_shape(spec.config))
    jac = np.asarray(jacobian_one(spec, x.reshape(shape), context))
    try:
        return np.linalg.solve(jac, r)
    except np.linalg.LinAlgError:
        raise NumericalError(f"singular Jacobian in the Newton inverse of kind {spec.kind!r}") from None


def _polish(spec: FlowSpec, x: Array, r: Array, residual: Any, context: Any) -> Array:
    """One more full Newton step once the tolerance is met: quadratic convergence takes the error from
    the tolerance down to rounding level; the step is kept only if it does not increase the residual."""
    candidate = x - _newton_step(spec, x, r, context)
    if registry.get(spec.kind).domain.violations(candidate).any():
        return x
    r_new = residual(candidate)
    return candidate if np.all(np.isfinite(r_new)) and _norm(r_new) <= _norm(r) else x


def newton_solve(
    spec: FlowSpec,
    y: Array,
    context: Any = None,
    *,
    x0: Array | None = None,
    rtol: float = DEFAULT_RTOL,
    max_iter: int = DEFAULT_MAX_ITER,
) -> Array:
    """Solve ``f(x) = y`` for one sample by damped Newton on the full Jacobian."""
    shape = tuple(registry.get(spec.kind).event_shape(spec.config))
    f = flat_forward_one(spec, context)
    target = y.reshape(-1)
    domain = registry.get(spec.kind).domain
    x = (domain.project(target) if x0 is None else x0.reshape(-1)).astype(np.float64).copy()
    scale = _scale(target)

    def residual(point: Array) -> Array:
        with np.errstate(over="ignore", invalid="ignore"):  # non-finite trial points are rejected below
            return np.asarray(f(point)) - target

    r = residual(x)
    if not np.all(np.isfinite(r)):  # the default start x0 = y can overflow f: start from the origin
        x = domain.project(np.zeros_like(x))
        r = residual(x)
    for it in range(max_iter):
        if _norm(r) <= rtol * scale:
            return _polish(spec, x, r, residual, context).reshape(shape)
        step = _newton_step(spec, x, r, context)
        t, norm_r = 1.0, _norm(r)
        for _ in range(_MAX_HALVINGS):
            candidate = x - t * step
            if not domain.violations(candidate).any():
                r_new = residual(candidate)
                if np.all(np.isfinite(r_new)) and _norm(r_new) < norm_r:
                    break
            t *= 0.5
        else:
            raise ConvergenceError(
                f"Newton inverse of kind {spec.kind!r} found no decreasing step",
                residual=float(norm_r / scale), iterations=it, tolerance=rtol,
            )
        x, r = candidate, r_new
    if _norm(r) <= rtol * scale:
        return _polish(spec, x, r, residual, context).reshape(shape)
    raise ConvergenceError(
        f"Newton inverse of kind {spec.kind!r} did not converge",
        residual=float(_norm(r) / scale), iterations=max_iter, tolerance=rtol,
    )


def inverse_one(spec: FlowSpec, y: Array, context: Any = None, **solver: Any) -> Array:
    """``x = f⁻¹(y)`` for one sample: the kind's analytic inverse, else :func:`newton_solve`."""
    kind = registry.get(spec.kind)
    if kind.inverse is not None:
        return np.asarray(kind.inverse(spec, y, context))
    return newton_solve(spec, y, context, **solver)


def inverse(spec: FlowSpec, y: Any, context: Any = None, **solver: Any) -> Array:
    """``x = f⁻¹(y)`` for a batch (see :func:`inverse_one`)."""
    kind = registry.get(spec.kind)
    y = check_input(spec, y, "y", latent=True)
    ctx = check_context(spec, context, y.shape[0])
    x = stack_samples([inverse_one(spec, y[i], None if ctx is None else ctx[i], **solver) for i in range(y.shape[0])],
                      tuple(kind.event_shape(spec.config)))
    kind.domain.check(x, "the inverse's result")
    return x


def bisect_increasing(fn: Callable[[float], float], target: float, low: float, high: float) -> float:
    """The root of ``fn(t) = target`` for an increasing scalar ``fn`` with ``fn(low) ≤ target ≤ fn(high)``.

    Bisection until no float lies strictly between the bracket's ends, so the result is exact to
    one unit in the last place of t (up to the rounding of ``fn`` itself). Raises
    :class:`ConvergenceError` if the bracket does not hold the target.
    """
    f_low, f_high = fn(low) - target, fn(high) - target
    if not (f_low <= 0.0 <= f_high):
        scale = max(abs(target), 1.0)
        raise ConvergenceError(
            f"bisection bracket [{low!r}, {high!r}] does not hold the target {target!r}",
            residual=min(abs(f_low), abs(f_high)) / scale, iterations=0, tolerance=0.0,
        )
    while True:
        mid = 0.5 * (low + high)
        if mid <= low or mid >= high:
            return low if abs(f_low) <= abs(f_high) else high
        f_mid = fn(mid) - target
        if f_mid == 0.0:
            return mid
        if f_mid < 0.0:
            low, f_low = mid, f_mid
        else:
            high, f_high = mid, f_mid


Scalar = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # x -> (value, log slope), increasing


def safeguarded_newton(fn: Scalar, target: np.ndarray, low: np.ndarray, high: np.ndarray, floor: np.ndarray, *,
                       rtol: float = DEFAULT_SCALAR_RTOL, max_iter: int = DEFAULT_SCALAR_MAX_ITER,
                       what: str = "the scalar solve") -> np.ndarray:
    """Elementwise root of the increasing ``fn(x) = target`` in [low, high] (the 1-D monotone solve every
    elementwise law inverts with: the logistic mixture, NAF, SOS, UMNN):
    Newton steps, bisection where a step leaves the bracket or does not halve the step before last
    (a step already below the tolerance is taken: at the rounding floor steps no longer shrink);
    done where the Newton step or the bracket is ≤ rtol·(|x| + floor). Raises
    :class:`ConvergenceError` with the relative residual at ``max_iter``."""
    target = np.asarray(target, np.float64)
    lo, hi = np.array(low, np.float64), np.array(high, np.float64)
    width = np.abs(hi - lo)
    lo, hi = lo - rtol * (np.abs(lo) + floor), hi + rtol * (np.abs(hi) + floor)  # the ends' own rounding
    x = 0.5 * (lo + hi)
    step_before, step = width + 1.0, width + 1.0
    done = np.zeros(x.shape, dtype=bool)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for _ in range(max_iter):
            value, log_slope = fn(x)
            r = value - target
            lo, hi = np.where(r < 0, x, lo), np.where(r > 0, x, hi)
            newton = x - r * np.exp(-log_slope)
            inside, newton_step = (newton > lo) & (newton < hi), np.abs(newton - x)
            tol = rtol * (np.abs(x) + floor)
            final = (newton >= lo) & (newton <= hi) & (newton_step <= tol)  # the rounding floor: no halving rule
            use_newton = final | (inside & (newton_step <= 0.5 * step_before))
            new = np.where(r == 0, x, np.where(use_newton, newton, 0.5 * (lo + hi)))
            delta = np.abs(new - x)
            converged = (r == 0) | final | (hi - lo <= tol)
            x = np.where(done, x, new)
            done |= converged
            if done.all():
                return x
            step_before, step = step, delta
    value, _ = fn(x)
    residual = np.abs(value - target) / np.maximum(1.0, np.abs(target))
    raise ConvergenceError(f"{what} did not converge ({int((~done).sum())} of {done.size} entries)",
                           residual=float(np.max(residual[~done])), iterations=max_iter, tolerance=rtol)


DEFAULT_EXPANSIONS = 64


def expand_bracket(fn: Callable[[np.ndarray], np.ndarray], target: np.ndarray, low: np.ndarray, high: np.ndarray, *,
                   max_expansions: int = DEFAULT_EXPANSIONS,
                   what: str = "the scalar solve") -> tuple[np.ndarray, np.ndarray]:
    """Elementwise [lo, hi] with fn(lo) ≤ target ≤ fn(hi) for an increasing ``fn`` on the whole real
    line (no exact bracket known), from the guess [low, high]: an end that misses moves outward by a
    width that doubles at each try. Raises :class:`ConvergenceError` with the relative residual of the
    nearer end after ``max_expansions`` doublings (the map is then bounded, or the target out of range)."""
    target = np.asarray(target, np.float64)
    lo, hi = np.array(low, np.float64), np.array(high, np.float64)
    width = np.maximum(hi - lo, 1.0)
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(max_expansions):
            f_lo, f_hi = fn(lo), fn(hi)
            below, above = f_lo > target, f_hi < target
            if not (below.any() or above.any()):
                return lo, hi
            lo, hi = np.where(below, lo - width, lo), np.where(above, hi + width, hi)
            width = 2.0 * width
        f_lo, f_hi = fn(lo), fn(hi)
    missed = (f_lo > target) | (f_hi < target)
    gap = np.where(f_lo > target, f_lo - target, target - f_hi)
    residual = np.abs(gap) / np.maximum(1.0, np.abs(target))
    raise ConvergenceError(f"{what} found no bracket ({int(missed.sum())} of {missed.size} entries) "
                           f"within {max_expansions} doublings", residual=float(np.max(residual[missed])),
                           iterations=max_expansions, tolerance=0.0)
