"""Spec strategies and the family properties of the unconstrained monotonic neural network ``umnn``
(Wehenkel & Louppe 2019; the map in :mod:`flowspec.reference.umnn`).

Axes (:mod:`.covering`), on top of the MADE axes (:func:`.autoregressive.made_configs`: ``dim``,
``order``, ``hidden``, ``activation``, ``context_dim``): ``embedding`` E = 1 or 3,
``integrand_hidden`` [4] or [3, 5], ``floor`` 1e-3 or 0.1.

**Two node regimes.** The specs carry ``nodes`` = 128 (the default), at which the Clenshaw–Curtis
rule is at float64 rounding on the strategies' integrands over the value properties' inputs
(magnitudes up to 3, :data:`LARGE`; measured: the error vs the exact reference ≤ 0.05 of the forward
row over 60 draws), so the generic properties (forward, inverse, gradients, defaults, finite
differences, round trips) hold the implementation to the reference as for every other kind, and a
rule with fewer nodes than it reports fails them. The quadrature error itself is the subject of the
family properties, which replace ``nodes`` by a drawn N ∈ :data:`RULE_NODES` (8 … 64, coarse enough
that the error is far above rounding at |x| ≥ 1) and draw inputs up to :data:`QUADRATURE_MAGNITUDES`
(100). There the value carries E_N = |Q_N − ∫g| (computed by the reference's own N-node rule,
:func:`~flowspec.reference.umnn.rule_forward`, against its converged integral), and the tolerance is
the table's ``umnn`` row (module :mod:`.tolerances`): forward row + the rounding of the N + 1-term
sum relative to max|∫g| + E_N.

Family properties:

* ``umnn_value_within_quadrature_error``: |z − z_exact| within the ``umnn`` tolerance (above);
* ``umnn_matches_rule``: value, log-det (Σ log g, exact) and gradients equal those of an exact
  N-node implementation (the reference's rule, by autograd) at the forward, logdet and grad rows:
  "exact per rule", as the stochastic kinds are exact per probe;
* ``umnn_error_estimate``: the hook ``quadrature_error(x)`` equals the reference's |Q_N − Q_2N|
  (rounding of both sums), and where the reference's rules converge geometrically (ratio
  r = |Q_2N − Q_4N| / |Q_N − Q_2N| ≤ 1/2, so |Q_N − ∫g| ≤ |Q_N − Q_2N|/(1 − r)) the value's true
  error is at most twice the exposed estimate (plus rounding);
* ``umnn_inverse_large``: x̂ = f⁻¹(z) of the exact z = f(x) at magnitudes 10, 100 is within the
  inverse row at the Jacobian's condition number plus 2‖J⁻¹‖₂·‖E_N‖₂ (the quadrature error moved
  back through the triangular Jacobian, first order, ×2) of x;
* ``umnn_monotone``: each entry moved alone along a grid through [−M, M] (M = 3 or 30, others
  fixed): z_d increases by at least floor·Δ − 2(e_k + e_{k+1}) − rounding per step (the exact map
  increases by ≥ floor·Δ; e the exposed estimates, ×2 as above) and log|det| is finite.

Bad node counts (one below the minimum is declared in ``extras["invalid_configs"]``), embeddings,
floors and integrand layers are the generic ``invalid_config_rejected``'s.

The triangular structure in the declared order comes from :mod:`.structure` (extras ``order``,
``forbidden``).
"""
from __future__ import annotations

from typing import Any

import autograd.numpy as anp
import numpy as np
from autograd import grad
from hypothesis import strategies as st

from flowspec import reference
from flowspec.reference.umnn import forward as exact_forward, log_slopes, parse_umnn, rule_forward
from flowspec.spec import FlowSpec

from . import autoregressive
from .covering import axis, declare_axes
from .property import CheckContext, prop
from .strategies import event_size, from_configs, inputs, register_specs, weights

