"""Multi-scale composition with factored-out latents (see the reference module for the layout).

Level ``i`` runs on the channels kept so far; after every level but the last the first half of its
output channels is factored out. ``forward`` returns the flat latent
``concat(flat(z_0), …, flat(z_{L-2}), flat(h_{L-1}))`` and the summed log-determinants.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from torch import Tensor, nn
import torch

from flowspec.errors import ConfigError
from flowspec.spec import FlowSpec

from .base import Flow, from_spec, fresh_from_spec, register


@register("multiscale")
class MultiScale(Flow):
    """Levels with a half-channel split after each but the last; the latent is flat, of size D."""

    def __init__(self, levels: Sequence[Flow], *, validate_args: bool | None = None):
        super().__init__(validate_args=validate_args)
        if not levels:
            raise ConfigError("a multi-scale flow needs at least one level")
        for level in levels:
            level.validate_args = False
        self.levels = nn.ModuleList(levels)
        self._factored = self._check_shapes()

    def _check_shapes(self) -> list[tuple[int, ...]]:
        factored = []
        for i, level in enumerate(self.levels):
            out = tuple(level.latent_shape)
            if i + 1 < len(self.levels):
                if out[0] % 2:
                    raise ConfigError(f"multi-scale level {i} outputs {out[0]} channels; a split needs an even number")
                kept = (out[0] // 2,) + out[1:]
                if tuple(self.levels[i + 1].event_shape) != kept:
                    raise ConfigError(f"level {i + 1} takes {self.levels[i + 1].event_shape}, level {i} passes on {kept}")
                factored.append(kept)
            else:
                factored.append(out)
        return factored

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.levels[0].event_shape)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (math.prod(self.event_shape),)

    def config(self) -> dict[str, Any]:
        return {"event_shape": list(self.event_shape), "levels": len(self.levels), "size": math.prod(self.event_shape)}

    def spec_children(self) -> dict[str, Flow]:
        return {str(i): level for i, level in enumerate(self.levels)}

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        latents, total, h = [], None, x
        for i, level in enumerate(self.levels):
            h, logdet = level(h)
            total = logdet if total is None else total + logdet
            if i + 1 < len(self.levels):
                factored, h = self._split(h)
                latents.append(factored.reshape(h.shape[0], -1))
        return torch.cat(latents + [h.reshape(h.shape[0], -1)], dim=1), total

    @staticmethod
    def _split(h: Tensor) -> tuple[Tensor, Tensor]:
        """(factored-out first half of the channels, kept second half)."""
        half = h.shape[1] // 2
        return h[:, :half], h[:, half:]

    def _pieces(self, z: Tensor) -> list[Tensor]:
        """The flat latent cut into the factored-out latents of each level (the last: its output)."""
        sizes = [math.prod(s) for s in self._factored]
        return [p.reshape(z.shape[0], *s) for p, s in zip(torch.split(z, sizes, dim=1), self._factored)]

    def _inverse(self, z: Tensor, context: Tensor | None) -> Tensor:
        pieces = self._pieces(z)
        h = pieces[-1]
        for i in range(len(self.levels) - 1, -1, -1):
            if i + 1 < len(self.levels):
                h = torch.cat([pieces[i], h], dim=1)
            h = self.levels[i].inverse(h)
        return h

    def _inverse_and_logdet(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """As :meth:`_inverse`, summing the levels' inverse log-dets (the splits have log|det| 0)."""
        pieces, total = self._pieces(z), None
        h = pieces[-1]
        for i in range(len(self.levels) - 1, -1, -1):
            if i + 1 < len(self.levels):
                h = torch.cat([pieces[i], h], dim=1)
            h, logdet = self.levels[i].inverse_and_logdet(h)
            total = logdet if total is None else total + logdet
        return h, total

    @classmethod
    def from_spec(cls, spec: FlowSpec) -> "MultiScale":
        return cls([from_spec(spec.params[str(i)]) for i in range(spec.config["levels"])])

    @classmethod
    def fresh_from_spec(cls, spec: FlowSpec) -> "MultiScale":
        return cls([fresh_from_spec(spec.params[str(i)]) for i in range(spec.config["levels"])])
