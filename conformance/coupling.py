"""Spec strategies and the structural property of the coupling kinds (additive and affine coupling).

Vectors of D ≤ 8 entries (MLP conditioner, with or without a context of 2 entries) and images of
C, H, W ≤ 4 (conv or MLP conditioner); both masks, both parities, hidden width ≤ 8, one or two
hidden layers, every activation.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st

from flowspec.reference.coupling import ACTIVATIONS, MASKS, parse_config, unchanged_mask
from flowspec.registry import REAL

from . import finite_diff
from .property import CheckContext, prop
from .strategies import from_configs, register_specs, sizes

KINDS = ("additive_coupling", "affine_coupling")
CONTEXT_DIMS = st.sampled_from([0, 2])


def _network(draw: Any, affine: bool) -> dict[str, Any]:
    """Conditioner size, activation and (affine) scale factor."""
    net = {
        "hidden": draw(sizes(1, 8)), "depth": draw(sizes(1, 2)),
        "activation": draw(st.sampled_from(sorted(ACTIVATIONS))),
    }
    if affine:
        net["scale_factor"] = draw(st.sampled_from([0.5, 1.0, 2.0]))
    return net


@st.composite
def vector_configs(draw: Any, affine: bool, size: st.SearchStrategy = sizes(2, 8),
                   context_dims: st.SearchStrategy = CONTEXT_DIMS) -> dict[str, Any]:
    """Configs on vectors (MLP conditioner)."""
    return {
        "shape": [draw(size)], "mask": draw(st.sampled_from(MASKS)), "parity": draw(st.sampled_from([0, 1])),
        "conditioner": "mlp", "context_dim": draw(context_dims), **_network(draw, affine),
    }


@st.composite
def image_configs(draw: Any, affine: bool) -> dict[str, Any]:
    """Configs on images (C, H, W ≤ 4) with a conv or an MLP conditioner."""
    mask = draw(st.sampled_from(MASKS))
    channels = draw(sizes(2 if mask == "channel" else 1, 4))
    height = draw(sizes(1, 4))
    width = draw(sizes(2 if mask == "checkerboard" and height == 1 else 1, 4))
    conditioner = draw(st.sampled_from(["conv", "mlp"]))
    return {
        "shape": [channels, height, width], "mask": mask, "parity": draw(st.sampled_from([0, 1])),
        "conditioner": conditioner, "context_dim": draw(CONTEXT_DIMS) if conditioner == "mlp" else 0,
        **_network(draw, affine),
    }


def child_configs(shape: list[int], context_dim: int, affine: bool) -> st.SearchStrategy | None:
    """Configs of a layer on vectors of ``shape`` ``[D]`` for sequences (None for D < 2)."""
    (d,) = shape
    return None if d < 2 else vector_configs(affine, st.just(d), st.just(context_dim))


@register_specs("additive_coupling")
def _additive():
    return from_configs("additive_coupling", st.one_of(vector_configs(False), image_configs(False)))


@register_specs("affine_coupling")
def _affine():
    return from_configs("affine_coupling", st.one_of(vector_configs(True), image_configs(True)))


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
    for b in range(x.shape[0]):
        c_b = None if c is None else c[b:b + 1]

        def f(points: np.ndarray, c_b=c_b) -> np.ndarray:
            return ctx.adapter.forward(flow, points, None if c_b is None else np.repeat(c_b, len(points), 0))[0]

        jac = finite_diff.jacobian(f, x[b:b + 1], ctx.dtype, REAL)[0]
        ctx.assert_close(jac[keep], identity[keep], "fd_jacobian", size, "∂z/∂x on the unchanged rows")
        block = jac[np.ix_(~keep, ~keep)]
        expected = np.diag(np.diag(block)) if cfg.scale_factor is not None else np.eye(len(block))
        ctx.assert_close(block, expected, "fd_jacobian", size, "∂z_t/∂x_t of the transformed entries")
