"""Spec strategies of the convolutional autoregressive kinds (``pixelcnn_autoregressive``,
``causal_autoregressive``).

Their structure (forbidden entries exactly zero, white-box through the implementation's autograd
Jacobian and black-box through one-sided differences) is checked by :mod:`.structure` from the
kinds' declared ``forbidden`` matrices; the log-det, values, inverses (sequential passes) and
gradients by the generic properties. Sizes are SMALL (the reference's autograd Jacobians and its
entry-by-entry inverse are cheap): C·H·W ≤ 18 and C·T ≤ 15.

Axes (:mod:`.covering`):

* ``transform`` (``affine``, ``spline``); for the affine transform the log-scale bound
  ``scale_factor`` (0.5, 1, 2); for the spline ``bins`` K = 1…5 and ``bound`` (1 or 3:
  inputs of magnitude 0.1…100 land inside, on and outside the spline's interval);
* pixelcnn: ``channels`` C = 1…2, ``height`` and ``width`` 1…3, ``kernel_size`` 1, 3, 5 (a 5×5
  kernel reaches beyond a 3×3 image), ``hidden_channels`` per group 1…3;
* causal: ``channels`` C = 1…3, ``steps`` T = 1…5, ``kernel_size`` 1…3, ``hidden_channels`` 1…6;
* ``depth`` (hidden layers: 1…2 for pixelcnn, 1…3 for causal, whose dilations 1, 2, 4, 8 then reach
  past T), ``activation``;
* ``regime`` of the parameters: ``init`` (the reference's generic weights) or ``strong``, the last
  layer scaled by :data:`STRONG_FACTOR`: large shifts and log-scales (affine), sharply varying bin
  widths, heights and derivatives (spline).
"""
from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from flowspec.reference.conv_autoregressive import ACTIVATIONS, TRANSFORMS
from flowspec.spec import FlowSpec

from .covering import axis, declare_axes
from .strategies import from_configs, register_specs, scaled_last_layer, sizes

KINDS = ("pixelcnn_autoregressive", "causal_autoregressive")
PIXEL_KERNELS = (1, 3, 5)
CAUSAL_KERNELS = (1, 2, 3)
PIXEL_DEPTHS = (1, 2)
CAUSAL_DEPTHS = (1, 2, 3)
SCALE_FACTORS = (0.5, 1.0, 2.0)
BOUNDS = (1.0, 3.0)
REGIMES = ("init", "strong")
STRONG_FACTOR = 3.0


def _transform(draw: Any) -> dict[str, Any]:
    """The transform and, for the spline, its bins and bound."""
    transform = draw(axis("transform", TRANSFORMS))
    if transform == "affine":
        return {"transform": transform, "scale_factor": draw(axis("scale_factor", SCALE_FACTORS))}
    return {"transform": transform, "bins": draw(sizes(1, 5, name="bins")), "bound": draw(axis("bound", BOUNDS))}


@st.composite
def pixelcnn_configs(draw: Any) -> dict[str, Any]:
    shape = [draw(sizes(1, 2, name="channels")), draw(sizes(1, 3, name="height")), draw(sizes(1, 3, name="width"))]
    return {"shape": shape, **_transform(draw), "kernel_size": draw(axis("kernel_size", PIXEL_KERNELS)),
            "hidden_channels": draw(sizes(1, 3, name="hidden_channels")), "depth": draw(axis("depth", PIXEL_DEPTHS)),
            "activation": draw(axis("activation", sorted(ACTIVATIONS)))}


@st.composite
def causal_configs(draw: Any) -> dict[str, Any]:
    shape = [draw(sizes(1, 3, name="channels")), draw(sizes(1, 5, name="steps"))]
    return {"shape": shape, **_transform(draw), "kernel_size": draw(axis("kernel_size", CAUSAL_KERNELS)),
            "hidden_channels": draw(sizes(1, 6, name="hidden_channels")), "depth": draw(axis("depth", CAUSAL_DEPTHS)),
            "activation": draw(axis("activation", sorted(ACTIVATIONS)))}


def in_regime(spec: FlowSpec, regime: str) -> FlowSpec:
    """``spec`` with the conditioner's last layer scaled by :data:`STRONG_FACTOR` in the ``strong`` regime."""
    return spec if regime == "init" else scaled_last_layer(spec, STRONG_FACTOR)


def _specs(kind: str, configs: st.SearchStrategy) -> st.SearchStrategy:
    return st.builds(in_regime, from_configs(kind, configs), axis("regime", REGIMES))


@register_specs("pixelcnn_autoregressive")
def _pixelcnn():
    return _specs("pixelcnn_autoregressive", pixelcnn_configs())


@register_specs("causal_autoregressive")
def _causal():
    return _specs("causal_autoregressive", causal_configs())


declare_axes(KINDS, transform=TRANSFORMS, scale_factor=SCALE_FACTORS, bins=range(1, 6), bound=BOUNDS,
             activation=sorted(ACTIVATIONS), regime=REGIMES)
declare_axes("pixelcnn_autoregressive", channels=range(1, 3), height=range(1, 4), width=range(1, 4),
             kernel_size=PIXEL_KERNELS, hidden_channels=range(1, 4), depth=PIXEL_DEPTHS)
declare_axes("causal_autoregressive", channels=range(1, 4), steps=range(1, 6), kernel_size=CAUSAL_KERNELS,
             hidden_channels=range(1, 7), depth=CAUSAL_DEPTHS)
