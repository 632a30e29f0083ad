"""Spec strategies for the radial flow.

Axes: ``size`` (D = 1…8; D = 1 included, where the (D − 1) term of eq. 18 vanishes) and the
``regime`` of the unconstrained scalars α̂ and β̂ (α = softplus(α̂), α + β = softplus(β̂)):

* ``init``: the reference's generic α̂, β̂ ~ N(0, 1);
* ``large_alpha``, ``large_beta``, ``large_both``: α̂, β̂ or both uniform in [20.5, 24], softplus
  arguments above 20, where torch's thresholded ``softplus`` returns its argument and differs from
  the exact value by e^(−α̂) (more than a float64 tolerance relative to α); a large α with a generic
  β̂ contracts strongly towards x0 (α + β ≪ α), a large α + β expands strongly;
* ``contracting``: β̂ uniform in [−7, −5], α + β = softplus(β̂) < 0.007: f shrinks a neighbourhood of
  x0 by a factor (α + β)/α, near the limit β > −α of invertibility.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st

from flowspec.spec import FlowSpec

from .covering import axis, declare_axes, salt
from .seeding import rng
from .strategies import SEEDS, config, from_configs, register_specs, sizes

LARGE = (20.5, 24.0)
CONTRACTING = (-7.0, -5.0)
# regime -> the ranges of (α̂, β̂) it draws (None: the generic value)
REGIMES: dict[str, tuple[tuple[float, float] | None, tuple[float, float] | None]] = {
    "init": (None, None),
    "large_alpha": (LARGE, None),
    "large_beta": (None, LARGE),
    "large_both": (LARGE, LARGE),
    "contracting": (None, CONTRACTING),
}


def _in_regime(spec: FlowSpec, regime: str, seed: int) -> FlowSpec:
    gen = rng("radial regime", salt(), seed)
    params: dict[str, Any] = dict(spec.params)
    for name, bounds in zip(("alpha_hat", "beta_hat"), REGIMES[regime]):
        if bounds is not None:
            params[name] = np.asarray(gen.uniform(*bounds))
    return FlowSpec(spec.kind, spec.config, params)


@register_specs("radial")
def _radial():
    specs = from_configs("radial", config(shape=st.tuples(sizes(1, 8, name="size")).map(list)))
    return st.builds(_in_regime, specs, axis("regime", tuple(REGIMES)), SEEDS)


declare_axes("radial", size=range(1, 9), regime=tuple(REGIMES))
