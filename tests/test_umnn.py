"""UMNN (Wehenkel & Louppe 2019): the quadrature rules of both layers, the reference's converged
integral and its exact derivatives, its ConvergenceError, configs, the accelerated rule, its error
estimate and its inverse."""
from __future__ import annotations

import autograd
import numpy as np
import pytest
import torch

from flowspec import reference
from flowspec.accelerated import from_spec
from flowspec.accelerated.umnn import UMNN, clenshaw_curtis as accelerated_cc
from flowspec.conformance.seeding import rng
from flowspec.conformance.tolerances import assert_close, relative_error, tolerance
from flowspec.errors import ConfigError, ConvergenceError
from flowspec.reference import umnn as ref
from flowspec.spec import FlowSpec

CONFIG = {"dim": 3, "order": "reversed", "hidden": [6], "embedding": 2, "integrand_hidden": [5]}


def _spec(config=CONFIG, seed: int = 0):
    return reference.init_spec("umnn", config, rng("test_umnn", seed))


def _x(spec, scale: float, batch: int = 4, seed: int = 1) -> np.ndarray:
    return scale * rng("test_umnn x", seed).standard_normal((batch, spec.config["dim"]))


@pytest.mark.parametrize("n", [8, 9, 32])
def test_clenshaw_curtis_exact_for_polynomials_in_both_layers(n: int) -> None:
    points, weights = ref.clenshaw_curtis(n)
    for k in range(n + 1):
        exact = (1.0 - (-1.0) ** (k + 1)) / (k + 1)
        assert_close(np.array([weights @ points ** k]), np.array([exact]), "forward", "float64", n + 1, f"t^{k}")
    p2, w2 = accelerated_cc(n)
    assert_close(p2, points, "forward", "float64", n + 1, "points")
    assert_close(w2, weights, "forward", "float64", n + 1, "weights")


def test_reference_integral_agrees_with_an_independent_fine_rule() -> None:
    """The converged Gauss–Legendre value equals Clenshaw–Curtis at 4096 nodes (another rule family)."""
    spec = _spec()
    x = _x(spec, 10.0)
    exact = reference.forward(spec, x)
    fine = np.stack([ref.rule_forward(spec, xi, nodes=4096) for xi in x])
    assert relative_error(fine, exact) <= 1e-13
    coarse = np.stack([ref.rule_forward(spec, xi, nodes=8) for xi in x])
    assert relative_error(coarse, exact) > 1e-6  # the comparison can fail: the 8-node rule is far off


def test_reference_derivatives_in_x_are_the_exact_integrals() -> None:
    """∂z_d/∂x_d = g(x_d) and ∂²z_d/∂x_d² = g′(x_d) to rounding (the converged rule's derivatives),
    so the generic slogdet equals Σ log g and the log-det's gradient is that of the exact map."""
    spec = _spec()
    xi = _x(spec, 3.0)[0]
    jac = reference.jacobian(spec, xi[None])[0]
    log_g = ref.log_slopes(spec, xi)
    assert_close(np.log(np.diag(jac)), log_g, "logdet", "float64", 3, "diag of the Jacobian vs log g")
    assert_close(reference.log_abs_det(spec, xi[None]), np.array([log_g.sum()]), "logdet", "float64", 3, "slogdet")
    second = autograd.jacobian(lambda v: autograd.numpy.diag(autograd.jacobian(lambda w: ref.forward(spec, w))(v)))(xi)
    made_cfg, cfg = ref.parse_umnn(spec.config)
    out = autograd.numpy.transpose(ref.autoregressive.made_net(spec.params, made_cfg.masks(cfg.outputs_per_dim),
                                                               made_cfg.activation, xi, None)[1:])
    layers = ref.integrand_layers(spec.params, cfg)
    dg = autograd.elementwise_grad(lambda t: ref.integrand(layers, t, out, cfg.floor))(xi)
    assert_close(np.diag(second), dg, "grad", "float64", 3, "∂²z_d/∂x_d² vs g′")


def test_reference_raises_at_the_node_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ref, "MAX_NODES", 32)
    spec = _spec()
    with pytest.raises(ConvergenceError) as info:
        reference.forward(spec, _x(spec, 100.0))
    assert info.value.residual > ref.AGREEMENT


