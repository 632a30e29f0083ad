"""A distribution over a flow, in the style of torch.distributions, nflows and zuko.

``FlowDistribution(flow)`` pushes a standard normal base through ``flow.inverse``:
``log_prob(x) = log N(f(x); 0, I) + log|det ∂f/∂x|``; ``rsample`` draws ``z ~ N(0, I)`` and returns
``f⁻¹(z)`` with gradients (where the flow's inverse is differentiable); ``sample`` does the same
under ``torch.no_grad``; ``rsample_and_log_prob`` returns the samples with their log-density from the
same inverse pass, ``log p(x) = log N(z; 0, I) − log|det ∂x/∂z|`` (:meth:`Flow.inverse_and_logdet`).
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
        """``log N(f(x); 0, I) + log|det ∂f/∂x|`` per sample."""
        z, logdet = self.flow(value, self.context)
        return standard_normal_log_prob(z) + logdet

    def rsample(self, sample_shape: Sequence[int] = torch.Size(), generator: torch.Generator | None = None) -> Tensor:
        """``x = f⁻¹(z)``, ``z ~ N(0, I)``, differentiable in the flow's parameters."""
        shape, z = self._latents(sample_shape, generator)
        return self._shaped(self.flow.inverse(z, self.context), shape)

    def rsample_and_log_prob(self, sample_shape: Sequence[int] = torch.Size(),
                             generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``(x, log p(x))`` from one inverse pass: ``(x, log|det ∂x/∂z|) = f⁻¹(z)`` and
        ``log p(x) = log N(z; 0, I) − log|det ∂x/∂z|`` (the inverse function theorem), differentiable."""
        shape, z = self._latents(sample_shape, generator)
        x, logdet = self.flow.inverse_and_logdet(z, self.context)
        log_p = standard_normal_log_prob(z) - logdet
        return self._shaped(x, shape), (log_p.reshape(shape) if self.context is None else log_p)

    def sample_and_log_prob(self, sample_shape: Sequence[int] = torch.Size(),
                            generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """:meth:`rsample_and_log_prob` under ``torch.no_grad``."""
        with torch.no_grad():
            return self.rsample_and_log_prob(sample_shape, generator)

    def _latents(self, sample_shape: Sequence[int], generator: torch.Generator | None) -> tuple[torch.Size, Tensor]:
        shape = torch.Size(sample_shape)
        n = math.prod(shape) if self.context is None else self._conditional_count(shape)
        anchor = self.flow._anchor
        z = torch.randn((n, *self.flow.latent_shape), dtype=anchor.dtype, device=anchor.device, generator=generator)
        return shape, z

    def _shaped(self, x: Tensor, shape: torch.Size) -> Tensor:
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
        """:meth:`rsample` under ``torch.no_grad``."""
        with torch.no_grad():
            return self.rsample(sample_shape, generator)


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """``log N(z; 0, I) = −½‖z‖² − ½·d·log 2π`` per sample, d the entries of one sample."""
    return -0.5 * batch_sum(z ** 2) - 0.5 * math.prod(z.shape[1:]) * math.log(2.0 * math.pi)
