"""Broken variational dequantizers: the objective's units and sign, the context, the inverse."""
from __future__ import annotations

import math

import torch

from flowspec.accelerated.dequantizer import Dequantizer

from . import BrokenCase


class LogQInUnitsOfU(Dequantizer):
    """``dequantize`` returns log q(u | k) as the density of x: the change of units x = (k + u)/n_bins,
    whose density is n_bins^D times u's, is forgotten, so the objective lacks D·log n_bins (the bound
    exceeds log P(k) by D·log n_bins − KL)."""

    def dequantize(self, k, n_bins, *, eps=None, generator=None):
        x, log_q = super().dequantize(k, n_bins, eps=eps, generator=generator)
        return x, log_q - math.prod(self.event_shape) * math.log(n_bins)


class NegatedLogQ(Dequantizer):
    """log q(u | k) is taken as a negative log-likelihood (−log N(ε) + log|det ∂u/∂ε|, the loss
    convention) before D·log n_bins is added: the objective's log q has its sign flipped."""

    def dequantize(self, k, n_bins, *, eps=None, generator=None):
        x, log_q = super().dequantize(k, n_bins, eps=eps, generator=generator)
        d_log_n = math.prod(self.event_shape) * math.log(n_bins)
        return x, d_log_n - (log_q - d_log_n)


class ContextIgnored(Dequantizer):
    """The features never reach the networks: the context net and every coupling read a zero context
    (as when a default ``context=None`` is replaced by zeros), so q(u | k) does not depend on k."""

    def _net_input(self, context):
        return torch.zeros_like(super()._net_input(context))

    @staticmethod
    def _layer_context(layer, context):
        return torch.zeros_like(Dequantizer._layer_context(layer, context))


class InverseWithoutSigmoid(Dequantizer):
    """The inverse stops in logit space: the couplings' and the context affine's inverses, but not
    the logit's (σ), so sampling returns y instead of u = σ(y)."""

    def _inverse(self, eps, context):
        y = eps
        for layer in reversed(self.layers):
            y = layer.inverse(y, self._layer_context(layer, context))
        return self._context_affine(y, context, inverse=True)[0]


class UnscaledFeatures(Dequantizer):
    """The context is the raw data k instead of the documented (2k + 1)/n_bins − 1."""

    def context(self, k, n_bins):
        return k.to(self._dtype())


CASES = [
    BrokenCase("dequantizer objective without D·log n_bins", "dequantizer", LogQInUnitsOfU,
               white_box=("variational_bound_matches_reference", "variational_bound_statistical"),
               black_box=("variational_bound_consistent",)),
    BrokenCase("dequantizer objective with the sign of log q flipped", "dequantizer", NegatedLogQ,
               white_box=("variational_bound_matches_reference", "variational_bound_statistical"),
               black_box=("variational_bound_consistent",)),
    BrokenCase("dequantizer ignoring its context", "dequantizer", ContextIgnored,
               white_box=("forward_matches_reference", "variational_bound_matches_reference")),
    BrokenCase("dequantizer inverse without the logit's inverse", "dequantizer", InverseWithoutSigmoid,
               white_box=("inverse_matches_reference",), black_box=("inverse_round_trip",)),
    BrokenCase("dequantizer context from unscaled k", "dequantizer", UnscaledFeatures,
               white_box=("variational_bound_matches_reference",), black_box=("variational_bound_consistent",)),
]
