"""Squeeze: the documented channel order on hand-computed examples, and its config errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flowspec import reference
from flowspec.accelerated import from_spec
from flowspec.accelerated.squeeze import Squeeze
from flowspec.conformance.seeding import rng
from flowspec.errors import ConfigError
from flowspec.spec import FlowSpec

# One channel, 2×4: the patches are [[1, 2], [5, 6]] and [[3, 4], [7, 8]].
X_ONE = np.array([[[1.0, 2.0, 3.0, 4.0],
                   [5.0, 6.0, 7.0, 8.0]]])
# Channel 4c + 2i + j holds offset (i, j) of every patch: (0,0), (0,1), (1,0), (1,1).
Z_ONE = np.array([[[1.0, 3.0]], [[2.0, 4.0]], [[5.0, 7.0]], [[6.0, 8.0]]])


def _spec(c: int, h: int, w: int) -> FlowSpec:
    return FlowSpec("squeeze", {"channels": c, "height": h, "width": w}, {})


def _both(spec: FlowSpec, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z, logdet = from_spec(spec)(torch.as_tensor(x))
    np.testing.assert_array_equal(logdet.numpy(), np.zeros(x.shape[0]))
    return reference.forward(spec, x), z.numpy()


def test_hand_example_one_channel() -> None:
    for z in _both(_spec(1, 2, 4), X_ONE[None]):
        np.testing.assert_array_equal(z[0], Z_ONE)


def test_hand_example_two_channels_keeps_each_channels_four_outputs_together() -> None:
    x = np.stack([X_ONE[0], 10.0 * X_ONE[0]])[None]  # channel 1 = 10 × channel 0
    expected = np.concatenate([Z_ONE, 10.0 * Z_ONE])  # output channels 0-3 from c = 0, 4-7 from c = 1
    for z in _both(_spec(2, 2, 4), x):
        np.testing.assert_array_equal(z[0], expected)


def test_inverse_of_the_hand_example() -> None:
    spec = _spec(1, 2, 4)
    np.testing.assert_array_equal(reference.inverse(spec, Z_ONE[None])[0], X_ONE)
    np.testing.assert_array_equal(from_spec(spec).inverse(torch.as_tensor(Z_ONE[None]))[0].numpy(), X_ONE)


def test_order_is_pixel_unshuffle() -> None:
    x = torch.as_tensor(rng("squeeze-test", "unshuffle").standard_normal((2, 3, 4, 2)))
    z, _ = Squeeze(3, 4, 2).double()(x)
    torch.testing.assert_close(z, F.pixel_unshuffle(x, 2), rtol=0, atol=0)


@pytest.mark.parametrize("h, w", [(3, 4), (4, 1)])
def test_odd_height_or_width_is_a_config_error_naming_the_shape(h: int, w: int) -> None:
    config = {"channels": 2, "height": h, "width": w}
    with pytest.raises(ConfigError, match=rf"\(2, {h}, {w}\)"):
        reference.init_spec("squeeze", config, rng("squeeze-test", "odd"))
    with pytest.raises(ConfigError, match=rf"\(2, {h}, {w}\)"):
        Squeeze(**config)


@pytest.mark.parametrize(
    "config", [{"channels": 0, "height": 2, "width": 2}, {"channels": 1, "height": 2.0, "width": 2}]
)
def test_bad_image_config(config: dict) -> None:
    with pytest.raises(ConfigError, match="positive ints"):
        reference.init_spec("squeeze", config, rng("squeeze-test", "bad"))
    with pytest.raises(ConfigError, match="positive ints"):
        Squeeze(**config)


def test_missing_image_size_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="positive ints"):
        reference.init_spec("squeeze", {"channels": 1, "height": 2}, rng("squeeze-test", "missing"))
