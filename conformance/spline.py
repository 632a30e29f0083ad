"""Spec strategies and the family properties of the rational-quadratic spline kinds (Durkan et al.
2019, "Neural Spline Flows"): ``spline``, ``spline_coupling`` (NSF-C), ``spline_autoregressive`` (NSF-AR).

Axes (:mod:`.covering`), on top of the coupling axes (:func:`.coupling.layer_configs`) and the MADE
axes (:func:`.autoregressive.made_configs`) of the conditioned kinds:

* ``bins``: K = 1 … 5 (K = 1: one bin, the spline is then rational-linear);
* ``bound``: B = 1.0 or 3.0, so that the value properties' input magnitudes (0.1 … 100) reach both
  the bins and the identity tails;
* ``rank`` of the ``spline`` kind's event shape: 1 (D = 1 … 6, axis ``size``), 2 or 3 (small images);
* ``regime`` of the raw parameters: ``init`` (``spline``: N(0, 1); the conditioned kinds: the
  reference's generic weights) with the minimums of axis ``minimum`` (1e-3, the defaults, or 0.05),
  or ``large``: ``spline``'s raw entries ±50 (random signs: softmax and softplus saturated, every
  bin at its minimum width or height or far above it, interior derivatives at min_derivative or ≈ 50),
  the conditioned kinds' last layer scaled by 8, with minimums 0.05. There the slopes are
  ≤ 1/0.05 = 20 at the knots' bins, so a float32 forward, which rounds its input, stays within the
  forward row (unconditioned: at slope 1000, which min_width = 1e-3 allows, rounding x alone moves z
  by 1000·ε·|x|). Extreme raw parameters with the default minimums are the subject of
  ``spline_minimums_honoured``.

Family properties (``spline`` kind, whose knots the reference computes from the spec's ``raw``; the
implementation is only called through the adapter, with its parameters set to the spec's):

* ``spline_monotone``: z increases along a grid through [−1.5B, 1.5B] per entry and log|det| is finite;
* ``spline_knots_exact``: the forward maps each knot x⁽ᵏ⁾ to y⁽ᵏ⁾ (±B to ±B), the inverse each y⁽ᵏ⁾ back,
  and both are the identity in the tails with log|det| = 0;
* ``spline_derivative_continuous``: the log-derivative of each entry at knot ± a few ulps (and at
  ±B ∓ offsets, next to the tails' slope 1) equals the reference's there;
* ``spline_minimums_honoured``: raw ±50 with the drawn minimums: finite values, outputs inside
  [−B, B] for inputs inside, and every slope above the bound that the minimums imply.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import assume, strategies as st

from flowspec.reference.spline import parse_elementwise, rational_quadratic, spline_knots
from flowspec.spec import FlowSpec

from . import autoregressive, coupling
from .covering import axis, declare_axes, salt
from .property import CheckContext, prop
from .seeding import rng
from .strategies import SEEDS, event_size, from_configs, register_specs, scaled_last_layer, sizes
from .tolerances import MAX_CONDITION

KINDS = ("spline", "spline_coupling", "spline_autoregressive")
BINS = range(1, 6)
BOUNDS = (1.0, 3.0)
RANKS = (1, 2, 3)
MINIMUMS = (1e-3, 0.05)
REGIMES = ("init", "large")
LARGE_MINIMUM = 0.05
RAW_FACTOR = 8.0  # the conditioned kinds' large regime: the factor on the conditioner's last layer
EXTREME = 50.0  # |raw| of the spline kind's large regime and of spline_minimums_honoured
SHAPES = {2: [2, 3], 3: [2, 1, 3]}


def spline_keys(bins: int, bound: float, minimum: float) -> dict[str, Any]:
    return {"bins": bins, "bound": bound, "min_width": minimum, "min_height": minimum, "min_derivative": minimum}


@st.composite
def _spline_part(draw: Any) -> tuple[str, dict[str, Any]]:
    """(regime, spline keys): the minimums are the axis ``minimum`` in the init regime, 0.05 in the large."""
    regime = draw(axis("regime", REGIMES))
    minimum = draw(axis("minimum", MINIMUMS)) if regime == "init" else LARGE_MINIMUM
    return regime, spline_keys(draw(sizes(1, 5, name="bins")), draw(axis("bound", BOUNDS)), minimum)


def _extreme_raw(spec: FlowSpec, seed: int) -> FlowSpec:
    raw = spec.params["raw"]
    signs = rng("spline extreme", salt(), seed).choice([-1.0, 1.0], size=raw.shape)
    return FlowSpec(spec.kind, spec.config, {"raw": EXTREME * signs})


@st.composite
def _elementwise_specs(draw: Any) -> FlowSpec:
    regime, keys = draw(_spline_part())
    rank = draw(axis("rank", RANKS))
    shape = [draw(sizes(1, 6, name="size"))] if rank == 1 else SHAPES[rank]
    spec = draw(from_configs("spline", st.just({"shape": shape, **keys})))
    return spec if regime == "init" else _extreme_raw(spec, draw(SEEDS))


@st.composite
def _conditioned_specs(draw: Any, kind: str) -> FlowSpec:
    regime, keys = draw(_spline_part())
    image = kind == "spline_coupling"
    base = coupling.layer_configs(False, image_contexts=True) if image else autoregressive.made_configs()
    spec = draw(from_configs(kind, st.builds(lambda c: {**c, **keys}, base)))
    return spec if regime == "init" else scaled_last_layer(spec, RAW_FACTOR)


@register_specs("spline")
def _spline():
    return _elementwise_specs()


@register_specs("spline_coupling")
def _spline_coupling():
    return _conditioned_specs("spline_coupling")


@register_specs("spline_autoregressive")
def _spline_autoregressive():
    return _conditioned_specs("spline_autoregressive")


declare_axes(KINDS, bins=BINS, bound=BOUNDS, minimum=MINIMUMS, regime=REGIMES)
declare_axes("spline", rank=RANKS, size=range(1, 7))
declare_axes("spline_coupling", conditioner_mask=coupling.CONDITIONER_MASKS, layout=coupling.LAYOUTS,
             parity=coupling.PARITIES, size=range(2, 9), channels=range(1, 4), height=range(1, 4),
             width=range(1, 5), context_dim=coupling.CONTEXT_DIMS, context_channels=coupling.CONTEXT_CHANNELS,
             hidden=range(1, 9), depth=coupling.DEPTHS, attention_hidden=coupling.ATTENTION_HIDDEN,
             blocks=coupling.BLOCKS, heads=coupling.HEADS, activation=sorted(coupling.ACTIVATIONS))
declare_axes("spline_autoregressive", dim=range(1, 7), order=autoregressive.ORDER_CHOICES,
             hidden=autoregressive.HIDDEN, activation=sorted(autoregressive.ACTIVATIONS),
             context_dim=autoregressive.CONTEXT_DIMS)


# ----------------------------------------------------------------------------- family properties

def _kernel(spec: FlowSpec) -> tuple[tuple[int, ...], dict[str, float], np.ndarray]:
    shape, spl = parse_elementwise(spec.config)
    return shape, spl.kernel_args(), np.asarray(spec.params["raw"])


def _rounded(values: np.ndarray, dtype: str) -> np.ndarray:
    """The points as the implementation sees them (rounded to its dtype), in float64."""
    return np.asarray(values, dtype=dtype).astype(np.float64)


def _per_entry_points(shape: tuple[int, ...], points: np.ndarray, rest: float) -> np.ndarray:
    """Batch rows that put entry i at ``points[i, j]`` and every other entry at ``rest``: row
    ``j·D + i``, so that a row's log|det| is entry i's log-derivative when ``rest`` is in a tail."""
    size, count = points.shape
    rows = np.full((count, size, size), rest)
    rows[:, np.arange(size), np.arange(size)] = points.T
    return rows.reshape((count * size,) + shape)


def _condition(log_slopes: np.ndarray) -> float:
    """1 / the smallest slope (and the largest slope): the inverse's (the forward's) conditioning."""
    return float(np.exp(np.max(np.abs(log_slopes))))


def _usable(ctx: CheckContext, condition: float) -> None:
    """Reject a draw beyond the dtype's :data:`~.tolerances.MAX_CONDITION` (as :meth:`CheckContext.condition`)."""
    assume(condition <= MAX_CONDITION[ctx.dtype])


