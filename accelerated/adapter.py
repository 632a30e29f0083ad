"""The conformance adapter of :mod:`flowspec.accelerated` (``flowspec conformance``'s default).

White-box: flows are built with :func:`~flowspec.accelerated.from_spec`. Black-box: flows are
built from the reference's generic random parameters for a config and seed, then examined only
through their own forward, inverse and log-det. Hooks are the union of the ``conformance_hooks``
that the flow classes declare.
"""
from __future__ import annotations

from typing import Any, Mapping

from flowspec.conformance.torch_adapter import TorchFlowAdapter
from flowspec.errors import FlowInputError

from .base import MODULES, from_spec


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
            hooks=_hooks(list(MODULES.values()) + list(self.overrides.values())),
            input_errors=(FlowInputError,),
            white_box=white_box,
        )

    def _build(self, spec: Any) -> Any:
        if spec.kind in self.overrides:
            return self.overrides[spec.kind].from_spec(spec)
        return from_spec(spec)


def _spec(kind: str, config: Mapping[str, Any], seed: int) -> Any:
    import numpy as np

    from flowspec import reference

    return reference.init_spec(kind, config, np.random.default_rng(seed))


conformance_adapter = AcceleratedAdapter()
