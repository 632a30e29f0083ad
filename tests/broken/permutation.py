"""Broken channel permutations."""
from __future__ import annotations

from flowspec.accelerated.permutation import Permutation

from . import BrokenCase


class PermutationInverseReapplies(Permutation):
    """The inverse gathers by perm again instead of by its inverse permutation."""

    def _inverse(self, z, context):
        return z.index_select(1, self._perm)


class PermutationInverseDirectionGathersByPerm(Permutation):
    """The inverse direction with its log-det gathers by perm (the forward's index), while the plain
    inverse is right."""

    def _inverse_and_logdet(self, z, context):
        return z.index_select(1, self._perm), z.new_zeros(z.shape[0])


CASES = [
    BrokenCase("permutation inverse applies perm again", "permutation", PermutationInverseReapplies,
               white_box=("inverse_matches_reference", "inverse_round_trip"),
               black_box=("inverse_round_trip",)),
    BrokenCase("permutation inverse direction gathers by perm", "permutation",
               PermutationInverseDirectionGathersByPerm, white_box=("inverse_logdet_matches_reference",),
               black_box=("inverse_logdet_matches_fd_jacobian",)),
]
