"""Spec strategies and the family properties of the Sylvester flow (``sylvester``; the map, the
parameterizations and the invertibility margin δ are in :mod:`flowspec.reference.sylvester`).

Axes (:mod:`.covering`), drawn in this order:

* ``regime`` of the parameters (below), then ``parameterization`` of Q (orthogonal, householder,
  triangular) and its own key: ``reflections`` K ∈ {1, 2, 4} (householder; K may exceed D) or
  ``reverse`` (triangular); the orthogonal kind writes ``orth_tol`` = None (√ε of the dtype: a
  looser tolerance leaves Q non-orthonormal, and the det identity then does not hold, by design)
  and ``orth_max_iter`` = 40;
* ``size`` D = 1…6 (2…6 for householder: in R¹ every reflection is −1, the map does not depend on
  v, and the exact gradient w.r.t. v is 0 while its rounding is ε/‖v‖; 2…6 in the edge regime) and
  ``rank``: M = 1, ⌊D/2⌋ (at least 1) or D, so that M < D (a component outside span(Q) that passes
  unchanged) and M = D both occur; ``context_dim`` 0 or 2 (amortized parameters);
* the regimes (the strict lower triangles of ``r`` and ``r_tilde``, which the map ignores, always
  hold N(0, 1) values, so an implementation that forgets the mask is seen):

  - ``init``: the reference's generic parameters (κ(Q̂) ≤ e²);
  - ``ill_conditioned``: Q̂ with singular values spread geometrically over a factor 30 and scaled by
    e^{±3} (the orthogonalisation needs twice as many steps, and must not depend on ‖Q̂‖), or the
    Householder vectors scaled by up to 10⁶ (scaled up only: the gradient w.r.t. v is rounded
    relative to 1/‖v‖, which at small ‖v‖ no row covers); nothing for the triangular kind. κ(Q̂) stays
    at 30 because float32's Q is the polar factor of a Q̂ rounded relative to ε, off by about
    ε·κ(Q̂), which the unconditioned forward row does not allow for beyond that;
  - ``edge``: on a random non-empty set of coordinates that leaves one direction of R^D out,
    (r_ii, raw r̃_ii) = (−X, Y) for (X, Y) in :data:`EDGE_RAW` (axis ``edge_raw``), so that
    1 + r_ii·r̃_ii is 0.12, 0.018 or 0.011, just above the margin 0.01: the scalar equations of the
    inverse are nearly flat at a_i = 0 and the log-det takes the log of a small number. The pairs keep
    |r_ii| ≤ 6 (|r_ii|/softplus(−r_ii) → 1 is what brings r_ii·r̃_ii to −μ) so that the map does not
    send O(|r_ii|) inputs to O(1) outputs, whose rounding no condition number would see; the
    direction left out keeps a slope of order 1, so that κ sees the small ones (D = 1 has none). R̃'s
    off-diagonal entries on those rows (and their context weights) are zeroed: r_ii·r̃_ik enters the
    Jacobian, and with it κ reaches 10⁴, where the reference's own gradient (through slogdet of its
    Jacobian) is off by κ·ε, beyond the unconditioned grad row, while the det identity is not;
  - ``steep``: r_ii = raw r̃_ii = X in :data:`STEEP_RAW` (axis ``steep_raw``) on every coordinate:
    slopes up to 1 + r_ii·r̃_ii ≈ 12 or 36, where an unguarded Newton iteration of the inverse cycles.

Family properties:

* ``sylvester_q_orthonormal`` (hook ``orthonormal_basis``, parameters set to the spec's):
  the implementation's own Q has ‖QᵀQ − I‖_F within the ``orthonormal`` row, and equals the
  reference's Q, both as loaded and after the raw Q̂ (or v) is changed in place as an optimiser step
  does (a Q orthonormalised once and kept is seen there); every parameterization;
* ``sylvester_invertibility_margin``: extreme raw diagonals (|raw| in :data:`MARGIN_RAW`, patterns
  :data:`MARGIN_PATTERNS`, axes ``margin_raw`` and ``margin_pattern``) with zero off-diagonals and
  b = 0, at points where a = R̃·Qᵀx hits 0 (h′ = 1, the worst case of the margin) and elsewhere: in
  the implementation's dtype the forward, log-det, inverse and parameter gradients are finite, the
  log-det is ≥ M·log δ (each slope ≥ δ), equals the reference's det-identity value, and the inverse
  round-trips. The tolerances are the logdet row at condition 2/δ (a slope 1 + ψ·h′ ≥ δ computed from
  a ψ rounded relative to ε is off by at most (1 + |ψ|·h′)/(1 + ψ·h′) ≤ (2 − δ)/δ relative ε when
  ψ < 0, and 1 otherwise) and the roundtrip row at 1/δ (each scalar solve's slope ≥ δ).

The generic properties check the rest: the det-identity log-det against ``slogdet`` of the reference
Jacobian (white-box) and of a finite-difference one (black-box), the structured inverse against the
reference's bisection and by round trips, gradients through the orthogonalisation and the inverse.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st

from flowspec.reference.sylvester import MARGIN, PARAMETERIZATIONS, det_identity_log_det, parse_config, parts
from flowspec.reference.sylvester import basis as reference_basis
from flowspec.spec import FlowSpec

from .covering import axis, declare_axes, salt
from .property import CheckContext, prop
from .seeding import rng
from .strategies import SEEDS, event_size, from_configs, register_specs, sizes, weights
from .structure import declares

RANKS = ("one", "half", "full")
CONTEXT_DIMS = (0, 2)
REFLECTIONS = (1, 2, 4)
REVERSES = (False, True)
REGIMES = ("init", "ill_conditioned", "edge", "steep")
EDGE_RAW = ((3.0, 3.0), (5.0, 30.0), (6.0, 1e3))
STEEP_RAW = (3.0, 6.0)
Q_CONDITION = 30.0
MARGIN_PATTERNS = ("lower", "steep", "flat", "mixed")
MARGIN_RAW = (30.0, 1e2, 1e4)


def _rank(d: int, rank: str) -> int:
    return {"one": 1, "half": max(1, d // 2), "full": d}[rank]


@st.composite
def configs(draw: Any, min_size: int = 1) -> dict[str, Any]:
    """Configs of every parameterization (module docstring), D ≥ ``min_size``."""
    parameterization = draw(axis("parameterization", PARAMETERIZATIONS))
    d = draw(sizes(max(min_size, 2 if parameterization == "householder" else 1), 6, name="size"))
    config: dict[str, Any] = {"shape": [d], "m": _rank(d, draw(axis("rank", RANKS))),
                              "parameterization": parameterization}
    if parameterization == "householder":
        config["reflections"] = draw(axis("reflections", REFLECTIONS))
    elif parameterization == "triangular":
        config["reverse"] = draw(axis("reverse", REVERSES))
    else:
        config.update(orth_tol=None, orth_max_iter=40)
    config["context_dim"] = draw(axis("context_dim", CONTEXT_DIMS))
    return config


def _with_lower_junk(params: dict[str, np.ndarray], gen: np.random.Generator) -> None:
    """N(0, 1) in the ignored strict lower triangles of r and r_tilde (and of their context weights)."""
    for name in list(params):
        if name.split("_context")[0] in ("r", "r_tilde"):
            value = params[name]
            m = value.shape[0]
            lower = np.tril(np.ones((m, m), dtype=bool), -1).reshape((m, m) + (1,) * (value.ndim - 2))
            params[name] = np.where(lower, gen.standard_normal(value.shape), value)


def _set_diagonals(params: dict[str, np.ndarray], rows: np.ndarray, r_ii: float, rt_raw: float,
                   clear_rows: bool = False) -> None:
    """Diagonal raw values of ``r`` and ``r_tilde`` on ``rows``, their context weights zeroed (every
    sample has them); with ``clear_rows`` also R̃'s strict upper entries on those rows."""
    index = np.flatnonzero(rows)
    upper = np.triu(np.ones(params["r"].shape, dtype=bool), 1) & rows[:, None] if clear_rows else None
    for name, value in (("r", r_ii), ("r_tilde", rt_raw)):
        for key in (name, f"{name}_context"):
            if key in params:
                params[key] = params[key].copy()
                params[key][index, index] = value if key == name else 0.0
                if upper is not None and name == "r_tilde":
                    params[key][upper] = 0.0


