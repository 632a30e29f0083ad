"""Elementwise bijections: affine, sigmoid, and the logit transform with α.

All act on every entry independently, on an event of any shape given as ``config["shape"]``.
"""
from __future__ import annotations

from typing import Any, Mapping

import autograd.numpy as anp
import numpy as np

from flowspec.errors import ConfigError
from flowspec.registry import REAL, UNIT_INTERVAL, Domain, Kind, register
from flowspec.spec import FlowSpec

FAMILY = "elementwise"


def shape_of(config: Mapping[str, Any]) -> tuple[int, ...]:
    """The event shape stored as ``config["shape"]`` (a list of positive ints)."""
    value = config.get("shape")
    shape = tuple(value) if isinstance(value, (list, tuple)) else ()
    if not shape or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
        raise ConfigError(f"config['shape'] must be a non-empty list of positive ints, got {value!r}")
    return shape


def _check_shape(config: Mapping[str, Any]) -> None:
    shape_of(config)


# ----------------------------------------------------------------------------- affine

def affine_forward(spec: FlowSpec, x: Any, context: Any = None) -> Any:
    """z = x ⊙ exp(log_scale) + shift."""
    return x * anp.exp(spec.params["log_scale"]) + spec.params["shift"]


def affine_inverse(spec: FlowSpec, z: Any, context: Any = None) -> Any:
    return (z - spec.params["shift"]) * anp.exp(-spec.params["log_scale"])


def affine_init(config: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    shape = shape_of(config)
    return {"shift": rng.normal(0.0, 0.5, shape), "log_scale": rng.normal(0.0, 0.5, shape)}


register(Kind(
    name="elementwise_affine", family=FAMILY, forward=affine_forward, inverse=affine_inverse,
    event_shape=shape_of, init_params=affine_init, check_config=_check_shape, config_keys=frozenset({"shape"}), 
    summary="z = x·exp(log_scale) + shift, per entry",
))


# ----------------------------------------------------------------------------- sigmoid

def sigmoid_forward(spec: FlowSpec, x: Any, context: Any = None) -> Any:
    """z = 1 / (1 + exp(−x)), written to stay finite for large |x|."""
    return anp.exp(-anp.logaddexp(0.0, -x))  # accurate relative to σ(x) for x ≪ 0 (no 1 + tanh cancellation)


def sigmoid_inverse(spec: FlowSpec, z: Any, context: Any = None) -> Any:
    return anp.log(z) - anp.log1p(-z)


register(Kind(
    name="sigmoid", family=FAMILY, forward=sigmoid_forward, inverse=sigmoid_inverse,
    event_shape=shape_of, init_params=lambda config, rng: {}, check_config=_check_shape, config_keys=frozenset({"shape"}), 
    domain=REAL, codomain=UNIT_INTERVAL, summary="z = σ(x), maps the reals onto (0, 1)",
))


# ----------------------------------------------------------------------------- logit with α

def alpha_of(config: Mapping[str, Any]) -> float:
    alpha = config.get("alpha", 0.05)
    if not isinstance(alpha, (int, float)) or not 0.0 <= alpha < 0.5:
        raise ConfigError(f"config['alpha'] of the logit transform must lie in [0, 0.5), got {alpha!r}")
    return float(alpha)


def logit_forward(spec: FlowSpec, x: Any, context: Any = None) -> Any:
    """z = logit(α + (1 − 2α)·x) for x in (0, 1) (Residual Flows App. E; RealNVP Sec. 4.1)."""
    alpha = alpha_of(spec.config)
    y = alpha + (1.0 - 2.0 * alpha) * x
    return anp.log(y) - anp.log1p(-y)


def logit_inverse(spec: FlowSpec, z: Any, context: Any = None) -> Any:
    alpha = alpha_of(spec.config)
    return (sigmoid_forward(spec, z) - alpha) / (1.0 - 2.0 * alpha)


def _check_logit(config: Mapping[str, Any]) -> None:
    shape_of(config)
    alpha_of(config)


def logit_codomain(config: Mapping[str, Any]) -> Domain:
    """(logit α, logit(1 − α)), the image of (0, 1); the reals for α = 0. A z outside it has no
    preimage in (0, 1): the inverse formula would return an x outside the domain."""
    alpha = alpha_of(config)
    if alpha == 0.0:
        return REAL
    bound = float(np.log1p(-alpha) - np.log(alpha))
    return Domain(f"(logit {alpha:g}, logit(1 − {alpha:g})) = ({-bound:.6g}, {bound:.6g})", -bound, bound)


register(Kind(
    name="logit", family=FAMILY, forward=logit_forward, inverse=logit_inverse,
    event_shape=shape_of, init_params=lambda config, rng: {}, check_config=_check_logit,
    config_keys=frozenset({"shape", "alpha"}),
    domain=UNIT_INTERVAL, codomain=REAL, codomain_fn=logit_codomain,
    summary="z = logit(α + (1−2α)x), maps dequantized data in (0, 1) onto the reals",
))
