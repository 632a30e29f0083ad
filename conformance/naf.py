"""Spec strategies and the family properties of the neural autoregressive flow ``naf`` (Huang et al.
2018, DSF, eq. (8); :mod:`flowspec.reference.naf`).

Axes (:mod:`.covering`): the MADE axes of :func:`.autoregressive.made_configs` (``dim``, ``order``,
``hidden``, ``activation``, ``context_dim``) and

* ``components``: K = 1 … 3 (K = 1: each layer is the affine map a·y + b);
* ``layers``: L = 1 or 2 (two stacked layers: the second reads the first's logit);
* ``min_slope``: 1e-3 (the default) or 0.1;
* ``regime`` of the MADE's last layer: ``init`` (the reference's generic weights); ``large``, the
  weight-logit rows ×4 (weights nearly one-hot, log w down to about −20, so the log-space sums
  matter) and the b rows ×2 (centres −b/a far from the origin), the raw-a rows unchanged;
  ``peaked``, the raw-a biases shifted by +4 (a ≈ 4 … 6: sharp sigmoids) with b unchanged, so the
  components' centres lie near the origin where the small inputs fall.

**Why the large regime leaves the slopes alone.** Scaling the raw-a rows too (every row ×4) spreads
the components' scales over four decades and separates them by many scales, and between two such
components the stack is nearly flat (ℓ′ down to 10⁻⁶ at drawn points: a plateau of F). There the
inverse is ill-conditioned as an *elementwise* solve, δx ≈ ε·|z|/ℓ′, which the generic inverse
properties' κ (the 2-norm condition of J, 1 for every 1 × 1 Jacobian) does not see: measured on
300 generic D = 1 specs, the float32 inverse then misses the inverse row at 10 of them (the thorough
profile found one), none with the regime above (smallest slope drawn 2.6·10⁻³).

The round trips' magnitudes are the generic 1, 10, 100; ``naf_inverse_far`` adds latents far in
both tails. Structure (forbidden entries exactly zero, no dead connections) comes from
:mod:`.structure` through the registry extras ``forbidden`` / ``required`` (MAF's); the log-det
against the reference and the bad configs (layers < 1, components < 1, min_slope ≤ 0) are the
generic ``logdet_matches_reference`` / ``logdet_matches_fd_jacobian`` and ``invalid_config_rejected``.

Family properties (the implementation is only called through the adapter, with its parameters set
to the spec's; the reference's map gives the expected values):

* ``naf_monotone``: per entry d, along a grid of x_d through the first layer's component centres
  (± up to 10³ of their scales) and out to ±10⁴, the other entries fixed: z_d never decreases (up
  to the forward row), grows wherever the reference's z_d grows by more than rounding, and log|det|
  is finite;
* ``naf_inverse_far``: latents with entries ±30 (past float32's σ saturation) and ±10³: f⁻¹(z)
  equals the reference's inverse, f(f⁻¹(z)) = z, and log|det| at the preimage equals slogdet of the
  reference's Jacobian (where σ(u) rounds to 0 or 1 a map formed from σ is ±∞ there), at the
  condition of the reference's Jacobian.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st

from flowspec import reference
from flowspec.reference.autoregressive import made_net
from flowspec.reference.naf import dsf_layer_parameters, parse_naf
from flowspec.spec import FlowSpec

from . import autoregressive
from .covering import axis, declare_axes
from .property import CheckContext, prop
from .strategies import MAGNITUDES, event_size, from_configs, register_specs, scaled_last_layer

KIND = "naf"
COMPONENTS = (1, 2, 3)
LAYERS = (1, 2)
MIN_SLOPES = (1e-3, 0.1)
REGIMES = ("init", "large", "peaked")
LARGE_FACTORS = (1.0, 2.0, 4.0)  # the large regime's factors on the raw-a, b and logit rows
PEAK_SHIFT = 4.0  # the peaked regime's shift of the raw-a biases
GRID = np.array([0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 20.0, 60.0, 200.0, 1000.0])  # offsets in scales
FAR = 1e4  # the grid's outer ends
FAR_TARGETS = (30.0, 1000.0)  # |z| of naf_inverse_far


def _raw_a_rows(spec: FlowSpec) -> np.ndarray:
    """Indices of the last layer's rows holding raw a (row j·D + d is parameter j of dimension d)."""
    cfg, dsf = parse_naf(spec.config)
    k = dsf.components
    params = [3 * k * layer + r for layer in range(dsf.layers) for r in range(k)]
    return (np.asarray(params)[:, None] * cfg.dim + np.arange(cfg.dim)[None, :]).ravel()


