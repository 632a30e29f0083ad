"""Broken Glow models and learned-prior splits."""
from __future__ import annotations

import torch

from flowspec.accelerated.glow import Glow
from flowspec.accelerated.multiscale import MultiScale

from . import BrokenCase


def _blind(h: torch.Tensor) -> torch.Tensor:
    """The level's output with its kept (second) half replaced by zeros."""
    half = h.shape[1] // 2
    return torch.cat([h[:, :half], torch.zeros_like(h[:, half:])], dim=1)


def _with_kept(out: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``out``'s factored (first) half joined with ``h``'s kept half."""
    half = h.shape[1] // 2
    return torch.cat([out[:, :half], h[:, half:]], dim=1)


class _PriorOnZeros:
    """The split's prior computes μ and log σ from a tensor of zeros instead of the kept half, the way
    Glow's learned prior of the top level (which has no kept half to read) is computed, in both
    directions: μ and log σ are constants, a valid flow with a right log-det, but not the spec's."""

    def _split_prior(self, i, h):
        if self.priors is None:
            return h, None
        out, logdet = self.priors[i](_blind(h))
        return _with_kept(out, h), logdet

    def _undo_split_prior(self, i, h):
        return h if self.priors is None else _with_kept(self.priors[i].inverse(_blind(h)), h)

    def _undo_split_prior_and_logdet(self, i, h):
        if self.priors is None:
            return h, None
        out, logdet = self.priors[i].inverse_and_logdet(_blind(h))
        return _with_kept(out, h), logdet


class GlowPriorIgnoresKeptHalf(_PriorOnZeros, Glow):
    """Glow's split prior conditioned on zeros (see :class:`_PriorOnZeros`)."""


class MultiScalePriorIgnoresKeptHalf(_PriorOnZeros, MultiScale):
    """The multiscale kind's learned prior conditioned on zeros (see :class:`_PriorOnZeros`)."""


class GlowPriorLogdetDropped(Glow):
    """The split's z′ = (z_out − μ)·exp(−log σ) is computed, but its −Σ log σ is left out of the
    log-det, as if the standardisation belonged to the base density (Glow's code scores z_out under
    N(μ, σ²), whose log σ term a port to "transform, then standard normal" has to move into the
    log-det)."""

    def _split_prior(self, i, h):
        return super()._split_prior(i, h)[0], None


class GlowSamplesWithoutPrior(Glow):
    """The generative direction joins the factored latent to the kept half as it is, without undoing
    the prior (sampling z_out from N(0, I) instead of N(μ(h), σ(h)²)): the inverse is not the
    forward's."""

    def _undo_split_prior(self, i, h):
        return h

    def _undo_split_prior_and_logdet(self, i, h):
        return h, None


class GlowPriorAtFirstSplitOnly(Glow):
    """Only the first split standardises its factored half by the learned prior; later splits pass
    it on as it is (code written for the two-level model, which has one split). Two-level models
    cannot show it: the learned-prior property also draws three levels."""

    def _split_prior(self, i, h):
        return (h, None) if i > 0 else super()._split_prior(i, h)

    def _undo_split_prior(self, i, h):
        return h if i > 0 else super()._undo_split_prior(i, h)

    def _undo_split_prior_and_logdet(self, i, h):
        return (h, None) if i > 0 else super()._undo_split_prior_and_logdet(i, h)


CASES = [
    BrokenCase("glow split prior ignores the kept half", "glow", GlowPriorIgnoresKeptHalf,
               white_box=("forward_matches_reference", "split_prior_matches_reference")),
    BrokenCase("multiscale split prior ignores the kept half", "multiscale", MultiScalePriorIgnoresKeptHalf,
               white_box=("forward_matches_reference", "split_prior_matches_reference")),
    BrokenCase("glow split prior's log-det dropped", "glow", GlowPriorLogdetDropped,
               white_box=("logdet_matches_reference", "split_prior_matches_reference"),
               black_box=("logdet_matches_fd_jacobian",)),
    BrokenCase("glow learned prior at the first split only", "glow", GlowPriorAtFirstSplitOnly,
               white_box=("split_prior_matches_reference",)),
    BrokenCase("glow samples without undoing the split prior", "glow", GlowSamplesWithoutPrior,
               white_box=("inverse_matches_reference",), black_box=("inverse_round_trip",)),
]
