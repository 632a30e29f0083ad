"""Channel permutations: the gather convention on explicit examples, and config errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from flowspec import reference
from flowspec.accelerated import from_spec
from flowspec.accelerated.permutation import Permutation, ReversePermutation
from flowspec.conformance.seeding import rng
from flowspec.errors import ConfigError
from flowspec.spec import FlowSpec


def _forward_both(spec: FlowSpec, x: np.ndarray) -> list[np.ndarray]:
    z, logdet = from_spec(spec)(torch.as_tensor(x))
    np.testing.assert_array_equal(logdet.numpy(), np.zeros(x.shape[0]))
    return [reference.forward(spec, x), z.numpy()]


def test_vector_gather_convention() -> None:
    spec = FlowSpec("permutation", {"shape": [4], "perm": [2, 0, 3, 1]}, {})
    x = np.array([[10.0, 11.0, 12.0, 13.0]])
    for z in _forward_both(spec, x):
        np.testing.assert_array_equal(z, [[12.0, 10.0, 13.0, 11.0]])  # z[k] = x[perm[k]]
    np.testing.assert_array_equal(reference.inverse(spec, np.array([[12.0, 10.0, 13.0, 11.0]])), x)


def test_images_move_whole_channels() -> None:
    x = rng("permutation-test", "image").standard_normal((2, 3, 2, 2))
    for kind, config, order in (("permutation", {"shape": [3, 2, 2], "perm": [1, 2, 0]}, [1, 2, 0]),
                                ("reverse_permutation", {"shape": [3, 2, 2]}, [2, 1, 0])):
        for z in _forward_both(FlowSpec(kind, config, {}), x):
            np.testing.assert_array_equal(z, x[:, order])


def test_config_round_trips() -> None:
    flow = Permutation([3, 2], [2, 0, 1])
    assert flow.to_spec().config == {"shape": (3, 2), "perm": (2, 0, 1)}
    assert ReversePermutation([3]).to_spec().config == {"shape": (3,)}


@pytest.mark.parametrize(
    "perm", [[0, 0, 1], [0, 1, 3], [0, 1], [0, 1, 2, 3], [0.0, 1.0, 2.0], [True, False, 2], None, "012"]
)
def test_invalid_perm_is_a_config_error_naming_it(perm) -> None:
    config = {"shape": [3, 2]} if perm is None else {"shape": [3, 2], "perm": perm}
    with pytest.raises(ConfigError, match=r"perm.*permutation of 0\.\.2"):
        reference.init_spec("permutation", config, rng("permutation-test", "bad"))
    if perm is not None:
        with pytest.raises(ConfigError, match=r"perm.*permutation of 0\.\.2"):
            Permutation(**config)


def test_bad_shape_is_a_config_error() -> None:
    for kind in ("permutation", "reverse_permutation"):
        with pytest.raises(ConfigError, match="shape"):
            reference.init_spec(kind, {"shape": [], "perm": []}, rng("permutation-test", "shape"))
    with pytest.raises(ConfigError, match="shape"):
        ReversePermutation([0, 2])
