"""Exact operator norms for the reference (shared by every norm-constrained family).

* :func:`spectral_norm`: the largest singular value (SVD), for one matrix or a stack of them.
* :func:`conv_matrix`: the explicit matrix of a stride-1, zero-padded 2-D convolution acting on
  inputs of shape ``(C_in, H, W)``. Its spectral norm is the operator norm *at that input size*,
  which is what bounds a convolution's Lipschitz constant; the norm of the reshaped
  ``(C_out, C_in·k·k)`` kernel matrix is a different number and may be smaller.
* :func:`conv_operator_norm`: ``spectral_norm(conv_matrix(...))``.
* Induced mixed norms ‖W‖_{p→q} = sup ‖Wx‖_q / ‖x‖_p (Residual Flows App. D): :func:`induced_norm`
  is exact where a closed form exists (p = 1, q = ∞, p = q = 2); :func:`induced_norm_bracket`
  gives ``(lower, upper)`` for any orders (equal where the norm is known exactly), and
  :func:`power_method_norm` is the general power method, a lower bound.
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


# ----------------------------------------------------------------------------- induced p→q norms

def dual_order(p: float) -> float:
    """The Hölder conjugate p* with 1/p + 1/p* = 1 (1 ↔ ∞)."""
    _check_order(p)
    if p == 1.0:
        return float("inf")
    if np.isinf(p):
        return 1.0
    return p / (p - 1.0)


def _check_order(p: float) -> None:
    if not (isinstance(p, (int, float, np.floating)) and p >= 1.0):
        raise ConfigError(f"a norm order must lie in [1, ∞], got {p!r}")


def vector_norm(x: np.ndarray, p: float, axis: int = -1) -> np.ndarray:
    """‖x‖_p along ``axis`` (p in [1, ∞])."""
    _check_order(p)
    return np.linalg.norm(np.asarray(x, dtype=np.float64), ord=p, axis=axis)


def has_closed_form(p: float, q: float) -> bool:
    """Whether ‖·‖_{p→q} has an exact closed form here: p = 1, q = ∞, or p = q = 2 (SVD)."""
    return p == 1.0 or bool(np.isinf(q)) or (p == 2.0 and q == 2.0)


def induced_norm(matrix: np.ndarray, p: float, q: float) -> float:
    """‖W‖_{p→q} = sup ‖Wx‖_q / ‖x‖_p, exactly, where a closed form exists (Residual Flows App. D):

    * p = 1: the largest q-norm of a column (the extreme points of the ℓ1 ball are ±e_j and
      x ↦ ‖Wx‖_q is convex);
    * q = ∞: the largest p*-norm of a row (Hölder, with p* the dual order), which covers 1→∞, 2→∞
      and ∞→∞;
    * p = q = 2: the largest singular value.

    Other orders raise :class:`ConfigError`; :func:`induced_norm_bracket` bounds them.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    _check_order(p)
    _check_order(q)
    if matrix.ndim != 2:
        raise ConfigError(f"induced_norm needs a matrix, got shape {matrix.shape}")
    if p == 1.0:
        return float(np.max(vector_norm(matrix, q, axis=0)))
    if np.isinf(q):
        return float(np.max(vector_norm(matrix, dual_order(p), axis=1)))
    if p == 2.0 and q == 2.0:
        return float(spectral_norm(matrix))
    raise ConfigError(f"‖W‖_{{{p}→{q}}} has no closed form; use induced_norm_bracket")


def _identity_norm(n: int, p: float, q: float) -> float:
    """‖I_n‖_{p→q}: 1 when p ≤ q, else n^(1/q − 1/p)."""
    return 1.0 if p <= q else float(n) ** (1.0 / q - 1.0 / p)


