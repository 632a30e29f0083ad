"""The property registry and the context a property runs in.

A :class:`Property` is a check over hypothesis-drawn data that returns normally when it holds and
raises :class:`PropertyFailure` (with the error it found) when it does not. Properties declare the
capabilities they need (``requires``) and the kinds they apply to; :class:`Inconclusive` marks a
check that cannot give a verdict (a statistical test without a finite-variance guarantee).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
from hypothesis import strategies as st

from flowspec.spec import FlowSpec

from . import strategies
from .adapter import Adapter, NotSupported
from .seeding import seed_for
from .tolerances import relative_error, tolerance


class PropertyFailure(AssertionError):
    """A property does not hold; ``error`` is the error found and ``tol`` the tolerance it broke."""

    def __init__(self, message: str, error: float = float("inf"), tol: float | None = None):
        super().__init__(message)
        self.error, self.tol = error, tol


class Inconclusive(Exception):
    """The check cannot decide (for example: no finite-variance guarantee for a statistical test)."""


@dataclass
class CheckContext:
    """What a property sees: the adapter, the kind, dtype and device, and the hypothesis data."""

    adapter: Adapter
    kind: str
    dtype: str
    device: str
    data: Any
    errors: list[tuple[float, float]] = field(default_factory=list)

    # ------------------------------------------------------------------ drawing
    def draw(self, strategy: st.SearchStrategy, label: str | None = None) -> Any:
        return self.data.draw(strategy, label=label)

    def draw_spec(self) -> FlowSpec:
        return self.draw(strategies.specs(self.kind), "spec")

    def draw_input(self, spec: FlowSpec, magnitudes=strategies.MAGNITUDES, batch: int = strategies.BATCH, *, latent=False) -> np.ndarray:
        return self.draw(strategies.inputs(spec, magnitudes, batch, latent=latent), "z" if latent else "x")

    def draw_context(self, spec: FlowSpec, batch: int = strategies.BATCH) -> np.ndarray | None:
        return self.draw(strategies.contexts(spec, batch), "context")

    # ------------------------------------------------------------------ building
    def load(self, spec: FlowSpec) -> Any:
        """White-box: the implementation's flow for ``spec``."""
        return self.adapter.load(spec, self.dtype, self.device)

    def instantiate(self, spec: FlowSpec) -> Any:
        """Black-box: a flow of the same kind and config (loaded if the adapter can, else instantiated)."""
        caps = self.adapter.capabilities()
        if "white_box" in caps.modes:
            return self.load(spec)
        return self.adapter.instantiate(spec.kind, spec.config, seed_for(spec.to_json()), self.dtype, self.device)

    # ------------------------------------------------------------------ comparing
    def tol(self, quantity: str, size: int) -> float:
        return tolerance(quantity, self.dtype, size)

    def record(self, error: float, tol: float) -> float:
        self.errors.append((error, tol))
        return error

    def assert_close(self, actual: Any, expected: Any, quantity: str, size: int, what: str) -> float:
        """Compare by :func:`relative_error` against the table's tolerance; record the error."""
        err, tol = relative_error(actual, expected), self.tol(quantity, size)
        self.record(err, tol)
        if not err <= tol:
            raise PropertyFailure(f"{what}: relative error {err:.3e} > tolerance {tol:.1e}", err, tol)
        return err

    def require(self, condition: bool, message: str, error: float = float("inf")) -> None:
        if not condition:
            raise PropertyFailure(message, error)


Check = Callable[[CheckContext], None]


@dataclass(frozen=True)
class Property:
    """A named check; ``applies(kind)`` says which kinds it concerns."""

    name: str
    check: Check
    requires: frozenset[str]
    applies: Callable[[str], bool]
    description: str

    def missing(self, adapter: Adapter) -> list[str]:
        caps = adapter.capabilities()
        return sorted(r for r in self.requires if not caps.has(r))


PROPERTIES: dict[str, Property] = {}


def prop(
    name: str,
    *,
    requires: Iterable[str] = (),
    kinds: Iterable[str] | Callable[[str], bool] | None = None,
) -> Callable[[Check], Check]:
    """Decorator registering a property; ``kinds`` is a list of kind names, a predicate, or None (all)."""
    if kinds is None:
        applies: Callable[[str], bool] = lambda kind: True  # noqa: E731
    elif callable(kinds):
        applies = kinds
    else:
        names = frozenset(kinds)
        applies = names.__contains__

    def wrap(fn: Check) -> Check:
        if name in PROPERTIES:
            raise ValueError(f"property {name!r} is registered twice")
        PROPERTIES[name] = Property(name, fn, frozenset(requires), applies, (fn.__doc__ or "").strip())
        return fn
    return wrap


__all__ = ["CheckContext", "Inconclusive", "NotSupported", "PROPERTIES", "Property", "PropertyFailure", "prop"]
