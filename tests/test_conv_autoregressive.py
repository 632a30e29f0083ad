"""Convolutional autoregressive flows: PixelCNN masks, the causal shift, orders, the sequential
inverse's cost, configuration errors and the accelerated flow against the reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings

from flowspec import reference, registry
from flowspec.accelerated import from_spec
from flowspec.accelerated.conv_autoregressive import CausalAutoregressive, PixelCNNAutoregressive
from flowspec.conformance.conv_autoregressive import STRONG_FACTOR, causal_configs, in_regime, pixelcnn_configs
from flowspec.conformance.seeding import rng
from flowspec.conformance.tolerances import assert_close
from flowspec.errors import ConfigError
from flowspec.reference.conv_autoregressive import masks, order, parse_config, pixel_mask
from flowspec.spec import FlowSpec
from reference_checks import assert_vjp_matches_reference

PIXEL = "pixelcnn_autoregressive"
CAUSAL = "causal_autoregressive"
CONFIGS = [
    (PIXEL, {"shape": [2, 2, 3]}),
    (PIXEL, {"shape": [3, 2, 2], "kernel_size": 5, "depth": 2, "activation": "elu", "scale_factor": 2.0}),
    (PIXEL, {"shape": [2, 3, 2], "transform": "spline", "bins": 4, "bound": 2.0, "activation": "relu"}),
    (CAUSAL, {"shape": [2, 5]}),
    (CAUSAL, {"shape": [3, 4], "kernel_size": 3, "depth": 3, "hidden_channels": 5, "scale_factor": 0.5}),
    (CAUSAL, {"shape": [1, 6], "transform": "spline", "bins": 3, "kernel_size": 1, "activation": "elu"}),
]
IDS = [f"{kind.split('_')[0]}-{config['shape']}-{config.get('transform', 'affine')}" for kind, config in CONFIGS]


def _spec(kind: str, config: dict, key: str) -> FlowSpec:
    return reference.init_spec(kind, config, rng("conv-ar-test", kind, key))


def _x(spec: FlowSpec, n: int, key: str, scale: float = 1.0) -> np.ndarray:
    return scale * rng("conv-ar-test", "x", key).standard_normal((n, *registry.get(spec.kind).event_shape(spec.config)))


# ----------------------------------------------------------------------------- masks and orders

def test_pixel_mask_types_by_hand() -> None:
    """3×3, C = 2 groups, one unit per group: rows above and the left tap in full; at the centre type A
    lets group 1 read group 0 only, type B adds the diagonal."""
    a, b = pixel_mask(2, 2, 2, 3, "A"), pixel_mask(2, 2, 2, 3, "B")
    spatial = np.array([[1, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=float)
    for mask in (a, b):
        off_centre = mask.copy()
        off_centre[:, :, 1, 1] = 0.0
        np.testing.assert_array_equal(off_centre, np.broadcast_to(spatial, (2, 2, 3, 3)))
    np.testing.assert_array_equal(a[:, :, 1, 1], [[0, 0], [1, 0]])
    np.testing.assert_array_equal(b[:, :, 1, 1], [[1, 0], [1, 1]])
    # hidden units in groups u mod C: unit 3 (group 1) of a layer reads units 0, 1, 2 (groups 0, 1, 0) under B
    np.testing.assert_array_equal(pixel_mask(2, 4, 4, 1, "B")[3, :, 0, 0], [1, 1, 1, 1])
    np.testing.assert_array_equal(pixel_mask(2, 4, 4, 1, "B")[2, :, 0, 0], [1, 0, 1, 0])


@pytest.mark.parametrize("config", [{"shape": [2, 2, 3]}, {"shape": [3, 1, 2], "kernel_size": 5, "depth": 2},
                                    {"shape": [1, 2, 2], "kernel_size": 1, "transform": "spline", "bins": 2}])
def test_accelerated_masks_equal_the_reference(config: dict) -> None:
    flow = PixelCNNAutoregressive(**config)
    layers = [m for m in flow.net if isinstance(m, torch.nn.Conv2d)]
    assert [tuple(m.weight.shape) for m in layers] == [m.shape for m in masks(config)]
    for layer, mask in zip(layers, masks(config)):
        np.testing.assert_array_equal(layer._mask.numpy(), mask)


def test_orders_by_hand() -> None:
    """pixelcnn (C, H, W) = (2, 1, 2): (c0, px0), (c1, px0), (c0, px1), (c1, px1); causal (2, 3):
    time then channel."""
    np.testing.assert_array_equal(order({"shape": [2, 1, 2]}, PIXEL), [0, 2, 1, 3])
    np.testing.assert_array_equal(order({"shape": [2, 3]}, CAUSAL), [0, 3, 1, 4, 2, 5])
    causal = registry.get(CAUSAL).extras["forbidden"]({"shape": [2, 2]})
    # flat (c, t): 0 = (0, 0), 1 = (0, 1), 2 = (1, 0), 3 = (1, 1)
    expected = np.array([[0, 1, 1, 1], [0, 0, 0, 1], [1, 1, 0, 1], [0, 1, 0, 0]], dtype=bool)
    np.testing.assert_array_equal(causal, expected)
    pixel = registry.get(PIXEL).extras["forbidden"]({"shape": [2, 1, 2]})
    rank = np.array([0, 2, 1, 3])
    np.testing.assert_array_equal(pixel, rank[None, :] > rank[:, None])


@pytest.mark.parametrize(("kind", "config"), CONFIGS, ids=IDS)
def test_jacobian_is_triangular_with_the_transform_on_its_diagonal(kind: str, config: dict) -> None:
    """Forbidden entries are exactly zero in the reference's and the accelerated flow's Jacobians, and
    log|det| is the sum of the per-entry log-derivatives (the diagonal)."""
    spec = _spec(kind, config, "structure")
    x = _x(spec, 2, "structure", 1.5)
    forbidden = registry.get(kind).extras["forbidden"](spec.config)
    size = forbidden.shape[0]
    jac = reference.jacobian(spec, x)
    np.testing.assert_array_equal(jac[:, forbidden], 0.0)
    assert_close(np.log(np.abs(np.diagonal(jac, axis1=1, axis2=2))).sum(axis=1), reference.log_abs_det(spec, x),
                 "logdet", "float64", size)
    flow = from_spec(spec)
    for xi, ji in zip(x, jac):
        mine = torch.autograd.functional.jacobian(lambda t: flow(t[None])[0].reshape(-1), torch.as_tensor(xi))
        mine = mine.reshape(size, size).numpy()
        np.testing.assert_array_equal(mine[forbidden], 0.0)
        assert_close(mine, ji, "grad", "float64", size)


def test_pixelcnn_blind_spot() -> None:
    """PixelCNN's blind spot: with 3×3 kernels the pixel two columns right of the one above is never
    read, at any depth (one row up allows one column right), though the order permits it; which is why
    the kind declares no "required" entries."""
    config = {"shape": [1, 2, 4], "depth": 3, "hidden_channels": 3}
    spec = _spec(PIXEL, config, "blind")
    assert "required" not in registry.get(PIXEL).extras
    jac = reference.jacobian(spec, _x(spec, 1, "blind"))[0].reshape(1, 2, 4, 1, 2, 4)
    assert jac[0, 1, 0, 0, 0, 1] != 0.0  # up-right neighbour: read
    assert jac[0, 1, 0, 0, 0, 2] == 0.0  # two columns right, one row up: blind
    assert jac[0, 1, 0, 0, 0, 3] == 0.0


def test_causal_reach_is_the_dilated_receptive_field() -> None:
    """Kernel 2, dilations 1, 2 (depth 1): step t reads x_{t−1}, …, x_{t−4} (1 + (k − 1)(2² − 1) = 4
    steps of the shifted input) and nothing earlier or later."""
    config = {"shape": [1, 7], "depth": 1, "kernel_size": 2}
    spec = _spec(CAUSAL, config, "reach")
    jac = reference.jacobian(spec, _x(spec, 1, "reach"))[0]
    reads = jac[6] != 0.0
    np.testing.assert_array_equal(reads, [False, False, True, True, True, True, True])  # t−4 … t−1 and itself


# ----------------------------------------------------------------------------- accelerated vs reference

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("kind", "config"), CONFIGS, ids=IDS)
def test_forward_logdet_and_inverse_match_the_reference(kind: str, config: dict, dtype: torch.dtype) -> None:
    """Values in both regimes; round trips at the generic weights (the strong regime's splines have
    Jacobian condition numbers up to 10⁹, which the suite's round-trip tolerances take into account)."""
    name = "float64" if dtype == torch.float64 else "float32"
    for regime in ("strong", "init"):
        spec = in_regime(_spec(kind, config, "values"), regime)
        x = _x(spec, 4, "values", 2.0)
        size = x[0].size
        z_ref, ld_ref = reference.forward_and_log_abs_det(spec, x)
        flow = from_spec(spec, dtype=dtype)
        z, logdet = flow(torch.as_tensor(x, dtype=dtype))
        assert_close(z.detach().numpy(), z_ref, "forward", name, size)
        assert_close(logdet.detach().numpy(), ld_ref, "logdet", name, size)
    x_back, ld_inv = flow.inverse_and_logdet(torch.as_tensor(z_ref, dtype=dtype))
    assert_close(reference.inverse(spec, z_ref), x, "roundtrip", "float64", size)
    if dtype == torch.float64:
        assert_close(x_back.detach().numpy(), x, "roundtrip", name, size)
        assert_close(ld_inv.detach().numpy(), -ld_ref, "logdet", name, size)


@pytest.mark.parametrize(("kind", "config"), CONFIGS, ids=IDS)
def test_gradients_match_the_reference(kind: str, config: dict) -> None:
    spec = _spec(kind, config, "grad")
    x = _x(spec, 3, "grad")
    gen = rng("conv-ar-test", "grad-w", kind)
    assert_vjp_matches_reference(spec, x, gen.standard_normal(x.shape), np.linspace(-1.0, 1.0, 3))


@pytest.mark.parametrize(("kind", "config", "passes"), [
    (PIXEL, {"shape": [2, 3, 2]}, 12), (CAUSAL, {"shape": [3, 5]}, 5)])
def test_inverse_cost_is_one_pass_per_step(kind: str, config: dict, passes: int) -> None:
    """The inverse runs H·W·C (pixelcnn) or T (causal) conditioner passes; the forward one."""
    flow = from_spec(_spec(kind, config, "cost"))
    calls = []
    flow.net.register_forward_hook(lambda *args: calls.append(1))
    z, _ = flow(torch.as_tensor(_x(flow.to_spec(), 2, "cost")))
    assert len(calls) == 1
    flow.inverse(z)
    assert len(calls) == 1 + passes


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize(("kind", "config"), CONFIGS, ids=IDS)
def test_cuda_matches_the_reference(kind: str, config: dict) -> None:
    spec = _spec(kind, config, "cuda")
    x = _x(spec, 4, "cuda")
    flow = from_spec(spec, dtype=torch.float32, device="cuda")
    z, logdet = flow(torch.as_tensor(x, dtype=torch.float32, device="cuda"))
    z_ref, ld_ref = reference.forward_and_log_abs_det(spec, x)
    assert_close(z.cpu().detach().numpy(), z_ref, "forward", "float32", x[0].size)
    assert_close(logdet.cpu().detach().numpy(), ld_ref, "logdet", "float32", x[0].size)
    assert_close(flow.inverse(z).cpu().detach().numpy(), x, "roundtrip", "float32", x[0].size)


# ----------------------------------------------------------------------------- config

@pytest.mark.parametrize(("kind", "config"), CONFIGS, ids=IDS)
def test_spec_round_trip_and_canonical_names(kind: str, config: dict) -> None:
    spec = _spec(kind, config, "names")
    flow = from_spec(spec)
    assert set(dict(flow.named_parameters())) == set(spec.params)
    again = type(flow)(**flow.to_spec().config).to(torch.float64)
    again.load_spec_params(flow.to_spec())
    x = torch.as_tensor(_x(spec, 2, "names"))
    assert torch.equal(again(x)[0], flow(x)[0])


def test_defaults() -> None:
    pixel, causal = parse_config({"shape": [1, 2, 2]}, PIXEL), parse_config({"shape": [1, 3]}, CAUSAL)
    assert (pixel.transform, pixel.kernel_size, pixel.depth, pixel.hidden_channels) == ("affine", 3, 1, 4)
    assert (causal.kernel_size, causal.scale_factor, causal.spline) == (2, 1.0, None)
    assert parse_config({"shape": [1, 3], "transform": "spline"}, CAUSAL).spline.bins == 8


BAD_CONFIGS = [
    (PIXEL, {"shape": [2, 3]}, "shape"),
    (PIXEL, {"shape": [2, 2, 2], "kernel_size": 2}, "kernel_size"),
    (PIXEL, {"shape": [2, 2, 2], "transform": "flow"}, "transform"),
    (PIXEL, {"shape": [2, 2, 2], "bins": 4}, "bins"),
    (PIXEL, {"shape": [2, 2, 2], "transform": "spline", "scale_factor": 1.0}, "scale_factor"),
    (PIXEL, {"shape": [2, 2, 2], "transform": "spline", "bins": 0}, "bins"),
    (PIXEL, {"shape": [2, 2, 2], "hidden_channels": 0}, "hidden_channels"),
    (PIXEL, {"shape": [2, 2, 2], "activation": "sigmoid"}, "activation"),
    (PIXEL, {"shape": [2, 2, 2], "dilation": 2}, "dilation"),
    (CAUSAL, {"shape": [2, 2, 2]}, "shape"),
    (CAUSAL, {"shape": [2, 4], "kernel_size": 0}, "kernel_size"),
    (CAUSAL, {"shape": [2, 4], "depth": 0}, "depth"),
    (CAUSAL, {"shape": [2, 4], "scale_factor": -1.0}, "scale_factor"),
    (CAUSAL, {"shape": [2, 4], "transform": "spline", "bins": 4, "min_width": 0.3}, "min_width"),
]


@pytest.mark.parametrize(("kind", "config", "key"), BAD_CONFIGS)
def test_bad_configs_are_refused_naming_the_key(kind: str, config: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        registry.get(kind).validate_config(config)
    cls = PixelCNNAutoregressive if kind == PIXEL else CausalAutoregressive
    with pytest.raises(ConfigError, match=key):
        cls(**config)


@settings(max_examples=40, database=None, deadline=None, suppress_health_check=list(HealthCheck))
@given(pixelcnn_configs(), causal_configs())
def test_strategy_configs_are_valid_and_small(pixel: dict, causal: dict) -> None:
    """Every drawn config is valid and small: C·H·W ≤ 18, C·T ≤ 15."""
    assert np.prod(parse_config(pixel, PIXEL).shape) <= 18
    assert np.prod(parse_config(causal, CAUSAL).shape) <= 15


def test_strong_regime_scales_the_last_layer_only() -> None:
    spec = _spec(CAUSAL, {"shape": [2, 3], "depth": 2}, "strong")
    strong = in_regime(spec, "strong")
    np.testing.assert_array_equal(strong.params["net.4.weight"], STRONG_FACTOR * spec.params["net.4.weight"])
    np.testing.assert_array_equal(strong.params["net.2.weight"], spec.params["net.2.weight"])


def test_affine_log_scale_is_bounded_by_the_scale_factor() -> None:
    """α = scale_factor·tanh(α̃): large weights and inputs of order 100 with a ReLU conditioner give
    |log|det|| ≤ N·scale_factor, finite in float32 too."""
    config = {"shape": [2, 2, 2], "activation": "relu", "scale_factor": 0.5}
    spec = _spec(PIXEL, config, "bounded")
    big = FlowSpec(spec.kind, spec.config, {k: 20.0 * v for k, v in spec.params.items()})
    x = _x(big, 3, "bounded", 100.0)
    _, logdet = from_spec(big, dtype=torch.float32)(torch.as_tensor(x, dtype=torch.float32))
    assert torch.all(logdet.abs() <= 8 * 0.5 + 1e-5)
