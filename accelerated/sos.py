"""Sum-of-squares polynomial flow, kind ``sos`` (Jaini et al. 2019; see :mod:`flowspec.reference.sos`
for the map, its closed form, the parameter layout and the float range).

:class:`SOSPolynomial`: a :class:`~.autoregressive.MADE` gives k = 2 + K(r + 1) parameters per
dimension ``[c | a_{1,0} … a_{K,r} | raw ε]``; the forward is one network pass, z_d = c + x_d·Q(x_d)
by Horner's rule with Q_m = q_m/(m + 1) and q the summed self-convolutions of the squares'
coefficients (+ ε² in q_0: the anti-diagonal sums of the Gram matrix Σ_k a_k a_kᵀ), log|det| = Σ_d log p(x_d) from the squares' values (scaled by their
largest magnitude: no cancellation, no overflow while they are finite). The inverse is D sequential
passes (:func:`~.autoregressive.autoregressive_inverse`), each entry solved without autograd by
:func:`~.solve.expand_bracket` from [−1, 1] then :func:`~.solve.safeguarded_newton` (rtol 16 ulps of
the dtype relative to |x| + 1, ``max_iter`` 200 by default, :class:`~flowspec.errors.ConvergenceError`
with the residual at the cap), and given the implicit-function gradients by :func:`~.solve.implicit_step`.
Its pieces are small methods (:meth:`~SOSPolynomial._coefficients`, :meth:`~SOSPolynomial._value`,
:meth:`~SOSPolynomial._log_integrand`, :meth:`~SOSPolynomial._solve`) that a subclass can override.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from flowspec.reference.sos import EPS_FLOOR

from .autoregressive import MadeLaw, autoregressive_inverse
from .base import register, softplus
from .solve import DEFAULT_MAX_ITER, default_rtol, expand_bracket, implicit_step, safeguarded_newton


def horner(coefficients: Tensor, x: Tensor) -> Tensor:
    """Σ_m coefficients[…, m]·x^m by Horner's rule (coefficients from the constant term up)."""
    out = coefficients[..., -1]
    for m in range(coefficients.shape[-1] - 2, -1, -1):
        out = torch.addcmul(coefficients[..., m], out, x)
    return out


@register("sos")
class SOSPolynomial(MadeLaw):
    """SOS flow: z_d = c + ∫₀^{x_d} Σ_k s_k(t)² + ε² dt with θ_d(x_<d) from a :class:`MADE`;
    forward one pass, inverse D passes of a bracketed 1-D solve."""

    def __init__(self, dim: int, order: Any = "natural", hidden: Sequence[int] = (8,), activation: str = "tanh",
                 context_dim: int = 0, degree: int = 2, squares: int = 2, *, validate_args: bool | None = None,
                 **unknown: Any):
        """``unknown`` config entries are rejected with a :class:`~flowspec.errors.ConfigError`."""
        super().__init__(validate_args=validate_args)
        self._init_made({"dim": dim, "order": order, "hidden": hidden, "activation": activation,
                         "context_dim": context_dim, "degree": degree, "squares": squares, **unknown},
                        lambda: 2 + int(squares) * (int(degree) + 1))
        self.degree, self.squares = int(degree), int(squares)
        n = self.degree + 1
        sums = torch.arange(n)[:, None] + torch.arange(n)[None, :]
        anti = (sums.reshape(-1, 1) == torch.arange(2 * n - 1)[None, :]).to(torch.get_default_dtype())
        self.register_buffer("_anti_diagonals", anti, persistent=False)  # ((r + 1)², 2r + 1): [i + j = m]
        self.max_iter = DEFAULT_MAX_ITER
        self.rtol: float | None = None


    # ------------------------------------------------------------------ the 1-D law
    def _split(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(c, a, ε²) from per-entry raw parameters ``h`` (…, k): a has shape (…, K, r + 1)."""
        a = h[..., 1:-1].reshape(h.shape[:-1] + (self.squares, self.degree + 1))
        return h[..., 0], a, softplus(h[..., -1]) + EPS_FLOOR

    def _coefficients(self, a: Tensor, eps2: Tensor) -> Tensor:
        """q_0 … q_{2r} of p = Σ_k s_k² + ε²: the Gram matrix G_ij = Σ_k a_ki a_kj (one matmul) summed
        along its anti-diagonals i + j = m (a product with the constant 0/1 matrix ``_anti_diagonals``),
        ε² added to q_0."""
        gram = a.transpose(-1, -2) @ a
        q = gram.flatten(-2) @ self._anti_diagonals
        return torch.cat([q[..., :1] + eps2[..., None], q[..., 1:]], dim=-1)

    def _value(self, x: Tensor, c: Tensor, a: Tensor, eps2: Tensor) -> Tensor:
        """z = c + x·Σ_m Q_m x^m, Q_m = q_m/(m + 1) (the closed-form integral, Horner)."""
        q = self._coefficients(a, eps2)
        steps = torch.arange(1, q.shape[-1] + 1, dtype=q.dtype, device=q.device)
        return c + x * horner(q / steps, x)

    def _log_integrand(self, x: Tensor, a: Tensor, eps2: Tensor) -> Tensor:
        """log p(x) = 2 log m + log(Σ_k (s_k/m)² + ε²/m²), m = max(max_k |s_k(x)|, ε)."""
        s = horner(a, x[..., None])
        m = torch.maximum(s.detach().abs().amax(dim=-1), eps2.detach().sqrt())
        return 2.0 * torch.log(m) + torch.log(((s / m[..., None]) ** 2).sum(dim=-1) + eps2 / m ** 2)

    def _law(self, x: Tensor, c: Tensor, a: Tensor, eps2: Tensor) -> tuple[Tensor, Tensor]:
        return self._value(x, c, a, eps2), self._log_integrand(x, a, eps2)

    def _solve(self, target: Tensor, c: Tensor, a: Tensor, eps2: Tensor) -> Tensor:
        """The root of the law at ``target`` per entry, without gradients: bracket, then the safeguarded Newton."""
        rtol = default_rtol(target.dtype) if self.rtol is None else self.rtol
        ones = torch.ones_like(target)
        lo, hi = expand_bracket(lambda v: self._value(v, c, a, eps2), target, -ones, ones,
                                what="the SOS inverse's bracket")
        return safeguarded_newton(lambda v: self._law(v, c, a, eps2), target, lo, hi, ones, rtol=rtol,
                                  max_iter=self.max_iter, what="the SOS inverse")

    # ------------------------------------------------------------------ the flow
    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        z, log_p = self._law(x, *self._split(self.net(x, context).transpose(1, 2)))
        return z, log_p.sum(dim=1)

    def _invert_entries(self, z_d: Tensor, h_d: Tensor) -> Tensor:
        c, a, eps2 = self._split(h_d)
        x = self._solve(z_d.detach(), c.detach(), a.detach(), eps2.detach())
        return implicit_step(x, z_d, lambda v: self._law(v, c, a, eps2))[0]

    def _inverse_and_logdet(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """D passes; the last pass's conditioner output is the conditioner at the final x, so
        log|det ∂x/∂z| = −Σ_d log p(x_d) needs no further network pass."""
        x, h = autoregressive_inverse(lambda w: self.net(w, context), self._invert_entries, z, self._order)
        _, a, eps2 = self._split(h.transpose(1, 2))
        return x, -self._log_integrand(x, a, eps2).sum(dim=1)

    def _inverse(self, z: Tensor, context: Tensor | None) -> Tensor:
        return autoregressive_inverse(lambda w: self.net(w, context), self._invert_entries, z, self._order)[0]
