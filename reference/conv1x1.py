"""Invertible 1×1 convolutions (Glow, Kingma & Dhariwal 2018, Sec. 3.2 and Table 1; the lecture
slides' "Glow: 1x1 convolutions"): ``conv1x1`` and its LU-parameterised form ``conv1x1_lu``.

Images ``(C, H, W)`` (config ``channels``, ``height``, ``width``); every pixel's channel vector is
multiplied by the same invertible C×C matrix W:

    z[:, h, w] = W · x[:, h, w],    log|det ∂z/∂x| = H·W · log|det W|.

``conv1x1``: canonical param ``weight`` = W (C, C), any invertible matrix (det W may be negative:
log|det W| is the log-modulus of ``slogdet``, never a log of the signed determinant).

``conv1x1_lu``: W = P · L · (U + diag(sign_s · exp(log_s))) with canonical params ``P`` (a fixed
C×C permutation matrix), ``lower`` (C, C; its strictly lower triangle gives L, whose diagonal is 1),
``upper`` (C, C; its strictly upper triangle gives U), ``log_s`` (C,) and ``sign_s`` (C,, each ±1,
fixed). Entries outside the triangles are ignored. Since |det P| = det L = 1,
log|det ∂z/∂x| = H·W · Σ log_s. ``P`` and ``sign_s`` are constants of the flow (not trained).
"""
from __future__ import annotations

from typing import Any, Mapping

import autograd.numpy as anp
import numpy as np
from autograd.tracer import getval

from flowspec.errors import ConfigError
from flowspec.registry import Kind, register
from flowspec.spec import FlowSpec

from .squeeze import image_shape

FAMILY = "conv1x1"


def _mix(weight: Any, x: Any) -> Any:
    """Apply the channel matrix at every pixel: ``Σ_j weight[i, j] · x[j, h, w]``."""
    return anp.tensordot(weight, x, axes=([1], [0]))


def _unmix(weight: np.ndarray, z: np.ndarray) -> np.ndarray:
    c = weight.shape[0]
    return np.linalg.solve(weight, np.reshape(z, (c, -1))).reshape(np.shape(z))


def _rotation(c: int, rng: np.random.Generator) -> np.ndarray:
    """A random orthogonal C×C matrix (QR of a Gaussian matrix, signs fixed by R's diagonal)."""
    q, r = np.linalg.qr(rng.standard_normal((c, c)))
    return q * np.sign(np.diag(r))


# ----------------------------------------------------------------------------- full weight

def conv1x1_forward(spec: FlowSpec, x: Any, context: Any = None) -> Any:
    """z[:, h, w] = W · x[:, h, w] (Glow Sec. 3.2)."""
    return _mix(spec.params["weight"], x)


def conv1x1_inverse(spec: FlowSpec, z: Any, context: Any = None) -> Any:
    """x[:, h, w] = W⁻¹ · z[:, h, w], by a linear solve."""
    return _unmix(np.asarray(spec.params["weight"]), z)


