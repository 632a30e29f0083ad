"""Convolutional autoregressive flows (see :mod:`flowspec.reference.conv_autoregressive`).

* :class:`PixelCNNAutoregressive`: masked ``Conv2d`` layers (weight × a mask buffer: type A in the
  first layer, type B after it; van den Oord et al. 2016), raster-then-channel order;
* :class:`CausalAutoregressive`: causal dilated ``Conv1d`` layers (left padding
  ``(k − 1)·2^i``, WaveNet) on the input shifted by one step, so step t's parameters see ``x_<t``.

The forward is one conditioner pass and the per-entry transform (affine ``z = (x − μ)·exp(−α)``,
MAF eq. 4, with ``α = scale_factor·tanh(α̃)``; or the rational-quadratic spline, Durkan et al.
2019 eqs. 4-6); the inverse runs ``H·W·C`` (pixelcnn) or ``T`` (causal) sequential conditioner
passes on the whole batch, each fixing the entries whose parameters are already determined. The pieces a faulty implementation
would get wrong are small methods: :meth:`PixelCNNAutoregressive._mask_type`,
:meth:`PixelCNNAutoregressive._channel_rule` and :meth:`CausalAutoregressive._shift`.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowspec.reference.conv_autoregressive import layer_sizes, parse_config

from .base import Flow, batch_sum, register
from .coupling import ACTIVATIONS

from .spline import rational_quadratic


class MaskedConv2d(nn.Conv2d):
    """``Conv2d`` whose weight is multiplied by a fixed 0/1 mask (a non-persistent buffer ``_mask``)
    at every call, so that masked entries contribute exact zeros whatever the weight holds."""

    def __init__(self, n_in: int, n_out: int, mask: Tensor):
        super().__init__(n_in, n_out, mask.shape[-1], padding=mask.shape[-1] // 2)
        self.register_buffer("_mask", mask.to(self.weight.dtype), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self._mask, self.bias, padding=self.padding)


class CausalConv1d(nn.Conv1d):
    """``Conv1d`` with dilation ``d`` and left zero padding ``(k − 1)·d``: output t reads inputs ≤ t."""

    def __init__(self, n_in: int, n_out: int, kernel_size: int, dilation: int):
        super().__init__(n_in, n_out, kernel_size, dilation=dilation)
        self.left = (kernel_size - 1) * dilation

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, (self.left, 0)))


class _ConvAutoregressive(Flow):
    """Config handling, the per-entry transform and the sequential inverse of both kinds."""

    def __init__(
        self,
        shape: Sequence[int],
        transform: str = "affine",
        hidden_channels: int = 4,
        depth: int = 1,
        kernel_size: int | None = None,
        activation: str = "tanh",
        *,
        validate_args: bool | None = None,
        **transform_keys: Any,
    ):
        """``transform_keys``: ``scale_factor`` (affine) or the spline keys (``bins``, ``bound``,
        ``min_width``, ``min_height``, ``min_derivative``); unknown keys are refused by the config check.
        ``kernel_size`` None takes the kind's default (3 for pixelcnn, 2 for causal)."""
        super().__init__(validate_args=validate_args)
        config = {"shape": list(shape) if isinstance(shape, (list, tuple)) else shape, "transform": transform,
                  "hidden_channels": hidden_channels, "depth": depth, "activation": activation, **transform_keys}
        if kernel_size is not None:
            config["kernel_size"] = kernel_size
        self._config = config
        self.cfg = parse_config(config, self.kind)  # the kind's one config check (raises ConfigError)
        self._shape = self.cfg.shape
        self.net = self._build_net()

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self._shape

    def config(self) -> dict[str, Any]:
        return {**self._config, "kernel_size": self.cfg.kernel_size}

    def _layers(self) -> list[nn.Module]:
        raise NotImplementedError

    def _build_net(self) -> nn.Sequential:
        """Layers ``net.0, net.2, …, net.{2·depth}`` with the activation between them."""
        modules: list[nn.Module] = []
        for i, layer in enumerate(self._layers()):
            modules.append(layer)
            if i < self.cfg.depth:
                modules.append(ACTIVATIONS[self.cfg.activation]())
        return nn.Sequential(*modules)

    def _conditioner(self, x: Tensor) -> Tensor:
        """The network output ``(batch, k·C, *spatial)``."""
        return self.net(x)

    def _entry_params(self, h: Tensor) -> Tensor:
        """``(batch, C, *spatial, k)``: parameter j of channel c is output channel ``j·C + c``."""
        blocks = h.reshape((h.shape[0], self.cfg.outputs_per_entry) + self._shape)
        return blocks.movedim(1, -1)

    def _transform(self, values: Tensor, h: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        """Every entry's map and its log-derivative (of the direction computed)."""
        params = self._entry_params(h)
        if self.cfg.spline is None:
            mu, alpha = params[..., 0], self.cfg.scale_factor * torch.tanh(params[..., 1])
            if inverse:
                return values * torch.exp(alpha) + mu, alpha
            return (values - mu) * torch.exp(-alpha), -alpha
        return rational_quadratic(values, params, **self.cfg.spline.kernel_args(), inverse=inverse)

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        z, log_derivative = self._transform(x, self._conditioner(x), inverse=False)
        return z, batch_sum(log_derivative)

    def _steps(self) -> list[Tensor]:
        """Boolean masks (of the event shape) of the entries each sequential inverse pass fixes."""
        raise NotImplementedError

    def _inverse_and_logdet(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        x = torch.zeros_like(z)
        log_derivative = torch.zeros_like(z)
        for step in self._steps():
            solved, ld = self._transform(z, self._conditioner(x), inverse=True)
            x = torch.where(step, solved, x)
            log_derivative = torch.where(step, ld, log_derivative)
        return x, batch_sum(log_derivative)

    def _inverse(self, z: Tensor, context: Tensor | None) -> Tensor:
        return self._inverse_and_logdet(z, context)[0]


@register("pixelcnn_autoregressive")
class PixelCNNAutoregressive(_ConvAutoregressive):
    """PixelCNN-masked conv conditioner; inverse by ``H·W·C`` sequential passes."""

    def _mask_type(self, layer: int) -> str:
        """"A" for the first layer (the entry's own channel excluded), "B" after it."""
        return "A" if layer == 0 else "B"

    @staticmethod
    def _channel_rule(g_in: Tensor, g_out: Tensor, mask_type: str) -> Tensor:
        """Centre-tap connectivity: type A ``g_in < g_out``, type B ``g_in ≤ g_out``."""
        return g_in < g_out if mask_type == "A" else g_in <= g_out

    def _mask(self, n_out: int, n_in: int, mask_type: str) -> Tensor:
        """``(n_out, n_in, k, k)`` PixelCNN mask: rows above and taps left of the centre in full, the
        channel rule at the centre; unit u of a layer is in group ``u mod C``."""
        size, groups = self.cfg.kernel_size, self.cfg.channels
        c = size // 2
        mask = torch.zeros(n_out, n_in, size, size, dtype=torch.float64)
        mask[:, :, :c, :] = 1.0
        mask[:, :, c, :c] = 1.0
        g_in, g_out = torch.arange(n_in) % groups, torch.arange(n_out) % groups
        mask[:, :, c, c] = self._channel_rule(g_in[None, :], g_out[:, None], mask_type).to(torch.float64)
        return mask

    def _layers(self) -> list[nn.Module]:
        return [MaskedConv2d(n_in, n_out, self._mask(n_out, n_in, self._mask_type(i)))
                for i, (n_in, n_out) in enumerate(layer_sizes(self.cfg))]

    def _visits(self) -> list[tuple[int, int, int]]:
        """The entries (c, r, s) in the order the passes solve them: raster over pixels, then
        channel within a pixel."""
        channels, height, width = self._shape
        return [(c, r, s) for r in range(height) for s in range(width) for c in range(channels)]

    def _steps(self) -> list[Tensor]:
        """One entry per pass, in the order of :meth:`_visits`."""
        steps = []
        for entry in self._visits():
            step = torch.zeros(self._shape, dtype=torch.bool, device=self._anchor.device)
            step[entry] = True
            steps.append(step)
        return steps


@register("causal_autoregressive")
class CausalAutoregressive(_ConvAutoregressive):
    """Causal dilated conv conditioner on the one-step-shifted input; inverse by ``T`` passes."""

    def _shift(self, x: Tensor) -> Tensor:
        """``x̃[..., t] = x[..., t − 1]``, ``x̃[..., 0] = 0`` (pad left by one, drop the last)."""
        return F.pad(x, (1, 0))[..., :-1]

    def _conditioner(self, x: Tensor) -> Tensor:
        return self.net(self._shift(x))

    def _layers(self) -> list[nn.Module]:
        return [CausalConv1d(n_in, n_out, self.cfg.kernel_size, 2 ** i)
                for i, (n_in, n_out) in enumerate(layer_sizes(self.cfg))]

    def _steps(self) -> list[Tensor]:
        """All channels of one time step per pass."""
        channels, steps = self._shape
        out = []
        for t in range(steps):
            step = torch.zeros(self._shape, dtype=torch.bool, device=self._anchor.device)
            step[:, t] = True
            out.append(step)
        return out
