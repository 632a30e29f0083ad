"""Radial flow: the closed-form inverse, its edge cases and the stable log-determinant."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from flowspec import reference
from flowspec.accelerated import from_spec
from flowspec.accelerated.radial import Radial
from flowspec.conformance.seeding import rng
from flowspec.conformance.tolerances import assert_close
from flowspec.errors import ConfigError
from flowspec.reference.radial import radius_from_latent
from flowspec.spec import FlowSpec


def _spec(d: int, key: str, **scalars: float) -> FlowSpec:
    spec = reference.init_spec("radial", {"shape": [d]}, rng("radial-test", key))
    return FlowSpec("radial", spec.config, {**spec.params, **{k: np.asarray(v) for k, v in scalars.items()}})


@pytest.mark.parametrize("rho", [0.0, 1e-8, 0.3, 1.0, 7.0, 1e6])
@pytest.mark.parametrize("alpha,alpha_beta", [(0.5, 2.0), (2.0, 0.1), (1e-3, 1e-3), (3.0, 3.0)])
def test_radius_is_the_non_negative_root(rho: float, alpha: float, alpha_beta: float) -> None:
    r = radius_from_latent(rho, alpha, alpha_beta)
    assert r >= 0.0
    # It solves ρ = r·(α + β + r)/(α + r), the radius map of eq. 17 along the ray from x0.
    rho_again = r * (alpha_beta + r) / (alpha + r)
    if rho == 0.0:
        assert rho_again == 0.0
    else:  # relative to ρ, also for tiny ρ: the closed form has no cancellation
        assert_close(rho_again / rho, 1.0, "roundtrip", "float64", 1)
    roots = np.roots([1.0, alpha_beta - alpha - rho + alpha, -alpha * rho]).real
    assert_close(r, max(roots), "inverse", "float64", 1)


def test_the_centre_is_fixed_and_differentiable() -> None:
    """f(x0) = x0 = f⁻¹(x0), and ∂f/∂x = (1 + β/α)·I there (no NaN from the norm's derivative at 0)."""
    spec = _spec(3, "centre")
    x0 = spec.params["x0"][None].copy()
    np.testing.assert_array_equal(reference.forward(spec, x0), x0)
    np.testing.assert_array_equal(reference.inverse(spec, x0), x0)
    alpha = np.logaddexp(0.0, float(spec.params["alpha_hat"]))
    beta = np.logaddexp(0.0, float(spec.params["beta_hat"])) - alpha
    expected = (1.0 + beta / alpha) * np.eye(3)
    jac = reference.jacobian(spec, x0)[0]
    np.testing.assert_array_equal(jac - np.diag(np.diag(jac)), 0.0)
    assert_close(np.diag(jac), np.diag(expected), "diag", "float64", 3)
    flow = from_spec(spec)
    with torch.no_grad():
        torch.testing.assert_close(flow.inverse(torch.as_tensor(x0)), torch.as_tensor(x0), rtol=0, atol=0)
        _, logdet = flow(torch.as_tensor(x0))
    assert_close(logdet.numpy(), np.array([3 * np.log1p(beta / alpha)]), "logdet", "float64", 3)
    jac = torch.autograd.functional.jacobian(lambda t: flow(t[None])[0][0], torch.as_tensor(x0[0])).numpy()
    np.testing.assert_array_equal(jac - np.diag(np.diag(jac)), 0.0)
    assert_close(np.diag(jac), np.diag(expected), "diag", "float64", 3)


@pytest.mark.parametrize("beta_hat", [-30.0, -5.0, 0.0, 4.0])
def test_log_det_is_stable_as_beta_approaches_minus_alpha(beta_hat: float) -> None:
    """α + β = softplus(β̂) → 0 contracts towards x0; log|det| uses softplus(β̂) directly, no cancellation."""
    spec = _spec(4, f"beta-{beta_hat}", beta_hat=beta_hat)
    x = rng("radial-test", "x", beta_hat).standard_normal((3, 4))
    _, logdet = from_spec(spec)(torch.as_tensor(x))
    alpha, ab = np.logaddexp(0.0, float(spec.params["alpha_hat"])), np.logaddexp(0.0, beta_hat)
    r = np.linalg.norm(x - spec.params["x0"], axis=1)
    expected = 3 * np.log((ab + r) / (alpha + r)) + np.log(alpha * ab + 2 * alpha * r + r * r) - 2 * np.log(alpha + r)
    assert_close(logdet.detach().numpy(), expected, "logdet", "float64", 4)
    if beta_hat > -10:  # beyond, the reference's slogdet of the full Jacobian loses the digits
        assert_close(logdet.detach().numpy(), reference.log_abs_det(spec, x), "logdet", "float64", 4)


@pytest.mark.parametrize("alpha_hat,beta_hat", [(22.0, 0.3), (0.3, 22.0), (21.0, 23.5)])
def test_softplus_arguments_above_twenty_are_exact(alpha_hat: float, beta_hat: float) -> None:
    """α = softplus(α̂) and α + β = softplus(β̂) exactly above 20, where torch's softplus returns its
    argument (off by e^−20 ≈ 2e-9, beyond a float64 tolerance): values, log-dets and inverses."""
    spec = _spec(3, f"large-{alpha_hat}-{beta_hat}", alpha_hat=alpha_hat, beta_hat=beta_hat)
    flow = from_spec(spec)
    with torch.no_grad():
        alpha, _, alpha_beta = flow._coefficients()
    assert float(alpha) - alpha_hat == pytest.approx(np.log1p(np.exp(-alpha_hat)), rel=1e-6)
    assert float(alpha_beta) - beta_hat == pytest.approx(np.log1p(np.exp(-beta_hat)), rel=1e-6)
    x = 3.0 * rng("radial-test", "large-x", alpha_hat).standard_normal((4, 3))
    with torch.no_grad():
        z, logdet = flow(torch.as_tensor(x))
        x_back = flow.inverse(z)
    assert_close(z.numpy(), reference.forward(spec, x), "forward", "float64", 3)
    assert_close(logdet.numpy(), reference.log_abs_det(spec, x), "logdet", "float64", 3)
    assert_close(x_back.numpy(), reference.inverse(spec, z.numpy()), "inverse", "float64", 3)


def test_one_dimension_has_no_tangential_term() -> None:
    spec = _spec(1, "one")
    x = rng("radial-test", "one-x").standard_normal((4, 1))
    _, logdet = from_spec(spec)(torch.as_tensor(x))
    assert_close(logdet.detach().numpy(), reference.log_abs_det(spec, x), "logdet", "float64", 1)


def test_default_parameters_are_the_identity() -> None:
    flow = Radial([3]).double()
    x = torch.as_tensor(rng("radial-test", "identity").standard_normal((2, 3)))
    with torch.no_grad():
        z, logdet = flow(x)
        assert float(flow._coefficients()[1]) == 0.0
    torch.testing.assert_close(z, x, rtol=0, atol=0)
    assert_close(logdet.numpy(), np.zeros(2), "logdet", "float64", 3)


@pytest.mark.parametrize("config", [{"shape": 3}, {"shape": [2, 2]}, {"shape": [0]}, {"shape": [3], "alpha": 1.0}])
def test_bad_config(config: dict) -> None:
    with pytest.raises(ConfigError):
        reference.init_spec("radial", config, rng("radial-test", "bad"))
    if list(config) == ["shape"]:
        with pytest.raises(ConfigError):
            Radial(config["shape"])
