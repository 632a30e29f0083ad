"""Spec strategies for the planar flow.

Axes: the ``regime`` of wᵀu, the raw parameter whose reparameterisation wᵀû = softplus(wᵀu) − 1 > −1
keeps f invertible, then ``size`` (D = 1…8):

* ``init``: the reference's generic u and w (wᵀu of order ±1);
* ``reparam``: u moved along w so that wᵀu takes one of :data:`WU_VALUES` (axis ``wu``), two of
  them below −1, where the raw u would make f non-invertible and only the reparameterised û keeps it
  a bijection, so that implementations that skip or get the reparameterisation wrong are exposed;
* ``edge``: wᵀû just above the invertibility limit −1, 1 + wᵀû in :data:`EDGE_MARGINS` (axis
  ``margin``): g(α) = α + wᵀû·tanh(α + b) is nearly flat at α = −b and log(1 + wᵀû·tanh') takes the
  log of a small number. The Jacobian's condition number there is about 1/(1 + wᵀû·tanh'), which the
  conditioned tolerances know; points beyond the float32 cap are not compared. This regime takes
  D ≥ 2: for D = 1 the Jacobian is the scalar 1 + û·w·tanh', whose condition number is 1 although
  the reference's autograd value of it cancels (an error of ε/(1 + wᵀû·tanh') that no tolerance
  row would know);
* ``large``: wᵀu in :data:`LARGE_WU` (axis ``large_wu``), a steep g (slope up to 1 + wᵀû ≈ 23) whose
  inverse needs a safeguarded solve (plain Newton from wᵀz cycles there), up to softplus arguments
  above 20, where torch's thresholded ``softplus`` differs from the exact value.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st

from flowspec.spec import FlowSpec

from .covering import axis, declare_axes
from .strategies import config, from_configs, register_specs, sizes

REGIMES = ("init", "reparam", "edge", "large")
WU_VALUES = (-2.0, -1.2, 0.3, 2.0)
EDGE_MARGINS = (1e-3, 1e-2, 1e-1)
LARGE_WU = (6.0, 12.0, 22.0)


def with_wu(spec: FlowSpec, wu: float) -> FlowSpec:
    """``spec`` with u moved along w so that wᵀu = ``wu``."""
    u, w = spec.params["u"], spec.params["w"]
    return FlowSpec(spec.kind, spec.config, {**spec.params, "u": u + (wu - w @ u) * w / (w @ w)})


def wu_for_margin(margin: float) -> float:
    """The raw wᵀu with 1 + wᵀû = softplus(wᵀu) = ``margin``."""
    return float(np.log(np.expm1(margin)))


def _wu(draw: Any, regime: str) -> float | None:
    """The raw wᵀu of ``regime`` (None: keep the generic one)."""
    if regime == "reparam":
        return draw(axis("wu", WU_VALUES))
    if regime == "edge":
        return wu_for_margin(draw(axis("margin", EDGE_MARGINS)))
    if regime == "large":
        return draw(axis("large_wu", LARGE_WU))
    return None


@st.composite
def _planar_specs(draw: Any) -> FlowSpec:
    regime = draw(axis("regime", REGIMES))
    size = sizes(2 if regime == "edge" else 1, 8, name="size")  # D ≥ 2 at the edge (module docstring)
    spec = draw(from_configs("planar", config(shape=st.tuples(size).map(list))))
    wu = _wu(draw, regime)
    return spec if wu is None else with_wu(spec, wu)


@register_specs("planar")
def _planar():
    return _planar_specs()


declare_axes("planar", size=range(1, 9), regime=REGIMES, wu=WU_VALUES, margin=EDGE_MARGINS, large_wu=LARGE_WU)
