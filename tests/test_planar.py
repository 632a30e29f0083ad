"""Planar flow: the reparameterisation, the scalar inverse's convergence and edge behaviour."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flowspec import reference
from flowspec.accelerated import from_spec
from flowspec.accelerated.planar import Planar
from flowspec.conformance.planar import EDGE_MARGINS, LARGE_WU, with_wu, wu_for_margin
from flowspec.conformance.seeding import rng
from flowspec.conformance.tolerances import assert_close
from flowspec.errors import ConfigError, ConvergenceError, NumericalError
from flowspec.reference.planar import u_hat
from flowspec.reference.solve import bisect_increasing
from flowspec.spec import FlowSpec
from reference_checks import assert_vjp_matches_reference


def _spec(d: int, wu: float, key: str) -> FlowSpec:
    return with_wu(reference.init_spec("planar", {"shape": [d]}, rng("planar-test", key)), wu)


def _points(d: int, n: int, key: str, scale: float = 2.0) -> torch.Tensor:
    return torch.as_tensor(scale * rng("planar-test", "x", key).standard_normal((n, d)))


@pytest.mark.parametrize("wu", [-30.0, -5.0, -1.0, 0.0, 3.0, 50.0])
def test_reparameterisation_keeps_w_u_hat_above_minus_one(wu: float) -> None:
    """wᵀû = softplus(wᵀu) − 1 > −1 in both layers (down to wᵀu = −30, where the margin 1e-13 is
    still representable next to −1)."""
    spec = _spec(4, wu, f"reparam-{wu}")
    w = spec.params["w"]
    expected = math.log1p(math.exp(wu)) - 1.0
    assert expected > -1.0
    assert_close(float(w @ u_hat(spec.params["u"], w)), expected, "forward", "float64", 4)
    flow = from_spec(spec)
    with torch.no_grad():
        uh, _ = flow._u_hat()
        assert_close(float(flow.w @ uh), expected, "forward", "float64", 4)


@pytest.mark.parametrize("wu", [-2.0, -1.2, 0.3, 2.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_inverse_solves_to_the_dtype_tolerance(wu: float, dtype: torch.dtype) -> None:
    flow = from_spec(_spec(6, wu, f"inverse-{wu}"), dtype=dtype)
    z = _points(6, 64, f"inverse-{wu}", scale=5.0).to(dtype)
    name = "float64" if dtype == torch.float64 else "float32"
    with torch.no_grad():
        assert_close(flow(flow.inverse(z))[0].numpy(), z.numpy(), "roundtrip", name, 6)


@pytest.mark.parametrize("margin", EDGE_MARGINS)
def test_edge_regime_puts_w_u_hat_just_above_minus_one(margin: float) -> None:
    """The strategies' ``edge`` regime: 1 + wᵀû = ``margin`` exactly (up to rounding) in both layers."""
    spec = _spec(4, wu_for_margin(margin), f"edge-{margin}")
    w = spec.params["w"]
    assert_close(1.0 + float(w @ u_hat(spec.params["u"], w)), margin, "forward", "float64", 1)
    with torch.no_grad():
        uh, sp = from_spec(spec)._u_hat()
    assert_close(float(sp), margin, "forward", "float64", 1)


@pytest.mark.parametrize("wu", LARGE_WU)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_inverse_converges_where_plain_newton_cycles(wu: float, dtype: torch.dtype) -> None:
    """A steep g (wᵀû up to 21): from the flat tails a plain Newton step lands on the other tail and
    cycles; the safeguarded solve still round-trips every z, targets wᵀz across both tails included."""
    spec = _spec(5, wu, f"steep-{wu}")
    w = torch.tensor(spec.params["w"])
    targets = torch.linspace(-3.0 * wu, 3.0 * wu, 61, dtype=torch.float64)
    base = _points(5, 61, f"steep-{wu}")
    z = (base + (targets - base @ w)[:, None] * w / (w @ w)).to(dtype)  # wᵀz = targets
    flow = from_spec(spec, dtype=dtype)
    name = "float64" if dtype == torch.float64 else "float32"
    with torch.no_grad():
        assert_close(flow(flow.inverse(z))[0].numpy(), z.numpy(), "roundtrip", name, 5)


