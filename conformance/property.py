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
from hypothesis import assume, strategies as st

from flowspec import reference
from flowspec.errors import ConfigError
from flowspec.spec import FlowSpec

from . import namespace, strategies
from .adapter import Adapter, NotSupported
from .seeding import seed_for
from .tolerances import MAX_CONDITION, condition_number, relative_error, tolerance


class PropertyFailure(AssertionError):
    """A property does not hold; ``error`` is the error found and ``tol`` the tolerance it broke."""

    def __init__(self, message: str, error: float = float("inf"), tol: float | None = None):
        super().__init__(message)
        self.error, self.tol = error, tol


class Inconclusive(Exception):
    """The check cannot decide (for example: no finite-variance guarantee for a statistical test)."""


def declared(kind: str, key: str) -> Any:
    """What a kind declares under ``extras[key]`` (None for a name the suite does not know)."""
    try:
        return namespace.kind(kind).extras.get(key)
    except ConfigError:
        return None


def deterministic_training(kind: str) -> bool:
    """Whether the kind's training-mode log-det is not declared stochastic (properties that compare
    training-mode values apply only then)."""
    return not declared(kind, "stochastic_logdet")


@dataclass
class CheckContext:
    """What a property sees: the adapter, the kind, dtype and device, and the hypothesis data."""

    adapter: Adapter
    kind: str
    dtype: str
    device: str
    data: Any
    errors: list[tuple[float, float]] = field(default_factory=list)
    drawn: list[str] = field(default_factory=list)
    conventions: set[str] = field(default_factory=set)

    # ------------------------------------------------------------------ declarations
    @property
    def white_box(self) -> bool:
        """Whether the adapter loads specs for this kind (never for a foreign kind)."""
        return "white_box" in self.adapter.capabilities().modes

    def has(self, requirement: str) -> bool:
        """Whether the adapter meets ``requirement`` for this kind."""
        return self.adapter.capabilities().has(requirement)

    def convention(self, name: str) -> bool:
        """Whether the adapter declares the named convention (:mod:`.conventions`) for this kind; a
        property that then checks by the convention's rule is reported ``convention`` if it holds."""
        from .conventions import CONVENTIONS

        if name not in CONVENTIONS:
            raise KeyError(f"unknown convention {name!r}")
        follows = name in self.adapter.capabilities().conventions.get(self.kind, ())
        if follows:
            self.conventions.add(name)
        return follows

    # ------------------------------------------------------------------ drawing
    def draw(self, strategy: st.SearchStrategy, label: str | None = None) -> Any:
        value = self.data.draw(strategy, label=label)
        self.drawn.append(f"{label or 'value'} = {_summary(value)}")
        return value

    def draw_spec(self) -> FlowSpec:
        return self.draw(strategies.specs(self.kind), "spec")

    def draw_input(self, spec: FlowSpec, magnitudes: tuple[float, ...] | None = None, batch: int = strategies.BATCH,
                   *, latent: bool = False, name: str = "magnitude") -> np.ndarray:
        """A batch of inputs (``latent``: of latents) at one of ``magnitudes`` (default: the value
        properties' :func:`~.strategies.value_magnitudes`), an axis called ``name``."""
        magnitudes = strategies.value_magnitudes(spec.kind) if magnitudes is None else magnitudes
        return self.draw(strategies.inputs(spec, magnitudes, batch, latent=latent, name=name), "z" if latent else "x")

    def draw_context(self, spec: FlowSpec, batch: int = strategies.BATCH) -> np.ndarray | None:
        return self.draw(strategies.contexts(spec, batch), "context")

    # ------------------------------------------------------------------ building
    def load(self, spec: FlowSpec) -> Any:
        """White-box: the implementation's flow for ``spec``."""
        return self.adapter.load(spec, self.dtype, self.device)

    def instantiate(self, spec: FlowSpec) -> Any:
        """Black-box: a flow of the same kind and config (loaded if the adapter can, else instantiated).

        Where the adapter has ``parameters``, the instantiated flow's trainable parameters are then
        set to the spec's (canonical names, as a user's in-place edit sets them), so that the
        strategies' parameter regimes (large log-scales, wᵀû near −1, ...) reach black-box checks too."""
        caps = self.adapter.capabilities()
        if self.white_box:
            return self.load(spec)
        flow = self.adapter.instantiate(spec.kind, spec.config, seed_for(spec.to_json()), self.dtype, self.device)
        if caps.has("parameters"):
            drawn = spec.flat_params()
            self.adapter.set_parameters(flow, {name: np.array(drawn[name]) for name in self.adapter.parameters(flow)
                                               if name in drawn})
        return self.deterministic(flow)

    def deterministic(self, flow: Any) -> Any:
        """``flow``, put in evaluation mode where the kind declares a stochastic training-mode
        log-det (``extras["stochastic_logdet"]``, a foreign kind's declaration): the deterministic
        comparisons then see the log-det itself."""
        if namespace.kind(self.kind).extras.get("stochastic_logdet") and self.has("train_eval"):
            self.adapter.set_training(flow, False)
        return flow

    # ------------------------------------------------------------------ comparing
    def record(self, error: float, tol: float) -> float:
        self.errors.append((error, tol))
        return error

    def tol(self, quantity: str, size: int, condition: float = 1.0) -> float:
        """The table's row for ``quantity``, plus the row of the kind's solver error where the kind
        declares one (``extras["solver_row"]``: every value it computes carries an ODE solve's
        error, which local error control does not bound by a multiple of ε)."""
        row = declared(self.kind, "solver_row")
        own = 0.0 if row is None else tolerance(row, self.dtype, size, condition)
        return tolerance(quantity, self.dtype, size, condition) + own

    def assert_close(self, actual: Any, expected: Any, quantity: str, size: int, what: str,
                     condition: float = 1.0) -> float:
        """Compare by :func:`relative_error` against the table's tolerance (for the rows that scale
        with it, at the Jacobian's ``condition`` number); record the error. A shape mismatch is
        reported as such."""
        actual_shape, expected_shape = np.shape(actual), np.shape(expected)
        if actual_shape != expected_shape:
            self.record(float("inf"), 0.0)
            raise PropertyFailure(f"{what}: shape mismatch: got {actual_shape}, expected {expected_shape}")
        err, tol = relative_error(actual, expected), self.tol(quantity, size, condition)
        self.record(err, tol)
        if not err <= tol:
            at = f" (condition number {condition:.2e})" if condition > 1.0 else ""
            raise PropertyFailure(f"{what}: relative error {err:.3e} > tolerance {tol:.1e}{at}", err, tol)
        return err

    def condition(self, spec: FlowSpec, x: np.ndarray, context: np.ndarray | None = None,
                  jacobians: np.ndarray | None = None) -> float:
        """The largest 2-norm condition number of the Jacobians over the batch ``x`` (the reference's,
        unless given: black-box properties pass finite-difference ones). A point beyond the dtype's
        :data:`~.tolerances.MAX_CONDITION` is rejected (hypothesis draws another): nothing there is
        accurate enough to compare."""
        kappa = condition_number(reference.jacobian(spec, x, context) if jacobians is None else jacobians)
        assume(kappa <= MAX_CONDITION[self.dtype])
        return kappa

    def describe(self) -> str:
        """The example's draws, one line each (attached to a failure's message)."""
        return "; ".join(self.drawn)

    def require(self, condition: bool, message: str, error: float = float("inf")) -> None:
        if not condition:
            raise PropertyFailure(message, error)


