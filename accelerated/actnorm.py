"""ActNorm (Glow Sec. 3.1, Table 1) with data-dependent initialisation (see the reference).

z = (x + bias) · exp(log_scale) per channel of an event ``(C, *spatial)``; log|det| = S·Σ log_scale
with S the number of spatial positions (H·W for images, 1 for vectors).

Initialisation: the first forward in training mode of a flow whose ``initialized`` flag is not set
calls :meth:`ActNorm.initialize` on its batch, which sets ``bias`` and ``log_scale`` so that the
output has per-channel mean 0 and variance 1 (divisor n) over the batch and the spatial positions,
by the rule of :func:`flowspec.reference.actnorm.actnorm_init` (statistics in float64, over the
batches of every process under ``torch.distributed``: :func:`_channel_statistics`; a channel
whose values are all equal, as every channel of a batch of one vector is, is only centred, keeps
log_scale = 0, and a ``UserWarning`` names it; the standard deviation is floored at the smallest
normal number of the parameters' dtype). A flow built from a spec carries the spec's
``initialized`` flag and therefore never re-initialises; :meth:`ActNorm.initialize` called
explicitly always does.

Before initialisation, a forward in evaluation mode and an inverse in either mode raise
:class:`~flowspec.errors.ConfigError`: there is no batch to initialise from, and the identity
parameters of a fresh flow are not a trained state.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from flowspec.errors import ConfigError, FlowInputError
from flowspec.spec import FlowSpec

from .base import register
from .elementwise import _Elementwise


def _all_reduce(t: Tensor, op: str = "SUM") -> Tensor:
    """``t`` reduced in place over the processes of an initialised ``torch.distributed`` group of
    several processes by ``torch.distributed.ReduceOp.<op>``; ``t`` itself without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
    return t


def _channel_statistics(values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(constant, mean, std with divisor n) per row of ``values`` (channels × values), float64.

    Two passes: counts and sums give the mean, then sums of squared deviations from it, minima and
    maxima. Under an initialised ``torch.distributed`` group of several processes every one of them
    is all-reduced, so that data-parallel training initialises as one process would on the global
    batch (up to the order of the sums); a single process runs the same code without the reductions."""
    count = _all_reduce(torch.tensor([float(values.shape[1])], dtype=torch.float64, device=values.device))
    mean = _all_reduce(values.sum(dim=1)) / count
    squares = _all_reduce(((values - mean[:, None]) ** 2).sum(dim=1))
    low, high = _all_reduce(values.amin(dim=1), "MIN"), _all_reduce(values.amax(dim=1), "MAX")
    return high == low, mean, torch.sqrt(squares / count)


@register("actnorm")
class ActNorm(_Elementwise):
    """Per-channel affine flow with data-dependent initialisation (module docstring)."""

    conformance_hooks = frozenset({"initialize"})
    data_dependent_init = True

    def __init__(self, shape: Sequence[int], *, validate_args: bool | None = None):
        super().__init__(shape, validate_args=validate_args)
        channels = self._shape[0]
        self.bias = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.register_buffer("initialized", torch.tensor(False))
        self._ready = False  # mirrors ``initialized`` once it has been seen set (avoids a device sync)
        self._positions = math.prod(self._shape[1:])

    # ------------------------------------------------------------------ initialisation
    def is_initialized(self) -> bool:
        """Whether ``bias`` and ``log_scale`` hold an initialised (or loaded) state."""
        if not self._ready:
            self._ready = bool(self.initialized)
        return self._ready

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set ``bias`` and ``log_scale`` from the batch ``x`` (module docstring) and mark the flow initialised."""
        self._check(x, self.event_shape, self.domain, "x")
        if x.shape[0] == 0:
            raise FlowInputError("the data-dependent initialisation of actnorm needs at least one sample")
        values = x.detach().transpose(0, 1).reshape(self._shape[0], -1).to(torch.float64)
        constant, mean, std = _channel_statistics(values)
        std = std.clamp_min(torch.finfo(self.log_scale.dtype).tiny)
        self.bias.copy_(torch.where(constant, -values[:, 0], -mean))
        self.log_scale.copy_(torch.where(constant, torch.zeros_like(std), -torch.log(std)))
        self.initialized.fill_(True)
        self._ready = True
        if bool(constant.any()):
            channels = torch.nonzero(constant).flatten().tolist()
            warnings.warn(
                f"actnorm initialisation: channels {channels} have no spread in the batch "
                f"({values.shape[1]} value(s) per channel); they were centred and their scale left at 1",
                UserWarning, stacklevel=2,
            )

    def _require_initialized(self, what: str) -> None:
        if not self.is_initialized():
            raise ConfigError(
                f"actnorm is not initialised: {what} needs a forward in training mode or initialize(x) "
                f"first (a flow loaded from an initialised spec needs neither)"
            )

    # ------------------------------------------------------------------ the map
    def _per_channel(self, t: Tensor) -> Tensor:
        return t.reshape((-1,) + (1,) * (len(self._shape) - 1))

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.training and not self.is_initialized():
            self.initialize(x)
        self._require_initialized("a forward in evaluation mode")
        z = (x + self._per_channel(self.bias)) * torch.exp(self._per_channel(self.log_scale))
        return z, (self._positions * self.log_scale.sum()).expand(x.shape[0])

    def _inverse(self, z: Tensor, context: Tensor | None) -> Tensor:
        self._require_initialized("the inverse")
        return z * torch.exp(-self._per_channel(self.log_scale)) - self._per_channel(self.bias)

    def _inverse_and_logdet(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """log|det ∂x/∂z| = −S·Σ log_scale."""
        return self._inverse(z, context), (-self._positions * self.log_scale.sum()).expand(z.shape[0])

    # ------------------------------------------------------------------ loading
    @classmethod
    def fresh_from_spec(cls, spec: FlowSpec) -> "ActNorm":
        """A new, uninitialised flow for ``spec``'s config (its params are not loaded)."""
        cls.require_kind(spec)
        return cls(**spec.config).to(torch.float64)

    def load_spec_params(self, spec: FlowSpec) -> None:
        flag = np.asarray(spec.params.get("initialized", 0.0))
        if flag.shape != () or float(flag) not in (0.0, 1.0):
            raise ConfigError(f"param 'initialized' of actnorm must be the scalar 0 or 1, got {flag.tolist()!r}")
        super().load_spec_params(spec)
        self._ready = False

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._ready = False
