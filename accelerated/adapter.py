"""The conformance adapter of :mod:`flowspec.accelerated` (``flowspec conformance``'s default).

White-box: flows are built with :func:`~flowspec.accelerated.from_spec`. Black-box: flows are
built from the reference's generic random parameters for a config and seed, then examined only
through their own forward, inverse and log-det. ``fresh`` builds the flow as a user constructs it
(:meth:`~flowspec.accelerated.base.Flow.fresh_from_spec`): kinds with a data-dependent
initialisation (actnorm) keep their construction values, uninitialised. ``construct`` calls the
class with the config as keywords, as a user does (no reference check of the config first;
composite kinds, built from their children, lack the requirement). Every flow has
``inverse_and_logdet`` (requirement ``"inverse_logdet"``) and ``to_spec`` (hook ``"to_spec"``). Hooks are those of
:class:`~flowspec.conformance.TorchFlowAdapter` plus the union of the ``conformance_hooks`` that the
flow classes declare.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from flowspec import registry
from flowspec.conformance.adapter import Capabilities, NotSupported
from flowspec.conformance.torch_adapter import TorchFlowAdapter
from flowspec.errors import FlowInputError

from .base import MODULES, from_spec, fresh_from_spec


def _hooks(classes: Any) -> set[str]:
    return {hook for cls in classes for hook in getattr(cls, "conformance_hooks", ())}


class AcceleratedAdapter(TorchFlowAdapter):
    """:class:`TorchFlowAdapter` over :data:`MODULES`, optionally with some kinds' classes replaced."""

    def __init__(
        self, overrides: Mapping[str, type] | None = None, name: str = "flowspec.accelerated", *, white_box: bool = True
    ):
        self.overrides = dict(overrides or {})
        super().__init__(
            name=name,
            kinds=lambda: set(MODULES) | set(self.overrides),
            builder=self._build,
            instantiator=lambda kind, config, seed: self._build(_spec(kind, config, seed)),
            fresh=lambda kind, config, seed: self._build(_spec(kind, config, seed), fresh=True),
            constructor=self._construct,
            hooks=_hooks(list(MODULES.values()) + list(self.overrides.values())) | {"inverse_logdet", "to_spec"},
            input_errors=(FlowInputError,),
            white_box=white_box,
        )

    def capabilities(self) -> Capabilities:
        """Those of :class:`TorchFlowAdapter`, less ``construct`` for the composite kinds."""
        caps = super().capabilities()
        composites = {kind: frozenset({"construct"}) for kind in caps.kinds if registry.get(kind).composite}
        return dataclasses.replace(caps, without={**caps.without, **composites})

    def _build(self, spec: Any, *, fresh: bool = False) -> Any:
        if spec.kind in self.overrides:
            cls = self.overrides[spec.kind]
            return cls.fresh_from_spec(spec) if fresh else cls.from_spec(spec)
        return fresh_from_spec(spec) if fresh else from_spec(spec)

    def _construct(self, kind: str, config: Mapping[str, Any]) -> Any:
        _require_leaf(kind, "constructed from a config alone")
        return self.overrides.get(kind, MODULES.get(kind))(**config)


def _spec(kind: str, config: Mapping[str, Any], seed: int) -> Any:
    """A spec with the reference's generic random parameters; composite kinds (a sequence, a
    multi-scale model) are described by their children's specs, which no config carries, so they
    cannot be built from a config and a seed: the property is then not supported in black-box mode."""
    import numpy as np

    from flowspec import reference

    _require_leaf(kind, "instantiated from a config and a seed (black-box mode)")
    return reference.init_spec(kind, config, np.random.default_rng(seed))


def _require_leaf(kind: str, what: str) -> None:
    """Raise :class:`NotSupported` for a composite kind (a sequence, a multi-scale model), which is
    described by its children's specs and so cannot be ``what``."""
    if registry.get(kind).composite:
        raise NotSupported(f"a {kind!r} flow is described by its children's specs; it cannot be {what}")


conformance_adapter = AcceleratedAdapter()