def _ill_conditioned(params: dict[str, np.ndarray], gen: np.random.Generator) -> None:
    if "q" in params:
        d, m = params["q"].shape
        u = np.linalg.qr(gen.standard_normal((d, m)))[0]
        v = np.linalg.qr(gen.standard_normal((m, m)))[0]
        sigma = np.geomspace(1.0, 1.0 / Q_CONDITION, m) * np.exp(gen.uniform(-3.0, 3.0))
        params["q"] = u @ np.diag(sigma) @ v.T
    elif "v" in params:
        params["v"] = params["v"] * 10.0 ** gen.uniform(0.0, 6.0, (len(params["v"]), 1))


def _edge_rows(d: int, m: int, gen: np.random.Generator) -> np.ndarray:
    """A random non-empty set of the M coordinates that leaves one direction of R^D out (a coordinate,
    or the complement of span(Q) when M < D), so that the Jacobian's condition number sees the small
    slopes (with every slope small it would be about 1 while the inverse amplifies rounding by 1/δ)."""
    count = int(gen.integers(1, m + 1)) if m < d else int(gen.integers(1, m))
    return gen.permutation(m) < count


def in_regime(spec: FlowSpec, regime: str, magnitude: Any, seed: int) -> FlowSpec:
    """``spec`` with its parameters in ``regime`` (module docstring); ``magnitude`` is the edge pair
    (−r_ii, raw r̃_ii) or the steep X."""
    gen = rng("sylvester regime", salt(), seed)
    params = dict(spec.params)
    m = params["b"].shape[0]
    if regime == "ill_conditioned":
        _ill_conditioned(params, gen)
    elif regime == "edge":
        _set_diagonals(params, _edge_rows(spec.config["shape"][0], m, gen), -magnitude[0], magnitude[1],
                       clear_rows=True)
    elif regime == "steep":
        _set_diagonals(params, np.ones(m, dtype=bool), magnitude, magnitude)
    _with_lower_junk(params, gen)
    return FlowSpec(spec.kind, spec.config, params)


