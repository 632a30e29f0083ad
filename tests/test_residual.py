"""Residual blocks: reference identities and documented behaviours the property suite does not reach."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from flowspec import reference
from flowspec.accelerated import from_spec, memory
from flowspec.accelerated.distribution import FlowDistribution
from flowspec.accelerated.lipschitz import LipschitzNormalizer
from flowspec.accelerated.residual import (
    Noise, ResidualConv, ResidualMLP, below_half_ulp, configure_logdet, make_model, residual_blocks, tail_factors,
)
from flowspec.conformance import residual as suite, stats
from flowspec.conformance.property import CheckContext, Inconclusive
from flowspec.conformance.seeding import rng, seed_for
from flowspec.conformance.tolerances import assert_close
from flowspec.errors import ConfigError, ConvergenceError
from flowspec.reference import residual as R
from flowspec.reference.norms import conv_matrix
from flowspec.spec import FlowSpec

MLP = {"shape": [3], "hidden": [6], "coeff": 0.9}
CONV = {"shape": [2, 3, 3], "hidden": [3, 4], "coeff": 0.9}


def _spec(kind: str, key: str, **config) -> FlowSpec:
    base = MLP if kind == "residual_mlp" else CONV
    return reference.init_spec(kind, {**base, **config}, rng("residual-test", key))


def _x(spec: FlowSpec, key: str, batch: int = 1) -> np.ndarray:
    return rng("residual-test", key, "x").standard_normal((batch, *R.shape_of(spec.config)))


# ----------------------------------------------------------------------------- configuration

@pytest.mark.parametrize("cls,layout", [(ResidualMLP, {}), (ResidualConv, {})])
def test_accelerated_defaults_are_the_reference_defaults(cls, layout) -> None:
    config = cls([2, 3, 3] if cls is ResidualConv else [3], [4], **layout).config()
    assert {k: config[k] for k in R.DEFAULTS} == R.DEFAULTS


@pytest.mark.parametrize("coeff", [1.0, 1.5, 0.0, -0.5])
def test_non_contractive_coefficients_are_refused(coeff: float) -> None:
    with pytest.raises(ConfigError, match="coeff"):
        ResidualMLP([3], [4], coeff=coeff)
    with pytest.raises(ConfigError, match="coeff"):
        reference.init_spec("residual_mlp", {**MLP, "coeff": coeff}, rng("residual-test", "coeff"))


@pytest.mark.parametrize("settings,match", [
    ({"logdet": "taylor"}, "estimator"), ({"dist": "uniform"}, "dist"), ({"dist_param": 1.0}, "geometric"),
    ({"dist": "poisson", "dist_param": 0.0}, "Poisson"), ({"logdet": "series", "n_exact_terms": 0}, "n_exact_terms"),
    ({"probe": "sphere"}, "probe"), ({"n_samples": 0}, "n_samples"), ({"inverse_rtol": 2.0}, "inverse_rtol"),
])
def test_bad_estimator_settings_are_refused(settings: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ResidualMLP([3], [4], **settings)


def test_layouts_are_checked() -> None:
    with pytest.raises(ConfigError, match="odd"):
        ResidualConv([1, 3, 3], [2], kernels=[2, 3])
    with pytest.raises(ConfigError, match="orders"):
        reference.init_spec("residual_conv", {**CONV, "orders": [2.0, 2.0, 2.0]}, rng("residual-test", "orders"))
    with pytest.raises(ConfigError, match="orders"):
        ResidualMLP([3], [4], orders=[2.0])


def test_loading_weights_outside_the_constraint_is_refused() -> None:
    spec = _spec("residual_mlp", "outside")
    bad = FlowSpec(spec.kind, spec.config, {**spec.params, "weight0": 10.0 * spec.params["weight0"]})
    with pytest.raises(ConfigError, match="weight0"):
        from_spec(bad)


# ----------------------------------------------------------------------------- reference identities

@pytest.mark.parametrize("dist,param,m", [("geometric", 0.5, 0), ("geometric", 0.3, 2), ("poisson", 2.0, 1)])
def test_finite_identity_for_values_and_gradients(dist: str, param: float, m: int) -> None:
    spec = _spec("residual_mlp", f"identity-{dist}", logdet="roulette", dist=dist, dist_param=param, n_exact_terms=m)
    x, v = _x(spec, "identity")[0], rng("residual-test", "identity", "v").standard_normal(3)
    roulette = R.roulette_of(spec.config)
    jac = np.asarray(R.g_jacobian(spec, x))
    for M in range(roulette.support_min, roulette.support_min + 5):
        ns = range(roulette.support_min, M + 1)
        values = [R.logdet_estimate(spec, x, v, n) for n in ns]
        assert_close(R.expectation_over_n(values, roulette, M), np.sum(R.hutchinson_terms(jac, v, m + M)), "estimate",
                     "float64", 3)
        vectors = [R.neumann_vector(spec.config, jac, v, n) for n in ns]
        partial = ((-1.0) ** np.arange(m + M + 1)) @ R.probe_powers(jac, v, m + M)
        assert_close(R.expectation_over_n(vectors, roulette, M), partial, "estimate", "float64", 3)


def test_neumann_series_tends_to_the_exact_quantity_and_its_trace_to_the_gradient() -> None:
    spec = _spec("residual_mlp", "neumann", logdet="roulette")
    x = _x(spec, "neumann")[0]
    jac = np.asarray(R.g_jacobian(spec, x))
    total_params, total_x = None, np.zeros(3)
    for v in np.eye(3):
        exact = R.neumann_exact(spec, x, v)
        w = ((-1.0) ** np.arange(200)) @ R.probe_powers(jac, v, 199)
        series = R.bilinear_gradient(spec, x, w, v)
        assert_close(series[1], exact[1], "estimate", "float64", 3)
        for name in exact[0]:
            assert_close(series[0][name], exact[0][name], "estimate", "float64", 3, name)
        total_x = total_x + exact[1]
        total_params = exact[0] if total_params is None else {k: total_params[k] + exact[0][k] for k in exact[0]}
    g_params, g_x = R.logdet_gradient(spec, x)
    assert_close(total_x, g_x, "grad", "float64", 3)
    for name in g_params:
        assert_close(total_params[name], g_params[name], "grad", "float64", 3, name)


def _hermite_nodes(dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Hermite nodes and weights for E over v ~ N(0, I): exact for polynomials of degree ≤ 5."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(3)
    grid = np.array(list(itertools.product(nodes, repeat=dim)))
    w = np.prod(np.array(list(itertools.product(weights, repeat=dim))), axis=1) / np.sqrt(2 * np.pi) ** dim
    return grid, w


@pytest.mark.parametrize("probe", ["gaussian", "rademacher"])
def test_variance_formula_against_direct_summation(probe: str) -> None:
    jac = np.array([[0.3, -0.2], [0.25, -0.1]])
    config = {"logdet": "roulette", "dist": "geometric", "dist_param": 0.5, "n_exact_terms": 1, "probe": probe}
    if probe == "gaussian":
        probes, weights = _hermite_nodes(2)
    else:
        probes, weights = np.array(list(itertools.product([-1.0, 1.0], repeat=2))), np.full(4, 0.25)
    roulette = R.roulette_of(config)
    second = 0.0
    for n in range(1, 200):  # the terms decay like (ρ²/(1 − q))^n
        values = np.array([R.estimate_from_jacobian(config, jac, v, n) for v in probes])
        second += roulette.pmf(n) * np.sum(weights * values ** 2)
    report = R.roulette_variance(jac, config)
    assert report.finite
    assert_close(report.variance, second - report.mean ** 2, "estimate", "float64", 2)
    assert report.variance <= report.variance_upper <= report.variance * (1 + 1e-6)


def test_variance_verdicts() -> None:
    geometric = {"logdet": "roulette", "dist": "geometric", "dist_param": 0.5, "n_exact_terms": 2}
    assert R.roulette_variance(0.6 * np.eye(2), geometric).finite  # ρ² = 0.36 < 1 − q
    assert not R.roulette_variance(0.75 * np.eye(2), geometric).finite  # ρ² = 0.5625 > 1 − q
    poisson = {**geometric, "dist": "poisson", "dist_param": 2.0}
    assert not R.roulette_variance(0.01 * np.eye(2), poisson).finite  # infinite for every ρ > 0
    assert R.roulette_variance(np.array([[0.0, 0.5], [0.0, 0.0]]), poisson).finite  # nilpotent: finitely many terms


def test_statistical_property_is_inconclusive_without_a_finite_variance() -> None:
    from flowspec.accelerated.adapter import conformance_adapter

    spec = _spec("residual_mlp", "poisson", logdet="roulette", dist="poisson", dist_param=2.0, n_exact_terms=0)
    ctx = CheckContext(conformance_adapter, "residual_mlp", "float64", "cpu", data=None)
    with pytest.raises(Inconclusive, match="Poisson"):
        suite.check_unbiased(ctx, [spec], _x(spec, "poisson", 2))


def test_series_variance_against_enumeration() -> None:
    """The series' variance over Rademacher probes, enumerated: all 2^D probes are equally likely."""
    jac = np.array([[0.3, -0.2, 0.1], [0.25, -0.1, 0.05], [-0.15, 0.2, 0.2]])
    config = {"logdet": "series", "n_exact_terms": 3, "probe": "rademacher"}
    probes = np.array(list(itertools.product([-1.0, 1.0], repeat=3)))
    values = np.array([R.estimate_from_jacobian(config, jac, v, 0) for v in probes])
    report = R.estimate_variance(jac, config)
    assert_close(report.mean, values.mean(), "estimate", "float64", 3)
    assert_close(R.estimator_mean(jac, config), float(np.sum(R.trace_terms(jac, 3))), "estimate", "float64", 3)
    assert_close(report.variance, values.var(), "estimate", "float64", 3)


