"""Multi-scale composition with factored-out latents (see the reference module for the layout).

Level ``i`` runs on the channels kept so far; after every level but the last the first half of its
output channels is factored out. ``forward`` returns the flat latent
``concat(flat(z_0), …, flat(z_{L-2}), flat(h_{L-1}))`` and the summed log-determinants.

With learned priors (``priors``, config ``split_prior``; Glow's split, see
:mod:`flowspec.reference.multiscale`) the level's output first goes through the prior of its split,
an affine coupling that maps the factored-out half to z′ = (z_out − μ(h))·exp(−log σ(h)) from the
kept half h and adds −Σ log σ(h) to the log-det; the kept half passes through unchanged.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from torch import Tensor, nn
import torch

from flowspec import registry
from flowspec.errors import ConfigError
from flowspec.reference.multiscale import check_prior, has_split_prior, prior_name
from flowspec.spec import FlowSpec

from .base import Flow, from_spec, fresh_from_spec, register


@register("multiscale")
class MultiScale(Flow):
    """Levels with a half-channel split after each but the last, each split optionally through a
    learned prior; the latent is flat, of size D."""

    def __init__(self, levels: Sequence[Flow], priors: Sequence[Flow] | None = None, *,
                 validate_args: bool | None = None):
        super().__init__(validate_args=validate_args)
        if not levels:
            raise ConfigError("a multi-scale flow needs at least one level")
        if priors is not None and len(priors) != len(levels) - 1:
            raise ConfigError(f"a multi-scale flow of {len(levels)} levels has {len(levels) - 1} splits, "
                              f"so it needs that many learned priors, got {len(priors)}")
        for flow in [*levels, *(priors or ())]:
            flow.validate_args = False
        self.levels = nn.ModuleList(levels)
        self.priors = None if priors is None else nn.ModuleList(priors)
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
                    raise ConfigError(f"level {i + 1} takes {self.levels[i + 1].event_shape}, "
                                      f"level {i} passes on {kept}")
                if self.priors is not None:
                    check_prior(self.priors[i].kind, self.priors[i].config(), out, i)
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
        return {"event_shape": list(self.event_shape), "levels": len(self.levels), "size": math.prod(self.event_shape),
                "split_prior": self.priors is not None}

    def spec_children(self) -> dict[str, Flow]:
        children = {str(i): level for i, level in enumerate(self.levels)}
        children.update({prior_name(i): prior for i, prior in enumerate(self.priors or ())})
        return children

    # ------------------------------------------------------------------ the learned prior of a split
    def _split_prior(self, i: int, h: Tensor) -> tuple[Tensor, Tensor | None]:
        """Level ``i``'s output with its factored-out half through the learned prior, and the prior's
        log-det (None without priors)."""
        return (h, None) if self.priors is None else self.priors[i](h)

    def _undo_split_prior(self, i: int, h: Tensor) -> Tensor:
        """The inverse of :meth:`_split_prior`: the level's output from the joined latent and kept half."""
        return h if self.priors is None else self.priors[i].inverse(h)

    def _undo_split_prior_and_logdet(self, i: int, h: Tensor) -> tuple[Tensor, Tensor | None]:
        return (h, None) if self.priors is None else self.priors[i].inverse_and_logdet(h)

    # ------------------------------------------------------------------ the map
    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        latents, total, h = [], None, x
        for i, level in enumerate(self.levels):
            h, logdet = level(h)
            total = _add(total, logdet)
            if i + 1 < len(self.levels):
                h, logdet = self._split_prior(i, h)
                total = _add(total, logdet)
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
                h = self._undo_split_prior(i, torch.cat([pieces[i], h], dim=1))
            h = self.levels[i].inverse(h)
        return h

    def _inverse_and_logdet(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """As :meth:`_inverse`, summing the levels' and priors' inverse log-dets (the splits have log|det| 0)."""
        pieces, total = self._pieces(z), None
        h = pieces[-1]
        for i in range(len(self.levels) - 1, -1, -1):
            if i + 1 < len(self.levels):
                h, logdet = self._undo_split_prior_and_logdet(i, torch.cat([pieces[i], h], dim=1))
                total = _add(total, logdet)
            h, logdet = self.levels[i].inverse_and_logdet(h)
            total = _add(total, logdet)
        return h, total

    # ------------------------------------------------------------------ spec exchange
    @classmethod
    def from_spec(cls, spec: FlowSpec) -> "MultiScale":
        return cls._build(spec, from_spec)

    @classmethod
    def fresh_from_spec(cls, spec: FlowSpec) -> "MultiScale":
        return cls._build(spec, fresh_from_spec)

    @classmethod
    def _build(cls, spec: FlowSpec, build: Any) -> "MultiScale":
        """The flow of ``spec`` with its children made by ``build``; the config is validated by the
        reference's rule and must be the one the children give."""
        cls.require_kind(spec)
        registry.get(spec.kind).validate_config(spec.config)
        levels = [build(_child(spec, str(i))) for i in range(spec.config["levels"])]
        priors = [build(_child(spec, prior_name(i))) for i in range(len(levels) - 1)] \
            if has_split_prior(spec.config) else None
        flow = cls(levels, priors)
        expected, given = FlowSpec(spec.kind, flow.config()).config, {"split_prior": False, **spec.config}
        wrong = sorted(k for k in expected if expected[k] != given[k])
        if wrong:
            raise ConfigError(f"config entries {wrong} of this multiscale spec do not match its children, which give "
                              f"{ {k: expected[k] for k in wrong} }")
        extra = sorted(set(spec.params) - set(flow.spec_children()))
        if extra:
            raise ConfigError(f"a multiscale spec with config {dict(spec.config)} has unexpected params {extra}")
        return flow


def _child(spec: FlowSpec, name: str) -> FlowSpec:
    child = spec.params.get(name)
    if not isinstance(child, FlowSpec):
        raise ConfigError(f"a multiscale spec with config {dict(spec.config)} needs the child spec {name!r}")
    return child


def _add(total: Tensor | None, logdet: Tensor | None) -> Tensor | None:
    if logdet is None:
        return total
    return logdet if total is None else total + logdet
