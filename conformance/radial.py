"""Spec strategies for the radial flow: vectors of D ≤ 8 entries (D = 1 included, where the
(D − 1) term of eq. 18 vanishes)."""
from __future__ import annotations

from hypothesis import strategies as st

from .strategies import config, from_configs, register_specs, sizes


@register_specs("radial")
def _radial():
    return from_configs("radial", config(shape=st.lists(sizes(1, 8), min_size=1, max_size=1)))