def test_surrogate_mean_is_the_expected_neumann_surrogate() -> None:
    """E over v and N of wᵀJv (w the Neumann vector, eq. 8) by the finite identity with basis probes
    (E_v vᵀAv = Σ_i e_iᵀAe_i): tr((I + J)⁻¹J), which is not log|det(I + J)|."""
    spec = _spec("residual_mlp", "surrogate", logdet="roulette", dist_param=0.5, n_exact_terms=1)
    jac = np.asarray(R.g_jacobian(spec, _x(spec, "surrogate")[0]))
    roulette, M = R.roulette_of(spec.config), 60
    per_n = [sum(R.neumann_vector(spec.config, jac, e, n) @ jac @ e for e in np.eye(3)) for n in range(1, M + 1)]
    expected = R.expectation_over_n(per_n, roulette, M)
    assert_close(R.surrogate_mean(jac, spec.config), expected, "estimate", "float64", 3)
    bias = R.surrogate_mean(jac, spec.config) - R.estimator_mean(jac, spec.config)
    assert 0.4 < -bias / np.trace(jac @ jac) < 0.6  # −tr(J²)/2 to second order: not a log-det estimate


def test_concentration_bounds_a_rademacher_estimate() -> None:
    """Every estimate — all 2^D probes, N up to where the terms vanish — lies within ``bound`` of the
    mean, and the variance factor is the variance (Bernstein's constants)."""
    jac = np.array([[0.3, -0.2], [0.25, -0.1]])
    config = {"logdet": "roulette", "dist": "geometric", "dist_param": 0.3, "n_exact_terms": 1, "probe": "rademacher"}
    bounds = R.concentration(jac, config)
    assert bounds.finite
    estimates = [R.estimate_from_jacobian(config, jac, np.array(v), n)
                 for v in itertools.product([-1.0, 1.0], repeat=2) for n in range(1, 200)]
    assert np.max(np.abs(np.array(estimates) - bounds.mean)) <= bounds.bound
    assert bounds.variance_factor == R.estimate_variance(jac, config).variance_upper
    assert not R.concentration(jac, {**config, "dist": "poisson", "dist_param": 2.0}).finite


