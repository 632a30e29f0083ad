"""Spec strategies for the invertible 1×1 convolutions.

``conv1x1`` weights are drawn with an explicit determinant sign, negative first, so that every run
checks log|det W| where det W < 0 (where a log of the signed determinant is NaN).
"""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from flowspec.spec import FlowSpec

from .squeeze import IMAGE_CONFIGS
from .strategies import from_configs, register_specs


def _with_det_sign(spec: FlowSpec, sign: float) -> FlowSpec:
    """``spec`` with the first row of its weight negated where needed to give det W the sign ``sign``."""
    weight = np.array(spec.params["weight"])
    if np.sign(np.linalg.det(weight)) != sign:
        weight[0] = -weight[0]
    return FlowSpec(spec.kind, spec.config, {"weight": weight})


@register_specs("conv1x1")
def _conv1x1():
    return st.builds(_with_det_sign, from_configs("conv1x1", IMAGE_CONFIGS), st.sampled_from([-1.0, 1.0]))


@register_specs("conv1x1_lu")
def _conv1x1_lu():
    return from_configs("conv1x1_lu", IMAGE_CONFIGS)