def conv1x1_params(config: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """W = Q₁ · diag(s) · Q₂ with random orthogonal Q and s in [0.5, 2] (condition number ≤ 4),
    its first row negated where needed so that det W < 0: the case where a log of the signed
    determinant is NaN. (The suite's strategies draw both signs.)"""
    c = image_shape(config)[0]
    weight = _rotation(c, rng) @ np.diag(rng.uniform(0.5, 2.0, c)) @ _rotation(c, rng)
    if np.linalg.det(weight) > 0:
        weight[0] = -weight[0]
    return {"weight": weight}


def _singular(params: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """The weight with its last row replaced by its first (zeroed for C = 1): det W = 0."""
    w = np.array(params["weight"], dtype=np.float64)
    w[-1] = w[0] if w.shape[0] > 1 else 0.0
    return {"weight": w}


def _row_of_two_ones(params: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """P with its first row the sum of its first two and its second row zero: every column still
    sums to 1, the rows do not (None for C = 1)."""
    p = np.array(params["P"], dtype=np.float64)
    if p.shape[0] < 2:
        return None
    p[0], p[1] = p[0] + p[1], 0.0
    return {"P": p}


def _sign_of(value: float):
    """An ``invalid_params`` maker: ``sign_s`` with its first entry ``value`` (not ±1)."""
    def make(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sign = np.array(params["sign_s"], dtype=np.float64)
        sign[0] = value
        return {"sign_s": sign}
    return make


CONSTRUCTED_LOG_ABS_DET = 0.0
"""The log|det| of a constructed 1×1 convolution: Glow (Sec. 3.2) initialises W as a random rotation,
"having a log-determinant of 0" (the LU form factorises that rotation)."""


register(Kind(
    name="conv1x1", family=FAMILY, forward=conv1x1_forward, inverse=conv1x1_inverse,
    event_shape=image_shape, init_params=conv1x1_params, check_config=image_shape,
    config_keys=frozenset({"channels", "height", "width"}),
    summary="invertible 1×1 convolution with a full C×C weight, log|det| = H·W·log|det W|",
    extras={"invalid_params": (("a singular weight", "weight", _singular),),
            "constructed_log_abs_det": CONSTRUCTED_LOG_ABS_DET},
))


# ----------------------------------------------------------------------------- LU form

def check_lu_constants(perm_matrix: np.ndarray, sign_s: np.ndarray) -> None:
    """Raise :class:`ConfigError` unless ``P`` is a permutation matrix and ``sign_s`` holds only ±1."""
    p, sign = np.asarray(perm_matrix), np.asarray(sign_s)
    c = sign.shape[0]
    if p.shape != (c, c) or not (np.isin(p, (0.0, 1.0)).all() and (p.sum(0) == 1).all() and (p.sum(1) == 1).all()):
        raise ConfigError(f"param 'P' of conv1x1_lu must be a {c}×{c} permutation matrix, got {p.tolist()}")
    if not np.isin(sign, (-1.0, 1.0)).all():
        raise ConfigError(f"param 'sign_s' of conv1x1_lu must hold only −1 and +1, got {sign.tolist()}")


def lu_weight(params: Mapping[str, Any]) -> Any:
    """W = P · L · (U + diag(sign_s · exp(log_s))) from the canonical params (Glow Sec. 3.2)."""
    check_lu_constants(getval(params["P"]), getval(params["sign_s"]))
    c = np.shape(params["log_s"])[0]
    lower = anp.tril(params["lower"], -1) + np.eye(c)
    upper = anp.triu(params["upper"], 1) + anp.diag(params["sign_s"] * anp.exp(params["log_s"]))
    return anp.dot(params["P"], anp.dot(lower, upper))


def conv1x1_lu_forward(spec: FlowSpec, x: Any, context: Any = None) -> Any:
    """z[:, h, w] = W · x[:, h, w] with W from :func:`lu_weight`."""
    return _mix(lu_weight(spec.params), x)


def conv1x1_lu_inverse(spec: FlowSpec, z: Any, context: Any = None) -> Any:
    """x[:, h, w] = W⁻¹ · z[:, h, w], by a linear solve with the assembled W."""
    return _unmix(np.asarray(lu_weight(spec.params)), z)


def conv1x1_lu_params(config: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A random P, strict triangles and log_s from N(0, 0.5²), random signs."""
    c = image_shape(config)[0]
    return {
        "P": np.eye(c)[rng.permutation(c)],
        "lower": np.tril(rng.normal(0.0, 0.5, (c, c)), -1),
        "upper": np.triu(rng.normal(0.0, 0.5, (c, c)), 1),
        "log_s": rng.normal(0.0, 0.5, c),
        "sign_s": rng.choice([-1.0, 1.0], c),
    }


register(Kind(
    name="conv1x1_lu", family=FAMILY, forward=conv1x1_lu_forward, inverse=conv1x1_lu_inverse,
    event_shape=image_shape, init_params=conv1x1_lu_params, check_config=image_shape,
    config_keys=frozenset({"channels", "height", "width"}),
    summary="LU-parameterised invertible 1×1 convolution, log|det| = H·W·Σ log_s",
    extras={"invalid_params": (("P with a row of two ones (columns still sum to 1)", "P", _row_of_two_ones),
                               ("sign_s with an entry 0.5", "sign_s", _sign_of(0.5)),
                               ("sign_s with an entry −2 (a scale folded into the sign)", "sign_s", _sign_of(-2.0))),
            "constructed_log_abs_det": CONSTRUCTED_LOG_ABS_DET},
))
