"""Finite-difference Jacobians for black-box checks, independent of the implementation's autograd.

Central differences at steps ``h`` and ``h/2`` combined by one Richardson extrapolation,
``J ≈ (4·D(h/2) − D(h)) / 3``, whose truncation error is ``O(h⁴)``. The base step is
``ε^(1/5)`` of the dtype the implementation computes in (see :mod:`.tolerances`), scaled by
``max(1, |x_i|)`` — or by the distance to the domain's boundary where that is smaller, since a
map like logit varies on that length scale — and rounded down to a power of two. Points are rounded to that dtype before use and the differences divide by the
*rounded* step, so that float32 evaluation does not add a representation error of the step.

Smoothness check: the ``O(h⁴)`` error needs a smooth map across the stencil, and a piecewise-smooth
one (an ELU network: C¹, its second derivative jumps where a pre-activation crosses 0) has an
``O(h)`` error when a kink lies within the step. So every column is also extrapolated from
``h/2`` and ``h/4``; where the two extrapolations differ by more than the ``fd_jacobian``
tolerance, that column is recomputed with its step divided by :data:`REFINEMENT` (which moves the
kink out of the stencil unless it lies closer than the new step), and the recomputed column is
kept if its own two extrapolations agree better. Columns that pass the check keep the
``(h, h/2)`` extrapolation, as before. One refinement only: a smaller step would let rounding
(``ε/h``) exceed the tolerance. A column whose extrapolations still disagree after the refinement
has a kink closer than the refined step (a spline knot a few ulps of the step away, in float32): its
error is ``O(h)`` and unknown, so no verdict can rest on it and the point is rejected (hypothesis
draws another; a map that is nowhere smooth enough fails the run as unsatisfiable).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from hypothesis import assume

from flowspec.registry import Domain

from .tolerances import fd_step, tolerance

ROUND = {"float64": np.float64, "float32": np.float32}
REFINEMENT = 16.0
SCALES = (1.0, 0.5, 0.25)


def _steps(x: np.ndarray, dtype: str, domain: Domain) -> np.ndarray:
    scale = np.maximum(1.0, np.abs(x))
    if domain.low is not None:
        scale = np.minimum(scale, x - domain.low)
    if domain.high is not None:
        scale = np.minimum(scale, domain.high - x)
    return 2.0 ** np.floor(np.log2(fd_step(dtype) * scale))


def _central_differences(f: Callable[[np.ndarray], np.ndarray], point: np.ndarray, h: np.ndarray, cast: type,
                         event_shape: tuple[int, ...]) -> list[np.ndarray]:
    """Central differences of ``f`` at ``point`` along each coordinate, one ``(D, D_out)`` array per
    step ``scale·h`` of :data:`SCALES`, each divided by its rounded width."""
    d, diag = point.size, (np.arange(point.size), np.arange(point.size))
    points = []
    for scale in SCALES:
        for sign in (1.0, -1.0):
            shifted = np.repeat(point[None, :], d, axis=0)
            shifted[diag] += sign * scale * h
            points.append(shifted.astype(cast).astype(np.float64))
    values = f(np.concatenate(points).reshape((len(points) * d,) + event_shape)).reshape(len(points), d, -1)
    return [(values[2 * k] - values[2 * k + 1]) / (points[2 * k][diag] - points[2 * k + 1][diag])[:, None]
            for k in range(len(SCALES))]


def _richardson(coarse: np.ndarray, fine: np.ndarray) -> np.ndarray:
    return (4.0 * fine - coarse) / 3.0


def _extrapolations(f: Callable[[np.ndarray], np.ndarray], point: np.ndarray, h: np.ndarray, cast: type,
                    event_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The ``(h, h/2)`` Richardson extrapolation, ``(D, D_out)``, and per column its largest
    difference from the ``(h/2, h/4)`` one (small for a map that is smooth across the stencil)."""
    coarse, fine, finest = _central_differences(f, point, h, cast, event_shape)
    estimate = _richardson(coarse, fine)
    return estimate, np.abs(estimate - _richardson(fine, finest)).max(axis=1)


def jacobian(f: Callable[[np.ndarray], np.ndarray], x: np.ndarray, dtype: str, domain: Domain) -> np.ndarray:
    """Jacobians of ``f`` (a batched map, flattened per sample) at each sample of ``x``: ``(B, D_out, D)``."""
    cast = ROUND[dtype]
    batch = x.shape[0]
    flat = x.reshape(batch, -1).astype(cast).astype(np.float64)
    d = flat.shape[1]
    limit = tolerance("fd_jacobian", dtype, d)
    out = []
    for b in range(batch):
        h = _steps(flat[b], dtype, domain)
        estimate, disagreement = _extrapolations(f, flat[b], h, cast, x.shape[1:])
        kinked = disagreement > limit * np.maximum(1.0, np.abs(estimate).max(axis=1))
        if kinked.any():
            refined, refined_disagreement = _extrapolations(f, flat[b], np.where(kinked, h / REFINEMENT, h), cast,
                                                            x.shape[1:])
            better = kinked & (refined_disagreement < disagreement)
            estimate = np.where(better[:, None], refined, estimate)
            remaining = np.where(better, refined_disagreement, disagreement)
            assume(not np.any(kinked & (remaining > limit * np.maximum(1.0, np.abs(estimate).max(axis=1)))))
        assume(bool(np.all(np.isfinite(estimate))))  # a stencil collapsed at a domain bound: draw another point
        out.append(estimate.T)
    return np.stack(out)


def per_sample_jacobians(call: Callable[[np.ndarray, np.ndarray | None], np.ndarray], x: np.ndarray,
                         context: np.ndarray | None, dtype: str, domain: Domain, scale: float = 1.0) -> np.ndarray:
    """:func:`jacobian` of ``call(points, context)`` (a batched map, rows flattened per sample) at each
    sample of ``x`` with that sample's own context row: ``(B, D_out, D)``. ``scale`` multiplies every
    step (the map is evaluated at x + scale·(p − x) for the stencil's points p)."""
    out = []
    for b in range(x.shape[0]):
        c_b, x_b = None if context is None else context[b:b + 1], x[b:b + 1]

        def f(points: np.ndarray, c_b=c_b, x_b=x_b) -> np.ndarray:
            at = points if scale == 1.0 else x_b + scale * (points - x_b)
            return call(at, None if c_b is None else np.repeat(c_b, len(points), 0))

        out.append(jacobian(f, x_b, dtype, domain)[0] / scale)
    return np.stack(out)
