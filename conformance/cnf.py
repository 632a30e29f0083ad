"""Continuous normalizing flow ``cnf``: spec strategies and the estimator and adjoint properties.

Strategies (small: every reference value is an autograd-traced DOP853 solve): D ∈ {1, 2, 3} (axis
``dim``), one hidden layer of width 1…8, ``activation`` tanh or softplus, ``adjoint`` off or on (an
axis, so that the generic gradient properties hold ``odeint_adjoint``'s gradients to the reference's
autograd through its solver, d/dlog_T included), T = exp(log_T) ∈ [0.2, 1], dopri5 at the dtype's
default tolerance (√ε/64, keys left out: :func:`cnf_configs`) and ``logdet = "exact"`` (the generic
properties compare deterministic values).

Every value of the kind carries the solver's error, which its local error control keeps near
rtol = atol = √ε/64 per step but which accumulates over the steps: the one table has a row ``cnf`` for
it (``conformance/tolerances.py``, its ``why`` gives the derivation). Batch independence holds only to
that row too: a batched adaptive solve picks one step sequence for the whole batch.

Properties of the kind:

1. ``cnf_estimate_exact`` (white-box, hook ``logdet_estimate(x, probe)``): for given probes ε the
   implementation's estimate equals the reference's ∫₀ᵀ εᵀ(∂v/∂x)ε dt, integrated in the reference as
   an augmented state (exact per probe, like the residual family's ``logdet_estimate(x, v, n)``). An
   estimator that draws a new probe at every solver step is unbiased but fails here.
2. ``cnf_forward_probes`` (white-box, hooks ``logdet_noise`` and ``reseed``, ``train_eval``): the
   probes a training forward draws (replayed by ``logdet_noise`` after the same reseed) follow the
   configured ``probe`` (Rademacher entries all ±1, Gaussian ones not), and the forward's log-det is
   the reference's estimate for them: both distributions give unbiased estimates, so the statistical
   property cannot tell a config whose probe is ignored.
3. ``cnf_hutchinson_unbiased`` (black-box, ``train_eval``): the mean of n training-mode forward
   log-dets (``logdet = "hutchinson"``, Gaussian or Rademacher probes) at one point equals the exact
   ∫ tr, within a Bernstein half-width at a false-alarm rate of ``stats.per_example_alpha()`` (1e-6
   per test) plus the solve's allowance (the ``cnf`` row, twice: the estimates' and the target's
   solves). For a fixed trajectory the estimate is εᵀMε with M = ∫ ∂v/∂x dt
   (``extras["jacobian_integral"]``), whose sub-gamma constants are exact: Gaussian ε:
   Σλᵢ(gᵢ² − 1) with λ the eigenvalues of sym(M), v = 2Σλᵢ², c = 2 max|λᵢ| (a weighted χ²); Rademacher
   ε: bounded by Σ_{i≠j}|Sᵢⱼ|, variance 2(‖S‖²_F − ΣSᵢᵢ²), c = bound/3. The smallest detectable bias is
   twice the allowed deviation; the property states it and the bias of a known mistake (the
   estimate of the *first* evaluation's Jacobian only, T·εᵀJ(0)ε) against it.
4. ``cnf_adjoint_matches_backprop`` (black-box, ``grad``): gradients of Σ w·z + Σ u·log|det| with
   respect to every parameter (log_T included: d/dT) and x by ``odeint_adjoint`` equal those by
   backpropagation through the solver, at the ``grad`` row plus the solver's.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st

from flowspec.reference import cnf as R
from flowspec.spec import FlowSpec

from . import stats
from .covering import axis, declare_axes
from .property import CheckContext, PropertyFailure, prop
from .seeding import rng
from .strategies import SEEDS, config, from_configs, probes, register_specs, sizes

KINDS = ("cnf",)
BOOLS = (False, True)
STAT_OUTPUTS = 256  # Hutchinson estimates per statistical test (one batched solve)


def cnf_configs(logdet: str = "exact", probe: Any = None) -> st.SearchStrategy:
    """Small cnf configs (module docstring). The solver keys ``method``, ``rtol`` and ``atol`` (and
    ``probe`` where no estimate is drawn) are left out, i.e. at their defaults: writing the default
    values would only make ``config_defaults_match_reference`` recompute the reference (a traced solve
    and its Jacobian) once more per key; their bad values are refused in ``tests/test_cnf.py``."""
    probes = {} if probe is None else {"probe": probe}
    return config(shape=st.tuples(sizes(1, 3, "dim")).map(list), hidden=st.tuples(sizes(1, 8)).map(list),
                  activation=axis("activation", R.ACTIVATIONS), logdet=logdet, adjoint=axis("adjoint", BOOLS),
                  **probes)


@register_specs("cnf")
def _cnf():
    return from_configs("cnf", cnf_configs())


declare_axes("cnf", dim=range(1, 4), activation=R.ACTIVATIONS, adjoint=BOOLS, probe=R.PROBES)


def _probes(ctx: CheckContext, spec: FlowSpec, count: int) -> np.ndarray:
    return probes(ctx, R.vector_shape(spec.config), R.setting(spec.config, "probe"), count, "cnf probes")


def _with(spec: FlowSpec, **changes: Any) -> FlowSpec:
    return FlowSpec(spec.kind, {**spec.config, **changes}, spec.params)


# ----------------------------------------------------------------------------- 1. per probe

@prop("cnf_estimate_exact", requires=["white_box", "logdet_estimate"], kinds=KINDS)
def cnf_estimate_exact(ctx: CheckContext) -> None:
    """For given probes ε the estimate equals the reference's ∫₀ᵀ εᵀ(∂v/∂x)ε dt (module docstring)."""
    spec = ctx.draw(from_configs("cnf", cnf_configs("hutchinson", axis("probe", R.PROBES))), "spec")
    x = ctx.draw_input(spec, batch=2)
    probes = _probes(ctx, spec, 2)
    actual = ctx.adapter.call_hook(ctx.load(spec), "logdet_estimate", x, probes)
    _assert_estimates(ctx, spec, x, probes, actual, "for given probes")