def test_softplus_above_twenty_is_exact() -> None:
    """wᵀu = 22: û uses softplus(22) = 22 + 2.8e-10, not torch's thresholded value 22 (float64)."""
    spec = _spec(3, 22.0, "softplus")
    x = _points(3, 4, "softplus").numpy()
    z, logdet = from_spec(spec)(torch.as_tensor(x))
    assert_close(z.detach().numpy(), reference.forward(spec, x), "forward", "float64", 3)
    with torch.no_grad():
        _, sp = from_spec(spec)._u_hat()
    assert float(sp) - 22.0 == pytest.approx(math.log1p(math.exp(-22.0)), rel=1e-6)


@pytest.mark.parametrize("a", [30.0, -400.0, 800.0])
def test_reference_gradients_are_finite_where_tanh_saturates(a: float) -> None:
    """At wᵀx + b = ``a`` (large inputs), autograd's second derivative of tanh, 1/cosh², overflowed
    into NaN beyond |a| ≈ 355; the reference's gradients are finite and equal the accelerated flow's."""
    spec = _spec(3, 0.3, "saturated")
    w, b = spec.params["w"], float(spec.params["b"])
    offset = np.array([0.5, -0.2, 0.1])
    offset -= (offset @ w) / (w @ w) * w  # orthogonal to w
    x = ((a - b) / (w @ w) * w + offset)[None]  # wᵀx + b = a
    zw, lw = np.array([[1.0, -2.0, 0.5]]), np.array([1.5])
    assert_vjp_matches_reference(spec, x, zw, lw)


def test_non_convergence_raises_with_its_residual() -> None:
    flow = from_spec(_spec(5, -1.2, "no-convergence"))
    flow.max_iter = 1
    z = _points(5, 8, "no-convergence", scale=3.0)
    with pytest.raises(ConvergenceError, match="did not converge") as info:
        flow.inverse(z)
    err = info.value
    assert err.iterations == 1 and err.residual > err.tolerance == pytest.approx(32 * torch.finfo(torch.float64).eps)
    flow.max_iter = 100
    flow.inverse(z)  # the default budget is enough


def test_zero_w_raises_a_clear_error() -> None:
    spec = _spec(3, 0.3, "zero-w")
    zero = FlowSpec("planar", spec.config, {**spec.params, "w": np.zeros(3)})
    x = _points(3, 2, "zero-w")
    with pytest.raises(NumericalError, match="w = 0"):
        from_spec(zero)(x)
    with pytest.raises(NumericalError, match="w = 0"):
        reference.forward(zero, x.numpy())


def test_log_det_has_no_cancellation_near_the_invertibility_limit() -> None:
    """With wᵀu = −40, 1 + tanh'(a)·wᵀû = softplus(−40) ≈ 4e-18 at a = 0: log|det| ≈ −40, not −inf."""
    spec = _spec(3, -40.0, "limit")
    w, b = spec.params["w"], float(spec.params["b"])
    x = (-b / (w @ w)) * w  # wᵀx + b = 0
    _, logdet = from_spec(spec)(torch.as_tensor(x[None]))
    assert_close(float(logdet[0].detach()), math.log(math.log1p(math.exp(-40.0))), "logdet", "float64", 3)


def test_inverse_is_differentiable_by_the_implicit_function_theorem() -> None:
    """x(θ) = f_θ⁻¹(z) satisfies f_θ(x(θ)) = z for all θ, so d/dθ of Σ v·f_θ(x(θ)) vanishes; and
    ∂x/∂z is the inverse of the forward Jacobian."""
    flow = from_spec(_spec(4, -1.2, "implicit"))
    z = _points(4, 3, "implicit")
    x = flow.inverse(z)
    v = _points(4, 3, "implicit-v")
    grads = torch.autograd.grad((flow(x)[0] * v).sum(), list(flow.parameters()))
    for g in grads:
        assert_close(g.numpy(), np.zeros(g.shape), "grad", "float64", 4)

    z0 = z[0]
    inv_jac = torch.autograd.functional.jacobian(lambda t: flow.inverse(t[None])[0], z0)
    fwd_jac = torch.autograd.functional.jacobian(lambda t: flow(t[None])[0][0], flow.inverse(z0[None])[0])
    assert_close((inv_jac @ fwd_jac).numpy(), np.eye(4), "roundtrip", "float64", 4)


def test_reference_inverse_is_exact_at_the_hard_end() -> None:
    """The reference's bisection reaches rounding level even where g' = 1 + m·tanh' is small."""
    spec = _spec(4, -4.0, "hard")
    x = _points(4, 5, "hard", scale=0.5).numpy()
    z = reference.forward(spec, x)
    assert_close(reference.forward(spec, reference.inverse(spec, z)), z, "roundtrip", "float64", 4)