KIND = "umnn"
RESOLVED_NODES = 128  # the specs' nodes: the rule at rounding on the value properties' inputs
EMBEDDINGS = (1, 3)
INTEGRAND_HIDDEN = ([4], [3, 5])
FLOORS = (1e-3, 0.1)
LARGE = (0.3, 1.0, 3.0)
RULE_NODES = (8, 16, 32, 64)
QUADRATURE_MAGNITUDES = (0.3, 1.0, 3.0, 10.0, 100.0)
INVERSE_MAGNITUDES = (10.0, 100.0)
GRID_BOUNDS = (3.0, 30.0)
GRID_POINTS = 49
GEOMETRIC_RATIO = 0.5  # r below which |Q_N − ∫g| ≤ |Q_N − Q_2N|/(1 − r) ≤ 2·|Q_N − Q_2N|


@st.composite
def _configs(draw: Any) -> dict[str, Any]:
    made_cfg = draw(autoregressive.made_configs())
    return {**made_cfg, "embedding": draw(axis("embedding", EMBEDDINGS)),
            "integrand_hidden": list(draw(axis("integrand_hidden", INTEGRAND_HIDDEN))),
            "floor": draw(axis("floor", FLOORS)), "nodes": RESOLVED_NODES}


@register_specs(KIND, large=LARGE)
def _umnn():
    return from_configs(KIND, _configs())


declare_axes(KIND, dim=range(1, 7), order=autoregressive.ORDER_CHOICES, hidden=autoregressive.HIDDEN,
             activation=sorted(autoregressive.ACTIVATIONS), context_dim=autoregressive.CONTEXT_DIMS,
             embedding=EMBEDDINGS, integrand_hidden=INTEGRAND_HIDDEN, floor=FLOORS)


# ----------------------------------------------------------------------------- helpers

def _with_nodes(spec: FlowSpec, nodes: int) -> FlowSpec:
    return FlowSpec(spec.kind, {**spec.config, "nodes": nodes}, spec.params)


def _coarse(ctx: CheckContext, magnitudes: tuple[float, ...] = QUADRATURE_MAGNITUDES):
    """A spec with a drawn coarse node count, inputs rounded to the dtype, and a context."""
    spec = _with_nodes(ctx.draw_spec(), ctx.draw(st.sampled_from(RULE_NODES), "nodes"))
    x = ctx.draw_input(spec, magnitudes)
    x = np.asarray(x, dtype=ctx.dtype).astype(np.float64)
    return spec, x, ctx.draw_context(spec)


def _per_sample(fn: Any, spec: FlowSpec, x: np.ndarray, c: np.ndarray | None, **kw: Any) -> np.ndarray:
    return np.stack([np.asarray(fn(spec, x[i], None if c is None else c[i], **kw)) for i in range(len(x))])