def _assert_estimates(ctx: CheckContext, spec: FlowSpec, x: np.ndarray, probes: np.ndarray, actual: Any,
                      what: str) -> None:
    """``actual`` equals the reference's ∫₀ᵀ εᵀ(∂v/∂x)ε dt per sample for ``probes``."""
    expected = np.array([float(R.logdet_estimate(spec, x[i], probes[i])) for i in range(len(x))])
    scale = max(1.0, float(np.max(np.sum(probes * probes, axis=1))))  # |εᵀJε| ≤ ‖J‖·‖ε‖²
    ctx.assert_close(np.asarray(actual) / scale, expected / scale, "estimate", int(x.shape[1]),
                     f"∫ εᵀ(∂v/∂x)ε dt {what} (relative to ‖ε‖² = {scale:.3g})")


@prop("cnf_forward_probes", requires=["white_box", "train_eval", "reseed", "logdet_noise"], kinds=KINDS)
def cnf_forward_probes(ctx: CheckContext) -> None:
    """A training-mode Hutchinson forward draws probes of the configured distribution and uses them:
    after the same reseed the hook ``logdet_noise`` returns the forward's probes; Rademacher probes'
    entries are all ±1 and Gaussian ones' are not (all ±1 has probability 0); the forward's log-det
    is the reference's estimate for those probes (module docstring)."""
    spec = ctx.draw(from_configs("cnf", cnf_configs("hutchinson", axis("probe", R.PROBES))), "spec")
    x = ctx.draw_input(spec, batch=2)
    flow = ctx.load(spec)
    ctx.adapter.set_training(flow, True)
    seed = ctx.draw(SEEDS, "noise seed")
    ctx.adapter.reseed(seed)
    probes = np.asarray(ctx.adapter.call_hook(flow, "logdet_noise", len(x)))
    probe = R.setting(spec.config, "probe")
    signs = bool(np.all(np.abs(probes) == 1.0))
    ctx.require(signs == (probe == "rademacher"), f"probe = {probe!r}, but the forward's probes "
                                                  f"{'are' if signs else 'are not'} all ±1: {probes.tolist()}")
    ctx.adapter.reseed(seed)
    _, logdet = ctx.adapter.forward(flow, x)
    _assert_estimates(ctx, spec, x, probes, logdet, "of the training forward for its own probes")


