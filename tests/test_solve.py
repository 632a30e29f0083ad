"""The shared 1-D monotone solves (``reference/solve.py``, ``accelerated/solve.py``): brackets found for
maps on the whole line, roots to the tolerance, and a clear error where neither exists."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from flowspec.accelerated import solve as accelerated_solve
from flowspec.errors import ConvergenceError
from flowspec.reference import solve as reference_solve


def _cubic(x):
    return x ** 3 + 0.5 * x


def _cubic_log_slope(x):
    return np.log(3 * x ** 2 + 0.5) if isinstance(x, np.ndarray) else torch.log(3 * x ** 2 + 0.5)


TARGETS = np.array([-1e6, -3.0, 0.0, 0.25, 7.0, 1e9])


def test_reference_bracket_then_root_of_a_cubic():
    lo, hi = reference_solve.expand_bracket(_cubic, TARGETS, -np.ones(6), np.ones(6))
    assert np.all(_cubic(lo) <= TARGETS) and np.all(_cubic(hi) >= TARGETS)
    x = reference_solve.safeguarded_newton(lambda v: (_cubic(v), _cubic_log_slope(v)), TARGETS, lo, hi,
                                           np.ones(6))
    np.testing.assert_allclose(_cubic(x), TARGETS, rtol=64 * np.finfo(np.float64).eps, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_accelerated_bracket_then_root_of_a_cubic(dtype):
    t = torch.tensor(TARGETS, dtype=dtype)
    lo, hi = accelerated_solve.expand_bracket(_cubic, t, -torch.ones_like(t), torch.ones_like(t))
    assert bool((_cubic(lo) <= t).all()) and bool((_cubic(hi) >= t).all())
    x = accelerated_solve.safeguarded_newton(lambda v: (_cubic(v), _cubic_log_slope(v)), t, lo, hi,
                                             torch.ones_like(t), rtol=accelerated_solve.default_rtol(dtype))
    eps = torch.finfo(dtype).eps
    assert bool(((_cubic(x) - t).abs() <= 64 * eps * t.abs().clamp(min=1.0) * 3).all())


def test_a_bounded_map_has_no_bracket_and_says_so():
    with pytest.raises(ConvergenceError, match="no bracket") as caught:
        reference_solve.expand_bracket(np.tanh, np.array([0.0, 2.0]), -np.ones(2), np.ones(2), max_expansions=8)
    assert caught.value.residual == pytest.approx(0.5, abs=1e-12)  # |2 − tanh(hi)|/2 with tanh(hi) = 1
    with pytest.raises(ConvergenceError, match="no bracket"):
        accelerated_solve.expand_bracket(torch.tanh, torch.tensor([2.0]), -torch.ones(1), torch.ones(1),
                                         max_expansions=8)


def test_the_solve_raises_at_its_cap_with_the_residual():
    with pytest.raises(ConvergenceError) as caught:
        reference_solve.safeguarded_newton(lambda v: (_cubic(v), _cubic_log_slope(v)), np.array([7.0]),
                                           np.array([-100.0]), np.array([100.0]), np.ones(1), max_iter=2)
    assert caught.value.residual > 1e-3