def _integrals(spec: FlowSpec, x: np.ndarray, c: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(exact z, the N-node rule's z) per sample and entry, from the reference."""
    return _per_sample(exact_forward, spec, x, c), _per_sample(rule_forward, spec, x, c)


def _scale(z: np.ndarray) -> float:
    return max(1.0, float(np.max(np.abs(z))))


def _rounding(ctx: CheckContext, spec: FlowSpec, z: np.ndarray, integral_size: float, nodes: int) -> float:
    """The rounding part of the ``umnn`` tolerance, relative to max(1, max|z|): the forward row plus
    the ``umnn`` row of the (nodes + 1)-term sum, relative to max(1, max|∫g|)."""
    return ctx.tol("forward", event_size(spec)) + ctx.tol("umnn", nodes + 1) * max(1.0, integral_size) / _scale(z)


def _integral_size(spec: FlowSpec, z_exact: np.ndarray, x: np.ndarray, c: np.ndarray | None) -> float:
    """max|∫g| = max|z − β| over the batch (z_d at x_d = 0 is β_d: the MADE's output d ignores x_d)."""
    beta = np.stack([_at_zero(spec, x[i], None if c is None else c[i]) for i in range(len(x))])
    return float(np.max(np.abs(z_exact - beta)))


def _at_zero(spec: FlowSpec, x: np.ndarray, c: np.ndarray | None) -> np.ndarray:
    """β_d for each d: the rule's z_d with entry d set to 0 (the MADE's output d ignores x_d)."""
    out = np.empty(len(x))
    for d in range(len(x)):
        moved = x.copy()
        moved[d] = 0.0
        out[d] = np.asarray(rule_forward(spec, moved, c))[d]
    return out


# ----------------------------------------------------------------------------- properties

@prop("umnn_value_within_quadrature_error", requires=["white_box"], kinds=[KIND])
def umnn_value_within_quadrature_error(ctx: CheckContext) -> None:
    """|z − z_exact| ≤ the ``umnn`` tolerance: rounding + the N-node rule's own error E_N at the draw."""
    spec, x, c = _coarse(ctx)
    z_exact, z_rule = _integrals(spec, x, c)
    z, _ = ctx.adapter.forward(ctx.load(spec), x, c)
    scale = _scale(z_exact)
    tol = _rounding(ctx, spec, z_exact, _integral_size(spec, z_exact, x, c), spec.config["nodes"])
    tol += float(np.max(np.abs(z_rule - z_exact))) / scale
    err = float(np.max(np.abs(np.asarray(z, np.float64) - z_exact))) / scale
    ctx.record(err, tol)
    ctx.require(err <= tol, f"z is off the exact integral by {err:.3e} (relative), beyond rounding + the "
                            f"{spec.config['nodes']}-node rule's own error: {tol:.3e}")


def _rule_vjp(spec: FlowSpec, x: np.ndarray, c: np.ndarray | None, zw: np.ndarray,
              lw: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Gradients of Σ zw·Q_N-value + Σ lw·Σ log g w.r.t. params and x (autograd on the reference)."""
    flat = spec.flat_params()
    names = list(flat)

    def loss(params: list[Any], xs: Any) -> Any:
        s = spec.with_flat_params(dict(zip(names, params)))
        total = 0.0
        for i in range(len(x)):
            ci = None if c is None else c[i]
            total = total + anp.sum(zw[i] * rule_forward(s, xs[i], ci)) + lw[i] * anp.sum(log_slopes(s, xs[i], ci))
        return total

    params = [flat[n] for n in names]
    return ({n: np.asarray(g) for n, g in zip(names, grad(loss, 0)(params, x))}, np.asarray(grad(loss, 1)(params, x)))


@prop("umnn_matches_rule", requires=["white_box", "grad"], kinds=[KIND])
def umnn_matches_rule(ctx: CheckContext) -> None:
    """Value, log-det and gradients equal an exact N-node implementation's (exact per rule)."""
    spec, x, c = _coarse(ctx)
    x, c = x[:2], None if c is None else c[:2]
    flow = ctx.load(spec)
    size = event_size(spec)
    z, logdet = ctx.adapter.forward(flow, x, c)
    ctx.assert_close(z, _per_sample(rule_forward, spec, x, c), "forward", size, "z vs the N-node rule")
    ld_ref = _per_sample(log_slopes, spec, x, c).sum(axis=1)
    ctx.assert_close(logdet, ld_ref, "logdet", size, "log|det| = Σ log g")
    zw = ctx.draw(weights(x.shape), "z_weight")
    lw = ctx.draw(weights((x.shape[0],)), "logdet_weight")
    g_params, g_x = ctx.adapter.vjp(flow, x, zw, lw, c)
    r_params, r_x = _rule_vjp(spec, x, c, zw, lw)
    ctx.require(set(g_params) <= set(r_params), f"gradients for names not in the spec: {sorted(set(g_params) - set(r_params))}")
    ctx.assert_close(g_x, r_x, "grad", size, "∂L/∂x through the rule")
    for name in sorted(g_params):
        ctx.assert_close(g_params[name], r_params[name], "grad", size, f"∂L/∂{name} through the rule")


@prop("umnn_error_estimate", requires=["white_box", "quadrature_error"], kinds=[KIND])
def umnn_error_estimate(ctx: CheckContext) -> None:
    """The exposed estimate is the nested rule's |Q_N − Q_2N| and, where the rules converge
    geometrically, bounds the value's true error (×2, module docstring)."""
    spec, x, c = _coarse(ctx)
    nodes = spec.config["nodes"]
    flow = ctx.load(spec)
    estimate = np.asarray(ctx.adapter.call_hook(flow, "quadrature_error", x, c), np.float64)
    z_exact, q1 = _integrals(spec, x, c)
    q2, q4 = (_per_sample(rule_forward, spec, x, c, nodes=k * nodes) for k in (2, 4))
    size = max(1.0, _integral_size(spec, z_exact, x, c))
    rounding = ctx.tol("umnn", 2 * nodes + 1) * size + ctx.tol("forward", event_size(spec)) * _scale(z_exact)
    nested = np.abs(q1 - q2)
    ctx.require(estimate.shape == nested.shape, f"estimate of shape {estimate.shape}, expected {nested.shape}")
    gap = float(np.max(np.abs(estimate - nested)))
    ctx.record(gap, rounding)
    ctx.require(gap <= rounding, f"the estimate differs from |Q_N − Q_2N| by {gap:.3e} (> {rounding:.3e})")
    z, _ = ctx.adapter.forward(flow, x, c)
    geometric = np.abs(q2 - q4) <= GEOMETRIC_RATIO * nested
    excess = (np.abs(np.asarray(z, np.float64) - z_exact) - 2.0 * estimate - rounding)[geometric]
    worst = float(np.max(excess, initial=-np.inf))
    ctx.require(worst <= 0.0, f"the value's error exceeds twice the estimate by {worst:.3e} where the rules "
                              "converge geometrically")


@prop("umnn_inverse_large", requires=["white_box", "inverse"], kinds=[KIND])
def umnn_inverse_large(ctx: CheckContext) -> None:
    """f⁻¹(z_exact) at magnitudes 10 and 100 within the inverse row at κ plus 2‖J⁻¹‖·‖E_N‖ of x."""
    spec, x, c = _coarse(ctx, INVERSE_MAGNITUDES)
    kappa = ctx.condition(spec, x, c)
    z_exact, z_rule = _integrals(spec, x, c)
    z_in = np.asarray(z_exact, dtype=ctx.dtype).astype(np.float64)
    x_hat = np.asarray(ctx.adapter.inverse(ctx.load(spec), z_in, c), np.float64)
    jac = reference.jacobian(spec, x, c)
    moved = max(2.0 * np.linalg.norm(np.linalg.inv(j), 2) * np.linalg.norm(e)
                for j, e in zip(jac, z_rule - z_exact))
    scale = _scale(x)
    tol = ctx.tol("inverse", event_size(spec), kappa) + moved / scale
    err = float(np.max(np.abs(x_hat - x))) / scale
    ctx.record(err, tol)
    ctx.require(err <= tol, f"f⁻¹(f(x)) is off x by {err:.3e} (relative) > {tol:.3e}")


@prop("umnn_monotone", requires=["black_box", "quadrature_error"], kinds=[KIND])
def umnn_monotone(ctx: CheckContext) -> None:
    """Each entry alone along a grid through [−M, M]: z_d rises by ≥ floor·Δ − 2(e_k + e_{k+1}) −
    rounding per step and log|det| is finite."""
    spec = _with_nodes(ctx.draw_spec(), ctx.draw(st.sampled_from(RULE_NODES), "nodes"))
    bound = ctx.draw(st.sampled_from(GRID_BOUNDS), "grid bound")
    base = ctx.draw(inputs(spec, (1.0,), 1), "base point")[0]
    c = ctx.draw_context(spec, 1)
    dim, floor = spec.config["dim"], parse_umnn(spec.config)[1].floor
    grid = np.asarray(np.linspace(-bound, bound, GRID_POINTS), dtype=ctx.dtype).astype(np.float64)
    flow = ctx.instantiate(spec)
    for d in range(dim):
        rows = np.repeat(base[None], GRID_POINTS, axis=0)
        rows[:, d] = grid
        cc = None if c is None else np.repeat(c, GRID_POINTS, axis=0)
        z, logdet = ctx.adapter.forward(flow, rows, cc)
        e = np.asarray(ctx.adapter.call_hook(flow, "quadrature_error", rows, cc), np.float64)[:, d]
        zd = np.asarray(z, np.float64)[:, d]
        need = floor * np.diff(grid) - 2.0 * (e[1:] + e[:-1]) - 2.0 * ctx.tol("forward", dim) * _scale(zd)
        shortfall = float(np.max(need - np.diff(zd)))
        ctx.record(max(shortfall, 0.0), 0.0)
        ctx.require(shortfall <= 0.0, f"z_{d} rises by {shortfall:.3e} less than the monotone bound along the grid")
        ctx.require(bool(np.all(np.isfinite(logdet))), "log|det| is not finite on the grid")
