"""Spec strategies for actnorm and its data-dependent initialisation property.

Shapes and log-scale regimes are those of :mod:`.elementwise` (axes ``layout``, sizes, ``regime``:
per-channel log-scales at initialisation or far from it, e^±10, with the bias on the scale
of the contracted side).
"""
from __future__ import annotations

import numpy as np

from flowspec import reference
from flowspec.reference.actnorm import actnorm_init
from flowspec.spec import FlowSpec

from .conventions import actnorm_initialised
from .covering import declare_axes
from .elementwise import CHANNEL_LAYOUTS, CHANNEL_SHAPES, LOG_SCALE_REGIMES, shape_axes, with_log_scales
from .finite_diff import ROUND
from .property import CheckContext, prop
from .strategies import config, event_size, from_configs, register_specs


@register_specs("actnorm")
def _actnorm():
    return with_log_scales(from_configs("actnorm", config(shape=CHANNEL_SHAPES)), "bias", in_output_units=False)


declare_axes("actnorm", **shape_axes(layouts=CHANNEL_LAYOUTS), regime=tuple(LOG_SCALE_REGIMES))


@prop("actnorm_data_init", requires=["black_box", "initialize"], kinds=["actnorm"])
def actnorm_data_init(ctx: CheckContext) -> None:
    """After initialize(x), f(x) has per-channel mean 0 and variance 1 (divisor n, over the batch and
    the spatial positions; what a declared ActNorm convention's rule gives instead) and z and
    log|det| equal the reference's for the parameters of reference.actnorm.actnorm_init(x) (Glow
    Sec. 3.1)."""
    spec = ctx.draw_spec()
    x = ctx.draw_input(spec).astype(ROUND[ctx.dtype]).astype(np.float64)  # the values the flow sees
    expected = FlowSpec("actnorm", spec.config, actnorm_initialised(ctx, actnorm_init, x, spec.config))
    flow = ctx.instantiate(spec)
    ctx.adapter.call_hook(flow, "initialize", x)
    z, logdet = ctx.adapter.forward(flow, x)
    size = event_size(spec)
    per_channel = np.moveaxis(z, 1, 0).reshape(z.shape[1], -1)
    centred = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)
    centred = centred - centred.mean(axis=1, keepdims=True)
    variance = np.exp(2.0 * np.asarray(expected.params["log_scale"])) * (centred ** 2).mean(axis=1)
    ctx.assert_close(per_channel.mean(axis=1), np.zeros(z.shape[1]), "forward", size, "per-channel mean of z")
    rule_name = "the declared conventions' rule" if ctx.conventions else "1 by flowspec's rule"
    ctx.assert_close(per_channel.var(axis=1), variance, "forward", size, f"per-channel variance of z ({rule_name})")
    ctx.assert_close(z, reference.forward(expected, x), "forward", size, "z after initialisation")
    ctx.assert_close(logdet, reference.log_abs_det(expected, x), "logdet", size, "log|det| after initialisation")
