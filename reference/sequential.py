"""Sequential composition: z = f_n ∘ … ∘ f_1 (x).

A ``sequential`` spec nests its children as params ``"0"``, ``"1"``, … and carries the first
child's input shape as ``config["event_shape"]``, the last child's output shape as
``config["latent_shape"]`` and, where some children are conditional, their common context shape
as ``config["context_shape"]`` (passed to those children only); :func:`sequential_spec` fills
them in.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from flowspec import registry
from flowspec.errors import ConfigError
from flowspec.registry import Kind, config_sequence, register
from flowspec.spec import FlowSpec

from .core import forward_one
from .solve import inverse_one

FAMILY = "sequential"


def sequential_spec(children: Sequence[FlowSpec]) -> FlowSpec:
    """Compose ``children`` (applied first to last in the forward direction)."""
    if not children:
        raise ConfigError("a sequential flow needs at least one child")
    first, last = registry.get(children[0].kind), registry.get(children[-1].kind)
    config = {
        "event_shape": list(first.event_shape(children[0].config)),
        "latent_shape": list(last.output_shape(children[-1].config)),
    }
    contexts = {registry.get(c.kind).context_of(c.config) for c in children} - {None}
    if len(contexts) > 1:
        raise ConfigError(f"children need different context shapes: {sorted(contexts)}")
    if contexts:
        config["context_shape"] = list(contexts.pop())
    return FlowSpec("sequential", config, {str(i): c for i, c in enumerate(children)})


def _children(spec: FlowSpec) -> list[FlowSpec]:
    return spec.numbered_children()


def _context(child: FlowSpec, context: Any) -> Any:
    """The context for ``child``: passed on to conditional children only."""
    return None if registry.get(child.kind).context_of(child.config) is None else context


def sequential_forward(spec: FlowSpec, x: Any, context: Any = None) -> Any:
    for child in _children(spec):
        x = forward_one(child, x, _context(child, context))
    return x


def sequential_inverse(spec: FlowSpec, z: Any, context: Any = None) -> Any:
    for child in reversed(_children(spec)):
        z = inverse_one(child, z, _context(child, context))
    return z


def _shape(key: str):
    def get(config: Mapping[str, Any]) -> tuple[int, ...]:
        if key not in config:
            raise ConfigError(f"a sequential spec needs config[{key!r}]; build it with sequential_spec()")
        return config_sequence(config, key)
    return get


def _no_params(config: Mapping[str, Any], rng: np.random.Generator) -> dict:
    raise ConfigError("sequential flows take their children's params; build them with sequential_spec()")


register(Kind(
    name="sequential", family=FAMILY, forward=sequential_forward, inverse=sequential_inverse,
    event_shape=_shape("event_shape"), latent_shape=_shape("latent_shape"), init_params=_no_params,
    context_shape=lambda config: config_sequence(config, "context_shape") if config.get("context_shape") else None,
    config_keys=frozenset({"event_shape", "latent_shape", "context_shape"}),
    composite=True, summary="composition of child flows, first child applied first",
))
