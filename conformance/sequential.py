"""Spec strategies for sequential composition: chains of vector kinds on one event shape, with
conditional children (coupling layers reading a context) so that the sequence's context is
exercised end to end.

Axes: ``size`` (D = 1…5), ``length`` (1, 2, 5 or 12 children: long enough for several conditional
children in one chain and for child names past "9", whose string order is not their numeric
order), one ``child`` kind per child (the kinds that act on D entries), the children's own config
axes (a coupling layer's mask, parity, conditioner size, …), and ``context_dim`` (0 or 2), drawn
only for chains that hold a coupling layer, the children that can read a context.
"""
from __future__ import annotations

from functools import partial
from typing import Any

from hypothesis import strategies as st

from flowspec import reference
from flowspec.reference.sequential import sequential_spec
from flowspec.spec import FlowSpec

from . import coupling
from .covering import axis, declare_axes, salt
from .permutation import permutation_configs
from .seeding import rng
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
CONDITIONAL = ("additive_coupling", "affine_coupling")
LENGTHS = (1, 2, 5, 12)
CONTEXT_DIMS = (0, 2)
SIZES = (1, 5)


@st.composite
def _chain(draw: Any) -> FlowSpec:
    d = draw(sizes(*SIZES, name="size"))
    eligible = [k for k in VECTOR_CHILDREN if k not in CHILD_CONFIGS or CHILD_CONFIGS[k]([d], 0) is not None]
    kinds = [draw(axis("child", eligible)) for _ in range(draw(axis("length", LENGTHS)))]
    context_dim = draw(axis("context_dim", CONTEXT_DIMS)) if set(kinds) & set(CONDITIONAL) else 0
    configs = [draw(CHILD_CONFIGS[k]([d], context_dim)) if k in CHILD_CONFIGS else {"shape": [d]} for k in kinds]
    seed = draw(SEEDS)
    children = [reference.init_spec(k, c, rng("child params", salt(), seed, i)) for i, (k, c) in enumerate(zip(kinds, configs))]
    return sequential_spec(children)


@register_specs("sequential")
def _sequential():
    return _chain()


declare_axes("sequential", size=range(SIZES[0], SIZES[1] + 1), length=LENGTHS, child=VECTOR_CHILDREN,
             context_dim=CONTEXT_DIMS)
