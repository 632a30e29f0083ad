"""The one registry of flow kinds.

Each kind is defined once, by its reference family module (``flowspec.reference.<family>``): the
reference *is* the executable specification, so the single-sample forward map, the event shape, the
canonical parameter layout (``init_params``) and the domain live there. The accelerated layer and
any third-party implementation implement kinds by name; the conformance suite walks this registry.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from .errors import ConfigError, DomainError


@dataclass(frozen=True)
class Domain:
    """The set a flow's input must lie in; ``low``/``high`` are open bounds (None = unbounded)."""

    name: str
    low: float | None = None
    high: float | None = None

    def violations(self, x: np.ndarray) -> np.ndarray:
        """Boolean mask of entries outside the (open) domain."""
        bad = np.zeros(np.shape(x), dtype=bool)
        if self.low is not None:
            bad |= ~(np.asarray(x) > self.low)
        if self.high is not None:
            bad |= ~(np.asarray(x) < self.high)
        return bad

    def project(self, x: np.ndarray, margin: float = 1e-3) -> np.ndarray:
        """``x`` moved inside the domain by at least ``margin`` of its width (a solver's start)."""
        if self.low is None or self.high is None:
            return np.asarray(x)
        width = self.high - self.low
        return np.clip(x, self.low + margin * width, self.high - margin * width)

    def check(self, x: np.ndarray, what: str = "input") -> None:
        bad = self.violations(x)
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            raise DomainError(
                f"{what} lies outside the domain {self.name} at index {idx} "
                f"(value {np.asarray(x)[idx]!r}; {int(bad.sum())} entries in all)"
            )


REAL = Domain("the real numbers")
UNIT_INTERVAL = Domain("(0, 1)", 0.0, 1.0)

Forward = Callable[..., Any]  # (spec, x, context) -> z for one sample, in autograd-NumPy


@dataclass(frozen=True)
class Kind:
    """Everything that defines a kind (see the module docstring).

    ``forward(spec, x, context)`` maps one sample of shape ``event_shape(config)`` to the latent;
    ``inverse`` is given where the kind has an analytic inverse (otherwise the reference solves);
    ``init_params(config, rng)`` returns generic parameters in the canonical layout;
    ``check_config(config)`` raises :class:`ConfigError` on an invalid configuration;
    ``config_keys`` (a set, or a function of the config) are the keys a kind takes, where it
    declares them rather than checking unknown keys in ``check_config``.
    ``domain``/``codomain`` are the sets x and z live in (``codomain_fn(config)`` where the codomain
    depends on the config, as the logit's (logit α, logit(1 − α)) does: see :meth:`codomain_of`);
    ``latent_shape`` is z's shape where it differs from x's (squeeze); ``context_shape`` is the shape
    of one context sample for kinds that may be conditional (it returns None for a config that takes no context, see
    :meth:`context_of`). Composite kinds carry their ``event_shape`` in their config.
    ``extras`` carries kind-specific reference quantities (estimators, exact norms, ...).
    ``defaults`` are the values optional config keys take when left out, where the kind lists them
    (the conformance suite checks that an implementation's constructor takes the same).
    """

    name: str
    family: str
    forward: Forward
    event_shape: Callable[[Mapping[str, Any]], tuple[int, ...]]
    init_params: Callable[[Mapping[str, Any], np.random.Generator], dict[str, Any]]
    inverse: Forward | None = None
    domain: Domain = REAL
    codomain: Domain = REAL
    codomain_fn: Callable[[Mapping[str, Any]], Domain] | None = None
    latent_shape: Callable[[Mapping[str, Any]], tuple[int, ...]] | None = None
    context_shape: Callable[[Mapping[str, Any]], tuple[int, ...] | None] | None = None
    check_config: Callable[[Mapping[str, Any]], None] | None = None
    config_keys: frozenset[str] | Callable[[Mapping[str, Any]], frozenset[str]] | None = None
    composite: bool = False
    summary: str = ""
    extras: Mapping[str, Callable[..., Any]] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def output_shape(self, config: Mapping[str, Any]) -> tuple[int, ...]:
        """Shape of one latent sample z."""
        return tuple((self.latent_shape or self.event_shape)(config))

    def codomain_of(self, config: Mapping[str, Any]) -> Domain:
        """The set z lives in for this config."""
        return self.codomain if self.codomain_fn is None else self.codomain_fn(config)

    def context_of(self, config: Mapping[str, Any]) -> tuple[int, ...] | None:
        """Shape of one context sample, or None where the kind (with this config) takes no context."""
        if self.context_shape is None:
            return None
        shape = self.context_shape(config)
        return None if shape is None else tuple(shape)

    def validate_config(self, config: Mapping[str, Any]) -> None:
        """Raise :class:`ConfigError` for a config key the kind does not know (where it declares
        ``config_keys``; others check their keys in ``check_config``) or an invalid value."""
        if not isinstance(config, Mapping):
            raise ConfigError(f"the config of kind {self.name!r} must be a mapping, got {type(config).__name__}")
        known = self.config_keys(config) if callable(self.config_keys) else self.config_keys
        if known is not None and set(config) - known:
            raise ConfigError(f"unknown config keys {sorted(set(config) - known)} for kind {self.name!r}; "
                              f"it takes {sorted(known)}")
        if self.check_config is not None:
            self.check_config(config)


