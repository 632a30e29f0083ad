"""A distribution over a flow, in the style of torch.distributions, nflows and zuko.

``FlowDistribution(flow)`` pushes a standard normal base through ``flow.inverse``:
``log_prob(x) = log N(f(x); 0, I) + log|det ∂f/∂x|``; ``rsample`` draws ``z ~ N(0, I)`` and returns
``f⁻¹(z)`` with gradients (where the flow's inverse is differentiable); ``sample`` does the same
under ``torch.no_grad``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from flowspec.errors import FlowInputError

from .base import Flow, batch_sum


class FlowDistribution(torch.distributions.Distribution):
    """Standard-normal base distribution transformed by ``flow`` (data = f⁻¹(latent))."""

    arg_constraints: dict = {}
    has_rsample = True

    def __init__(self, flow: Flow, context: Tensor | None = None):
        self.flow = flow
        self.context = context
        batch_shape = torch.Size() if context is None else context.shape[:1]
        super().__init__(batch_shape, torch.Size(flow.event_shape), validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        z, logdet = self.flow(value, self.context)
        d = math.prod(z.shape[1:])
        return -0.5 * batch_sum(z ** 2) - 0.5 * d * math.log(2.0 * math.pi) + logdet

    def rsample(self, sample_shape: Sequence[int] = torch.Size(), generator: torch.Generator | None = None) -> Tensor:
        shape = torch.Size(sample_shape)
        n = math.prod(shape) if self.context is None else self._conditional_count(shape)
        anchor = self.flow._anchor
        z = torch.randn((n, *self.flow.latent_shape), dtype=anchor.dtype, device=anchor.device, generator=generator)
        x = self.flow.inverse(z, self.context)
        return x.reshape(*shape, *self.flow.event_shape) if self.context is None else x

    def _conditional_count(self, shape: torch.Size) -> int:
        """A conditional distribution draws one sample per context row: ``sample_shape`` must be
        ``()`` or ``(rows,)``."""
        rows = self.context.shape[0]
        if tuple(shape) not in ((), (rows,)):
            raise FlowInputError(f"a conditional distribution draws one sample per context row ({rows} rows); "
                                 f"sample_shape must be () or ({rows},), got {tuple(shape)}")
        return rows

    def sample(self, sample_shape: Sequence[int] = torch.Size(), generator: torch.Generator | None = None) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape, generator)