def test_concentration_bounds_a_gaussian_estimates_moment_generating_function() -> None:
    """D = 1, v ~ N(0, 1): X = s_N v² with s_N the sum of the weighted series, so
    E e^{λ(X − μ)} = Σ_n p(n) (1 − 2λ s_n)^(−1/2) e^{−λμ} exactly; it stays below the sub-gamma bound
    e^{λ²v / (2(1 − c|λ|))} for |λ| < 1/c."""
    jac = np.array([[0.45]])
    config = {"logdet": "roulette", "dist": "geometric", "dist_param": 0.3, "n_exact_terms": 0, "probe": "gaussian"}
    bounds = R.concentration(jac, config)
    roulette = R.roulette_of(config)
    s = np.array([R.estimate_from_jacobian(config, jac, np.ones(1), n) for n in range(1, 400)])
    p = np.array([roulette.pmf(n) for n in range(1, 400)])
    for lam in np.linspace(-0.95, 0.95, 39) / bounds.scale:
        mgf = float(np.sum(p * (1.0 - 2.0 * lam * s) ** -0.5) * np.exp(-lam * bounds.mean))
        assert mgf <= np.exp(lam ** 2 * bounds.variance_factor / (2.0 * (1.0 - bounds.scale * abs(lam)))) * (1 + 1e-12)


