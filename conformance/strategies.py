"""Hypothesis strategies shared by every property: specs per kind, inputs, contexts and weights.

Each family module of the suite registers, per kind, a strategy of :class:`~flowspec.FlowSpec`
(usually a strategy of configs turned into a spec by the reference's generic ``init_params`` with a
drawn seed: :func:`from_configs`). Arrays are not drawn entry by entry: a strategy draws a seed and
a magnitude and the entries come from :mod:`.seeding`, which keeps examples fast and reproducible
while hypothesis still explores sizes, magnitudes and parameters.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
from hypothesis import strategies as st

from flowspec import reference
from flowspec.spec import FlowSpec

from . import namespace
from .covering import axis, salt
from .seeding import rng

SpecStrategy = Callable[[], st.SearchStrategy]
_SPECS: dict[str, SpecStrategy] = {}
_LARGE: dict[str, tuple[float, ...]] = {}

SEEDS = st.integers(min_value=0, max_value=2**32 - 1)
MAGNITUDES = (0.1, 1.0, 3.0)
LARGE_MAGNITUDES = (1.0, 10.0, 100.0)
ALL_MAGNITUDES = (0.1, 1.0, 3.0, 10.0, 100.0)
BATCH = 3


def register_specs(kind: str, *, large: tuple[float, ...] = LARGE_MAGNITUDES) -> Callable[[SpecStrategy], SpecStrategy]:
    """Decorator: ``fn() -> strategy of FlowSpec`` for ``kind``.

    ``large`` are the magnitudes of the round-trip checks; a kind that saturates (sigmoid) states
    the range in which its inverse is still well conditioned at float32.
    """
    def wrap(fn: SpecStrategy) -> SpecStrategy:
        _SPECS[kind] = fn
        _LARGE[kind] = large
        return fn
    return wrap


def large_magnitudes(kind: str) -> tuple[float, ...]:
    return _LARGE.get(kind, LARGE_MAGNITUDES)


def value_magnitudes(kind: str) -> tuple[float, ...]:
    """Input magnitudes of the value properties (forward, log-det, inverse, gradients against the
    reference): the small ones and the kind's large ones, so that a fault that appears only far from
    the origin is not left to the round trips, which a fault applied in both directions passes."""
    large = large_magnitudes(kind)
    return tuple(sorted(set(MAGNITUDES) | set(large)))


def has_specs(kind: str) -> bool:
    return kind in _SPECS


def specs(kind: str) -> st.SearchStrategy:
    """Strategy of specs of ``kind`` (registered by the suite's family modules)."""
    return _SPECS[kind]()


def from_configs(kind: str, configs: st.SearchStrategy) -> st.SearchStrategy:
    """Specs of ``kind`` from a strategy of configs, with the reference's generic random params."""
    return st.builds(lambda config, seed: reference.init_spec(kind, config, rng("params", salt(), seed)), configs, SEEDS)


def sample_array(spec: FlowSpec, seed: int, magnitude: float, batch: int = BATCH, *, latent: bool = False) -> np.ndarray:
    """A batch of points in the kind's domain (or, with ``latent``, codomain).

    Real coordinates are ``magnitude · N(0, 1)``; coordinates in (0, 1) are drawn uniformly from
    (0.05, 0.95) whatever the magnitude, away from the boundary where the transforms saturate.
    """
    kind = namespace.kind(spec.kind)
    shape = (batch,) + (kind.output_shape(spec.config) if latent else tuple(kind.event_shape(spec.config)))
    domain = kind.codomain_of(spec.config) if latent else kind.domain
    gen = rng("sample", salt(), seed)
    if domain.low is not None and domain.high is not None:
        width = domain.high - domain.low
        return domain.low + width * gen.uniform(0.05, 0.95, shape)
    return magnitude * gen.standard_normal(shape)


def inputs(spec: FlowSpec, magnitudes: tuple[float, ...] = MAGNITUDES, batch: int = BATCH, *, latent: bool = False,
           name: str = "magnitude") -> st.SearchStrategy:
    """Strategy of input batches for ``spec`` (see :func:`sample_array`); the magnitude is the axis ``name``."""
    return st.builds(lambda seed, m: sample_array(spec, seed, m, batch, latent=latent), SEEDS, axis(name, magnitudes))


def contexts(spec: FlowSpec, batch: int = BATCH) -> st.SearchStrategy:
    """Strategy of context batches (``None`` for kinds without a context)."""
    context_shape = namespace.kind(spec.kind).context_of(spec.config)
    if context_shape is None:
        return st.none()
    shape = (batch,) + context_shape
    return st.builds(lambda seed: rng("context", salt(), seed).standard_normal(shape), SEEDS)


def weights(shape: tuple[int, ...]) -> st.SearchStrategy:
    """Strategy of upstream-gradient weights of ``shape``."""
    return st.builds(lambda seed: rng("weights", salt(), seed).standard_normal(shape), SEEDS)


def sizes(low: int, high: int, name: str | None = None) -> st.SearchStrategy:
    """Integers in [low, high]; with a ``name`` they form an axis (every size, odd and even, is
    exercised under the ci profile: :mod:`.covering`)."""
    if name is not None:
        return axis(name, range(low, high + 1))
    return st.integers(min_value=low, max_value=high)


def config(**fields: Any) -> st.SearchStrategy:
    """``st.fixed_dictionaries`` with plain values accepted as constants."""
    return st.fixed_dictionaries({k: v if isinstance(v, st.SearchStrategy) else st.just(v) for k, v in fields.items()})


def scaled_last_layer(spec: FlowSpec, factor: float | np.ndarray) -> FlowSpec:
    """``spec`` with its conditioner's last layer (``net.{2L}.weight`` and ``.bias``, the largest
    index) multiplied by ``factor``: a number, or one factor per output row. The strategies' large
    regimes push conditioner outputs (raw scales, shifts, bin logits) across their range with it."""
    last = f"net.{max(int(name.split('.')[1]) for name in spec.params if name.startswith('net.'))}"
    bias = spec.params[f"{last}.bias"]
    rows = np.broadcast_to(np.asarray(factor, dtype=np.float64), bias.shape)
    weight = spec.params[f"{last}.weight"]
    scaled = {f"{last}.weight": rows.reshape((-1,) + (1,) * (weight.ndim - 1)) * weight, f"{last}.bias": rows * bias}
    return FlowSpec(spec.kind, spec.config, {**spec.params, **scaled})


def event_size(spec: FlowSpec) -> int:
    return int(np.prod(namespace.kind(spec.kind).event_shape(spec.config)))


def probes(ctx: Any, shape: tuple[int, ...], law: str, count: int, tag: str = "probes") -> np.ndarray:
    """``count`` Hutchinson probes of ``shape`` (±1 entries for ``law`` "rademacher", N(0, 1) for
    "gaussian"), from a seed the example draws (``ctx.draw``), so a failure replays with its probes."""
    gen = rng(tag, ctx.draw(SEEDS, "probes"))
    size = (count,) + tuple(shape)
    return gen.choice([-1.0, 1.0], size=size) if law == "rademacher" else gen.standard_normal(size)
