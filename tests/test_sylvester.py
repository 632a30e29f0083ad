"""Sylvester flows: the parameterizations of Q, the orthogonalisation, the margin, the structured
inverse and amortized parameters."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flowspec import reference
from flowspec.accelerated import from_spec
from flowspec.accelerated.sylvester import Sylvester
from flowspec.conformance.seeding import rng
from flowspec.conformance.tolerances import assert_close
from flowspec.errors import ConfigError, ConvergenceError, NumericalError
from flowspec.reference import sylvester as ref
from flowspec.spec import FlowSpec

NAMES = {torch.float64: "float64", torch.float32: "float32"}
CONFIGS = [
    {"shape": [5], "m": 3},
    {"shape": [4], "m": 4, "context_dim": 2},
    {"shape": [5], "m": 2, "parameterization": "householder", "reflections": 3},
    {"shape": [4], "m": 4, "parameterization": "householder", "reflections": 4, "context_dim": 2},
    {"shape": [5], "m": 3, "parameterization": "triangular", "reverse": True},
    {"shape": [1]},
]


def _spec(config: dict, key: str) -> FlowSpec:
    return reference.init_spec("sylvester", config, rng("sylvester-test", key))


def _with(spec: FlowSpec, **params: np.ndarray) -> FlowSpec:
    return FlowSpec(spec.kind, spec.config, {**spec.params, **params})


def _points(d: int, n: int, key: str, scale: float = 2.0) -> np.ndarray:
    return scale * rng("sylvester-test", "x", key).standard_normal((n, d))


def _context(spec: FlowSpec, n: int, key: str) -> np.ndarray | None:
    dim = spec.config.get("context_dim", 0)
    return rng("sylvester-test", "c", key).standard_normal((n, dim)) if dim else None


def _spread(d: int, m: int, kappa: float, key: str) -> np.ndarray:
    gen = rng("sylvester-test", "spread", key)
    u, v = np.linalg.qr(gen.standard_normal((d, m)))[0], np.linalg.qr(gen.standard_normal((m, m)))[0]
    return u @ np.diag(np.geomspace(1.0, 1.0 / kappa, m)) @ v.T


@pytest.mark.parametrize("index", range(len(CONFIGS)))
def test_det_identity_is_the_slogdet_of_the_reference_jacobian(index: int) -> None:
    """Σ log(1 + r_ii·r̃_ii·h′(a_i)) (eq. 33) equals slogdet of the full autograd Jacobian, and the
    accelerated log-det equals both, for every parameterization, M < D and amortized parameters."""
    spec = _spec(CONFIGS[index], f"det-{index}")
    d = spec.config["shape"][0]
    x, c = _points(d, 4, f"det-{index}"), _context(spec, 4, f"det-{index}")
    slogdet = reference.log_abs_det(spec, x, c)
    assert_close(ref.det_identity_log_det(spec, x, c), slogdet, "logdet", "float64", d)
    ct = None if c is None else torch.as_tensor(c)
    _, logdet = from_spec(spec)(torch.as_tensor(x), ct)
    assert_close(logdet.detach().numpy(), slogdet, "logdet", "float64", d)


@pytest.mark.parametrize("kappa", [1.0, 1e2, 1e4])
def test_orthogonalisation_gives_the_polar_factor(kappa: float) -> None:
    """From any scale and conditioning up to κ(Q̂) = 10⁴ the iteration reaches the orthonormal polar
    factor U·Vᵀ of Q̂ = U·Σ·Vᵀ, to rounding, in both layers (float32: orthonormal to rounding)."""
    q_hat = 37.0 * _spread(6, 4, kappa, f"polar-{kappa}")
    u, _, vt = np.linalg.svd(q_hat, full_matrices=False)
    spec = _with(_spec({"shape": [6], "m": 4}, "polar"), q=q_hat)
    assert_close(ref.basis(spec), u @ vt, "forward", "float64", 6 * kappa)
    for dtype in (torch.float64, torch.float32):
        q = from_spec(spec, dtype=dtype).orthonormal_basis().detach().double().numpy()
        assert_close(q.T @ q, np.eye(4), "orthonormal", NAMES[dtype], 6 * 4)
    q64 = from_spec(spec).orthonormal_basis().detach().numpy()
    assert_close(q64, u @ vt, "forward", "float64", 6 * kappa)


def _rank_deficient(kind: str) -> np.ndarray:
    a = rng("sylvester-test", "deficient").standard_normal((5, 2))
    return {"zero": np.zeros((5, 3)), "repeated": np.concatenate([a, a[:, :1]], axis=1),
            "dependent": np.concatenate([a, a[:, :1] - 2.0 * a[:, 1:]], axis=1)}[kind]


@pytest.mark.parametrize("kind", ["zero", "repeated", "dependent"])
def test_rank_deficient_q_hat_raises_convergence_error(kind: str) -> None:
    """A rank-deficient Q̂ does not converge within the 40 default steps, in the reference and in
    both dtypes (rounding noise of a dependent column needs ≥ 49 steps in float32 to grow)."""
    spec = _with(_spec({"shape": [5], "m": 3}, "deficient"), q=_rank_deficient(kind))
    x = _points(5, 2, "deficient")
    with pytest.raises(ConvergenceError, match="orthonormalised|did not converge") as info:
        reference.forward(spec, x)
    assert info.value.residual > info.value.tolerance
    for dtype in (torch.float64, torch.float32):
        with pytest.raises(ConvergenceError) as info:
            from_spec(spec, dtype=dtype)(torch.as_tensor(x, dtype=dtype))
        assert info.value.residual >= 0.5 and info.value.iterations == ref.DEFAULT_ORTH_MAX_ITER


def test_orth_tol_and_cap() -> None:
    """With an explicit tolerance t the step after ‖QᵀQ − I‖_F ≤ t is the last, so the Q used is
    orthonormal to t² (and not much better: the iteration stops); a cap too small raises with the
    residual it reached."""
    q_hat = _spread(6, 4, 10.0, "tol")
    loose = _with(_spec({"shape": [6], "m": 4, "orth_tol": 0.1}, "tol"), q=q_hat)
    for q in (ref.basis(loose), from_spec(loose).orthonormal_basis().detach().numpy()):
        defect = np.linalg.norm(q.T @ q - np.eye(4))
        assert 1e-12 < defect <= 0.1 ** 2
    capped = Sylvester([6], m=4, orth_max_iter=3)
    capped.load_spec_params(_with(_spec({"shape": [6], "m": 4}, "tol"), q=q_hat))
    with pytest.raises(ConvergenceError, match="did not converge") as info:
        capped(torch.randn(2, 6))
    assert info.value.iterations == 3 and 0.1 < info.value.residual < 2.0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_margin_holds_for_extreme_raw_values(dtype: torch.dtype) -> None:
    """Every slope 1 + r_ii·r̃_ii·h′ ≥ δ(1 − 300ε) at h′ = 1 for raw diagonals up to ±10⁴ (ψ reaches
    −μ to 10⁻⁸ there), where tanh-squashed diagonals give a slope of exactly 0."""
    values = torch.tensor([-1e4, -1e2, -30.0, -3.0, 0.0, 3.0, 30.0, 1e2, 1e4], dtype=torch.float64)
    r_raw, rt_raw = torch.meshgrid(values, values, indexing="ij")
    m = r_raw.numel()
    flow = Sylvester([m], parameterization="triangular").to(dtype)
    with torch.no_grad():
        flow.r.copy_(torch.diag(r_raw.reshape(-1)))
        flow.r_tilde.copy_(torch.diag(rt_raw.reshape(-1)))
        _, r, rt, _ = flow._parts(None)
    slopes = 1.0 + torch.diagonal(r[0]) * torch.diagonal(rt[0])
    eps = torch.finfo(dtype).eps
    assert bool((slopes >= ref.MARGIN * (1.0 - 300.0 * eps)).all()) and bool((torch.diagonal(rt[0]) >= 0).all())
    assert float(slopes.min()) < ref.MARGIN * (1.0 + 2e-6) + 100 * eps  # reached (to 10⁻⁸ at ±10⁴), not only kept
    tanh_slopes = 1.0 + torch.tanh(r_raw.to(dtype)) * torch.tanh(rt_raw.to(dtype))
    assert float(tanh_slopes.min()) == 0.0
    with torch.no_grad():
        _, logdet = flow(torch.zeros(1, m, dtype=dtype))  # a = 0: h′ = 1, every slope at its minimum
    assert math.isfinite(float(logdet)) and float(logdet) >= m * math.log(ref.MARGIN) - 1e-3


def test_triangular_basis_acts_on_the_first_or_the_reversed_last_coordinates() -> None:
    """With M < D the identity basis moves only the first M coordinates; the reversal only the last M,
    in reverse order (Q = [e_D, e_{D−1}, …])."""
    x = _points(5, 3, "triangular")
    for reverse, moved in ((False, [0, 1]), (True, [4, 3])):
        spec = _spec({"shape": [5], "m": 2, "parameterization": "triangular", "reverse": reverse}, f"tri-{reverse}")
        assert np.array_equal(ref.basis(spec), np.eye(5)[:, moved])
        z = from_spec(spec)(torch.as_tensor(x))[0].detach().numpy()
        fixed = [i for i in range(5) if i not in moved]
        assert np.array_equal(z[:, fixed], x[:, fixed]) and not np.allclose(z[:, moved], x[:, moved])


def test_householder_basis_is_the_first_columns_of_the_product() -> None:
    """Q = (H₁·H₂·H₃)[:, :M] with H_k = I − 2·v_k·v_kᵀ/‖v_k‖², the reflections' scale irrelevant."""
    spec = _spec({"shape": [5], "m": 2, "parameterization": "householder", "reflections": 3}, "householder")
    v = spec.params["v"] * np.array([[1e-3], [1.0], [1e3]])
    product = np.eye(5)
    for vk in v:
        product = product @ (np.eye(5) - 2.0 * np.outer(vk, vk) / (vk @ vk))
    scaled = _with(spec, v=v)
    assert_close(ref.basis(scaled), product[:, :2], "forward", "float64", 5)
    assert_close(from_spec(scaled).orthonormal_basis().detach().numpy(), product[:, :2], "forward", "float64", 5)
    with pytest.raises(NumericalError, match=r"v\[1\] is zero"):
        from_spec(_with(spec, v=v * np.array([[1.0], [0.0], [1.0]])))(torch.randn(2, 5, dtype=torch.float64))


