"""Radial flow (survey eq. 17-18) with the invertibility reparameterisation (see :mod:`flowspec.reference.radial`).

    f(x) = x + β·(x − x0)/(α + r),    r = ‖x − x0‖,    α = softplus(α̂),    β = −α + softplus(β̂).

log|det| = (D − 1)·log(1 + βh) + log(1 + βh + βh'r), evaluated as

    (D − 1)·[log(α + β + r) − log(α + r)] + log(α(α + β) + 2αr + r²) − 2·log(α + r)

(1 + βh = (α + β + r)/(α + r) and 1 + βh + βh'r = ((α + r)² + αβ)/(α + r)²), where α + β = softplus(β̂) > 0:
sums of positive terms, no cancellation. Inverse in closed form: r is the non-negative root of
r² + (α + β − ρ)·r − αρ = 0 with ρ = ‖z − x0‖, and x = x0 + (z − x0)·(α + r)/(α + β + r).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .base import Flow, register, softplus
from .planar import vector_size


@register("radial")
class Radial(Flow):
    """f(x) = x + β(x − x0)/(α + ‖x − x0‖) on vectors of size D (module docstring); starts as the identity."""

    def __init__(self, shape: Sequence[int], *, validate_args: bool | None = None):
        super().__init__(validate_args=validate_args)
        d = vector_size(self.kind, shape)
        self._shape = (d,)
        self.alpha_hat = nn.Parameter(torch.zeros(()))
        self.beta_hat = nn.Parameter(torch.zeros(()))
        self.x0 = nn.Parameter(torch.zeros(d))

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self._shape

    def config(self) -> dict[str, Any]:
        return {"shape": list(self._shape)}

    def _coefficients(self) -> tuple[Tensor, Tensor, Tensor]:
        """(α, β, α + β)."""
        alpha, alpha_beta = softplus(self.alpha_hat), softplus(self.beta_hat)
        return alpha, alpha_beta - alpha, alpha_beta

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        alpha, beta, alpha_beta = self._coefficients()
        d = x - self.x0
        r = torch.linalg.vector_norm(d, dim=1)
        z = x + (beta / (alpha + r))[:, None] * d
        log_ar = torch.log(alpha + r)
        logdet = (self._shape[0] - 1) * (torch.log(alpha_beta + r) - log_ar) \
            + torch.log(alpha * alpha_beta + 2.0 * alpha * r + r * r) - 2.0 * log_ar
        return z, logdet

    def _inverse(self, z: Tensor, context: Tensor | None) -> Tensor:
        alpha, _, alpha_beta = self._coefficients()
        d = z - self.x0
        rho = torch.linalg.vector_norm(d, dim=1)
        b = alpha_beta - rho
        disc = torch.sqrt(b * b + 4.0 * alpha * rho)
        nonneg = b >= 0
        # Both root formulas are evaluated; the unused one gets a safe denominator (no inf in autograd).
        r = torch.where(nonneg, 2.0 * alpha * rho / torch.where(nonneg, b + disc, 1.0), 0.5 * (disc - b))
        return self.x0 + d * ((alpha + r) / (alpha_beta + r))[:, None]
