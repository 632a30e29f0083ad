"""Spec strategies for multi-scale composition: two or three levels of image flows with splits."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from flowspec import reference
from flowspec.reference.multiscale import multiscale_spec

from .strategies import SEEDS, register_specs, sizes


def _level(kind: str, shape: tuple[int, int, int], seed: int):
    return reference.init_spec(kind, {"shape": list(shape)}, np.random.default_rng(seed))


@st.composite
def _multiscale(draw) -> object:
    n_levels = draw(sizes(1, 3))
    channels = 2 ** (n_levels - 1) * draw(sizes(1, 2))
    height, width = draw(sizes(1, 3)), draw(sizes(1, 3))
    levels, shape = [], (channels, height, width)
    for _ in range(n_levels):
        levels.append(_level("elementwise_affine", shape, draw(SEEDS)))
        shape = (shape[0] // 2, height, width)
    return multiscale_spec(levels)


@register_specs("multiscale")
def _multiscale_specs():
    return _multiscale()