def test_the_component_outside_span_q_is_unchanged() -> None:
    spec = _spec({"shape": [6], "m": 2}, "outside")
    x = _points(6, 4, "outside")
    q = ref.basis(spec)
    delta = from_spec(spec)(torch.as_tensor(x))[0].detach().numpy() - x
    assert_close(delta - delta @ q @ q.T, np.zeros_like(delta), "forward", "float64", 6)
    assert float(np.abs(delta).max()) > 0.1


@pytest.mark.parametrize("parameterization", ["orthogonal", "householder"])
def test_amortized_parameters_are_a_linear_map_of_the_context(parameterization: str) -> None:
    """With a context c a sample is the un-amortized flow with raw parameters θ + θ_context·c."""
    spec = _spec({"shape": [4], "m": 3, "parameterization": parameterization, "context_dim": 2}, parameterization)
    x, c = _points(4, 3, "amortized"), _context(spec, 3, "amortized")
    z = from_spec(spec)(torch.as_tensor(x), torch.as_tensor(c))[0].detach().numpy()
    plain_config = {k: v for k, v in spec.config.items() if k != "context_dim"}
    for i in range(3):
        raw = {name: spec.params[name] + spec.params[f"{name}_context"] @ c[i]
               for name in spec.params if not name.endswith("_context")}
        plain = FlowSpec("sylvester", plain_config, raw)
        assert_close(z[i:i + 1], reference.forward(plain, x[i:i + 1]), "forward", "float64", 4)


