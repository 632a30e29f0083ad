"""The adapter protocol: how the suite talks to an implementation.

An adapter declares :class:`Capabilities` and turns the suite's float64 NumPy arrays into calls on
the implementation. It works in one or both modes:

* **white-box** (``"white_box"`` in ``modes``): :meth:`Adapter.load` builds the implementation's flow
  from a :class:`~flowspec.FlowSpec`, so its values can be compared to the reference's one by one;
* **black-box** (``"black_box"``): :meth:`Adapter.instantiate` builds some flow of a kind from a
  config and a seed, and only its own forward / inverse / log-det are examined (finite-difference
  Jacobians, round trips, claimed structure).

Beyond forward and inverse, an adapter may offer operations that properties about module state,
modes, both directions and gradients need. Each is named by a *requirement* in
``Capabilities.hooks``; the base implementations raise :class:`NotSupported`:

==================  ===============================================  ======================================
requirement         method                                           what it does
==================  ===============================================  ======================================
``grad``            :meth:`Adapter.vjp`, ``forward(grad=True)``      gradients; a forward with autograd on
``inverse``         :meth:`Adapter.inverse`                          x = f⁻¹(z)
``inverse_logdet``  :meth:`Adapter.inverse_with_logdet`              (x, log|det ∂x/∂z|) in one call
``inverse_grad``    :meth:`Adapter.inverse_vjp`                      gradients through the inverse
``train_eval``      :meth:`Adapter.set_training`                     training / evaluation mode
``state``           :meth:`Adapter.save_state`, ``load_state``       a checkpoint round trip (bytes)
``convert``         :meth:`Adapter.convert`                          the flow in another dtype (``.to``)
``parameters``      :meth:`Adapter.parameters`, ``set_parameters``   read / edit parameters in place
``fresh``           :meth:`Adapter.fresh`                            a flow not yet data-initialised
``construct``       :meth:`Adapter.construct`                        a flow built from a config alone
``reseed``          :meth:`Adapter.reseed`                           reseed the implementation's RNG
==================  ===============================================  ======================================

Other optional hooks (``diag_jacobian``, ``logdet_estimate``, ``spectral_norm_estimate``, …) are
reached through :meth:`Adapter.call_hook`. ``Capabilities.native_direction`` says which direction
the implementation computes natively (``"forward"``, ``"inverse"`` or ``"both"``); the other one is
then derived by it (a solve, or the negated log-det at the solved point). A property that needs a
capability the adapter lacks is reported *not supported*, never passed.

Declarations beyond the operations (all optional; see the README's "Checking another library"):

* **foreign kinds** (``Capabilities.foreign``): kinds the registry does not have, each a
  :class:`ForeignKind` with its event shape, the configs to draw and the structure it claims. The
  suite names one ``"<adapter.name>:<name>"`` (``"zuko:maf"``), so it can never shadow a registered
  kind (registered names have no colon), and applies every property that needs no reference;
* **per-kind capabilities** (``Capabilities.without``): requirements one kind lacks (a planar flow
  with no inverse), so that only that kind's properties needing them are not supported;
* **declined configs**: :class:`Declined`, raised while building a flow for a config the
  implementation cannot honour, is counted per property with its reason (never a silent narrowing);
* **validation as a claim** (``Capabilities.validates_input``): an implementation that does not
  claim to validate its input gets ``not_claimed`` for the bad-input properties, with the inputs that
  passed through silently listed as information;
* **conventions** (``Capabilities.conventions``): named, documented conventions that differ from
  flowspec's (:mod:`.conventions`); a property that holds only under a declared one reports
  ``convention``.

Raw inputs (``raw=True``, the bad-input checks) arrive in the dtype under test, except in the
dtype-mismatch cases; the adapter passes them on unchanged.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from flowspec.registry import REAL, Domain
from flowspec.spec import FlowSpec

Array = np.ndarray

DIRECTIONS = ("forward", "inverse", "both")


class NotSupported(Exception):
    """Raised by an adapter (or the suite) when a capability is missing."""


class Declined(NotSupported):
    """Raised by an adapter for one config the implementation cannot honour (an option it lacks),
    with the reason; the suite counts the declined examples per property and reports the reasons."""


Config = Mapping[str, Any]


@dataclass(frozen=True)
class ForeignKind:
    """A kind an adapter declares outside the registry (module docstring), named
    ``"<adapter.name>:<name>"`` by the suite.

    ``event_shape(config)`` is one sample's shape; ``configs`` are the configs the suite draws (one
    axis, each exercised under the ci profile); ``context_shape(config)`` one context sample's shape
    (None: unconditional). The structure it claims, each checked by the structural properties:
    ``autoregressive_order(config)`` — z at flat position ``order[k]`` depends on the inputs at
    ``order[j]``, j ≤ k, only (``dense``: and on every one of them); ``volume_preserving`` —
    log|det| = 0 everywhere; ``residual_lipschitz`` — f(x) = x + g(x) with Lip(g) ≤ this value < 1
    in the 2-norm; ``stochastic_logdet`` — the training-mode log-det is a random estimate (the
    deterministic comparisons then run in evaluation mode only). ``large`` are the round-trip
    magnitudes (smaller for a map that saturates)."""

    name: str
    event_shape: Callable[[Config], tuple[int, ...]]
    configs: tuple[Config, ...] = ({},)
    summary: str = ""
    context_shape: Callable[[Config], tuple[int, ...] | None] | None = None
    domain: Domain = REAL
    codomain: Domain = REAL
    autoregressive_order: Callable[[Config], Sequence[int]] | None = None
    dense: bool = False
    volume_preserving: bool = False
    residual_lipschitz: float | None = None
    stochastic_logdet: bool = False
    large: tuple[float, ...] = (1.0, 10.0, 100.0)

    def __post_init__(self) -> None:
        if not self.name or ":" in self.name:
            raise ValueError(f"a foreign kind's name must be non-empty without ':', got {self.name!r}")
        if not self.configs:
            raise ValueError(f"foreign kind {self.name!r} declares no configs")
        if self.residual_lipschitz is not None and not 0.0 < self.residual_lipschitz < 1.0:
            raise ValueError(f"foreign kind {self.name!r}: residual_lipschitz must lie in (0, 1), "
                             f"got {self.residual_lipschitz!r}")
        if self.dense and self.autoregressive_order is None:
            raise ValueError(f"foreign kind {self.name!r}: dense needs an autoregressive_order")


@dataclass(frozen=True)
class Capabilities:
    """What an adapter can do. ``hooks`` names optional operations (requirements, module docstring);
    ``native_direction`` is the direction the implementation computes natively."""

    kinds: frozenset[str]
    dtypes: frozenset[str] = frozenset({"float64", "float32"})
    devices: frozenset[str] = frozenset({"cpu"})
    modes: frozenset[str] = frozenset({"white_box", "black_box"})
    hooks: frozenset[str] = frozenset({"inverse", "grad"})
    input_errors: tuple[type[BaseException], ...] = field(default=(Exception,))
    native_direction: str = "forward"
    foreign: tuple[ForeignKind, ...] = ()
    without: Mapping[str, frozenset[str]] = field(default_factory=dict)
    validates_input: bool = True
    conventions: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.native_direction not in DIRECTIONS:
            raise ValueError(f"native_direction must be one of {DIRECTIONS}, got {self.native_direction!r}")
        names = [k.name for k in self.foreign]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"foreign kinds declared twice: {twice}")

    def has(self, requirement: str) -> bool:
        return requirement in self.modes or requirement in self.hooks

    def for_kind(self, kind: str) -> "Capabilities":
        """These capabilities as one kind sees them: without the requirements ``without[kind]``
        names and, for a foreign kind (no reference to load into), without white-box mode."""
        from dataclasses import replace

        lacks = frozenset(self.without.get(kind, ()))
        modes = self.modes - lacks - ({"white_box"} if ":" in kind else set())
        return replace(self, modes=frozenset(modes), hooks=frozenset(self.hooks - lacks))


class Adapter(ABC):
    """Base class of adapters (see the module docstring). Arrays in and out are float64 NumPy."""

    name: str = "adapter"
    implementation: str | None = None
    """The top-level module of the library the adapter checks, named in the report's header (None:
    the adapter's own module, as for an adapter that lives in the library it checks)."""

    @abstractmethod
    def capabilities(self) -> Capabilities:
        ...

    def _missing(self, requirement: str, what: str) -> NotSupported:
        return NotSupported(f"{self.name} does not support {what} (requirement {requirement!r})")

    # ------------------------------------------------------------------ building
    def load(self, spec: FlowSpec, dtype: str, device: str) -> Any:
        """White-box: the implementation's flow with exactly the parameters of ``spec``."""
        raise NotSupported(f"{self.name} cannot load a FlowSpec")

    def instantiate(self, kind: str, config: Mapping[str, Any], seed: int, dtype: str, device: str) -> Any:
        """Black-box: some flow of ``kind`` with ``config``, its parameters drawn from ``seed``."""
        raise NotSupported(f"{self.name} cannot instantiate flows without a FlowSpec")

    def fresh(self, kind: str, config: Mapping[str, Any], seed: int, dtype: str, device: str) -> Any:
        """A flow of ``kind`` as a user constructs it, before any data-dependent initialisation
        (requirement ``"fresh"``)."""
        raise self._missing("fresh", "building fresh (not yet data-initialised) flows")

    def construct(self, kind: str, config: Mapping[str, Any], dtype: str, device: str) -> Any:
        """A flow of ``kind`` built from ``config`` alone, as a user calls the library's constructor
        (requirement ``"construct"``): the path whose own config checks the spec loader may bypass."""
        raise self._missing("construct", "constructing flows from a config alone")

    # ------------------------------------------------------------------ calls
    @abstractmethod
    def forward(self, flow: Any, x: Array, context: Array | None = None, *, raw: bool = False,
                grad: bool = False) -> tuple[Array, Array]:
        """``(z, log|det ∂z/∂x|)``. With ``raw=True`` the input is passed on as it is (bad-input
        checks); with ``grad=True`` the forward runs as in training, with gradients recorded (the
        input requires gradients), so the values a user sees as the training loss are returned."""

    def inverse(self, flow: Any, z: Array, context: Array | None = None, *, raw: bool = False) -> Array:
        raise NotSupported(f"{self.name} has no inverse")

    def inverse_with_logdet(self, flow: Any, z: Array, context: Array | None = None) -> tuple[Array, Array]:
        """``(x, log|det ∂x/∂z|)`` with ``x = f⁻¹(z)``, from the implementation's own inverse
        direction (requirement ``"inverse_logdet"``)."""
        raise self._missing("inverse_logdet", "the inverse's log-determinant")

    def vjp(
        self, flow: Any, x: Array, z_weight: Array, logdet_weight: Array, context: Array | None = None
    ) -> tuple[dict[str, Array], Array]:
        """Gradients of ``Σ z_weight·z + Σ logdet_weight·log|det|`` w.r.t. params (canonical names) and x."""
        raise NotSupported(f"{self.name} exposes no gradients")

    def inverse_vjp(
        self, flow: Any, z: Array, x_weight: Array, context: Array | None = None
    ) -> tuple[dict[str, Array], Array]:
        """Gradients of ``Σ x_weight·f⁻¹(z)`` w.r.t. params (canonical names) and z, through the
        implementation's inverse (requirement ``"inverse_grad"``)."""
        raise self._missing("inverse_grad", "gradients through the inverse")

    def call_hook(self, flow: Any, hook: str, *args: Any, **kwargs: Any) -> Any:
        """Run an optional hook named in ``Capabilities.hooks``."""
        raise NotSupported(f"{self.name} has no hook {hook!r}")

    # ------------------------------------------------------------------ state and modes
    def set_training(self, flow: Any, training: bool) -> None:
        """Put ``flow`` in training (``True``) or evaluation mode (requirement ``"train_eval"``)."""
        raise self._missing("train_eval", "switching between training and evaluation mode")

    def save_state(self, flow: Any) -> bytes:
        """A checkpoint of ``flow``'s state as bytes (requirement ``"state"``)."""
        raise self._missing("state", "saving a flow's state")

    def load_state(self, flow: Any, state: bytes) -> None:
        """Load a checkpoint from :meth:`save_state` into ``flow`` in place (requirement ``"state"``)."""
        raise self._missing("state", "loading a flow's state")

    def convert(self, flow: Any, dtype: str) -> Any:
        """``flow`` converted to ``dtype`` as a user converts it (requirement ``"convert"``)."""
        raise self._missing("convert", "converting a flow to another dtype")

    def parameters(self, flow: Any) -> dict[str, Array]:
        """The flow's trainable parameters by canonical dotted name, as float64 arrays (requirement
        ``"parameters"``)."""
        raise self._missing("parameters", "reading parameters")

    def set_parameters(self, flow: Any, values: Mapping[str, Array]) -> None:
        """Overwrite the named parameters in place, as an optimiser step or a user's in-place edit
        does, without any other call (requirement ``"parameters"``)."""
        raise self._missing("parameters", "setting parameters")

    def reseed(self, seed: int) -> None:
        """Reseed the implementation's own random number generator, so that two evaluations draw the
        same noise (requirement ``"reseed"``)."""
        raise self._missing("reseed", "reseeding its random number generator")

    def checking(self, seed: int | None = None):
        """A context manager entered while the suite checks one property (deterministic kernels, no
        TF32, ...); ``seed`` (from :mod:`.seeding`) seeds the implementation's own random number
        generator where the adapter can reach it, so that draws the suite does not pass explicitly
        (black-box stochastic log-dets) are reproducible too."""
        import contextlib

        return contextlib.nullcontext()