def test_subgamma_sample_size_is_fixed_by_the_target() -> None:
    alpha = 1e-8
    assert_close(stats.subgamma_halfwidth(2.0, 0.0, 100, alpha), np.sqrt(4.0 * np.log(2 / alpha) / 100), "forward",
                 "float64", 1)
    n = stats.subgamma_samples(1.0, 0.5, alpha, 0.01, 64, 1 << 20)
    assert n % 64 == 0 and stats.subgamma_halfwidth(1.0, 0.5, n, alpha) <= 0.01
    assert stats.subgamma_halfwidth(1.0, 0.5, n - 64, alpha) > 0.01
    assert stats.subgamma_samples(1.0, 0.5, alpha, 1e-6, 64, 1024) == 1024  # capped


# ----------------------------------------------------------------------------- accelerated estimators

def test_evaluation_mode_uses_the_papers_exact_terms() -> None:
    spec = _spec("residual_mlp", "eval", logdet="roulette", n_exact_terms=2)
    flow = from_spec(spec).eval()
    x, v = _x(spec, "eval", 2), rng("residual-test", "eval", "v").standard_normal((2, 3))
    n = np.array([1, 3])
    got = flow.logdet_estimate(torch.as_tensor(x), torch.as_tensor(v), torch.as_tensor(n)).numpy()
    expected = [R.logdet_estimate(spec, x[i], v[i], int(n[i]), training=False) for i in range(2)]
    assert_close(got, np.asarray(expected), "estimate", "float64", 3)
    assert R.exact_terms(spec.config, training=False) == 20


def test_an_estimate_of_no_terms_has_gradients() -> None:
    """m = 0 and every N = 0 (Poisson): the estimate is the constant 0, also with backward-in-forward
    and the series' own gradient (which once asked autograd for the gradient of a constant)."""
    spec = _spec("residual_mlp", "zero-terms", logdet="roulette", dist="poisson", dist_param=1.0, n_exact_terms=0,
                 neumann_grad=False, grad_in_forward=True)
    flow = from_spec(spec)
    x = torch.as_tensor(_x(spec, "zero-terms", 2))
    zeros = torch.zeros(2, dtype=torch.long)
    w = torch.as_tensor(rng("residual-test", "zero-terms", "w").standard_normal((2, 3)))
    _, g_x = flow.logdet_estimate_vjp(x, torch.ones_like(x), zeros, w, torch.tensor([1.0, 2.0], dtype=x.dtype))
    _, expected = reference.vjp(spec, x.numpy(), w.numpy(), np.zeros(2))
    assert_close(g_x.numpy(), expected, "grad", "float64", 3)


def test_logdet_noise_is_what_the_forward_draws() -> None:
    spec = _spec("residual_mlp", "noise", logdet="roulette", n_samples=2)
    flow = from_spec(spec)
    x = torch.as_tensor(_x(spec, "noise", 3))
    torch.manual_seed(seed_for("residual-test", "noise"))
    v, n = flow.logdet_noise(3)
    torch.manual_seed(seed_for("residual-test", "noise"))
    _, logdet = flow(x)
    assert v.shape == (6, 3) and n.shape == (6,)
    expected = flow.logdet_estimate(x, v, n)
    torch.testing.assert_close(logdet.detach(), expected, rtol=0, atol=0)