@prop("spline_monotone", requires=["black_box"], kinds=["spline"])
def spline_monotone(ctx: CheckContext) -> None:
    """Strictly monotone: along a grid through [−1.5B, 1.5B] (every entry at the same point) z does
    not decrease (up to the forward row's rounding) and log|det| is finite (every slope > 0)."""
    spec = ctx.draw_spec()
    shape, args, _ = _kernel(spec)
    grid = np.linspace(-1.5 * args["bound"], 1.5 * args["bound"], 97)
    x = np.broadcast_to(grid.reshape((-1,) + (1,) * len(shape)), (len(grid),) + shape).copy()
    z, logdet = ctx.adapter.forward(ctx.instantiate(spec), x)
    steps = np.diff(np.asarray(z, np.float64).reshape(len(grid), -1), axis=0)
    tol = ctx.tol("forward", event_size(spec)) * args["bound"]
    ctx.record(float(max(0.0, -steps.min())), tol)
    ctx.require(bool(steps.min() >= -tol), f"z decreases by {-steps.min():.3e} along the grid")
    ctx.require(bool(np.all(np.isfinite(logdet))), "log|det| is not finite on the grid")


@prop("spline_knots_exact", requires=["black_box", "parameters", "inverse"], kinds=["spline"])
def spline_knots_exact(ctx: CheckContext) -> None:
    """The forward maps every knot x⁽ᵏ⁾ to y⁽ᵏ⁾ (the bin search's edge cases: −B, interior knots, B)
    and the inverse y⁽ᵏ⁾ back to x⁽ᵏ⁾ (the bin search on the output knots); beyond ±B both are the
    identity with log|det| = 0. Tolerances: the forward row, and the inverse row at the condition
    1/(smallest slope at the knots)."""
    spec = ctx.draw_spec()
    shape, args, raw = _kernel(spec)
    flat = raw.reshape(-1, raw.shape[-1])
    xs, ys, _ = spline_knots(flat, **args)
    size = event_size(spec)
    xk = _rounded(xs.T.reshape((-1,) + shape), ctx.dtype)
    yk = _rounded(ys.T.reshape((-1,) + shape), ctx.dtype)
    batch_raw = np.broadcast_to(raw, xk.shape + raw.shape[-1:])
    z_ref, log_fwd = rational_quadratic(xk, batch_raw, **args)
    x_ref, log_inv = rational_quadratic(yk, batch_raw, inverse=True, **args)
    flow = ctx.instantiate(spec)
    ctx.assert_close(ctx.adapter.forward(flow, xk)[0], z_ref, "forward", size, "f at the x knots")
    condition = _condition(log_inv)
    _usable(ctx, condition)
    ctx.assert_close(ctx.adapter.inverse(flow, yk), x_ref, "inverse", size, "f⁻¹ at the y knots", condition)
    bound = args["bound"]
    tails = np.stack([np.full(shape, v) for v in (-10 * bound, -bound - 0.5, bound + 0.5, 10 * bound)])
    z_tail, ld_tail = ctx.adapter.forward(flow, tails)
    ctx.assert_close(z_tail, tails, "forward", size, "f in the tails")
    ctx.assert_close(ld_tail, np.zeros(len(tails)), "logdet", size, "log|det| in the tails")
    ctx.assert_close(ctx.adapter.inverse(flow, tails), tails, "inverse", size, "f⁻¹ in the tails")


