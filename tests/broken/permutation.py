"""Broken channel permutations."""
from __future__ import annotations

from flowspec.accelerated.permutation import Permutation

from . import BrokenCase


class PermutationInverseReapplies(Permutation):
    """The inverse gathers by perm again instead of by its inverse permutation."""

    def _inverse(self, z, context):
        return z.index_select(1, self._perm)


CASES = [
    BrokenCase("permutation inverse applies perm again", "permutation", PermutationInverseReapplies,
               white_box=("inverse_matches_reference", "inverse_round_trip"),
               black_box=("inverse_round_trip",)),
]
