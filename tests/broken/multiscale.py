"""Broken multi-scale flows."""
from __future__ import annotations

from flowspec.accelerated.multiscale import MultiScale

from . import BrokenCase


class FactorsOutTheKeptHalf(MultiScale):
    """Factors out the second half of the channels instead of the documented first half (forward only)."""

    @staticmethod
    def _split(h):
        half = h.shape[1] // 2
        return h[:, half:], h[:, :half]


CASES = [
    BrokenCase("multiscale factors out the wrong half", "multiscale", FactorsOutTheKeptHalf,
               white_box=("forward_matches_reference",), black_box=("inverse_round_trip",)),
]
