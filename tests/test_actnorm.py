"""ActNorm's data-dependent initialisation: the documented behaviours the property suite does not reach."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from flowspec import reference
from flowspec.accelerated import from_spec
from flowspec.accelerated.actnorm import ActNorm
from flowspec.conformance.seeding import rng
from flowspec.conformance.tolerances import assert_close
from flowspec.errors import ConfigError, FlowInputError
from flowspec.reference.actnorm import actnorm_init
from flowspec.spec import FlowSpec

IMAGE = [3, 2, 4]
VECTOR = [5]
NUMPY_DTYPE = {torch.float64: np.float64, torch.float32: np.float32}
DTYPE_NAME = {torch.float64: "float64", torch.float32: "float32"}


def _per_channel(x: np.ndarray, shape: list[int]) -> int:
    """How many values each channel's statistics reduce over (batch × positions): the size errors accumulate over."""
    return x.size // shape[0]


def _batch(shape: list[int], n: int, key: str) -> np.ndarray:
    """Channels with different offsets and spreads, so that centring and scaling both matter."""
    gen = rng("actnorm-test", key)
    offsets = gen.normal(0.0, 3.0, shape[0]).reshape((-1,) + (1,) * (len(shape) - 1))
    spreads = gen.uniform(0.5, 4.0, shape[0]).reshape(offsets.shape)
    return offsets + spreads * gen.standard_normal((n, *shape))


def _params(flow: ActNorm) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in flow.to_spec().params.items()}


@pytest.mark.parametrize("shape", [IMAGE, VECTOR], ids=["image", "vector"])
def test_first_training_forward_initialises_like_the_reference(shape: list[int]) -> None:
    x = _batch(shape, 4, f"init-{len(shape)}")
    flow = ActNorm(shape).double()
    z, logdet = flow(torch.as_tensor(x))
    expected = actnorm_init(x, {"shape": shape})
    got = _params(flow)
    n = _per_channel(x, shape)
    for name in ("bias", "log_scale", "initialized"):
        assert_close(got[name], expected[name], "forward", "float64", n, what=name)
    values = np.moveaxis(z.detach().numpy(), 1, 0).reshape(shape[0], -1)
    assert_close(values.mean(axis=1), np.zeros(shape[0]), "forward", "float64", n, what="channel means")
    assert_close(values.var(axis=1), np.ones(shape[0]), "forward", "float64", n, what="channel variances")
    positions = int(np.prod(shape[1:]))
    assert_close(logdet.detach().numpy(), np.full(logdet.shape, positions * expected["log_scale"].sum()),
                 "logdet", "float64", int(np.prod(shape)))


def test_no_reinitialisation_after_the_first_batch() -> None:
    flow = ActNorm(IMAGE).double()
    flow(torch.as_tensor(_batch(IMAGE, 4, "first")))
    before = _params(flow)
    flow(torch.as_tensor(_batch(IMAGE, 4, "second")))
    after = _params(flow)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])


def test_batch_of_one_vector_is_only_centred_with_a_warning() -> None:
    x = _batch(VECTOR, 1, "single")
    flow = ActNorm(VECTOR).double()
    with pytest.warns(UserWarning, match=r"channels \[0, 1, 2, 3, 4\] have no spread"):
        z, logdet = flow(torch.as_tensor(x))
    got = _params(flow)
    np.testing.assert_array_equal(got["bias"], -x[0])
    np.testing.assert_array_equal(got["log_scale"], np.zeros(5))
    np.testing.assert_array_equal(z.detach().numpy(), np.zeros_like(x))
    np.testing.assert_array_equal(logdet.detach().numpy(), [0.0])
    expected = actnorm_init(x, {"shape": VECTOR})
    np.testing.assert_array_equal(expected["bias"], got["bias"])
    np.testing.assert_array_equal(expected["log_scale"], got["log_scale"])


def test_batch_of_one_image_is_normalised_over_its_positions() -> None:
    x = _batch(IMAGE, 1, "single-image")
    flow = ActNorm(IMAGE).double()
    flow.initialize(torch.as_tensor(x))  # no warning: 8 positions per channel
    z, _ = flow(torch.as_tensor(x))
    values = np.moveaxis(z.detach().numpy(), 1, 0).reshape(IMAGE[0], -1)
    assert_close(values.var(axis=1), np.ones(IMAGE[0]), "forward", "float64", _per_channel(x, IMAGE))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_constant_channel_is_centred_and_keeps_scale_one(dtype: torch.dtype) -> None:
    x = _batch(IMAGE, 4, "constant")
    x[:, 1] = 0.1  # channel 1 constant over batch and positions
    flow = ActNorm(IMAGE).to(dtype)
    with pytest.warns(UserWarning, match=r"channels \[1\] have no spread"):
        z, logdet = flow(torch.as_tensor(x, dtype=dtype))
    got = _params(flow)
    assert got["log_scale"][1] == 0.0
    assert np.all(np.isfinite(got["log_scale"])) and torch.isfinite(logdet).all()
    np.testing.assert_array_equal(z[:, 1].detach().numpy(), 0.0)
    expected = actnorm_init(x.astype(NUMPY_DTYPE[dtype]).astype(np.float64), {"shape": IMAGE})
    n = _per_channel(x, IMAGE)
    assert_close(got["log_scale"], expected["log_scale"], "forward", DTYPE_NAME[dtype], n)
    values = np.moveaxis(z.detach().double().numpy(), 1, 0).reshape(IMAGE[0], -1)
    assert_close(values[[0, 2]].var(axis=1), np.ones(2), "forward", DTYPE_NAME[dtype], n)


