"""Exact operator norms for the reference (shared by every norm-constrained family).

* :func:`spectral_norm`: the largest singular value (SVD), for one matrix or a stack of them.
* :func:`conv_matrix`: the explicit matrix of a stride-1, zero-padded 2-D convolution acting on
  inputs of shape ``(C_in, H, W)``. Its spectral norm is the operator norm *at that input size*,
  which is what bounds a convolution's Lipschitz constant; the norm of the reshaped
  ``(C_out, C_in·k·k)`` kernel matrix is a different number and may be smaller.
* :func:`conv_operator_norm`: ``spectral_norm(conv_matrix(...))``.
"""
from __future__ import annotations

import numpy as np

from flowspec.errors import ConfigError


def spectral_norm(matrix: np.ndarray) -> np.ndarray:
    """σ_max of a matrix (or of each matrix in a stack ``(..., m, n)``), by SVD."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim < 2:
        raise ConfigError(f"spectral_norm needs a matrix, got shape {matrix.shape}")
    return np.linalg.svd(matrix, compute_uv=False)[..., 0]


def conv_matrix(kernel: np.ndarray, in_shape: tuple[int, int, int], padding: int | None = None) -> np.ndarray:
    """The ``(C_out·H·W, C_in·H·W)`` matrix of ``y = conv2d(x, kernel, padding)`` (stride 1).

    ``kernel`` has the torch layout ``(C_out, C_in, kh, kw)`` and the convolution is a
    cross-correlation: ``y[o, r, c] = Σ_{i,a,b} kernel[o, i, a, b] · x[i, r + a − p, c + b − p]`` with
    zeros outside the input. ``padding`` defaults to ``kh // 2`` (same size for odd kernels).
    Rows and columns are indexed in C-order ``(channel, row, column)``.
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    c_out, c_in, kh, kw = kernel.shape
    channels, height, width = in_shape
    if channels != c_in:
        raise ConfigError(f"kernel expects {c_in} input channels, the input shape has {channels}")
    if kh != kw:
        raise ConfigError(f"only square kernels are supported, got {kh}×{kw}")
    p = kh // 2 if padding is None else padding
    out_h, out_w = height + 2 * p - kh + 1, width + 2 * p - kw + 1
    matrix = np.zeros((c_out, out_h, out_w, c_in, height, width))
    for a in range(kh):
        for b in range(kw):
            for r in range(out_h):
                src_r = r + a - p
                if not 0 <= src_r < height:
                    continue
                for c in range(out_w):
                    src_c = c + b - p
                    if 0 <= src_c < width:
                        matrix[:, r, c, :, src_r, src_c] += kernel[:, :, a, b]
    return matrix.reshape(c_out * out_h * out_w, c_in * height * width)


def conv_operator_norm(kernel: np.ndarray, in_shape: tuple[int, int, int], padding: int | None = None) -> float:
    """Spectral norm of the convolution operator at input shape ``in_shape`` (see :func:`conv_matrix`)."""
    return float(spectral_norm(conv_matrix(kernel, in_shape, padding)))
