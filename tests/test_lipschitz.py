"""Lipschitz-constrained layers and activations: documented behaviours the property suite does not reach."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flowspec.accelerated.lipschitz import (
    ACTIVATIONS, LipSwish, LipschitzConv2d, LipschitzLinear, LipschitzNormalizer, closed_form_norm, norm_reports,
    refresh_norms,
)
from flowspec.conformance.seeding import rng
from flowspec.conformance.tolerances import assert_close, tolerance
from flowspec.errors import ConfigError
from flowspec.reference import lipschitz as ref
from flowspec.reference.norms import conv_operator_norm, induced_norm, induced_norm_bracket, spectral_norm

INF = math.inf


def _seed(key: str) -> None:
    torch.manual_seed(rng("lipschitz-test", key).integers(2**31))


def _scaled(layer, factor: float):
    with torch.no_grad():
        layer.raw_weight.mul_(factor)
    return layer


# ----------------------------------------------------------------------------- activations

@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_matches_reference_and_its_derivative(name: str) -> None:
    z = torch.linspace(-8.0, 8.0, 401, dtype=torch.float64, requires_grad=True)
    act = ACTIVATIONS[name]().double()
    beta = act.beta.detach().numpy() if isinstance(act, LipSwish) else None
    value = act(z)
    (autograd,) = torch.autograd.grad(value.sum(), z)
    # entrywise maps of scalar inputs: size 1; the derivative of an entrywise map is its Jacobian's diagonal
    assert_close(value.detach().numpy(), ref.activation(name, z.detach().numpy(), beta), "forward", "float64", 1)
    assert_close(act.derivative(z.detach()).detach().numpy(), autograd.numpy(), "diag", "float64", 1)
    assert_close(ref.activation_derivative(name, z.detach().numpy(), beta), autograd.numpy(), "diag", "float64", 1)


def test_lipswish_derivative_sup_is_below_one_for_every_beta() -> None:
    sup = ref.lipswish_derivative_sup()
    assert sup > 0.9998 and sup < 1.0  # 1.0998…/1.1: the 1/1.1 of eq. 10 is what brings it below one
    for beta_raw in (-6.0, -1.0, 0.0, 1.0, 6.0):
        beta = float(ref.softplus(beta_raw))
        u = np.linspace(-10.0, 10.0, 200001)
        largest = np.max(np.abs(ref.activation_derivative("lipswish", u / beta, np.array([beta_raw]))))
        assert largest - sup <= tolerance("diag", "float64", 1) * max(1.0, sup)


def test_unknown_activation_is_refused() -> None:
    with pytest.raises(ConfigError, match="relu"):
        ref.activation("relu", np.zeros(1))


# ----------------------------------------------------------------------------- norms

@pytest.mark.parametrize("p,q", [(1.0, 1.0), (1.0, 2.0), (1.0, INF), (2.0, INF), (INF, INF), (3.0, INF)])
def test_closed_forms_equal_the_reference(p: float, q: float) -> None:
    weight = rng("lipschitz-test", "closed", p, q).standard_normal((4, 6))
    got = float(closed_form_norm(torch.as_tensor(weight), p, q))
    assert_close(got, induced_norm(weight, p, q), "forward", "float64", weight.size)


def test_brackets_hold_the_norm_found_by_search() -> None:
    gen = rng("lipschitz-test", "bracket")
    weight = gen.standard_normal((3, 4))
    points = gen.standard_normal((100000, 4))
    for p, q in [(2.0, 1.0), (3.0, 1.5), (1.5, 3.0), (INF, 2.0)]:
        lower, upper = induced_norm_bracket(weight, p, q)
        search = np.max(np.linalg.norm(points @ weight.T, ord=q, axis=1) / np.linalg.norm(points, ord=p, axis=1))
        assert search - upper <= tolerance("forward", "float64", weight.size) * max(1.0, upper) and lower <= upper
        # the power method finds at least what random search finds
        assert search - lower <= tolerance("norm_bound", "float64", weight.size) * max(1.0, search)


def test_general_power_method_is_an_estimate_below_the_bracket() -> None:
    _seed("general")
    layer = _scaled(LipschitzLinear(5, 4, 0.9, in_order=3.0, out_order=1.5).double(), 10.0)
    weight = layer.effective_weight().detach().numpy()
    lower, upper = induced_norm_bracket(weight, 3.0, 1.5)
    assert not layer.normalizer.exact
    # the layer's estimate stops at its own rtol (default 1e-4), far above the table's norm_bound premise
    assert abs(lower - 0.9) <= layer.normalizer.rtol * 0.9 and upper >= lower


def test_linear_layer_is_normalised_softly() -> None:
    _seed("soft")
    layer = LipschitzLinear(6, 4, 0.9, rtol=1e-10).double()
    with torch.no_grad():
        layer.raw_weight.mul_(0.3 / spectral_norm(layer.raw_weight.numpy()))
    np.testing.assert_array_equal(layer.effective_weight().detach().numpy(), layer.raw_weight.detach().numpy())
    _scaled(layer, 10.0)
    assert_close(float(spectral_norm(layer.effective_weight().detach().numpy())), 0.9, "norm_bound", "float64",
                 layer.raw_weight.numel())


def test_conv_norm_is_the_operator_norm_at_the_input_size() -> None:
    _seed("conv")
    layer = _scaled(LipschitzConv2d(2, 3, 3, 0.9, rtol=1e-10, max_iter=20000).double(), 10.0)
    for size in [(2, 2), (6, 5), (3, 3)]:
        weight = layer.effective_weight(size).detach().numpy()
        assert_close(conv_operator_norm(weight, (2, *size)), 0.9, "norm_bound", "float64", weight.size)
    reshaped = spectral_norm(weight.reshape(3, -1))
    assert reshaped != pytest.approx(0.9, rel=1e-3)  # a different number


def test_conv_layer_forward_uses_the_input_size() -> None:
    layer = LipschitzConv2d(1, 2, 3, 0.5).double()
    layer(torch.zeros(1, 1, 4, 7, dtype=torch.float64))
    assert layer.normalizer._spatial == (4, 7)
    with pytest.raises(ConfigError, match="input size"):
        LipschitzConv2d(1, 2, 3, 0.5).normalizer.estimate(torch.zeros(2, 1, 3, 3))


def test_evaluation_never_uses_stale_vectors() -> None:
    _seed("stale")
    layer = _scaled(LipschitzLinear(5, 5, 0.9, rtol=1e-10).double(), 10.0).eval()
    layer.effective_weight()
    report = layer.normalizer.last_report
    layer.effective_weight()
    assert layer.normalizer.last_report is report  # unchanged weight: the estimate is reused
    layer.raw_weight.data.mul_(3.0)  # a write that bypasses the version counter
    weight = layer.effective_weight().detach().numpy()
    assert layer.normalizer.last_report is not report
    assert_close(float(spectral_norm(weight)), 0.9, "norm_bound", "float64", weight.size)


def test_hit_cap_is_recorded_and_refresh_reports() -> None:
    _seed("cap")
    layer = _scaled(LipschitzLinear(8, 8, 0.9, max_iter=1, rtol=1e-12).double(), 10.0)
    layer.effective_weight()
    assert layer.normalizer.hit_cap
    model = torch.nn.Sequential(layer, LipschitzConv2d(2, 2, 3, 0.9).double())
    model[1](torch.zeros(1, 2, 3, 3, dtype=torch.float64))
    reports = refresh_norms(model)
    assert set(reports) == {"0.normalizer", "1.normalizer"}
    assert set(norm_reports(model)) == {"0.normalizer", "1.normalizer"}


def test_conv_vectors_survive_a_state_dict_at_another_size() -> None:
    source = LipschitzConv2d(2, 2, 3, 0.9).double()
    source(torch.zeros(1, 2, 5, 4, dtype=torch.float64))
    target = LipschitzConv2d(2, 2, 3, 0.9).double()
    target(torch.zeros(1, 2, 2, 2, dtype=torch.float64))
    target.load_state_dict(source.state_dict())
    assert target.normalizer._v.shape == (1, 2, 5, 4) and target.normalizer._spatial == (5, 4)


def test_mask_and_loading_effective_weights() -> None:
    mask = torch.tril(torch.ones(4, 4))
    layer = LipschitzLinear(4, 4, 0.9, mask=mask).double()
    weight = torch.tril(torch.full((4, 4), 0.1, dtype=torch.float64))
    layer.load_weight(weight)
    np.testing.assert_array_equal(layer.effective_weight().detach().numpy(), weight.numpy())
    with pytest.raises(ConfigError, match="mask"):
        layer.load_weight(torch.full((4, 4), 0.1, dtype=torch.float64))
    with pytest.raises(ConfigError, match="coeff"):
        layer.load_weight(torch.eye(4, dtype=torch.float64))


def test_learnable_orders_receive_gradients_and_stay_in_range() -> None:
    _seed("orders")
    layer = _scaled(LipschitzLinear(5, 4, 0.9, learn_orders=True).double(), 10.0)
    layer(torch.ones(2, 5, dtype=torch.float64)).sum().backward()
    p, q = (t.detach() for t in layer.normalizer.orders())
    assert p.item() > 1.5 and p.item() < 2.5 and q.item() > 1.5 and q.item() < 2.5
    assert layer.normalizer._orders.logits.grad is not None


@pytest.mark.parametrize("kwargs", [
    {"operator": "conv", "in_order": 1.0}, {"in_order": 0.5}, {"rtol": 0.0}, {"max_iter": 0}, {"operator": "other"},
])
def test_bad_normaliser_settings_are_refused(kwargs: dict) -> None:
    shape = (2, 2, 3, 3) if kwargs.get("operator") == "conv" else (2, 2)
    with pytest.raises(ConfigError):
        LipschitzNormalizer(shape, 0.9, **kwargs)
