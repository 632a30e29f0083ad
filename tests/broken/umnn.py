"""Broken unconstrained monotonic neural networks (Wehenkel & Louppe 2019): faults of the quadrature
and of the integrand a real implementer makes."""
from __future__ import annotations

import math

import numpy as np
import torch

from flowspec.accelerated.base import softplus
from flowspec.accelerated.umnn import UMNN
from flowspec.reference.umnn import MIN_NODES

from . import BrokenCase


class QuarterNodes(UMNN):
    """The forward and inverse build their rule from N/4 intervals ("nodes per quarter" read as the
    total) while the config, the spec and the error estimate still say N: silently four times coarser."""

    def _rule_tables(self, like):
        return self._table(max(self.nodes // 4, 1), like)


class UnhalvedLastCosine(UMNN):
    """Clenshaw–Curtis weights with b_j = 2 for every j, the j = N/2 term not halved: the weights no
    longer sum to 2, so even a constant integrand is integrated wrongly (estimate included)."""

    def _table(self, n, like):
        k = np.arange(n + 1)[:, None]
        j = np.arange(1, n // 2 + 1)[None, :]
        c = np.where((k[:, 0] == 0) | (k[:, 0] == n), 1.0, 2.0)
        w = c / n * (1.0 - (2.0 * np.cos(2.0 * math.pi * k * j / n) / (4.0 * j ** 2 - 1.0)).sum(1))
        return (torch.as_tensor(np.cos(math.pi * k[:, 0] / n), dtype=like.dtype, device=like.device),
                torch.as_tensor(w, dtype=like.dtype, device=like.device))


class SymmetricInterval(UMNN):
    """The [−1, 1] rule scaled to [−x, x] (t = x·s) with the weight x/2 kept: ½∫_{−x}^{x} g instead of
    ∫₀^x g, whose x-derivative is the mean of g(x) and g(−x), not the log-det's g(x)."""

    def _integral(self, x, h, points, weights):
        t = x[..., None] * points
        g = self._g(t, h[..., None, :].expand(t.shape + h.shape[-1:]))
        return x / 2.0 * (g @ weights)


class LogdetWithoutFloor(UMNN):
    """The log-det as Σ log softplus(a), written apart from the integrand: the positivity floor that
    the value's integrand carries is missing there (and log 0 where softplus underflows)."""

    def _forward(self, x, context):
        beta, h = self._split(self.net(x, context))
        a = self.integrand(torch.cat([x[..., None], h], dim=-1))[..., 0]
        return beta + self._integral(x, h, *self._rule_tables(x)), torch.log(softplus(a)).sum(dim=1)


class LinearIntegrand(UMNN):
    """The integrand network's output used as g directly (softplus left out, the floor kept): g = a +
    floor, negative wherever a < −floor, so z_d decreases there and log g is NaN."""

    def _g(self, t, h):
        return self._a(t, h) + self.floor


class PositiveNodesOnly(UMNN):
    """The node count checked for positivity only, the rule's minimum forgotten: N = 7 builds a flow
    (and integrates coarsely) instead of being refused. White-box only: the accelerated adapter's
    black-box mode builds a flow from a config through the reference's ``init_spec``, which refuses
    N = 7 itself before this class is reached (a foreign adapter's own constructor has no such
    guard, so there the same property sees the fault)."""

    def __init__(self, *args, nodes: int = 128, **kw):
        positive = isinstance(nodes, int) and not isinstance(nodes, bool) and nodes >= 1
        super().__init__(*args, nodes=max(nodes, MIN_NODES) if positive else nodes, **kw)
        self.nodes = self._config["nodes"] = nodes


class EmbeddingTenByDefault(UMNN):
    """The default embedding size is 10 (the UMNN authors' experiments) instead of the reference's 4:
    a config that leaves ``embedding`` out builds conditioner and integrand of other sizes. The
    specs never draw E = 4 (the strategies use 1 and 3), so only the structural-default check sees it."""

    def __init__(self, dim, order="natural", hidden=(8,), activation="tanh", context_dim=0, embedding=10, **rest):
        super().__init__(dim, order, hidden, activation, context_dim, embedding, **rest)


CASES = [
    BrokenCase("umnn default embedding 10 instead of the reference's 4", "umnn", EmbeddingTenByDefault,
               white_box=("config_defaults_match_reference",)),
    BrokenCase("umnn quadrature with N/4 nodes while reporting N", "umnn", QuarterNodes,
               white_box=("umnn_value_within_quadrature_error", "umnn_matches_rule", "umnn_error_estimate")),
    BrokenCase("umnn Clenshaw–Curtis weights with the last cosine term not halved", "umnn", UnhalvedLastCosine,
               white_box=("umnn_value_within_quadrature_error", "umnn_matches_rule", "umnn_error_estimate")),
    BrokenCase("umnn integral over [−x, x] halved instead of [0, x]", "umnn", SymmetricInterval,
               white_box=("forward_matches_reference", "umnn_value_within_quadrature_error", "umnn_matches_rule"),
               black_box=("logdet_matches_fd_jacobian",)),
    BrokenCase("umnn log-det without the integrand's positivity floor", "umnn", LogdetWithoutFloor,
               white_box=("logdet_matches_reference", "umnn_matches_rule"),
               black_box=("logdet_matches_fd_jacobian",)),
    BrokenCase("umnn integrand without softplus (g = a + floor)", "umnn", LinearIntegrand,
               white_box=("forward_matches_reference", "umnn_monotone"), black_box=("umnn_monotone",)),
    BrokenCase("umnn node count below the rule's minimum accepted", "umnn", PositiveNodesOnly,
               white_box=("invalid_config_rejected",)),
]
