"""The logit of a logistic-mixture CDF and the Flow++ coupling (Ho et al. 2019, Sec. 3.2.1, eqs. 17–20;
see :mod:`flowspec.reference.logistic_mixture` for the formulas and the layout).

The map, batched and vectorised over entries and components (the parameters' last axis is K):

* :func:`mixture_logit_and_log_derivative` — (ℓ, log ℓ′): ℓ = log F − log(1 − F) with log F and
  log(1 − F) by log-sum-exp of ``logsigmoid`` terms, never forming σ(u); log ℓ′ = log F′ − log F − log(1 − F) with
  the density paired with the smaller of F and 1 − F under one shared shift, so that the large
  common term cancels exactly;
* :func:`logit_bracket`, :func:`mixture_logit_root` and :func:`mixture_logit_inverse` (the shared
  :func:`.solve.safeguarded_newton`) — x with
  ℓ(x) = t inside the exact bracket [min_i(μ_i + e^{s_i}t), max_i(μ_i + e^{s_i}t)], by Newton steps
  safeguarded by bisection, all entries at once, until the step or the bracket is within
  rtol·(|x| + min_i e^{s_i}) (rtol = 16ε of the dtype by default); ConvergenceError with the relative
  residual otherwise. The solve runs without autograd; gradients reach x through one implicit
  step, x + ((t − ℓ(x)) − (t − ℓ(x)).detach())·e^{−log ℓ′}, whose value is x exactly.

**Accuracy in float32** (what the conformance properties hold it to): ℓ within a few ulps of
max(1, |ℓ|) at every x, including far in the tails where F rounds to 0 or 1 (|u| beyond
log(4/ε) ≈ 17.3 on the right, 103 on the left), where the naive σ⁻¹(Σ π_i σ(u_i)) is ±∞; log ℓ′
within a few ulps of max(1, |log ℓ′|) (computing log F′ − log(1 − F) as a difference instead
would lose ε·|u|, 10⁻³ at u = 10⁴). What remains is the conditioning of the map itself: with a
peaked component, the rounding of x − μ moves u by ε·max(|x|, |μ|)·e^{−s}, so a float32 forward
near a component's centre carries an error of the order of ε·max(|x|, |μ|)·e^{a − s} (the slope
times the input's size), as any map with that slope does.

:class:`LogisticMixtureCoupling` (``logistic_mixture_coupling``) is a :class:`~.coupling._Coupling`
(every mask and conditioner of the coupling machinery) with k = 3K + 2 outputs per entry; its pieces
are methods a subclass can override: :meth:`~LogisticMixtureCoupling._mixture_parameters`,
:meth:`~LogisticMixtureCoupling._mixture` (ℓ and log ℓ′) and :meth:`~LogisticMixtureCoupling._solve`.
Solver settings are attributes, not config: ``max_iter`` (default 200) and ``rtol`` (None: 16ε).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor
from torch.nn.functional import logsigmoid

from .base import register
from .coupling import _Coupling
from .solve import DEFAULT_MAX_ITER, default_rtol, implicit_step, safeguarded_newton
from .spline import per_entry



# ----------------------------------------------------------------------------- the map

def _terms(x: Tensor, log_pi: Tensor, mu: Tensor, log_scale: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(u, C, A): u_i = (x − μ_i)e^{−s_i}, C_i = log π_i + log σ(u_i), A_i = log π_i + log σ(−u_i)."""
    u = (x.unsqueeze(-1) - mu) * torch.exp(-log_scale)
    return u, log_pi + logsigmoid(u), log_pi + logsigmoid(-u)


def _log_ratio(w: Tensor, v: Tensor) -> Tensor:
    """log(Σ e^{w_i + v_i} / Σ e^{w_i}) under the shared shift max_i w_i."""
    shifted = w - w.detach().amax(dim=-1, keepdim=True)
    return torch.logsumexp(shifted + v, dim=-1) - torch.logsumexp(shifted, dim=-1)


def mixture_logit_and_log_derivative(x: Tensor, log_pi: Tensor, mu: Tensor, log_scale: Tensor) -> tuple[Tensor, Tensor]:
    """(ℓ(x), log ℓ′(x)) elementwise (module docstring)."""
    u, c, a = _terms(x, log_pi, mu, log_scale)
    log_f, log_g = torch.logsumexp(c, dim=-1), torch.logsumexp(a, dim=-1)
    right = _log_ratio(a, logsigmoid(u) - log_scale) - log_f
    left = _log_ratio(c, logsigmoid(-u) - log_scale) - log_g
    return log_f - log_g, torch.where(log_f >= log_g, right, left)


def logit_bracket(target: Tensor, mu: Tensor, log_scale: Tensor) -> tuple[Tensor, Tensor]:
    """[min_i(μ_i + e^{s_i} t), max_i(μ_i + e^{s_i} t)], which holds ℓ⁻¹(t)."""
    ends = mu + torch.exp(log_scale) * target.unsqueeze(-1)
    return ends.amin(dim=-1), ends.amax(dim=-1)


