"""Spec strategies and the family property of the masked autoregressive kinds (``maf``, ``iaf``).

Axes (:mod:`.covering`):

* ``dim``: D = 1 … 6 (D = 1: outputs constant or reading only the context);
* ``order``: ``natural``, ``reversed`` or ``random`` (a seeded permutation, written into the config
  as a list of ints);
* ``hidden``: the MADE's hidden widths, ``[1]`` and ``[3]`` (below D − 1 for larger D: some
  connections are then absent by construction), ``[8]`` and ``[5, 7]`` (two layers, widths not
  divisible by most D);
* ``activation``, ``context_dim`` (0 or 2);
* ``regime`` of the parameters: ``init`` (the reference's generic weights) or ``large``: the
  MADE's last layer scaled per block, the shift rows (μ) by :data:`SHIFT_FACTOR` = 8 (large shifts,
  as coupling's large regime) and the log-scale rows (α) by :data:`LOG_SCALE_FACTOR` = 2.

**Why the log-scales are tamed.** α is unbounded (MAF eq. (4)) and, with relu or elu, grows
linearly with the network's input; the sequential direction (iaf's forward, maf's inverse) feeds
the output back in, so z_{k+1} ≈ z_k·e^{c·|z_k|} and the map leaves the float range within a few
positions (measured on the reference in float64: 1–2 % of generic relu/elu specs at D = 6 and input
magnitude 3 overflow, 5–8 % with the shifts ×8). That is the kind's true map, not an implementation
error, so the strategies keep their specs where it is finite: :func:`tamed` bounds |α| by interval
arithmetic through the sequential direction over every input and latent with entries within
:data:`INPUT_BOUND` = 15 (5σ at the largest drawn magnitude, 3) and contexts within 5, and where
that bound exceeds :data:`MAX_LOG_SCALE` = 10 shrinks the α rows of the last layer by the largest
factor (bisection) that meets it. tanh specs are never changed (|α| ≤ Σ|w| + |b| whatever the
input); relu/elu specs at D ≥ 4 typically keep 0.4 of their α rows (the interval bound is loose).
For the same reason the round trips' input magnitudes are :data:`LARGE` = (0.3, 1, 3) rather than
up to 100 (``register_specs(kind, large=...)``, as sigmoid does).

The structure properties (forbidden entries exactly zero, no dead connections) come from
:mod:`.structure` through the kinds' registry extras ``forbidden`` / ``required``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st

from flowspec import made
from flowspec.reference.autoregressive import ACTIVATIONS, OUTPUTS_PER_DIM, parse_made
from flowspec.spec import FlowSpec

from .adapter import NotSupported
from .covering import axis, declare_axes, salt
from .generic import fd_jacobians
from .property import CheckContext, prop
from .seeding import rng
from .strategies import SEEDS, event_size, from_configs, register_specs, scaled_last_layer, sizes

KINDS = ("maf", "iaf")
ORDER_CHOICES = ("natural", "reversed", "random")
HIDDEN = ([1], [3], [8], [5, 7])
CONTEXT_DIMS = (0, 2)
REGIMES = ("init", "large")
SHIFT_FACTOR = 8.0  # the large regime's factor on the μ rows of the MADE's last layer
LOG_SCALE_FACTOR = 2.0  # ... and on its α rows
INPUT_BOUND = 15.0  # |entries| of inputs and latents the log-scale bound covers: 5σ at magnitude 3
CONTEXT_BOUND = 5.0  # ... and of contexts (N(0, 1) draws)
MAX_LOG_SCALE = 10.0  # the largest |α| the tamed specs reach there (e^10 ≈ 2·10⁴)
TAME_STEPS = 12
LARGE = (0.3, 1.0, 3.0)  # the round trips' input magnitudes (module docstring)
DUAL = {"maf": "iaf", "iaf": "maf"}


def order_value(choice: str, dim: int, seed: int) -> str | list[int]:
    """The config's ``order`` for an axis value: the name, or a seeded permutation for ``random``."""
    return made.random_order(dim, rng("order", salt(), seed)) if choice == "random" else choice


@st.composite
def made_configs(draw: Any) -> dict[str, Any]:
    """The MADE keys of a config (module docstring): also used by other MADE families."""
    dim = draw(sizes(1, 6, name="dim"))
    order = order_value(draw(axis("order", ORDER_CHOICES)), dim, draw(SEEDS))
    return {"dim": dim, "order": order, "hidden": list(draw(axis("hidden", HIDDEN))),
            "activation": draw(axis("activation", sorted(ACTIVATIONS))),
            "context_dim": draw(axis("context_dim", CONTEXT_DIMS))}


def _scaled(spec: FlowSpec, shift: float, log_scale: float) -> FlowSpec:
    """``spec`` with the μ rows of the MADE's last layer scaled by ``shift``, the α rows by ``log_scale``."""
    return scaled_last_layer(spec, np.repeat([shift, log_scale], spec.config["dim"]))


