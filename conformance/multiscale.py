"""Spec strategies for multi-scale composition, and the property of Glow's learned-prior split.

Strategies: one to three levels with a split after each but the last; each level is an image flow,
followed by a 2×2 squeeze where it is drawn (as in RealNVP and Glow: squeeze, then factor out half of
the channels); with ``split_prior`` every split goes through a learned prior.

Axes, drawn so that each pinned value is honoured: ``levels`` (1, 2 or 3, always the number of
levels built); ``split_prior`` (the plain split or the learned prior: an affine coupling of the
factored-out half on the kept half, generic random weights, so that μ and log σ depend on the kept
half; an MLP conditioner of width 2: the reference differentiates its two dense layers through the
Jacobian far faster than convolutions, which the ``glow`` kind's priors have); one ``level`` kind
per level (elementwise affine, actnorm or an invertible 1×1 convolution, which mixes the channels
that the split then separates); one ``squeeze`` per level (at most two in a model, the most that
sides ≤ 4 allow); ``height`` and ``width`` (1…4, among the sides that the drawn squeezes can
halve); ``channels`` (1 or 2: the input has that many channels times the power of two that makes
every split even).

Property ``split_prior_matches_reference`` (white-box; every kind whose reference declares
``extras["split_prior"]``, the multiscale spec with learned priors that a spec computes: multiscale
and glow): the learned-prior split on its own, against the same levels with the plain split (see
the property's docstring). Kinds register the strategy of their specs with at least one split in
:data:`PRIOR_SPECS`.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
from hypothesis import strategies as st

from flowspec import reference
from flowspec.reference.multiscale import multiscale_spec, split_terms, without_priors
from flowspec.reference.sequential import sequential_spec
from flowspec.spec import FlowSpec

from . import namespace
from .covering import axis, declare_axes, salt
from .property import CheckContext, prop
from .seeding import rng
from .strategies import SEEDS, event_size, register_specs, sizes
from .tolerances import condition_number

LEVELS = (1, 2, 3)
SPLIT_PRIOR = (False, True)
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


def _prior(shape: tuple[int, int, int], seed: int, i: int) -> FlowSpec:
    """The learned prior of split ``i`` on a level output of ``shape`` (module docstring)."""
    config = {"shape": list(shape), "mask": "channel", "parity": 1, "conditioner": "mlp", "hidden": 2, "depth": 1,
              "activation": "tanh", "scale_factor": 1.0}
    return reference.init_spec("affine_coupling", config, rng("prior params", salt(), seed, i))


@st.composite
def _multiscale(draw: Any, levels: tuple[int, ...] = LEVELS, split_prior: tuple[bool, ...] = SPLIT_PRIOR) -> FlowSpec:
    n_levels = draw(axis("levels", levels))
    with_prior = draw(axis("split_prior", split_prior))
    kinds = [draw(axis("level", LEVEL_KINDS)) for _ in range(n_levels)]
    squeezes: list[bool] = []
    for _ in range(n_levels):
        squeezes.append(sum(squeezes) < MAX_SQUEEZES and draw(axis("squeeze", SQUEEZE)))
    divisor = 2 ** sum(squeezes)
    sides = [s for s in SIDES if s % divisor == 0]
    shape = (_input_channels(draw(sizes(1, 2, name="channels")), squeezes), draw(axis("height", sides)),
             draw(axis("width", sides)))
    seed = draw(SEEDS)
    flows, priors = [], []
    for i, (kind, squeeze) in enumerate(zip(kinds, squeezes)):
        level, out = _level(kind, shape, squeeze, seed, i)
        flows.append(level)
        if with_prior and i < n_levels - 1:
            priors.append(_prior(out, seed, i))
        shape = (out[0] // 2,) + out[1:]
    return multiscale_spec(flows, priors if with_prior else None)


@register_specs("multiscale")
def _multiscale_specs():
    return _multiscale()


declare_axes("multiscale", levels=LEVELS, split_prior=SPLIT_PRIOR, level=LEVEL_KINDS, squeeze=SQUEEZE, height=SIDES,
             width=SIDES, channels=(1, 2))


# ----------------------------------------------------------------------------- the learned-prior split

# kind -> strategy of its specs that have at least one learned-prior split (module docstring)
PRIOR_SPECS: dict[str, Callable[[], st.SearchStrategy]] = {
    "multiscale": lambda: _multiscale(levels=(2, 3), split_prior=(True,)),
}


def _has_split_prior(kind: str) -> bool:
    return "split_prior" in namespace.kind(kind).extras


@prop("split_prior_matches_reference", requires=["white_box"], kinds=_has_split_prior)
def split_prior_matches_reference(ctx: CheckContext) -> None:
    """Glow's learned-prior split on its own, for a spec with at least one split, against the same
    levels with the plain split (the implementation's multiscale flow of
    reference.multiscale.without_priors): the implementation's log|det| is the plain split's plus,
    for every split, the reference's log|det| of the prior (−Σ log σ(h), slogdet of the prior's
    Jacobian); the latent of the last level is the plain split's (the prior leaves the kept half
    alone); each split's latent is the reference's z′ = (z_out − μ(h))·exp(−log σ(h)), with μ and
    log σ computed from the kept half h."""
    spec = ctx.draw(PRIOR_SPECS[ctx.kind](), "spec")
    x = ctx.draw_input(spec)
    view = namespace.kind(spec.kind).extras["split_prior"](spec)
    z, logdet = ctx.adapter.forward(ctx.load(spec), x)
    z_plain, logdet_plain = ctx.adapter.forward(ctx.load(without_priors(view)), x)
    splits = [split_terms(view, sample) for sample in x]
    size, start = event_size(spec), 0
    for i in range(len(splits[0])):
        expected = np.stack([terms[i].latent.ravel() for terms in splits])
        stop = start + expected.shape[1]
        ctx.assert_close(z[:, start:stop], expected, "forward", size, f"latent of split {i} (through its prior)")
        start = stop
    ctx.assert_close(z[:, start:], z_plain[:, start:], "forward", size, "latent of the last level vs the plain split's")
    kappa = max(condition_number(np.stack([terms[i].jacobian for terms in splits])) for i in range(len(splits[0])))
    priors = np.array([sum(split.logdet for split in terms) for terms in splits])
    ctx.assert_close(logdet, logdet_plain + priors, "logdet", size,
                     "log|det| vs the plain split's plus the reference's −Σ log σ of every prior", kappa)