def mixture_logit_root(target: Tensor, log_pi: Tensor, mu: Tensor, log_scale: Tensor, *, rtol: float | None = None,
                       max_iter: int = DEFAULT_MAX_ITER,
                       what: str = "the inverse of the logit of a logistic-mixture CDF") -> Tensor:
    """The root x of ℓ(x) = target elementwise (module docstring), without gradients (every argument
    is detached); ``what`` names the solve in a :class:`~flowspec.errors.ConvergenceError`."""
    rtol = default_rtol(target.dtype) if rtol is None else rtol
    target, log_pi, mu, log_scale = (t.detach() for t in (target, log_pi, mu, log_scale))
    low, high = logit_bracket(target, mu, log_scale)
    return safeguarded_newton(lambda v: mixture_logit_and_log_derivative(v, log_pi, mu, log_scale), target, low, high,
                              torch.exp(log_scale.amin(dim=-1)), rtol=rtol, max_iter=max_iter, what=what)


def mixture_logit_inverse(target: Tensor, log_pi: Tensor, mu: Tensor, log_scale: Tensor, *, rtol: float | None = None,
                          max_iter: int = DEFAULT_MAX_ITER) -> Tensor:
    """x with ℓ(x) = target elementwise (module docstring); differentiable in every argument."""
    x = mixture_logit_root(target, log_pi, mu, log_scale, rtol=rtol, max_iter=max_iter)
    return implicit_step(x, target, lambda v: mixture_logit_and_log_derivative(v, log_pi, mu, log_scale))[0]


# ----------------------------------------------------------------------------- the coupling

@register("logistic_mixture_coupling")
class LogisticMixtureCoupling(_Coupling):
    """Flow++ (eqs. 19–20): z_t = ℓ(x_t; π, μ, s)·e^{a} + b, log|det| = Σ_t (a + log ℓ′(x_t)), with
    the 3K + 2 parameters of each transformed entry from the conditioner (reference layout
    ``[K logits | K means | K raw log-scales | raw a | b]``)."""

    def __init__(self, shape: Sequence[int], components: int = 4, scale_factor: float = 1.0,
                 log_scale_bound: float = 7.0, *, validate_args: bool | None = None, **coupling_config: Any):
        """``coupling_config``: the coupling machinery's keys (mask, parity, conditioner, …); entries
        no kind knows are rejected with a :class:`~flowspec.errors.ConfigError`."""
        super().__init__(shape, validate_args=validate_args, components=components, scale_factor=scale_factor,
                         log_scale_bound=log_scale_bound, **coupling_config)
        self.components, self.scale_factor = int(components), float(scale_factor)
        self.log_scale_bound = float(log_scale_bound)
        self.max_iter = DEFAULT_MAX_ITER
        self.rtol: float | None = None

    @property
    def outputs_per_entry(self) -> int:  # type: ignore[override]
        """k = 3K + 2 conditioner outputs per transformed entry."""
        return 3 * self._config["components"] + 2

    def _mixture_parameters(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(log π, μ, s, a, b) per transformed entry from the conditioner output ``h``."""
        raw = per_entry(h, self.outputs_per_entry)
        k, bound = self.components, self.log_scale_bound
        log_pi = torch.log_softmax(raw[..., :k], dim=-1)
        log_scale = bound * torch.tanh(raw[..., 2 * k:3 * k] / bound)
        a = self.scale_factor * torch.tanh(raw[..., 3 * k])
        return log_pi, raw[..., k:2 * k], log_scale, a, raw[..., 3 * k + 1]

    def _mixture(self, values: Tensor, log_pi: Tensor, mu: Tensor, log_scale: Tensor) -> tuple[Tensor, Tensor]:
        """(ℓ, log ℓ′) of the transformed values."""
        return mixture_logit_and_log_derivative(values, log_pi, mu, log_scale)

    def _solve(self, target: Tensor, log_pi: Tensor, mu: Tensor, log_scale: Tensor) -> Tensor:
        """The root of ℓ(x) = target per entry, without gradients (:func:`mixture_logit_root`)."""
        return mixture_logit_root(target, log_pi, mu, log_scale, rtol=self.rtol, max_iter=self.max_iter,
                                  what="logistic mixture coupling inverse")

    def _law(self, values: Tensor, h: Tensor, inverse: bool) -> tuple[Tensor, Tensor | None]:
        log_pi, mu, log_scale, a, b = self._mixture_parameters(h)
        if inverse:
            target = (values - b) * torch.exp(-a)
            x = self._solve(target.detach(), log_pi.detach(), mu.detach(), log_scale.detach())
            x, log_d = implicit_step(x, target, lambda v: self._mixture(v, log_pi, mu, log_scale))
            return x, -(a + log_d)
        ell, log_d = self._mixture(values, log_pi, mu, log_scale)
        return ell * torch.exp(a) + b, a + log_d

    def _inverse_and_logdet(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """log|det ∂x/∂z| = −Σ_t (a + log ℓ′) at the solved x, in the one pass."""
        return self._couple(z, context, inverse=True)
