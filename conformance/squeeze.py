"""Spec strategies for squeeze and the property pinning its channel order, plus the image configs
shared by the suite's image kinds.

Axes: ``channels``, ``height`` and ``width`` (every size, odd and even; squeeze takes even sides
only, 2 or 4, so that a patch order mistake shows both within and across rows of patches).
"""
from __future__ import annotations

import numpy as np

from .covering import axis, declare_axes
from .finite_diff import ROUND
from .property import CheckContext, prop
from .strategies import config, event_size, from_configs, register_specs, sizes

# Images (C, H, W) with C ≤ 4 and H, W ≤ 3 (D ≤ 36).
IMAGE_AXES = {"channels": range(1, 5), "height": range(1, 4), "width": range(1, 4)}
IMAGE_CONFIGS = config(**{name: sizes(min(values), max(values), name=name) for name, values in IMAGE_AXES.items()})
SQUEEZE_SIDES = (2, 4)


@register_specs("squeeze")
def _squeeze():
    return from_configs("squeeze", config(channels=sizes(1, 3, name="channels"), height=axis("height", SQUEEZE_SIDES),
                                          width=axis("width", SQUEEZE_SIDES)))


declare_axes("squeeze", channels=range(1, 4), height=SQUEEZE_SIDES, width=SQUEEZE_SIDES)


def squeezed_by_index(x: np.ndarray) -> np.ndarray:
    """z[b, 4c + 2i + j, h, w] = x[b, c, 2h + i, 2w + j], entry by entry from the output index."""
    b, c, height, width = x.shape
    z = np.empty((b, 4 * c, height // 2, width // 2))
    for k, h, w in np.ndindex(*z.shape[1:]):
        channel, i, j = k // 4, (k % 4) // 2, k % 2
        z[:, k, h, w] = x[:, channel, 2 * h + i, 2 * w + j]
    return z


@prop("squeeze_channel_order", requires=["black_box"], kinds=["squeeze"])
def squeeze_channel_order(ctx: CheckContext) -> None:
    """z[b, 4c + 2i + j, h, w] = x[b, c, 2h + i, 2w + j] for the offset (i, j) in each 2×2 patch
    (RealNVP Sec. 3.6), computed index by index; a rearrangement, so the error is 0."""
    spec = ctx.draw_spec()
    x = ctx.draw_input(spec).astype(ROUND[ctx.dtype]).astype(np.float64)
    z, _ = ctx.adapter.forward(ctx.instantiate(spec), x)
    ctx.assert_close(z, squeezed_by_index(x), "forward", event_size(spec), "z against the documented channel order")
