"""Broken multi-scale flows."""
from __future__ import annotations

import math

import torch

from flowspec.accelerated.multiscale import MultiScale

from . import BrokenCase


class FactorsOutTheKeptHalf(MultiScale):
    """Factors out the second half of the channels instead of the documented first half (forward only)."""

    @staticmethod
    def _split(h):
        half = h.shape[1] // 2
        return h[:, half:], h[:, :half]


class InverseShapesFromLevelInputs(MultiScale):
    """The inverse cuts z into the factored latents by each level's input shape with half its
    channels, (C/2, H, W), which is the factored latent's shape only for a level that keeps its
    shape: after a level that squeezes, the latent is (2C, H/2, W/2) (same size, so the cut works)
    and re-joining it with the kept half fails."""

    def _inverse(self, z, context):
        shapes = [(level.event_shape[0] // 2, *level.event_shape[1:]) for level in self.levels[:-1]]
        shapes.append(tuple(self.levels[-1].latent_shape))
        cut = torch.split(z, [math.prod(s) for s in shapes], dim=1)
        pieces = [piece.reshape(z.shape[0], *s) for piece, s in zip(cut, shapes)]
        h = pieces[-1]
        for i in range(len(self.levels) - 1, -1, -1):
            if i + 1 < len(self.levels):
                h = torch.cat([pieces[i], h], dim=1)
            h = self.levels[i].inverse(h)
        return h


# Black-box mode cannot build composite kinds (their levels are not in the config), so these faults
# are checked in white-box mode only.
CASES = [
    BrokenCase("multiscale factors out the wrong half", "multiscale", FactorsOutTheKeptHalf,
               white_box=("forward_matches_reference",)),
    BrokenCase("multiscale inverse shapes the latents by the levels' inputs", "multiscale",
               InverseShapesFromLevelInputs, white_box=("inverse_matches_reference", "inverse_round_trip")),
]
