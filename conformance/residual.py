"""Residual blocks (``residual_mlp``, ``residual_conv``): spec strategies and the estimator properties.

The generic properties run on specs with ``logdet="exact"`` (the forward's log-det is then
deterministic and comparable). The properties here hold the stochastic estimators to the reference
(:mod:`flowspec.reference.residual`, Theorems 1–2 of Residual Flows):

1. ``roulette_estimate_exact`` (white-box, hook ``logdet_estimate``): est(v, n) equals the reference's
   for every n ≤ M, and the exact finite identity Σ p(n)·est(v, n) + P(N > M)·est(v, M) = S_{m+M}(v)
   holds for both, with p(n) the named distribution's; ``roulette_sampler_fits`` (hook
   ``roulette_draws``): the implementation's draws of N fit p(N) exactly (support and per-bin
   binomial laws).
2. ``roulette_unbiased_statistical`` (black-box): the median of means of many forward log-dets lies
   within a Chebyshev–median-of-means interval of log|det| (finite-difference Jacobian), at a
   false-alarm rate ≤ 1e-6 per test, on configurations whose variance the reference computes and
   finds finite (otherwise *inconclusive*), with power to detect half the bias of the truncated
   series.
3. ``neumann_gradient_exact`` (white-box, hook ``logdet_estimate_vjp``): the expectation over N of the
   Neumann gradient (finite identity, as per-sample weights) equals the reference's partial Neumann
   sum for parameters and input; single draws equal the reference's; the reference's partial sums
   converge to vᵀ(I + J)⁻¹(∂J/∂θ)v.
4. ``backward_in_forward_matches`` (white-box): gradients with backward-in-forward equal those
   without, and the reference's, for the same v and n, with per-sample and with uniform weights.
6. ``inverse_contraction`` (black-box, hook ``fixed_point_errors``): the fixed-point error contracts
   at the rate coeff^L and the inverse's backward error is small relative to ‖y‖.
7. ``noncontractive_config_rejected`` and ``inverse_nonconvergence_reported``.

Norm bounds (5) are in :mod:`.lipschitz`.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import assume, strategies as st

from flowspec import reference, registry
from flowspec.errors import ConvergenceError
from flowspec.reference import residual as R
from flowspec.reference.norms import spectral_norm
from flowspec.reference.lipschitz import ACTIVATIONS
from flowspec.spec import FlowSpec

from . import finite_diff, stats, strategies
from .property import CheckContext, Inconclusive, PropertyFailure, prop
from .strategies import SEEDS, config, event_size, from_configs, register_specs, sizes

KINDS = ("residual_mlp", "residual_conv")
DRAWS_CHECKED = 6  # est(v, n) is compared for n = n_min, …, n_min + DRAWS_CHECKED
SAMPLER_DRAWS = 20000
STATISTICAL_BUDGET = 30000  # estimates per hypothesis example in the statistical test
CANDIDATE_POINTS = 8


# ----------------------------------------------------------------------------- strategies

def _layout(kind: str) -> st.SearchStrategy:
    """Sizes and architecture of a small block of ``kind`` (D ≤ 6 for MLPs, C ≤ 2 and H, W ≤ 4 for CNNs)."""
    common = dict(activation=st.sampled_from(ACTIVATIONS), coeff=st.sampled_from([0.5, 0.9, 0.97]))
    if kind == "residual_mlp":
        @st.composite
        def mlp(draw) -> dict:
            hidden = draw(st.lists(sizes(1, 8), min_size=0, max_size=2))
            order = draw(st.sampled_from([2.0, 1.0, float("inf")]))
            return {**draw(config(shape=st.lists(sizes(1, 6), min_size=1, max_size=1), hidden=st.just(hidden),
                                  **common)), "orders": [order] * (len(hidden) + 1)}
        return mlp()

    @st.composite
    def cnn(draw) -> dict:
        hidden = draw(st.lists(sizes(1, 4), min_size=0, max_size=2))
        kernels = draw(st.one_of(st.just(None), st.lists(st.sampled_from([1, 3]), min_size=len(hidden) + 1,
                                                         max_size=len(hidden) + 1)))
        cfg = draw(config(shape=st.tuples(sizes(1, 2), sizes(1, 4), sizes(1, 4)).map(list), hidden=st.just(hidden),
                          **common))
        return cfg if kernels is None else {**cfg, "kernels": kernels}
    return cnn()


ROULETTE = st.one_of(
    st.tuples(st.just("geometric"), st.sampled_from([0.3, 0.5, 0.7])),
    st.tuples(st.just("poisson"), st.sampled_from([1.0, 2.0, 3.0])),
)


def roulette_configs(kind: str, **fixed: Any) -> st.SearchStrategy:
    """Configs of ``kind`` with the roulette estimator (any p(N), exact terms, probe, gradient mode)."""
    @st.composite
    def build(draw) -> dict:
        dist, param = draw(ROULETTE)
        return {**draw(_layout(kind)), "logdet": "roulette", "dist": dist, "dist_param": param,
                "n_exact_terms": draw(st.integers(0, 3)), "probe": draw(st.sampled_from(R.PROBES)),
                "neumann_grad": draw(st.booleans()), "grad_in_forward": draw(st.booleans()), **fixed}
    return build()


def _exact_specs(kind: str) -> st.SearchStrategy:
    return from_configs(kind, _layout(kind).map(lambda c: {**c, "logdet": "exact"}))


register_specs("residual_mlp")(lambda: _exact_specs("residual_mlp"))
register_specs("residual_conv")(lambda: _exact_specs("residual_conv"))


def _spec(ctx: CheckContext, configs: st.SearchStrategy) -> FlowSpec:
    return ctx.draw(from_configs(ctx.kind, configs), "spec")


def _with(spec: FlowSpec, **changes: Any) -> FlowSpec:
    return FlowSpec(spec.kind, {**spec.config, **changes}, spec.params)


def _probes(ctx: CheckContext, spec: FlowSpec, count: int) -> np.ndarray:
    shape = (count,) + R.shape_of(spec.config)
    return ctx.draw(strategies.weights(shape), "probes")


def _draw_range(spec: FlowSpec) -> np.ndarray:
    n_min = R.roulette_of(spec.config).support_min
    return np.arange(n_min, n_min + DRAWS_CHECKED + 1)


def _jacobian(spec: FlowSpec, x: np.ndarray) -> np.ndarray:
    return np.asarray(R.g_jacobian(spec, x))


# ----------------------------------------------------------------------------- 1. exact estimator

@prop("roulette_estimate_exact", requires=["white_box", "logdet_estimate"], kinds=KINDS)
def roulette_estimate_exact(ctx: CheckContext) -> None:
    """For a probe v, est(v, n) equals the reference's for n = n_min … M, and both satisfy the exact
    finite identity Σ_{n≤M} p(n)·est(v, n) + P(N > M)·est(v, M) = S_{m+M}(v) (Theorem 1, eq. 6), p(n)
    being the named distribution's."""
    spec = _spec(ctx, roulette_configs(ctx.kind))
    x = ctx.draw_input(spec, batch=2)
    v = _probes(ctx, spec, 2)
    ns = _draw_range(spec)
    rows = np.repeat(np.arange(2), len(ns))
    n_rows = np.tile(ns, 2)
    flow = ctx.load(spec)
    actual = ctx.adapter.call_hook(flow, "logdet_estimate", x[rows], v[rows], n_rows)
    expected = R.logdet_estimates(spec, x[rows], v[rows], n_rows)
    size = event_size(spec)
    ctx.assert_close(actual, expected, "estimate", size, "est(v, n) for n = n_min … M")
    roulette, m, M = R.roulette_of(spec.config), R.exact_terms(spec.config), int(ns[-1])
    for i in range(2):
        partial = np.sum(R.hutchinson_terms(_jacobian(spec, x[i]), v[i].reshape(-1), m + M))
        for name, values in (("reference", expected), ("implementation", actual)):
            combined = R.expectation_over_n(list(values[rows == i]), roulette, M)
            ctx.assert_close(combined, partial, "estimate", size, f"finite identity of the {name}'s est(v, n)")


