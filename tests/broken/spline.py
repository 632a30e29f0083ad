"""Broken rational-quadratic splines (Durkan et al. 2019): faults of the kernel a real implementer makes."""
from __future__ import annotations

import torch

from flowspec.accelerated.base import softplus
from flowspec.accelerated.spline import Spline

from . import BrokenCase


class OtherRoot(Spline):
    """The inverse takes the textbook root (−b − √(b² − 4ac))/(2a) of the quadratic: the one outside
    [0, 1] (and infinite where a = 0)."""

    def _root(self, a, b, c):
        return (-b - torch.sqrt((b * b - 4.0 * a * c).clamp(min=0.0))) / (2.0 * a)


class LastKnotOffByOne(Spline):
    """The bin search counts the knots ≤ x (Durkan's eps on the last knot forgotten) and is not
    clamped above: at x = B it returns bin K, one past the last, and the gather of its right knot
    runs out of range."""

    def _bin_index(self, edges, values):
        return (torch.searchsorted(edges.contiguous(), values[..., None].contiguous(), right=True) - 1).clamp(min=0)


class SoftplusBoundaryDerivatives(Spline):
    """All K + 1 knot derivatives from min_derivative + softplus, the boundary ones too (their
    pre-activations 0): the spline meets the identity tails at ±B with slope log 2 + min, not 1."""

    def _derivatives(self, raw):
        edge = raw.new_zeros(raw.shape[:-1] + (1,))
        return self.min_derivative + softplus(torch.cat([edge, raw, edge], dim=-1))


class WidthsWithoutRenormalisation(Spline):
    """min_width + softmax without the (1 − K·min) factor: the widths sum to 1 + K·min, the knots
    drift right and the last bin is squeezed (the last knot is still set to B)."""

    def _bin_sizes(self, logits, minimum):
        return minimum + torch.softmax(logits, dim=-1)


CASES = [
    BrokenCase("spline inverse with the other quadratic root", "spline", OtherRoot,
               white_box=("inverse_matches_reference",), black_box=("inverse_round_trip", "spline_knots_exact")),
    BrokenCase("spline bin search off by one at the last knot", "spline", LastKnotOffByOne,
               white_box=("spline_knots_exact",), black_box=("spline_knots_exact",)),
    BrokenCase("spline boundary derivatives softplus'ed", "spline", SoftplusBoundaryDerivatives,
               white_box=("forward_matches_reference", "spline_derivative_continuous"),
               black_box=("spline_derivative_continuous",)),
    BrokenCase("spline widths not renormalised with the minimum", "spline", WidthsWithoutRenormalisation,
               white_box=("forward_matches_reference",), black_box=("spline_knots_exact",)),
]
