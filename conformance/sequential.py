"""Spec strategies for sequential composition: short chains of vector kinds on one event shape."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from flowspec import reference
from flowspec.reference.sequential import sequential_spec

from .strategies import SEEDS, register_specs, sizes

# Children that act on a vector of any size D (config {"shape": [D]}); families add theirs here.
VECTOR_CHILDREN: list[str] = ["elementwise_affine"]


@st.composite
def _chain(draw) -> object:
    d = draw(sizes(1, 5))
    kinds = draw(st.lists(st.sampled_from(VECTOR_CHILDREN), min_size=1, max_size=3))
    seeds = draw(st.lists(SEEDS, min_size=len(kinds), max_size=len(kinds)))
    children = [reference.init_spec(k, {"shape": [d]}, np.random.default_rng(s)) for k, s in zip(kinds, seeds)]
    return sequential_spec(children)


@register_specs("sequential")
def _sequential():
    return _chain()
