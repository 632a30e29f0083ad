"""The reference's zero-padded 2-D convolution (reference/conv.py) against SciPy and torch."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from autograd import grad
from scipy.signal import correlate

from flowspec.conformance.seeding import rng
from flowspec.conformance.tolerances import assert_close
from flowspec.errors import ConfigError, FlowInputError
from flowspec.reference.conv import conv2d, same_padding


def _draw(key: str, c_out: int, c_in: int, kernel: tuple[int, int], image: tuple[int, int]):
    gen = rng("conv-test", key)
    return (gen.standard_normal((c_in, *image)), gen.standard_normal((c_out, c_in, *kernel)),
            gen.standard_normal(c_out))


def _terms(weight: np.ndarray) -> int:
    """How many products each output sums (c_in · kernel area): the size rounding errors accumulate over."""
    return int(weight[0].size)


def _scipy(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, mode: str) -> np.ndarray:
    """Σ_c correlate(x[c], weight[o, c]) + bias[o], one 2-D correlation per channel pair."""
    return np.stack([
        bias[o] + sum(correlate(x[c], weight[o, c], mode=mode, method="direct") for c in range(x.shape[0]))
        for o in range(weight.shape[0])
    ])


@pytest.mark.parametrize("kernel,image", [((3, 3), (4, 4)), ((3, 5), (2, 6)), ((1, 1), (3, 2)), ((3, 3), (1, 1))])
def test_same_padding_matches_scipy(kernel, image) -> None:
    x, weight, bias = _draw(f"same-{kernel}-{image}", 3, 2, kernel, image)
    out = conv2d(x, weight, bias)
    assert out.shape == (3, *image)
    assert_close(out, _scipy(x, weight, bias, "same"), "forward", "float64", _terms(weight))


def test_no_padding_matches_scipy_valid() -> None:
    x, weight, bias = _draw("valid", 2, 3, (3, 3), (5, 4))
    out = conv2d(x, weight, bias, padding=(0, 0))
    assert out.shape == (2, 3, 2)
    assert_close(out, _scipy(x, weight, bias, "valid"), "forward", "float64", _terms(weight))


def test_matches_torch_conv2d_with_leading_axes() -> None:
    gen = rng("conv-test", "torch")
    x, weight, bias = gen.standard_normal((2, 3, 4, 5)), gen.standard_normal((4, 3, 3, 3)), gen.standard_normal(4)
    expected = torch.nn.functional.conv2d(torch.as_tensor(x), torch.as_tensor(weight), torch.as_tensor(bias), padding=1)
    assert_close(conv2d(x, weight, bias), expected.numpy(), "forward", "float64", _terms(weight))


def test_gradients_are_the_adjoint() -> None:
    """conv2d is linear in x and in the weight: ⟨∇_x ⟨g, conv2d(x)⟩, v⟩ = ⟨g, conv2d(v)⟩, alike for the weight."""
    x, weight, _ = _draw("adjoint", 2, 3, (3, 3), (4, 3))
    gen = rng("conv-test", "adjoint-directions")
    g, v_x, v_w = gen.standard_normal((2, 4, 3)), gen.standard_normal(x.shape), gen.standard_normal(weight.shape)
    grad_x = grad(lambda a: np.sum(g * conv2d(a, weight)))(x)
    grad_w = grad(lambda w: np.sum(g * conv2d(x, w)))(weight)
    assert_close(np.sum(grad_x * v_x), np.sum(g * conv2d(v_x, weight)), "grad", "float64", x.size)
    assert_close(np.sum(grad_w * v_w), np.sum(g * conv2d(x, v_w)), "grad", "float64", weight.size)


def test_zero_padding_reads_no_wrapped_values() -> None:
    """A single 1 in a corner reaches only its 3×3 neighbourhood (no circular or reflecting padding)."""
    x = np.zeros((1, 4, 4))
    x[0, 0, 0] = 1.0
    out = conv2d(x, np.ones((1, 1, 3, 3)))
    expected = np.zeros((1, 4, 4))
    expected[0, :2, :2] = 1.0
    np.testing.assert_array_equal(out, expected)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ConfigError, match="odd kernel"):
        same_padding((2, 3))
    with pytest.raises(FlowInputError, match="must have shape"):
        conv2d(np.zeros((2, 3, 3)), np.zeros((1, 3, 3, 3)))
    with pytest.raises(FlowInputError, match="does not fit"):
        conv2d(np.zeros((1, 2, 2)), np.zeros((1, 1, 3, 3)), padding=(0, 0))
