"""Broken planar flows."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from flowspec.accelerated.planar import Planar
from flowspec.errors import ConvergenceError

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


class PlanarPlainNewton(Planar):
    """The scalar equation g(α) = α + m·tanh(α + b) = wᵀz is solved by plain Newton from α = wᵀz,
    without a bracket. g is increasing, so this looks safe, and it converges for wᵀû ≲ 4; for a
    steeper g a step from one flat tail lands on the other and the iteration cycles between the
    tails until it gives up."""

    def _solve(self, target, m, b):
        rtol = 32.0 * torch.finfo(target.dtype).eps if self.rtol is None else self.rtol
        scale = target.abs() + m.abs() + 1.0
        alpha = target.clone()
        for _ in range(self.max_iter):
            th = torch.tanh(alpha + b)
            residual = alpha + m * th - target
            if bool((residual.abs() <= rtol * scale).all()):
                return alpha
            alpha = alpha - residual / (1.0 + m * (1.0 - th * th))
        residual = (alpha + m * torch.tanh(alpha + b) - target).abs() / scale
        raise ConvergenceError("planar flow inverse: Newton's method did not converge",
                               residual=float(residual.max()), iterations=self.max_iter, tolerance=rtol)


class PlanarThresholdedSoftplus(Planar):
    """The reparameterisation uses torch.nn.functional.softplus, which returns its argument above 20:
    for wᵀu > 20, wᵀû = wᵀu − 1 instead of softplus(wᵀu) − 1, off by e^−wᵀu (a float64 error in û,
    the log-det and every gradient; a float32 flow cannot tell)."""

    def _u_hat(self):
        wu = self.w @ self.u
        sp = F.softplus(wu)
        return self.u + (sp - 1.0 - wu) * self.w / (self.w @ self.w), sp


CASES = [
    BrokenCase("planar flow without the invertibility reparameterisation", "planar", PlanarWithoutReparam,
               white_box=("forward_matches_reference", "logdet_matches_reference"),
               black_box=("inverse_round_trip",)),
    BrokenCase("planar inverse without a convergence check", "planar", PlanarInverseFixedSteps,
               white_box=("inverse_matches_reference",), black_box=("inverse_round_trip",)),
    BrokenCase("planar inverse by plain Newton, no bracket", "planar", PlanarPlainNewton,
               white_box=("inverse_matches_reference", "inverse_round_trip"), black_box=("inverse_round_trip",),
               dtypes=("float64", "float32")),
    BrokenCase("planar reparameterisation with torch's thresholded softplus", "planar", PlanarThresholdedSoftplus,
               white_box=("logdet_matches_reference", "grad_matches_reference")),
]
