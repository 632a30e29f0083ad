"""Radial flow (survey eq. 17-18).

    f(x) = x + β·h(α, r)·(x − x0),    h(α, r) = 1/(α + r),    r = ‖x − x0‖            (eq. 17)
    log|det ∂f/∂x| = (D − 1)·log(1 + βh) + log(1 + βh + βh'r),   h' = −1/(α + r)²     (eq. 18)

with the reparameterisation α = softplus(α̂) > 0 and β = −α + softplus(β̂) > −α that keeps f
invertible. The canonical params are the unconstrained scalars ``alpha_hat`` and ``beta_hat`` and
the centre ``x0`` (shape ``(D,)``). Config: ``{"shape": [D]}``.

Inverse (closed form): f moves x along the ray from x0, z − x0 = (1 + βh(r))·(x − x0) with
1 + βh > 0, so ρ = ‖z − x0‖ = r·(α + β + r)/(α + r), i.e. r is the non-negative root of

    r² + (α + β − ρ)·r − αρ = 0

(the roots' product −αρ ≤ 0, so exactly one is ≥ 0), and x = x0 + (z − x0)·(α + r)/(α + β + r).
:func:`radius_from_latent` takes the root in the form that avoids cancellation.
"""
from __future__ import annotations

from typing import Any, Mapping

import autograd.numpy as anp
import numpy as np

from flowspec.registry import Kind, register
from flowspec.spec import FlowSpec

from .lipschitz import softplus
from .planar import vector_shape

FAMILY = "radial"


def coefficients(spec: FlowSpec) -> tuple[Any, Any, Any]:
    """(α, β, α + β) = (softplus(α̂), −α + softplus(β̂), softplus(β̂))."""
    alpha, alpha_beta = softplus(spec.params["alpha_hat"]), softplus(spec.params["beta_hat"])
    return alpha, alpha_beta - alpha, alpha_beta


def radius(d: Any) -> Any:
    """‖d‖, with derivative 0 at d = 0 (where f is still differentiable, ∂f/∂x = (1 + β/α)·I,
    because the term d·∂r/∂d vanishes there); a plain sqrt would give 0·∞ = NaN."""
    s = anp.sum(d ** 2)
    return anp.where(s > 0, anp.sqrt(anp.where(s > 0, s, 1.0)), 0.0)


def radial_forward(spec: FlowSpec, x: Any, context: Any = None) -> Any:
    """f(x) = x + β·(x − x0)/(α + r) (eq. 17)."""
    alpha, beta, _ = coefficients(spec)
    d = x - spec.params["x0"]
    return x + beta * d / (alpha + radius(d))


def radius_from_latent(rho: float, alpha: float, alpha_beta: float) -> float:
    """The root r ≥ 0 of r² + (α + β − ρ)·r − αρ = 0 (module docstring), without cancellation."""
    b = alpha_beta - rho
    disc = np.sqrt(b * b + 4.0 * alpha * rho)
    return 2.0 * alpha * rho / (b + disc) if b >= 0 else 0.5 * (disc - b)


def radial_inverse(spec: FlowSpec, z: Any, context: Any = None) -> Any:
    """x = x0 + (z − x0)·(α + r)/(α + β + r) with r from :func:`radius_from_latent`."""
    alpha, _, alpha_beta = (float(c) for c in coefficients(spec))
    d = np.asarray(z) - spec.params["x0"]
    r = radius_from_latent(float(np.linalg.norm(d)), alpha, alpha_beta)
    return spec.params["x0"] + d * (alpha + r) / (alpha_beta + r)


def radial_init(config: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """α̂, β̂ ~ N(0, 1); x0 ~ N(0, 1) per entry."""
    (d,) = vector_shape(config)
    return {
        "alpha_hat": np.asarray(rng.normal(0.0, 1.0)),
        "beta_hat": np.asarray(rng.normal(0.0, 1.0)),
        "x0": rng.normal(0.0, 1.0, d),
    }


register(Kind(
    name="radial", family=FAMILY, forward=radial_forward, inverse=radial_inverse,
    event_shape=vector_shape, init_params=radial_init, check_config=vector_shape,
    summary="f(x) = x + β(x − x0)/(α + ‖x − x0‖), α = softplus(α̂), β = −α + softplus(β̂)",
))
