"""Spec strategies for the Glow model (``glow``); its learned-prior split is held to the reference by
:func:`~.multiscale.split_prior_matches_reference`, the model end to end by the generic properties.

Axes: ``levels`` L (1 or 2), ``steps`` K (1 or 2), ``coupling`` (affine, additive), ``channels``
C (1 or 2), ``height`` and ``width`` (2 or 4, among the sides that L squeezes can halve: 4 for
L = 2), the conditioners' ``hidden`` channels (1…3), ``depth`` (1 or 2), ``activation`` and
``scale_factor``. So D = C·H·W ≤ 32. **Cost.** The reference differentiates its log-det (slogdet
of a D-column autograd Jacobian) through every layer; that gradient costs about 1 s per pair of
samples for a two-level model of the smallest size (C = 1, 4×4, K = 1, depth 1) and grows with C,
K and depth, so the generic properties' strategy keeps two-level models at that size and depth 1
throughout (``glow``'s conformance run takes about 35 s of one core, 40 % of it in
``grad_matches_reference``); the learned-prior property, which needs no Jacobian of the model,
draws two- and three-level models (sides 4 and 8) with every C, K and depth.

**Parameters.** Every child starts from its kind's generic random parameters
(:func:`flowspec.reference.glow.glow_params`, conditioners' last layers non-zero, ActNorms marked
initialised) and is then moved to the scale of a Glow near its initialisation (:func:`near_init`):
ActNorm log-scales and the 1×1 convolutions' log-diagonals ×0.2, their strict triangles ×0.3, every
conditioner's last layer (couplings and priors) ×0.25. Composing up to five layers of generic
parameters gives Jacobian condition numbers of 10³–10⁹ (measured at these sizes), beyond the
float32 limit of 10² at which a point is not compared at all; at this scale they stay below 25 for
inputs of magnitude ≤ 10 (median 3) and reach a few hundred only at magnitude 100, where float32
draws beyond the limit are redrawn; the priors' latents still move by 10⁻² or more (median 0.25)
when the kept half is replaced by zeros, far above every tolerance.

**ActNorm's data-dependent initialisation** is not redone by these properties, as for
``multiscale``: specs carry initialised ActNorms (``initialized = 1``), a flow loaded from them never
re-initialises, and the modes, checkpoint and conversion properties check exactly that (a fresh
target in ``state_round_trip`` is Glow's own initialisation, replaced by the checkpoint). The rule
itself is actnorm's ``data_init_from_fresh``; that a fresh Glow model initialises every ActNorm from
its own input on the first training batch is tested in ``tests/test_glow.py``.
"""
from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from flowspec import reference
from flowspec.reference.coupling import ACTIVATIONS
from flowspec.reference.glow import COUPLINGS
from flowspec.spec import FlowSpec

from .covering import axis, declare_axes, salt
from .multiscale import PRIOR_SPECS
from .seeding import rng
from .strategies import SEEDS, register_specs, scaled_last_layer, sizes

LEVELS = (1, 2)
CHANNELS = (1, 2)
STEPS = (1, 2)
SIDES = (2, 4)
# The learned-prior property needs no Jacobian of the model, so it also draws three levels (H = W = 8):
# with two, ``levels - 1`` priors is one prior, as ``levels // 2`` would be.
PRIOR_LEVELS = (2, 3)
PRIOR_SIDES = (4, 8)
DEPTHS = (1, 2)
SCALE_FACTORS = (0.5, 1.0, 2.0)
LOG_SCALE_FACTOR = 0.2  # ActNorm log-scales, 1×1 convolutions' log-diagonals
TRIANGLE_FACTOR = 0.3  # 1×1 convolutions' strict triangles
LAST_LAYER_FACTOR = 0.25  # every conditioner's last layer


def near_init(spec: FlowSpec) -> FlowSpec:
    """``spec`` with every child's parameters scaled as in the module docstring."""
    if spec.kind in ("glow", "sequential"):
        return FlowSpec(spec.kind, spec.config, {k: near_init(v) for k, v in spec.params.items()})
    if spec.kind.endswith("_coupling"):
        return scaled_last_layer(spec, LAST_LAYER_FACTOR)
    params = dict(spec.params)
    if spec.kind == "actnorm":
        params["log_scale"] = LOG_SCALE_FACTOR * params["log_scale"]
    elif spec.kind == "conv1x1_lu":
        params.update(lower=TRIANGLE_FACTOR * params["lower"], upper=TRIANGLE_FACTOR * params["upper"],
                      log_s=LOG_SCALE_FACTOR * params["log_s"])
    return FlowSpec(spec.kind, spec.config, params)


@st.composite
def _glow(draw: Any, levels: tuple[int, ...] = LEVELS, small: bool = True,
          sides: tuple[int, ...] = SIDES) -> FlowSpec:
    """Glow specs (module docstring); ``small``: depth 1, and C = 1, K = 1 for two levels."""
    n_levels = draw(axis("levels", levels))
    sides = [s for s in sides if s % 2 ** n_levels == 0]
    full = not small or n_levels == 1
    config = {
        "shape": [draw(axis("channels", CHANNELS if full else CHANNELS[:1])), draw(axis("height", sides)),
                  draw(axis("width", sides))],
        "levels": n_levels, "steps": draw(axis("steps", STEPS if full else STEPS[:1])),
        "hidden": draw(sizes(1, 3, name="hidden")), "coupling": draw(axis("coupling", COUPLINGS)),
        "depth": draw(axis("depth", DEPTHS[:1] if small else DEPTHS)),
        "activation": draw(axis("activation", sorted(ACTIVATIONS))),
        "scale_factor": draw(axis("scale_factor", SCALE_FACTORS)),
    }
    return near_init(reference.init_spec("glow", config, rng("glow params", salt(), draw(SEEDS))))


@register_specs("glow")
def _glow_specs():
    return _glow()


PRIOR_SPECS["glow"] = lambda: _glow(levels=PRIOR_LEVELS, small=False, sides=PRIOR_SIDES)

declare_axes("glow", levels=sorted({*LEVELS, *PRIOR_LEVELS}), steps=STEPS, coupling=COUPLINGS, channels=CHANNELS,
             height=sorted({*SIDES, *PRIOR_SIDES}), width=sorted({*SIDES, *PRIOR_SIDES}),
             hidden=range(1, 4), depth=DEPTHS, activation=sorted(ACTIVATIONS), scale_factor=SCALE_FACTORS)
