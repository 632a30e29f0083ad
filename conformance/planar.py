"""Spec strategies for the planar flow.

The drawn parameters are moved so that wᵀu takes one of :data:`WU_VALUES`, two of them below −1:
there the raw u would make f non-invertible, and only the reparameterised û (wᵀû > −1) keeps it a
bijection, so implementations that skip or get the reparameterisation wrong are exposed.
"""
from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from flowspec.spec import FlowSpec

from .strategies import config, from_configs, register_specs, sizes

WU_VALUES = (-2.0, -1.2, 0.3, 2.0)


def with_wu(spec: FlowSpec, wu: float) -> FlowSpec:
    """``spec`` with u moved along w so that wᵀu = ``wu``."""
    u, w = spec.params["u"], spec.params["w"]
    return FlowSpec(spec.kind, spec.config, {**spec.params, "u": u + (wu - w @ u) * w / (w @ w)})


@st.composite
def _planar_specs(draw: Any) -> FlowSpec:
    spec = draw(from_configs("planar", config(shape=st.lists(sizes(1, 8), min_size=1, max_size=1))))
    return with_wu(spec, draw(st.sampled_from(WU_VALUES)))


@register_specs("planar")
def _planar():
    return _planar_specs()
