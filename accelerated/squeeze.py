"""Squeeze: 2×2 space-to-depth (RealNVP Sec. 3.6; see the reference).

z[:, 4c + 2i + j, h, w] = x[:, c, 2h + i, 2w + j] for the offset (i, j) ∈ {0, 1}² within each 2×2
patch: the four entries of channel c become consecutive channels, in row-major patch order (the
order of ``torch.nn.functional.pixel_unshuffle`` with factor 2). log|det| = 0.
:class:`ImageFlow` is the base of the flows on images ``(C, H, W)`` configured by
``channels``, ``height``, ``width``.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor

from flowspec.errors import ConfigError

from .base import Flow, register


class ImageFlow(Flow):
    """A flow on images ``(channels, height, width)``; the config is those three ints."""

    def __init__(self, channels: int, height: int, width: int, *, validate_args: bool | None = None):
        super().__init__(validate_args=validate_args)
        shape = (channels, height, width)
        if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
            raise ConfigError(f"channels, height and width must be positive ints, got {shape!r}")
        self.channels, self.height, self.width = shape

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self.channels, self.height, self.width)

    def config(self) -> dict[str, Any]:
        return {"channels": self.channels, "height": self.height, "width": self.width}


@register("squeeze")
class Squeeze(ImageFlow):
    """(C, H, W) → (4C, H/2, W/2), channel 4c + 2i + j (module docstring)."""

    def __init__(self, channels: int, height: int, width: int, *, validate_args: bool | None = None):
        super().__init__(channels, height, width, validate_args=validate_args)
        if height % 2 or width % 2:
            raise ConfigError(f"squeeze needs an even height and width, got image shape {self.event_shape}")

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (4 * self.channels, self.height // 2, self.width // 2)

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        c, h, w = self.event_shape
        patches = x.reshape(x.shape[0], c, h // 2, 2, w // 2, 2)  # [b, c, h, i, w, j]
        z = patches.permute(0, 1, 3, 5, 2, 4).reshape((x.shape[0],) + self.latent_shape)
        return z, x.new_zeros(x.shape[0])

    def _inverse(self, z: Tensor, context: Tensor | None) -> Tensor:
        c, h, w = self.event_shape
        patches = z.reshape(z.shape[0], c, 2, 2, h // 2, w // 2)  # [b, c, i, j, h, w]
        return patches.permute(0, 1, 4, 2, 5, 3).reshape(z.shape[0], c, h, w)

    def _inverse_and_logdet(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._inverse(z, context), z.new_zeros(z.shape[0])
