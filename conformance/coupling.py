"""Spec strategies and the structural property of the coupling kinds (additive and affine coupling).

Axes (:mod:`.covering`), drawn in this order so that a pinned value is honoured where another
choice depends on it:

* ``conditioner_mask``: the conditioner (``mlp``, ``conv`` or ``attention``) and the mask
  (``channel`` or ``checkerboard``) as one axis of six pairs, so that every run meets each pair (a
  conv or attention conditioner on a checkerboard among them) rather than only each value; image
  conditioners need an image, so only an MLP draws the ``layout`` (``vector`` of D = 2…8 entries,
  axis ``size``, or ``image``); then ``parity``;
* image sizes C, H = 1…3 and W = 1…4 (axes ``channels``, ``height``, ``width``; a channel mask
  needs C ≥ 2, a checkerboard H·W ≥ 2), so checkerboards on images of every width, odd and even,
  meet the mlp and conv conditioners (D ≤ 36 keeps the reference's Jacobians of a conv conditioner
  cheap); the attention conditioner's images are smaller, C ≤ 2, H ≤ 2 and W = 2…3 on the same axes
  (D ≤ 12, at least two positions to attend over): the reference's autograd Jacobian costs one
  backward pass through every block per entry, and the gradient of its log-det differentiates those
  passes again;
* contexts: ``context_dim`` (0 or 2; MLP conditioners only) and, where the caller asks for image
  contexts, ``context_channels`` (0 or 2; conv and attention conditioners: a context of shape
  (2, H, W));
* the conditioner's size: ``hidden`` width (1…8) and ``depth`` (1 or 2 hidden layers) for mlp and
  conv; for attention ``attention_hidden`` (4 or 8 channels: the layer norm over the channels of
  one position is steep where they nearly agree, which two channels often do), ``blocks`` (1 or 2)
  and ``heads`` (1 or 2, dividing the channels); then ``activation`` and, for affine coupling,
  ``scale_factor``. Every config writes every key, at its default where the conditioner does not
  read it;
* ``regime`` of the parameters: ``init`` (the reference's generic weights) or ``large``, the last
  layer scaled by 8: raw scales far beyond tanh's linear range (s = scale_factor·tanh(s_raw)
  saturates at ±scale_factor) and large shifts.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st

from flowspec.reference.coupling import (
    ACTIVATIONS, CONDITIONERS, DEFAULTS, IMAGE_CONDITIONERS, MASKS, parse_config, unchanged_mask,
)
from flowspec.registry import REAL
from flowspec.spec import FlowSpec

from . import finite_diff
from .covering import axis, declare_axes
from .property import CheckContext, prop
from .strategies import from_configs, register_specs, scaled_last_layer, sizes

KINDS = ("additive_coupling", "affine_coupling")
CONDITIONER_MASKS = tuple(f"{c}/{m}" for c in CONDITIONERS for m in MASKS)
LAYOUTS = ("vector", "image")
PARITIES = (0, 1)
CONTEXT_DIMS = (0, 2)
CONTEXT_CHANNELS = (0, 2)
DEPTHS = (1, 2)
ATTENTION_HIDDEN = (4, 8)
BLOCKS = (1, 2)
HEADS = (1, 2)
SCALE_FACTORS = (0.5, 1.0, 2.0)
REGIMES = ("init", "large")
RAW_FACTOR = 8.0  # the large regime's factor on the conditioner's last layer
IMAGE_LIMITS = {"mlp": (3, 3, 4), "conv": (3, 3, 4), "attention": (2, 2, 3)}  # the largest C, H, W drawn
UNREAD = {key: DEFAULTS[key] for key in ("depth", "blocks", "heads")}  # what a conditioner leaves at its default


def _network(draw: Any, affine: bool, conditioner: str) -> dict[str, Any]:
    """Conditioner size, activation and (affine) scale factor (every key written)."""
    if conditioner == "attention":
        net = {**UNREAD, "hidden": draw(axis("attention_hidden", ATTENTION_HIDDEN)),
               "blocks": draw(axis("blocks", BLOCKS)), "heads": draw(axis("heads", HEADS))}
    else:
        net = {**UNREAD, "hidden": draw(sizes(1, 8, name="hidden")), "depth": draw(axis("depth", DEPTHS))}
    net["activation"] = draw(axis("activation", sorted(ACTIVATIONS)))
    if affine:
        net["scale_factor"] = draw(axis("scale_factor", SCALE_FACTORS))
    return net


def _image_shape(draw: Any, mask: str, conditioner: str) -> list[int]:
    """C, H, W up to the conditioner's :data:`IMAGE_LIMITS` that the mask can split (C ≥ 2 for
    channels, H·W ≥ 2 for a checkerboard and for attention)."""
    c_max, h_max, w_max = IMAGE_LIMITS[conditioner]
    channels = draw(sizes(2 if mask == "channel" else 1, c_max, name="channels"))
    height = draw(sizes(1, h_max, name="height"))
    needs_two = (mask == "checkerboard" or conditioner == "attention") and height == 1
    width = draw(sizes(2 if needs_two else 1, w_max, name="width"))
    return [channels, height, width]


def _contexts(draw: Any, conditioner: str, image_contexts: bool) -> dict[str, int]:
    """``context_dim`` (mlp) and ``context_channels`` (image conditioners, if ``image_contexts``)."""
    return {
        "context_dim": draw(axis("context_dim", CONTEXT_DIMS)) if conditioner == "mlp" else 0,
        "context_channels": (draw(axis("context_channels", CONTEXT_CHANNELS))
                             if image_contexts and conditioner in IMAGE_CONDITIONERS else 0),
    }


@st.composite
def layer_configs(draw: Any, affine: bool, image_contexts: bool = False) -> dict[str, Any]:
    """Configs of a coupling kind on vectors or images (module docstring). ``image_contexts``: draw
    ``context_channels`` for the image conditioners (a kind whose registry entry gives their context
    shape, :attr:`flowspec.reference.coupling.CouplingConfig.context_shape`)."""
    conditioner, mask = draw(axis("conditioner_mask", CONDITIONER_MASKS)).split("/")
    layout = "image" if conditioner in IMAGE_CONDITIONERS else draw(axis("layout", LAYOUTS))
    parity = draw(axis("parity", PARITIES))
    shape = _image_shape(draw, mask, conditioner) if layout == "image" else [draw(sizes(2, 8, name="size"))]
    return {"shape": shape, "mask": mask, "parity": parity, "conditioner": conditioner,
            **_contexts(draw, conditioner, image_contexts), **_network(draw, affine, conditioner)}


@st.composite
def _vector_configs(draw: Any, affine: bool, d: int, context_dim: int) -> dict[str, Any]:
    return {"shape": [d], "mask": draw(axis("mask", MASKS)), "parity": draw(axis("parity", PARITIES)),
            "conditioner": "mlp", "context_dim": context_dim, "context_channels": 0, **_network(draw, affine, "mlp")}


def child_configs(shape: list[int], context_dim: int, affine: bool) -> st.SearchStrategy | None:
    """Configs of a layer on vectors of ``shape`` ``[D]`` for sequences (None for D < 2)."""
    (d,) = shape
    return None if d < 2 else _vector_configs(affine, d, context_dim)


def in_regime(spec: FlowSpec, regime: str) -> FlowSpec:
    """``spec`` with its conditioner's last layer scaled by :data:`RAW_FACTOR` in the ``large`` regime."""
    return spec if regime == "init" else scaled_last_layer(spec, RAW_FACTOR)


