"""The rational-quadratic spline kernel and kinds (Durkan et al. 2019): reference against accelerated,
the kernel's edge cases (knots, ±B, tails, K = 1, extreme raw), configs and the coupling reuse."""
from __future__ import annotations

import autograd
import numpy as np
import pytest
import torch

from flowspec import reference
from flowspec.accelerated import from_spec
from flowspec.accelerated.spline import per_entry, rational_quadratic as accelerated_rq
from flowspec.conformance.tolerances import assert_close, relative_error, tolerance
from flowspec.errors import ConfigError
from flowspec.reference.spline import parse_spline, rational_quadratic, spline_knots

ARGS = {"bound": 3.0, "min_width": 1e-3, "min_height": 1e-3, "min_derivative": 1e-3}
DTYPES = {"float64": torch.float64, "float32": torch.float32}


def _close_conditioned(actual: np.ndarray, expected: np.ndarray, dtype: str, x: np.ndarray, raw: np.ndarray,
                       what: str) -> None:
    """Log-derivatives compared on the conditioned logdet row at κ = max |x·(log f′)′(x)|: a
    log-derivative moves by (log f′)′ times the rounding of its point (or of ξ), large next to a
    thin steep bin."""
    second = autograd.elementwise_grad(lambda v: rational_quadratic(v, raw, **ARGS)[1])(x)
    kappa = float(np.max(np.abs(second) * np.maximum(1.0, np.abs(x))))
    err, tol = relative_error(actual, expected), tolerance("logdet", dtype, 1, kappa)
    assert err <= tol, f"{what}: relative error {err:.3e} > tolerance {tol:.1e} (κ {kappa:.2e})"


def _points(raw: np.ndarray) -> np.ndarray:
    """Knots, knots ± 1e-9, tails and random points for one entry's ``raw``."""
    xs, _, _ = spline_knots(raw, **ARGS)
    rest = np.random.default_rng(1).uniform(-5.0, 5.0, 20)
    return np.concatenate([xs, xs + 1e-9, xs - 1e-9, [-30.0, -3.5, 3.5, 30.0], rest])


@pytest.mark.parametrize("bins", [1, 2, 5])
def test_reference_log_derivative_is_autograd_derivative(bins: int) -> None:
    raw1 = np.random.default_rng(bins).normal(size=3 * bins - 1)
    x = _points(raw1)
    raw = np.broadcast_to(raw1, x.shape + raw1.shape).copy()
    _, log_d = rational_quadratic(x, raw, **ARGS)
    slope = autograd.elementwise_grad(lambda v: rational_quadratic(v, raw, **ARGS)[0])(x)
    assert_close(np.log(slope), log_d, "logdet", "float64", 1, "log dy/dx vs autograd")


@pytest.mark.parametrize("bins", [1, 3, 5])
def test_reference_inverse_and_knots(bins: int) -> None:
    raw1 = np.random.default_rng(10 + bins).normal(size=3 * bins - 1)
    xs, ys, ds = spline_knots(raw1, **ARGS)
    assert xs[0] == -3.0 and xs[-1] == 3.0 and ds[0] == 1.0 and ds[-1] == 1.0
    raw = np.broadcast_to(raw1, xs.shape + raw1.shape)
    y, log_d = rational_quadratic(xs, raw, **ARGS)
    assert_close(y, ys, "forward", "float64", 1, "knots")
    assert_close(log_d, np.log(ds), "logdet", "float64", 1, "derivatives at the knots")
    x = _points(raw1)
    raw = np.broadcast_to(raw1, x.shape + raw1.shape)
    y, log_d = rational_quadratic(x, raw, **ARGS)
    x_back, log_inv = rational_quadratic(y, raw, inverse=True, **ARGS)
    assert_close(x_back, x, "inverse", "float64", 1, "round trip")
    _close_conditioned(log_inv, -log_d, "float64", x, raw, "inverse log-derivative")
    tails = np.abs(x) > 3.0
    assert np.array_equal(y[tails], x[tails]) and np.all(log_d[tails] == 0.0)


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("bins", [1, 2, 5])
def test_accelerated_kernel_matches_reference(dtype: str, bins: int) -> None:
    raw1 = np.random.default_rng(20 + bins).normal(size=3 * bins - 1).astype(dtype).astype(np.float64)
    x = _points(raw1).astype(dtype).astype(np.float64)
    raw = np.broadcast_to(raw1, x.shape + raw1.shape).copy()
    y, log_d = rational_quadratic(x, raw, **ARGS)
    x_inv, log_inv = rational_quadratic(y.astype(dtype).astype(np.float64), raw, inverse=True, **ARGS)
    t = DTYPES[dtype]
    ty, tlog = accelerated_rq(torch.tensor(x, dtype=t), torch.tensor(raw, dtype=t), **ARGS)
    tx, tlog_inv = accelerated_rq(torch.tensor(y, dtype=t), torch.tensor(raw, dtype=t), inverse=True, **ARGS)
    assert_close(ty.numpy(), y, "forward", dtype, 1, "forward")
    _close_conditioned(tlog.numpy(), log_d, dtype, x, raw, "log-derivative")
    assert_close(tx.numpy(), x_inv, "inverse", dtype, 1, "inverse")
    _close_conditioned(tlog_inv.numpy(), log_inv, dtype, x, raw, "inverse log-derivative")


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_extreme_raw_is_finite_and_inside(dtype: str) -> None:
    rng = np.random.default_rng(3)
    raw = torch.tensor(50.0 * rng.choice([-1.0, 1.0], size=(200, 14)), dtype=DTYPES[dtype])
    x = torch.linspace(-3.0, 3.0, 200, dtype=DTYPES[dtype])
    for inverse in (False, True):
        y, log_d = accelerated_rq(x, raw, inverse=inverse, **ARGS)
        assert torch.isfinite(y).all() and torch.isfinite(log_d).all()
        assert (y.abs() <= 3.0).all()


