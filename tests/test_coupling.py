"""Coupling layers: masks, the conditioner's reach, contexts and configuration errors."""
from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings

from flowspec import reference, registry
from flowspec.accelerated import from_spec
from flowspec.accelerated.coupling import AdditiveCoupling, AffineCoupling
from flowspec.accelerated.coupling import unchanged_mask as torch_mask
from flowspec.conformance.coupling import RAW_FACTOR, in_regime, layer_configs
from flowspec.conformance.seeding import rng
from flowspec.conformance.tolerances import assert_close
from flowspec.errors import ConfigError, FlowInputError
from flowspec.reference.coupling import AFFINE_DEFAULTS, DEFAULTS, parse_config, unchanged_mask
from flowspec.spec import FlowSpec
from reference_checks import assert_vjp_matches_reference

SHAPES = [(2,), (5,), (8,), (2, 3, 3), (3, 1, 4), (1, 2, 3), (4, 4, 4)]
KINDS = ["additive_coupling", "affine_coupling"]
CONFIGS = [
    {"shape": [5], "mask": "channel", "parity": 1, "hidden": 4, "depth": 2, "activation": "elu"},
    {"shape": [6], "mask": "checkerboard", "parity": 0, "context_dim": 2},
    {"shape": [3, 2, 3], "mask": "checkerboard", "parity": 1, "conditioner": "conv", "hidden": 3},
    {"shape": [3, 2, 2], "mask": "channel", "parity": 0, "conditioner": "conv", "activation": "relu"},
    {"shape": [2, 2, 3], "mask": "checkerboard", "parity": 0, "conditioner": "mlp", "context_dim": 2},
    # an even width: the checkerboard is the parity of h + w, not of the flat pixel index h·W + w
    {"shape": [2, 3, 4], "mask": "checkerboard", "parity": 0, "conditioner": "conv", "depth": 2},
]


def _spec(kind: str, config: dict, key: str) -> FlowSpec:
    return reference.init_spec(kind, config, rng("coupling-test", kind, key))


def _context(spec: FlowSpec, n: int, key: str) -> np.ndarray | None:
    shape = registry.get(spec.kind).context_of(spec.config)
    return None if shape is None else rng("coupling-test", "context", key).standard_normal((n, *shape))


# ----------------------------------------------------------------------------- masks