@prop("spline_derivative_continuous", requires=["black_box", "parameters"], kinds=["spline"])
def spline_derivative_continuous(ctx: CheckContext) -> None:
    """Continuous derivative at every knot, the tails' slope 1 at ±B included: each entry's
    log-derivative a few ulps either side of each knot equals the reference's there (which is
    continuous: the bins share the knot derivatives δ⁽ᵏ⁾, 1 at ±B), one row per entry and point with
    the other entries in a tail; the logdet row at the condition max slope / min slope."""
    spec = ctx.draw_spec()
    shape, args, raw = _kernel(spec)
    flat = raw.reshape(-1, raw.shape[-1])
    xs, _, _ = spline_knots(flat, **args)
    offset = 4.0 * np.finfo(ctx.dtype).eps * max(1.0, args["bound"])
    points = _rounded(np.concatenate([xs - offset, xs + offset], axis=1), ctx.dtype)  # (D, 2(K + 1))
    rows = _per_entry_points(shape, points, 10.0 * args["bound"])
    _, expected = rational_quadratic(rows, np.broadcast_to(raw, rows.shape + raw.shape[-1:]), **args)
    expected = expected.reshape(len(rows), -1).sum(axis=1)
    condition = _condition(expected)
    _usable(ctx, condition)
    _, logdet = ctx.adapter.forward(ctx.instantiate(spec), rows)
    ctx.assert_close(logdet, expected, "logdet", 1, "log dz/dx at the knots ± offsets", condition)


