"""The logit of a logistic-mixture CDF and the Flow++ coupling (eqs. 17–20): the map against autograd
and closed forms, its float32 accuracy where the naive formula saturates, the bracketed inverse and
its convergence error, the conditioner layout, configs, and the kind against the reference."""
from __future__ import annotations

import autograd
import numpy as np
import pytest
import torch

from flowspec import reference
from flowspec.accelerated import from_spec
from flowspec.accelerated import logistic_mixture as acc
from flowspec.conformance.seeding import rng
from flowspec.conformance.tolerances import EPS, assert_close
from flowspec.errors import ConfigError, ConvergenceError
from flowspec.reference import logistic_mixture as ref

KIND = "logistic_mixture_coupling"
DTYPES = {"float64": torch.float64, "float32": torch.float32}


def _mixture(k: int, key: str, peaked: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(log π, μ, s) of K components: weights down to e^−30, means over ±3, scales e^±2 (peaked: e^−6…e^−3)."""
    gen = rng("test_logistic_mixture", key, k)
    logits = gen.normal(0.0, 10.0, k)
    log_scale = gen.uniform(-6.0, -3.0, k) if peaked else gen.uniform(-2.0, 2.0, k)
    return logits - np.logaddexp.reduce(logits), gen.uniform(-3.0, 3.0, k), log_scale


def _points(mu: np.ndarray, log_scale: np.ndarray) -> np.ndarray:
    """Every component's centre ± (¼ … 10⁴) of its scale: the peaks, both tails and far beyond."""
    offsets = np.array([0.0, 0.25, 1.0, 4.0, 20.0, 50.0, 300.0, 1e4])
    offsets = np.concatenate([-offsets[1:], offsets])
    return (mu[:, None] + np.exp(log_scale)[:, None] * offsets).ravel()


def _broadcast(x: np.ndarray, *params: np.ndarray) -> list[np.ndarray]:
    return [np.broadcast_to(p, x.shape + p.shape).copy() for p in params]


def _close_each(actual: np.ndarray, expected: np.ndarray, quantity: str, dtype: str, what: str) -> None:
    """Every entry relative to its own size (the points span 1 to 10⁵): one comparison per entry."""
    for i, (a, e) in enumerate(zip(np.ravel(actual), np.ravel(expected))):
        assert_close(np.array([a]), np.array([e]), quantity, dtype, 1, f"{what} at point {i}")


@pytest.mark.parametrize("k, peaked", [(1, False), (2, False), (4, False), (3, True)])
def test_reference_log_derivative_is_log_of_autograd_derivative(k: int, peaked: bool) -> None:
    log_pi, mu, log_scale = _mixture(k, "derivative", peaked)
    x = _points(mu, log_scale)
    params = _broadcast(x, log_pi, mu, log_scale)
    ell, log_d = ref.mixture_logit_and_log_derivative(x, *params)
    slope = autograd.elementwise_grad(lambda v: ref.mixture_logit(v, *params))(x)
    assert np.all(np.isfinite(ell)) and np.all(slope > 0)
    _close_each(log_d, np.log(slope), "logdet", "float64", "log ℓ′ vs autograd")
    assert np.all(log_d <= -log_scale.min() + 1e-12)  # ℓ′ ≤ max_i e^{−s_i} (a variance bound)


def test_reference_logit_closed_forms() -> None:
    """One component, or K identical ones whatever π: ℓ = u exactly, to |u| = 10⁴; K components in the
    centre (|u| ≤ 4): the naive float64 formula, which is accurate there."""
    log_pi, mu, log_scale = _mixture(3, "closed forms")
    u = np.linspace(-1e4, 1e4, 41)
    same = _broadcast(u, log_pi, np.full(3, 0.5), np.full(3, -1.0))
    assert_close(ref.mixture_logit(0.5 + u * np.exp(-1.0), *same), u, "forward", "float64", 1, "ℓ = u")
    x = np.linspace(-4.0, 4.0, 33)
    params = _broadcast(x, log_pi, mu, log_scale)
    cdf = np.sum(np.exp(log_pi) / (1.0 + np.exp(-(x[:, None] - mu) * np.exp(-log_scale))), axis=-1)
    assert_close(ref.mixture_logit(x, *params), np.log(cdf / (1.0 - cdf)), "forward", "float64", 1, "naive centre")


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("peaked", [False, True])
def test_accelerated_map_matches_reference_everywhere(dtype: str, peaked: bool) -> None:
    log_pi, mu, log_scale = _mixture(4, "accelerated", peaked)
    t = DTYPES[dtype]
    log_pi, mu, log_scale = (np.asarray(v, dtype).astype(np.float64) for v in (log_pi, mu, log_scale))
    x = _points(mu, log_scale).astype(dtype).astype(np.float64)
    params = _broadcast(x, log_pi, mu, log_scale)
    ell, log_d = ref.mixture_logit_and_log_derivative(x, *params)
    t_ell, t_log_d = acc.mixture_logit_and_log_derivative(*(torch.tensor(v, dtype=t) for v in (x, *params)))
    _close_each(t_ell.numpy(), ell, "forward", dtype, "ℓ")
    _close_each(t_log_d.numpy(), log_d, "logdet", dtype, "log ℓ′")


def test_float32_logit_finite_and_accurate_where_the_naive_formula_saturates() -> None:
    log_pi, mu, log_scale = (np.asarray(v, "float32").astype(np.float64) for v in _mixture(3, "saturation"))
    right = np.max(mu + np.exp(log_scale) * np.array([[20.0], [60.0], [500.0]]), axis=1)
    left = np.min(mu - np.exp(log_scale) * np.array([[120.0], [500.0]]), axis=1)
    x = np.concatenate([right, left]).astype("float32").astype(np.float64)
    params = [torch.tensor(v, dtype=torch.float32) for v in _broadcast(x, log_pi, mu, log_scale)]
    tx = torch.tensor(x, dtype=torch.float32)
    u = (tx[:, None] - params[1]) * torch.exp(-params[2])
    naive = torch.logit((params[0].exp() * torch.sigmoid(u)).sum(-1))
    assert not torch.isfinite(naive).any()  # the premise: every point saturates the naive formula in float32
    ell, log_d = acc.mixture_logit_and_log_derivative(tx, *params)
    expected, expected_log_d = ref.mixture_logit_and_log_derivative(x, *_broadcast(x, log_pi, mu, log_scale))
    _close_each(ell.numpy(), expected, "forward", "float32", "ℓ in the far tails")
    _close_each(log_d.numpy(), expected_log_d, "logdet", "float32", "log ℓ′ in the far tails")


@pytest.mark.parametrize("k, peaked", [(1, False), (3, False), (4, True)])
def test_inverses_in_logit_space_both_layers(k: int, peaked: bool) -> None:
    log_pi, mu, log_scale = _mixture(k, "inverse", peaked)
    x = _points(mu, log_scale)
    params = _broadcast(x, log_pi, mu, log_scale)
    ell = ref.mixture_logit(x, *params)
    low, high = ref.logit_bracket(ell, params[1], params[2])
    assert np.all(ref.mixture_logit(low, *params) <= ell + 1e-12 * np.abs(ell))
    assert np.all(ref.mixture_logit(high, *params) >= ell - 1e-12 * np.abs(ell))
    x_hat = ref.mixture_logit_inverse(ell, *params)
    _close_each(ref.mixture_logit(x_hat, *params), ell, "roundtrip", "float64", "reference ℓ(ℓ⁻¹(t))")
    # x itself where it is well determined: the relative condition (|ℓ| + 1)/(ℓ′·max(1, |x|)) ≤ 10
    # (between peaked components F is flat and any x in the gap has the same ℓ to rounding)
    log_d = ref.mixture_logit_log_derivative(x, *params)
    sharp = (np.abs(ell) + 1.0) * np.exp(-log_d) / np.maximum(1.0, np.abs(x)) <= 10.0
    assert np.sum(sharp) >= len(x) // 2
    _close_each(x_hat[sharp], x[sharp], "inverse", "float64", "reference ℓ⁻¹")
    for dtype, t in DTYPES.items():
        tv = [torch.tensor(np.asarray(v, dtype), dtype=t) for v in (ell, *params)]
        x_hat = acc.mixture_logit_inverse(*tv)
        back = acc.mixture_logit_and_log_derivative(x_hat, *tv[1:])[0]
        _close_each(back.numpy(), tv[0].numpy(), "roundtrip", dtype, f"ℓ(ℓ⁻¹(t)) {dtype}")


def test_inverse_raises_convergence_error_with_its_residual_at_the_cap() -> None:
    log_pi, mu, log_scale = _mixture(4, "cap")
    target = np.array([0.3, -2.0, 40.0])
    params = _broadcast(target, log_pi, mu, log_scale)
    with pytest.raises(ConvergenceError) as caught:
        ref.mixture_logit_inverse(target, *params, max_iter=2)
    assert caught.value.residual > caught.value.tolerance and caught.value.iterations == 2
    tv = [torch.tensor(v) for v in (target, *params)]
    with pytest.raises(ConvergenceError) as caught:
        acc.mixture_logit_inverse(*tv, max_iter=2)
    assert caught.value.residual > caught.value.tolerance
    spec = reference.init_spec(KIND, {"shape": [4]}, rng("test_logistic_mixture", "cap spec"))
    flow = from_spec(spec)
    flow.max_iter = 1
    with pytest.raises(ConvergenceError, match="logistic mixture coupling inverse"):
        flow.inverse(torch.full((2, 4), 3.0, dtype=torch.float64))


def test_conditioner_layout_and_entry_mixtures() -> None:
    """Blocks [K logits | K means | K raw log-scales | raw a | b]: fixed means and log-scales come
    back from the ``logit_mixture`` extra, and the coupling's z is ℓ·e^{a} + b of those parameters."""
    spec = reference.init_spec(KIND, {"shape": [5], "components": 3, "log_scale_bound": 2.0, "scale_factor": 0.5},
                               rng("test_logistic_mixture", "layout"))
    spec = ref.with_fixed_components(spec, np.array([-1.0, 0.0, 2.0]), np.array([-0.5, 0.1, 0.9]))
    x = rng("test_logistic_mixture", "layout x").standard_normal(5)
    m = ref.entry_mixtures(spec, x)
    assert list(m.index) == [2, 3, 4]
    assert_close(m.mu, np.tile([-1.0, 0.0, 2.0], (3, 1)), "forward", "float64", 1, "μ")
    assert_close(m.log_scale, np.tile([-1.0, 0.2, 1.8], (3, 1)), "forward", "float64", 1, "s")
    # Σ exp(log π) = 1 up to the rounding of K exponentials and K − 1 additions: (K + 1)·ε
    rounding = (m.log_pi.shape[1] + 1) * EPS["float64"]
    assert np.all(np.abs(m.a) <= 0.5) and np.all(np.abs(np.exp(m.log_pi).sum(axis=1) - 1.0) <= rounding)
    z = reference.forward(spec, x[None])[0]
    expected = ref.mixture_logit(x[m.index], m.log_pi, m.mu, m.log_scale) * np.exp(m.a) + m.b
    assert_close(z[m.index], expected, "forward", "float64", 5, "z_t")
    assert np.array_equal(z[:2], x[:2])


@pytest.mark.parametrize("config, key", [
    ({"components": 0}, "components"), ({"components": 2.0}, "components"), ({"scale_factor": 0.0}, "scale_factor"),
    ({"log_scale_bound": -1.0}, "log_scale_bound"), ({"log_scale_bound": float("inf")}, "log_scale_bound"),
    ({"bins": 4}, "unknown config keys"),
])
def test_bad_config_rejected_in_both_layers(config: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        reference.init_spec(KIND, {"shape": [4], **config}, rng("test_logistic_mixture", "config"))
    with pytest.raises(ConfigError, match=key):
        acc.LogisticMixtureCoupling([4], **config)


@pytest.mark.parametrize("config", [
    {"shape": [5], "components": 2, "mask": "checkerboard", "context_dim": 2},
    {"shape": [2, 2, 3], "conditioner": "conv", "components": 3, "scale_factor": 2.0},
])
def test_kind_matches_reference_in_both_directions(config: dict) -> None:
    spec = reference.init_spec(KIND, config, rng("test_logistic_mixture", "kind", repr(config)))
    shape = reference.event_shape(spec)
    gen = rng("test_logistic_mixture", "kind inputs", repr(config))
    x = 3.0 * gen.standard_normal((3, *shape))
    c = gen.standard_normal((3, 2)) if config.get("context_dim") else None
    flow, tc = from_spec(spec), None if c is None else torch.tensor(c)
    z, logdet = flow(torch.tensor(x), tc)
    size = int(np.prod(shape))
    assert_close(z.detach().numpy(), reference.forward(spec, x, c), "forward", "float64", size, "z")
    assert_close(logdet.detach().numpy(), reference.log_abs_det(spec, x, c), "logdet", "float64", size, "log|det|")
    x_back, logdet_inv = flow.inverse_and_logdet(z, tc)
    assert_close(x_back.detach().numpy(), x, "roundtrip", "float64", size, "x")
    assert_close(logdet_inv.detach().numpy(), -logdet.detach().numpy(), "logdet", "float64", size, "inverse log|det|")
    assert sorted(flow.to_spec().params) == sorted(spec.params)
