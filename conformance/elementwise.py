"""Spec strategies for the elementwise kinds (affine, sigmoid, logit), and the event shapes and
log-scale regimes that the per-entry and per-channel kinds share.

Axes (:mod:`.covering`):

* ``layout``: a vector ``[D]`` (axis ``size``) or an image ``[C, H, W]`` (axes ``channels``,
  ``height``, ``width``), odd and even sizes alike (:func:`event_shapes`); for the kinds that act
  per channel (actnorm, the permutations) also a sequence ``[C, L]`` (``channels``, ``length``,
  :data:`CHANNEL_LAYOUTS`): the reference takes events of any rank, and a per-channel broadcast
  written for ranks 1 and 3 only (``len(shape) ^ 1`` for ``len(shape) − 1`` agrees at both) is
  wrong at rank 2, while a per-entry map has no axis to get wrong;
* ``regime`` of a log-scale parameter (:func:`with_log_scales`): ``init`` keeps the reference's
  N(0, 0.5²) values; ``large`` and ``small`` draw every log-scale uniformly from [6, 10] and
  [−10, −6], far from initialisation: scales up to e^±10, where a log-det formed as the log of a
  product of scales overflows (Σ s > 88.7) or underflows float32 from D ≈ 11 entries on. Within a
  regime all log-scales share one sign and lie within 4 of each other, so the Jacobian's condition
  number e^(max s − min s) stays below e⁴ ≈ 55, under the float32 cap of
  :data:`~.tolerances.MAX_CONDITION`. The offset is redrawn with them, N(0, 0.5²) on the scale of
  the contracted side (z = x·e^s + shift with shift of order min(1, e^s)): an offset of order 1 on a
  map that contracts by e^−10 would make f(x) of order-1 x, or f⁻¹(z) of order-1 z, a point within
  e^−10 of that offset, which float32 cannot tell from it (the error of any float32 implementation,
  inherent in rounding the point and the offset, would exceed every tolerance);
* ``alpha`` of the logit transform.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st

from flowspec.spec import FlowSpec

from .covering import axis, declare_axes, salt
from .seeding import rng
from .strategies import SEEDS, config, from_configs, register_specs, sizes

LAYOUTS = ("vector", "image")
CHANNEL_LAYOUTS = ("vector", "sequence", "image")  # kinds that act per channel (module docstring)
LOG_SCALE_REGIMES: dict[str, tuple[float, float] | None] = {"init": None, "large": (6.0, 10.0), "small": (-10.0, -6.0)}
LOGIT_ALPHAS = (0.0, 1e-6, 0.05)


def event_shapes(vector: tuple[int, int] = (1, 6), channels: tuple[int, int] = (1, 3),
                 sides: tuple[int, int] = (1, 3), layouts: tuple[str, ...] = LAYOUTS) -> st.SearchStrategy:
    """Shapes ``[D]`` with D in ``vector``, ``[C, L]`` (a sequence of length L in ``vector``: the
    reference takes events of any rank, channels first) or ``[C, H, W]`` with C in ``channels`` and
    H, W in ``sides``; the layout and every size are axes (:func:`shape_axes`)."""
    vectors = st.tuples(sizes(*vector, name="size")).map(list)
    sequences = st.tuples(sizes(*channels, name="channels"), sizes(*vector, name="length")).map(list)
    images = st.tuples(sizes(*channels, name="channels"), sizes(*sides, name="height"),
                       sizes(*sides, name="width")).map(list)
    by_layout = {"vector": vectors, "sequence": sequences, "image": images}
    return axis("layout", layouts).flatmap(by_layout.__getitem__)


def shape_axes(vector: tuple[int, int] = (1, 6), channels: tuple[int, int] = (1, 3),
               sides: tuple[int, int] = (1, 3), layouts: tuple[str, ...] = LAYOUTS) -> dict[str, Any]:
    """The axes :func:`event_shapes` draws, for :func:`~.covering.declare_axes`."""
    span = lambda bounds: range(bounds[0], bounds[1] + 1)  # noqa: E731
    out = {"layout": layouts, "size": span(vector), "channels": span(channels), "height": span(sides),
           "width": span(sides)}
    return {**out, "length": span(vector)} if "sequence" in layouts else out


SHAPES = event_shapes()
CHANNEL_SHAPES = event_shapes(layouts=CHANNEL_LAYOUTS)


def _set_log_scales(spec: FlowSpec, regime: str, seed: int, offset: str, in_output_units: bool) -> FlowSpec:
    bounds = LOG_SCALE_REGIMES[regime]
    if bounds is None:
        return spec
    gen = rng("log-scale regime", salt(), seed)
    log_scale = gen.uniform(*bounds, np.shape(spec.params["log_scale"]))
    # the offset in output units is of order min(1, e^s) (module docstring)
    unit = np.minimum(1.0, np.exp(log_scale)) * (1.0 if in_output_units else np.exp(-log_scale))
    values = {"log_scale": log_scale, offset: unit * gen.normal(0.0, 0.5, np.shape(spec.params[offset]))}
    return FlowSpec(spec.kind, spec.config, {**spec.params, **values})


def with_log_scales(specs: st.SearchStrategy, offset: str = "shift", in_output_units: bool = True) -> st.SearchStrategy:
    """``specs`` with ``log_scale`` and the offset param ``offset`` (added after scaling when
    ``in_output_units``, before it otherwise) redrawn in the drawn ``regime`` (module docstring)."""
    return st.builds(_set_log_scales, specs, axis("regime", tuple(LOG_SCALE_REGIMES)), SEEDS, st.just(offset),
                     st.just(in_output_units))


@register_specs("elementwise_affine")
def _affine():
    return with_log_scales(from_configs("elementwise_affine", config(shape=SHAPES)))


# σ saturates: σ'(0)/σ'(x) exceeds the float32 condition cap (100) once |x| > 6, so that draws at
# larger magnitudes would be rejected by the conditioned checks, and beyond |x| ≈ 3 a float32 z no
# longer determines x to the round-trip tolerance. Its value checks therefore stop at 3 too.
@register_specs("sigmoid", large=(0.3, 1.0, 3.0))
def _sigmoid():
    return from_configs("sigmoid", config(shape=SHAPES))


@register_specs("logit")
def _logit():
    return from_configs("logit", config(shape=SHAPES, alpha=axis("alpha", LOGIT_ALPHAS)))


declare_axes(("elementwise_affine", "sigmoid", "logit"), **shape_axes())
declare_axes("elementwise_affine", regime=tuple(LOG_SCALE_REGIMES))
declare_axes("logit", alpha=LOGIT_ALPHAS)
