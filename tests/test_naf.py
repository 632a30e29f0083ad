"""The neural autoregressive flow ``naf`` (DSF, Huang et al. 2018 eq. (8)): the layer against its
definition, the log-derivative against autograd, log space in float32, the stacked inverse, configs
and reference against accelerated."""
from __future__ import annotations

import autograd
import numpy as np
import pytest
import torch

from flowspec import reference
from flowspec.accelerated import from_spec
from flowspec.accelerated.naf import NAF
from flowspec.conformance.seeding import rng
from flowspec.conformance.tolerances import assert_close
from flowspec.errors import ConfigError
from flowspec.reference.naf import DsfConfig, dsf_stack, dsf_stack_inverse, parse_naf

TWO = DsfConfig(components=3, layers=2, min_slope=1e-3)


def _raw(n: int, dsf: DsfConfig, seed: int, scale: float = 1.0) -> np.ndarray:
    return scale * rng("naf test raw", seed).standard_normal((n, dsf.outputs_per_dim))


def _naive_layer(x: np.ndarray, h: np.ndarray, dsf: DsfConfig, layer: int) -> np.ndarray:
    """σ⁻¹(Σ_j w_j σ(a_j x + b_j)) written out (eq. (8)), for moderate x."""
    k = dsf.components
    block = h[:, 3 * k * layer:3 * k * (layer + 1)]
    a = dsf.min_slope + np.log1p(np.exp(block[:, :k]))
    w = np.exp(block[:, 2 * k:]) / np.exp(block[:, 2 * k:]).sum(axis=1, keepdims=True)
    f = np.sum(w / (1.0 + np.exp(-(a * x[:, None] + block[:, k:2 * k]))), axis=1)
    return np.log(f) - np.log1p(-f)


def test_layers_are_eq_8_composed() -> None:
    x = rng("naf test x", 0).uniform(-3.0, 3.0, 40)
    h = _raw(40, TWO, 1)
    expected = _naive_layer(_naive_layer(x, h, TWO, 0), h, TWO, 1)
    assert_close(dsf_stack(x, h, TWO)[0], expected, "forward", "float64", 1, "two DSF layers vs eq. (8) twice")


def test_log_derivative_is_autograd_derivative() -> None:
    x = np.concatenate([rng("naf test x", 2).uniform(-5.0, 5.0, 30), [-1e3, -60.0, 60.0, 1e3]])
    h = _raw(len(x), TWO, 3, scale=2.0)
    slope = autograd.elementwise_grad(lambda v: dsf_stack(v, h, TWO)[0])(x)
    assert_close(dsf_stack(x, h, TWO)[1], np.log(slope), "logdet", "float64", 1, "Σ log ℓ′ vs autograd")


def test_stack_inverse_undoes_the_layers_in_reverse() -> None:
    x = np.concatenate([rng("naf test x", 4).uniform(-5.0, 5.0, 30), [-1e4, -100.0, 100.0, 1e4]])
    h = _raw(len(x), TWO, 5, scale=2.0)
    z = dsf_stack(x, h, TWO)[0]
    assert_close(dsf_stack_inverse(z, h, TWO), x, "inverse", "float64", 1, "stack inverse")


def test_float32_far_tails_finite_and_exact() -> None:
    """|a x + b| in the hundreds: σ rounds to 0 or 1 in float32, the log-space layer does not."""
    spec = reference.init_spec("naf", {"dim": 2, "layers": 2, "components": 2}, rng("naf test spec", 0))
    x = np.array([[-300.0, 250.0], [400.0, -500.0]])
    z_ref, ld_ref = reference.forward_and_log_abs_det(spec, x)
    flow = from_spec(spec).to(torch.float32)
    z, logdet = flow(torch.tensor(x, dtype=torch.float32))
    assert torch.isfinite(z).all() and torch.isfinite(logdet).all()
    assert_close(z.detach().numpy(), z_ref, "forward", "float32", 2, "z far in the tails")
    assert_close(logdet.detach().numpy(), ld_ref, "logdet", "float32", 2, "log|det| far in the tails")


@pytest.mark.parametrize("config, key", [
    ({"layers": 0}, "layers"), ({"layers": 1.5}, "layers"), ({"components": 0}, "components"),
    ({"components": True}, "components"), ({"min_slope": 0.0}, "min_slope"), ({"min_slope": -1e-3}, "min_slope"),
    ({"min_slope": float("inf")}, "min_slope"), ({"bins": 3}, "unknown config keys"),
])
def test_bad_configs_rejected(config: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        parse_naf({"dim": 3, **config})
    with pytest.raises(ConfigError, match=key):
        NAF(3, **config)


def test_defaults_stated() -> None:
    _, dsf = parse_naf({"dim": 2})
    assert (dsf.components, dsf.layers, dsf.min_slope) == (4, 1, 1e-3)
    assert dsf.outputs_per_dim == 12


@pytest.mark.parametrize("config", [
    {"dim": 3},
    {"dim": 4, "layers": 2, "components": 3, "order": "reversed", "context_dim": 2, "hidden": [5, 7]},
])
def test_matches_reference(config: dict) -> None:
    spec = reference.init_spec("naf", config, rng("naf test spec", 1))
    draw = rng("naf test inputs", 1)
    x = 3.0 * draw.standard_normal((3, config["dim"]))
    c = draw.standard_normal((3, 2)) if config.get("context_dim") else None
    flow, tc = from_spec(spec), None if c is None else torch.tensor(c)
    z, logdet = flow(torch.tensor(x), tc)
    size = config["dim"]
    assert_close(z.detach().numpy(), reference.forward(spec, x, c), "forward", "float64", size, "z")
    assert_close(logdet.detach().numpy(), reference.log_abs_det(spec, x, c), "logdet", "float64", size, "log|det|")
    x_back, logdet_inv = flow.inverse_and_logdet(z, tc)
    assert_close(x_back.detach().numpy(), reference.inverse(spec, z.detach().numpy(), c), "inverse", "float64", size,
                 "x vs the reference's inverse")
    assert_close(logdet_inv.detach().numpy(), -logdet.detach().numpy(), "logdet", "float64", size, "inverse log|det|")
    assert sorted(flow.to_spec().params) == sorted(spec.params)
