"""flowspec.conformance: a hypothesis property suite holding any implementation to the reference.

Run it with ``flowspec conformance [--impl MODULE:ATTR]`` or, inside pytest,
``pytest --pyargs flowspec.conformance --flowspec-impl=MODULE:ATTR``. An implementation is reached
through an :class:`Adapter` (see :mod:`.adapter`; :class:`TorchFlowAdapter` covers torch modules).

Modules: the properties of every kind are in :mod:`.generic` (values, log-dets and inverses in both
directions, batch independence, bad input), :mod:`.state` (modes, gradient-enabled forwards,
checkpoints, data-dependent initialisation, dtype conversion), :mod:`.gradients` (black-box
gradients, gradients through the inverse) and :mod:`.configs` (config defaults and invalid
configs); each family module (same names as in the reference and accelerated layers) registers its
kinds' spec strategies and its own properties. Shared machinery: :mod:`.tolerances` (the one
tolerance table), :mod:`.seeding` (the one place randomness is seeded), :mod:`.covering` (the ci
profile's covering design and the coverage record), :mod:`.profiles` (hypothesis profiles ``ci``
and ``thorough``), :mod:`.strategies`, :mod:`.finite_diff`, :mod:`.stats`, :mod:`.runner`,
:mod:`.report`.
"""
from __future__ import annotations

import importlib
import pkgutil

from .adapter import Adapter, Capabilities, Declined, ForeignKind, NotSupported
from .property import PROPERTIES, CheckContext, Inconclusive, Property, PropertyFailure, prop
from .runner import Result, run, run_one
from .torch_adapter import TorchFlowAdapter

_NOT_FAMILIES = {"cli", "pytest_plugin", "adapters"}


def load_families() -> None:
    """Import every family module of the suite so that its strategies and properties register."""
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith(("_", "test_")) and module.name not in _NOT_FAMILIES:
            importlib.import_module(f"{__name__}.{module.name}")


def resolve(target: str) -> Adapter:
    """The adapter named by ``MODULE:ATTR`` (or ``MODULE``, whose ``conformance_adapter`` is used)."""
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    adapter = getattr(module, attr or "conformance_adapter", None)
    if adapter is None:
        raise ValueError(f"{module_name} has no attribute {attr or 'conformance_adapter'!r}")
    if callable(adapter) and not isinstance(adapter, Adapter):
        adapter = adapter()
    if not isinstance(adapter, Adapter):
        raise TypeError(f"{target} is a {type(adapter).__name__}, not a flowspec.conformance.Adapter")
    return adapter


__all__ = [
    "Adapter", "Capabilities", "CheckContext", "Declined", "ForeignKind", "Inconclusive", "NotSupported", "PROPERTIES", "Property",
    "PropertyFailure", "Result", "TorchFlowAdapter", "load_families", "prop", "resolve", "run", "run_one",
]
