"""Broken neural autoregressive flows (DSF, Huang et al. 2018): faults a real implementer makes."""
from __future__ import annotations

import torch
from torch.nn.functional import logsigmoid

from flowspec.accelerated.logistic_mixture import mixture_logit_inverse
from flowspec.accelerated.naf import NAF

from . import BrokenCase


class RawSlopes(NAF):
    """Each layer written out as σ⁻¹(Σ_j w_j σ(a_j y + b_j)) with a_j the MADE's raw output (the
    softplus that makes it positive forgotten) and the log-derivative in log space with log|a_j| for
    log a_j (the absolute value of log|det| hides the sign): where some a_j < 0 the map is not
    monotone and the log-det wrong; the inverse still solves the positive-slope map."""

    def _layer(self, y, h, layer):
        k = self.components
        block = h[..., 3 * k * layer:3 * k * (layer + 1)]
        a, b, log_w = block[..., :k], block[..., k:2 * k], torch.log_softmax(block[..., 2 * k:], dim=-1)
        u = a * y.unsqueeze(-1) + b
        log_f = torch.logsumexp(log_w + logsigmoid(u), dim=-1)
        log_g = torch.logsumexp(log_w + logsigmoid(-u), dim=-1)
        log_density = torch.logsumexp(log_w + a.abs().log() + logsigmoid(u) + logsigmoid(-u), dim=-1)
        return log_f - log_g, log_density - log_f - log_g


class DensityOnlyLogdet(NAF):
    """The log-derivative of a layer taken as the log of the mixture density Σ_j w_j a_j σ′(u_j),
    forgetting the inverse sigmoid's Jacobian 1/(F(1 − F)) (the map itself is right)."""

    def _layer(self, y, h, layer):
        log_pi, mu, log_scale = self._layer_parameters(h, layer)
        ell, _ = super()._layer(y, h, layer)
        u = (y.unsqueeze(-1) - mu) * torch.exp(-log_scale)
        return ell, torch.logsumexp(log_pi - log_scale + logsigmoid(u) + logsigmoid(-u), dim=-1)


class InverseLayersInOrder(NAF):
    """The stacked layers inverted first to last (the forward's loop reused): right for L = 1, wrong
    for L = 2."""

    def _invert_stack(self, z, h):
        for layer in range(self.layers):
            z = mixture_logit_inverse(z, *self._layer_parameters(h, layer), rtol=self.rtol, max_iter=self.max_iter)
        return z


class LayerMinorLayout(NAF):
    """The MADE's 3KL outputs per dimension read layer-minor (parameter j = L·r + l instead of
    3K·l + r): the same family of maps with another parameter layout, so only the reference sees it
    (L = 2; for L = 1 the layouts agree)."""

    def _layer_parameters(self, h, layer):
        reordered = h.reshape(*h.shape[:-1], 3 * self.components, self.layers).transpose(-1, -2).reshape(h.shape)
        return super()._layer_parameters(reordered, layer)


class SigmoidSpace(NAF):
    """Each layer as written in eq. (8), in probability space: F = Σ_j w_j σ(u_j), ℓ = log F − log(1 − F),
    log ℓ′ = log(Σ_j w_j a_j σ(u_j)(1 − σ(u_j))) − log F − log(1 − F): right in float64 near the
    components, ±∞ in float32 once every σ(u_j) rounds to 0 or 1 (|u| beyond about 17)."""

    def _layer(self, y, h, layer):
        log_pi, mu, log_scale = self._layer_parameters(h, layer)
        s = torch.sigmoid((y.unsqueeze(-1) - mu) * torch.exp(-log_scale))
        w = log_pi.exp()
        f = (w * s).sum(dim=-1)
        density = (w * torch.exp(-log_scale) * s * (1.0 - s)).sum(dim=-1)
        return f.log() - (1.0 - f).log(), density.log() - f.log() - (1.0 - f).log()


CASES = [
    BrokenCase("naf slopes without positivity", "naf", RawSlopes,
               white_box=("forward_matches_reference", "inverse_round_trip"),
               black_box=("naf_monotone", "inverse_round_trip")),
    BrokenCase("naf log-det without the inverse sigmoid's Jacobian", "naf", DensityOnlyLogdet,
               white_box=("logdet_matches_reference",), black_box=("logdet_matches_fd_jacobian", "naf_inverse_far")),
    BrokenCase("naf stacked layers inverted first to last", "naf", InverseLayersInOrder,
               white_box=("inverse_matches_reference",), black_box=("inverse_round_trip", "naf_inverse_far")),
    BrokenCase("naf MADE outputs read layer-minor", "naf", LayerMinorLayout,
               white_box=("forward_matches_reference",)),
    BrokenCase("naf layers in probability space (saturate in float32)", "naf", SigmoidSpace,
               white_box=("naf_inverse_far",), black_box=("naf_inverse_far", "naf_monotone"), dtypes=("float32",)),
]
