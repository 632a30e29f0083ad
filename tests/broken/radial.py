"""Broken radial flows."""
from __future__ import annotations

import torch

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


CASES = [
    BrokenCase("radial log-det without the (D-1) factor", "radial", RadialMissingDimensionFactor,
               white_box=("logdet_matches_reference",), black_box=("logdet_matches_fd_jacobian",)),
]
