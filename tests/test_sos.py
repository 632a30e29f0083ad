"""The sum-of-squares polynomial flow (Jaini et al. 2019): the reference's closed form against
quadrature of the integrand, its hand-written derivatives, the degenerate shared root, the float
range, the inverse's cap, the layout and bad configs in both layers."""
from __future__ import annotations

import autograd
import autograd.numpy as anp
import numpy as np
import pytest
import torch

from flowspec import reference
from flowspec.accelerated import from_spec
from flowspec.conformance.seeding import rng
from flowspec.conformance.sos import root_coefficients
from flowspec.conformance.tolerances import assert_close
from flowspec.errors import ConfigError, ConvergenceError, NumericalError
from flowspec.accelerated.sos import SOSPolynomial
from flowspec.reference.sos import (EPS_FLOOR, closed_form, entry_laws, integral, integrand, parse_config,
                                    sos_log_integrand, sos_value, split_parameters)


def _laws(degree: int, squares: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    h = rng("test_sos laws", degree, squares, seed).standard_normal((n, 2 + squares * (degree + 1)))
    return split_parameters(h, degree, squares)


@pytest.mark.parametrize("degree", [0, 1, 2, 3, 5])
@pytest.mark.parametrize("squares", [1, 3])
def test_closed_form_equals_gauss_legendre_quadrature(degree: int, squares: int) -> None:
    """c + ∫₀ˣ p by (r + 1)-node Gauss–Legendre (exact for the degree-2r integrand, evaluated from the
    squares' values) equals the closed form: a wrong constant, a lost cross term or a wrong 1/(m + 1)
    misses by O(1)."""
    c, a, eps2 = _laws(degree, squares, 12, 0)
    x = 2.0 * rng("test_sos quadrature x", degree, squares).standard_normal(12)
    nodes, weights = np.polynomial.legendre.leggauss(degree + 1)
    t = x[:, None] * (nodes + 1.0) / 2.0
    p = integrand(t, np.broadcast_to(a[:, None], t.shape + a.shape[1:]), eps2[:, None])
    assert_close(sos_value(x, c, a, eps2), c + x / 2.0 * (p @ weights), "forward", "float64", 1,
                 "closed form vs quadrature")
    assert np.array_equal(sos_value(np.zeros(12), c, a, eps2), c)  # the constant of integration


def test_integral_primitive_derivatives_equal_autograd_of_the_closed_form() -> None:
    """The primitive's written-out first derivatives (x, a, ε²) and a second derivative (∂²/∂x∂a,
    which the gradient of the log-det uses) equal autograd through the plain closed form."""
    _, a, eps2 = _laws(3, 2, 6, 1)
    x = rng("test_sos primitive x").standard_normal(6)

    def plain(x_, a_, e_):
        return anp.sum(closed_form(x_, a_, e_))

    def custom(x_, a_, e_):
        return anp.sum(integral(x_, a_, e_))

    for arg in range(3):
        assert_close(autograd.grad(custom, arg)(x, a, eps2), autograd.grad(plain, arg)(x, a, eps2), "grad",
                     "float64", 6, f"∂/∂ argument {arg}")
    mixed = autograd.grad(lambda a_: anp.sum(autograd.elementwise_grad(custom, 0)(x, a_, eps2) ** 2))(a)
    expected = autograd.grad(lambda a_: anp.sum(autograd.elementwise_grad(plain, 0)(x, a_, eps2) ** 2))(a)
    assert_close(mixed, expected, "grad", "float64", 6, "∂²/∂x∂a")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_derivative_at_a_shared_root_is_the_floor(dtype: torch.dtype) -> None:
    """All squares vanish at ρ: p(ρ) = ε² ≥ EPS_FLOOR, and both layers return log(ε²) there to the
    dtype's rounding (the squares' values, not the expanded coefficients, which cancel there)."""
    rho, degree, squares = 1.7, 3, 3
    a = root_coefficients(rho, degree, squares, rng("test_sos root"))[None]
    eps2 = np.array([EPS_FLOOR])
    x = np.array([rho])
    log_p = sos_log_integrand(x, a, eps2)
    assert_close(log_p, np.log(eps2), "logdet", "float64", 1, "reference log p(ρ)")
    cfg = {"dim": 1, "degree": degree, "squares": squares}
    spec = reference.init_spec("sos", cfg, rng("test_sos root spec"))
    flow = from_spec(spec).to(dtype)
    got = flow._log_integrand(torch.tensor(x, dtype=dtype), torch.tensor(a, dtype=dtype), torch.tensor(eps2, dtype=dtype))
    assert_close(got.double().numpy(), log_p, "logdet", str(dtype).split(".")[1], 1, "accelerated log p(ρ)")


def test_float_range_is_an_error_not_inf() -> None:
    """Beyond the float range (module docstring of flowspec.reference.sos) the float32 forward raises
    NumericalError; the inverse of the largest float32 is still finite and maps back to it; a float64
    target whose root lies beyond the bracket's reach (64 doublings, |x| ≈ 3.7·10¹⁹) raises
    ConvergenceError rather than returning a wrong x."""
    spec = reference.init_spec("sos", {"dim": 2, "degree": 3, "squares": 2}, rng("test_sos overflow"))
    flow = from_spec(spec).to(torch.float32)
    with pytest.raises(NumericalError, match="non-finite"):
        flow(torch.full((1, 2), 1e7))
    top = torch.full((1, 2), float(torch.finfo(torch.float32).max) / 1.01)
    back = flow(flow.inverse(top))[0].detach().double().numpy()
    assert_close(back / 3.4e38, top.double().numpy() / 3.4e38, "roundtrip", "float32", 2, "f(f⁻¹(z)) at 3.4e38")
    with pytest.raises(ConvergenceError, match="bracket"):
        flow.double().inverse(torch.full((1, 2), 1e300, dtype=torch.float64))


def test_inverse_at_its_cap_raises_with_the_residual() -> None:
    spec = reference.init_spec("sos", {"dim": 3, "degree": 2, "squares": 2}, rng("test_sos cap"))
    flow = from_spec(spec)
    flow.max_iter = 2
    with pytest.raises(ConvergenceError) as info:
        flow.inverse(torch.tensor([[40.0, -3.0, 7.0]], dtype=torch.float64))
    assert info.value.residual > 0.0 and info.value.iterations == 2


def test_layout_and_affine_degree_zero() -> None:
    """k = 2 + K(r + 1) outputs per dimension; r = 0 gives z = c + (Σ_k a_k0² + ε²)·x."""
    cfg = {"dim": 3, "degree": 0, "squares": 2, "hidden": [4]}
    made, sos = parse_config(cfg)
    spec = reference.init_spec("sos", cfg, rng("test_sos affine"))
    assert spec.params["net.2.weight"].shape == (sos.outputs_per_dim * 3, 4) and sos.outputs_per_dim == 4
    x = rng("test_sos affine x").standard_normal(3)
    c, a, eps2 = entry_laws(spec, x)
    assert_close(reference.forward(spec, x[None])[0], c + (np.sum(a[..., 0] ** 2, axis=-1) + eps2) * x, "forward",
                 "float64", 3, "r = 0 is affine")


@pytest.mark.parametrize("bad", [{"degree": -1}, {"degree": 1.5}, {"degree": True}, {"squares": 0},
                                 {"squares": -2}])
def test_bad_configs_rejected_in_both_layers(bad: dict) -> None:
    key = next(iter(bad))
    config = {"dim": 2, **bad}
    with pytest.raises(ConfigError, match=key):
        parse_config(config)
    with pytest.raises(ConfigError, match=key):
        SOSPolynomial(**config)
