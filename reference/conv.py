"""Two-dimensional convolution with zero padding, in autograd-NumPy.

The reference's convolutional layers and conditioners use :func:`conv2d`. It computes what
``torch.nn.functional.conv2d`` computes at stride 1: a cross-correlation (the kernel is not
flipped) of a zero-padded input, in the same weight layout ``(out_channels, in_channels, kh, kw)``.
It is written as a sum over kernel offsets of shifted slices of the padded input, each contracted
over input channels, so that autograd differentiates it in the input, the weight and the bias.
"""
from __future__ import annotations

from typing import Any

import autograd.numpy as anp
import numpy as np

from flowspec.errors import ConfigError, FlowInputError


def same_padding(kernel_size: tuple[int, int]) -> tuple[int, int]:
    """Zero padding that keeps the spatial size for an odd kernel: ``(kh // 2, kw // 2)``."""
    kh, kw = kernel_size
    if kh % 2 == 0 or kw % 2 == 0:
        raise ConfigError(f"'same' padding needs an odd kernel size, got {kh}×{kw}")
    return kh // 2, kw // 2


def conv2d(x: Any, weight: Any, bias: Any = None, padding: tuple[int, int] | None = None) -> Any:
    """``y[..., o, i, j] = bias[o] + Σ_{c,p,q} weight[o, c, p, q] · x_pad[..., c, i + p, j + q]``.

    ``x`` has shape ``(..., C_in, H, W)`` (any leading axes), ``weight`` ``(C_out, C_in, kh, kw)``
    and ``bias`` ``(C_out,)`` or None. ``x_pad`` is ``x`` with ``padding = (ph, pw)`` zeros on each
    side of the two spatial axes (default: :func:`same_padding`), so the output has spatial size
    ``(H + 2·ph − kh + 1, W + 2·pw − kw + 1)``.
    """
    c_out, c_in, kh, kw = np.shape(weight)
    if np.ndim(x) < 3 or np.shape(x)[-3] != c_in:
        raise FlowInputError(
            f"conv2d input must have shape (..., {c_in}, H, W) for a weight of shape {np.shape(weight)}, "
            f"got {np.shape(x)}"
        )
    ph, pw = same_padding((kh, kw)) if padding is None else padding
    height, width = np.shape(x)[-2:]
    h_out, w_out = height + 2 * ph - kh + 1, width + 2 * pw - kw + 1
    if h_out < 1 or w_out < 1:
        raise FlowInputError(f"a {kh}×{kw} kernel with padding {(ph, pw)} does not fit a {height}×{width} input")
    widths = [(0, 0)] * (np.ndim(x) - 2) + [(ph, ph), (pw, pw)]
    padded = anp.pad(x, widths, mode="constant")
    out = 0.0
    for p in range(kh):
        for q in range(kw):
            window = padded[..., p:p + h_out, q:q + w_out]
            out = out + anp.einsum("oc,...chw->...ohw", weight[:, :, p, q], window)
    if bias is not None:
        out = out + anp.reshape(bias, (c_out, 1, 1))
    return out
