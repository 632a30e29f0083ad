"""Lipschitz building blocks of the reference: activations with |φ′| ≤ 1 and the constraint norms.

Activations (autograd-NumPy, elementwise; Residual Flows Sec. 3.3):

* ``lipswish``: φ(z) = z·σ(βz) / 1.1 with β = softplus(β_raw) > 0 (eq. 10). With u = βz,
  Swish′ = σ(u)·(1 + u·(1 − σ(u))) depends on u only, so sup_z |φ′(z)| is the same number for every
  β: :func:`lipswish_derivative_sup` = 1.0998…/1.1 < 1 (the 1/1.1 factor is what makes it ≤ 1).
* ``elu`` (φ′ = 1 for z > 0, eᶻ otherwise), ``softplus`` (φ′ = σ) and ``identity``.

Constraint norms: a weight of a layer mapping the ``p``-normed space to the ``q``-normed space is
constrained in ‖·‖_{p→q} (App. D, eq. 17); :func:`constraint_norm` computes it exactly (linear layers
with a closed form, convolutions' operator norm at the input size by SVD of the explicit operator)
or brackets it, see :mod:`flowspec.reference.norms`.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

import autograd.numpy as anp
import numpy as np
from scipy.optimize import minimize_scalar

from flowspec.errors import ConfigError

from .norms import conv_matrix, induced_norm_bracket

ACTIVATIONS = ("lipswish", "elu", "softplus", "identity")
LIPSWISH_DIVISOR = 1.1


def _check_activation(name: str) -> None:
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")


def has_beta(name: str) -> bool:
    """Whether the activation carries a learnable β (only LipSwish)."""
    _check_activation(name)
    return name == "lipswish"


def softplus(z: Any) -> Any:
    """log(1 + eᶻ), finite for any z."""
    return anp.logaddexp(0.0, z)


TANH_CLIP = 40.0


def tanh(z: Any) -> Any:
    """tanh(z) with every derivative finite: the argument is clipped to ±40, which changes no float64
    value (tanh is ±1 to the last bit beyond |z| ≈ 19.1) and no derivative by more than 4e^−80.
    Unclipped, autograd's tanh′ = 1/cosh²(z) overflows beyond |z| ≈ 355, and second derivatives (the
    gradient of a log-det) are NaN there."""
    return anp.tanh(anp.clip(z, -TANH_CLIP, TANH_CLIP))


def sigmoid(z: Any) -> Any:
    """1 / (1 + e⁻ᶻ), written with tanh to stay finite for large |z|."""
    return 0.5 * (anp.tanh(0.5 * z) + 1.0)


def activation(name: str, z: Any, beta_raw: Any = None) -> Any:
    """φ(z) for ``name`` in :data:`ACTIVATIONS`; ``beta_raw`` is LipSwish's pre-softplus β."""
    _check_activation(name)
    if name == "lipswish":
        return z * sigmoid(softplus(beta_raw) * z) / LIPSWISH_DIVISOR
    if name == "elu":
        return anp.where(z > 0, z, anp.expm1(anp.minimum(z, 0.0)))
    if name == "softplus":
        return softplus(z)
    return z


def activation_derivative(name: str, z: Any, beta_raw: Any = None) -> Any:
    """φ′(z) in closed form (LipSwish: [σ(βz) + βz·σ(βz)(1 − σ(βz))] / 1.1)."""
    _check_activation(name)
    if name == "lipswish":
        u = softplus(beta_raw) * z
        s = sigmoid(u)
        return (s + u * s * (1.0 - s)) / LIPSWISH_DIVISOR
    if name == "elu":
        return anp.where(z > 0, 1.0, anp.exp(anp.minimum(z, 0.0)))
    if name == "softplus":
        return sigmoid(z)
    return anp.ones_like(z)


@lru_cache(maxsize=None)
def lipswish_derivative_sup() -> float:
    """sup_z |LipSwish′(z)| (the same for every β > 0): max over u of |σ(u)(1 + u(1 − σ(u)))| / 1.1.

    The maximum of Swish′ is at u ≈ 2.40 (value ≈ 1.0998) and its minimum at u ≈ −2.40 (≈ −0.0998),
    so the supremum of the absolute value is the maximum, found here to machine precision.
    """
    def negative(u: float) -> float:
        s = float(sigmoid(u))
        return -s * (1.0 + u * (1.0 - s))

    best = minimize_scalar(negative, bracket=(1.0, 2.4, 4.0), tol=1e-12)
    return float(-best.fun) / LIPSWISH_DIVISOR


# ----------------------------------------------------------------------------- constraint norms

def operator_matrix(weight: np.ndarray, in_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """The matrix of a layer's linear map: the weight itself for a linear layer ``(out, in)``, the
    explicit convolution operator at ``in_shape = (C_in, H, W)`` for a kernel ``(out, in, k, k)``."""
    weight = np.asarray(weight, dtype=np.float64)
    if weight.ndim == 2:
        return weight
    if weight.ndim == 4 and in_shape is not None:
        return conv_matrix(weight, tuple(in_shape))
    raise ConfigError(f"a constraint needs a matrix or a conv kernel with its input shape, got {weight.shape}")


def constraint_norm(weight: np.ndarray, p: float = 2.0, q: float = 2.0, in_shape: tuple[int, ...] | None = None) -> tuple[float, float]:
    """``(lower, upper)`` of the layer's norm ‖W‖_{p→q} (equal where it is known exactly).

    Exact for p = q = 2 (SVD; for a convolution, of the operator at ``in_shape``: never the reshaped
    kernel, whose norm is a different and possibly smaller number), for p = 1 and q = ∞ (closed
    forms) and for p = ∞ with few columns; bracketed otherwise.
    """
    return induced_norm_bracket(operator_matrix(weight, in_shape), p, q)


def jacobian_norm(jac: np.ndarray, p: float) -> tuple[float, float]:
    """``(lower, upper)`` of ‖J‖_{p→p} for a Jacobian of a map from the p-normed space to itself."""
    return induced_norm_bracket(np.asarray(jac, dtype=np.float64), p, p)
