"""Sequential composition: z = f_n ∘ … ∘ f_1 (x), log-determinants summed."""
from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor, nn

from flowspec.errors import ConfigError
from flowspec.spec import FlowSpec

from .base import Flow, from_spec, register


@register("sequential")
class Sequential(Flow):
    """Children applied first to last in the forward direction, last to first in the inverse.

    Conditional children (those with a ``context_shape``) receive the context; others do not.
    """

    def __init__(self, flows: Sequence[Flow], *, validate_args: bool | None = None):
        super().__init__(validate_args=validate_args)
        if not flows:
            raise ConfigError("a sequential flow needs at least one child")
        for child in flows:
            child.validate_args = False  # the sequence validates its own input and output
        self.flows = nn.ModuleList(flows)
        shapes = {f.context_shape for f in flows if f.context_shape is not None}
        if len(shapes) > 1:
            raise ConfigError(f"children need different context shapes: {sorted(shapes)}")
        self.context_shape = next(iter(shapes), None)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.flows[0].event_shape

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self.flows[-1].latent_shape

    @property
    def domain(self):  # type: ignore[override]
        return self.flows[0].domain

    @property
    def codomain(self):  # type: ignore[override]
        return self.flows[-1].codomain

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"event_shape": list(self.event_shape), "latent_shape": list(self.latent_shape)}
        if self.context_shape is not None:
            config["context_shape"] = list(self.context_shape)
        return config

    def _context(self, child: Flow, context: Tensor | None) -> Tensor | None:
        return context if child.context_shape is not None else None

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        total = None
        for child in self.flows:
            x, logdet = child(x, self._context(child, context))
            total = logdet if total is None else total + logdet
        return x, total

    def _inverse(self, z: Tensor, context: Tensor | None) -> Tensor:
        for child in reversed(self.flows):
            z = child.inverse(z, self._context(child, context))
        return z

    def spec_children(self) -> dict[str, Flow]:
        return {str(i): f for i, f in enumerate(self.flows)}

    @classmethod
    def from_spec(cls, spec: FlowSpec) -> "Sequential":
        children = [spec.params[str(i)] for i in range(len(spec.params))]
        return cls([from_spec(c) for c in children])
