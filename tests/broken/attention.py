"""Broken attention conditioners (Flow++ Sec. 3.2.2): faults of the attention path only, so the mlp and
conv examples of the same runs pass and the attention examples (a third of the coupling strategies'
conditioner × mask pairs, drawn in every run) must catch them."""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from flowspec.accelerated.attention import ChannelNorm, GatedSelfAttention
from flowspec.accelerated.coupling import AffineCoupling
from flowspec.reference.attention import NORM_EPS

from . import BrokenCase


def _swap(flow: AffineCoupling, base: type, broken: type) -> None:
    """Replace every ``base`` module of the conditioner by the same module with ``broken``'s code."""
    for module in flow.net.modules():
        if type(module) is base:
            module.__class__ = broken


class MaskAfterAttention(AffineCoupling):
    """The attention conditioner reads the whole x and the mask is applied to its output instead
    (only the transformed positions' parameters are kept): the transformed half leaks into its own
    parameters, so ∂z_t/∂x_t is no longer diagonal and the inverse, which reads z, differs."""

    def _conditioner_input(self, x: Tensor, context: Tensor | None) -> Tensor:
        if self.conditioner != "attention":
            return super()._conditioner_input(x, context)
        return x if context is None else torch.cat([x, context], dim=1)

    def _law(self, values: Tensor, h: Tensor, inverse: bool) -> tuple[Tensor, Tensor | None]:
        if self.conditioner == "attention":
            h = h.masked_fill(self._keep.repeat(self.outputs_per_entry, 1, 1), 0.0)
        return super()._law(values, h, inverse)


class _BatchAxisNorm(ChannelNorm):
    def forward(self, h: Tensor) -> Tensor:
        centred = h - h.mean(dim=0, keepdim=True)
        scale = torch.rsqrt(centred.square().mean(dim=0, keepdim=True) + NORM_EPS)
        return centred * scale * self.weight[:, None, None] + self.bias[:, None, None]


class LayerNormOverBatch(AffineCoupling):
    """The layer norm's statistics are taken over dim 0, the batch, instead of the channels: a
    sample's output depends on the rest of its batch (and a batch of one normalises to the shift)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _swap(self, ChannelNorm, _BatchAxisNorm)


class _SoftmaxOverQueries(GatedSelfAttention):
    def attend(self, h: Tensor) -> Tensor:
        q, k, v = self.split_heads(h)
        weights = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-2)
        return (weights @ v).transpose(-1, -2).reshape(h.shape)


class SoftmaxOverQueries(AffineCoupling):
    """The attention weights are normalised over the queries (dim −2) instead of the keys."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _swap(self, GatedSelfAttention, _SoftmaxOverQueries)


class _InterleavedHeads(GatedSelfAttention):
    def split_heads(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        batch, channels, height, width = h.shape
        qkv = self.qkv(h).reshape(batch, 3, channels // self.heads, self.heads, height * width).transpose(2, 3)
        q, k, v = qkv.transpose(-1, -2).unbind(1)
        return q, k, v

    def attend(self, h: Tensor) -> Tensor:
        q, k, v = self.split_heads(h)
        out = F.scaled_dot_product_attention(q, k, v)  # (batch, heads, H·W, d), back in the same interleaved order
        return out.permute(0, 3, 1, 2).reshape(h.shape)


class InterleavedHeads(AffineCoupling):
    """Channel c goes to head c mod heads (a (d, heads) reshape) instead of head c // d: with two or
    more heads each head attends with other channels than the reference's."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _swap(self, GatedSelfAttention, _InterleavedHeads)


CASES = [
    BrokenCase("attention conditioner masked after the attention", "affine_coupling", MaskAfterAttention,
               white_box=("forward_matches_reference",),
               black_box=("coupling_jacobian_structure", "inverse_round_trip")),
    BrokenCase("attention layer norm over the batch axis", "affine_coupling", LayerNormOverBatch,
               white_box=("forward_matches_reference",), black_box=("batch_independence",)),
    BrokenCase("attention softmax over the queries", "affine_coupling", SoftmaxOverQueries,
               white_box=("forward_matches_reference",)),
    BrokenCase("attention heads interleaved", "affine_coupling", InterleavedHeads,
               white_box=("forward_matches_reference",)),
]
