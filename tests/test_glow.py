"""Glow's learned-prior split (an option of multiscale) and the glow model: the documented formula on
a hand-built example, the split's dependence on the kept half, Glow's initialisation, configs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings, strategies as st

from flowspec import reference, registry
from flowspec.accelerated import from_spec
from flowspec.accelerated.actnorm import ActNorm
from flowspec.accelerated.coupling import AffineCoupling, AdditiveCoupling
from flowspec.accelerated.glow import Glow, make_model
from flowspec.accelerated.multiscale import MultiScale
from flowspec.conformance import load_families
from flowspec.conformance.multiscale import PRIOR_SPECS
from flowspec.conformance.seeding import rng, seed_for
from flowspec.conformance.tolerances import assert_close
from flowspec.errors import ConfigError
from flowspec.reference.core import forward_one
from flowspec.reference.glow import check_structure, multiscale_view
from flowspec.reference.multiscale import multiscale_spec, split_terms
from flowspec.spec import FlowSpec

load_families()
SHAPE = (2, 2, 3)  # the hand-built example's level output: one factored and one kept channel
SCALE = 1.5


def _prior_config(shape, **kw) -> dict:
    return {"shape": list(shape), "mask": "channel", "parity": 1, "conditioner": "conv", "hidden": 3, "depth": 1,
            "activation": "tanh", "scale_factor": SCALE, **kw}


def _hand_built() -> FlowSpec:
    """actnorm on (2, 2, 3) → split through a learned prior → elementwise affine on the kept channel."""
    gen = rng("glow-test", "hand-built")
    levels = [reference.init_spec("actnorm", {"shape": list(SHAPE)}, gen),
              reference.init_spec("elementwise_affine", {"shape": [1, *SHAPE[1:]]}, gen)]
    return multiscale_spec(levels, [reference.init_spec("affine_coupling", _prior_config(SHAPE), gen)])


def _by_hand(spec: FlowSpec, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """z and log|det| from the module docstring's formula, with torch's conv2d as the conditioner."""
    act, last, prior = (spec.params[k].params for k in ("0", "1", "prior0"))
    h = (x + act["bias"][:, None, None]) * np.exp(act["log_scale"][:, None, None])
    conv = lambda t, i: F.conv2d(t, torch.tensor(prior[f"net.{i}.weight"]),  # noqa: E731
                                 torch.tensor(prior[f"net.{i}.bias"]), padding=1)
    kept_only = torch.as_tensor(h).clone()
    kept_only[:, :1] = 0.0  # the conditioner reads the kept channel alone
    out = conv(torch.tanh(conv(kept_only, 0)), 2).numpy()
    s, t = SCALE * np.tanh(out[:, :1]), out[:, 2:3]  # the factored channel's s and t (of 2C outputs)
    log_sigma, mu = -s, -t * np.exp(-s)
    z_prior = (h[:, :1] - mu) * np.exp(-log_sigma)
    z_last = h[:, 1:] * np.exp(last["log_scale"]) + last["shift"]
    z = np.concatenate([z_prior.reshape(len(x), -1), z_last.reshape(len(x), -1)], axis=1)
    positions = SHAPE[1] * SHAPE[2]
    logdet = positions * act["log_scale"].sum() - log_sigma.reshape(len(x), -1).sum(1) + last["log_scale"].sum()
    return z, logdet


def test_the_learned_prior_is_the_documented_affine_map_of_the_factored_half() -> None:
    spec = _hand_built()
    x = rng("glow-test", "x").standard_normal((4, *SHAPE))
    z, logdet = _by_hand(spec, x)
    size = x[0].size
    assert_close(reference.forward(spec, x), z, "forward", "float64", size, "reference z")
    assert_close(reference.log_abs_det(spec, x), logdet, "logdet", "float64", size, "reference log|det|")
    flow = from_spec(spec)
    z_t, logdet_t = flow(torch.as_tensor(x))
    assert_close(z_t.detach().numpy(), z, "forward", "float64", size, "accelerated z")
    assert_close(logdet_t.detach().numpy(), logdet, "logdet", "float64", size, "accelerated log|det|")
    assert_close(flow.inverse(z_t).detach().numpy(), x, "roundtrip", "float64", size, "accelerated inverse")
    (split,) = split_terms(spec, x[0])
    assert_close(np.array([split.logdet]), logdet[:1] - reference.log_abs_det(multiscale_spec(
        [spec.params["0"], spec.params["1"]]), x[:1]), "logdet", "float64", size, "split_terms' prior log|det|")


@pytest.mark.parametrize("kind", ["multiscale", "glow"])
def test_the_strategies_priors_depend_on_the_kept_half(kind: str) -> None:
    """What the broken "prior ignores the kept half" needs to be seen: with the kept half replaced by
    zeros every split's latent moves by far more than a float32 tolerance."""

    @settings(max_examples=4, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(PRIOR_SPECS[kind](), st.integers(0, 2**32 - 1))
    def check(spec: FlowSpec, seed: int) -> None:
        view = registry.get(spec.kind).extras["split_prior"](spec)
        x = rng("glow-test", "kept half", seed).standard_normal(reference.event_shape(spec))
        for i, split in enumerate(split_terms(view, x)):
            blind = np.concatenate([split.factored, np.zeros_like(split.kept)])
            moved = np.asarray(forward_one(view.params[f"prior{i}"], blind))[: len(split.factored)]
            assert np.max(np.abs(moved - split.latent)) > 1e-3

    check()


def test_multiscale_specs_without_the_split_prior_key_keep_their_map() -> None:
    """A spec written before the option existed (no ``split_prior`` in its config) is the plain split."""
    gen = rng("glow-test", "plain")
    levels = [reference.init_spec("conv1x1", {"channels": 2, "height": 2, "width": 2}, gen),
              reference.init_spec("actnorm", {"shape": [1, 2, 2]}, gen)]
    data = multiscale_spec(levels).to_dict()
    del data["config"]["split_prior"]
    old = FlowSpec.from_dict(data)
    x = rng("glow-test", "plain x").standard_normal((3, 2, 2, 2))
    h = np.einsum("ij,bjhw->bihw", levels[0].params["weight"], x)
    act = levels[1].params
    kept = (h[:, 1:] + act["bias"][:, None, None]) * np.exp(act["log_scale"][:, None, None])
    expected = np.concatenate([h[:, :1].reshape(3, -1), kept.reshape(3, -1)], axis=1)
    assert_close(reference.forward(old, x), expected, "forward", "float64", 8)
    flow = from_spec(old)
    assert flow.priors is None and flow.config()["split_prior"] is False
    assert_close(flow(torch.as_tensor(x))[0].detach().numpy(), expected, "forward", "float64", 8)


# ----------------------------------------------------------------------------- the model and Glow's initialisation

def _modules(model: Glow, cls: type) -> list:
    return [m for m in model.modules() if isinstance(m, cls)]


def test_make_model_builds_glow_levels_and_starts_every_coupling_and_prior_as_the_identity() -> None:
    torch.manual_seed(seed_for("glow-test", "identity"))
    model = make_model([1, 4, 4], levels=2, steps=3, hidden=4, coupling="additive").double()
    assert isinstance(model, Glow) and model.config()["coupling"] == "additive"
    for i, level in enumerate(model.levels):
        kinds = [child.kind for child in level.flows]
        assert kinds == ["squeeze"] + ["actnorm", "conv1x1_lu", "additive_coupling"] * 3, f"level {i}: {kinds}"
    assert [p.kind for p in model.priors] == ["affine_coupling"]
    couplings = _modules(model, AdditiveCoupling) + _modules(model, AffineCoupling)
    assert len(couplings) == 2 * 3 + 1
    for coupling in couplings:
        h = torch.as_tensor(rng("glow-test", "identity h").standard_normal((2, *coupling.event_shape)))
        out, logdet = coupling(h)
        assert torch.equal(out, h) and torch.equal(logdet, torch.zeros(2, dtype=h.dtype))  # exactly the identity
    for conv in (m for m in model.modules() if getattr(m, "kind", "") == "conv1x1_lu"):
        w = conv.weight_matrix()
        assert_close((w @ w.T).detach().numpy(), np.eye(w.shape[0]), "forward", "float32", w.numel(),
                     "a rotation (built in float32) at initialisation")


def test_first_training_batch_initialises_every_actnorm_from_its_own_input_and_matches_the_reference() -> None:
    torch.manual_seed(seed_for("glow-test", "actnorm"))
    model = make_model([1, 4, 4], levels=2, steps=2, hidden=3).double()  # depth 2 and ReLU: the defaults
    outputs: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: outputs.append(out[0].detach()))
             for m in _modules(model, ActNorm)]
    x = torch.as_tensor(3.0 + 2.0 * rng("glow-test", "actnorm batch").standard_normal((16, 1, 4, 4)))
    model.train()
    model(x)
    assert len(outputs) == 2 * 2
    for out in outputs:
        values = out.transpose(0, 1).reshape(out.shape[1], -1).numpy()
        n = values.shape[1]
        assert_close(values.mean(axis=1), np.zeros(len(values)), "forward", "float64", n, "channel means")
        assert_close(values.var(axis=1), np.ones(len(values)), "forward", "float64", n, "channel variances")
    for hook in hooks:
        hook.remove()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model(x[:4] + 1.0)  # a later batch does not initialise again
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    spec = model.to_spec()
    model.eval()
    z, logdet = model(x[:2])
    assert_close(z.detach().numpy(), reference.forward(spec, x[:2].numpy()), "forward", "float64", 16)
    assert_close(logdet.detach().numpy(), reference.log_abs_det(spec, x[:2].numpy()), "logdet", "float64", 16)


