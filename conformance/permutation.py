"""Spec strategies for the channel permutations.

``perm`` is drawn half of the time as a single cycle through all C channels (no fixed point, and
for C ≥ 3 not its own inverse, so that an inverse that applies perm again is caught) and half of
the time uniformly among all permutations. The ``permutation`` kind is drawn with C ≥ 3 channels:
for C ≤ 2 every permutation is the identity or the reversal, which ``reverse_permutation`` covers
from C = 1.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from hypothesis import strategies as st

from .elementwise import SHAPES
from .seeding import rng
from .strategies import SEEDS, config, from_configs, register_specs, sizes

# (C,) or (C, H, W) with C ≥ 3 (module docstring).
AT_LEAST_THREE_CHANNELS = st.one_of(
    st.lists(sizes(3, 6), min_size=1, max_size=1),
    st.tuples(sizes(3, 4), sizes(1, 3), sizes(1, 3)).map(list),
)


def _perm(channels: int, seed: int, cyclic: bool) -> list[int]:
    order = rng("perm", seed).permutation(channels)
    if not cyclic:
        return [int(i) for i in order]
    perm = np.empty(channels, dtype=int)
    perm[order] = np.roll(order, -1)  # order[k] → order[k + 1]: one cycle through every channel
    return [int(i) for i in perm]


def permutation_configs(shape: Sequence[int]) -> st.SearchStrategy:
    """Configs ``{"shape": shape, "perm": ...}`` of the ``permutation`` kind (module docstring)."""
    return st.builds(lambda seed, cyclic: {"shape": list(shape), "perm": _perm(shape[0], seed, cyclic)},
                     SEEDS, st.sampled_from([True, False]))


@register_specs("reverse_permutation")
def _reverse():
    return from_configs("reverse_permutation", config(shape=SHAPES))


@register_specs("permutation")
def _permutation():
    return from_configs("permutation", AT_LEAST_THREE_CHANNELS.flatmap(permutation_configs))
