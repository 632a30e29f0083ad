"""FlowSpec and the registry: validation, nesting, serialisation."""
from __future__ import annotations

import numpy as np
import pytest

from flowspec import ConfigError, FlowSpec, registry
from flowspec.reference.sequential import sequential_spec


def test_params_become_read_only_float64() -> None:
    spec = FlowSpec("elementwise_affine", {"shape": [2]}, {"shift": [1, 2], "log_scale": np.zeros(2, np.float32)})
    assert spec.params["shift"].dtype == np.float64 and spec.params["log_scale"].dtype == np.float64
    with pytest.raises(ValueError):
        spec.params["shift"][0] = 3.0


@pytest.mark.parametrize("config", [{"shape": object()}, {"f": {"nested": 1}}])
def test_config_must_be_plain(config) -> None:
    with pytest.raises(ConfigError, match="config entry"):
        FlowSpec("elementwise_affine", config, {})


def test_non_numeric_param_rejected() -> None:
    with pytest.raises(ConfigError, match="numeric"):
        FlowSpec("elementwise_affine", {"shape": [1]}, {"shift": np.array(["a"])})


def test_nested_flat_params_and_json_round_trip() -> None:
    a = FlowSpec("elementwise_affine", {"shape": [2]}, {"shift": [1.0, 2.0], "log_scale": [0.5, -0.5]})
    seq = sequential_spec([a, FlowSpec("logit", {"shape": [2], "alpha": 0.05})])
    assert seq.config["event_shape"] == (2,)
    assert set(seq.flat_params()) == {"0.shift", "0.log_scale"}
    back = FlowSpec.from_json(seq.to_json())
    assert back.kind == "sequential" and back.params["1"].config["alpha"] == 0.05
    np.testing.assert_array_equal(back.flat_params()["0.log_scale"], [0.5, -0.5])
    replaced = seq.with_flat_params({"0.shift": np.ones(2), "0.log_scale": np.zeros(2)})
    np.testing.assert_array_equal(replaced.params["0"].params["shift"], np.ones(2))


def test_unknown_kind_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="elementwise_affine"):
        registry.get("no_such_kind")


def test_kind_registered_once() -> None:
    with pytest.raises(ConfigError, match="already registered"):
        registry.register(registry.Kind("logit", "x", lambda s, x, c: x, lambda c: (1,), lambda c, r: {}))