def test_reference_inverse_round_trip_at_large_magnitude() -> None:
    spec = _spec()
    x = _x(spec, 100.0)
    z = reference.forward(spec, x)
    assert_close(reference.inverse(spec, z), x, "roundtrip", "float64", 3, "reference f⁻¹(f(x))")


@pytest.mark.parametrize("bad", [{"nodes": ref.MIN_NODES - 1}, {"nodes": 12.0}, {"embedding": 0}, {"floor": 0.0},
                                 {"integrand_hidden": []}, {"integrand_hidden": [0]}, {"quadrature": "gauss"}])
def test_bad_configs_rejected_by_both_layers(bad: dict) -> None:
    key = next(iter(bad))
    with pytest.raises(ConfigError, match=key):
        ref.parse_umnn({**CONFIG, **bad})
    with pytest.raises(ConfigError, match=key):
        UMNN(**{**CONFIG, **bad})


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_accelerated_is_the_rule_and_estimates_its_error(dtype: str) -> None:
    spec = FlowSpec("umnn", {**CONFIG, "nodes": 16}, _spec().params)
    x = np.asarray(_x(spec, 10.0), dtype=dtype).astype(np.float64)
    flow = from_spec(spec, dtype=getattr(torch, dtype))
    xt = torch.tensor(x, dtype=getattr(torch, dtype))
    z, logdet = flow(xt)
    rule = np.stack([ref.rule_forward(spec, xi) for xi in x])
    assert_close(z.detach().double().numpy(), rule, "forward", dtype, 3, "z vs the 16-node rule")
    log_g = np.stack([ref.log_slopes(spec, xi) for xi in x]).sum(axis=1)
    assert_close(logdet.detach().double().numpy(), log_g, "logdet", dtype, 3, "log|det| vs Σ log g")
    nested = np.abs(rule - np.stack([ref.rule_forward(spec, xi, nodes=32) for xi in x]))
    estimate = flow.quadrature_error(xt).detach().double().numpy()
    assert np.max(np.abs(estimate - nested)) <= tolerance("umnn", dtype, 33) * max(1.0, np.abs(rule).max()) * 4
    true_error = np.abs(rule - reference.forward(spec, x))
    assert np.max(true_error - 2.0 * nested) <= tolerance("forward", dtype, 3) * max(1.0, np.abs(rule).max())


def test_accelerated_inverse_and_its_implicit_gradient() -> None:
    """f⁻¹(f(x)) = x at |x| ~ 100, and ∂x_d/∂z_d of the last entry in the order is 1/g there."""
    spec = _spec()
    flow = from_spec(spec)
    x = torch.tensor(_x(spec, 100.0))
    z, _ = flow(x)
    z = z.detach().requires_grad_(True)
    x_back = flow.inverse(z)
    assert_close(x_back.detach().numpy(), x.numpy(), "roundtrip", "float64", 3, "f⁻¹(f(x))")
    last = flow._order[-1]
    x_back[:, last].sum().backward()
    g = np.exp(np.stack([ref.log_slopes(spec, xi) for xi in x.numpy()]))[:, last]
    assert_close(z.grad[:, last].numpy(), 1.0 / g, "inverse_grad", "float64", 3, "∂x/∂z vs 1/g")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu() -> None:
    spec = _spec()
    x = torch.tensor(_x(spec, 3.0))
    z_cpu, ld_cpu = from_spec(spec)(x)
    z_gpu, ld_gpu = from_spec(spec, device="cuda")(x.cuda())
    assert_close(z_gpu.detach().cpu().numpy(), z_cpu.detach().numpy(), "forward", "float64", 3, "z on CUDA")
    assert_close(ld_gpu.detach().cpu().numpy(), ld_cpu.detach().numpy(), "logdet", "float64", 3, "log|det| on CUDA")
    x_back = from_spec(spec, device="cuda").inverse(z_gpu.detach())
    assert_close(x_back.cpu().numpy(), x.numpy(), "roundtrip", "float64", 3, "f⁻¹ on CUDA")