def test_gradients_flow_through_the_orthogonalisation() -> None:
    """∂L/∂Q̂ is non-zero, orthogonal to Q̂ (Q does not change with ‖Q̂‖) and equals the reference's."""
    spec = _spec({"shape": [5], "m": 3}, "gradients")
    x = _points(5, 2, "gradients")
    zw, lw = rng("sylvester-test", "w").standard_normal((2, 5)), np.array([0.7, -1.3])
    r_params, _ = reference.vjp(spec, x, zw, lw)
    flow = from_spec(spec)
    z, logdet = flow(torch.as_tensor(x))
    ((z * torch.as_tensor(zw)).sum() + (logdet * torch.as_tensor(lw)).sum()).backward()
    grad = flow.q.grad.numpy()
    assert np.abs(grad).max() > 1e-2
    assert_close(np.sum(grad * spec.params["q"]), 0.0, "grad", "float64", 15)
    assert_close(grad, r_params["q"], "grad", "float64", 5)


ITERATION_BUDGET = 20  # the grid below needs at most 15 (float64) and 14 (float32); bisection alone about 60


@pytest.mark.parametrize("max_iter", [100, ITERATION_BUDGET])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_scalar_solves_converge_on_flat_and_steep_slopes(dtype: torch.dtype, max_iter: int) -> None:
    """α + ρ·tanh(s·α + c) = t on a grid of ρ, ρ·s (steep, 1 + ρ·s up to 13, and flat, down to the
    margin), c and t across [−|ρ|, |ρ|]: no ConvergenceError and residuals within the stopping rule.
    On steep slopes (ρ = 10 … 100, ρ·s = 3 … 12) Newton steps that stay inside the bracket can straddle
    the inflection point and close in on the root only slowly (a residual of 0.3 after 100 steps in
    float64): the solver bisects whenever a step is not at most half the previous one. It still takes
    Newton steps wherever they are safe, so the grid converges within ``ITERATION_BUDGET`` iterations: a
    safeguard that rejects good Newton steps (a wrong slope or halving reference) converges to the same
    values by bisection, but not within that budget."""
    rho = torch.tensor([-1e4, -100.0, -10.0, 10.0, 33.6, 100.0], dtype=torch.float64)
    product = torch.tensor([[-0.5, -0.9, -0.999 * ref.MU]] * 3 + [[3.0, 6.0, 12.0]] * 3, dtype=torch.float64)
    c = torch.linspace(-3.0, 3.0, 25, dtype=torch.float64)
    u = torch.linspace(-1.0, 1.0, 101, dtype=torch.float64)
    r, ps, c, u = torch.broadcast_tensors(rho[:, None, None, None], product[:, :, None, None], c[None, None, :, None],
                                          u[None, None, None, :])
    r, s, c, t = (v.reshape(-1).to(dtype) for v in (r, ps / r, c, u * r.abs()))
    flow = Sylvester([1], parameterization="triangular").to(dtype)
    flow.max_iter = max_iter
    alpha = flow._solve(t, r, s, c)
    scale = t.abs() + r.abs() + 1.0
    residual = (alpha + r * torch.tanh(s * alpha + c) - t).abs() / scale
    eps = torch.finfo(dtype).eps  # the stopping rule, or a bracket of 4 ulps on a slope up to 1 + |ρ·s|
    bound = torch.maximum(torch.full_like(residual, 32 * eps), 8 * eps * (1 + (r * s).abs()) * alpha.abs() / scale)
    assert bool((residual <= bound).all())


