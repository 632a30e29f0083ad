"""Broken planar flows."""
from __future__ import annotations

import torch

from flowspec.accelerated.planar import Planar

from . import BrokenCase


class PlanarWithoutReparam(Planar):
    """Uses the raw u: f(x) = x + u·tanh(wᵀx + b), log|det| = log|1 + tanh'·wᵀu|, which is not
    invertible once wᵀu < −1."""

    def _u_hat(self):
        return self.u, 1.0 + self.w @ self.u

    def _forward(self, x, context):
        th = torch.tanh(x @ self.w + self.b)
        return x + th[:, None] * self.u, torch.log(torch.abs(1.0 + (1.0 - th * th) * (self.w @ self.u)))


class PlanarInverseFixedSteps(Planar):
    """The scalar equation gets two Newton steps and no convergence check."""

    def _solve(self, target, m, b):
        alpha = target.clone()
        for _ in range(2):
            th = torch.tanh(alpha + b)
            alpha = alpha - (alpha + m * th - target) / (1.0 + m * (1.0 - th * th))
        return alpha


CASES = [
    BrokenCase("planar flow without the invertibility reparameterisation", "planar", PlanarWithoutReparam,
               white_box=("forward_matches_reference", "logdet_matches_reference"),
               black_box=("inverse_round_trip",)),
    BrokenCase("planar inverse without a convergence check", "planar", PlanarInverseFixedSteps,
               white_box=("inverse_matches_reference",), black_box=("inverse_round_trip",)),
]
