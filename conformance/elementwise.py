"""Spec strategies for the elementwise kinds (affine, sigmoid, logit)."""
from __future__ import annotations

from hypothesis import strategies as st

from .strategies import config, from_configs, register_specs, sizes

SHAPES = st.one_of(st.lists(sizes(1, 6), min_size=1, max_size=1), st.lists(sizes(1, 3), min_size=3, max_size=3))


@register_specs("elementwise_affine")
def _affine():
    return from_configs("elementwise_affine", config(shape=SHAPES))


# σ saturates: beyond |x| ≈ 3 a float32 z no longer determines x to the round-trip tolerance.
@register_specs("sigmoid", large=(0.3, 1.0, 3.0))
def _sigmoid():
    return from_configs("sigmoid", config(shape=SHAPES))


@register_specs("logit")
def _logit():
    return from_configs("logit", config(shape=SHAPES, alpha=st.sampled_from([0.0, 1e-6, 0.05])))
