"""Multi-scale composition with factored-out latents (RealNVP Sec. 3.6; Glow; Residual Flows App. E).

A ``multiscale`` spec nests levels ``"0"``, ``"1"``, …, ``"L-1"`` (any flows on image events).
Level ``i`` maps the current tensor ``h`` of shape ``(C, H, W)`` to ``h'``; for every level but the
last, the **first** half of the channels of ``h'`` is factored out as latent ``z_i`` and the second
half is passed on to level ``i + 1``. The latent is the flat vector

    z = concat(flat(z_0), flat(z_1), …, flat(z_{L-2}), flat(h'_{L-1}))

(C-order flattening), so ``latent_shape`` is ``(D,)`` with D the input size, and
``log|det|`` is the sum of the levels' (the split is a permutation). :func:`multiscale_spec`
checks that the shapes chain and fills in the config.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import autograd.numpy as anp
import numpy as np

from flowspec import registry
from flowspec.errors import ConfigError
from flowspec.registry import Kind, register
from flowspec.spec import FlowSpec

from .core import forward_one
from .solve import inverse_one

FAMILY = "multiscale"


def level_shapes(levels: Sequence[FlowSpec]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(input shape, output shape) of every level, checking that each level's input is the previous
    level's output with half its channels."""
    shapes = []
    for i, level in enumerate(levels):
        kind = registry.get(level.kind)
        shape_in, shape_out = tuple(kind.event_shape(level.config)), kind.output_shape(level.config)
        if len(shape_out) != 3:
            raise ConfigError(f"multi-scale level {i} must output images (C, H, W), got {shape_out}")
        if i < len(levels) - 1 and shape_out[0] % 2:
            raise ConfigError(f"multi-scale level {i} outputs {shape_out[0]} channels; a split needs an even number")
        if shapes:
            prev = shapes[-1][1]
            expected = (prev[0] // 2,) + prev[1:]
            if shape_in != expected:
                raise ConfigError(f"multi-scale level {i} takes {shape_in}, but level {i - 1} passes on {expected}")
        shapes.append((shape_in, shape_out))
    return shapes


def multiscale_spec(levels: Sequence[FlowSpec]) -> FlowSpec:
    """Compose ``levels`` with a half-channel split after each level but the last."""
    if not levels:
        raise ConfigError("a multi-scale flow needs at least one level")
    shapes = level_shapes(levels)
    size = int(np.prod(shapes[0][0]))
    config = {"event_shape": list(shapes[0][0]), "levels": len(levels), "size": size}
    return FlowSpec("multiscale", config, {str(i): level for i, level in enumerate(levels)})


def _levels(spec: FlowSpec) -> list[FlowSpec]:
    return [spec.params[str(i)] for i in range(spec.config["levels"])]


def multiscale_forward(spec: FlowSpec, x: Any, context: Any = None) -> Any:
    levels = _levels(spec)
    latents, h = [], x
    for i, level in enumerate(levels):
        h = forward_one(level, h, None)
        if i < len(levels) - 1:
            half = anp.shape(h)[0] // 2
            latents.append(anp.reshape(h[:half], (-1,)))
            h = h[half:]
    return anp.concatenate(latents + [anp.reshape(h, (-1,))])


def multiscale_inverse(spec: FlowSpec, z: Any, context: Any = None) -> Any:
    levels = _levels(spec)
    shapes = level_shapes(levels)
    pieces, start = [], 0
    for i, (_, shape_out) in enumerate(shapes):
        factored = (shape_out[0] // 2,) + shape_out[1:] if i < len(levels) - 1 else shape_out
        n = int(np.prod(factored))
        pieces.append(np.reshape(z[start:start + n], factored))
        start += n
    h = pieces[-1]
    for i in range(len(levels) - 1, -1, -1):
        if i < len(levels) - 1:
            h = np.concatenate([pieces[i], h])
        h = inverse_one(levels[i], h, None)
    return h


def _no_params(config: Mapping[str, Any], rng: np.random.Generator) -> dict:
    raise ConfigError("multi-scale flows take their levels' params; build them with multiscale_spec()")


def _event(config: Mapping[str, Any]) -> tuple[int, ...]:
    if "event_shape" not in config:
        raise ConfigError("a multiscale spec needs config['event_shape']; build it with multiscale_spec()")
    return tuple(config["event_shape"])


register(Kind(
    name="multiscale", family=FAMILY, forward=multiscale_forward, inverse=multiscale_inverse,
    event_shape=_event, latent_shape=lambda config: (int(config["size"]),), init_params=_no_params,
    composite=True, summary="levels with half the channels factored out after each; flat latent",
))