def test_spread_below_the_smallest_normal_gives_a_finite_log_scale() -> None:
    tiny = np.finfo(np.float64).tiny
    x = np.array([[0.0], [5e-324]])  # two distinct values; their standard deviation underflows
    flow = ActNorm([1]).double()
    z, logdet = flow(torch.as_tensor(x))
    got = _params(flow)
    assert_close(got["log_scale"][0], -np.log(tiny), "forward", "float64", _per_channel(x, [1]))
    assert torch.isfinite(z).all() and torch.isfinite(logdet).all()
    assert_close(actnorm_init(x, {"shape": [1]})["log_scale"], got["log_scale"], "forward", "float64",
                 _per_channel(x, [1]))


def test_evaluation_before_initialisation_raises() -> None:
    flow = ActNorm(IMAGE).double()
    x = torch.as_tensor(_batch(IMAGE, 2, "eval"))
    flow.eval()
    with pytest.raises(ConfigError, match="not initialised"):
        flow(x)
    flow.train()
    with pytest.raises(ConfigError, match="not initialised"):
        flow.inverse(x)
    assert not bool(flow.initialized)


def test_loaded_spec_never_reinitialises() -> None:
    spec = reference.init_spec("actnorm", {"shape": IMAGE}, rng("actnorm-test", "spec"))
    flow = from_spec(spec)
    assert flow.training
    x = _batch(IMAGE, 4, "loaded")
    z, _ = flow(torch.as_tensor(x))
    assert_close(z.detach().numpy(), reference.forward(spec, x), "forward", "float64", int(np.prod(IMAGE)))
    round_trip = flow.to_spec()
    assert float(round_trip.params["initialized"]) == 1.0
    np.testing.assert_array_equal(round_trip.params["bias"], spec.params["bias"])


def test_initialised_flow_round_trips_through_its_spec() -> None:
    flow = ActNorm(VECTOR).double()
    flow(torch.as_tensor(_batch(VECTOR, 4, "trained")))
    again = ActNorm.from_spec(flow.to_spec())
    assert again.is_initialized()
    again(torch.as_tensor(_batch(VECTOR, 4, "other")))
    for name, value in _params(flow).items():
        np.testing.assert_array_equal(_params(again)[name], value)


def test_uninitialised_spec_and_state_dict_initialise_on_the_next_training_forward() -> None:
    spec = reference.init_spec("actnorm", {"shape": VECTOR}, rng("actnorm-test", "uninit"))
    spec = FlowSpec("actnorm", spec.config, {**spec.params, "initialized": np.array(0.0)})
    flow = from_spec(spec)
    x = _batch(VECTOR, 4, "uninit-x")
    flow(torch.as_tensor(x))
    assert_close(_params(flow)["bias"], actnorm_init(x, {"shape": VECTOR})["bias"], "forward", "float64",
                 _per_channel(x, VECTOR))
    flow.load_state_dict(ActNorm(VECTOR).double().state_dict())  # back to the fresh, uninitialised state
    assert not flow.is_initialized()


def test_bad_initialized_flag_and_empty_batch_are_rejected() -> None:
    spec = reference.init_spec("actnorm", {"shape": VECTOR}, rng("actnorm-test", "flag"))
    with pytest.raises(ConfigError, match="initialized"):
        from_spec(FlowSpec("actnorm", spec.config, {**spec.params, "initialized": np.array(0.5)}))
    with pytest.raises(FlowInputError, match="at least one sample"):
        ActNorm(VECTOR).double().initialize(torch.zeros(0, 5, dtype=torch.float64))
    with pytest.raises(FlowInputError, match="at least one sample"):
        actnorm_init(np.zeros((0, 5)), {"shape": VECTOR})


def test_fresh_flow_ignores_the_spec_params_and_is_uninitialised() -> None:
    spec = reference.init_spec("actnorm", {"shape": IMAGE}, rng("actnorm-test", "fresh"))
    flow = ActNorm.fresh_from_spec(spec)
    assert ActNorm.data_dependent_init and not flow.is_initialized()
    assert not flow.bias.detach().any() and not flow.log_scale.detach().any()
    x = _batch(IMAGE, 3, "fresh-x")
    flow(torch.as_tensor(x))
    expected = actnorm_init(x, {"shape": IMAGE})
    assert_close(_params(flow)["log_scale"], expected["log_scale"], "forward", "float64", _per_channel(x, IMAGE))


def test_checkpoint_into_a_fresh_module_does_not_reinitialise() -> None:
    trained = ActNorm(VECTOR).double()
    trained(torch.as_tensor(_batch(VECTOR, 4, "checkpoint")))
    assert "initialized" in trained.state_dict()
    fresh = ActNorm(VECTOR).double()
    fresh.load_state_dict(trained.state_dict())
    assert fresh.is_initialized()
    fresh(torch.as_tensor(_batch(VECTOR, 4, "after-loading")))  # a training forward on other data
    for name, value in _params(trained).items():
        np.testing.assert_array_equal(_params(fresh)[name], value)


def test_inverse_direction_log_det_is_minus_the_forward() -> None:
    spec = reference.init_spec("actnorm", {"shape": IMAGE}, rng("actnorm-test", "inverse-logdet"))
    flow = from_spec(spec)
    z = torch.as_tensor(_batch(IMAGE, 2, "inverse-logdet-z"))
    x, logdet = flow.inverse_and_logdet(z)
    torch.testing.assert_close(x, flow.inverse(z), rtol=0, atol=0)
    assert_close(logdet.detach().numpy(), -reference.log_abs_det(spec, x.detach().numpy()), "logdet", "float64",
                 int(np.prod(IMAGE)))
