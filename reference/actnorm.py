"""ActNorm (Glow, Kingma & Dhariwal 2018, Sec. 3.1 and Table 1): a per-channel affine map.

Events have shape ``config["shape"] = (C, *spatial)``: vectors ``(D,)`` (every entry is a channel,
C = D) and images ``(C, H, W)``. With ``bias`` and ``log_scale`` of shape ``(C,)``,

    z[c, …] = (x[c, …] + bias[c]) · exp(log_scale[c]),    log|det ∂z/∂x| = S · Σ_c log_scale[c],

where S = ∏ spatial is the number of positions per channel (S = H·W for images, 1 for vectors;
the Glow table's ``h·w·sum(log|s|)``).

Canonical params: ``bias`` (C,), ``log_scale`` (C,) and ``initialized`` (shape (), 1.0 once the
data-dependent initialisation has set the other two; it does not enter the map, it only tells an
implementation not to initialise again).

Data-dependent initialisation (:func:`actnorm_init`): over the batch and the spatial positions,
each channel's n values get mean m and standard deviation s (divisor n); then ``bias = −m`` and
``log_scale = −log s``, so that z has per-channel mean 0 and variance 1 on that batch.
A channel whose values are all equal (a constant channel, or any channel of a batch of one vector)
has no spread to normalise: it is only centred (``bias`` = −its value, ``log_scale`` = 0). s is
floored at the smallest normal number of the dtype, which keeps ``log_scale`` and exp(log_scale)
finite for any non-constant channel.
"""
from __future__ import annotations

from typing import Any, Mapping

import autograd.numpy as anp
import numpy as np

from flowspec.errors import FlowInputError
from flowspec.registry import Kind, register
from flowspec.spec import FlowSpec

from .core import check_input
from .elementwise import shape_of

FAMILY = "actnorm"
KIND = "actnorm"


def _per_channel(values: Any, ndim: int) -> Any:
    """``(C,)`` values shaped to broadcast over an event ``(C, *spatial)``."""
    return anp.reshape(values, (-1,) + (1,) * (ndim - 1))


def actnorm_forward(spec: FlowSpec, x: Any, context: Any = None) -> Any:
    """z = (x + bias) · exp(log_scale), per channel (Glow Table 1, actnorm)."""
    ndim = anp.ndim(x)
    return (x + _per_channel(spec.params["bias"], ndim)) * anp.exp(_per_channel(spec.params["log_scale"], ndim))


def actnorm_inverse(spec: FlowSpec, z: Any, context: Any = None) -> Any:
    """x = z · exp(−log_scale) − bias."""
    ndim = anp.ndim(z)
    return z * anp.exp(-_per_channel(spec.params["log_scale"], ndim)) - _per_channel(spec.params["bias"], ndim)


def actnorm_params(config: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Generic parameters (random bias and log-scale), marked as initialised."""
    channels = shape_of(config)[0]
    return {
        "bias": rng.normal(0.0, 0.5, channels),
        "log_scale": rng.normal(0.0, 0.5, channels),
        "initialized": np.array(1.0),
    }


def actnorm_init(x: Any, config: Mapping[str, Any], *, ddof: int = 0, epsilon: float = 0.0) -> dict[str, np.ndarray]:
    """The data-dependent parameters for the batch ``x`` of shape ``(batch, C, *spatial)``.

    See the module docstring for the rule (mean and divisor-n standard deviation per channel over
    batch and positions; constant channels only centred; s floored at float64's smallest normal).
    ``ddof = 1`` gives the divisor n − 1 instead (the unbiased standard deviation) and ``epsilon > 0``
    divides by std + epsilon with no special case for constant channels (Glow's reference code):
    conventions some libraries follow, which the conformance suite compares by only where they
    declare them.
    """
    shape = shape_of(config)
    arr = check_input(FlowSpec(KIND, config), x)
    if arr.shape[0] == 0:
        raise FlowInputError("the data-dependent initialisation of actnorm needs at least one sample")
    values = np.moveaxis(arr, 1, 0).reshape(shape[0], -1)
    constant = values.max(axis=1) == values.min(axis=1)
    if epsilon > 0.0:
        constant = np.zeros_like(constant)
    std = np.maximum(values.std(axis=1, ddof=ddof) + epsilon, np.finfo(np.float64).tiny)
    return {
        "bias": np.where(constant, -values[:, 0], -values.mean(axis=1)),
        "log_scale": np.where(constant, 0.0, -np.log(std)),
        "initialized": np.array(1.0),
    }


register(Kind(
    name=KIND, family=FAMILY, forward=actnorm_forward, inverse=actnorm_inverse,
    event_shape=shape_of, init_params=actnorm_params, check_config=shape_of, config_keys=frozenset({"shape"}), 
    summary="z = (x + bias)·exp(log_scale) per channel, with data-dependent initialisation",
    extras={"init": actnorm_init, "invalid_params": (
        ("the initialised flag 0.5", "initialized", lambda params: {"initialized": np.array(0.5)}),
        ("the initialised flag as a vector [1]", "initialized", lambda params: {"initialized": np.array([1.0])}),
    )},
))
