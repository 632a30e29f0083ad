"""No silent wrong results: the cases a new user met (reliability issue), each raising a clear error
or doing the right thing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from flowspec import FlowSpec, reference
from flowspec.accelerated import FlowDistribution, from_spec
from flowspec.accelerated.elementwise import ElementwiseAffine
from flowspec.accelerated.quar import make_model
from flowspec.accelerated.sequential import Sequential
from flowspec.accelerated.squeeze import Squeeze
from flowspec.conformance.seeding import rng
from flowspec.errors import ConfigError, FlowInputError


def test_sequential_checks_that_shapes_chain() -> None:
    # (2,) into (1,) broadcasts: it used to run and give a wrong log-det
    with pytest.raises(ConfigError, match=r"child 0 .* shape \(2,\) but child 1 \(elementwise_affine\) takes .* \(1,\)"):
        Sequential([ElementwiseAffine([2]), ElementwiseAffine([1])])
    with pytest.raises(ConfigError, match=r"child 1 .* shape \(4, 1, 1\) but child 2"):
        Sequential([ElementwiseAffine([1, 2, 2]), Squeeze(1, 2, 2), ElementwiseAffine([1, 2, 2])])
    Sequential([ElementwiseAffine([1, 2, 2]), Squeeze(1, 2, 2), ElementwiseAffine([4, 1, 1])])


def test_sequential_refuses_a_module_that_is_not_a_flow() -> None:
    with pytest.raises(ConfigError, match="child 1 of a sequential flow is a Linear, not a flowspec Flow"):
        Sequential([ElementwiseAffine([2]), torch.nn.Linear(2, 2)])


def test_a_conditional_sample_count_is_honoured_or_refused() -> None:
    spec = reference.init_spec("affine_coupling", {"shape": [4], "context_dim": 2}, rng("reliability", "cond"))
    dist = FlowDistribution(from_spec(spec), context=torch.randn(3, 2, dtype=torch.float64))
    assert dist.sample().shape == (3, 4) and dist.sample((3,)).shape == (3, 4)
    with pytest.raises(FlowInputError, match=r"one sample per context row \(3 rows\).*got \(5,\)"):
        dist.sample((5,))


def test_non_finite_parameters_are_refused_at_load_naming_the_parameter() -> None:
    with pytest.raises(ConfigError, match=r"param 'shift' holds NaN or inf at index \(1,\)"):
        FlowSpec("elementwise_affine", {"shape": [3]}, {"shift": [0.0, np.nan, 0.0], "log_scale": [0.0, 0.0, 0.0]})
    text = ('{"kind": "elementwise_affine", "config": {"shape": [2]}, "params": {"shift": {"shape": [2], '
            '"data": [0.0, Infinity]}, "log_scale": {"shape": [2], "data": [0, 0]}}}')
    with pytest.raises(ConfigError, match="param 'shift' holds NaN or inf"):
        FlowSpec.from_json(text)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int32])
def test_unchecked_dtypes_are_refused(dtype: torch.dtype) -> None:
    spec = reference.init_spec("elementwise_affine", {"shape": [3]}, rng("reliability", "dtype"))
    with pytest.raises(ConfigError, match="supports dtypes torch.float32 and torch.float64"):
        from_spec(spec, dtype=dtype)


def test_from_spec_of_something_else_names_what_it_got() -> None:
    with pytest.raises(ConfigError, match="from_spec needs a FlowSpec .* got dict"):
        from_spec({"kind": "elementwise_affine"})


def test_rsample_through_a_quar_model_is_differentiable() -> None:
    torch.manual_seed(0)
    model = make_model("mlp", (4,), n_blocks=2, hidden_factor=2).double()
    model(torch.rand(16, 4, dtype=torch.float64) * 0.9 + 0.05)  # ActNorm's data-dependent initialisation
    x = FlowDistribution(model).rsample((5,))
    x.sum().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert x.requires_grad and not missing, f"no gradient reaches {missing}"


SPEC = {"kind": "elementwise_affine", "config": {"shape": [2]},
        "params": {"shift": {"shape": [2], "data": [0.0, 1.0]}, "log_scale": {"shape": [2], "data": [0.0, 0.0]}}}


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d["params"]["shift"].update(data=[0.0]), r"spec\['params'\]\['shift'\] has 1 numbers in 'data' but its shape \[2\] needs 2"),
    (lambda d: d["params"]["shift"].update(data=["0.0", "1.0"]), r"\['shift'\]\['data'\] must be a flat list of numbers"),
    (lambda d: d["params"]["shift"].update(shape="2"), r"\['shift'\]\['shape'\] must be a list of non-negative ints"),
    (lambda d: d["params"].update(shift=[0.0, 1.0]), r"\['shift'\] must be \{'shape'"),
    (lambda d: d.pop("params"), r"spec lacks \['params'\]"),
    (lambda d: d.update(config=[2]), r"spec\['config'\] must be a JSON object"),
])
def test_malformed_json_specs_name_the_entry(edit, needle: str) -> None:
    import copy
    import json

    data = copy.deepcopy(SPEC)
    edit(data)
    with pytest.raises(ConfigError, match=needle):
        FlowSpec.from_json(json.dumps(data))


def test_json_that_does_not_parse_or_is_not_a_string() -> None:
    with pytest.raises(ConfigError, match="does not parse"):
        FlowSpec.from_json("{kind: ")
    with pytest.raises(ConfigError, match="reads a JSON string, got dict"):
        FlowSpec.from_json(SPEC)
    assert FlowSpec.from_json(__import__("json").dumps(SPEC)).kind == "elementwise_affine"