def _specs(kind: str) -> st.SearchStrategy:
    configs = layer_configs(kind == "affine_coupling", image_contexts=True)
    return st.builds(in_regime, from_configs(kind, configs), axis("regime", REGIMES))


@register_specs("additive_coupling")
def _additive():
    return _specs("additive_coupling")


@register_specs("affine_coupling")
def _affine():
    return _specs("affine_coupling")


declare_axes(KINDS, conditioner_mask=CONDITIONER_MASKS, layout=LAYOUTS, parity=PARITIES, size=range(2, 9),
             channels=range(1, 4), height=range(1, 4), width=range(1, 5), context_dim=CONTEXT_DIMS,
             context_channels=CONTEXT_CHANNELS, hidden=range(1, 9), depth=DEPTHS, attention_hidden=ATTENTION_HIDDEN,
             blocks=BLOCKS, heads=HEADS, activation=sorted(ACTIVATIONS), regime=REGIMES)
declare_axes("affine_coupling", scale_factor=SCALE_FACTORS)


@prop("coupling_jacobian_structure", requires=["black_box"], kinds=KINDS)
def coupling_jacobian_structure(ctx: CheckContext) -> None:
    """In the mask's split the Jacobian is block lower-triangular: the unchanged entries pass through
    (identity rows), and a transformed entry depends on no other transformed entry (a diagonal block,
    the identity for additive coupling). Checked on finite differences of the implementation's forward.
    """
    spec = ctx.draw_spec()
    x, c = ctx.draw_input(spec, batch=2), ctx.draw_context(spec, batch=2)
    flow = ctx.instantiate(spec)
    cfg = parse_config(spec.config, affine=spec.kind == "affine_coupling")
    keep = unchanged_mask(cfg.shape, cfg.mask, cfg.parity).ravel()
    size = keep.size
    identity = np.eye(size)
    jacobians = finite_diff.per_sample_jacobians(lambda p, cc: ctx.adapter.forward(flow, p, cc)[0], x, c,
                                                 ctx.dtype, REAL)
    for jac in jacobians:
        ctx.assert_close(jac[keep], identity[keep], "fd_jacobian", size, "∂z/∂x on the unchanged rows")
        block = jac[np.ix_(~keep, ~keep)]
        expected = np.diag(np.diag(block)) if cfg.scale_factor is not None else np.eye(len(block))
        ctx.assert_close(block, expected, "fd_jacobian", size, "∂z_t/∂x_t of the transformed entries")
