"""Fixed channel permutations: ``reverse_permutation`` and ``permutation``.

Events have shape ``config["shape"] = (C, *spatial)`` (vectors ``(D,)``, images ``(C, H, W)``);
the permutation acts on the leading (channel) axis and moves whole channels. With ``perm`` a
permutation of 0..C−1,

    z[k, …] = x[perm[k], …],    x[perm[k], …] = z[k, …],    log|det ∂z/∂x| = 0,

``reverse_permutation`` uses perm = (C−1, …, 0) (NICE/RealNVP's channel reversal, survey Sec. 6.3),
``permutation`` takes ``config["perm"]``. Neither has params.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from flowspec.errors import ConfigError
from flowspec.registry import Kind, register
from flowspec.spec import FlowSpec

from .elementwise import shape_of

FAMILY = "permutation"


def perm_of(config: Mapping[str, Any]) -> tuple[int, ...]:
    """``config["perm"]``, checked to be a permutation of the ``C`` channels of ``config["shape"]``."""
    channels = shape_of(config)[0]
    perm = config.get("perm")
    entries = tuple(perm) if isinstance(perm, (list, tuple)) else None
    if (
        entries is None
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in entries)
        or sorted(entries) != list(range(channels))
    ):
        raise ConfigError(
            f"config['perm'] must be a permutation of 0..{channels - 1} (the {channels} channels of "
            f"shape {shape_of(config)}), got {perm!r}"
        )
    return entries


def _permute(x: Any, perm: Any) -> Any:
    return x[np.asarray(perm, dtype=np.intp)]


def reverse_forward(spec: FlowSpec, x: Any, context: Any = None) -> Any:
    """z[k] = x[C−1−k] along the channel axis (its own inverse)."""
    return x[::-1]


def permutation_forward(spec: FlowSpec, x: Any, context: Any = None) -> Any:
    """z[k] = x[perm[k]] along the channel axis."""
    return _permute(x, perm_of(spec.config))


def permutation_inverse(spec: FlowSpec, z: Any, context: Any = None) -> Any:
    """x = z[argsort(perm)] along the channel axis."""
    return _permute(z, np.argsort(perm_of(spec.config)))


register(Kind(
    name="reverse_permutation", family=FAMILY, forward=reverse_forward, inverse=reverse_forward,
    event_shape=shape_of, init_params=lambda config, rng: {}, check_config=shape_of, config_keys=frozenset({"shape"}), 
    summary="reverses the order of the channels (leading axis)",
))

register(Kind(
    name="permutation", family=FAMILY, forward=permutation_forward, inverse=permutation_inverse,
    event_shape=shape_of, init_params=lambda config, rng: {}, check_config=perm_of,
    config_keys=frozenset({"shape", "perm"}),
    summary="z[k] = x[perm[k]] along the channel (leading) axis, perm fixed in the config",
))
