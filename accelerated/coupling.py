"""Coupling layers: NICE's additive and RealNVP's affine coupling (see :mod:`flowspec.reference.coupling`).

With the mask ``b`` (True on the entries that pass unchanged) and a conditioner that reads only
``b⊙x`` (and an optional context):

* :class:`AdditiveCoupling`: z = b⊙x + (1 − b)⊙(x + t),             log|det| = 0;
* :class:`AffineCoupling`:   z = b⊙x + (1 − b)⊙(x⊙exp(s) + t),      log|det| = Σ_{b=0} s,
  s = scale_factor·tanh(s_raw)   (survey eq. 36-39).

The MLP conditioner gathers the unchanged entries (flat order) and the context and outputs
``k·n_t`` values for the ``n_t`` transformed entries; the conv conditioner (3×3 convolutions, zero
padding) and the attention conditioner (Flow++'s gated convolution and self-attention blocks,
:mod:`.attention`) read the masked image, followed on the channel axis by an image context of
``context_channels`` channels, and output ``k·C`` channels used where ``b = 0``. With ``k = 2``
the first half of the output is ``s_raw`` and the second ``t``. The inverse reads the same
unchanged entries from z, so it is exact and as fast as the forward.
"""
from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch
from torch import Tensor, nn

from flowspec import registry
from flowspec.reference.coupling import DEFAULTS, IMAGE_CONDITIONERS

from .attention import attention_net
from .base import Flow, batch_sum, register

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU}
BLOCKS, HEADS = DEFAULTS["blocks"], DEFAULTS["heads"]


def unchanged_mask(shape: Sequence[int], mask: str, parity: int) -> Tensor:
    """The boolean mask b of ``shape`` (True: unchanged, read by the conditioner).

    ``"channel"``: the first ⌊n/2⌋ entries of a vector, or channels of an image; ``"checkerboard"``:
    odd indices of a vector, odd h + w in an image; ``parity = 1`` takes the complement.
    """
    if mask == "checkerboard":
        if len(shape) == 1:
            base = torch.arange(shape[0]) % 2 == 1
        else:
            base = (torch.arange(shape[1])[:, None] + torch.arange(shape[2])[None, :]) % 2 == 1
    else:
        base = torch.arange(shape[0]) < shape[0] // 2
        if len(shape) == 3:
            base = base[:, None, None]
    return (base != bool(parity)).expand(*shape).clone()


