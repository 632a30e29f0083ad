"""Squeeze: 2×2 space-to-depth (RealNVP, Dinh et al. 2017, Sec. 3.6; used between the scales of
Residual Flows, App. E).

An image ``(C, H, W)`` with H and W even becomes ``(4C, H/2, W/2)``; the entry at offset (i, j)
∈ {0, 1}² of the 2×2 patch at (h, w) goes to channel 4c + 2i + j:

    z[4c + 2i + j, h, w] = x[c, 2h + i, 2w + j],    log|det ∂z/∂x| = 0.

So the four entries of channel c are consecutive channels of z, in row-major order of the patch:
(0, 0), (0, 1), (1, 0), (1, 1) (the order of torch's ``pixel_unshuffle``; RealNVP's figure arranges
the four sub-images differently, and any fixed order is a valid squeeze, so this one is part of the
spec). Config: ``channels``, ``height``, ``width``; no params.
:func:`image_shape` also checks the config of the other image kinds.
"""
from __future__ import annotations

from typing import Any, Mapping

import autograd.numpy as anp

from flowspec.errors import ConfigError
from flowspec.registry import Kind, register
from flowspec.spec import FlowSpec

FAMILY = "squeeze"


def image_shape(config: Mapping[str, Any]) -> tuple[int, int, int]:
    """``(channels, height, width)`` from the config, each a positive int."""
    shape = tuple(config.get(key) for key in ("channels", "height", "width"))
    if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
        raise ConfigError(
            f"config['channels'], ['height'] and ['width'] must be positive ints, got {shape!r}"
        )
    return shape


def squeezed_shape(config: Mapping[str, Any]) -> tuple[int, int, int]:
    """``(4C, H/2, W/2)``; raises :class:`ConfigError` naming the shape unless H and W are even."""
    c, h, w = image_shape(config)
    if h % 2 or w % 2:
        raise ConfigError(f"squeeze needs an even height and width, got image shape {(c, h, w)}")
    return 4 * c, h // 2, w // 2


def squeeze_forward(spec: FlowSpec, x: Any, context: Any = None) -> Any:
    """z[4c + 2i + j, h, w] = x[c, 2h + i, 2w + j]."""
    c, h, w = image_shape(spec.config)
    patches = anp.reshape(x, (c, h // 2, 2, w // 2, 2))  # [c, h, i, w, j]
    return anp.reshape(anp.transpose(patches, (0, 2, 4, 1, 3)), squeezed_shape(spec.config))


def squeeze_inverse(spec: FlowSpec, z: Any, context: Any = None) -> Any:
    """x[c, 2h + i, 2w + j] = z[4c + 2i + j, h, w]."""
    c, h, w = image_shape(spec.config)
    patches = anp.reshape(z, (c, 2, 2, h // 2, w // 2))  # [c, i, j, h, w]
    return anp.reshape(anp.transpose(patches, (0, 3, 1, 4, 2)), (c, h, w))


register(Kind(
    name="squeeze", family=FAMILY, forward=squeeze_forward, inverse=squeeze_inverse,
    event_shape=image_shape, latent_shape=squeezed_shape, init_params=lambda config, rng: {},
    check_config=squeezed_shape, config_keys=frozenset({"channels", "height", "width"}),
    summary="2×2 space-to-depth (C, H, W) → (4C, H/2, W/2), channel 4c + 2i + j",
))
