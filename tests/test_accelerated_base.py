"""The accelerated base: spec exchange, validation switch, dtypes, the distribution object."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flowspec import ConfigError, DomainError, FlowInputError, FlowSpec, NumericalError, reference
from flowspec.accelerated import Flow, FlowDistribution, from_spec
from flowspec.accelerated.base import MODULES
from flowspec.accelerated.elementwise import ElementwiseAffine, Logit
from flowspec.accelerated.sequential import Sequential
from flowspec.conformance.seeding import rng, seed_for
from flowspec.conformance.tolerances import relative_error, tolerance
from flowspec.reference.sequential import sequential_spec


def _spec() -> FlowSpec:
    r = rng("accelerated-base")
    return sequential_spec([
        FlowSpec("logit", {"shape": [3], "alpha": 0.05}),
        reference.init_spec("elementwise_affine", {"shape": [3]}, r),
    ])


def test_spec_round_trip_is_exact() -> None:
    spec = _spec()
    flow = from_spec(spec)
    back = flow.to_spec()
    assert back.kind == "sequential" and back.config == spec.config
    for name, value in spec.flat_params().items():
        np.testing.assert_array_equal(back.flat_params()[name], value)
    assert set(flow.spec_parameters()) == {"1.shift", "1.log_scale"}


def test_from_spec_rejects_wrong_params() -> None:
    with pytest.raises(ConfigError, match="params of kind"):
        from_spec(FlowSpec("elementwise_affine", {"shape": [2]}, {"shift": np.zeros(2)}))
    with pytest.raises(ConfigError, match="shape"):
        from_spec(FlowSpec("elementwise_affine", {"shape": [2]}, {"shift": np.zeros(3), "log_scale": np.zeros(2)}))
    with pytest.raises(ConfigError, match="unknown flow kind .no_such_kind."):
        from_spec(FlowSpec("no_such_kind", {}, {}))


@pytest.mark.parametrize("kind", sorted(MODULES))
def test_a_class_refuses_a_spec_of_another_kind(kind: str) -> None:
    """Every class's ``from_spec`` and ``fresh_from_spec``, called directly rather than through the
    dispatcher (which picks the class by kind), refuse a spec of another kind naming both kinds."""
    other = _spec() if kind != "sequential" else FlowSpec("logit", {"shape": [3], "alpha": 0.05})
    for build in (MODULES[kind].from_spec, MODULES[kind].fresh_from_spec):
        with pytest.raises(ConfigError, match=f"implements kind '{kind}', not '{other.kind}'"):
            build(other)


def test_validation_errors_name_the_problem() -> None:
    flow = from_spec(_spec())
    x = torch.full((2, 3), 0.5, dtype=torch.float64)
    with pytest.raises(FlowInputError, match="NaN or inf"):
        flow(torch.where(torch.arange(3) == 1, torch.nan, x))
    with pytest.raises(FlowInputError, match=r"shape \(batch, 3\)"):
        flow(x[:, :2])
    with pytest.raises(FlowInputError, match="dtype torch.float32"):
        flow(x.float())
    with pytest.raises(DomainError, match=r"index \(1, 2\)"):
        flow(torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.5, 1.0]], dtype=torch.float64))


def test_validation_switch_turns_checks_off_and_on() -> None:
    flow = from_spec(FlowSpec("logit", {"shape": [1], "alpha": 0.0}))
    fast = Logit([1], alpha=0.0, validate_args=False).double()
    outside = torch.tensor([[1.5]], dtype=torch.float64)
    with pytest.raises(DomainError):
        flow(outside)
    z, _ = fast(outside)  # unchecked: the caller asked for no validation on this hot path
    assert torch.isnan(z).all()
    Flow.set_default_validate_args(False)
    try:
        assert not Logit([1]).validate_args
    finally:
        Flow.set_default_validate_args(True)
    assert Logit([1]).validate_args


def test_non_finite_output_is_reported() -> None:
    flow = ElementwiseAffine([1]).double()
    with torch.no_grad():
        flow.log_scale.fill_(800.0)
    with pytest.raises(NumericalError, match="non-finite"):
        flow(torch.ones(1, 1, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_distribution_log_prob_matches_reference(dtype: torch.dtype) -> None:
    spec = _spec()
    dist = FlowDistribution(from_spec(spec, dtype=dtype))
    x = rng("dist-x").uniform(0.05, 0.95, (4, 3))
    lp = dist.log_prob(torch.as_tensor(x, dtype=dtype)).detach().double().numpy()
    err = relative_error(lp, reference.log_prob(spec, x))
    assert err <= tolerance("logdet", str(dtype).removeprefix("torch."), 3)


def test_rsample_is_differentiable_and_sample_is_not() -> None:
    flow = from_spec(reference.init_spec("elementwise_affine", {"shape": [2]}, rng("rsample")))
    dist = FlowDistribution(flow)
    gen = torch.Generator().manual_seed(seed_for("rsample"))
    x = dist.rsample((5,), generator=gen)
    assert x.shape == (5, 2) and x.requires_grad
    x.sum().backward()
    assert flow.shift.grad is not None and torch.all(flow.shift.grad == -5 * torch.exp(-flow.log_scale))
    assert not dist.sample((3,)).requires_grad


def test_sample_distribution_matches_flow() -> None:
    spec = FlowSpec("elementwise_affine", {"shape": [1]}, {"shift": [1.0], "log_scale": [math.log(2.0)]})
    dist = FlowDistribution(from_spec(spec))
    x = dist.sample((40000,), generator=torch.Generator().manual_seed(seed_for("sample-moments")))
    # x = (z − 1)/2: mean −0.5, std 0.5; 6 standard errors (false alarm < 1e-8).
    assert abs(float(x.mean()) + 0.5) < 6 * 0.5 / math.sqrt(40000)


def test_sequential_rejects_empty() -> None:
    with pytest.raises(ConfigError):
        Sequential([])


def test_inverse_direction_of_a_composite_sums_its_children() -> None:
    spec = _spec()
    flow = from_spec(spec)
    z = torch.as_tensor(rng("inverse-logdet-z").standard_normal((4, 3)))
    x, logdet = flow.inverse_and_logdet(z)
    torch.testing.assert_close(x, flow.inverse(z), rtol=0, atol=0)
    expected = -reference.log_abs_det(spec, x.detach().numpy())
    assert relative_error(logdet.detach().numpy(), expected) <= tolerance("logdet", "float64", 3)
    generic = Flow._inverse_and_logdet(flow, z, None)[1]  # the default: −forward log-det at the solved x
    assert relative_error(logdet.detach().numpy(), generic.detach().numpy()) <= tolerance("logdet", "float64", 3)


def test_inverse_direction_validates_its_input() -> None:
    flow = from_spec(_spec())
    with pytest.raises(FlowInputError, match="NaN or inf"):
        flow.inverse_and_logdet(torch.full((1, 3), torch.nan, dtype=torch.float64))
    with pytest.raises(FlowInputError, match=r"shape \(batch, 3\)"):
        flow.inverse_and_logdet(torch.zeros(1, 2, dtype=torch.float64))


def test_fresh_from_spec_builds_data_initialised_children_uninitialised() -> None:
    from flowspec.accelerated.base import fresh_from_spec

    actnorm = reference.init_spec("actnorm", {"shape": [3]}, rng("fresh-actnorm"))
    affine = reference.init_spec("elementwise_affine", {"shape": [3]}, rng("fresh-affine"))
    flow = fresh_from_spec(sequential_spec([affine, actnorm]))
    assert not flow.flows[1].is_initialized()
    np.testing.assert_array_equal(flow.flows[0].shift.detach().numpy(), affine.params["shift"])  # loaded as given