def _summary(value: Any) -> str:
    """A short description of a drawn value (a spec by its kind and config, an array by shape and scale)."""
    if isinstance(value, FlowSpec):
        children = [value.params[k] for k in sorted(value.params, key=_order) if isinstance(value.params[k], FlowSpec)]
        return f"{value.kind}[{', '.join(map(_summary, children))}]" if children else f"{value.kind}{value.config}"
    if isinstance(value, np.ndarray):
        return f"array{value.shape} max|·| {float(np.max(np.abs(value))) if value.size else 0.0:.3g}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _order(key: str) -> tuple[int, str]:
    return (int(key), key) if key.isdigit() else (1 << 30, key)


Check = Callable[[CheckContext], None]


@dataclass(frozen=True)
class Property:
    """A named check; ``applies(kind)`` says which kinds it concerns."""

    name: str
    check: Check
    requires: frozenset[str]
    applies: Callable[[str], bool]
    description: str
    claim: str | None = None

    def missing(self, adapter: Adapter) -> list[str]:
        caps = adapter.capabilities()
        return sorted(r for r in self.requires if not caps.has(r))


PROPERTIES: dict[str, Property] = {}


def prop(
    name: str,
    *,
    requires: Iterable[str] = (),
    kinds: Iterable[str] | Callable[[str], bool] | None = None,
    claim: str | None = None,
) -> Callable[[Check], Check]:
    """Decorator registering a property; ``kinds`` is a list of kind names, a predicate, or None (all).
    ``claim`` names what an implementation must claim for a failure to count: ``"validation"``
    (``Capabilities.validates_input``) for the bad-input properties; an implementation that does not
    claim it gets ``not_claimed``, with the failure's message as information."""
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
        PROPERTIES[name] = Property(name, fn, frozenset(requires), applies, (fn.__doc__ or "").strip(), claim)
        return fn
    return wrap


__all__ = ["CheckContext", "Inconclusive", "NotSupported", "PROPERTIES", "Property", "PropertyFailure", "prop"]
