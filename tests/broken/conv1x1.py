"""Broken invertible 1×1 convolutions."""
from __future__ import annotations

import torch

from flowspec.accelerated.conv1x1 import Conv1x1, Conv1x1LU

from . import BrokenCase


class Conv1x1SignedLogdet(Conv1x1):
    """log of the signed determinant (torch.logdet): NaN wherever det W < 0."""

    def _log_abs_det_weight(self):
        return torch.logdet(self.weight)


class Conv1x1LUNoPixelFactor(Conv1x1LU):
    """A Jacobian term dropped: Σ log_s once instead of once per pixel (H·W times)."""

    def _forward(self, x, context):
        z, _ = super()._forward(x, context)
        return z, self.log_s.sum().expand(x.shape[0])


CASES = [
    BrokenCase("conv1x1 log-det by torch.logdet", "conv1x1", Conv1x1SignedLogdet,
               white_box=("logdet_matches_reference", "grad_matches_reference"),
               black_box=("logdet_matches_fd_jacobian",)),
    BrokenCase("conv1x1_lu log-det without the H·W factor", "conv1x1_lu", Conv1x1LUNoPixelFactor,
               white_box=("logdet_matches_reference", "grad_matches_reference"),
               black_box=("logdet_matches_fd_jacobian",)),
]
