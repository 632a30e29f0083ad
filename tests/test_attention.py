"""Flow++'s self-attention conditioner (Sec. 3.2.2) in both layers, and the image contexts of the conv
and attention conditioners: the network pieces against independent formulas, the conditioner's
reach (never the transformed half; every position through attention), contexts and configuration."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from torch import nn

from flowspec import reference, registry
from flowspec.accelerated import from_spec
from flowspec.accelerated.attention import ChannelNorm, attention_net
from flowspec.accelerated.coupling import AdditiveCoupling, AffineCoupling
from flowspec.accelerated.spline import SplineCoupling
from flowspec.conformance.coupling import ATTENTION_HIDDEN, IMAGE_LIMITS, layer_configs
from flowspec.conformance.seeding import rng
from flowspec.conformance.strategies import scaled_last_layer
from flowspec.conformance.tolerances import assert_close
from flowspec.errors import ConfigError, FlowInputError
from flowspec.reference import attention
from flowspec.reference.coupling import DEFAULTS, parse_config, unchanged_mask
from flowspec.spec import FlowSpec

ATTENTION = {"conditioner": "attention", "hidden": 4, "heads": 2, "blocks": 1}
CLASSES = {"additive_coupling": AdditiveCoupling, "affine_coupling": AffineCoupling, "spline_coupling": SplineCoupling}


def _gen(*keys: object) -> np.random.Generator:
    return rng("attention-test", *keys)


def _spec(kind: str, config: dict, key: str) -> FlowSpec:
    return reference.init_spec(kind, config, _gen("spec", kind, key))


# ----------------------------------------------------------------------------- the reference's pieces

def _naive_attention(h: np.ndarray, qkv_weight: np.ndarray, heads: int) -> np.ndarray:
    """Vaswani et al.'s attention written out: per head and query position, a softmax over the keys."""
    channels, height, width = h.shape
    d, n = channels // heads, height * width
    qkv = qkv_weight[:, :, 0, 0] @ h.reshape(channels, n)
    q, k, v = qkv[:channels], qkv[channels:2 * channels], qkv[2 * channels:]
    out = np.zeros((channels, n))
    for head in range(heads):
        rows = slice(head * d, (head + 1) * d)
        for i in range(n):
            scores = np.array([q[rows, i] @ k[rows, j] for j in range(n)]) / np.sqrt(d)
            p = np.exp(scores - scores.max())
            out[rows, i] = v[rows] @ (p / p.sum())
    return out.reshape(channels, height, width)


def test_self_attention_is_softmax_attention_per_head() -> None:
    h, weight = _gen("attn", "h").standard_normal((4, 2, 3)), _gen("attn", "w").standard_normal((12, 4, 1, 1))
    outputs = {heads: attention.self_attention(h, weight, heads) for heads in (1, 2, 4)}
    for heads, out in outputs.items():
        assert_close(out, _naive_attention(h, weight, heads), "forward", "float64", h.size, f"{heads} heads")
    assert not np.allclose(outputs[1], outputs[2])  # the heads are separate softmaxes


def test_layer_norm_is_over_the_channels_of_each_position() -> None:
    h = 3.0 + 2.0 * _gen("norm").standard_normal((5, 2, 3))
    out = attention.layer_norm(h, np.ones(5), np.zeros(5))
    assert_close(out.mean(axis=0), np.zeros((2, 3)), "forward", "float64", h.shape[0], "mean over the channels")
    var = h.var(axis=0)
    assert_close(out.var(axis=0), var / (var + attention.NORM_EPS), "forward", "float64", h.shape[0],
                 "variance over the channels")
    moved = h.copy()
    moved[:, 1, 2] += 10.0
    changed = np.any(attention.layer_norm(moved, np.ones(5), np.zeros(5)) != out, axis=0)
    assert changed.shape == (2, 3) and changed[1, 2] and changed.sum() == 1  # no other position moves
    scaled = attention.layer_norm(h, np.full(5, 2.0), np.full(5, 0.5))
    assert_close(scaled, 2.0 * out + 0.5, "forward", "float64", h.size)


def test_glu_gates_the_first_half_with_the_second() -> None:
    h = np.array([1.0, -2.0, 0.0, 40.0]).reshape(4, 1, 1)
    np.testing.assert_allclose(attention.glu(h).ravel(), [0.5, -2.0 / (1.0 + np.exp(-40.0))], rtol=1e-15)


# ----------------------------------------------------------------------------- the torch modules

@pytest.mark.parametrize("blocks, heads", [(1, 1), (2, 2)])
def test_torch_network_has_the_reference_layout_and_values(blocks: int, heads: int) -> None:
    n_in, n_out, hidden = 3, 4, 4
    net = attention_net(n_in, n_out, hidden, blocks, heads, nn.ELU).double()
    shapes = attention.param_shapes(n_in, n_out, hidden, blocks)
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == {k[len("net."):]: v for k, v in shapes.items()}
    params = attention.init_params(_gen("net", blocks), n_in, n_out, hidden, blocks)
    net.load_state_dict({k[len("net."):]: torch.as_tensor(v) for k, v in params.items()})
    h = _gen("net-x", blocks).standard_normal((3, n_in, 2, 3))
    elu = lambda a: np.where(a > 0, a, np.expm1(np.minimum(a, 0.0)))  # noqa: E731
    expected = np.stack([attention.attention_net(params, s, blocks, heads, elu) for s in h])
    with torch.no_grad():
        assert_close(net(torch.as_tensor(h)).numpy(), expected, "forward", "float64", h[0].size)


