"""Broken sum-of-squares polynomial flows (Jaini et al. 2019): faults of the closed form and of the
1-D inverse a real implementer makes."""
from __future__ import annotations

import torch

from flowspec.accelerated.solve import expand_bracket
from flowspec.accelerated.sos import SOSPolynomial, horner

from . import BrokenCase

CAPPED_ITERATIONS = 3


class ConstantOfIntegrationDropped(SOSPolynomial):
    """z = ∫₀ˣ p without the constant c (the conditioner's first output read but never added): still
    a monotone flow with the right log-det, so only the reference sees it."""

    def _value(self, x, c, a, eps2):
        q = self._coefficients(a, eps2)
        steps = torch.arange(1, q.shape[-1] + 1, dtype=q.dtype, device=q.device)
        return x * horner(q / steps, x)


class InverseReturnsAtCap(SOSPolynomial):
    """A hand-rolled inverse: the bracket, then a fixed number of bisection steps, and the midpoint
    returned as the answer with no check of the residual."""

    def _solve(self, target, c, a, eps2):
        ones = torch.ones_like(target)
        lo, hi = expand_bracket(lambda v: self._value(v, c, a, eps2), target, -ones, ones)
        for _ in range(CAPPED_ITERATIONS):
            mid = 0.5 * (lo + hi)
            below = self._value(mid, c, a, eps2) < target
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return 0.5 * (lo + hi)


class CrossTermsOnce(SOSPolynomial):
    """The square's expansion sums a_ki a_kj over i ≤ j only: each cross term counted once instead of
    twice, so the value is not the integral of the squares the log-det uses (r ≥ 1)."""

    def _coefficients(self, a, eps2):
        gram = torch.triu(a.transpose(-1, -2) @ a)
        q = gram.flatten(-2) @ self._anti_diagonals
        return torch.cat([q[..., :1] + eps2[..., None], q[..., 1:]], dim=-1)


CASES = [
    BrokenCase("sos integral without the constant of integration", "sos", ConstantOfIntegrationDropped,
               white_box=("forward_matches_reference", "inverse_matches_reference")),
    BrokenCase("sos 1-D inverse returns at its cap without an error", "sos", InverseReturnsAtCap,
               white_box=("inverse_matches_reference", "sos_inverse_large"),
               black_box=("inverse_round_trip", "sos_inverse_large")),
    BrokenCase("sos square's cross terms counted once", "sos", CrossTermsOnce,
               white_box=("forward_matches_reference",), black_box=("logdet_matches_fd_jacobian",)),
]