@prop("roulette_sampler_fits", requires=["black_box", "roulette_draws"], kinds=KINDS)
def roulette_sampler_fits(ctx: CheckContext) -> None:
    """The implementation's draws of N fit the named p(N) (geometric from 1, Poisson from 0): every
    draw in the support and each count within its exact binomial law (false alarm ≤ 1e-6 per test)."""
    spec = _spec(ctx, roulette_configs(ctx.kind))
    seed = ctx.draw(SEEDS, "sampler seed")
    draws = np.asarray(ctx.adapter.call_hook(ctx.instantiate(spec), "roulette_draws", SAMPLER_DRAWS, seed))
    roulette = R.roulette_of(spec.config)
    ctx.require(draws.shape == (SAMPLER_DRAWS,), f"asked for {SAMPLER_DRAWS} draws, got shape {draws.shape}")
    problems = stats.discrete_fit_failures(draws, roulette.pmf, roulette.support_min, stats.per_example_alpha())
    ctx.require(not problems, f"draws of N do not fit the {roulette.dist}({roulette.param}) p(N): " + "; ".join(problems))
    ctx.record(0.0, 0.0)


# ----------------------------------------------------------------------------- 2. unbiasedness, statistical

def statistical_configs(kind: str) -> st.SearchStrategy:
    """Configs whose roulette variance the constraint keeps finite: two layers at coeff 0.8 give
    ρ(J_g)² ≤ 0.8⁴ < 0.5 = 1 − q for the geometric q = 0.5 (so a draw N off by one biases the estimate
    by half the truncated series' bias, and weights 1/P(N > k) by all of it). No exact terms, so that
    the truncated series has a bias worth detecting."""
    @st.composite
    def build(draw) -> dict:
        if kind == "residual_mlp":
            layout = {"shape": [draw(sizes(3, 6))], "hidden": [draw(sizes(4, 8))]}
        else:
            layout = {"shape": [draw(sizes(1, 2)), draw(sizes(2, 3)), draw(sizes(2, 3))], "hidden": [draw(sizes(1, 3))]}
        return {**layout, "activation": draw(st.sampled_from(["lipswish", "elu"])), "coeff": 0.8,
                "logdet": "roulette", "dist": "geometric", "dist_param": 0.5, "n_exact_terms": 0,
                "probe": draw(st.sampled_from(R.PROBES))}
    return build()


