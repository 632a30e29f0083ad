"""Spec strategies for multi-scale composition: one to three levels with a split after each but the
last; each level is an image flow, followed by a 2×2 squeeze where it is drawn (as in RealNVP and
Glow: squeeze, then factor out half of the channels).

Axes, drawn so that each pinned value is honoured: ``levels`` (1, 2 or 3, always the number of
levels built); one ``level`` kind per level (elementwise affine, actnorm or an invertible 1×1
convolution, which mixes the channels that the split then separates); one ``squeeze`` per level
(at most two in a model, the most that sides ≤ 4 allow); ``height`` and ``width`` (1…4, among the
sides that the drawn squeezes can halve); ``channels`` (1 or 2: the input has that many channels
times the power of two that makes every split even).
"""
from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from flowspec import reference
from flowspec.reference.multiscale import multiscale_spec
from flowspec.reference.sequential import sequential_spec
from flowspec.spec import FlowSpec

from .covering import axis, declare_axes, salt
from .seeding import rng
from .strategies import SEEDS, register_specs, sizes

LEVELS = (1, 2, 3)
LEVEL_KINDS = ("elementwise_affine", "actnorm", "conv1x1")
SQUEEZE = (False, True)
SIDES = (1, 2, 3, 4)
MAX_SQUEEZES = 2  # a side of 4 halves twice


def _level_config(kind: str, shape: tuple[int, int, int]) -> dict[str, Any]:
    c, h, w = shape
    return {"channels": c, "height": h, "width": w} if kind == "conv1x1" else {"shape": list(shape)}


def _level(kind: str, shape: tuple[int, int, int], squeeze: bool, seed: int, i: int) -> tuple[FlowSpec, tuple]:
    """Level ``i``: a flow of ``kind`` on ``shape``, then a squeeze if drawn; and its output shape."""
    flow = reference.init_spec(kind, _level_config(kind, shape), rng("level params", salt(), seed, i))
    if not squeeze:
        return flow, shape
    c, h, w = shape
    return sequential_spec([flow, reference.init_spec("squeeze", {"channels": c, "height": h, "width": w},
                                                      rng("squeeze", i))]), (4 * c, h // 2, w // 2)


def _input_channels(base: int, squeezes: list[bool]) -> int:
    """``base`` times the least power of two that makes the channels at every split even."""
    factor = 1
    while True:
        channels, ok = base * factor, True
        for squeeze in squeezes[:-1]:
            channels *= 4 if squeeze else 1
            ok = ok and channels % 2 == 0
            channels //= 2
        if ok:
            return base * factor
        factor *= 2


@st.composite
def _multiscale(draw: Any) -> FlowSpec:
    n_levels = draw(axis("levels", LEVELS))
    kinds = [draw(axis("level", LEVEL_KINDS)) for _ in range(n_levels)]
    squeezes: list[bool] = []
    for _ in range(n_levels):
        squeezes.append(sum(squeezes) < MAX_SQUEEZES and draw(axis("squeeze", SQUEEZE)))
    divisor = 2 ** sum(squeezes)
    sides = [s for s in SIDES if s % divisor == 0]
    shape = (_input_channels(draw(sizes(1, 2, name="channels")), squeezes), draw(axis("height", sides)),
             draw(axis("width", sides)))
    seed = draw(SEEDS)
    levels = []
    for i, (kind, squeeze) in enumerate(zip(kinds, squeezes)):
        level, out = _level(kind, shape, squeeze, seed, i)
        levels.append(level)
        shape = (out[0] // 2,) + out[1:]
    return multiscale_spec(levels)


@register_specs("multiscale")
def _multiscale_specs():
    return _multiscale()


declare_axes("multiscale", levels=LEVELS, level=LEVEL_KINDS, squeeze=SQUEEZE, height=SIDES, width=SIDES,
             channels=(1, 2))
