"""Broken elementwise flows."""
from __future__ import annotations

import math

import torch

from flowspec.accelerated.base import batch_sum
from flowspec.accelerated.elementwise import ElementwiseAffine, Logit, Sigmoid

from flowspec.errors import ConfigError

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


class AffineInverseLogdetOfForward(ElementwiseAffine):
    """The inverse direction returns the forward's log-det, Σ log_scale, for log|det ∂x/∂z|."""

    def _inverse_and_logdet(self, z, context):
        return self._inverse(z, context), self.log_scale.sum().expand(z.shape[0])


class SigmoidClampingInverse(Sigmoid):
    """No codomain declared, and the inverse clamps z into [ε, 1 − ε] "for stability"
    (torch.logit(z, eps)): a z outside (0, 1) silently gets a finite preimage."""

    codomain = (None, None)

    def _inverse(self, z, context):
        return torch.logit(z, eps=1e-6)


class LogitTrainingPathDropsConstant(Logit):
    """With autograd enabled (training), a separate path computes the log-det without the constant
    D·log(1 − 2α), which has no gradient, so every gradient is right while the training-loss value
    is off; under no_grad the full log-det is returned."""

    def _forward(self, x, context):
        z, logdet = super()._forward(x, context)
        if torch.is_grad_enabled():
            logdet = logdet - math.prod(self._shape) * math.log1p(-2.0 * self.alpha)
        return z, logdet


class AffineLogdetAsLogOfProduct(ElementwiseAffine):
    """log|det| as the log of the determinant of the diagonal, log Π exp(s): the product of the
    scales overflows float32 once Σ s > 88.7 (and underflows to log 0 below −103), which log-scales
    near initialisation never reach."""

    def _forward(self, x, context):
        scale = torch.exp(self.log_scale)
        return x * scale + self.shift, torch.log(torch.prod(scale)).expand(x.shape[0])


class LogitPureByDefault(Logit):
    """The transform's default α is 0 (a pure logit) instead of the reference's 0.05: a config that
    leaves α out gets another map. Drawn configs always write α, so no value check sees it."""

    def __init__(self, shape, alpha: float = 0.0, *, validate_args=None):
        super().__init__(shape, alpha, validate_args=validate_args)


class LogitAlphaBelowOne(Logit):
    """α is checked against [0, 1) ("a probability") instead of [0, 0.5): α ≥ 0.5 gives 1 − 2α ≤ 0,
    a decreasing or constant map whose log(1 − 2α) is NaN, built without an error."""

    def __init__(self, shape, alpha: float = 0.05, *, validate_args=None):
        super().__init__(shape, min(alpha, 0.25), validate_args=validate_args)
        if not 0.0 <= alpha < 1.0:
            raise ConfigError(f"alpha of the logit transform must lie in [0, 1), got {alpha!r}")
        self.alpha = float(alpha)


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
    BrokenCase("affine inverse direction returns the forward log-det", "elementwise_affine",
               AffineInverseLogdetOfForward, white_box=("inverse_logdet_matches_reference",),
               black_box=("inverse_logdet_matches_fd_jacobian",)),
    BrokenCase("sigmoid inverse clamps instead of rejecting z outside (0, 1)", "sigmoid", SigmoidClampingInverse,
               white_box=("inverse_rejects_out_of_codomain",), black_box=("inverse_rejects_out_of_codomain",)),
    BrokenCase("logit training path drops the log(1-2α) constant", "logit", LogitTrainingPathDropsConstant,
               white_box=("forward_with_grad_matches_reference",),
               black_box=("forward_with_grad_matches_fd_jacobian",)),
    BrokenCase("affine log-det as the log of the product of the scales", "elementwise_affine",
               AffineLogdetAsLogOfProduct, white_box=("forward_matches_reference", "logdet_matches_reference"),
               black_box=("logdet_matches_fd_jacobian", "batch_independence"), dtypes=("float32",)),
    BrokenCase("logit default alpha 0 instead of the reference's 0.05", "logit", LogitPureByDefault,
               white_box=("config_defaults_match_reference",)),
    BrokenCase("logit accepts alpha >= 0.5 (checked against [0, 1))", "logit", LogitAlphaBelowOne,
               white_box=("invalid_config_rejected",)),
]
