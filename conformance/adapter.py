"""The adapter protocol: how the suite talks to an implementation.

An adapter declares :class:`Capabilities` and turns the suite's float64 NumPy arrays into calls on
the implementation. It works in one or both modes:

* **white-box** (``"white_box"`` in ``modes``): :meth:`Adapter.load` builds the implementation's flow
  from a :class:`~flowspec.FlowSpec`, so its values can be compared to the reference's one by one;
* **black-box** (``"black_box"``): :meth:`Adapter.instantiate` builds some flow of a kind from a
  config and a seed, and only its own forward / inverse / log-det are examined (finite-difference
  Jacobians, round trips, claimed structure).

Optional hooks (``diag_jacobian``, ``logdet_estimate``, ``spectral_norm_estimate``, …) are named in
``Capabilities.hooks`` and reached through :meth:`Adapter.call_hook`. A property that needs a
capability the adapter lacks is reported *not supported*, never passed.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from flowspec.spec import FlowSpec

Array = np.ndarray


class NotSupported(Exception):
    """Raised by an adapter (or the suite) when a capability is missing."""


@dataclass(frozen=True)
class Capabilities:
    """What an adapter can do. ``hooks`` names optional operations such as ``"grad"``."""

    kinds: frozenset[str]
    dtypes: frozenset[str] = frozenset({"float64", "float32"})
    devices: frozenset[str] = frozenset({"cpu"})
    modes: frozenset[str] = frozenset({"white_box", "black_box"})
    hooks: frozenset[str] = frozenset({"inverse", "grad"})
    input_errors: tuple[type[BaseException], ...] = field(default=(Exception,))

    def has(self, requirement: str) -> bool:
        return requirement in self.modes or requirement in self.hooks


class Adapter(ABC):
    """Base class of adapters (see the module docstring). Arrays in and out are float64 NumPy."""

    name: str = "adapter"

    @abstractmethod
    def capabilities(self) -> Capabilities:
        ...

    def load(self, spec: FlowSpec, dtype: str, device: str) -> Any:
        """White-box: the implementation's flow with exactly the parameters of ``spec``."""
        raise NotSupported(f"{self.name} cannot load a FlowSpec")

    def instantiate(self, kind: str, config: Mapping[str, Any], seed: int, dtype: str, device: str) -> Any:
        """Black-box: some flow of ``kind`` with ``config``, its parameters drawn from ``seed``."""
        raise NotSupported(f"{self.name} cannot instantiate flows without a FlowSpec")

    @abstractmethod
    def forward(self, flow: Any, x: Array, context: Array | None = None, *, raw: bool = False) -> tuple[Array, Array]:
        """``(z, log|det|)``. With ``raw=True`` the input is passed on as it is (bad-input checks)."""

    def inverse(self, flow: Any, z: Array, context: Array | None = None, *, raw: bool = False) -> Array:
        raise NotSupported(f"{self.name} has no inverse")

    def vjp(
        self, flow: Any, x: Array, z_weight: Array, logdet_weight: Array, context: Array | None = None
    ) -> tuple[dict[str, Array], Array]:
        """Gradients of ``Σ z_weight·z + Σ logdet_weight·log|det|`` w.r.t. params (canonical names) and x."""
        raise NotSupported(f"{self.name} exposes no gradients")

    def call_hook(self, flow: Any, hook: str, *args: Any, **kwargs: Any) -> Any:
        """Run an optional hook named in ``Capabilities.hooks``."""
        raise NotSupported(f"{self.name} has no hook {hook!r}")

    def checking(self, seed: int | None = None):
        """A context manager entered while the suite checks one property (deterministic kernels, no
        TF32, ...); ``seed`` (from :mod:`.seeding`) seeds the implementation's own random number
        generator where the adapter can reach it, so that draws the suite does not pass explicitly
        (black-box stochastic log-dets) are reproducible too."""
        import contextlib

        return contextlib.nullcontext()