def test_inverse_non_convergence_raises_with_its_residual() -> None:
    spec = _with(_spec({"shape": [3], "m": 3}, "no-convergence"), r=np.diag([-6.0, 4.0, -5.0]),
                 r_tilde=np.diag([30.0, 4.0, 1e3]))
    flow = from_spec(spec)
    flow.max_iter = 1
    z = torch.as_tensor(_points(3, 8, "no-convergence", scale=5.0))
    with pytest.raises(ConvergenceError, match="did not converge") as info:
        flow.inverse(z)
    assert info.value.iterations == 1 and info.value.residual > info.value.tolerance
    flow.max_iter = 100
    assert_close(flow(flow.inverse(z))[0].detach().numpy(), z.numpy(), "roundtrip", "float64", 3 * 100)


def test_inverse_is_differentiable_by_the_implicit_function_theorem() -> None:
    """x(θ) = f_θ⁻¹(z) satisfies f_θ(x(θ)) = z, so d/dθ Σ v·f_θ(x(θ)) = 0 (the triangular
    back-substitution's corrections must chain through the later coordinates); ∂x/∂z = (∂z/∂x)⁻¹."""
    spec = _spec({"shape": [4], "m": 3, "context_dim": 2}, "implicit")
    flow = from_spec(spec)
    z, c = torch.as_tensor(_points(4, 3, "implicit")), torch.as_tensor(_context(spec, 3, "implicit"))
    x = flow.inverse(z, c)
    v = torch.as_tensor(_points(4, 3, "implicit-v"))
    for g in torch.autograd.grad((flow(x, c)[0] * v).sum(), list(flow.parameters())):
        assert_close(g.numpy(), np.zeros(g.shape), "grad", "float64", 4)
    inv_jac = torch.autograd.functional.jacobian(lambda t: flow.inverse(t[None], c[:1])[0], z[0])
    fwd_jac = torch.autograd.functional.jacobian(lambda t: flow(t[None], c[:1])[0][0], x[0].detach())
    assert_close((inv_jac @ fwd_jac).numpy(), np.eye(4), "roundtrip", "float64", 4)


