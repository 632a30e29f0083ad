"""Broken actnorm."""
from __future__ import annotations

import torch

from flowspec.accelerated.actnorm import ActNorm

from . import BrokenCase


class ActNormNoSpatialFactor(ActNorm):
    """A Jacobian term dropped: Σ log_scale once instead of once per spatial position (H·W times)."""

    def _forward(self, x, context):
        z, _ = super()._forward(x, context)
        return z, self.log_scale.sum().expand(x.shape[0])


class ActNormSampleStdInit(ActNorm):
    """Initialises with the n − 1 standard deviation: the output variance is (n − 1)/n, not 1."""

    @torch.no_grad()
    def initialize(self, x):
        super().initialize(x)
        n = x.numel() // self._shape[0]
        self.log_scale.sub_(0.5 * torch.log(torch.tensor(n / (n - 1.0), dtype=self.log_scale.dtype)))


CASES = [
    BrokenCase("actnorm log-det without the H·W factor", "actnorm", ActNormNoSpatialFactor,
               white_box=("logdet_matches_reference", "grad_matches_reference"),
               black_box=("logdet_matches_fd_jacobian",)),
    BrokenCase("actnorm initialised with the n-1 standard deviation", "actnorm", ActNormSampleStdInit,
               white_box=("actnorm_data_init",), black_box=("actnorm_data_init",)),
]