def _slope_floor(raw: np.ndarray, args: dict[str, float]) -> np.ndarray:
    """Per entry, a lower bound of dy/dx on [−B, B]: min over bins of s²·min(δ, s)/max(δ, s)² (eq. 5:
    numerator and denominator are convex combinations of the bin's derivatives and slope)."""
    xs, ys, ds = spline_knots(raw, **args)
    s = np.diff(ys, axis=-1) / np.diff(xs, axis=-1)
    low = np.minimum(np.minimum(ds[..., :-1], ds[..., 1:]), s)
    high = np.maximum(np.maximum(ds[..., :-1], ds[..., 1:]), s)
    return np.min(s ** 2 * low / high ** 2, axis=-1)


@prop("spline_minimums_honoured", requires=["black_box", "parameters", "inverse"], kinds=["spline"])
def spline_minimums_honoured(ctx: CheckContext) -> None:
    """With every raw entry ±50 (softmax and softplus saturated) and the drawn minimums: forward and
    inverse are finite, inputs in [−B, B] stay there, and each entry's slope on a grid through
    [−B, B] is at least the bound that the minimums imply (:func:`_slope_floor`)."""
    spec = _extreme_raw(ctx.draw_spec(), ctx.draw(SEEDS, "sign seed"))
    shape, args, raw = _kernel(spec)
    flow = ctx.instantiate(spec)
    bound, size = args["bound"], event_size(spec)
    grid = np.linspace(-bound, bound, 33)
    x = _rounded(np.broadcast_to(grid.reshape((-1,) + (1,) * len(shape)), (len(grid),) + shape), ctx.dtype)
    z = np.asarray(ctx.adapter.forward(flow, x)[0], np.float64)
    x_back = np.asarray(ctx.adapter.inverse(flow, x), np.float64)
    ctx.require(bool(np.all(np.isfinite(z)) and np.all(np.isfinite(x_back))), "non-finite values at extreme raw")
    slack = ctx.tol("forward", size) * bound
    ctx.require(bool(np.all(np.abs(z) <= bound + slack) and np.all(np.abs(x_back) <= bound + slack)),
                "an input inside [−B, B] left it")
    floor = _slope_floor(raw.reshape(-1, raw.shape[-1]), args)
    rows = _per_entry_points(shape, np.broadcast_to(grid, (floor.size, len(grid))), 10.0 * bound)
    rows = _rounded(rows, ctx.dtype)
    _, logdet = ctx.adapter.forward(flow, rows)
    need = np.log(np.tile(floor, len(grid)))
    shortfall = float(np.max(need - np.asarray(logdet, np.float64)))
    tol = ctx.tol("logdet", 1, _condition(need))
    ctx.record(max(shortfall, 0.0), tol)
    ctx.require(shortfall <= tol, f"a slope is below the minimums' bound by {shortfall:.3e} in log")