def _row_factors(spec: FlowSpec, factors: tuple[float, float, float]) -> np.ndarray:
    """One factor per last-layer row: ``factors`` = (raw a, b, logits) for every layer's blocks."""
    cfg, dsf = parse_naf(spec.config)
    per_param = np.repeat(np.tile(np.asarray(factors, np.float64), dsf.layers), dsf.components)
    return np.repeat(per_param, cfg.dim)


def in_regime(spec: FlowSpec, regime: str) -> FlowSpec:
    """The regimes of the module docstring."""
    if regime == "large":
        return scaled_last_layer(spec, _row_factors(spec, LARGE_FACTORS))
    if regime == "peaked":
        last = f"net.{max(int(name.split('.')[1]) for name in spec.params if name.startswith('net.'))}"
        bias = np.array(spec.params[f"{last}.bias"])
        bias[_raw_a_rows(spec)] += PEAK_SHIFT
        return FlowSpec(spec.kind, spec.config, {**spec.params, f"{last}.bias": bias})
    return spec


@st.composite
def _configs(draw: Any) -> dict[str, Any]:
    base = draw(autoregressive.made_configs())
    return {**base, "components": draw(axis("components", COMPONENTS)), "layers": draw(axis("layers", LAYERS)),
            "min_slope": draw(axis("min_slope", MIN_SLOPES))}


@register_specs(KIND)
def _naf():
    return st.builds(in_regime, from_configs(KIND, _configs()), axis("regime", REGIMES))


declare_axes(KIND, dim=range(1, 7), order=autoregressive.ORDER_CHOICES, hidden=autoregressive.HIDDEN,
             activation=sorted(autoregressive.ACTIVATIONS), context_dim=autoregressive.CONTEXT_DIMS,
             components=COMPONENTS, layers=LAYERS, min_slope=MIN_SLOPES, regime=REGIMES)


# ----------------------------------------------------------------------------- family properties

def _rounded(values: np.ndarray, dtype: str) -> np.ndarray:
    """The points as the implementation sees them (rounded to its dtype), in float64."""
    return np.asarray(values, dtype=dtype).astype(np.float64)


def _first_layer(spec: FlowSpec, x: np.ndarray, c: np.ndarray | None, d: int) -> tuple[np.ndarray, np.ndarray]:
    """(μ, s) of dimension d's first layer at the sample ``x`` (they do not depend on x_d)."""
    cfg, dsf = parse_naf(spec.config)
    h = made_net(spec.params, cfg.masks(dsf.outputs_per_dim), cfg.activation, x, c)
    _, mu, log_scale = dsf_layer_parameters(np.asarray(h)[:, d], 0, dsf)
    return np.asarray(mu), np.asarray(log_scale)


def _entry_grid(mu: np.ndarray, log_scale: np.ndarray) -> np.ndarray:
    """Sorted points μ_j ± e^{s_j}·GRID and ±:data:`FAR`."""
    offsets = np.concatenate([-GRID[:0:-1], GRID])
    points = (mu[:, None] + np.exp(log_scale)[:, None] * offsets).ravel()
    return np.sort(np.concatenate([points, [-FAR, FAR]]))