@st.composite
def _sylvester_specs(draw: Any) -> FlowSpec:
    regime = draw(axis("regime", REGIMES))
    spec = draw(from_configs("sylvester", configs(2 if regime == "edge" else 1)))
    magnitude = draw(axis("edge_raw", EDGE_RAW)) if regime == "edge" else \
        draw(axis("steep_raw", STEEP_RAW)) if regime == "steep" else 0.0
    return in_regime(spec, regime, magnitude, draw(SEEDS))


@register_specs("sylvester")
def _sylvester():
    return _sylvester_specs()


declare_axes("sylvester", parameterization=PARAMETERIZATIONS, size=range(1, 7), rank=RANKS, reflections=REFLECTIONS,
             reverse=REVERSES, context_dim=CONTEXT_DIMS, regime=REGIMES, edge_raw=EDGE_RAW, steep_raw=STEEP_RAW,
             margin_pattern=MARGIN_PATTERNS, margin_raw=MARGIN_RAW)


# ----------------------------------------------------------------------------- family properties

def _basis_params(spec: FlowSpec) -> tuple[str, ...]:
    return tuple(name for name in ("q", "v") if name in spec.params)


def _check_basis(ctx: CheckContext, flow: Any, spec: FlowSpec, context: np.ndarray | None, what: str) -> None:
    q = np.asarray(ctx.adapter.call_hook(flow, "orthonormal_basis", context), dtype=np.float64)
    expected = reference_basis(spec, context)
    cfg = parse_config(spec.config)
    ctx.require(q.shape == expected.shape, f"Q {what} has shape {q.shape}, expected {expected.shape}")
    defect = np.swapaxes(q, -1, -2) @ q - np.eye(cfg.m)
    err = float(np.max(np.sqrt(np.sum(defect.reshape(-1, cfg.m * cfg.m) ** 2, axis=1))))
    tol = ctx.tol("orthonormal", cfg.d * (cfg.m + (cfg.reflections or 0)))
    ctx.record(err, tol)
    ctx.require(err <= tol, f"‖QᵀQ − I‖_F of Q {what} is {err:.3e} > {tol:.1e}", err)
    ctx.assert_close(q, expected, "forward", cfg.d, f"Q {what} vs the reference's")


@prop("sylvester_q_orthonormal", requires=["black_box", "parameters", "orthonormal_basis"],
      kinds=declares("orthonormal_basis"))
def sylvester_q_orthonormal(ctx: CheckContext) -> None:
    """The implementation's Q (hook ``orthonormal_basis``) is orthonormal to the ``orthonormal`` row
    and equals the reference's, as loaded and after an in-place change of Q̂ or v (module docstring)."""
    spec = ctx.draw_spec()
    c = ctx.draw_context(spec, 2)
    flow = ctx.instantiate(spec)
    _check_basis(ctx, flow, spec, c, "as loaded")
    names = _basis_params(spec)
    if not names:
        return
    gen = rng("sylvester update", salt(), ctx.draw(SEEDS, "update seed"))
    updated = {name: spec.params[name] + 0.3 * np.std(spec.params[name]) * gen.standard_normal(spec.params[name].shape)
               for name in names}
    ctx.adapter.set_parameters(flow, updated)
    _check_basis(ctx, flow, FlowSpec(spec.kind, spec.config, {**spec.params, **updated}), c,
                 "after an in-place update of its raw parameters")


