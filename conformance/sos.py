"""Spec strategies and the family properties of the sum-of-squares polynomial flow ``sos`` (Jaini et
al. 2019; the map in :mod:`flowspec.reference.sos`).

Axes (:mod:`.covering`), on top of the MADE axes (:func:`.autoregressive.made_configs`: ``dim``,
``order``, ``hidden``, ``activation``, ``context_dim``):

* ``degree``: r = 0 … 3 (r = 0: an affine law per dimension);
* ``squares``: K = 1 … 3;
* ``regime``: ``init``, the reference's generic MADE weights with the rows of a_{kl} in the last
  layer scaled by 3^{−l} (:data:`TAME`: each term of s_k is then O(1) at |x| = 3, the value
  properties' largest magnitude, so that the Jacobian's condition number at their points stays
  mostly below float32's cap of 10² — untamed, p grows like 9^r over [0, 3] and nearly every draw at
  r = 3 is rejected); ``root``, every square sharing one real root ρ ∈ [−2, 2]: a_k = (t − ρ)·b_k(t)
  with b_k of degree r − 1 (a_k = 0 at r = 0), input-independent (zero weights, the coefficients in
  the biases), and raw ε = −30, so p(ρ) = ε² = EPS_FLOOR + 10⁻¹³: the degenerate case the floor
  exists for; c keeps its dependence on x_<d.

The round trips' magnitudes are :data:`LARGE` = (0.3, 1, 3) (``register_specs(large=...)``): beyond
them the full Jacobian's condition number (p spans many decades across the entries) exceeds the
caps and the generic round trip rejects its draws; large magnitudes are the subject of
``sos_inverse_large``, which judges each entry by its own backward error.

Family properties (they attach to kinds declaring the extra ``sos_law``: ``(spec, x, context) ->
(c, a, ε²)`` per dimension at one sample, :func:`flowspec.reference.sos.entry_laws`):

* ``sos_monotone``: the ``root`` construction at a drawn ρ, each entry moved alone along a grid
  through ρ (steps down to 10⁻³): z_d never decreases, increases wherever the reference's increases
  by more than rounding, and log|det| is finite, ≥ D·log EPS_FLOOR and equal to the reference's
  Σ_d log p_d(x_d) (exact for the triangular Jacobian; the generic slogdet, which pivots, carries κ·ε);
* ``sos_inverse_large``: inputs at magnitudes 10, 100, 1000: for z = f(x) (the reference's, rounded
  to the dtype) the implementation's x̂ = f⁻¹(z) has, entry by entry, the backward error
  |f(x̂)_d − z_d| ≤ tol·(|c_d| + |x̂_d|·Σ_m |q_m||x̂_d|^m + 1): the bound on the rounding of z_d's
  Horner evaluation and on the residual p·|δx| of a solve to a tolerance relative to |x| + 1 (a solve
  stopped at an iteration cap is off by the bracket's width / 2ⁿ).

Bad degrees and square counts are the generic ``invalid_config_rejected``'s wrong integers.
The closed-form integral against quadrature of the integrand is a test of the reference
(``tests/test_sos.py``), not a property: it involves no implementation.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st

from flowspec import reference
from flowspec.reference.sos import (EPS_FLOOR, entry_laws, integrand_coefficients, parse_config, sos_log_integrand,
                                    sos_value)
from flowspec.spec import FlowSpec

from . import autoregressive
from .covering import axis, declare_axes, salt
from .property import CheckContext, prop
from .seeding import rng
from .strategies import SEEDS, event_size, from_configs, register_specs, scaled_last_layer
from .structure import declares

KIND = "sos"
LAW = "sos_law"
DEGREES = (0, 1, 2, 3)
SQUARES = (1, 2, 3)
REGIMES = ("init", "root")
TAME = 3.0  # the init regime's a_{kl} rows scaled by TAME^{−l}
ROOT_RANGE = 2.0  # |ρ| of the root regime
ROOT_RAW_EPS = -30.0  # raw ε of the root regime: ε² = EPS_FLOOR + e^{−30}
LARGE = (0.3, 1.0, 3.0)
INVERSE_MAGNITUDES = (10.0, 100.0, 1000.0)
GRID = np.array([-10.0, -3.0, -1.0, -0.3, -0.1, -1e-2, -1e-3, 0.0, 1e-3, 1e-2, 0.1, 0.3, 1.0, 3.0, 10.0])


def _last_layer(spec: FlowSpec) -> str:
    return f"net.{max(int(name.split('.')[1]) for name in spec.params if name.startswith('net.'))}"


def tamed(spec: FlowSpec) -> FlowSpec:
    """``spec`` with the a_{kl} rows of the MADE's last layer scaled by TAME^{−l} (module docstring)."""
    _, sos = parse_config(spec.config)
    per_block = np.concatenate([[1.0], np.tile(TAME ** -np.arange(sos.degree + 1.0), sos.squares), [1.0]])
    return scaled_last_layer(spec, np.repeat(per_block, spec.config["dim"]))


