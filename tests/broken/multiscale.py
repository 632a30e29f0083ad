"""Broken multi-scale flows."""
from __future__ import annotations

import torch

from flowspec.accelerated.multiscale import MultiScale

from . import BrokenCase


class FactorsOutTheKeptHalf(MultiScale):
    """Factors out the second half of the channels instead of the documented first half."""

    def _forward(self, x, context):
        latents, total, h = [], None, x
        for i, level in enumerate(self.levels):
            h, logdet = level(h)
            total = logdet if total is None else total + logdet
            if i + 1 < len(self.levels):
                half = h.shape[1] // 2
                latents.append(h[:, half:].reshape(h.shape[0], -1))
                h = h[:, :half]
        return torch.cat(latents + [h.reshape(h.shape[0], -1)], dim=1), total


CASES = [
    BrokenCase("multiscale factors out the wrong half", "multiscale", FactorsOutTheKeptHalf,
               white_box=("forward_matches_reference",), black_box=("inverse_round_trip",)),
]
