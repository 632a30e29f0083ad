"""Finite-difference Jacobians for black-box checks, independent of the implementation's autograd.

Central differences at steps ``h`` and ``h/2`` combined by one Richardson extrapolation,
``J ≈ (4·D(h/2) − D(h)) / 3``, whose truncation error is ``O(h⁴)``. The base step is
``ε^(1/5)`` of the dtype the implementation computes in (see :mod:`.tolerances`), scaled by
``max(1, |x_i|)`` — or by the distance to the domain's boundary where that is smaller, since a
map like logit varies on that length scale — and rounded down to a power of two. Points are rounded to that dtype before use and the differences divide by the
*rounded* step, so that float32 evaluation does not add a representation error of the step.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from flowspec.registry import Domain

from .tolerances import fd_step

ROUND = {"float64": np.float64, "float32": np.float32}


def _steps(x: np.ndarray, dtype: str, domain: Domain) -> np.ndarray:
    scale = np.maximum(1.0, np.abs(x))
    if domain.low is not None:
        scale = np.minimum(scale, x - domain.low)
    if domain.high is not None:
        scale = np.minimum(scale, domain.high - x)
    return 2.0 ** np.floor(np.log2(fd_step(dtype) * scale))


def jacobian(f: Callable[[np.ndarray], np.ndarray], x: np.ndarray, dtype: str, domain: Domain) -> np.ndarray:
    """Jacobians of ``f`` (a batched map, flattened per sample) at each sample of ``x``: ``(B, D_out, D)``."""
    cast = ROUND[dtype]
    batch = x.shape[0]
    flat = x.reshape(batch, -1).astype(cast).astype(np.float64)
    d = flat.shape[1]
    out = []
    for b in range(batch):
        h = _steps(flat[b], dtype, domain)
        points = []
        for scale in (1.0, 0.5):
            for sign in (1.0, -1.0):
                shifted = np.repeat(flat[b][None, :], d, axis=0)
                shifted[np.arange(d), np.arange(d)] += sign * scale * h
                points.append(shifted.astype(cast).astype(np.float64))
        values = f(np.concatenate(points).reshape((4 * d,) + x.shape[1:])).reshape(4, d, -1)
        pts = np.stack(points)
        widths = [pts[0][np.arange(d), np.arange(d)] - pts[1][np.arange(d), np.arange(d)],
                  pts[2][np.arange(d), np.arange(d)] - pts[3][np.arange(d), np.arange(d)]]
        coarse = (values[0] - values[1]) / widths[0][:, None]
        fine = (values[2] - values[3]) / widths[1][:, None]
        out.append(((4.0 * fine - coarse) / 3.0).T)
    return np.stack(out)