def _valid(shape: tuple[int, ...], mask: str) -> bool:
    if len(shape) == 1:
        return shape[0] >= 2
    return shape[0] >= 2 if mask == "channel" else shape[1] * shape[2] >= 2


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mask", ["channel", "checkerboard"])
def test_mask_shapes_and_parities(shape: tuple[int, ...], mask: str) -> None:
    b0, b1 = unchanged_mask(shape, mask, 0), unchanged_mask(shape, mask, 1)
    assert b0.shape == shape and b0.dtype == bool
    np.testing.assert_array_equal(b1, ~b0)
    np.testing.assert_array_equal(torch_mask(shape, mask, 0).numpy(), b0)
    np.testing.assert_array_equal(torch_mask(shape, mask, 1).numpy(), b1)
    if mask == "channel":  # parity 0 keeps the first ⌊n/2⌋ entries or channels (eq. 38)
        n = shape[0]
        per_channel = b0.reshape(n, -1)
        assert (per_channel[: n // 2]).all() and not per_channel[n // 2:].any()
    if _valid(shape, mask):
        assert b0.any() and b1.any()


def test_hand_examples() -> None:
    np.testing.assert_array_equal(unchanged_mask((5,), "channel", 0), [1, 1, 0, 0, 0])
    np.testing.assert_array_equal(unchanged_mask((5,), "checkerboard", 0), [0, 1, 0, 1, 0])
    np.testing.assert_array_equal(unchanged_mask((4,), "checkerboard", 1), [1, 0, 1, 0])
    # The slides' spatial checkerboard: b = 1 where h + w is odd, the same on every channel.
    board = np.array([[0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]], dtype=bool)
    np.testing.assert_array_equal(unchanged_mask((2, 3, 4), "checkerboard", 0), np.stack([board, board]))
    expected = np.zeros((3, 2, 2), dtype=bool)
    expected[0] = True
    np.testing.assert_array_equal(unchanged_mask((3, 2, 2), "channel", 0), expected)


# ----------------------------------------------------------------------------- structure

def _block_check(jac: np.ndarray, keep: np.ndarray, affine: bool) -> None:
    """In the order (unchanged, transformed) the Jacobian is [[I, 0], [*, diagonal]], exactly."""
    np.testing.assert_array_equal(jac[np.ix_(keep, keep)], np.eye(keep.sum()))
    np.testing.assert_array_equal(jac[np.ix_(keep, ~keep)], 0.0)
    block = jac[np.ix_(~keep, ~keep)]
    np.testing.assert_array_equal(block - np.diag(np.diag(block)), 0.0)
    if not affine:
        np.testing.assert_array_equal(np.diag(block), 1.0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c['shape']}-{c['mask']}")
def test_conditioner_never_reads_the_transformed_part(kind: str, config: dict) -> None:
    """Autograd of z_unchanged and of each z_t w.r.t. the other transformed entries is exactly zero."""
    spec = _spec(kind, config, "structure")
    keep = unchanged_mask(tuple(config["shape"]), config["mask"], config["parity"]).ravel()
    x = rng("coupling-test", "x", kind).standard_normal((1, *config["shape"]))
    c = _context(spec, 1, "structure")
    _block_check(reference.jacobian(spec, x, c)[0], keep, kind == "affine_coupling")

    flow = from_spec(spec)
    ct = None if c is None else torch.as_tensor(c[0])

    def f(xt: torch.Tensor) -> torch.Tensor:
        return flow(xt[None], None if ct is None else ct[None])[0].reshape(-1)

    jac = torch.autograd.functional.jacobian(f, torch.as_tensor(x[0])).reshape(keep.size, keep.size)
    _block_check(jac.numpy(), keep, kind == "affine_coupling")


@settings(max_examples=60, database=None, deadline=None, suppress_health_check=list(HealthCheck))
@given(layer_configs(affine=True))
def test_strategy_configs_are_valid_and_honour_the_conditioner(config: dict) -> None:
    """Every drawn config is valid; a conv conditioner always gets an image and no context."""
    cfg = parse_config(config, affine=True)
    if cfg.conditioner == "conv":
        assert len(cfg.shape) == 3 and cfg.context_dim == 0


def test_large_regime_saturates_the_raw_scales() -> None:
    """The strategies' ``large`` regime scales the last layer by RAW_FACTOR: most log-scales sit at
    ±scale_factor (tanh saturated), and the values still match the reference."""
    config = {"shape": [8], "mask": "channel", "parity": 0, "scale_factor": 2.0, "hidden": 6}
    spec = _spec("affine_coupling", config, "large")
    big = in_regime(spec, "large")
    np.testing.assert_array_equal(big.params["net.2.weight"], RAW_FACTOR * spec.params["net.2.weight"])
    np.testing.assert_array_equal(big.params["net.0.weight"], spec.params["net.0.weight"])
    x = rng("coupling-test", "large").standard_normal((16, 8))
    z, logdet = from_spec(big)(torch.as_tensor(x))
    assert_close(z.detach().numpy(), reference.forward(big, x), "forward", "float64", 8)
    assert_close(logdet.detach().numpy(), reference.log_abs_det(big, x), "logdet", "float64", 8)
    log_scales = np.log(np.diagonal(reference.jacobian(big, x), axis1=1, axis2=2)[:, 4:])  # s of the 4 transformed
    assert np.mean(np.abs(log_scales) > 0.9 * 2.0) > 0.5


def test_reference_gradients_are_finite_at_saturated_raw_scales() -> None:
    """Raw scales of several hundred (large regime, ReLU conditioner, inputs of order 100): the
    reference's gradient of the log-det, a second derivative of tanh, is finite (autograd's 1/cosh²
    overflowed into NaN there) and equals the accelerated flow's."""
    config = {"shape": [6], "activation": "relu", "hidden": 8, "depth": 2}
    spec = in_regime(_spec("affine_coupling", config, "saturated"), "large")
    x = 100.0 * rng("coupling-test", "saturated").standard_normal((4, 6))
    zw, lw = rng("coupling-test", "saturated-w").standard_normal((4, 6)), np.linspace(-1.0, 1.0, 4)
    assert_vjp_matches_reference(spec, x, zw, lw)


def test_affine_log_scale_is_bounded_by_the_scale_factor() -> None:
    """s = scale_factor·tanh(s_raw): however large the weights, |log|det|| ≤ n_t·scale_factor."""
    config = {"shape": [6], "mask": "checkerboard", "parity": 0, "scale_factor": 0.5}
    spec = _spec("affine_coupling", config, "bounded")
    big = FlowSpec(spec.kind, spec.config, {k: 20.0 * v for k, v in spec.params.items()})
    x = rng("coupling-test", "bounded").standard_normal((4, 6))
    _, logdet = from_spec(big)(torch.as_tensor(x))
    assert torch.all(logdet.abs() <= 3 * 0.5)
    assert_close(logdet.detach().numpy(), reference.log_abs_det(big, x), "logdet", "float64", 6)


# ----------------------------------------------------------------------------- contexts

@pytest.mark.parametrize("kind", KINDS)
def test_context_is_read_and_required(kind: str) -> None:
    config = {"shape": [4], "context_dim": 2}
    spec = _spec(kind, config, "context")
    assert registry.get(kind).context_of(spec.config) == (2,)
    assert registry.get(kind).context_of({"shape": [4]}) is None
    flow = from_spec(spec)
    assert flow.context_shape == (2,)
    x = torch.as_tensor(rng("coupling-test", "ctx-x").standard_normal((3, 4)))
    c1, c2 = (torch.as_tensor(rng("coupling-test", "ctx", i).standard_normal((3, 2))) for i in range(2))
    z1, z2 = flow(x, c1)[0], flow(x, c2)[0]
    assert not torch.allclose(z1, z2)
    assert_close(flow.inverse(z1, c1).detach().numpy(), x.numpy(), "roundtrip", "float64", 4)
    assert_close(z1.detach().numpy(), reference.forward(spec, x.numpy(), c1.numpy()), "forward", "float64", 4)
    with pytest.raises(FlowInputError, match="context"):
        flow(x)
    with pytest.raises(FlowInputError, match="context"):
        reference.forward(spec, x.numpy())
    with pytest.raises(FlowInputError, match="takes no context"):
        from_spec(_spec(kind, {"shape": [4]}, "no-context"))(x, c1)


# ----------------------------------------------------------------------------- configuration

def test_odd_size_channel_mask_is_handled() -> None:
    """D = 5: the first ⌊5/2⌋ = 2 entries pass unchanged, the other 3 are transformed (both layers agree)."""
    spec = _spec("affine_coupling", {"shape": [5], "mask": "channel"}, "odd")
    assert spec.params["net.0.weight"].shape[1] == 2
    assert spec.params["net.2.weight"].shape[0] == 2 * 3
    x = rng("coupling-test", "odd").standard_normal((3, 5))
    z, _ = from_spec(spec)(torch.as_tensor(x))
    np.testing.assert_array_equal(z[:, :2].detach().numpy(), x[:, :2])
    assert_close(z.detach().numpy(), reference.forward(spec, x), "forward", "float64", 5)


BAD_CONFIGS = [
    ({"shape": [4], "mask": "diagonal"}, "mask"),
    ({"shape": [4], "mask": "Channel"}, "mask"),
    ({"shape": [1]}, "D ≥ 2"),
    ({"shape": [1, 3, 3], "mask": "channel", "conditioner": "conv"}, "C ≥ 2"),
    ({"shape": [2, 1, 1], "mask": "checkerboard", "conditioner": "conv"}, "H·W ≥ 2"),
    ({"shape": [4], "conditioner": "conv"}, "image shape"),
    ({"shape": [2, 2, 2], "conditioner": "conv", "context_dim": 2}, "mlp conditioner"),
    ({"shape": [4], "parity": 2}, "parity"),
    ({"shape": [4], "parity": True}, "parity"),
    ({"shape": [4], "hidden": 0}, "hidden"),
    ({"shape": [4], "depth": 0}, "depth"),
    ({"shape": [4], "activation": "sigmoid"}, "activation"),
    ({"shape": [4], "context_dim": -1}, "context_dim"),
    ({"shape": [2, 3]}, "shape"),
    ({"shape": 4}, "shape"),
    ({"mask": "channel"}, "shape"),
    ({"shape": [4], "width": 3}, "unknown config keys"),
]


@pytest.mark.parametrize("config,match", BAD_CONFIGS, ids=[m for _, m in BAD_CONFIGS])
@pytest.mark.parametrize("kind", KINDS)
def test_bad_config_raises_config_error(kind: str, config: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        reference.init_spec(kind, config, rng("coupling-test", "bad"))
    if "shape" not in config:  # a missing constructor argument is Python's TypeError
        return
    cls = {"additive_coupling": AdditiveCoupling, "affine_coupling": AffineCoupling}[kind]
    with pytest.raises(ConfigError, match=match):
        cls(**config)


@pytest.mark.parametrize("scale", [0.0, -1.0, float("inf"), "1"])
def test_bad_scale_factor(scale) -> None:
    with pytest.raises(ConfigError, match="scale_factor"):
        AffineCoupling([4], scale_factor=scale)
    with pytest.raises(ConfigError, match="unknown config keys"):
        AdditiveCoupling([4], scale_factor=1.0)


def test_accelerated_defaults_are_the_reference_defaults() -> None:
    for cls, defaults in ((AdditiveCoupling, DEFAULTS), (AffineCoupling, AFFINE_DEFAULTS)):
        params = inspect.signature(cls.__init__).parameters
        assert {k: params[k].default for k in defaults} == defaults
        assert cls([4]).config() == {"shape": [4], **defaults}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c['shape']}-{c['mask']}")
def test_spec_round_trip_keeps_names_and_values(kind: str, config: dict) -> None:
    spec = _spec(kind, config, "names")
    again = from_spec(spec).to_spec()
    assert again.kind == kind and set(again.params) == set(spec.params)
    for name, value in spec.params.items():
        np.testing.assert_array_equal(again.params[name], value)
    rebuilt = reference.init_spec(kind, dict(again.config), rng("coupling-test", "names"))
    assert rebuilt.params.keys() == spec.params.keys()
