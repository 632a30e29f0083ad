"""Broken radial flows."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from flowspec.accelerated.radial import Radial

from . import BrokenCase


class RadialMissingDimensionFactor(Radial):
    """log|det| forgets the (D − 1)·log(1 + βh) term of eq. 18."""

    def _forward(self, x, context):
        alpha, beta, alpha_beta = self._coefficients()
        d = x - self.x0
        r = torch.linalg.vector_norm(d, dim=1)
        z = x + (beta / (alpha + r))[:, None] * d
        return z, torch.log(alpha * alpha_beta + 2.0 * alpha * r + r * r) - 2.0 * torch.log(alpha + r)


class RadialThresholdedSoftplus(Radial):
    """α and α + β come from torch.nn.functional.softplus, which returns its argument above 20: off
    by e^−α̂ (up to 2e-9) there, visible in float64 values, log-dets, inverses and gradients."""

    def _coefficients(self):
        alpha, alpha_beta = F.softplus(self.alpha_hat), F.softplus(self.beta_hat)
        return alpha, alpha_beta - alpha, alpha_beta


CASES = [
    BrokenCase("radial log-det without the (D-1) factor", "radial", RadialMissingDimensionFactor,
               white_box=("logdet_matches_reference",), black_box=("logdet_matches_fd_jacobian",)),
    BrokenCase("radial coefficients with torch's thresholded softplus", "radial", RadialThresholdedSoftplus,
               white_box=("forward_matches_reference", "logdet_matches_reference", "inverse_matches_reference",
                          "grad_matches_reference")),
]
