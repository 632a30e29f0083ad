"""Flow++'s conditioning network (Ho et al. 2019, Sec. 3.2.2) as torch modules.

The same network as :mod:`flowspec.reference.attention` (see there for the architecture, the
layer normalization's axes — the channels, per position and per sample — and the parameter
names, which are this module's ``state_dict`` names under ``net.``): a 1×1 input projection,
``blocks`` :class:`AttentionBlock` s, each h ← LN(h + Conv(h)), h ← LN(h + Attn(h)), and a 1×1
output projection, as one ``nn.Sequential``.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from flowspec.reference.attention import NORM_EPS

KERNEL = 3


class ChannelNorm(nn.Module):
    """Layer normalization over the channels (dim 1) at each position of each sample, with a gain
    ``weight`` and a shift ``bias`` per channel."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, h: Tensor) -> Tensor:
        return F.layer_norm(h.movedim(1, -1), (h.shape[1],), self.weight, self.bias, NORM_EPS).movedim(-1, 1)


class GatedConv(nn.Module):
    """Conv = nonlinearity → 3×3 conv → nonlinearity → Gate (1×1 conv to 2·channels, GLU)."""

    def __init__(self, channels: int, activation: Callable[[], nn.Module]):
        super().__init__()
        self.act = activation()
        self.conv = nn.Conv2d(channels, channels, KERNEL, padding=KERNEL // 2)
        self.gate = nn.Conv2d(channels, 2 * channels, 1)

    def forward(self, h: Tensor) -> Tensor:
        return F.glu(self.gate(self.act(self.conv(self.act(h)))), dim=1)


class GatedSelfAttention(nn.Module):
    """Attn = 1×1 conv (q, k, v) → multi-head self-attention over the H·W positions → Gate."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, bias=False)
        self.gate = nn.Conv2d(channels, 2 * channels, 1)

    def split_heads(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v of shape ``(batch, heads, H·W, d)`` (head j: channels j·d … (j + 1)·d − 1)."""
        batch, channels, height, width = h.shape
        qkv = self.qkv(h).reshape(batch, 3, self.heads, channels // self.heads, height * width)
        q, k, v = qkv.transpose(-1, -2).unbind(1)
        return q, k, v

    def attend(self, h: Tensor) -> Tensor:
        """softmax(q·kᵀ/√d)·v per head, the heads stacked back on the channels ``(batch, C, H, W)``."""
        q, k, v = self.split_heads(h)
        out = F.scaled_dot_product_attention(q, k, v)
        return out.transpose(-1, -2).reshape(h.shape)

    def forward(self, h: Tensor) -> Tensor:
        return F.glu(self.gate(self.attend(h)), dim=1)


class AttentionBlock(nn.Module):
    """h ← LN(h + Conv(h)); h ← LN(h + Attn(h))."""

    def __init__(self, channels: int, heads: int, activation: Callable[[], nn.Module]):
        super().__init__()
        self.gated_conv = GatedConv(channels, activation)
        self.conv_norm = ChannelNorm(channels)
        self.attn = GatedSelfAttention(channels, heads)
        self.attn_norm = ChannelNorm(channels)

    def forward(self, h: Tensor) -> Tensor:
        h = self.conv_norm(h + self.gated_conv(h))
        return self.attn_norm(h + self.attn(h))


def attention_net(n_in: int, n_out: int, hidden: int, blocks: int, heads: int,
                  activation: Callable[[], nn.Module]) -> nn.Sequential:
    """``net.0`` the 1×1 input projection, ``net.1 … net.{blocks}`` the blocks, ``net.{blocks + 1}``
    the 1×1 output projection to ``n_out`` channels."""
    return nn.Sequential(
        nn.Conv2d(n_in, hidden, 1),
        *(AttentionBlock(hidden, heads, activation) for _ in range(blocks)),
        nn.Conv2d(hidden, n_out, 1),
    )