@pytest.mark.parametrize("probe", ["gaussian", "rademacher"])
@pytest.mark.parametrize("own_generator", [False, True])
def test_backward_in_forward_replays_its_probes_for_per_sample_weights(probe: str, own_generator: bool) -> None:
    """Backward-in-forward keeps neither probes nor draws for backward (it draws them again); with
    per-sample upstream weights on the log-det, where the backward needs them, its gradients equal,
    bit for bit, those of the same estimate with them given (which are kept), from the global
    generator and from the block's own."""
    spec = _spec("residual_mlp", "replay", logdet="roulette", n_samples=2, probe=probe, neumann_grad=True,
                 grad_in_forward=True)
    flow = from_spec(spec).train()
    x = torch.as_tensor(_x(spec, "replay", 3))
    zw = torch.as_tensor(rng("residual-test", "replay", "zw").standard_normal(x.shape))
    lw = torch.tensor([0.5, -1.0, 2.0], dtype=x.dtype)

    def reseed() -> None:
        flow.generator = torch.Generator().manual_seed(seed_for("residual-test", "replay")) if own_generator else None
        torch.manual_seed(seed_for("residual-test", "replay"))

    reseed()
    v, n = flow.logdet_noise(3)
    reseed()
    x_leaf = x.clone().requires_grad_(True)
    noise = flow._draw(3, x)
    again = noise.replay()
    assert torch.equal(noise.v, v) and torch.equal(noise.n, n) and torch.equal(again[0], v) and torch.equal(again[1], n)
    reseed()
    z, logdet = flow(x_leaf)
    params = flow.spec_parameters()
    grads = torch.autograd.grad((z * zw).sum() + (logdet * lw).sum(), list(params.values()) + [x_leaf])
    expected, expected_x = flow.logdet_estimate_vjp(x, v, n, zw, lw)
    for (name, _), got in zip(params.items(), grads):
        assert torch.equal(got, expected[name]), name  # the same operations on the same noise
    assert torch.equal(grads[-1], expected_x)


def test_a_generator_makes_the_estimate_reproducible_and_draws_are_per_sample() -> None:
    flow = from_spec(_spec("residual_mlp", "generator", logdet="roulette", dist_param=0.3))
    x = torch.as_tensor(np.repeat(_x(flow.to_spec(), "generator"), 64, 0))
    values = []
    for _ in range(2):
        flow.generator = torch.Generator().manual_seed(seed_for("residual-test", "generator"))
        values.append(flow(x)[1].detach())
    torch.testing.assert_close(values[0], values[1], rtol=0, atol=0)
    assert len(torch.unique(values[0])) == 64  # every sample its own probe and draw of N
    draws = flow.roulette_draws(1000, 7)
    assert int(draws.min()) >= 1 and len(torch.unique(draws)) > 3


def test_exact_mode_equals_slogdet_and_averaged_mode_lowers_the_spread() -> None:
    spec = _spec("residual_conv", "modes", logdet="exact")
    flow = from_spec(spec)
    x = _x(spec, "modes", 2)
    assert_close(flow(torch.as_tensor(x))[1].detach().numpy(), reference.log_abs_det(spec, x), "logdet", "float64",
                 x[0].size)
    flow.generator = torch.Generator().manual_seed(seed_for("residual-test", "modes"))
    repeated = torch.as_tensor(np.repeat(x[:1], 400, 0))
    spreads = []
    for n_samples in (1, 16):
        flow.set_logdet(estimator="roulette", n_exact_terms=2, n_samples=n_samples)
        spreads.append(float(flow(repeated)[1].detach().std()))
    assert spreads[1] < 0.5 * spreads[0]  # 16 probes: the standard deviation shrinks about fourfold


# ----------------------------------------------------------------------------- inverse

def test_inverse_reports_its_residual_when_capped() -> None:
    spec = _spec("residual_mlp", "cap", logdet="exact", inverse_max_iter=2, inverse_rtol=1e-12)
    flow = from_spec(spec)
    with pytest.raises(ConvergenceError) as info:
        flow.inverse(torch.as_tensor(_x(spec, "cap", 2)))
    assert info.value.residual > 1e-12 and info.value.iterations == 2


def test_rsample_gradients_are_the_implicit_ones() -> None:
    """∂x/∂y = (I + J_g)⁻¹ and ∂x/∂θ = −(I + J_g)⁻¹ ∂g/∂θ at x = f⁻¹(y), against the reference."""
    spec = _spec("residual_mlp", "implicit", logdet="exact")
    flow = from_spec(spec)
    y = torch.as_tensor(_x(spec, "implicit", 2)).requires_grad_(True)
    weight = torch.as_tensor(rng("residual-test", "implicit", "w").standard_normal((2, 3)))
    x = flow.inverse(y)
    (x * weight).sum().backward()
    x_np = x.detach().numpy()
    for i in range(2):
        jac_f = reference.jacobian(spec, x_np[i:i + 1])[0]
        lam = np.linalg.solve(jac_f.T, weight[i].numpy())
        assert_close(y.grad[i].numpy(), lam, "inverse", "float64", 3)  # λ is solved: (I + J_g)ᵀ λ = w
    g_params, _ = reference.vjp(spec, x_np, np.stack([np.linalg.solve(reference.jacobian(spec, x_np[i:i + 1])[0].T,
                                                                      weight[i].numpy()) for i in range(2)]),
                                np.zeros(2))
    for name, param in flow.spec_parameters().items():
        assert_close(param.grad.numpy(), -g_params[name], "inverse", "float64", 3, name)


