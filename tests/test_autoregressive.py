"""MADE masks and the masked autoregressive flows (maf, iaf) in the three layers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from flowspec import made, reference, registry
from flowspec.accelerated import from_spec
from flowspec.accelerated.autoregressive import IAF, MADE, MAF, autoregressive_inverse
from flowspec.conformance.autoregressive import MAX_LOG_SCALE, in_regime, log_scale_bound
from flowspec.conformance.seeding import rng
from flowspec.conformance.tolerances import assert_close
from flowspec.errors import ConfigError, FlowInputError
from flowspec.reference.autoregressive import DEFAULTS, parse_made
from flowspec.spec import FlowSpec
from reference_checks import assert_vjp_matches_reference

HIDDEN = [[1], [3], [8], [5, 7], [2, 2, 9]]
CONFIGS = [
    {"dim": 1},
    {"dim": 1, "context_dim": 2, "hidden": [3]},
    {"dim": 3, "order": "reversed", "hidden": [2], "activation": "relu"},
    {"dim": 4, "order": [2, 0, 3, 1], "hidden": [5, 7], "context_dim": 2},
    {"dim": 5, "order": [4, 1, 0, 3, 2], "hidden": [3], "activation": "elu"},
    {"dim": 6, "hidden": [8], "context_dim": 1},
]


def _spec(kind: str, config: dict, key: str) -> FlowSpec:
    return reference.init_spec(kind, config, rng("autoregressive-test", kind, key))


def _context(spec: FlowSpec, n: int, key: str) -> np.ndarray | None:
    shape = registry.get(spec.kind).context_of(spec.config)
    return None if shape is None else rng("autoregressive-test", "context", key).standard_normal((n, *shape))


def _t(a: np.ndarray | None) -> torch.Tensor | None:
    return None if a is None else torch.as_tensor(a)


def _orders(dim: int) -> list[np.ndarray]:
    return [made.parse_order("natural", dim), made.parse_order("reversed", dim),
            np.array(made.random_order(dim, rng("autoregressive-test", "order", dim)))]


# ----------------------------------------------------------------------------- flowspec.made

def test_parse_order() -> None:
    np.testing.assert_array_equal(made.parse_order("natural", 3), [0, 1, 2])
    np.testing.assert_array_equal(made.parse_order("reversed", 3), [2, 1, 0])
    np.testing.assert_array_equal(made.parse_order((1, 2, 0), 3), [1, 2, 0])
    for bad in ("random", [0, 1], [0, 0, 1], [0, 1, 3], [0.0, 1.0, 2.0], [True, False, 2], 3):
        with pytest.raises(ConfigError, match="order"):
            made.parse_order(bad, 3)


def test_random_order_and_ranks() -> None:
    order = made.random_order(6, np.random.default_rng(0))
    assert sorted(order) == list(range(6)) and all(type(v) is int for v in order)
    assert order == made.random_order(6, np.random.default_rng(0))
    rank = made.ranks(order)
    np.testing.assert_array_equal(np.asarray(order)[rank], np.arange(6))
    np.testing.assert_array_equal(made.input_degrees(order), rank + 1)


@pytest.mark.parametrize("context", [False, True])
def test_hidden_degrees(context: bool) -> None:
    for dim in range(1, 7):
        for width in range(1, 12):
            degrees = made.hidden_degrees(width, dim, context)
            assert degrees.shape == (width,) and degrees.min() >= 0 and degrees.max() <= max(dim - 1, 0)
            if width >= dim - 1:
                assert set(range(1, dim)) <= set(degrees.tolist())
    assert made.hidden_degrees(4, 1, False).tolist() == [0, 0, 0, 0]


def _connectivity(masks: list[np.ndarray]) -> np.ndarray:
    """Whether output row r is connected to input column c through some path of the masks."""
    reach = masks[0] > 0
    for mask in masks[1:]:
        reach = (mask @ reach) > 0
    return reach


@pytest.mark.parametrize("dim", range(1, 7))
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("context_dim", [0, 2])
def test_masks_respect_the_order(dim: int, hidden: list[int], context_dim: int) -> None:
    for order in _orders(dim):
        masks = made.masks(order, hidden, 2, context_dim)
        assert [m.shape for m in masks] == [(b, a) for a, b in zip([dim + context_dim, *hidden], [*hidden, 2 * dim])]
        reach = _connectivity(masks)
        for block in (reach[:dim], reach[dim:]):  # μ and α rows
            assert not (block[:, :dim] & (made.forbidden(order) | np.eye(dim, dtype=bool))).any()
            required = made.required(order, hidden, "tanh")
            if required is not None:
                assert (block[:, :dim] | np.eye(dim, dtype=bool))[required].all()
            if context_dim and min(hidden) >= dim:
                assert block[:, dim:].all()  # every dimension reads the context


def test_forbidden_and_required() -> None:
    order = [2, 0, 1]
    forbidden = made.forbidden(order)
    np.testing.assert_array_equal(forbidden, [[False, True, False], [False, False, False], [True, True, False]])
    np.testing.assert_array_equal(made.required(order, [2], "tanh"), ~forbidden)
    assert made.required(order, [1], "tanh") is None
    assert made.required(order, [8], "relu") is None


# ----------------------------------------------------------------------------- config

def test_config_defaults_and_errors() -> None:
    cfg = parse_made({"dim": 3})
    assert (cfg.hidden, cfg.activation, cfg.context_dim) == (tuple(DEFAULTS["hidden"]), "tanh", 0)
    np.testing.assert_array_equal(cfg.order, [0, 1, 2])
    bad = [({}, "dim"), ({"dim": 0}, "dim"), ({"dim": 2, "hidden": []}, "hidden"), ({"dim": 2, "hidden": [0]}, "hidden"),
           ({"dim": 2, "order": [1, 1]}, "order"), ({"dim": 2, "activation": "sigmoid"}, "activation"),
           ({"dim": 2, "context_dim": -1}, "context_dim"), ({"dim": 2, "depth": 2}, "depth")]
    for kind in ("maf", "iaf"):
        for config, key in bad:
            with pytest.raises(ConfigError, match=key):
                registry.get(kind).validate_config(config)
            if "dim" in config:
                with pytest.raises(ConfigError, match=key):
                    from_spec(FlowSpec(kind, config, {}))


def test_random_order_in_config_is_plain_ints() -> None:
    order = made.random_order(4, np.random.default_rng(3))
    spec = _spec("maf", {"dim": 4, "order": order}, "order")
    assert spec.config["order"] == tuple(order)
    flow = from_spec(spec)
    assert flow.to_spec().config["order"] == tuple(order)
    np.testing.assert_array_equal(registry.get("maf").extras["order"](spec.config), order)


# ----------------------------------------------------------------------------- accelerated layer

@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_made_masks_match_flowspec_made(config: dict) -> None:
    cfg = parse_made(config)
    net = MADE(cfg.dim, cfg.hidden, 2, cfg.activation, cfg.order, cfg.context_dim)
    for layer, expected in zip(net.linears(), cfg.masks(2)):
        np.testing.assert_array_equal(layer._mask.numpy(), expected)
    assert [name for name, _ in net.named_parameters()] == [
        f"{2 * i}.{p}" for i in range(len(cfg.hidden) + 1) for p in ("weight", "bias")]


@pytest.mark.parametrize("kind", ["maf", "iaf"])
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_matches_reference(kind: str, config: dict) -> None:
    spec = _spec(kind, config, str(config))
    x = rng("autoregressive-test", "x", kind).standard_normal((4, config["dim"]))
    c = _context(spec, 4, kind)
    flow = from_spec(spec)
    assert set(flow.state_dict()) == set(spec.params)  # the masks are not state
    z, logdet = flow(torch.as_tensor(x), _t(c))
    size = config["dim"]
    assert_close(z.detach().numpy(), reference.forward(spec, x, c), "forward", "float64", size, "z")
    assert_close(logdet.detach().numpy(), reference.log_abs_det(spec, x, c), "logdet", "float64", size, "log|det|")
    x_back, inv_logdet = flow.inverse_and_logdet(z, _t(c))
    assert_close(x_back.detach().numpy(), x, "roundtrip", "float64", size, "x")
    assert_close(inv_logdet.detach().numpy(), -logdet.detach().numpy(), "logdet", "float64", size, "inverse log|det|")
    assert_close(flow.inverse(z, _t(c)).detach().numpy(), reference.inverse(spec, z.detach().numpy(), c),
                 "inverse", "float64", size, "inverse")


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_iaf_inverts_maf_with_the_same_parameters(config: dict) -> None:
    spec = _spec("maf", config, "duality")
    dual = FlowSpec("iaf", spec.config, spec.params)
    x = rng("autoregressive-test", "dual-x").standard_normal((3, config["dim"]))
    c = _context(spec, 3, "dual")
    size = config["dim"]
    for dtype in ("float64", "float32"):
        torch_dtype = getattr(torch, dtype)
        maf, iaf = from_spec(spec, dtype=torch_dtype), from_spec(dual, dtype=torch_dtype)
        xt, ct = torch.as_tensor(x, dtype=torch_dtype), None if c is None else torch.as_tensor(c, dtype=torch_dtype)
        z, ld_maf = maf(xt, ct)
        back, ld_iaf = iaf(z, ct)
        assert_close(back.detach().numpy(), x, "roundtrip", dtype, size, "iaf.forward(maf.forward(x))")
        assert_close((ld_maf + ld_iaf).detach().numpy(), np.zeros(3), "logdet", dtype, size, "log-dets")
        again, _ = maf(iaf(xt, ct)[0], ct)
        assert_close(again.detach().numpy(), x, "roundtrip", dtype, size, "maf.forward(iaf.forward(x))")
    z_ref = reference.forward(spec, x, c)
    assert_close(reference.forward(dual, z_ref, c), x, "roundtrip", "float64", size, "reference duality")


def test_iaf_inverse_is_kingmas_step() -> None:
    """x = m + σ⊙z with (m, log σ) = (−μ·e^{−α}, −α), μ and α from the MADE at z (Kingma et al.)."""
    spec = _spec("iaf", {"dim": 4, "order": "reversed", "hidden": [6]}, "kingma")
    flow = from_spec(spec)
    z = torch.as_tensor(rng("autoregressive-test", "kingma").standard_normal((5, 4)))
    h = flow.net(z)
    mu, alpha = h[:, 0], h[:, 1]
    m, log_sigma = -mu * torch.exp(-alpha), -alpha
    x, logdet = flow.inverse_and_logdet(z)
    assert_close(x.detach().numpy(), (m + torch.exp(log_sigma) * z).detach().numpy(), "forward", "float64", 4)
    assert_close(logdet.detach().numpy(), log_sigma.sum(dim=1).detach().numpy(), "logdet", "float64", 4)


@pytest.mark.parametrize("kind", ["maf", "iaf"])
def test_later_inputs_do_not_move_earlier_outputs_at_all(kind: str) -> None:
    order = [3, 1, 4, 0, 2]
    spec = _spec(kind, {"dim": 5, "order": order, "hidden": [7, 5], "context_dim": 2}, "exact")
    c = _context(spec, 1, "exact")
    for dtype in (torch.float64, torch.float32):
        flow = from_spec(spec, dtype=dtype)
        x = torch.as_tensor(rng("autoregressive-test", "exact").standard_normal((1, 5)), dtype=dtype)
        z = flow(x, torch.as_tensor(c, dtype=dtype))[0]
        for position, d in enumerate(order):
            moved = x.clone()
            moved[0, d] += 3.0
            z_moved = flow(moved, torch.as_tensor(c, dtype=dtype))[0]
            earlier = order[:position]
            assert torch.equal(z_moved[0, earlier], z[0, earlier])
            assert z_moved[0, d] != z[0, d]


@pytest.mark.parametrize("kind", ["maf", "iaf"])
def test_gradients_match_reference(kind: str) -> None:
    spec = _spec(kind, {"dim": 4, "order": [1, 3, 0, 2], "hidden": [5, 6], "activation": "elu"}, "grad")
    gen = rng("autoregressive-test", "grad", kind)
    assert_vjp_matches_reference(spec, gen.standard_normal((3, 4)), gen.standard_normal((3, 4)), gen.standard_normal(3))


def test_context_is_required_and_checked() -> None:
    flow = from_spec(_spec("maf", {"dim": 3, "context_dim": 2}, "context"))
    assert flow.context_shape == (2,)
    with pytest.raises(FlowInputError):
        flow(torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(FlowInputError):
        flow(torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64))


def test_constructor_takes_the_config() -> None:
    flow = IAF(dim=3, order=[2, 0, 1], hidden=[4, 4], activation="relu", context_dim=1)
    assert flow.config() == {"dim": 3, "order": [2, 0, 1], "hidden": [4, 4], "activation": "relu", "context_dim": 1}
    assert sorted(dict(flow.named_parameters())) == sorted(
        f"net.{2 * i}.{p}" for i in range(3) for p in ("weight", "bias"))
    with pytest.raises(ConfigError, match="bins"):
        MAF(dim=3, bins=4)


def test_autoregressive_inverse_helper() -> None:
    """D passes of a lower-triangular conditioner invert z_d = x_d + Σ_{e earlier} x_e (h[:, 0])."""
    order = [2, 0, 1]
    rank = made.ranks(order)
    lower = torch.as_tensor((rank[None, :] < rank[:, None]).astype(np.float64))
    x = torch.as_tensor(rng("autoregressive-test", "helper").standard_normal((4, 3)))
    z = x + x @ lower.T
    calls = []

    def params_fn(v: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return (v @ lower.T)[:, None, :]

    solved, h = autoregressive_inverse(params_fn, lambda zd, hd: zd - hd[:, 0], z, order)
    assert len(calls) == 3
    assert_close(solved.numpy(), x.numpy(), "inverse", "float64", 3)
    assert_close(h[:, 0].numpy(), (x @ lower.T).numpy(), "forward", "float64", 3)


# ----------------------------------------------------------------------------- conformance strategies

@pytest.mark.parametrize("activation", ["tanh", "relu", "elu"])
def test_regimes_keep_log_scales_bounded(activation: str) -> None:
    for i in range(6):
        config = {"dim": 6, "order": "natural", "hidden": [8], "activation": activation, "context_dim": 2 * (i % 2)}
        for regime in ("init", "large"):
            assert log_scale_bound(in_regime(_spec("iaf", config, f"regime{i}"), regime)) <= MAX_LOG_SCALE