def power_method_norm(matrix: np.ndarray, p: float, q: float, x0: np.ndarray, iterations: int = 200) -> float:
    """The general power method for ‖W‖_{p→q} (Boyd 1974; Higham 1992) from ``x0``, one start per
    column if ``x0`` is a matrix: a local maximum of ‖Wx‖_q over the unit p-sphere, hence a lower
    bound of the norm (the best over the starts). For p = q = 2 it is the ordinary power iteration.
    Needs 1 < p, q < ∞ (the duality maps are then single-valued). Every start runs until its iterate
    stops moving (1e-15) or for ``iterations`` steps."""
    matrix = np.asarray(matrix, dtype=np.float64)
    x = np.asarray(x0, dtype=np.float64).reshape(matrix.shape[1], -1)
    x = x / vector_norm(x, p, axis=0)
    p_dual = dual_order(p)
    best = np.zeros(x.shape[1])
    for _ in range(iterations):
        y = matrix @ x
        best = np.maximum(best, vector_norm(y, q, axis=0))
        x_new = _dual_vector(matrix.T @ _dual_vector(y, q), p_dual)
        moved = np.max(np.abs(x_new - x)) > 1e-15
        x = x_new
        if not moved:
            break
    return float(max(np.max(best), np.max(vector_norm(matrix @ x, q, axis=0))))


def _dual_vector(y: np.ndarray, q: float) -> np.ndarray:
    """Column by column, the unit-q*-norm vector d with dᵀy = ‖y‖_q (the gradient of ‖·‖_q at y), for
    1 < q < ∞ (zero columns stay zero)."""
    norm = vector_norm(y, q, axis=0)
    return np.sign(y) * (np.abs(y) / np.where(norm == 0.0, 1.0, norm)) ** (q - 1.0)


def induced_norm_bracket(matrix: np.ndarray, p: float, q: float, *, starts: int = 16, seed: int = 0) -> tuple[float, float]:
    """``(lower, upper)`` with lower ≤ ‖W‖_{p→q} ≤ upper; both equal the norm where a closed form exists.

    lower: the best of the general power method from the columns' and random starts (sign vectors
    for p = ∞ or q = 1) and of ‖W e_j‖_q / ‖e_j‖_p; for p = ∞ and at most
    :data:`MAX_SIGN_ENUMERATION` columns the norm is exact by enumerating the sign vectors. upper: the smallest of ‖I‖_{p→1}·‖W‖_{1→q},
    ‖W‖_{p→∞}·‖I‖_{∞→q} and ‖I‖_{p→2}·‖W‖_{2→2}·‖I‖_{2→q} (sub-multiplicativity).
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    if has_closed_form(p, q):
        value = induced_norm(matrix, p, q)
        return value, value
    m, n = matrix.shape
    upper = min(
        _identity_norm(n, p, 1.0) * induced_norm(matrix, 1.0, q),
        induced_norm(matrix, p, float("inf")) * _identity_norm(m, float("inf"), q),
        _identity_norm(n, p, 2.0) * float(spectral_norm(matrix)) * _identity_norm(m, 2.0, q),
    )
    lower = float(np.max(vector_norm(matrix, q, axis=0)))
    if np.isinf(p) and n <= MAX_SIGN_ENUMERATION:
        value = _sign_enumeration(matrix, q)
        return value, value
    if 1.0 < p < np.inf:
        gen = np.random.default_rng(seed)
        columns = np.concatenate([np.eye(n) + 0.1, gen.standard_normal((starts, n)).T], axis=1)
        lower = max(lower, power_method_norm(matrix, p, q, columns))
    else:
        signs = np.sign(np.random.default_rng(seed).standard_normal((starts, n))) + 0.0
        lower = max(lower, float(np.max(vector_norm(signs @ matrix.T, q, axis=1) / vector_norm(signs, p, axis=1))))
    return min(lower, upper), upper


MAX_SIGN_ENUMERATION = 16


def _sign_enumeration(matrix: np.ndarray, q: float) -> float:
    """‖W‖_{∞→q} exactly, as the largest ‖Ws‖_q over the sign vectors s (the extreme points of the
    ∞-ball; x ↦ ‖Wx‖_q is convex); s and −s give the same value, so the first sign is fixed."""
    n = matrix.shape[1]
    codes = np.arange(2 ** (n - 1))[:, None] >> np.arange(n - 1)[None, :] & 1
    signs = np.concatenate([np.ones((codes.shape[0], 1)), 1.0 - 2.0 * codes], axis=1)
    return float(np.max(vector_norm(signs @ matrix.T, q, axis=1)))