def test_a_spec_loads_after_json_and_its_children_must_be_the_configs() -> None:
    spec = reference.init_spec("glow", {"shape": [1, 4, 4], "levels": 2, "steps": 1, "hidden": 2, "depth": 1},
                               rng("glow-test", "json"))
    again = FlowSpec.from_json(spec.to_json())
    x = rng("glow-test", "json x").standard_normal((2, 1, 4, 4))
    assert_close(from_spec(again)(torch.as_tensor(x))[0].detach().numpy(), reference.forward(spec, x), "forward",
                 "float64", 16)
    level = spec.params["0"]
    coupling = level.params["3"]
    tanh = FlowSpec(coupling.kind, {**coupling.config, "activation": "tanh"}, coupling.params)
    edited = FlowSpec("glow", spec.config, {**spec.params, "0": FlowSpec("sequential", level.config,
                                                                          {**level.params, "3": tanh})})
    for build in (check_structure, from_spec):
        with pytest.raises(ConfigError, match="child 3 of level 0"):
            build(edited)
    # the reference's map reads the children's parameters in the configs the glow config gives them
    assert_close(reference.forward(edited, x), reference.forward(spec, x), "forward", "float64", 16)
    swapped = FlowSpec("glow", spec.config, {**spec.params, "prior0": spec.params["1"]})
    with pytest.raises(ConfigError, match="prior0"):
        multiscale_view(swapped)