def check_unbiased(ctx: CheckContext, spec: FlowSpec, points: np.ndarray) -> None:
    """The statistical test of property 2 for ``spec`` at the best of ``points`` (see the module docstring).

    For each point, the reference computes from the implementation's finite-difference Jacobian the
    estimator's variance V (inconclusive if not certified finite), the part V_N a draw of N shared by a
    batch would not average away, and the bias of the truncated m-term series. Groups are separate
    forward calls, so the bound Var(group mean) ≤ (V − V_N)/b + V_N holds whether or not N is shared
    within a batch. The point with the largest bias-to-spread ratio is tested; a configuration where
    even that interval is wider than half the truncated series' bias gives the test no power and is
    not used (hypothesis draws another).
    """
    flow = ctx.instantiate(spec)
    alpha = stats.per_example_alpha()
    size = event_size(spec)
    fd_error = ctx.tol("fd_logdet", size)
    best = None
    for point in points:
        x = point[None]
        jac_f = finite_diff.jacobian(lambda p: ctx.adapter.forward(flow, p)[0], x, ctx.dtype,
                                     registry.get(spec.kind).domain)[0]
        jac = jac_f - np.eye(size)
        report = R.roulette_variance(jac, spec.config)
        if not report.finite:
            raise Inconclusive(f"no finite-variance guarantee: {report.why}")
        bias = report.mean - float(np.sum(R.trace_terms(jac, R.exact_terms(spec.config))))
        plan = stats.mom_plan(
            lambda b: (report.variance_upper - report.n_variance_upper) / b + report.n_variance_upper,
            STATISTICAL_BUDGET, alpha)
        if best is None or abs(bias) / plan.halfwidth > abs(best[1]) / best[2].halfwidth:
            best = (x, bias, plan, report)
    x, bias, plan, report = best
    assume(plan.halfwidth + fd_error <= abs(bias) / 2.0)
    batch = np.repeat(x, plan.group_size, axis=0)
    means = [float(np.mean(ctx.adapter.forward(flow, batch)[1])) for _ in range(plan.groups)]
    center = stats.median_of_means(np.array(means))
    error = abs(center - report.mean)
    allowed = plan.halfwidth + fd_error
    ctx.record(error, allowed)
    if error > allowed:
        raise PropertyFailure(
            f"median of {plan.groups} means of {plan.group_size} roulette estimates is {center:.6g}, "
            f"log|det| = {report.mean:.6g}: off by {error:.3g} > {allowed:.3g} (false-alarm rate {alpha:.1e}; "
            f"variance ≤ {report.variance_upper:.3g}; the truncated series' bias is {bias:.3g})", error, allowed)