# ----------------------------------------------------------------------------- 2. unbiasedness

def subgamma_constants(m: np.ndarray, probe: str) -> tuple[float, float]:
    """(v, c) of εᵀMε − tr M (module docstring)."""
    sym = 0.5 * (m + m.T)
    if probe == "gaussian":
        lam = np.linalg.eigvalsh(sym)
        return float(2.0 * np.sum(lam * lam)), float(2.0 * np.max(np.abs(lam)))
    off = sym - np.diag(np.diag(sym))
    return float(2.0 * np.sum(off * off)), float(np.sum(np.abs(off))) / 3.0


@prop("cnf_hutchinson_unbiased", requires=["black_box", "train_eval"], kinds=KINDS)
def cnf_hutchinson_unbiased(ctx: CheckContext) -> None:
    """The mean of training-mode Hutchinson log-dets at a point is the exact ∫ tr (module docstring)."""
    spec = ctx.draw(from_configs("cnf", cnf_configs("hutchinson", axis("probe", R.PROBES))), "spec")
    x = ctx.draw_input(spec, batch=1)
    flow = ctx.instantiate(spec)
    ctx.adapter.set_training(flow, True)
    _, estimates = ctx.adapter.forward(flow, np.repeat(x, STAT_OUTPUTS, axis=0))
    m = R.jacobian_integral(spec, x[0])
    target = float(np.trace(m))
    v, c = subgamma_constants(m, R.setting(spec.config, "probe"))
    alpha = stats.per_example_alpha()
    halfwidth = stats.subgamma_halfwidth(v, c, STAT_OUTPUTS, alpha)
    size = int(x.shape[1])
    allowance = 2.0 * ctx.tol("logdet", size) * max(1.0, abs(target) + np.sqrt(v))
    allowed = halfwidth + allowance
    mean = float(np.mean(estimates))
    first = float(R.end_time(spec)) * float(np.trace(R.velocity(spec, x[0], 0.0, True)[1]))
    ctx.record(abs(mean - target), allowed)
    if not abs(mean - target) <= allowed:
        raise PropertyFailure(
            f"mean of {STAT_OUTPUTS} Hutchinson log-dets {mean:.6g} vs exact ∫ tr {target:.6g}: deviation "
            f"{abs(mean - target):.3e} > {allowed:.3e} (Bernstein half-width {halfwidth:.3e} at a false-alarm rate "
            f"{alpha:.1e}, solve allowance {allowance:.1e}); smallest detectable bias {2 * allowed:.3e}, bias of "
            f"estimating with the first evaluation's Jacobian only {first - target:+.3e}", abs(mean - target), allowed)


# ----------------------------------------------------------------------------- 3. adjoint

@prop("cnf_adjoint_matches_backprop", requires=["black_box", "grad"], kinds=KINDS)
def cnf_adjoint_matches_backprop(ctx: CheckContext) -> None:
    """Gradients by ``odeint_adjoint`` equal those by backpropagation through the solver, for every
    parameter (log_T: d/dT) and the input (module docstring)."""
    spec = ctx.draw_spec()
    x = ctx.draw_input(spec, batch=2)
    z_weight = ctx.draw(st.builds(lambda s: rng("cnf weights", s).standard_normal(x.shape), SEEDS), "z_weight")
    ld_weight = ctx.draw(st.builds(lambda s: rng("cnf weights", s).standard_normal(2), SEEDS), "logdet_weight")
    grads = {}
    for adjoint in BOOLS:
        flow = ctx.instantiate(_with(spec, adjoint=adjoint))
        grads[adjoint] = ctx.adapter.vjp(flow, x, z_weight, ld_weight)
    (p_adj, x_adj), (p_bp, x_bp) = grads[True], grads[False]
    ctx.require(set(p_adj) == set(p_bp) and "log_T" in p_bp,
                f"gradients by name differ: adjoint {sorted(p_adj)}, backprop {sorted(p_bp)}")
    size = int(x.shape[1])
    ctx.assert_close(x_adj, x_bp, "grad", size, "∂L/∂x, adjoint vs backprop")
    for name in sorted(p_bp):
        ctx.assert_close(p_adj[name], p_bp[name], "grad", size, f"∂L/∂{name}, adjoint vs backprop")