def conditioner_net(
    kind: str, n_in: int, n_out: int, hidden: int, depth: int, activation: str, *,
    blocks: int = BLOCKS, heads: int = HEADS,
) -> nn.Sequential:
    """Layers ``net.0, net.2, …, net.{2·depth}`` with activations between (dense or 3×3 conv); for
    ``kind = "attention"`` :func:`.attention.attention_net` with ``blocks`` and ``heads``."""
    if kind == "attention":
        return attention_net(n_in, n_out, hidden, blocks, heads, ACTIVATIONS[activation])
    widths = [n_in] + [hidden] * depth + [n_out]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b) if kind == "mlp" else nn.Conv2d(a, b, 3, padding=1))
        if i < depth:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class _Coupling(Flow):
    """Shared machinery of both coupling laws; subclasses define :meth:`_law`."""

    outputs_per_entry: ClassVar[int] = 1

    def __init__(
        self,
        shape: Sequence[int],
        mask: str = "channel",
        parity: int = 0,
        conditioner: str = "mlp",
        hidden: int = 8,
        depth: int = 1,
        activation: str = "tanh",
        context_dim: int = 0,
        *,
        context_channels: int = 0,
        blocks: int = BLOCKS,
        heads: int = HEADS,
        validate_args: bool | None = None,
        **law_config: Any,
    ):
        """``law_config``: the coupling law's own config entries (``scale_factor`` of the affine law);
        entries the kind does not know are rejected with a :class:`~flowspec.errors.ConfigError`."""
        super().__init__(validate_args=validate_args)
        self._config: dict[str, Any] = {
            "shape": list(shape) if isinstance(shape, (list, tuple)) else shape, "mask": mask, "parity": parity,
            "conditioner": conditioner, "hidden": hidden, "depth": depth, "activation": activation,
            "context_dim": context_dim, "context_channels": context_channels, "blocks": blocks, "heads": heads,
            **law_config,
        }
        registry.get(self.kind).validate_config(self._config)
        self._shape = tuple(self._config["shape"])
        self.conditioner = conditioner
        self.context_dim = context_dim
        self.context_shape = (
            (context_dim,) if context_dim else (context_channels, *self._shape[1:]) if context_channels else None
        )
        keep = self._build_mask(self._shape, mask, parity)
        self.register_buffer("_keep", keep, persistent=False)
        flat = keep.reshape(-1)
        keep_idx, trans_idx = torch.nonzero(flat).reshape(-1), torch.nonzero(~flat).reshape(-1)
        self.register_buffer("_keep_idx", keep_idx, persistent=False)
        self.register_buffer("_trans_idx", trans_idx, persistent=False)
        self.register_buffer("_perm", torch.argsort(torch.cat([keep_idx, trans_idx])), persistent=False)
        if conditioner in IMAGE_CONDITIONERS:
            n_in, n_out = self._shape[0] + context_channels, self.outputs_per_entry * self._shape[0]
        else:
            n_in, n_out = len(keep_idx) + context_dim, self.outputs_per_entry * len(trans_idx)
        self.net = conditioner_net(conditioner, n_in, n_out, hidden, depth, activation, blocks=blocks, heads=heads)

    @staticmethod
    def _build_mask(shape: tuple[int, ...], mask: str, parity: int) -> Tensor:
        return unchanged_mask(shape, mask, parity)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self._shape

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    # ------------------------------------------------------------------ the coupling
    def _law(self, values: Tensor, h: Tensor, inverse: bool) -> tuple[Tensor, Tensor | None]:
        """The transformed values and the per-entry log-scale (None: volume preserving)."""
        raise NotImplementedError

    def _law_values(self, values: Tensor, h: Tensor, inverse: bool) -> Tensor:
        """The transformed values alone (the inverse's sampling path, which discards the log-det);
        laws whose log-det costs extra work override it."""
        return self._law(values, h, inverse)[0]

    def _conditioner_input(self, x: Tensor, context: Tensor | None) -> Tensor:
        """``b⊙x`` then the image context on the channel axis for the conv and attention nets; the
        unchanged entries (flat order) then the context for the MLP. The mask comes first: no
        transformed entry reaches the conditioner."""
        if self.conditioner in IMAGE_CONDITIONERS:
            masked = x.masked_fill(~self._keep, 0.0)
            return masked if context is None else torch.cat([masked, context], dim=1)
        kept = x.reshape(x.shape[0], -1)[:, self._keep_idx]
        return kept if context is None else torch.cat([kept, context], dim=1)

    def _couple(self, x: Tensor, context: Tensor | None, inverse: bool,
                with_logdet: bool = True) -> tuple[Tensor, Tensor]:
        """One direction of the layer: (output, Σ log-scale over the transformed entries; zeros
        without ``with_logdet``)."""
        h = self.net(self._conditioner_input(x, context))
        law = self._law if with_logdet else lambda v, hh, inv: (self._law_values(v, hh, inv), None)
        if self.conditioner in IMAGE_CONDITIONERS:
            values, log_scale = law(x, h, inverse)
            out = torch.where(self._keep, x, values)
            total = None if log_scale is None else batch_sum(log_scale.masked_fill(self._keep, 0.0))
        else:
            flat = x.reshape(x.shape[0], -1)
            values, log_scale = law(flat[:, self._trans_idx], h, inverse)
            out = torch.cat([flat[:, self._keep_idx], values], dim=1)[:, self._perm].reshape(x.shape)
            total = None if log_scale is None else log_scale.sum(dim=1)
        return out, x.new_zeros(x.shape[0]) if total is None else total

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._couple(x, context, inverse=False)

    def _inverse(self, z: Tensor, context: Tensor | None) -> Tensor:
        return self._couple(z, context, inverse=True, with_logdet=False)[0]


@register("additive_coupling")
class AdditiveCoupling(_Coupling):
    """NICE: z_t = x_t + t(x_u); volume preserving."""

    def _law(self, values: Tensor, h: Tensor, inverse: bool) -> tuple[Tensor, Tensor | None]:
        return (values - h if inverse else values + h), None


@register("affine_coupling")
class AffineCoupling(_Coupling):
    """RealNVP: z_t = x_t·exp(s) + t with s = scale_factor·tanh(s_raw); log|det| = Σ s."""

    outputs_per_entry = 2

    def __init__(
        self,
        shape: Sequence[int],
        mask: str = "channel",
        parity: int = 0,
        conditioner: str = "mlp",
        hidden: int = 8,
        depth: int = 1,
        activation: str = "tanh",
        context_dim: int = 0,
        scale_factor: float = 1.0,
        *,
        context_channels: int = 0,
        blocks: int = BLOCKS,
        heads: int = HEADS,
        validate_args: bool | None = None,
        **unknown: Any,
    ):
        """``unknown`` config entries are passed on to be rejected with a :class:`ConfigError`."""
        super().__init__(shape, mask, parity, conditioner, hidden, depth, activation, context_dim,
                         context_channels=context_channels, blocks=blocks, heads=heads,
                         validate_args=validate_args, scale_factor=scale_factor, **unknown)
        self.scale_factor = float(scale_factor)

    def _law(self, values: Tensor, h: Tensor, inverse: bool) -> tuple[Tensor, Tensor | None]:
        s_raw, shift = h.chunk(2, dim=1)
        log_scale = self.scale_factor * torch.tanh(s_raw)
        if inverse:
            return (values - shift) * torch.exp(-log_scale), -log_scale
        return values * torch.exp(log_scale) + shift, log_scale