def root_coefficients(rho: float, degree: int, squares: int, gen: np.random.Generator) -> np.ndarray:
    """(K, r + 1) coefficients of squares s_k = (t − ρ)·b_k(t), b_k of degree r − 1 (zero at r = 0)."""
    if degree == 0:
        return np.zeros((squares, 1))
    b = gen.standard_normal((squares, degree)) * TAME ** -np.arange(degree)
    return np.stack([np.convolve(row, [-rho, 1.0]) for row in b])


def with_shared_root(spec: FlowSpec, rho: float, seed: int) -> FlowSpec:
    """``spec`` whose every dimension's squares share the root ρ and whose ε² is at the floor
    (module docstring, regime ``root``); c still comes from the MADE."""
    _, sos = parse_config(spec.config)
    dim, last = spec.config["dim"], _last_layer(spec)
    weight, bias = np.array(spec.params[f"{last}.weight"]), np.array(spec.params[f"{last}.bias"])
    values = np.concatenate([root_coefficients(rho, sos.degree, sos.squares, rng("sos root", salt(), seed)).ravel(),
                             [ROOT_RAW_EPS]])
    for j, value in enumerate(values, start=1):
        weight[j * dim:(j + 1) * dim] = 0.0
        bias[j * dim:(j + 1) * dim] = value
    return FlowSpec(spec.kind, spec.config, {**spec.params, f"{last}.weight": weight, f"{last}.bias": bias})


def in_regime(spec: FlowSpec, regime: str, rho: float, seed: int) -> FlowSpec:
    return tamed(spec) if regime == "init" else with_shared_root(spec, rho, seed)


@st.composite
def _configs(draw: Any) -> dict[str, Any]:
    return {**draw(autoregressive.made_configs()), "degree": draw(axis("degree", DEGREES)),
            "squares": draw(axis("squares", SQUARES))}


@register_specs(KIND, large=LARGE)
def _sos():
    return st.builds(in_regime, from_configs(KIND, _configs()), axis("regime", REGIMES),
                     st.floats(-ROOT_RANGE, ROOT_RANGE), SEEDS)


declare_axes(KIND, dim=range(1, 7), order=autoregressive.ORDER_CHOICES, hidden=autoregressive.HIDDEN,
             activation=sorted(autoregressive.ACTIVATIONS), context_dim=autoregressive.CONTEXT_DIMS,
             degree=DEGREES, squares=SQUARES, regime=REGIMES)


# ----------------------------------------------------------------------------- family properties

def _rounded(values: np.ndarray, dtype: str) -> np.ndarray:
    return np.asarray(values, dtype=dtype).astype(np.float64)


