"""The reference's generic machinery: Jacobian, slogdet, Newton inverse, gradients, validation."""
from __future__ import annotations

import autograd.numpy as anp
import numpy as np
import pytest

from flowspec import ConvergenceError, DomainError, FlowInputError, FlowSpec, NumericalError, reference, registry
from flowspec.conformance import finite_diff
from flowspec.conformance.seeding import rng
from flowspec.conformance.tolerances import assert_close
from flowspec.reference.solve import newton_solve


def _affine(d: int = 3) -> FlowSpec:
    return reference.init_spec("elementwise_affine", {"shape": [d]}, rng("affine", d))


def test_jacobian_and_logdet_of_affine_are_exact() -> None:
    spec = _affine()
    x = rng("x").standard_normal((2, 3))
    jac = reference.jacobian(spec, x)
    np.testing.assert_array_equal(jac[0], np.diag(np.exp(spec.params["log_scale"])))
    assert_close(reference.log_abs_det(spec, x), np.full(x.shape[0], spec.params["log_scale"].sum()), "logdet",
                 "float64", x.shape[1])


def test_log_prob_integrates_to_one_in_1d() -> None:
    spec = FlowSpec("elementwise_affine", {"shape": [1]}, {"shift": [0.3], "log_scale": [0.7]})
    grid = np.linspace(-12.0, 12.0, 20001)[:, None]
    density = np.exp(reference.log_prob(spec, grid))
    # The trapezoid rule is spectrally accurate for this smooth, rapidly decaying density, so what is left is the
    # rounding of a sum over the grid's nodes: a log-density (base term plus log-det) summed over that many terms.
    assert_close(np.trapezoid(density, grid[:, 0]), 1.0, "logdet", "float64", grid.shape[0])


def test_newton_inverse_matches_analytic_inverse() -> None:
    spec = _affine(4)
    z = rng("z").standard_normal(4) * 5
    x = newton_solve(spec, z)
    assert_close(reference.forward(spec, x[None])[0], z, "roundtrip", "float64", z.size)


@pytest.fixture
def sinh_kind(monkeypatch: pytest.MonkeyPatch) -> str:
    """A kind without analytic inverse: z = sinh(k·x), steep enough that Newton needs damping;
    registered for the one test only (other tests, e.g. the docs' catalogue, see the real registry)."""
    kind = registry.Kind(
        name="_test_no_inverse", family="tests", forward=lambda spec, x, c: anp.sinh(spec.params["k"] * x),
        event_shape=lambda c: (1,), init_params=lambda c, r: {"k": np.ones(1)},
    )
    registry.names()  # the real kinds first
    monkeypatch.setitem(registry._KINDS, kind.name, kind)
    return kind.name


def test_newton_converges_on_kind_without_inverse(sinh_kind: str) -> None:
    spec = FlowSpec(sinh_kind, {}, {"k": [2.0]})
    z = np.array([[3.0], [-40.0]])
    x = reference.inverse(spec, z)
    for xi, zi in zip(x, z):  # each sample is its own solve, compared relative to its own size
        assert_close(np.sinh(2.0 * xi), zi, "roundtrip", "float64", zi.size)


def test_newton_failure_raises_with_residual(sinh_kind: str) -> None:
    spec = FlowSpec(sinh_kind, {}, {"k": [2.0]})
    with pytest.raises(ConvergenceError) as info:
        newton_solve(spec, np.array([1e6]), max_iter=3)
    assert info.value.residual > 1e-12 and info.value.iterations == 3
    assert "relative residual" in str(info.value)


def test_vjp_matches_finite_differences() -> None:
    spec = _affine(2)
    x = rng("vjp-x").standard_normal((2, 2))
    zw, lw = rng("w").standard_normal((2, 2)), np.array([0.7, -1.3])
    g_params, g_x = reference.vjp(spec, x, zw, lw)

    def loss(shift: np.ndarray, log_scale: np.ndarray, xx: np.ndarray) -> float:
        s = FlowSpec("elementwise_affine", {"shape": [2]}, {"shift": shift, "log_scale": log_scale})
        return float(np.sum(zw * reference.forward(s, xx)) + np.sum(lw * reference.log_abs_det(s, xx)))

    def losses(params: np.ndarray) -> np.ndarray:  # rows (shift, log_scale) -> one loss each
        return np.array([[loss(p[:2], p[2:], x)] for p in params])

    # The suite's Richardson central differences, whose accuracy the fd_jacobian tolerance documents.
    params = np.concatenate([spec.params["shift"], spec.params["log_scale"]])
    fd = finite_diff.jacobian(losses, params[None], "float64", registry.REAL)[0, 0]
    reverse = np.concatenate([g_params["shift"], g_params["log_scale"]])
    for i in range(params.size):  # entry by entry, each relative to its own size
        assert_close(reverse[i], fd[i], "fd_jacobian", "float64", params.size, what=f"d loss / d param {i}")
    assert g_x.shape == x.shape


@pytest.mark.parametrize(
    "bad, error",
    [
        (np.array([[np.nan, 0.0, 0.0]]), FlowInputError),
        (np.zeros((2, 4)), FlowInputError),
        (np.zeros(3), FlowInputError),
        (np.array([["a", "b", "c"]]), FlowInputError),
    ],
)
def test_reference_rejects_bad_input(bad, error) -> None:
    with pytest.raises(error):
        reference.forward(_affine(), bad)


def test_reference_domain_error_names_the_domain() -> None:
    spec = FlowSpec("logit", {"shape": [2], "alpha": 0.05})
    with pytest.raises(DomainError, match=r"\(0, 1\)"):
        reference.forward(spec, np.array([[0.5, 1.0]]))


def test_singular_jacobian_raises() -> None:
    spec = FlowSpec("elementwise_affine", {"shape": [1]}, {"shift": [0.0], "log_scale": [-800.0]})
    with pytest.raises(NumericalError, match="singular"):
        reference.log_abs_det(spec, np.ones((1, 1)))


def test_sample_follows_the_flow() -> None:
    spec = FlowSpec("elementwise_affine", {"shape": [1]}, {"shift": [2.0], "log_scale": [np.log(0.5)]})
    x = reference.sample(spec, 20000, rng("sample"))
    # x = (z − 2)/0.5 with z ~ N(0, 1): mean −4, std 2. Tolerances are 6 standard errors (false alarm < 1e-8).
    assert abs(x.mean() + 4.0) < 6 * 2 / np.sqrt(20000)
    assert abs(x.std() - 2.0) < 6 * 2 / np.sqrt(2 * 20000)
