"""Spec strategies for sequential composition: short chains of vector kinds on one event shape,
sometimes with conditional children (coupling layers reading a context) so that the sequence's
context is exercised end to end."""
from __future__ import annotations

from functools import partial

import numpy as np
from hypothesis import strategies as st

from flowspec import reference
from flowspec.reference.sequential import sequential_spec

from . import coupling
from .permutation import permutation_configs
from .strategies import SEEDS, register_specs, sizes

# Children that act on a vector of any size D (config {"shape": [D]}); families add theirs here.
VECTOR_CHILDREN: list[str] = [
    "elementwise_affine", "actnorm", "reverse_permutation", "permutation",
    "additive_coupling", "affine_coupling", "planar", "radial",
]
# Children whose config needs more than the shape: ``fn(shape [D], context_dim)`` gives a strategy
# of their configs, or None where the kind cannot act on that shape (a coupling layer needs D ≥ 2).
CHILD_CONFIGS = {
    "permutation": lambda shape, context_dim: permutation_configs(shape),
    "additive_coupling": partial(coupling.child_configs, affine=False),
    "affine_coupling": partial(coupling.child_configs, affine=True),
}


@st.composite
def _chain(draw) -> object:
    d, context_dim = draw(sizes(1, 5)), draw(st.sampled_from([0, 2]))
    eligible = [k for k in VECTOR_CHILDREN if k not in CHILD_CONFIGS or CHILD_CONFIGS[k]([d], 0) is not None]
    kinds = draw(st.lists(st.sampled_from(eligible), min_size=1, max_size=3))
    seeds = draw(st.lists(SEEDS, min_size=len(kinds), max_size=len(kinds)))
    configs = [draw(CHILD_CONFIGS[k]([d], context_dim)) if k in CHILD_CONFIGS else {"shape": [d]} for k in kinds]
    children = [reference.init_spec(k, c, np.random.default_rng(s)) for k, c, s in zip(kinds, configs, seeds)]
    return sequential_spec(children)


@register_specs("sequential")
def _sequential():
    return _chain()