@prop("naf_monotone", requires=["black_box", "parameters"], kinds=[KIND])
def naf_monotone(ctx: CheckContext) -> None:
    """Strictly increasing per entry (module docstring): along each entry's grid, the others fixed."""
    spec = ctx.draw_spec()
    x, c = ctx.draw_input(spec, MAGNITUDES, batch=1), ctx.draw_context(spec, batch=1)
    dim = event_size(spec)
    blocks, cols = [], []
    for d in range(dim):
        grid = _entry_grid(*_first_layer(spec, x[0], None if c is None else c[0], d))
        rows = np.repeat(x, len(grid), axis=0)
        rows[:, d] = grid
        blocks.append(_rounded(rows, ctx.dtype))
        cols.append(np.full(len(grid), d))
    rows, col = np.concatenate(blocks), np.concatenate(cols)
    cc = None if c is None else np.repeat(c, len(rows), axis=0)
    z, logdet = ctx.adapter.forward(ctx.instantiate(spec), rows, cc)
    z, ref = np.asarray(z, np.float64), reference.forward(spec, rows, cc)
    tol = ctx.tol("forward", dim)
    worst = 0.0
    for d in range(dim):
        z_d, ref_d = z[col == d, d], ref[col == d, d]
        size = np.maximum(1.0, np.maximum(np.abs(ref_d[1:]), np.abs(ref_d[:-1])))
        steps, ref_steps = np.diff(z_d), np.diff(ref_d)
        decrease = float(np.max(np.maximum(0.0, -steps) / size))
        worst = max(worst, decrease)
        ctx.require(decrease <= tol, f"z_{d} decreases by {decrease:.3e} (relative) along its grid", decrease)
        grows = ref_steps > 4.0 * tol * size
        ctx.require(bool(np.all(steps[grows] > 0.0)), f"z_{d} stays flat at {int(np.sum(steps[grows] <= 0))} grid "
                    f"steps where the reference's grows (saturated?)")
    ctx.record(worst, tol)
    ctx.require(bool(np.all(np.isfinite(logdet))), "log|det| is not finite on the grid")


@prop("naf_inverse_far", requires=["black_box", "parameters", "inverse"], kinds=[KIND])
def naf_inverse_far(ctx: CheckContext) -> None:
    """Latents with entries ±``far_target`` (alternating signs over entries and samples): f⁻¹(z)
    equals the reference's inverse, f(f⁻¹(z)) = z, and log|det| at the reference's preimage (rounded
    to the dtype) equals slogdet of the reference's Jacobian there, at the condition of that Jacobian."""
    spec = ctx.draw_spec()
    c = ctx.draw_context(spec, batch=2)
    target = ctx.draw(axis("far_target", FAR_TARGETS), "|z| far in the tails")
    dim = event_size(spec)
    signs = np.where((np.arange(2)[:, None] + np.arange(dim)[None, :]) % 2 == 0, 1.0, -1.0)
    z = _rounded(target * signs, ctx.dtype)
    x_ref = reference.inverse(spec, z, c)
    kappa = ctx.condition(spec, x_ref, c)
    flow = ctx.instantiate(spec)
    x_hat = ctx.adapter.inverse(flow, z, c)
    ctx.assert_close(x_hat, x_ref, "inverse", dim, "f⁻¹(z) far in the tails vs the reference's", kappa)
    z_back, logdet = ctx.adapter.forward(flow, x_hat, c)
    ctx.assert_close(z_back, z, "roundtrip", dim, "f(f⁻¹(z)) vs z far in the tails", kappa)
    x_far = _rounded(x_ref, ctx.dtype)
    ctx.assert_close(ctx.adapter.forward(flow, x_far, c)[1], reference.log_abs_det(spec, x_far, c), "logdet", dim,
                     "log|det| far in the tails vs slogdet of the reference's Jacobian", kappa)


declare_axes(KIND, far_target=FAR_TARGETS)