def _one_entry_rows(base: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Rows (D·n, D): block d moves entry d of ``base`` through ``points``, the others stay."""
    dim = base.shape[0]
    rows = np.tile(base, (dim, len(points), 1))
    rows[np.arange(dim), :, np.arange(dim)] = points
    return rows.reshape(dim * len(points), dim)


def _triangular_logdet(spec: FlowSpec, x: np.ndarray, context: np.ndarray | None) -> np.ndarray:
    """Σ_d log p_d(x_d) from the reference's laws: the exact log|det| of the triangular Jacobian (its
    slogdet by LU would pivot off the tiny diagonal onto the O(1) entries ∂c_d/∂x_j and lose κ·ε)."""
    laws = [entry_laws(spec, row, None if context is None else context[i]) for i, row in enumerate(x)]
    return np.array([np.sum(sos_log_integrand(row, a, eps2)) for row, (_, a, eps2) in zip(x, laws)])


@prop("sos_monotone", requires=["black_box", "parameters"], kinds=declares(LAW))
def sos_monotone(ctx: CheckContext) -> None:
    """Strictly monotone where the squares share a root (module docstring): each z_d along a grid
    through ρ in x_d alone never decreases by more than the forward row, increases wherever the
    reference's increases by more than twice that, and log|det| is finite, ≥ D·log EPS_FLOOR (up to
    the log-det row) and equal to the reference's."""
    spec = ctx.draw_spec()
    rho = ctx.draw(st.floats(-ROOT_RANGE, ROOT_RANGE), "rho")
    spec = with_shared_root(spec, rho, ctx.draw(SEEDS, "root seed"))
    dim = event_size(spec)
    base = ctx.draw_input(spec, (0.1, 1.0), batch=1)[0]
    x = _rounded(_one_entry_rows(base, rho + GRID), ctx.dtype)
    one = ctx.draw_context(spec, 1)
    c = None if one is None else np.repeat(one, len(x), axis=0)
    z, logdet = (np.asarray(v, np.float64) for v in ctx.adapter.forward(ctx.instantiate(spec), x, c))
    z_ref, ld_ref = reference.forward(spec, x, c), _triangular_logdet(spec, x, c)
    pick = np.arange(dim).repeat(len(GRID))
    along, along_ref = (np.diff(v[np.arange(len(x)), pick].reshape(dim, len(GRID)), axis=1) for v in (z, z_ref))
    slack = ctx.tol("forward", dim) * max(1.0, float(np.max(np.abs(z_ref))))
    ctx.record(float(max(0.0, -along.min())), slack)
    ctx.require(bool(along.min() >= -slack), f"z_d decreases by {-along.min():.3e} along x_d")
    ctx.require(bool(np.all(along[along_ref > 2.0 * slack] > 0.0)), "z_d does not increase where the reference's does")
    ctx.require(bool(np.all(np.isfinite(logdet))), "log|det| is not finite through the shared root")
    ctx.require(bool(logdet.min() >= dim * np.log(EPS_FLOOR) - ctx.tol("logdet", dim)),
                f"log|det| {logdet.min():.6g} is below D·log EPS_FLOOR = {dim * np.log(EPS_FLOOR):.6g}")
    ctx.assert_close(logdet, ld_ref, "logdet", dim, "log|det| through the shared root")


def _backward_errors(spec: FlowSpec, x: np.ndarray, z: np.ndarray, context: np.ndarray | None) -> np.ndarray:
    """|f(x)_d − z_d| / (|c_d| + |x_d|·Σ_m |q_m||x_d|^m + 1) per sample and entry (module docstring)."""
    out = np.empty_like(x)
    for i, row in enumerate(x):
        c, a, eps2 = entry_laws(spec, row, None if context is None else context[i])
        powers = np.abs(row)[:, None] ** np.arange(2 * a.shape[-1] - 1)
        scale = np.abs(c) + np.abs(row) * np.sum(np.abs(integrand_coefficients(a, eps2)) * powers, axis=-1) + 1.0
        out[i] = np.abs(sos_value(row, c, a, eps2) - z[i]) / scale
    return out


@prop("sos_inverse_large", requires=["black_box", "parameters", "inverse"], kinds=declares(LAW))
def sos_inverse_large(ctx: CheckContext) -> None:
    """At input magnitudes 10 … 1000, f⁻¹ of the reference's z (rounded to the dtype) has, entry by
    entry, a backward error within the inverse row (module docstring)."""
    spec = ctx.draw_spec()
    x = ctx.draw_input(spec, INVERSE_MAGNITUDES, name="inverse magnitude")
    c = ctx.draw_context(spec)
    z = _rounded(reference.forward(spec, x, c), ctx.dtype)
    x_hat = np.asarray(ctx.adapter.inverse(ctx.instantiate(spec), z, c), np.float64)
    ctx.require(bool(np.all(np.isfinite(x_hat))), "f⁻¹(z) is not finite")
    worst = float(np.max(_backward_errors(spec, x_hat, z, c)))
    tol = ctx.tol("inverse", event_size(spec))
    ctx.record(worst, tol)
    ctx.require(worst <= tol, f"backward error of f⁻¹ {worst:.3e} > tolerance {tol:.1e} at large magnitudes")
