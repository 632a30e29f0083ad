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


class Conv1x1LUCachedWeight(Conv1x1LU):
    """Assembles W = P·L·(U + diag(s)) once, on first use, and keeps it: after load_state_dict, an
    optimiser step or .to(dtype) the forward still applies the first weight (and the inverse, which
    solves with the current factors, no longer inverts it)."""

    def weight_matrix(self):
        if getattr(self, "_weight_cache", None) is None:
            self._weight_cache = super().weight_matrix()
        return self._weight_cache


class Conv1x1InverseWithoutGrad(Conv1x1):
    """The inverse multiplies by W⁻¹ computed under no_grad ("the inverse is only for sampling"):
    right values and input gradients, but no gradient reaches the weight through the inverse."""

    def _inverse(self, z, context):
        with torch.no_grad():
            inverse = torch.linalg.inv(self.weight)
        return (inverse @ self._pixels_as_columns(z)).reshape(z.shape)


class Conv1x1LUInverseLogdetNoPixelFactor(Conv1x1LU):
    """The inverse direction's log-det is −Σ log_s, without the H·W factor the forward has."""

    def _inverse_and_logdet(self, z, context):
        return self._inverse(z, context), (-self.log_s.sum()).expand(z.shape[0])


class Conv1x1CachedInverseAcrossDtypes(Conv1x1):
    """Caches W⁻¹ in a plain attribute, recomputed when the weight's version counter changes (so
    optimiser steps and load_state_dict are seen), cast to z's dtype on use. ``.to(dtype)`` keeps the
    version counter, so a flow that inverted in float32 and was converted to float64 inverts with
    the float32 W⁻¹: float32 accuracy in a float64 flow."""

    def _inverse(self, z, context):
        version = self.weight._version
        if getattr(self, "_inverse_cache", None) is None or self._inverse_version != version:
            with torch.no_grad():
                self._inverse_cache, self._inverse_version = torch.linalg.inv(self.weight), version
        return (self._inverse_cache.to(z.dtype) @ self._pixels_as_columns(z)).reshape(z.shape)


class Conv1x1SolveCatchesOnlyLinAlgError(Conv1x1):
    """The inverse trusts ``torch.linalg.solve`` to report a singular weight: it raises only when
    LU meets an exactly zero pivot, and a weight singular in exact arithmetic (two equal rows) rounds
    to a tiny pivot in float64, so the solve returns huge values without an error."""

    def _inverse(self, z, context):
        return torch.linalg.solve(self.weight, self._pixels_as_columns(z)).reshape(z.shape)


class Conv1x1LUPermutationByColumnsOnly(Conv1x1LU):
    """``P`` is checked for 0/1 entries and column sums of 1 only: a matrix with a row of two ones
    and a zero row passes, and W = P·L·U is singular."""

    def load_spec_params(self, spec):
        p = torch.as_tensor(spec.params["P"])
        super(Conv1x1LU, self).load_spec_params(spec)
        if not (bool(((p == 0) | (p == 1)).all()) and bool((p.sum(0) == 1).all())):
            raise ValueError("param 'P' must be a permutation matrix")


class Conv1x1ZeroInitialised(Conv1x1):
    """The weight is created as zeros "to be filled by the initialiser", and the random rotation is
    never written: every flow loaded from a spec is right, every freshly constructed one singular."""

    def __init__(self, channels, height, width, *, validate_args=None):
        super().__init__(channels, height, width, validate_args=validate_args)
        with torch.no_grad():
            self.weight.zero_()


class Conv1x1GaussianInitialised(Conv1x1):
    """The weight is initialised as a Gaussian matrix scaled by 1/√C (a common default for linear
    layers) instead of Glow's random rotation: invertible almost surely, every loaded flow right,
    but a constructed flow starts with log|det| ≠ 0."""

    def __init__(self, channels, height, width, *, validate_args=None):
        super().__init__(channels, height, width, validate_args=validate_args)
        with torch.no_grad():
            self.weight.copy_(torch.randn(channels, channels) / channels ** 0.5)


CASES = [
    BrokenCase("conv1x1 initialised as a Gaussian matrix, not a rotation", "conv1x1", Conv1x1GaussianInitialised,
               white_box=("fresh_flow_round_trip",), black_box=("fresh_flow_round_trip",)),
    BrokenCase("conv1x1 fresh weight left at zeros", "conv1x1", Conv1x1ZeroInitialised,
               white_box=("fresh_flow_round_trip",), black_box=("fresh_flow_round_trip",)),
    BrokenCase("conv1x1 inverse relies on LinAlgError for a singular weight", "conv1x1",
               Conv1x1SolveCatchesOnlyLinAlgError, white_box=("invalid_params_rejected",)),
    BrokenCase("conv1x1_lu permutation checked by its column sums only", "conv1x1_lu",
               Conv1x1LUPermutationByColumnsOnly, white_box=("invalid_params_rejected",)),
    BrokenCase("conv1x1_lu caches the assembled weight for good", "conv1x1_lu", Conv1x1LUCachedWeight,
               white_box=("state_round_trip", "convert_dtype"), black_box=("state_round_trip", "convert_dtype")),
    BrokenCase("conv1x1 inverse computed without gradients", "conv1x1", Conv1x1InverseWithoutGrad,
               white_box=("inverse_grad_matches_reference",), black_box=("inverse_grad_matches_fd",)),
    BrokenCase("conv1x1_lu inverse log-det without the H·W factor", "conv1x1_lu",
               Conv1x1LUInverseLogdetNoPixelFactor,
               white_box=("inverse_logdet_matches_reference",), black_box=("inverse_logdet_matches_fd_jacobian",)),
    BrokenCase("conv1x1 cached inverse survives .to(dtype)", "conv1x1", Conv1x1CachedInverseAcrossDtypes,
               white_box=("convert_dtype", "inverse_grad_matches_reference"),
               black_box=("convert_dtype", "inverse_grad_matches_fd")),
    BrokenCase("conv1x1 log-det by torch.logdet", "conv1x1", Conv1x1SignedLogdet,
               white_box=("logdet_matches_reference", "grad_matches_reference"),
               black_box=("logdet_matches_fd_jacobian",)),
    BrokenCase("conv1x1_lu log-det without the H·W factor", "conv1x1_lu", Conv1x1LUNoPixelFactor,
               white_box=("logdet_matches_reference", "grad_matches_reference"),
               black_box=("logdet_matches_fd_jacobian",)),
]
