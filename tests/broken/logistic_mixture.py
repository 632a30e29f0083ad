"""Broken logistic-mixture couplings (Flow++ eqs. 17–20): faults a real implementer makes in the
logit of the mixture CDF, its log-derivative and its inverse."""
from __future__ import annotations

import torch
from torch.nn.functional import logsigmoid

from flowspec.accelerated.logistic_mixture import LogisticMixtureCoupling, logit_bracket

from . import BrokenCase


class NaiveLogit(LogisticMixtureCoupling):
    """The CDF exponentiated from its log-space sum and its logit taken with ``torch.logit``'s clamp
    at ε "to keep it finite": the logit saturates at ±log((1 − ε)/ε) (≈ ±15.9 in float32) wherever
    the CDF rounds to 1 or underflows, silently; the log-det (the log-density in log space, minus
    the logs of the clamped CDF and its complement) is finite and wrong there too."""

    def _mixture(self, values, log_pi, mu, log_scale):
        u = (values.unsqueeze(-1) - mu) * torch.exp(-log_scale)
        eps = torch.finfo(values.dtype).eps
        cdf = torch.exp(torch.logsumexp(log_pi + logsigmoid(u), dim=-1)).clamp(eps, 1.0 - eps)
        log_density = torch.logsumexp(log_pi - log_scale + logsigmoid(u) + logsigmoid(-u), dim=-1)
        return torch.logit(cdf), log_density - torch.log(cdf) - torch.log1p(-cdf)


class MissingLogitJacobian(LogisticMixtureCoupling):
    """The log-det takes the mixture's log-density alone, as if the map were the CDF: the logit's
    Jacobian term −log F − log(1 − F) is missing."""

    def _mixture(self, values, log_pi, mu, log_scale):
        ell, _ = super()._mixture(values, log_pi, mu, log_scale)
        u = (values.unsqueeze(-1) - mu) * torch.exp(-log_scale)
        return ell, torch.logsumexp(log_pi - log_scale + logsigmoid(u) + logsigmoid(-u), dim=-1)


class FixedBisection(LogisticMixtureCoupling):
    """The inverse bisects the exact bracket 30 times ("below float32's resolution of a unit
    bracket") and returns the midpoint without checking any tolerance: wrong by up to the bracket's
    width / 2³¹ wherever the components' scales or means spread the bracket."""

    def _solve(self, target, log_pi, mu, log_scale):
        low, high = logit_bracket(target, mu, log_scale)
        for _ in range(30):
            mid = 0.5 * (low + high)
            below = self._mixture(mid, log_pi, mu, log_scale)[0] < target
            low, high = torch.where(below, mid, low), torch.where(below, high, mid)
        return 0.5 * (low + high)


CASES = [
    BrokenCase("logistic mixture naive logit of the CDF (saturates in float32)", "logistic_mixture_coupling",
               NaiveLogit, white_box=("mixture_logit_tails",),
               black_box=("mixture_logit_tails", "mixture_logit_monotone"), dtypes=("float32",)),
    BrokenCase("logistic mixture log-det without the logit's Jacobian term", "logistic_mixture_coupling",
               MissingLogitJacobian, white_box=("logdet_matches_reference", "mixture_logdet_peaked"),
               black_box=("logdet_matches_fd_jacobian",)),
    BrokenCase("logistic mixture inverse: a fixed count of bisection steps", "logistic_mixture_coupling",
               FixedBisection, white_box=("inverse_matches_reference", "mixture_inverse_to_tolerance"),
               black_box=("inverse_round_trip", "mixture_inverse_to_tolerance")),
]