@pytest.mark.parametrize("config", [{"shape": 3}, {"shape": [2, 2]}, {"shape": [3], "hidden": 2}, {"shape": []}])
def test_bad_config(config: dict) -> None:
    with pytest.raises(ConfigError):
        reference.init_spec("planar", config, rng("planar-test", "bad"))
    if list(config) == ["shape"]:
        with pytest.raises(ConfigError):
            Planar(config["shape"])


def test_bisection_is_exact_and_checks_its_bracket() -> None:
    """The reference's scalar solver stops at adjacent floats and refuses a bracket without the target."""
    root = 1.2345678901234567
    t = bisect_increasing(lambda a: a ** 3 + a, root ** 3 + root, -10.0, 10.0)
    assert abs(t - root) <= 2 * np.spacing(root)
    with pytest.raises(ConvergenceError, match="does not hold the target") as info:
        bisect_increasing(lambda a: a, 5.0, -1.0, 1.0)
    assert info.value.residual == pytest.approx(4.0 / 5.0)


@pytest.mark.parametrize("m", [3.0, 6.0, 12.0, 22.0, 50.0])
def test_inverse_converges_on_a_grid_of_steep_maps(m: float) -> None:
    """Newton steps that stay inside the bracket but do not halve the previous step are bisected:
    without that rule the scalar solve oscillates slowly on some (m, b) and hits its cap."""
    for b in np.linspace(-6.0, 6.0, 25):
        spec = _spec(3, math.log(math.expm1(m + 1.0)), f"grid-{m}")
        spec = FlowSpec(spec.kind, spec.config, {**spec.params, "b": np.asarray(b)})
        w = torch.tensor(spec.params["w"])
        targets = torch.linspace(-3.0 * m, 3.0 * m, 401, dtype=torch.float64)
        z = targets[:, None] * w / (w @ w)
        flow = from_spec(spec)
        with torch.no_grad():
            assert_close(flow(flow.inverse(z))[0].numpy(), z.numpy(), "roundtrip", "float64", 3)


ITERATION_BUDGET = 16  # the steep grid below needs at most 13 (m = 50); bisection alone needs about 50


@pytest.mark.parametrize("m", [3.0, 12.0, 50.0])
def test_the_safeguarded_newton_solve_keeps_newton_speed(m: float) -> None:
    """The safeguard takes a Newton step whenever it stays in the bracket and halves the step
    before it, so on the steep grid the solve converges in a Newton-like number of iterations. A
    safeguard that rejects good Newton steps (a wrong slope, a wrong halving reference) still
    converges by bisection, to the same values, but needs several times the budget."""
    for b in np.linspace(-6.0, 6.0, 13):
        spec = _spec(3, math.log(math.expm1(m + 1.0)), f"grid-{m}")
        spec = FlowSpec(spec.kind, spec.config, {**spec.params, "b": np.asarray(b)})
        w = torch.tensor(spec.params["w"])
        z = torch.linspace(-3.0 * m, 3.0 * m, 401, dtype=torch.float64)[:, None] * w / (w @ w)
        flow = from_spec(spec)
        flow.max_iter = ITERATION_BUDGET
        with torch.no_grad():
            assert_close(flow(flow.inverse(z))[0].numpy(), z.numpy(), "roundtrip", "float64", 3)


def test_a_solve_that_converges_on_its_last_allowed_iteration_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``max_iter`` = the number of Newton updates the solve needs, the last update is checked
    after the loop and accepted (the same relative residual as inside the loop)."""
    import flowspec.accelerated.planar as planar

    flow = from_spec(_spec(3, math.log(math.expm1(13.0)), "last-iteration"))
    target = torch.linspace(-36.0, 36.0, 401, dtype=torch.float64)
    m, b = torch.tensor(12.0, dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64)
    calls = []
    counting = type("CountingTorch", (), {"__getattr__": lambda _, name: getattr(torch, name),
                                          "tanh": staticmethod(lambda t: calls.append(1) or torch.tanh(t))})()
    monkeypatch.setattr(planar, "torch", counting)
    flow.max_iter = 100
    expected = flow._solve(target, m, b)
    updates = len(calls) - 1  # one tanh per check; the check that returned follows the last update
    monkeypatch.undo()
    flow.max_iter = updates
    assert torch.equal(flow._solve(target, m, b), expected)
    flow.max_iter = updates - 1
    with pytest.raises(ConvergenceError):
        flow._solve(target, m, b)