def test_rsample_is_differentiable() -> None:
    flow = from_spec(_spec("residual_mlp", "rsample", logdet="exact"))
    sample = FlowDistribution(flow).rsample((5,), generator=torch.Generator().manual_seed(3))
    sample.sum().backward()
    assert all(p.grad is not None for p in flow.spec_parameters().values())


# ----------------------------------------------------------------------------- model and memory

def test_make_model_builds_the_multiscale_stack_and_configure_logdet_reaches_every_block() -> None:
    torch.manual_seed(seed_for("residual-test", "model"))
    model = make_model("conv", (1, 4, 4), n_blocks=2, hidden_factor=2).double()
    assert len(residual_blocks(model)) == 4 and model.latent_shape == (4, 2, 2)
    assert configure_logdet(model, estimator="exact", n_exact_terms=1) == 4
    x = torch.as_tensor(rng("residual-test", "model", "x").uniform(0.1, 0.9, (3, 1, 4, 4)))
    model(x)  # ActNorm's data-dependent initialisation
    model.eval()  # the norm estimates are now fixed until the weights change
    z, logdet = model(x)
    jac = torch.autograd.functional.jacobian(lambda t: model(t.reshape(1, 1, 4, 4))[0].reshape(-1), x[0].reshape(-1))
    assert_close(logdet[0].item(), torch.linalg.slogdet(jac)[1].item(), "logdet", "float64", x[0].numel())
    assert_close(model.inverse(z).detach().numpy(), x.numpy(), "roundtrip", "float64", x[0].numel())
    with pytest.raises(ConfigError, match="arch"):
        make_model("resnet", (3,))


def test_mlp_model_trains_one_step() -> None:
    torch.manual_seed(seed_for("residual-test", "mlp-model"))
    model = make_model("mlp", (4,), n_blocks=2).double()
    x = torch.as_tensor(rng("residual-test", "mlp-model", "x").standard_normal((8, 4)))
    loss = -FlowDistribution(model).log_prob(x).mean()
    loss.backward()
    assert all(p.grad is not None for block in residual_blocks(model) for p in block.spec_parameters().values())


def _step_memory(model, x, terms: int, **flags) -> memory.MemoryReport:
    configure_logdet(model, estimator="series", n_exact_terms=terms, **flags)
    dist = FlowDistribution(model)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        (-dist.log_prob(x).mean()).backward()

    step()  # warm start of the power iterations, gradient buffers allocated once
    return memory.measure(step, "cpu", resident=memory.model_tensors(model))


def test_training_step_memory_is_flat_in_the_number_of_terms() -> None:
    """Bytes saved for backward and the allocator's peak above the pre-step baseline, 2 vs 20 terms:
    equal with the Neumann series and backward-in-forward, ~7× apart when the series is backpropagated."""
    torch.manual_seed(seed_for("residual-test", "memory"))
    model = make_model("conv", (2, 8, 8), n_blocks=3, hidden_factor=4, n_scales=1, logit=False, actnorm=False).double()
    x = torch.as_tensor(rng("residual-test", "memory", "x").standard_normal((16, 2, 8, 8)))
    lean = {n: _step_memory(model, x, n) for n in (2, 20)}
    assert lean[20].saved_bytes == lean[2].saved_bytes and lean[20].peak_bytes <= lean[2].peak_bytes
    naive = {n: _step_memory(model, x, n, neumann_grad=False, grad_in_forward=False) for n in (2, 20)}
    assert naive[20].saved_bytes > 4 * naive[2].saved_bytes  # the measure does see growth
    held = _step_memory(model, x, 20, grad_in_forward=False)
    assert lean[20].peak_bytes < held.peak_bytes  # backward-in-forward releases each block's graph early


