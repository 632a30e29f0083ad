"""Flow++'s self-attention conditioner: an affine coupling on 3 × H × H images, forward + log-det and
inverse, at two sizes.

float32, one thread, input validation off, as in ``flows.py``. The conditioner has 32 hidden
channels, two blocks (gated 3×3 convolution, then 4-head self-attention over the H² positions) and a
checkerboard mask; at H = 16 the attention's 256 × 256 weights per head dominate. A commit without
the attention conditioner skips (``require``).
"""
from __future__ import annotations

from typing import Any

from .common import require
from .flows import _Family


class AttentionCoupling(_Family):
    """RealNVP affine coupling whose conditioner is Flow++'s stack of conv-attention blocks."""

    kind = "affine_coupling"
    param_names = ["H"]
    params = [8, 16]
    batch = 64

    def config(self, h: int) -> dict[str, Any]:
        return {"shape": [3, h, h], "mask": "checkerboard", "conditioner": "attention", "hidden": 32, "blocks": 2,
                "heads": 4, "activation": "elu"}

    def setup(self, h: int) -> None:
        require("flowspec.accelerated.attention")
        super().setup(h)
