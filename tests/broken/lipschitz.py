"""Broken Lipschitz normalisers of residual blocks: faults of the norm estimates, and the properties
that catch them (``flowspec.conformance.lipschitz``)."""
from __future__ import annotations

import torch

from flowspec.accelerated.lipschitz import LipschitzNormalizer
from flowspec.accelerated.power_iteration import power_iteration
from flowspec.accelerated.residual import ResidualConv, ResidualMLP

from . import BrokenCase


def with_normalizer(base: type, normalizer: type) -> type:
    class Block(base):
        def _build_layers(self, **layout):
            layers = super()._build_layers(**layout)
            for layer in layers:
                layer.normalizer.__class__ = normalizer
            return layers
    Block.__name__ = f"{base.__name__}With{normalizer.__name__}"
    return Block


class _OwnIterationBudget(LipschitzNormalizer):
    """The adaptive power iteration with a budget of its own (a few warm steps per forward, as
    spectral normalisation does) in place of the configured ``max_iter``, reporting honestly that it
    stopped at that cap."""

    budget = 2

    @torch.no_grad()
    def _spectral_estimate(self, w):
        matvec, rmatvec = self._matvec(w), self._rmatvec(w)
        event_dims = 1 if self.operator == "linear" else 3
        _, u, v, report = power_iteration(matvec, rmatvec, self._u.to(w), self._v.to(w), atol=self.atol,
                                          rtol=self.rtol, max_iter=self.budget, event_dims=event_dims)
        self._u, self._v = u, v
        return report


class _PointerKeyedCache(LipschitzNormalizer):
    """Evaluation mode reuses σ̂ while the weight's storage (data pointer), shape, dtype and input size
    are unchanged — cheaper than comparing the weight with a snapshot, but an in-place optimiser step
    or edit keeps the pointer."""

    def _key(self, weight):
        return super()._key(weight) + (weight.data_ptr(),)

    def _is_current(self, weight):
        return self._estimated_for == self._key(weight)


class _SizeBlindEvalCache(LipschitzNormalizer):
    """Evaluation mode caches the normalised weight per weight version (the version counter does see
    in-place edits), but not per input size: at another size it hands out the weight normalised for
    the size it was first evaluated at."""

    def forward(self, weight, spatial=None):
        key = (weight._version, weight.data_ptr(), weight.dtype)
        if not self.training and getattr(self, "_cached_key", None) == key:
            return self._cached
        out = super().forward(weight, spatial)
        if not self.training:
            self._cached_key, self._cached = key, out.detach()
        return out


CASES = [
    BrokenCase("lipschitz power iteration with its own budget, honestly capped", "residual_mlp",
               with_normalizer(ResidualMLP, _OwnIterationBudget),
               white_box=("norm_bound_after_updates", "norm_bound_under_training"),
               black_box=("norm_bound_after_updates", "norm_bound_under_training")),
    BrokenCase("lipschitz evaluation-mode estimate keyed on the weight's data pointer", "residual_mlp",
               with_normalizer(ResidualMLP, _PointerKeyedCache),
               white_box=("norm_bound_after_updates", "norm_estimates_current"),
               black_box=("norm_bound_after_updates", "norm_estimates_current")),
    BrokenCase("lipschitz conv evaluation-mode weight cached across input sizes", "residual_conv",
               with_normalizer(ResidualConv, _SizeBlindEvalCache),
               white_box=("norm_bound_after_updates",), black_box=("norm_bound_after_updates",)),
]
