"""Planar flow (survey eq. 15-16; slides "Determinant Identity – Planar Flows").

    f(x) = x + û · tanh(wᵀx + b),    log|det ∂f/∂x| = log|1 + tanh'(wᵀx + b) · wᵀû|   (eq. 16)

with the reparameterisation that keeps f invertible: the canonical params are the unconstrained
``u`` and ``w`` (shape ``(D,)``) and ``b`` (a scalar), and

    û = u + (m(wᵀu) − wᵀu) · w / ‖w‖²,    m(a) = −1 + softplus(a),

so that wᵀû = m(wᵀu) > −1 (the slides' condition uᵀw > −1 for h = tanh). Then α ↦ α + wᵀû·tanh(α + b)
is strictly increasing and f is a bijection of R^D. Config: ``{"shape": [D]}``.

Inverse: a 1-D reduction. Applying wᵀ to x = z − û·tanh(wᵀx + b) shows that α = wᵀx solves

    g(α) = α + m·tanh(α + b) = wᵀz,    m = wᵀû > −1,

where g is strictly increasing (g' = 1 + m·tanh' ≥ min(1, 1 + m) > 0) and its root lies within
|m| of wᵀz; the reference bisects it to adjacent floats (:func:`~flowspec.reference.solve.bisect_increasing`)
and returns x = z − û·tanh(α + b).
"""
from __future__ import annotations

from typing import Any, Mapping

import autograd.numpy as anp
import numpy as np
from autograd.tracer import getval

from flowspec.errors import ConfigError, NumericalError
from flowspec.registry import Kind, register
from flowspec.spec import FlowSpec

from .elementwise import shape_of
from .lipschitz import softplus, tanh
from .solve import bisect_increasing

FAMILY = "planar"


def vector_shape(config: Mapping[str, Any]) -> tuple[int]:
    """``(D,)`` from a config that holds exactly ``{"shape": [D]}`` (planar and radial flows)."""
    unknown = sorted(set(config) - {"shape"})
    if unknown:
        raise ConfigError(f"unknown config keys {unknown}; this kind takes only 'shape'")
    if not isinstance(config.get("shape"), (list, tuple)) or len(config["shape"]) != 1:
        raise ConfigError(f"config['shape'] must be a vector shape [D], got {config.get('shape')!r}")
    return shape_of(config)


def u_hat(u: Any, w: Any) -> Any:
    """û = u + (m(wᵀu) − wᵀu)·w/‖w‖² with m(a) = −1 + softplus(a), so that wᵀû = m(wᵀu) > −1."""
    ww = anp.dot(w, w)
    if getval(ww) == 0.0:
        raise NumericalError("planar flow with w = 0: the reparameterisation of u divides by ‖w‖²")
    wu = anp.dot(w, u)
    return u + (softplus(wu) - 1.0 - wu) * w / ww


def planar_forward(spec: FlowSpec, x: Any, context: Any = None) -> Any:
    """f(x) = x + û·tanh(wᵀx + b) (eq. 15 with the reparameterised û)."""
    p = spec.params
    return x + u_hat(p["u"], p["w"]) * tanh(anp.dot(p["w"], x) + p["b"])


def planar_inverse(spec: FlowSpec, z: Any, context: Any = None) -> Any:
    """x = z − û·tanh(α + b), α the root of g(α) = wᵀz (module docstring)."""
    p = spec.params
    uh = u_hat(p["u"], p["w"])
    m, b, target = float(np.dot(p["w"], uh)), float(p["b"]), float(np.dot(p["w"], z))
    reach = abs(m) + 1.0  # the root lies within |m| of the target; the margin absorbs rounding
    alpha = bisect_increasing(lambda a: a + m * np.tanh(a + b), target, target - reach, target + reach)
    return z - uh * np.tanh(alpha + b)


def planar_init(config: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """u, w ~ N(0, 1/D) per entry (‖u‖, ‖w‖ ≈ 1), b ~ N(0, 1)."""
    (d,) = vector_shape(config)
    return {
        "u": rng.normal(0.0, 1.0 / np.sqrt(d), d),
        "w": rng.normal(0.0, 1.0 / np.sqrt(d), d),
        "b": np.asarray(rng.normal(0.0, 1.0)),
    }


register(Kind(
    name="planar", family=FAMILY, forward=planar_forward, inverse=planar_inverse, event_shape=vector_shape,
    init_params=planar_init, check_config=vector_shape,
    summary="f(x) = x + û·tanh(wᵀx + b), û reparameterised so that wᵀû > −1",
))
