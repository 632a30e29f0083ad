"""Broken convolutional autoregressive flows (PixelCNN masks, causal shift, inverse order)."""
from __future__ import annotations

import torch

from flowspec.accelerated.conv_autoregressive import CausalAutoregressive, PixelCNNAutoregressive

from . import BrokenCase


class PixelCNNMaskBFirst(PixelCNNAutoregressive):
    """Every layer uses mask type B, the first included: the centre tap of the first layer reads the
    entry's own channel, so μ and α of x_{c,r,s} depend on x_{c,r,s} itself. The Jacobian is still
    triangular in the order, but its diagonal is no longer exp(−α): −Σ α is not the log-det and the
    sequential inverse solves with parameters read off an entry not yet known."""

    def _mask_type(self, layer: int) -> str:
        return "B"


class PixelCNNChannelOrderReversed(PixelCNNAutoregressive):
    """The centre-tap channel rule compares the groups the wrong way round (g_in > g_out for type A,
    ≥ for B): channel c of a pixel sees channels > c of the same pixel instead of < c. The Jacobian
    is triangular in the reversed channel order, so the log-det is still right; only the declared
    order's forbidden entries show it."""

    @staticmethod
    def _channel_rule(g_in: torch.Tensor, g_out: torch.Tensor, mask_type: str) -> torch.Tensor:
        return g_in > g_out if mask_type == "A" else g_in >= g_out


class CausalWithoutShift(CausalAutoregressive):
    """The causal convolutions read x itself instead of x shifted by one step: the parameters at time
    t depend on x_t (every channel), so z_{c,t} reads x_{c',t} and its own entry."""

    def _shift(self, x: torch.Tensor) -> torch.Tensor:
        return x


class PixelCNNInverseColumnMajor(PixelCNNAutoregressive):
    """The sequential inverse visits the pixels column by column instead of row by row: on an image
    with H, W ≥ 2 a pixel is solved before the pixel to its upper right, whose value its parameters
    read (the forward is right)."""

    def _visits(self) -> list[tuple[int, int, int]]:
        channels, height, width = self._shape
        return [(c, r, s) for s in range(width) for r in range(height) for c in range(channels)]


CASES = [
    BrokenCase("pixelcnn mask type B in the first layer", "pixelcnn_autoregressive", PixelCNNMaskBFirst,
               white_box=("forward_matches_reference", "logdet_matches_reference"),
               black_box=("logdet_matches_fd_jacobian", "inverse_round_trip")),
    BrokenCase("pixelcnn channel mask in the reversed colour order", "pixelcnn_autoregressive",
               PixelCNNChannelOrderReversed,
               white_box=("forward_matches_reference", "autoregressive_forbidden_entries_zero"),
               black_box=("autoregressive_forbidden_entries_zero_fd",)),
    BrokenCase("causal convolution without the one-step shift", "causal_autoregressive", CausalWithoutShift,
               white_box=("forward_matches_reference", "autoregressive_forbidden_entries_zero"),
               black_box=("autoregressive_forbidden_entries_zero_fd", "logdet_matches_fd_jacobian")),
    BrokenCase("pixelcnn inverse in column-major order", "pixelcnn_autoregressive", PixelCNNInverseColumnMajor,
               white_box=("inverse_matches_reference",), black_box=("inverse_round_trip",)),
]
