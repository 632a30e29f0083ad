"""Continuous normalizing flow (cnf): the reference's DOP853 integrator and exact trace, the
accelerated kind's estimator, nfe and config checks."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from flowspec import reference
from flowspec.accelerated import from_spec
from flowspec.accelerated.cnf import CNF, default_tolerance
from flowspec.conformance.seeding import rng
from flowspec.conformance.tolerances import assert_close, tolerance
from flowspec.errors import ConfigError, ConvergenceError
from flowspec.reference import cnf as R
from flowspec.spec import FlowSpec

BASE = {"shape": [3], "hidden": [6], "activation": "tanh", "logdet": "exact"}


def _spec(key: str, **config):
    return reference.init_spec("cnf", {**BASE, **config}, rng("cnf-test", key))


def _points(d: int, n: int, key: str) -> np.ndarray:
    return rng("cnf-test", "x", key).standard_normal((n, d))


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("activation", R.ACTIVATIONS)
def test_slogdet_of_the_jacobian_equals_the_integrated_trace(d: int, activation: str) -> None:
    """The generic log|det| (slogdet of the autograd Jacobian of the solve) and ∫ tr(∂v/∂x) dt integrated
    as an augmented state agree to the reference's accuracy, as do the two solves' z."""
    spec = _spec(f"trace-{d}-{activation}", shape=[d], activation=activation)
    x = _points(d, 2, f"trace-{d}")
    pairs = [R.integrated_trace(spec, xi) for xi in x]
    assert_close(np.array([p[1] for p in pairs]), reference.log_abs_det(spec, x), "cnf_reference", "float64", d)
    assert_close(np.array([p[0] for p in pairs]), reference.forward(spec, x), "cnf_reference", "float64", d)


def _linear_field(a: np.ndarray):
    calls = [0]

    def fun(s, y):
        calls[0] += 1
        return a @ y
    return fun, calls


def test_dop853_solves_a_linear_ode_to_its_tolerance_at_order_eight() -> None:
    """dy/ds = Ay on [0, 1]: y(1) = exp(A)·y(0) to the reference's row; the work grows like tol^(−1/8)
    (an eighth-order pair: from tol 1e-6 to 1e-12 the evaluations grow by 10^(6/8) ≈ 5.6, a fifth-order
    one's by 16, a wrong tableau entry drops the order and the accuracy)."""
    gen = rng("cnf-test", "linear")
    a = gen.standard_normal((3, 3))
    y0 = gen.standard_normal(3)
    exact = scipy.linalg.expm(a) @ y0
    fun, calls = _linear_field(a)
    assert_close(R.dop853(fun, y0, 0.0, 1.0), exact, "cnf_reference", "float64", 3)
    work = {}
    for tol in (1e-6, 1e-12):
        fun, calls = _linear_field(a)
        R.dop853(fun, y0, 0.0, 1.0, tol, tol)
        work[tol] = calls[0]
    assert work[1e-12] / work[1e-6] < 8.0, work
    back = R.dop853(_linear_field(a)[0], exact, 1.0, 0.0)
    assert_close(back, y0, "cnf_reference", "float64", 3)


def test_step_cap_raises_convergence_error_with_the_error_estimate() -> None:
    """A field that blows up (dy/ds = y², y(0) = 2: y = 2/(1 − 2s), infinite at s = 1/2) and a step cap
    too small for a smooth field both raise ConvergenceError carrying the last error estimate."""
    with pytest.raises(ConvergenceError) as blow_up:
        R.dop853(lambda s, y: y * y, np.array([2.0]), 0.0, 1.0)
    assert np.isfinite(blow_up.value.residual) and blow_up.value.tolerance == R.REFERENCE_RTOL
    with pytest.raises(ConvergenceError, match="in 3 steps") as capped:
        R.dop853(_linear_field(5.0 * np.eye(2))[0], np.ones(2), 0.0, 1.0, max_steps=3)
    assert capped.value.iterations == 3 and capped.value.residual > 0.0


@pytest.mark.parametrize("key, value", [
    ("shape", [0]), ("shape", 3), ("hidden", [0]), ("hidden", "8"), ("activation", "relu"),
    ("logdet", "roulette"), ("probe", "uniform"), ("method", "rk4"), ("rtol", 0.0), ("rtol", 1.5),
    ("atol", float("nan")), ("adjoint", "yes"), ("steps", 10),
])
def test_bad_config_rejected(key: str, value) -> None:
    config = {**BASE, key: value}
    with pytest.raises(ConfigError, match=key):
        reference.init_spec("cnf", config, 0)
    with pytest.raises((ConfigError, TypeError), match=key):
        CNF(**config)


def test_nfe_counts_the_evaluations_of_the_last_call() -> None:
    """nfe is the number of dynamics evaluations of the last forward / inverse; a looser tolerance takes fewer."""
    spec = _spec("nfe")
    x = torch.as_tensor(_points(3, 4, "nfe"))
    counts = {}
    for rtol in (1e-4, 1e-9):
        flow = from_spec(FlowSpec("cnf", {**BASE, "rtol": rtol, "atol": rtol}, spec.params))
        seen = [0]
        velocity = flow.velocity
        flow.velocity = lambda *args: (seen.__setitem__(0, seen[0] + 1), velocity(*args))[1]
        with torch.no_grad():
            flow(x)
        assert flow.nfe == seen[0] > 0
        counts[rtol] = flow.nfe
        with torch.no_grad():
            flow.inverse(x)
        assert 0 < flow.nfe == seen[0] - counts[rtol]
    assert counts[1e-4] < counts[1e-9]


def test_hutchinson_uses_one_probe_per_sample_for_the_whole_solve() -> None:
    """In training with logdet = "hutchinson" the log-det is the per-probe estimate of the probe drawn
    from torch's generator at the call; in evaluation mode it is the exact trace."""
    spec = _spec("probe", logdet="hutchinson")
    flow = from_spec(spec)
    x = torch.as_tensor(_points(3, 5, "probe"))
    torch.manual_seed(7)
    probe = torch.randn(x.shape, dtype=x.dtype)
    torch.manual_seed(7)
    with torch.no_grad():
        _, estimate = flow(x)
        expected = flow.logdet_estimate(x, probe)
    assert_close(estimate.numpy(), expected.numpy(), "forward", "float64", 3)
    flow.eval()
    with torch.no_grad():
        _, exact = flow(x)
    assert_close(exact.numpy(), reference.log_abs_det(spec, x.numpy()),
                 "cnf", "float64", 3)
    assert float((estimate - exact).abs().max()) > tolerance("cnf", "float64", 3)


def test_end_time_gradient_is_the_velocity_at_the_end() -> None:
    """dz/dlog_T = T·v(z, T) (z = x(T) moves with T along the field), in the reference (autograd through
    the solver) and in the accelerated kind, with and without the adjoint."""
    spec = _spec("end-time")
    x = _points(3, 1, "end-time")
    z = reference.forward(spec, x)[0]
    expected = float(R.end_time(spec)) * R.velocity(spec, z, float(R.end_time(spec)))[0]
    weights = np.eye(3)
    ref = [reference.vjp(spec, x, weights[i:i + 1], np.zeros(1))[0]["log_T"] for i in range(3)]
    assert_close(np.array(ref), expected, "cnf_reference", "float64", 3)
    for adjoint in (False, True):
        flow = from_spec(FlowSpec("cnf", {**BASE, "adjoint": adjoint}, spec.params))
        zt, _ = flow(torch.as_tensor(x))
        grads = [torch.autograd.grad(zt[0, i], flow.log_T, retain_graph=True)[0] for i in range(3)]
        assert_close(torch.stack(grads).numpy(), expected, "cnf", "float64", 3)


@pytest.mark.parametrize("dtype, eps", [(torch.float64, np.finfo(np.float64).eps), (torch.float32, np.finfo(np.float32).eps)])
def test_default_solver_tolerance_is_the_documented_fraction_of_sqrt_eps(dtype: torch.dtype, eps: float) -> None:
    assert default_tolerance(dtype) == pytest.approx(np.sqrt(eps) / 64.0)