@prop("roulette_unbiased_statistical", requires=["black_box"], kinds=KINDS)
def roulette_unbiased_statistical(ctx: CheckContext) -> None:
    """The roulette log-det is unbiased: median of means within its Chebyshev–median interval around
    log|det| of the implementation's finite-difference Jacobian (false alarm ≤ 1e-6 per test, N drawn
    per sample or not; inconclusive where the reference finds no finite variance)."""
    spec = _spec(ctx, statistical_configs(ctx.kind))
    points = strategies.sample_array(spec, ctx.draw(SEEDS, "points"), 1.0, CANDIDATE_POINTS)
    check_unbiased(ctx, spec, points)


# ----------------------------------------------------------------------------- 3. Neumann gradients

def _vjp(ctx: CheckContext, flow: Any, x: np.ndarray, v: np.ndarray, n: np.ndarray, z_weight: np.ndarray,
         logdet_weight: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    return ctx.adapter.call_hook(flow, "logdet_estimate_vjp", x, v, n, z_weight, logdet_weight)


def _reference_vjp(spec: FlowSpec, x: np.ndarray, v: np.ndarray, n: np.ndarray, z_weight: np.ndarray,
                   logdet_weight: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Σ z_weight·f(x) (exact) + Σ logdet_weight·(estimator's gradient for v, n), by the reference."""
    g_params, g_x = reference.vjp(spec, x, z_weight, np.zeros(x.shape[0]))
    g_x = g_x.copy()
    for i in range(x.shape[0]):
        p_i, x_i = R.gradient_estimate(spec, x[i], v[i], int(n[i]))
        g_x[i] += logdet_weight[i] * x_i
        g_params = {name: g_params[name] + logdet_weight[i] * p_i[name] for name in g_params}
    return g_params, g_x


def _compare_grads(ctx: CheckContext, actual: tuple, expected: tuple, size: int, what: str) -> None:
    (a_params, a_x), (e_params, e_x) = actual, expected
    ctx.require(set(a_params) == set(e_params), f"{what}: gradient names {sorted(a_params)} ≠ {sorted(e_params)}")
    ctx.assert_close(a_x, e_x, "estimate", size, f"{what}: ∂/∂x")
    for name in sorted(e_params):
        ctx.assert_close(a_params[name], e_params[name], "estimate", size, f"{what}: ∂/∂{name}")


def _neumann_terms(lip: float, tol: float) -> int:
    """Terms after which the Neumann series' remainder ‖J‖^T/(1 − ‖J‖) is below tol/1000."""
    if lip == 0.0:
        return 1
    return max(1, int(np.ceil(np.log(1e-3 * tol * (1.0 - lip)) / np.log(lip))))


def _neumann_partial(spec: FlowSpec, jac: np.ndarray, v: np.ndarray, terms: int) -> np.ndarray:
    """Σ_{j<terms} (−1)^j (Jᵀ)^j v."""
    rows = R.probe_powers(jac, v, terms - 1)
    return ((-1.0) ** np.arange(terms)) @ rows


@prop("neumann_gradient_exact", requires=["white_box", "logdet_estimate_vjp"], kinds=KINDS)
def neumann_gradient_exact(ctx: CheckContext) -> None:
    """The Neumann gradient series (Theorem 2, eq. 8): single draws equal the reference's; its
    expectation over N (finite identity, as per-sample weights p(n) and P(N > M)) equals the partial
    Neumann sum wᵀ(∂J/∂θ)v, w = Σ_{j≤m+M} (−1)^j (Jᵀ)^j v, for params and x; and the reference's partial
    sums tend to vᵀ(I + J)⁻¹(∂J/∂θ)v."""
    spec = _spec(ctx, roulette_configs(ctx.kind, neumann_grad=True))
    x = ctx.draw_input(spec, batch=1)
    v = _probes(ctx, spec, 1)
    flow = ctx.load(spec)
    size = event_size(spec)
    roulette, m = R.roulette_of(spec.config), R.exact_terms(spec.config)
    ns = _draw_range(spec)
    M = int(ns[-1])
    k = len(ns)
    weights = np.array([roulette.pmf(int(n)) for n in ns])
    weights[-1] += roulette.tail(M + 1)
    zeros = np.zeros((k,) + x.shape[1:])
    params, g_x = _vjp(ctx, flow, np.repeat(x, k, 0), np.repeat(v, k, 0), ns, zeros, weights)
    jac = _jacobian(spec, x[0])
    v_flat = v[0].reshape(-1)
    expected = R.bilinear_gradient(spec, x[0], _neumann_partial(spec, jac, v_flat, m + M + 1), v_flat)
    _compare_grads(ctx, (params, g_x.sum(0)), expected, size, "E_N of the Neumann gradient (finite identity)")
    single = _vjp(ctx, flow, x, v, ns[-1:], zeros[:1], np.ones(1))
    _compare_grads(ctx, single, _reference_vjp(spec, x, v, ns[-1:], zeros[:1], np.ones(1)), size,
                   f"Neumann gradient for n = {M}")
    lip = float(spectral_norm(jac))
    limit = R.bilinear_gradient(spec, x[0], _neumann_partial(spec, jac, v_flat, _neumann_terms(lip, ctx.tol("grad", size))), v_flat)
    _compare_grads(ctx, limit, R.neumann_exact(spec, x[0], v[0]), size, "reference: Neumann series vs vᵀ(I + J)⁻¹(∂J)v")


# ----------------------------------------------------------------------------- 4. backward-in-forward

@prop("backward_in_forward_matches", requires=["white_box", "logdet_estimate_vjp"], kinds=KINDS)
def backward_in_forward_matches(ctx: CheckContext) -> None:
    """Gradients of Σ w·z + Σ u·estimate with backward-in-forward (eq. 9) equal those without it and
    the reference's, for the same probes and draws, with per-sample weights u and with uniform ones."""
    spec = _spec(ctx, roulette_configs(ctx.kind))
    batch = 3
    x = ctx.draw_input(spec, batch=batch)
    v = _probes(ctx, spec, batch)
    n = _draw_range(spec)[ctx.draw(st.lists(st.integers(0, DRAWS_CHECKED), min_size=batch, max_size=batch), "n")]
    z_weight = ctx.draw(strategies.weights(x.shape), "z_weight")
    per_sample = ctx.draw(strategies.weights((batch,)), "logdet_weight")
    size = event_size(spec)
    in_forward = ctx.load(_with(spec, grad_in_forward=True))
    after = ctx.load(_with(spec, grad_in_forward=False))
    for label, u in (("per-sample weights", per_sample), ("uniform weights", np.full(batch, per_sample[0]))):
        expected = _reference_vjp(spec, x, v, n, z_weight, u)
        with_bif = _vjp(ctx, in_forward, x, v, n, z_weight, u)
        _compare_grads(ctx, with_bif, _vjp(ctx, after, x, v, n, z_weight, u), size,
                       f"backward-in-forward vs without, {label}")
        _compare_grads(ctx, with_bif, expected, size, f"backward-in-forward vs reference, {label}")


# ----------------------------------------------------------------------------- 6. inverse

@prop("inverse_contraction", requires=["black_box", "inverse", "fixed_point_errors"], kinds=KINDS)
def inverse_contraction(ctx: CheckContext) -> None:
    """The fixed-point iterates x_{k+1} = y − g(x_k) approach x = f⁻¹(y) at least as fast as the
    Lipschitz bound L = coeff^layers allows (‖x_k − x‖ ≤ L^k‖x_0 − x‖ up to rounding), and the inverse's
    backward error ‖f(x̂) − y‖ is small relative to max(‖y‖, 1)."""
    spec = ctx.draw_spec()
    flow = ctx.instantiate(spec)
    x = ctx.draw_input(spec, strategies.large_magnitudes(spec.kind))
    y = ctx.adapter.forward(flow, x)[0]
    iterations = 25
    errors = np.asarray(ctx.adapter.call_hook(flow, "fixed_point_errors", y, x, iterations))
    lip = R.lipschitz_bound(spec)
    size = event_size(spec)
    scale = np.maximum(np.linalg.norm(y.reshape(len(y), -1), axis=1), 1.0)
    slack = ctx.tol("roundtrip", size) * scale / (1.0 - lip)
    bound = lip ** np.arange(iterations + 1)[:, None] * errors[:1] + slack
    worst = float(np.max((errors - bound) / scale))
    ctx.record(max(worst, 0.0), ctx.tol("roundtrip", size))
    if np.any(errors > bound):
        k, i = np.argwhere(errors > bound)[0]
        raise PropertyFailure(f"fixed-point error {errors[k, i]:.3e} after {k} iterations exceeds L^k·e_0 + slack = "
                              f"{bound[k, i]:.3e} (L = {lip:.4f})", worst, ctx.tol("roundtrip", size))
    x_hat = ctx.adapter.inverse(flow, y)
    residual = np.linalg.norm((ctx.adapter.forward(flow, x_hat)[0] - y).reshape(len(y), -1), axis=1) / scale
    ctx.assert_close(residual, np.zeros_like(residual), "roundtrip", size, "backward error ‖f(x̂) − y‖ / max(‖y‖, 1)")


# ----------------------------------------------------------------------------- 7. bad configurations

def _build(ctx: CheckContext, spec: FlowSpec) -> Any:
    if "white_box" in ctx.adapter.capabilities().modes:
        return ctx.load(spec)
    return ctx.adapter.instantiate(spec.kind, spec.config, 0, ctx.dtype, ctx.device)


@prop("noncontractive_config_rejected", requires=["black_box"], kinds=KINDS)
def noncontractive_config_rejected(ctx: CheckContext) -> None:
    """A coefficient ≥ 1 (g not contractive, f not invertible) is refused with an error naming coeff."""
    spec = ctx.draw_spec()
    for coeff in (1.0, 1.5):
        try:
            _build(ctx, _with(spec, coeff=coeff))
        except Exception as exc:  # noqa: BLE001 - which error is checked below
            ctx.require("coeff" in str(exc), f"coeff = {coeff} raised {type(exc).__name__} without naming coeff: {exc}")
            continue
        raise PropertyFailure(f"a {spec.kind} block with coeff = {coeff} was built without an error")
    ctx.record(0.0, 0.0)


@prop("inverse_nonconvergence_reported", requires=["black_box", "inverse"], kinds=KINDS)
def inverse_nonconvergence_reported(ctx: CheckContext) -> None:
    """An inverse stopped by its iteration cap raises an error that carries its residual."""
    spec = _with(ctx.draw_spec(), inverse_max_iter=1, inverse_rtol=1e-12)
    flow = _build(ctx, spec)
    z = ctx.draw_input(spec, latent=True)
    try:
        x = ctx.adapter.inverse(flow, z)
    except ConvergenceError as exc:
        ctx.require(exc.residual > 0 and "residual" in str(exc), f"the error does not report its residual: {exc}")
        ctx.record(0.0, 0.0)
        return
    except Exception as exc:  # noqa: BLE001 - any other error must still name the residual
        ctx.require("residual" in str(exc), f"{type(exc).__name__} without the residual: {exc}")
        ctx.record(0.0, 0.0)
        return
    residual = float(np.max(np.abs(ctx.adapter.forward(flow, x)[0] - z)))
    raise PropertyFailure(f"an inverse capped at one iteration returned silently (residual {residual:.3e})")
