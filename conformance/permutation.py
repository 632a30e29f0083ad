"""Spec strategies for the channel permutations.

``perm`` has a drawn cycle type (axis ``cycles``): ``single``, one cycle through all C channels (no
fixed point, and for C ≥ 3 not its own inverse, so that an inverse that applies perm again is
caught); ``uniform``, any permutation; ``involution``, disjoint transpositions (its own inverse,
like the reversal). The ``permutation`` kind is drawn with C ≥ 3 channels: for C ≤ 2 every
permutation is the identity or the reversal, which ``reverse_permutation`` covers from C = 1.
Shapes are those of :mod:`.elementwise` (axes ``layout`` and sizes).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from hypothesis import strategies as st

from .covering import axis, declare_axes, salt
from .elementwise import CHANNEL_LAYOUTS, CHANNEL_SHAPES, event_shapes, shape_axes
from .seeding import rng
from .strategies import SEEDS, config, from_configs, register_specs

CYCLES = ("single", "uniform", "involution")
# (C,) or (C, H, W) with C ≥ 3 (module docstring).
AT_LEAST_THREE = dict(vector=(3, 6), channels=(3, 4), sides=(1, 3))


def _perm(channels: int, seed: int, cycles: str) -> list[int]:
    order = rng("perm", salt(), seed).permutation(channels)
    perm = np.arange(channels)
    if cycles == "uniform":
        perm = order
    elif cycles == "single":
        perm[order] = np.roll(order, -1)  # order[k] → order[k + 1]: one cycle through every channel
    else:
        pairs = order[: channels // 2 * 2].reshape(-1, 2)
        perm[pairs[:, 0]], perm[pairs[:, 1]] = pairs[:, 1], pairs[:, 0]
    return [int(i) for i in perm]


def permutation_configs(shape: Sequence[int]) -> st.SearchStrategy:
    """Configs ``{"shape": shape, "perm": ...}`` of the ``permutation`` kind (module docstring)."""
    return st.builds(lambda seed, cycles: {"shape": list(shape), "perm": _perm(shape[0], seed, cycles)},
                     SEEDS, axis("cycles", CYCLES))


@register_specs("reverse_permutation")
def _reverse():
    return from_configs("reverse_permutation", config(shape=CHANNEL_SHAPES))


@register_specs("permutation")
def _permutation():
    return from_configs("permutation", event_shapes(**AT_LEAST_THREE, layouts=CHANNEL_LAYOUTS).flatmap(permutation_configs))


declare_axes("reverse_permutation", **shape_axes(layouts=CHANNEL_LAYOUTS))
declare_axes("permutation", **shape_axes(**AT_LEAST_THREE, layouts=CHANNEL_LAYOUTS), cycles=CYCLES)