@pytest.mark.parametrize("config, key", [
    ({"shape": [1, 4, 6], "levels": 2}, "shape"),
    ({"shape": [1, 8, 8], "levels": 0}, "levels"),
    ({"shape": [1, 8, 8], "coupling": "spline"}, "coupling"),
    ({"shape": [1, 8, 8], "depth": 0}, "depth"),
    ({"shape": [1, 8, 8], "scale_factor": 0.0}, "scale_factor"),
    ({"shape": [1, 8, 8], "context": 3}, "context"),
])
def test_glow_config_errors_name_the_key(config: dict, key: str) -> None:
    for build in (lambda: reference.init_spec("glow", config, rng("glow-test", "bad")), lambda: Glow(**config)):
        with pytest.raises(ConfigError, match=key):
            build()


def test_a_prior_must_transform_the_factored_half_from_the_kept_half() -> None:
    gen = rng("glow-test", "bad prior")
    levels = [reference.init_spec("actnorm", {"shape": list(SHAPE)}, gen),
              reference.init_spec("actnorm", {"shape": [1, *SHAPE[1:]]}, gen)]
    for config, match in (({"parity": 0}, "parity 1"), ({"mask": "checkerboard"}, "channel mask"),
                          ({"shape": [2, 3, 2]}, "output shape")):
        prior = reference.init_spec("affine_coupling", {**_prior_config(SHAPE), **config}, gen)
        with pytest.raises(ConfigError, match=match):
            multiscale_spec(levels, [prior])
        with pytest.raises(ConfigError, match=match):
            MultiScale([from_spec(level) for level in levels], [from_spec(prior)])
    with pytest.raises(ConfigError, match="1 splits"):
        multiscale_spec(levels, [])
