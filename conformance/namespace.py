"""The kinds the suite checks: the registry's, and the foreign kinds an adapter declares.

A foreign kind (:class:`~.adapter.ForeignKind`) is turned into a :class:`~flowspec.registry.Kind`
kept here, never in the registry, under the name ``"<adapter.name>:<name>"`` (registered names have
no colon, so it can never shadow one). Its entry has no reference map (the white-box properties
never apply to it: :meth:`~.adapter.Capabilities.for_kind`) and empty parameters; the structure it
claims becomes the ``extras`` the structural properties attach by (``forbidden``/``required`` for an
autoregressive order, ``volume_preserving``, ``residual_lipschitz``, ``stochastic_logdet``), so a
foreign kind inherits every property that fits what it declares. Its spec strategy draws one of the
declared configs (an axis ``config``).

:func:`activate` makes an adapter's foreign kinds known (the runner calls it before selecting);
:func:`kind` looks a name up in both places.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from hypothesis import strategies as st

from flowspec import registry
from flowspec.errors import ConfigError
from flowspec.registry import Kind
from flowspec.spec import FlowSpec

from .adapter import Adapter, ForeignKind, NotSupported

_FOREIGN: dict[str, Kind] = {}


def is_foreign(name: str) -> bool:
    return ":" in name


def full_name(adapter: Adapter, local: str) -> str:
    return f"{adapter.name}:{local}"


def kind(name: str) -> Kind:
    """The kind called ``name``: a registered one, or a foreign one made known by :func:`activate`."""
    if not is_foreign(name):
        return registry.get(name)
    try:
        return _FOREIGN[name]
    except KeyError:
        known = ", ".join(sorted(_FOREIGN)) or "none"
        raise ConfigError(f"unknown foreign kind {name!r}; foreign kinds declared: {known}") from None


def kinds_of(adapter: Adapter) -> frozenset[str]:
    """The kinds ``adapter`` implements: its registered ones and the full names of its foreign ones."""
    caps = adapter.capabilities()
    return frozenset(caps.kinds) | {full_name(adapter, k.name) for k in caps.foreign}


def activate(adapter: Adapter) -> list[str]:
    """Make ``adapter``'s foreign kinds known (entries and spec strategies); their full names."""
    from . import strategies

    names = []
    for declared in adapter.capabilities().foreign:
        name = full_name(adapter, declared.name)
        _FOREIGN[name] = _entry(name, declared)
        strategies.register_specs(name, large=declared.large)(_configs_strategy(name, declared.configs))
        names.append(name)
    return names


def _configs_strategy(name: str, configs: tuple[Mapping[str, Any], ...]):
    from .covering import axis

    def specs() -> st.SearchStrategy:
        return axis("config", range(len(configs))).map(lambda i: FlowSpec(name, dict(configs[i])))
    return specs


def _no_reference(*_: Any) -> Any:
    raise NotSupported("a foreign kind has no reference map")


def _forbidden(order: Any) -> Any:
    """``forbidden(config)``: True at (i, j) where position j comes after position i in the order."""
    def matrix(config: Mapping[str, Any]) -> np.ndarray:
        rank = np.empty(len(order(config)), dtype=int)
        rank[np.asarray(order(config), dtype=int)] = np.arange(rank.size)
        return rank[None, :] > rank[:, None]
    return matrix


def _entry(name: str, declared: ForeignKind) -> Kind:
    extras: dict[str, Any] = {"foreign": True}
    if declared.autoregressive_order is not None:
        forbidden = _forbidden(declared.autoregressive_order)
        extras["forbidden"] = forbidden
        if declared.dense:
            extras["required"] = lambda config: ~forbidden(config)
    if declared.volume_preserving:
        extras["volume_preserving"] = True
    if declared.residual_lipschitz is not None:
        extras["residual_lipschitz"] = declared.residual_lipschitz
    if declared.stochastic_logdet:
        extras["stochastic_logdet"] = True
    return Kind(
        name=name, family="foreign", forward=_no_reference,
        event_shape=lambda config: tuple(declared.event_shape(config)), init_params=lambda config, rng: {},
        domain=declared.domain, codomain=declared.codomain, context_shape=declared.context_shape,
        summary=declared.summary, extras=extras,
    )


def names(adapter: Adapter | None = None) -> list[str]:
    """Registered kinds, then (with ``adapter``) the adapter's foreign kinds."""
    return registry.names() + ([] if adapter is None else activate(adapter))