def test_edges_map_exactly() -> None:
    raw = torch.randn(2, 11, dtype=torch.float64)
    for inverse in (False, True):
        y, log_d = accelerated_rq(torch.tensor([-3.0, 3.0], dtype=torch.float64), raw, inverse=inverse, **ARGS)
        assert_close(y.numpy(), np.array([-3.0, 3.0]), "forward", "float64", 1, "±B")
        assert_close(log_d.numpy(), np.zeros(2), "logdet", "float64", 1, "slope 1 at ±B")


def test_per_entry_layout_is_k_blocks() -> None:
    h = torch.arange(15, dtype=torch.float64).reshape(1, 15)  # k = 5 blocks of n = 3 entries
    raw = per_entry(h, 5)
    assert raw.shape == (1, 3, 5) and raw[0, 1, 2].item() == 2 * 3 + 1


@pytest.mark.parametrize("config, key", [
    ({"bins": 0}, "bins"), ({"bins": 2.0}, "bins"), ({"bound": 0.0}, "bound"), ({"bound": float("inf")}, "bound"),
    ({"min_width": 0.2, "bins": 5}, "min_width"), ({"min_height": -1.0}, "min_height"),
    ({"min_derivative": 0}, "min_derivative"),
])
def test_bad_spline_keys_rejected(config: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        parse_spline(config)


@pytest.mark.parametrize("kind, config", [
    ("spline", {"shape": [3], "extra": 1}), ("spline_coupling", {"shape": [4], "scale_factor": 1.0}),
    ("spline_autoregressive", {"dim": 3, "mask": "channel"}),
])
def test_unknown_keys_rejected(kind: str, config: dict) -> None:
    with pytest.raises(ConfigError, match="unknown config keys"):
        reference.init_spec(kind, config, np.random.default_rng(0))


@pytest.mark.parametrize("kind, config", [
    ("spline", {"shape": [2, 3], "bins": 3}),
    ("spline_coupling", {"shape": [5], "bins": 4, "mask": "checkerboard", "context_dim": 2}),
    ("spline_coupling", {"shape": [2, 2, 3], "conditioner": "conv", "bins": 2}),
    ("spline_autoregressive", {"dim": 4, "bins": 3, "order": "reversed", "context_dim": 2}),
])
def test_kinds_match_reference(kind: str, config: dict) -> None:
    spec = reference.init_spec(kind, config, np.random.default_rng(0))
    shape = reference.event_shape(spec)
    rng = np.random.default_rng(1)
    x = 2.0 * rng.standard_normal((3, *shape))
    c = rng.standard_normal((3, 2)) if config.get("context_dim") else None
    flow = from_spec(spec)
    tc = None if c is None else torch.tensor(c)
    z, logdet = flow(torch.tensor(x), tc)
    size = int(np.prod(shape))
    assert_close(z.detach().numpy(), reference.forward(spec, x, c), "forward", "float64", size, "z")
    assert_close(logdet.detach().numpy(), reference.log_abs_det(spec, x, c), "logdet", "float64", size, "log|det|")
    x_back, logdet_inv = flow.inverse_and_logdet(z, tc)
    assert_close(x_back.detach().numpy(), x, "roundtrip", "float64", size, "x")
    assert_close(logdet_inv.detach().numpy(), -logdet.detach().numpy(), "logdet", "float64", size, "inverse log|det|")
    assert sorted(flow.to_spec().params) == sorted(spec.params)