def config_sequence(config: Mapping[str, Any], key: str, default: Any = ()) -> tuple:
    """``config[key]`` (or ``default``) as a tuple; a value that is not a list or tuple (an int, a
    string, None) raises :class:`ConfigError` naming the key, so checks of its entries never meet a
    bare TypeError."""
    value = config.get(key, default)
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"config[{key!r}] must be a list, got {value!r}")
    return tuple(value)


def int_at_least(config: Mapping[str, Any], key: str, low: int, what: str) -> int:
    """``config[key]``, which must be an int ≥ ``low``; otherwise :class:`ConfigError` naming the key,
    ``what`` it configures and the value."""
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"config[{key!r}] of {what} must be an int ≥ {low}, got {value!r}")
    return value


def one_of(config: Mapping[str, Any], key: str, options: tuple[str, ...], what: str) -> str:
    """``config[key]``, which must be one of ``options``; otherwise :class:`ConfigError`."""
    if config[key] not in options:
        raise ConfigError(f"config[{key!r}] of {what} must be one of {list(options)}, got {config[key]!r}")
    return config[key]


def positive_number(config: Mapping[str, Any], key: str, what: str) -> float:
    """``config[key]`` as a float, which must be finite and > 0; otherwise :class:`ConfigError`
    naming the key, ``what`` it configures and the value."""
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < np.inf:
        raise ConfigError(f"config[{key!r}] of {what} must be a finite number > 0, got {value!r}")
    return float(value)


_KINDS: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    """Add a kind; a name can be registered once and has no colon (``"<adapter>:<name>"`` is the
    namespace of the kinds an adapter declares for the conformance suite, which a registered kind
    must never shadow)."""
    if not kind.name or ":" in kind.name:
        raise ConfigError(f"a kind's name must be non-empty without ':', got {kind.name!r}")
    if kind.name in _KINDS and _KINDS[kind.name] is not kind:
        raise ConfigError(f"kind {kind.name!r} is already registered")
    _KINDS[kind.name] = kind
    return kind


def _populate() -> None:
    importlib.import_module("flowspec.reference")


def get(name: str) -> Kind:
    """The registered kind called ``name``; raises :class:`ConfigError` naming the known kinds."""
    _populate()
    try:
        return _KINDS[name]
    except KeyError:
        raise ConfigError(f"unknown flow kind {name!r}; registered kinds: {', '.join(sorted(_KINDS))}") from None


def names() -> list[str]:
    """Every registered kind name, in registration order."""
    _populate()
    return list(_KINDS)