def test_learned_orders_travel_with_the_spec() -> None:
    spec = _spec("residual_mlp", "learned", hidden=[5, 4], learn_orders=True, logdet="exact")
    assert spec.params["order_logits"].shape == (2,)
    flow = from_spec(spec)
    np.testing.assert_array_equal(flow.to_spec().params["order_logits"], spec.params["order_logits"])
    x = _x(spec, "learned", 2)
    assert_close(flow(torch.as_tensor(x))[0].detach().numpy(), reference.forward(spec, x), "forward", "float64", 3)
    p, q, _ = R.weight_constraints(spec)["weight1"]
    assert p > 1.5 and p < 2.5 and q > 1.5 and q < 2.5
    with pytest.raises(ConfigError, match="learn_orders"):
        ResidualMLP([3], [], learn_orders=True)


# ----------------------------------------------------------------------------- early stop of the evaluation series

def test_tail_factors_bound_the_weighted_terms_left() -> None:
    """S[k] = Σ_{j>k} |c_j|·L^{j−k} per row (with its rounding factor), rows whose N ended earlier
    included; no factor without a finite L."""
    coef = torch.as_tensor(rng("residual-test", "tails").standard_normal((8, 3)))
    coef[6:, 0] = 0.0
    tails = tail_factors(coef, 0.7, 5)
    for k in range(8):
        powers = torch.tensor([0.7 ** (j - k) for j in range(k + 1, 8)], dtype=torch.float64)
        brute = (coef[k + 1:].abs() * powers[:, None]).sum(0) * (1.0 + 7 * torch.finfo(torch.float64).eps)
        torch.testing.assert_close(tails[k], brute, rtol=1e-13, atol=0)
    assert tail_factors(coef, math.inf, 5) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_below_half_ulp_is_where_an_addition_cannot_change_the_sum(dtype: torch.dtype) -> None:
    """Just below half the downward gap, adding or subtracting leaves every total unchanged; at it,
    or above it below half the upward gap of a power of two, the check refuses."""
    totals = torch.tensor([1.0, -3.0, 0.75, 1e-3, -2.0, 1e-30], dtype=dtype)
    down = (totals.abs() - torch.nextafter(totals.abs(), torch.zeros_like(totals))).double()
    below = down / 2 * (1.0 - 1e-6)
    assert below_half_ulp(totals, below)
    for sign in (1.0, -1.0):
        assert torch.equal(totals + sign * below.to(dtype), totals)
    assert not below_half_ulp(totals, down / 2)
    one = torch.ones(1, dtype=dtype)
    above = 0.6 * float(torch.nextafter(one, 2 * one) - one) / 2  # above half the gap below 1
    assert not below_half_ulp(one, torch.tensor([above], dtype=torch.float64))
    assert not torch.equal(one - torch.tensor(above, dtype=dtype), one)
    assert below_half_ulp(torch.zeros(1, dtype=dtype), torch.zeros(1, dtype=torch.float64))
    assert not below_half_ulp(torch.zeros(1, dtype=dtype), torch.full((1,), 1e-300, dtype=torch.float64))


@pytest.mark.parametrize("kind", ["residual_mlp", "residual_conv"])
@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_jacobian_bound_holds_at_random_inputs(kind: str, scale: float) -> None:
    """‖J_g(x)‖₂ (autograd Jacobian) ≤ jacobian_bound ≤ coeff^L (to rounding), also where the
    constraint binds (weights × 100)."""
    spec = _spec(kind, "jacobian-bound")
    flow = from_spec(spec).eval()
    with torch.no_grad():
        for layer in flow.layers:
            layer.raw_weight.mul_(scale)
    x = torch.as_tensor(_x(spec, "jacobian-bound", 3))
    flow(x)
    bound = flow.jacobian_bound()
    assert bound <= flow.lipschitz_bound * (1.0 + 1e-9)
    for xi in x:
        jac = torch.autograd.functional.jacobian(lambda t: flow(t[None])[0][0] - t, xi)
        assert float(torch.linalg.matrix_norm(jac.reshape(xi.numel(), xi.numel()), 2)) <= bound


