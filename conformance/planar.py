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

Property ``planar_inverse_on_a_target_grid``: the inverse round-trips latents whose wᵀz lie on a
grid of 4001 points over both tails and the steep middle of g. Plain Newton cycles only at isolated
targets, which random latents almost never hit; a mutation run of ``accelerated/planar.py`` left
three mutants of the safeguarded solve alive until this property (``mutation/README.md``).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st

from flowspec.reference.planar import u_hat
from flowspec.spec import FlowSpec

from .covering import axis, declare_axes
from .property import CheckContext, prop
from .strategies import config, event_size, from_configs, register_specs, sizes
from .tolerances import relative_error

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


GRID_POINTS = 4001


def target_grid(spec: FlowSpec, points: int = GRID_POINTS) -> np.ndarray:
    """Latents z = t·w/‖w‖² (so wᵀz = t) with t on a uniform grid of ``points`` over
    ±3(|wᵀû| + |b| + 1): both tails of g(α) = α + wᵀû·tanh(α + b) and its steep middle."""
    w, b = spec.params["w"], float(spec.params["b"])
    m = float(w @ u_hat(spec.params["u"], w))
    reach = 3.0 * (abs(m) + abs(b) + 1.0)
    return np.linspace(-reach, reach, points)[:, None] * w / (w @ w)


@prop("planar_inverse_on_a_target_grid", requires=["inverse"], kinds=["planar"])
def planar_inverse_on_a_target_grid(ctx: CheckContext) -> None:
    """f(f⁻¹(z)) ≈ z for one batch of latents whose wᵀz lie on a fine grid (:func:`target_grid`).
    Plain Newton on the scalar equation along w cycles only at isolated targets of a steep g, which
    the few random latents of the other properties almost never hit; an inverse whose safeguard
    (bracket, halving rule) is missing fails to converge on some grid point."""
    spec = ctx.draw_spec()
    z = np.asarray(target_grid(spec), dtype=ctx.dtype).astype(np.float64)
    flow = ctx.instantiate(spec)
    x = ctx.adapter.inverse(flow, z, None)
    back, size = ctx.adapter.forward(flow, x, None)[0], event_size(spec)
    # the reference's Jacobians at 4001 points are this property's cost: their condition number is
    # computed only where the round trip misses at κ = 1 (a pass there passes at any κ ≥ 1)
    kappa = 1.0 if relative_error(back, z) <= ctx.tol("roundtrip", size) else ctx.condition(spec, x)
    ctx.assert_close(back, z, "roundtrip", size, "f(f⁻¹(z)) vs z on the target grid", kappa)
