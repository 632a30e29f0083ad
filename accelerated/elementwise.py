"""Elementwise bijections: affine, sigmoid, and the logit transform with α (see the reference)."""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from flowspec.errors import ConfigError

from .base import Flow, batch_sum, int_list, register, softplus


class _Elementwise(Flow):
    def __init__(self, shape: Sequence[int], *, validate_args: bool | None = None):
        super().__init__(validate_args=validate_args)
        shape = tuple(int_list(shape, "shape"))
        if not shape or min(shape) <= 0:
            raise ConfigError(f"shape must be a non-empty list of positive ints, got {shape!r}")
        self._shape = shape

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self._shape

    def config(self) -> dict[str, Any]:
        return {"shape": list(self._shape)}


@register("elementwise_affine")
class ElementwiseAffine(_Elementwise):
    """z = x ⊙ exp(log_scale) + shift; log|det| = Σ log_scale."""

    def __init__(self, shape: Sequence[int], *, validate_args: bool | None = None):
        super().__init__(shape, validate_args=validate_args)
        self.shift = nn.Parameter(torch.zeros(self._shape))
        self.log_scale = nn.Parameter(torch.zeros(self._shape))

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        z = x * torch.exp(self.log_scale) + self.shift
        return z, self.log_scale.sum().expand(x.shape[0])

    def _inverse(self, z: Tensor, context: Tensor | None) -> Tensor:
        return (z - self.shift) * torch.exp(-self.log_scale)

    def _inverse_and_logdet(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """log|det ∂x/∂z| = −Σ log_scale."""
        return self._inverse(z, context), (-self.log_scale.sum()).expand(z.shape[0])


@register("sigmoid")
class Sigmoid(_Elementwise):
    """z = σ(x); log|det| = Σ log σ(x) + log σ(−x), computed with softplus to stay finite (the exact
    one: torch's returns its argument above 20, off by e⁻²⁰ ≈ 2e-9 there)."""

    codomain = (0.0, 1.0)

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return torch.sigmoid(x), -batch_sum(softplus(x) + softplus(-x))

    def _inverse(self, z: Tensor, context: Tensor | None) -> Tensor:
        return torch.log(z) - torch.log1p(-z)

    def _inverse_and_logdet(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """x = logit(z); log|det ∂x/∂z| = −Σ [log z + log(1 − z)], from z itself (exact where z is
        near 0 or 1, where x = logit(z) has lost the digits that a forward log-det at x would need)."""
        log_z, log_1mz = torch.log(z), torch.log1p(-z)
        return log_z - log_1mz, -batch_sum(log_z + log_1mz)


@register("logit")
class Logit(_Elementwise):
    """z = logit(α + (1 − 2α)x) for x in (0, 1) (Residual Flows App. E).

    log|det| = D·log(1 − 2α) − Σ [log y + log(1 − y)] with y = α + (1 − 2α)x.
    """

    domain = (0.0, 1.0)

    def __init__(self, shape: Sequence[int], alpha: float = 0.05, *, validate_args: bool | None = None):
        super().__init__(shape, validate_args=validate_args)
        if not 0.0 <= alpha < 0.5:
            raise ConfigError(f"alpha of the logit transform must lie in [0, 0.5), got {alpha!r}")
        self.alpha = float(alpha)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "alpha": self.alpha}

    @property
    def codomain(self) -> tuple[float | None, float | None]:  # type: ignore[override]
        """(logit α, logit(1 − α)), the image of (0, 1) (the reals for α = 0): the inverse rejects
        a z outside it, which has no preimage in the domain."""
        if self.alpha == 0.0:
            return (None, None)
        bound = math.log1p(-self.alpha) - math.log(self.alpha)
        return (-bound, bound)

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        y = self.alpha + (1.0 - 2.0 * self.alpha) * x
        log_y, log_1my = torch.log(y), torch.log1p(-y)
        n = math.prod(self._shape)
        return log_y - log_1my, n * math.log1p(-2.0 * self.alpha) - batch_sum(log_y + log_1my)

    def _inverse(self, z: Tensor, context: Tensor | None) -> Tensor:
        return (torch.sigmoid(z) - self.alpha) / (1.0 - 2.0 * self.alpha)

    def _inverse_and_logdet(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """x = (σ(z) − α)/(1 − 2α); log|det ∂x/∂z| = Σ [log σ(z) + log σ(−z)] − D·log(1 − 2α)."""
        n = math.prod(self._shape)
        logdet = -batch_sum(softplus(-z) + softplus(z)) - n * math.log1p(-2.0 * self.alpha)
        return self._inverse(z, context), logdet