def test_reference_inverse_is_exact_at_the_edge() -> None:
    """The reference's bisections reach rounding level where the slopes are at the margin."""
    spec = _with(_spec({"shape": [4], "m": 3}, "edge"), r=np.diag([-6.0, -5.0, 0.3]) + np.triu(np.ones((3, 3)), 1),
                 r_tilde=np.diag([1e3, 30.0, 0.2]) + np.triu(np.ones((3, 3)), 1))
    x = _points(4, 4, "edge", scale=0.3)
    z = reference.forward(spec, x)
    assert_close(reference.forward(spec, reference.inverse(spec, z)), z, "roundtrip", "float64", 4)


@pytest.mark.parametrize("config, key", [
    ({"shape": [3], "m": 4}, "'m'"), ({"shape": [3], "m": 0}, "'m'"), ({"shape": [2, 2]}, "'shape'"),
    ({"shape": [3], "reflections": 2}, "'reflections'"), ({"shape": [3], "reverse": True}, "'reverse'"),
    ({"shape": [3], "parameterization": "householder", "orth_max_iter": 5}, "'orth_max_iter'"),
    ({"shape": [3], "orth_tol": 1.0}, "'orth_tol'"), ({"shape": [3], "parameterization": "qr"}, "'parameterization'"),
    ({"shape": [3], "parameterization": "triangular", "reverse": 1}, "'reverse'"), ({"shape": [3], "hidden": 2}, "hidden"),
])
def test_bad_config_is_refused_in_both_layers(config: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        reference.init_spec("sylvester", config, rng("sylvester-test", "bad"))
    with pytest.raises((ConfigError, TypeError), match=key):
        Sylvester(**config)


def test_defaults() -> None:
    """M = D, orthogonal, K = D reflections, no reversal, √ε tolerance, 40 steps, no context."""
    assert ref.parse_config({"shape": [4]}).to_config() == {
        "shape": [4], "m": 4, "parameterization": "orthogonal", "orth_tol": None, "orth_max_iter": 40, "context_dim": 0}
    assert Sylvester([4], parameterization="householder").config()["reflections"] == 4
    assert Sylvester([4], parameterization="triangular").config()["reverse"] is False
