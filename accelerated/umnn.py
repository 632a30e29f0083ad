"""Unconstrained monotonic neural networks (Wehenkel & Louppe 2019; the map and its parameters are
in :mod:`flowspec.reference.umnn`): z_d = β_d + ∫₀^{x_d} g(t; h_d) dt with (β_d, h_d) from a
:class:`~.autoregressive.MADE` and g = softplus(integrand network(t, h_d)) + floor.

* The integral is the Clenshaw–Curtis rule with ``nodes`` N (Sec. 3.2 of the paper): the N + 1
  Chebyshev points of [−1, 1] mapped to [0, x_d], vectorised over batch × dimensions × nodes (one
  integrand-network call on a ``(batch, D, N + 1, 1 + E)`` tensor). Its value carries the rule's
  error; :meth:`UMNN.quadrature_error` returns |Q_N − Q_2N| per entry, the nested 2N-node rule (whose
  2N + 1 points contain the N + 1) being the error estimate: for an analytic integrand whose rule
  error falls geometrically with ratio r per doubling, the error of Q_N is at most the estimate
  divided by 1 − r (≤ twice the estimate once r ≤ 1/2).
* The log-det Σ_d log g(x_d; h_d) is exact (g evaluated at the upper limit): it is the log-det of
  the exact integral, not of the rule's map, whose slope differs from g by the rule's error in the
  derivative.
* Gradients go through the quadrature by autograd (memory ∝ batch·D·(N + 1)·width; the paper's
  memory-saving custom backward, which recomputes the integrand in the backward pass, is not used).
* The inverse takes D sequential passes (:func:`~.autoregressive.autoregressive_inverse`); each
  entry solves Q_N(x) = z_d − β_d by :func:`~.solve.expand_bracket` from [−1, 1] and
  :func:`~.solve.safeguarded_newton` with the slope g (cheap: one integrand call), and carries the
  implicit-function-theorem gradients (:func:`~.solve.implicit_step`, slope g).
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .autoregressive import MadeLaw, autoregressive_inverse
from .base import register, softplus
from .solve import default_rtol, expand_bracket, implicit_step, safeguarded_newton


@lru_cache(maxsize=None)
def clenshaw_curtis(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Points cos(kπ/n), k = 0 … n, and weights w_k = (c_k/n)·(1 − Σ_{j=1}^{⌊n/2⌋} b_j·cos(2jkπ/n)/(4j² − 1))
    of the Clenshaw–Curtis rule on [−1, 1] (c_k = 1 at the ends, else 2; b_j = 1 at j = n/2, else 2),
    in float64."""
    k = np.arange(n + 1)[:, None]
    j = np.arange(1, n // 2 + 1)[None, :]
    b = np.where(2 * j == n, 1.0, 2.0)
    c = np.where((k[:, 0] == 0) | (k[:, 0] == n), 1.0, 2.0)
    return np.cos(math.pi * k[:, 0] / n), c / n * (1.0 - (b * np.cos(2.0 * math.pi * k * j / n) / (4.0 * j ** 2 - 1.0)).sum(1))


@register("umnn")
class UMNN(MadeLaw):
    """UMNN with a MADE conditioner and Clenshaw–Curtis quadrature (module docstring)."""

    conformance_hooks = frozenset({"quadrature_error"})

    def __init__(self, dim: int, order: Any = "natural", hidden: Sequence[int] = (8,), activation: str = "tanh",
                 context_dim: int = 0, embedding: int = 4, integrand_hidden: Sequence[int] = (8,), nodes: int = 128,
                 floor: float = 1e-3, *, validate_args: bool | None = None, **unknown: Any):
        """``unknown`` config entries are rejected with a :class:`~flowspec.errors.ConfigError`."""
        super().__init__(validate_args=validate_args)
        listed = list(integrand_hidden) if isinstance(integrand_hidden, (list, tuple)) else integrand_hidden
        self._init_made({"dim": dim, "order": order, "hidden": hidden, "activation": activation,
                         "context_dim": context_dim, "embedding": embedding, "integrand_hidden": listed,
                         "nodes": nodes, "floor": floor, **unknown}, lambda: 1 + int(embedding))
        self.nodes, self.floor = int(nodes), float(floor)
        widths = [1 + embedding, *integrand_hidden, 1]
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers += [nn.Linear(n_in, n_out)] + ([nn.Tanh()] if i < len(widths) - 2 else [])
        self.integrand = nn.Sequential(*layers)
        self._tables: dict[tuple[int, torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}


    # ------------------------------------------------------------------ the integrand and the rule
    def _a(self, t: Tensor, h: Tensor) -> Tensor:
        """The integrand network's output a(t; h); ``t``: S, ``h``: S + (E,) or broadcastable to it
        (one embedding for all the nodes of an entry). The first layer W·[t, h] + b is applied as
        t·W_t + (W_h·h + b), so the embedding's share is computed once per entry, not once per node."""
        first = self.integrand[0]
        projected = torch.nn.functional.linear(h, first.weight[:, 1:], first.bias)
        return self.integrand[1:](t[..., None] * first.weight[:, 0] + projected)[..., 0]

    def _g(self, t: Tensor, h: Tensor) -> Tensor:
        """g(t; h) = softplus(a(t; h)) + floor (:meth:`_a`)."""
        return softplus(self._a(t, h)) + self.floor

    def _table(self, n: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """(points, weights) of the n-node rule in ``like``'s dtype and device, computed in float64
        (once per node count, dtype and device)."""
        key = (n, like.dtype, like.device)
        if key not in self._tables:
            self._tables[key] = tuple(torch.as_tensor(a, dtype=like.dtype, device=like.device) for a in clenshaw_curtis(n))
        return self._tables[key]

    def _rule_tables(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """(points, weights) of the N-node rule on [−1, 1] that the forward and inverse use."""
        return self._table(self.nodes, like)

    def _integral(self, x: Tensor, h: Tensor, points: Tensor, weights: Tensor) -> Tensor:
        """(x/2)·Σ_k w_k·g(x·(s_k + 1)/2; h) per entry: ``x`` (B, D), ``h`` (B, D, E)."""
        t = x[..., None] * (points + 1.0) / 2.0
        return x / 2.0 * (self._g(t, h[..., None, :]) @ weights)

    def _split(self, out: Tensor) -> tuple[Tensor, Tensor]:
        """β (B, D) and h (B, D, E) from the MADE's (B, 1 + E, D)."""
        return out[:, 0], out[:, 1:].transpose(1, 2)

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        beta, h = self._split(self.net(x, context))
        z = beta + self._integral(x, h, *self._rule_tables(x))
        return z, torch.log(self._g(x, h)).sum(dim=1)

    def quadrature_error(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """|Q_N − Q_2N| per entry (B, D): the nested rule's estimate of the value's quadrature error."""
        _, h = self._split(self.net(x, context))
        coarse = self._integral(x, h, *self._table(self.nodes, x))
        return (coarse - self._integral(x, h, *self._table(2 * self.nodes, x))).abs()

    # ------------------------------------------------------------------ inverse
    def _entry_map(self, h_d: Tensor):
        """x ↦ (Q_N(x; h_d), log g(x; h_d)) for one column, ``h_d`` (B, E)."""
        def fn(v: Tensor) -> tuple[Tensor, Tensor]:
            return self._integral(v[:, None], h_d[:, None], *self._rule_tables(v))[:, 0], torch.log(self._g(v, h_d))
        return fn

    def _invert_entries(self, z_d: Tensor, out_d: Tensor) -> Tensor:
        """x_d with β_d + Q_N(x_d; h_d) = z_d: bracket, safeguarded Newton, implicit gradients."""
        beta, h_d = out_d[:, 0], out_d[:, 1:]
        target = z_d - beta
        fn = self._entry_map(h_d)
        with torch.no_grad():
            plain = self._entry_map(h_d.detach())
            ones = torch.ones_like(target)
            lo, hi = expand_bracket(lambda v: plain(v)[0], target.detach(), -ones, ones, what="the umnn inverse")
            x = safeguarded_newton(plain, target.detach(), lo, hi, ones, rtol=default_rtol(target.dtype),
                                   what="the umnn inverse")
        return implicit_step(x, target, fn)[0]

    def _inverse(self, z: Tensor, context: Tensor | None) -> Tensor:
        return autoregressive_inverse(lambda w: self.net(w, context), self._invert_entries, z, self._order)[0]

    def _inverse_and_logdet(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """D passes; the last pass's MADE output is the conditioner at the final x."""
        x, out = autoregressive_inverse(lambda w: self.net(w, context), self._invert_entries, z, self._order)
        return x, -torch.log(self._g(x, self._split(out)[1])).sum(dim=1)
