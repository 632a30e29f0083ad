"""Invertible 1×1 convolutions (Glow Sec. 3.2, Table 1; see the reference).

``conv1x1``: z[:, :, h, w] = W · x[:, :, h, w] with a full C×C ``weight``;
log|det| = H·W · log|det W| from ``torch.linalg.slogdet`` (the log-modulus, finite for a negative
determinant, where the log of the signed determinant is NaN). Inverse: a linear solve with W.

``conv1x1_lu``: W = P · L · (U + diag(sign_s · exp(log_s))) with the fixed buffers ``P``
(permutation matrix) and ``sign_s``, and the trained ``lower`` (strict lower triangle used, unit
diagonal), ``upper`` (strict upper triangle used) and ``log_s``; log|det| = H·W · Σ log_s.
Inverse: Pᵀ, then a unit-lower and an upper triangular solve.

A fresh flow starts from a random rotation (Glow's initialisation); its LU form is that rotation's
LU factorisation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowspec.errors import ConfigError, NumericalError
from flowspec.spec import FlowSpec

from .base import register
from .squeeze import ImageFlow


def _random_rotation(c: int) -> Tensor:
    q, r = torch.linalg.qr(torch.randn(c, c, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


class _Conv1x1(ImageFlow):
    """The shared 1×1 convolution; subclasses give the weight, log|det W| and the inverse."""

    def weight_matrix(self) -> Tensor:
        raise NotImplementedError

    def _log_abs_det_weight(self) -> Tensor:
        raise NotImplementedError

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        z = F.conv2d(x, self.weight_matrix()[:, :, None, None])
        logdet = self.height * self.width * self._log_abs_det_weight()
        return z, logdet.expand(x.shape[0])

    def _inverse_and_logdet(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """log|det ∂x/∂z| = −H·W·log|det W|."""
        logdet = -self.height * self.width * self._log_abs_det_weight()
        return self._inverse(z, context), logdet.expand(z.shape[0])

    def _pixels_as_columns(self, t: Tensor) -> Tensor:
        """``(b, C, H, W)`` → ``(b, C, H·W)``: one column per pixel, for the solves."""
        return t.reshape(t.shape[0], self.channels, self.height * self.width)


@register("conv1x1")
class Conv1x1(_Conv1x1):
    """1×1 convolution with a full weight (module docstring)."""

    def __init__(self, channels: int, height: int, width: int, *, validate_args: bool | None = None):
        super().__init__(channels, height, width, validate_args=validate_args)
        self.weight = nn.Parameter(_random_rotation(channels).float())

    def weight_matrix(self) -> Tensor:
        return self.weight

    def _log_abs_det_weight(self) -> Tensor:
        logabsdet = torch.linalg.slogdet(self.weight).logabsdet
        if self.validate_args and not bool(torch.isfinite(logabsdet)):
            raise NumericalError(f"the weight of conv1x1 is singular: log|det W| = {float(logabsdet.detach())}")
        return logabsdet

    def _inverse(self, z: Tensor, context: Tensor | None) -> Tensor:
        if self.validate_args:  # an SVD and a host sync per call: part of validation, as the log-det's check
            self._require_invertible()
        return torch.linalg.solve(self.weight, self._pixels_as_columns(z)).reshape(z.shape)

    def _require_invertible(self) -> None:
        """:class:`NumericalError` naming the weight where it is singular to working precision: its
        2-norm condition number is at least 1/ε of its dtype, where the solve's relative error bound
        κ·ε reaches 1 (a solve would return values, none of them meaningful)."""
        cond = float(torch.linalg.cond(self.weight.detach()))
        limit = 1.0 / torch.finfo(self.weight.dtype).eps
        if not cond < limit:
            raise NumericalError(f"the weight of conv1x1 is singular to working precision: condition number "
                                 f"{cond:.3g} ≥ 1/ε = {limit:.3g}, so its inverse is not defined")


@register("conv1x1_lu")
class Conv1x1LU(_Conv1x1):
    """LU-parameterised 1×1 convolution (module docstring)."""

    def __init__(self, channels: int, height: int, width: int, *, validate_args: bool | None = None):
        super().__init__(channels, height, width, validate_args=validate_args)
        perm, lower, upper = torch.linalg.lu(_random_rotation(channels))
        s = torch.diagonal(upper)
        self.register_buffer("P", perm.float())
        self.lower = nn.Parameter(torch.tril(lower, -1).float())
        self.upper = nn.Parameter(torch.triu(upper, 1).float())
        self.log_s = nn.Parameter(torch.log(torch.abs(s)).float())
        self.register_buffer("sign_s", torch.sign(s).float())

    def _unit_lower(self) -> Tensor:
        return torch.tril(self.lower, -1) + torch.eye(self.channels, dtype=self.lower.dtype, device=self.lower.device)

    def _upper_with_diagonal(self) -> Tensor:
        return torch.triu(self.upper, 1) + torch.diag(self.sign_s * torch.exp(self.log_s))

    def weight_matrix(self) -> Tensor:
        return self.P @ (self._unit_lower() @ self._upper_with_diagonal())

    def _log_abs_det_weight(self) -> Tensor:
        return self.log_s.sum()

    def _inverse(self, z: Tensor, context: Tensor | None) -> Tensor:
        y = self.P.transpose(0, 1) @ self._pixels_as_columns(z)
        y = torch.linalg.solve_triangular(self._unit_lower(), y, upper=False, unitriangular=True)
        return torch.linalg.solve_triangular(self._upper_with_diagonal(), y, upper=True).reshape(z.shape)

    def load_spec_params(self, spec: FlowSpec) -> None:
        """Load, then check that ``P`` is a permutation matrix and ``sign_s`` holds only ±1."""
        super().load_spec_params(spec)
        p, sign = self.P.detach().cpu(), self.sign_s.detach().cpu()
        is_perm = bool(((p == 0) | (p == 1)).all()) and bool((p.sum(0) == 1).all()) and bool((p.sum(1) == 1).all())
        if not is_perm:
            raise ConfigError(f"param 'P' of conv1x1_lu must be a permutation matrix, got {p.tolist()}")
        if not bool(((sign == 1) | (sign == -1)).all()):
            raise ConfigError(f"param 'sign_s' of conv1x1_lu must hold only −1 and +1, got {sign.tolist()}")