def test_channel_norm_keeps_samples_apart() -> None:
    norm = ChannelNorm(4).double()
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0]))
        h = torch.as_tensor(_gen("cn").standard_normal((3, 4, 2, 2)))
        out = norm(h)
        assert_close(out.numpy(), np.stack([attention.layer_norm(s, norm.weight.numpy(), norm.bias.numpy())
                                            for s in h.numpy()]), "forward", "float64", 16)
        assert torch.equal(norm(h[:1]), out[:1])


# ----------------------------------------------------------------------------- the conditioner's reach

def _jacobians(spec: FlowSpec, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reference's and the float64 accelerated flow's Jacobians of one sample, ``(D, D)``."""
    flow = from_spec(spec)
    jac = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0].reshape(-1), torch.as_tensor(x))
    return reference.jacobian(spec, x[None])[0], jac.reshape(x.size, x.size).numpy()


@pytest.mark.parametrize("kind", ["additive_coupling", "affine_coupling"])
@pytest.mark.parametrize("shape, mask", [([2, 2, 3], "checkerboard"), ([3, 2, 2], "channel")])
def test_attention_conditioner_never_reads_the_transformed_part(kind: str, shape: list, mask: str) -> None:
    """[[I, 0], [*, diagonal]] in the (unchanged, transformed) split, exactly, in both layers."""
    spec = _spec(kind, {"shape": shape, "mask": mask, "parity": 1, **ATTENTION, "blocks": 2}, "structure")
    keep = unchanged_mask(tuple(shape), mask, 1).ravel()
    for jac in _jacobians(spec, _gen("structure-x", kind).standard_normal(shape)):
        np.testing.assert_array_equal(jac[np.ix_(keep, keep)], np.eye(keep.sum()))
        np.testing.assert_array_equal(jac[np.ix_(keep, ~keep)], 0.0)
        block = jac[np.ix_(~keep, ~keep)]
        np.testing.assert_array_equal(block - np.diag(np.diag(block)), 0.0)


def test_attention_reaches_every_position() -> None:
    """On a 2 × 1 × 8 image (channel mask) the first transformed entry depends on the unchanged entry
    seven pixels away through the attention, out of reach of the conv conditioner's two 3×3 layers."""
    base = {"shape": [2, 1, 8], "mask": "channel", "parity": 0}
    x = _gen("reach").standard_normal((2, 1, 8))
    far = (1 * 8 + 0, 0 * 8 + 7)  # ∂z[1, 0, 0] / ∂x[0, 0, 7]
    for jac in _jacobians(_spec("affine_coupling", {**base, **ATTENTION}, "reach"), x):
        assert abs(jac[far]) > 1e-6
    for jac in _jacobians(_spec("affine_coupling", {**base, "conditioner": "conv"}, "reach"), x):
        assert jac[far] == 0.0


# ----------------------------------------------------------------------------- image contexts

def _context(spec: FlowSpec, n: int, key: str) -> np.ndarray:
    return _gen("context", key).standard_normal((n, *registry.get(spec.kind).context_of(spec.config)))


@pytest.mark.parametrize("kind", ["additive_coupling", "affine_coupling"])
@pytest.mark.parametrize("conditioner", [{"conditioner": "conv"}, ATTENTION])
def test_image_context_is_read_and_required(kind: str, conditioner: dict) -> None:
    config = {"shape": [2, 3, 2], "mask": "checkerboard", "context_channels": 2, **conditioner}
    spec = _spec(kind, config, "ctx")
    assert registry.get(kind).context_of(spec.config) == (2, 3, 2)
    flow = from_spec(spec)
    assert flow.context_shape == (2, 3, 2)
    x = torch.as_tensor(_gen("ctx-x").standard_normal((3, 2, 3, 2)))
    c1, c2 = (torch.as_tensor(_context(spec, 3, str(i))) for i in range(2))
    z1 = flow(x, c1)[0]
    assert not torch.allclose(z1, flow(x, c2)[0])
    assert_close(z1.detach().numpy(), reference.forward(spec, x.numpy(), c1.numpy()), "forward", "float64", 12)
    assert_close(flow.inverse(z1, c1).detach().numpy(), x.numpy(), "roundtrip", "float64", 12)
    with pytest.raises(FlowInputError, match="context"):
        flow(x)
    with pytest.raises(FlowInputError, match="context"):
        reference.forward(spec, x.numpy())


@pytest.mark.parametrize("conditioner", [{"conditioner": "conv"}, ATTENTION])
def test_context_channels_follow_the_masked_input(conditioner: dict) -> None:
    """The conditioner's input is cat(b⊙x, context) on the channels: with the input layer's weights
    on the context channels zeroed, the layer is the context-free one with the first C input channels."""
    config = {"shape": [2, 2, 3], "mask": "channel", **conditioner}
    spec = _spec("affine_coupling", {**config, "context_channels": 3}, "order")
    weight = np.array(spec.params["net.0.weight"])
    weight[:, 2:] = 0.0
    blind = FlowSpec(spec.kind, spec.config, {**spec.params, "net.0.weight": weight})
    plain = FlowSpec(spec.kind, config, {**spec.params, "net.0.weight": weight[:, :2]})
    x = _gen("order-x").standard_normal((2, 2, 2, 3))
    expected = from_spec(plain)(torch.as_tensor(x))[0].detach().numpy()
    for key in ("a", "b"):
        c = torch.as_tensor(_context(blind, 2, key))
        np.testing.assert_array_equal(from_spec(blind)(torch.as_tensor(x), c)[0].detach().numpy(), expected)
        assert_close(reference.forward(blind, x, c.numpy()), expected, "forward", "float64", 12)


def test_spline_coupling_takes_the_attention_conditioner() -> None:
    spec = _spec("spline_coupling", {"shape": [2, 2, 2], "mask": "checkerboard", "bins": 3, **ATTENTION}, "spline")
    x = 2.0 * _gen("spline-x").standard_normal((3, 2, 2, 2))
    z, logdet = from_spec(spec)(torch.as_tensor(x))
    assert_close(z.detach().numpy(), reference.forward(spec, x), "forward", "float64", 8)
    assert_close(logdet.detach().numpy(), reference.log_abs_det(spec, x), "logdet", "float64", 8)
    assert SplineCoupling([2, 2, 2], conditioner="attention", heads=2).config()["heads"] == 2


# ----------------------------------------------------------------------------- configuration

BAD_CONFIGS = [
    ({"shape": [4], "conditioner": "attention"}, "image shape"),
    ({"shape": [2, 2, 2], "conditioner": "attention", "context_dim": 2}, "mlp conditioner"),
    ({"shape": [2, 2, 2], "context_channels": 2}, "context_channels"),
    ({"shape": [2, 2, 2], "conditioner": "conv", "context_channels": -1}, "context_channels"),
    ({"shape": [2, 2, 2], "conditioner": "attention", "depth": 2}, "depth"),
    ({"shape": [2, 2, 2], "conditioner": "conv", "blocks": 3}, "blocks"),
    ({"shape": [2, 2, 2], "heads": 2}, "heads"),
    ({"shape": [2, 2, 2], "conditioner": "attention", "hidden": 6}, "heads"),
    ({"shape": [2, 2, 2], "conditioner": "attention", "heads": 0}, "heads"),
    ({"shape": [2, 2, 2], "conditioner": "attention", "blocks": 0}, "blocks"),
    ({"shape": [2, 2, 2], "conditioner": "attention", "heads": True}, "heads"),
]


@pytest.mark.parametrize("config, match", BAD_CONFIGS, ids=[f"{m}-{i}" for i, (_, m) in enumerate(BAD_CONFIGS)])
@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_bad_config_raises_config_error(kind: str, config: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        reference.init_spec(kind, config, _gen("bad"))
    with pytest.raises(ConfigError, match=match):
        CLASSES[kind](**config)


@settings(max_examples=40, database=None, deadline=None, suppress_health_check=list(HealthCheck))
@given(layer_configs(affine=True, image_contexts=True))
def test_strategy_configs_are_valid_small_and_complete(config: dict) -> None:
    """Every drawn config is valid and writes every key; attention images stay within their limits
    (D ≤ 12, two positions at least) with channels that every head count divides."""
    assert set(DEFAULTS) <= set(config)
    cfg = parse_config(config, affine=True)
    if cfg.conditioner == "attention":
        assert all(n <= m for n, m in zip(cfg.shape, IMAGE_LIMITS["attention"])) and cfg.shape[1] * cfg.shape[2] >= 2
        assert cfg.hidden in ATTENTION_HIDDEN and cfg.depth == DEFAULTS["depth"]
    else:
        assert (cfg.blocks, cfg.heads) == (DEFAULTS["blocks"], DEFAULTS["heads"])


def test_large_regime_scales_the_output_projection_only() -> None:
    spec = _spec("affine_coupling", {"shape": [2, 2, 2], **ATTENTION, "blocks": 2}, "large")
    big = scaled_last_layer(spec, 8.0)
    for name, value in spec.params.items():
        factor = 8.0 if name.startswith("net.3.") else 1.0
        np.testing.assert_array_equal(big.params[name], factor * value)


def test_spec_round_trip_keeps_the_state_dict_names() -> None:
    spec = _spec("affine_coupling", {"shape": [2, 2, 2], **ATTENTION, "blocks": 2, "context_channels": 1}, "names")
    again = from_spec(spec).to_spec()
    assert set(again.params) == set(spec.params) == set(attention.param_shapes(3, 4, 4, 2))
    for name, value in spec.params.items():
        np.testing.assert_array_equal(again.params[name], value)
    assert dict(again.config) == {**DEFAULTS, **spec.config, "scale_factor": 1.0}