def test_a_probed_norm_gives_no_deterministic_bound() -> None:
    """A matrix above ``exact_max_dim`` is probed (failure probability > 0): no bound, no early stop;
    a convolution's frequency-domain bound holds whatever its estimate."""
    linear = LipschitzNormalizer((6, 5), 0.9, exact_max_dim=2).double()
    weight = torch.as_tensor(rng("residual-test", "probed").standard_normal((6, 5)))
    linear(weight)
    assert linear.guarantee()["failure_probability"] > 0 and linear.operator_bound(weight) == math.inf
    conv = LipschitzNormalizer((3, 2, 3, 3), 0.9, operator="conv", exact_max_dim=2).double()
    kernel = torch.as_tensor(rng("residual-test", "probed-conv").standard_normal((3, 2, 3, 3)))
    conv(kernel, (5, 5))
    effective = conv(kernel, (5, 5)).detach().numpy()
    norm = float(np.linalg.norm(conv_matrix(effective, (2, 5, 5)), 2))
    assert norm <= conv.operator_bound(kernel) <= 1.5 * norm

def _early_and_full(flow: ResidualMLP | ResidualConv, x: torch.Tensor, key: str,
                    monkeypatch: pytest.MonkeyPatch) -> tuple[list[torch.Tensor], list[int]]:
    """The no-grad log-det estimates and terms run with the early stop and without it (no bound on
    ‖J_g‖₂), after the same seeding."""
    estimates, terms = [], []
    for bound in (flow.jacobian_bound, lambda: math.inf):
        monkeypatch.setattr(flow, "jacobian_bound", bound)
        flow.generator = torch.Generator().manual_seed(seed_for("residual-test", key))
        with torch.no_grad():
            estimates.append(flow(x)[1])
        terms.append(flow.last_series_terms)
    return estimates, terms


@pytest.mark.parametrize("kind", ["residual_mlp", "residual_conv"])
@pytest.mark.parametrize("draw", ["sample", "batch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_evaluation_series_stops_early_without_changing_the_estimate(
        kind: str, draw: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bit-identical to the full series, with fewer terms where the weights are small (0.05 × a
    reference initialisation) and all of them without a deterministic bound."""
    spec = _spec(kind, "early-stop", logdet="roulette", draw=draw)
    flow = from_spec(spec).to(dtype).eval()
    with torch.no_grad():
        for layer in flow.layers:
            layer.raw_weight.mul_(0.05)
    x = torch.as_tensor(_x(spec, "early-stop", 16)).to(dtype)
    flow(x)
    estimates, terms = _early_and_full(flow, x, "early-stop", monkeypatch)
    assert torch.equal(estimates[0], estimates[1])
    assert terms[0] < 10 < 20 <= terms[1]


def test_the_early_stop_counts_the_roulette_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """A block whose Jacobian is 0.3·I (identity activation, weights √0.3·I): every term decays at
    exactly the bound's rate, and with no exact terms in evaluation the roulette weights
    1/P(N ≥ k) = 1.25^(k−1) (q = 0.2) decide where the stop may come. Still bit-identical in float32,
    and a stop rule that dropped the weights would stop at term 13 and change the sums by 3.6e-7."""
    spec = reference.init_spec("residual_mlp", {
        "shape": [3], "hidden": [3], "coeff": 0.9, "activation": "identity", "logdet": "roulette", "draw": "sample",
        "eval_exact_terms": 0, "n_exact_terms": 1, "dist_param": 0.2}, rng("residual-test", "weighted-stop"))
    flow = from_spec(spec).float().eval()
    with torch.no_grad():
        for layer in flow.layers:
            layer.raw_weight.copy_(math.sqrt(0.3) * torch.eye(3))
    x = torch.as_tensor(_x(spec, "weighted-stop", 256)).float()
    flow(x)
    assert flow.jacobian_bound() == pytest.approx(0.3, rel=1e-5)
    estimates, terms = _early_and_full(flow, x, "weighted-stop", monkeypatch)
    assert torch.equal(estimates[0], estimates[1]) and 13 < terms[0] < terms[1]


def test_a_series_with_no_terms_is_zero_and_reports_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """No exact terms and every draw N = 0 (training mode, no gradient): the roulette estimate is the
    empty sum, 0, and ``last_series_terms`` reports that no term ran."""
    spec = _spec("residual_mlp", "no-terms", logdet="roulette", n_exact_terms=0)
    flow = from_spec(spec).train()
    draw = flow._draw
    monkeypatch.setattr(flow, "_draw", lambda batch, x: Noise(draw(batch, x).v, torch.zeros(batch, dtype=torch.long)))
    with torch.no_grad():
        _, logdet = flow(torch.as_tensor(_x(spec, "no-terms", 4)))
    assert torch.equal(logdet, torch.zeros_like(logdet)) and flow.last_series_terms == 0
