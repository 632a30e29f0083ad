"""Spec strategies for the invertible 1×1 convolutions.

Axes: the image sizes of :mod:`.squeeze` (``channels``, ``height``, ``width``); ``det_sign``, the
sign of det W, so that every run checks log|det W| where det W < 0 (where a log of the signed
determinant is NaN); and the weight's ``regime``:

* ``init``: the reference's generic weight (condition number ≤ 4; for ``conv1x1_lu`` random
  triangles and log_s ~ N(0, 0.5²));
* ``near_singular``: W = Q₁·diag(σ)·Q₂ with singular values spaced geometrically from 1 down to
  1/κ, κ uniform in [30, 90]: near, but below, the float32 cap of 100 on the condition number
  (:data:`~.tolerances.MAX_CONDITION`; the Jacobian is W at every pixel, so its condition number
  is κ(W) and the conditioned tolerances scale with it);
* ``scaled``: the generic weight times e^±[3, 5] (log|det| of order ±H·W·C·5).

``conv1x1_lu`` takes the LU factorisation with partial pivoting of the same W
(W = P·L·(U + diag(sign_s·exp(log_s)))) where the regime is not ``init``.
"""
from __future__ import annotations

import numpy as np
import scipy.linalg
from hypothesis import strategies as st

from flowspec.spec import FlowSpec

from .covering import axis, declare_axes, salt
from .seeding import rng
from .squeeze import IMAGE_AXES, IMAGE_CONFIGS
from .strategies import SEEDS, from_configs, register_specs

DET_SIGNS = (-1.0, 1.0)
REGIMES = ("init", "near_singular", "scaled")
NEAR_SINGULAR = (30.0, 90.0)  # κ(W), below MAX_CONDITION["float32"] = 100
SCALE = (3.0, 5.0)  # |log| of the scaled regime's factor
KINDS = ("conv1x1", "conv1x1_lu")


def _rotation(c: int, gen: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(gen.standard_normal((c, c)))
    return q * np.sign(np.diag(r))


def weight_in_regime(weight: np.ndarray, regime: str, sign: float, gen: np.random.Generator) -> np.ndarray:
    """A weight of ``regime`` (module docstring) from the generic ``weight``, its first row negated
    where needed to give det W the sign ``sign``."""
    c = weight.shape[0]
    if regime == "near_singular":
        sigma = np.geomspace(1.0, 1.0 / gen.uniform(*NEAR_SINGULAR), c)
        weight = _rotation(c, gen) @ np.diag(sigma) @ _rotation(c, gen)
    elif regime == "scaled":
        weight = weight * np.exp(gen.choice([-1.0, 1.0]) * gen.uniform(*SCALE))
    weight = np.array(weight)
    if np.sign(np.linalg.det(weight)) != sign:
        weight[0] = -weight[0]
    return weight


def lu_params(weight: np.ndarray) -> dict[str, np.ndarray]:
    """The ``conv1x1_lu`` params of ``weight``: W = P·L·U by partial pivoting, U's diagonal as
    sign_s·exp(log_s)."""
    perm, lower, upper = scipy.linalg.lu(weight)
    diag = np.diag(upper)
    return {"P": perm, "lower": np.tril(lower, -1), "upper": np.triu(upper, 1), "log_s": np.log(np.abs(diag)),
            "sign_s": np.sign(diag)}


def _lu_weight(params: dict) -> np.ndarray:
    c = params["log_s"].shape[0]
    upper = np.triu(params["upper"], 1) + np.diag(params["sign_s"] * np.exp(params["log_s"]))
    return params["P"] @ (np.tril(params["lower"], -1) + np.eye(c)) @ upper


def _in_regime(spec: FlowSpec, regime: str, sign: float, seed: int) -> FlowSpec:
    gen = rng("conv1x1 regime", salt(), seed)
    if spec.kind == "conv1x1":
        return FlowSpec(spec.kind, spec.config, {"weight": weight_in_regime(spec.params["weight"], regime, sign, gen)})
    params = dict(spec.params)
    if regime != "init":
        params = lu_params(weight_in_regime(_lu_weight(params), regime, sign, gen))
    elif np.sign(np.linalg.det(_lu_weight(params))) != sign:
        params["sign_s"] = params["sign_s"] * np.where(np.arange(len(params["sign_s"])) == 0, -1.0, 1.0)
    return FlowSpec(spec.kind, spec.config, params)


def _specs(kind: str) -> st.SearchStrategy:
    return st.builds(_in_regime, from_configs(kind, IMAGE_CONFIGS), axis("regime", REGIMES),
                     axis("det_sign", DET_SIGNS), SEEDS)


@register_specs("conv1x1")
def _conv1x1():
    return _specs("conv1x1")


@register_specs("conv1x1_lu")
def _conv1x1_lu():
    return _specs("conv1x1_lu")


declare_axes(KINDS, **IMAGE_AXES, regime=REGIMES, det_sign=DET_SIGNS)
