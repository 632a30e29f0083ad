"""Broken squeeze."""
from __future__ import annotations

from flowspec.accelerated.squeeze import Squeeze

from . import BrokenCase


class SqueezeSwappedOffsets(Squeeze):
    """Channel 4c + 2j + i instead of 4c + 2i + j (row and column offsets swapped), consistently in
    both directions: still a bijection with log|det| = 0, but not the documented order."""

    def _forward(self, x, context):
        c, h, w = self.event_shape
        patches = x.reshape(x.shape[0], c, h // 2, 2, w // 2, 2)  # [b, c, h, i, w, j]
        z = patches.permute(0, 1, 5, 3, 2, 4).reshape((x.shape[0],) + self.latent_shape)
        return z, x.new_zeros(x.shape[0])

    def _inverse(self, z, context):
        c, h, w = self.event_shape
        patches = z.reshape(z.shape[0], c, 2, 2, h // 2, w // 2)  # [b, c, j, i, h, w]
        return patches.permute(0, 1, 4, 3, 5, 2).reshape(z.shape[0], c, h, w)


CASES = [
    BrokenCase("squeeze with swapped patch offsets", "squeeze", SqueezeSwappedOffsets,
               white_box=("forward_matches_reference", "inverse_matches_reference", "squeeze_channel_order"),
               black_box=("squeeze_channel_order",)),
]