def _interval_net(spec: FlowSpec, masks: list[np.ndarray], activation: str, lo: np.ndarray,
                  hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounds ``(k, D)`` of the MADE's outputs over the box [lo, hi] of its inputs (interval
    arithmetic: the activations are monotone)."""
    act = ACTIVATIONS[activation]
    for i, mask in enumerate(masks):
        weight = spec.params[f"net.{2 * i}.weight"] * mask
        centre, radius = weight @ ((lo + hi) / 2) + spec.params[f"net.{2 * i}.bias"], np.abs(weight) @ ((hi - lo) / 2)
        lo, hi = centre - radius, centre + radius
        if i < len(masks) - 1:
            lo, hi = act(lo), act(hi)
    dim = len(lo) // OUTPUTS_PER_DIM
    return lo.reshape(OUTPUTS_PER_DIM, dim), hi.reshape(OUTPUTS_PER_DIM, dim)


def log_scale_bound(spec: FlowSpec) -> float:
    """An upper bound on |α| at every point either direction evaluates the MADE at, for inputs and
    latents with entries in [−:data:`INPUT_BOUND`, :data:`INPUT_BOUND`] and contexts in
    [−:data:`CONTEXT_BOUND`, :data:`CONTEXT_BOUND`]: interval arithmetic through the sequential
    direction, position by position (entry d's range is [−X, X] joined with that of
    x_d·e^α + μ over the bounds of μ_d, α_d)."""
    cfg = parse_made(spec.config)
    masks = cfg.masks(OUTPUTS_PER_DIM)
    context = np.full(cfg.context_dim, CONTEXT_BOUND)
    lo, hi = np.full(cfg.dim, -INPUT_BOUND), np.full(cfg.dim, INPUT_BOUND)
    worst = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        for d in cfg.order:
            (mu_lo, a_lo), (mu_hi, a_hi) = _interval_net(spec, masks, cfg.activation, np.concatenate([lo, -context]),
                                                         np.concatenate([hi, context]))
            worst = max(worst, float(np.max(np.abs([a_lo[d], a_hi[d]]))))
            reach = INPUT_BOUND * np.exp(a_hi[d])
            lo[d], hi[d] = min(-INPUT_BOUND, mu_lo[d] - reach), max(INPUT_BOUND, mu_hi[d] + reach)
    return worst if np.isfinite(worst) else np.inf


def tamed(spec: FlowSpec) -> FlowSpec:
    """``spec``, with the α rows of the last layer shrunk (by bisection on a factor in (0, 1]) where
    :func:`log_scale_bound` exceeds :data:`MAX_LOG_SCALE` (module docstring)."""
    if log_scale_bound(spec) <= MAX_LOG_SCALE:
        return spec
    low, high = 0.0, 1.0
    for _ in range(TAME_STEPS):
        mid = (low + high) / 2
        low, high = (mid, high) if log_scale_bound(_scaled(spec, 1.0, mid)) <= MAX_LOG_SCALE else (low, mid)
    return _scaled(spec, 1.0, low)


def in_regime(spec: FlowSpec, regime: str) -> FlowSpec:
    """``spec`` in ``regime`` (module docstring), tamed."""
    return tamed(spec if regime == "init" else _scaled(spec, SHIFT_FACTOR, LOG_SCALE_FACTOR))


def _specs(kind: str) -> st.SearchStrategy:
    return st.builds(in_regime, from_configs(kind, made_configs()), axis("regime", REGIMES))


@register_specs("maf", large=LARGE)
def _maf():
    return _specs("maf")


@register_specs("iaf", large=LARGE)
def _iaf():
    return _specs("iaf")


declare_axes(KINDS, dim=range(1, 7), order=ORDER_CHOICES, hidden=HIDDEN, activation=sorted(ACTIVATIONS),
             context_dim=CONTEXT_DIMS, regime=REGIMES)


def _require_shared_parameters(ctx: CheckContext, spec: FlowSpec, *flows: Any) -> None:
    """The duality holds between flows with the same parameters only: white-box both are loaded from
    the spec; black-box the adapter must take every parameter of the spec by its canonical name
    (:meth:`~.property.CheckContext.instantiate` then sets them). Otherwise the two flows are
    unrelated and the property is not supported (never failed)."""
    if ctx.white_box:
        return
    wanted = set(spec.flat_params())
    if not ctx.has("parameters") or any(not wanted <= set(ctx.adapter.parameters(f)) for f in flows):
        raise NotSupported(f"{ctx.adapter.name} cannot give the {spec.kind} and {DUAL[spec.kind]} flows the spec's "
                           "parameters by their canonical names: the duality needs shared parameters")


@prop("maf_iaf_duality", requires=["black_box"], kinds=KINDS)
def maf_iaf_duality(ctx: CheckContext) -> None:
    """``iaf`` is ``maf``'s inverse with the same parameters: for flows of both kinds built from one
    config and one parameter set (each instantiated as a black box and given the spec's parameters),
    the dual's forward undoes the checked kind's forward (iaf.forward(maf.forward(x)) ≈ x for maf,
    maf.forward(iaf.forward(x)) ≈ x for iaf) and the two log-determinants sum to zero."""
    spec = ctx.draw_spec()
    dual = FlowSpec(DUAL[spec.kind], spec.config, spec.params)
    x, c = ctx.draw_input(spec), ctx.draw_context(spec)
    size = event_size(spec)
    first, second = ctx.instantiate(spec), ctx.instantiate(dual)
    _require_shared_parameters(ctx, spec, first, second)
    z, logdet = ctx.adapter.forward(first, x, c)
    kappa = ctx.condition(spec, x, c, fd_jacobians(ctx, first, spec, x, c))
    back, back_logdet = ctx.adapter.forward(second, z, c)
    ctx.assert_close(back, x, "roundtrip", size, f"{dual.kind}.forward({spec.kind}.forward(x)) vs x", kappa)
    ctx.assert_close(logdet + back_logdet, np.zeros_like(logdet), "logdet", size,
                     f"{spec.kind}'s log|det| + {dual.kind}'s log|det| at its output", kappa)