def _margin_spec(ctx: CheckContext) -> FlowSpec:
    """A spec with extreme raw diagonals of a pattern (module docstring), zero off-diagonals and b = 0."""
    spec = ctx.draw(from_configs("sylvester", configs()), "spec")
    pattern, magnitude = ctx.draw(axis("margin_pattern", MARGIN_PATTERNS)), ctx.draw(axis("margin_raw", MARGIN_RAW))
    gen = rng("sylvester margin", salt(), ctx.draw(SEEDS, "pattern seed"))
    m = spec.params["b"].shape[0]
    chosen = gen.choice(["lower", "steep", "flat"], m) if pattern == "mixed" else np.full(m, pattern)
    signs = {"lower": (-1.0, 1.0), "steep": (1.0, 1.0), "flat": (gen.choice([-1.0, 1.0]), -1.0)}
    params = {name: np.zeros_like(value) if not name.startswith(("q", "v")) else value
              for name, value in spec.params.items()}
    params["r"] = np.diag([signs[p][0] * magnitude for p in chosen])
    params["r_tilde"] = np.diag([signs[p][1] * magnitude for p in chosen])
    return FlowSpec(spec.kind, spec.config, params)


def _margin_points(ctx: CheckContext, spec: FlowSpec, c: np.ndarray | None) -> np.ndarray:
    """x = x_⊥ + Q·y with y_i = a_i/r̃_ii: a = R̃·Qᵀx is 0 (h′ = 1) in the first sample, N(0, 1) in
    the others (y_i = a_i where r̃_ii < 10⁻³: there a ≈ 0 whatever y), rounded to the dtype."""
    gen = rng("sylvester margin x", salt(), ctx.draw(SEEDS, "x seed"))
    d = event_size(spec)
    points = []
    for i in range(3):
        q, _, rt, _ = (np.asarray(t) for t in parts(spec, None if c is None else c[i]))
        g = gen.standard_normal(d)
        a = np.zeros(q.shape[1]) if i == 0 else gen.standard_normal(q.shape[1])
        diag = np.diag(rt)
        y = np.where(diag >= 1e-3, a / np.where(diag >= 1e-3, diag, 1.0), a)
        points.append(g - q @ (q.T @ g) + q @ y)
    return np.asarray(np.stack(points), dtype=ctx.dtype).astype(np.float64)


@prop("sylvester_invertibility_margin", requires=["black_box", "parameters", "inverse", "grad"],
      kinds=declares("invertibility_margin"))
def sylvester_invertibility_margin(ctx: CheckContext) -> None:
    """Extreme raw diagonals: finite values and gradients, log-det ≥ M·log δ and equal to the
    det-identity value of the reference, round trip (module docstring)."""
    spec = _margin_spec(ctx)
    c = ctx.draw_context(spec)
    x = _margin_points(ctx, spec, c)
    flow = ctx.instantiate(spec)
    cfg = parse_config(spec.config)
    z, logdet = ctx.adapter.forward(flow, x, c)
    ctx.require(bool(np.all(np.isfinite(z)) and np.all(np.isfinite(logdet))), "non-finite forward at extreme raw")
    condition = (2.0 - MARGIN) / MARGIN
    floor_tol = ctx.tol("logdet", cfg.d, condition) * max(1.0, cfg.m * abs(np.log(MARGIN)))
    shortfall = float(np.max(cfg.m * np.log(MARGIN) - logdet))
    ctx.record(max(shortfall, 0.0), floor_tol)
    ctx.require(shortfall <= floor_tol, f"log|det| is below M·log δ by {shortfall:.3e}: a slope under the margin",
                shortfall)
    ctx.assert_close(logdet, det_identity_log_det(spec, x, c), "logdet", cfg.d, "log|det| vs the det identity",
                     condition)
    ctx.assert_close(ctx.adapter.inverse(flow, z, c), x, "roundtrip", cfg.d, "f⁻¹(f(x)) at extreme raw",
                     1.0 / MARGIN)
    zw, lw = ctx.draw(weights(z.shape), "z_weight"), ctx.draw(weights((len(x),)), "logdet_weight")
    grads, g_x = ctx.adapter.vjp(flow, x, zw, lw, c)
    bad = sorted(name for name, g in grads.items() if not np.all(np.isfinite(g)))
    ctx.require(not bad and bool(np.all(np.isfinite(g_x))), f"non-finite gradients at extreme raw: {bad or ['x']}")

