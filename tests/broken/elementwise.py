"""Broken elementwise flows."""
from __future__ import annotations

import math

import torch

from flowspec.accelerated.base import batch_sum
from flowspec.accelerated.elementwise import ElementwiseAffine, Logit

from . import BrokenCase


class AffineLogdetSign(ElementwiseAffine):
    """Sign error: returns −Σ log_scale."""

    def _forward(self, x, context):
        z, logdet = super()._forward(x, context)
        return z, -logdet


class LogitDropsAlphaTerm(Logit):
    """A Jacobian term dropped: forgets D·log(1 − 2α)."""

    def _forward(self, x, context):
        y = self.alpha + (1.0 - 2.0 * self.alpha) * x
        return torch.log(y) - torch.log1p(-y), -batch_sum(torch.log(y) + torch.log1p(-y))


class AffineFloat32Cast(ElementwiseAffine):
    """A float32 cast inside the float64 path."""

    def _forward(self, x, context):
        z, logdet = super()._forward(x.float().double() if x.dtype == torch.float64 else x, context)
        return z, logdet


class AffineNoValidation(ElementwiseAffine):
    """Accepts NaN silently (validation bypassed)."""

    def forward(self, x, context=None):
        return self._forward(x, context)


CASES = [
    BrokenCase("affine log-det sign", "elementwise_affine", AffineLogdetSign,
               white_box=("logdet_matches_reference", "grad_matches_reference"),
               black_box=("logdet_matches_fd_jacobian",)),
    BrokenCase("logit drops the log(1-2α) term", "logit", LogitDropsAlphaTerm,
               white_box=("logdet_matches_reference",), black_box=("logdet_matches_fd_jacobian",)),
    BrokenCase("affine float32 cast in float64 path", "elementwise_affine", AffineFloat32Cast,
               white_box=("forward_matches_reference",), black_box=("inverse_round_trip",)),
    BrokenCase("affine without input validation", "elementwise_affine", AffineNoValidation,
               white_box=("bad_input_rejected",), black_box=("bad_input_rejected",)),
]
