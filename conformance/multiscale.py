"""Spec strategies for multi-scale composition: one to three levels with splits, each level an
elementwise affine map, followed by a 2×2 squeeze where the spatial size allows (as in RealNVP
and Glow: squeeze, then factor out half of the channels)."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from flowspec import reference
from flowspec.reference.multiscale import multiscale_spec
from flowspec.reference.sequential import sequential_spec

from .strategies import SEEDS, register_specs, sizes


def _level(shape: tuple[int, int, int], seed: int, squeeze: bool):
    affine = reference.init_spec("elementwise_affine", {"shape": list(shape)}, np.random.default_rng(seed))
    if not squeeze:
        return affine, shape
    c, h, w = shape
    return sequential_spec([affine, reference.init_spec("squeeze", {"channels": c, "height": h, "width": w},
                                                         np.random.default_rng(seed))]), (4 * c, h // 2, w // 2)


@st.composite
def _multiscale(draw) -> object:
    n_levels = draw(sizes(1, 3))
    shape = (2 ** (n_levels - 1) * draw(sizes(1, 2)), draw(st.sampled_from([1, 2, 4])), draw(st.sampled_from([1, 2, 4])))
    levels = []
    for _ in range(n_levels):
        can_squeeze = shape[1] % 2 == 0 and shape[2] % 2 == 0
        level, out = _level(shape, draw(SEEDS), can_squeeze and draw(st.booleans()))
        levels.append(level)
        shape = (out[0] // 2,) + out[1:]
    return multiscale_spec(levels)


@register_specs("multiscale")
def _multiscale_specs():
    return _multiscale()
