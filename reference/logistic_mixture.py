"""The logit of a logistic-mixture CDF and the Flow++ coupling built on it (Ho et al. 2019, "Flow++",
Sec. 3.2.1, eqs. 17–20).

**The map** (one scalar x, K components with log-weights log π_i, means μ_i, log-scales s_i; the
parameters broadcast along a last axis of length K):

    u_i = (x − μ_i)·e^{−s_i},     F(x) = MixLogCDF(x; π, μ, s) = Σ_i π_i σ(u_i)              (eq. 18)
    ℓ(x) = σ⁻¹(F(x)) = log F − log(1 − F),
    log F = LSE_i(C_i),  C_i = log π_i + log σ(u_i);   log(1 − F) = LSE_i(A_i),  A_i = log π_i + log σ(−u_i)

with LSE the log-sum-exp over the components and log σ(v) = −log(1 + e^{−v}) (exact for every v),
so σ(u) is never formed: where it rounds to 1 (u ≳ 37 in float64, 17 in float32) or to 0, ℓ is
still finite and correct to a few ulps of its size, while the naive σ⁻¹(Σ π_i σ(u_i)) is ±∞.

**Its log-derivative** log ℓ′ = log F′ − log F − log(1 − F), the log-density
log F′ = LSE_i(log π_i − s_i + log σ(u_i) + log σ(−u_i)) by the same route. Where F ≥ 1/2 the
density and 1 − F share their large common term (≈ −u in the right tail); they are combined as
one ratio with the shared shift m = max_i A_i,

    log F′ − log(1 − F) = log Σ_i e^{A_i − m + log σ(u_i) − s_i} − log Σ_i e^{A_i − m},

in which the common term cancels exactly (A_k − m = 0 for the dominant component) instead of by
subtracting two rounded large numbers, which loses ε·|u|; where F < 1/2 the same with C_i and
log σ(−u_i). The result is accurate to a few ulps of max(1, |log ℓ′|) at every x. Since
Σ π_i σ_i(1 − σ_i) ≤ F(1 − F) (a variance), 0 < ℓ′ ≤ max_i e^{−s_i}.

**Its inverse** solves ℓ(x) = t in logit space, without forming σ(t). The bracket
[min_i(μ_i + e^{s_i} t), max_i(μ_i + e^{s_i} t)] is exact: at its left end every u_i ≤ t, so
F ≤ σ(t) and ℓ ≤ t, and at its right end ℓ ≥ t. :func:`safeguarded_newton` (vectorised, float64)
solves inside it: Newton steps on ℓ(x) − t with the slope e^{log ℓ′}, replaced by bisection when a
step leaves the current bracket or does not halve the step before last (the classic "rtsafe"
rule; a step already below the tolerance is always taken, since at the rounding floor steps stop
shrinking), until the Newton step or the bracket is within ``rtol``·(|x| + min_i e^{s_i}), rtol =
16ε by default — relative to the answer, floored at the narrowest component's scale (x = 0 is a
valid answer). The bracket's ends are widened by that much to absorb their own rounding. After a
Newton step below the tolerance the error is of the order of its square, so the answer is accurate
to rounding; where ℓ is flat (between peaked components) the bracket shrinks to the tolerance and x
is as well determined as ℓ's rounding allows. At ``max_iter`` it raises :class:`~flowspec.errors.ConvergenceError` with the relative
residual |ℓ(x) − t|/max(1, |t|). The solver is the shared 1-D monotone solve of
:mod:`flowspec.reference.solve`.

These functions are the map's one definition in the reference; the deep sigmoidal flow (NAF) is the
same map with a_i = e^{−s_i}, b_i = −μ_i e^{−s_i}.

**The coupling** ``logistic_mixture_coupling`` (eqs. 19–20): for each transformed entry,

    y = ℓ(x; π, μ, s)·e^{a} + b,     log|dy/dx| = a + log ℓ′(x),

the parameters from the coupling machinery's conditioner on the unchanged part (masks, conditioners
and context exactly as :mod:`flowspec.reference.coupling`, with k = 3K + 2 outputs per transformed
entry in k blocks, as the spline coupling's): ``[K logits of π | K means μ | K raw log-scales |
raw a | b]``, with

    log π = log-softmax(logits),   s = log_scale_bound·tanh(raw_s / log_scale_bound),
    a = scale_factor·tanh(raw_a)   (as the affine coupling's log-scale).

The bound on s is a smooth, symmetric version of the floor at −7 that PixelCNN++'s logistic
mixtures put on their log-scales: e^{−s} ≤ e^{log_scale_bound}, so the slope dy/dx is at most
e^{scale_factor + log_scale_bound} (and ℓ′ = e^{−s} near x = μ when K = 1).

Config: the coupling keys of :mod:`flowspec.reference.coupling` (without ``scale_factor``'s affine
meaning) and :data:`MIXTURE_DEFAULTS`: ``components`` (K ≥ 1, default 4; K = 1 makes ℓ = u, an
affine map), ``scale_factor`` (> 0, default 1.0), ``log_scale_bound`` (> 0, default 7.0).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

import autograd.numpy as anp
import numpy as np
from autograd.tracer import getval

from flowspec.errors import ConfigError
from flowspec.registry import positive_number
from flowspec.spec import FlowSpec

from . import coupling
from .lipschitz import tanh
from .solve import DEFAULT_SCALAR_MAX_ITER as DEFAULT_MAX_ITER, DEFAULT_SCALAR_RTOL as DEFAULT_RTOL, safeguarded_newton
from .spline import per_entry

FAMILY = "logistic_mixture"
_WHAT = "a logistic mixture coupling"
MIXTURE_DEFAULTS: dict[str, Any] = {"components": 4, "scale_factor": 1.0, "log_scale_bound": 7.0}


# ----------------------------------------------------------------------------- the map

def log_sigmoid(v: Any) -> Any:
    """log σ(v) = −log(1 + e^{−v}), finite and accurate for every v."""
    return -anp.logaddexp(0.0, -v)


def _lse(a: Any) -> Any:
    """log Σ e^{a} over the last axis, shifted by the (constant) maximum."""
    m = np.max(getval(a), axis=-1, keepdims=True)
    return anp.log(anp.sum(anp.exp(a - m), axis=-1)) + m[..., 0]


def _log_ratio(w: Any, v: Any) -> Any:
    """log(Σ e^{w_i + v_i} / Σ e^{w_i}) with the shared shift max_i w_i (module docstring)."""
    shifted = w - np.max(getval(w), axis=-1, keepdims=True)
    return _lse(shifted + v) - _lse(shifted)


def _terms(x: Any, log_pi: Any, mu: Any, log_scale: Any) -> tuple[Any, Any, Any]:
    """(u, C, A) with u_i = (x − μ_i)e^{−s_i}, C_i = log π_i + log σ(u_i), A_i = log π_i + log σ(−u_i)."""
    u = (x[..., None] - mu) * anp.exp(-log_scale)
    return u, log_pi + log_sigmoid(u), log_pi + log_sigmoid(-u)


def mixture_log_cdfs(x: Any, log_pi: Any, mu: Any, log_scale: Any) -> tuple[Any, Any]:
    """(log F(x), log(1 − F(x))) of the logistic mixture (eq. 18), by log-sum-exp of log-sigmoids."""
    _, c, a = _terms(x, log_pi, mu, log_scale)
    return _lse(c), _lse(a)


def mixture_logit(x: Any, log_pi: Any, mu: Any, log_scale: Any) -> Any:
    """ℓ(x) = σ⁻¹(MixLogCDF(x; π, μ, s)) = log F − log(1 − F), elementwise (eqs. 17–18)."""
    log_f, log_g = mixture_log_cdfs(x, log_pi, mu, log_scale)
    return log_f - log_g


def mixture_logit_and_log_derivative(x: Any, log_pi: Any, mu: Any, log_scale: Any) -> tuple[Any, Any]:
    """(ℓ(x), log ℓ′(x)); log ℓ′ = log F′ − log F − log(1 − F) with the large common term cancelled
    exactly (module docstring). Differentiable by autograd in x and every parameter."""
    u, c, a = _terms(x, log_pi, mu, log_scale)
    log_f, log_g = _lse(c), _lse(a)
    right = _log_ratio(a, log_sigmoid(u) - log_scale) - log_f  # F ≥ 1/2: density paired with 1 − F
    left = _log_ratio(c, log_sigmoid(-u) - log_scale) - log_g  # F < 1/2: density paired with F
    return log_f - log_g, anp.where(getval(log_f) >= getval(log_g), right, left)


def mixture_logit_log_derivative(x: Any, log_pi: Any, mu: Any, log_scale: Any) -> Any:
    """log ℓ′(x) = log of the mixture density − log F − log(1 − F) (:func:`mixture_logit_and_log_derivative`)."""
    return mixture_logit_and_log_derivative(x, log_pi, mu, log_scale)[1]


def logit_bracket(target: np.ndarray, mu: np.ndarray, log_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The exact bracket [min_i(μ_i + e^{s_i} t), max_i(μ_i + e^{s_i} t)] of ℓ⁻¹(t) (module docstring)."""
    ends = mu + np.exp(log_scale) * np.asarray(target)[..., None]
    return ends.min(axis=-1), ends.max(axis=-1)


def mixture_logit_inverse(target: Any, log_pi: Any, mu: Any, log_scale: Any, *, rtol: float = DEFAULT_RTOL,
                          max_iter: int = DEFAULT_MAX_ITER) -> np.ndarray:
    """x with ℓ(x) = target, elementwise, in float64 (plain NumPy: gradients through the inverse
    come from implicit differentiation elsewhere), inside the exact bracket (module docstring)."""
    target, log_pi, mu, log_scale = (np.asarray(v, np.float64) for v in (target, log_pi, mu, log_scale))
    low, high = logit_bracket(target, mu, log_scale)
    return safeguarded_newton(lambda v: mixture_logit_and_log_derivative(v, log_pi, mu, log_scale), target, low,
                              high, np.exp(log_scale.min(axis=-1)), rtol=rtol, max_iter=max_iter,
                              what="the inverse of the logit of a logistic-mixture CDF")


# ----------------------------------------------------------------------------- config

@dataclass(frozen=True)
class MixtureConfig:
    """The validated mixture keys of a config (module docstring)."""

    components: int
    scale_factor: float
    log_scale_bound: float

    @property
    def outputs_per_entry(self) -> int:
        """k = 3K + 2 conditioner outputs per transformed entry."""
        return 3 * self.components + 2


def parse_mixture(config: Mapping[str, Any]) -> MixtureConfig:
    """The mixture keys of ``config`` with :data:`MIXTURE_DEFAULTS` filled in; raises :class:`ConfigError`."""
    full = {**MIXTURE_DEFAULTS, **{k: v for k, v in config.items() if k in MIXTURE_DEFAULTS}}
    k = full["components"]
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"config['components'] of a logistic mixture coupling must be an int ≥ 1, got {k!r}")
    return MixtureConfig(components=k, scale_factor=positive_number(full, "scale_factor", _WHAT),
                         log_scale_bound=positive_number(full, "log_scale_bound", _WHAT))


def parse_coupling(config: Mapping[str, Any]) -> tuple[coupling.CouplingConfig, MixtureConfig]:
    """The coupling keys (:func:`flowspec.reference.coupling.parse_config`, k = 3K + 2 outputs per
    transformed entry) and the mixture keys."""
    known = ("shape", *coupling.DEFAULTS, *MIXTURE_DEFAULTS)
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise ConfigError(f"unknown config keys {unknown} for a logistic mixture coupling; known: {list(known)}")
    mix = parse_mixture(config)
    base = coupling.parse_config({k: v for k, v in config.items() if k not in MIXTURE_DEFAULTS}, affine=False)
    return replace(base, law_outputs=mix.outputs_per_entry), mix


# ----------------------------------------------------------------------------- the coupling

def mixture_parameters(raw: Any, mix: MixtureConfig) -> tuple[Any, Any, Any, Any, Any]:
    """(log π, μ, s, a, b) from the raw per-entry outputs ``(…, 3K + 2)`` (module docstring)."""
    k, bound = mix.components, mix.log_scale_bound
    logits = raw[..., :k]
    log_pi = logits - _lse(logits)[..., None]
    log_scale = bound * tanh(raw[..., 2 * k:3 * k] / bound)
    return log_pi, raw[..., k:2 * k], log_scale, mix.scale_factor * tanh(raw[..., 3 * k]), raw[..., 3 * k + 1]


def coupling_law(mix: MixtureConfig, inverse: bool) -> coupling.Law:
    """y = ℓ(x)·e^{a} + b (eq. 20), or its inverse x = ℓ⁻¹((y − b)·e^{−a})."""
    def law(values: Any, h: Any, cfg: coupling.CouplingConfig) -> Any:
        log_pi, mu, log_scale, a, b = mixture_parameters(per_entry(h, cfg.outputs_per_entry), mix)
        if inverse:
            return mixture_logit_inverse((values - b) * np.exp(-a), log_pi, mu, log_scale)
        return mixture_logit(values, log_pi, mu, log_scale) * anp.exp(a) + b
    return law


@dataclass(frozen=True)
class EntryMixtures:
    """The transformed entries of one sample (``index``: flat C-order indices) and their parameters,
    which do not depend on those entries' values: log π, μ, s of shape (n, K), a and b of shape (n,)."""

    index: np.ndarray
    log_pi: np.ndarray
    mu: np.ndarray
    log_scale: np.ndarray
    a: np.ndarray
    b: np.ndarray


def entry_mixtures(spec: FlowSpec, x: Any, context: Any = None) -> EntryMixtures:
    """The mixtures of the transformed entries of one sample ``x`` (registry extra ``logit_mixture``):
    the conditioner's raw outputs read through :func:`flowspec.reference.coupling.couple` itself,
    one parameter per pass, so that every conditioner of the coupling machinery is covered."""
    cfg, mix = parse_coupling(spec.config)
    k = cfg.outputs_per_entry
    index = np.flatnonzero(~coupling.unchanged_mask(cfg.shape, cfg.mask, cfg.parity).ravel())

    def pick(j: int) -> coupling.Law:
        return lambda values, h, c: per_entry(h, k)[..., j]

    x = np.asarray(x, np.float64)
    raw = np.stack([np.asarray(coupling.couple(spec, cfg, x, context, pick(j))).ravel()[index] for j in range(k)],
                   axis=-1)
    return EntryMixtures(index, *(np.asarray(v, np.float64) for v in mixture_parameters(raw, mix)))


def with_fixed_components(spec: FlowSpec, mu: np.ndarray, log_scale_fraction: np.ndarray) -> FlowSpec:
    """``spec`` with every transformed entry's means set to ``mu`` and log-scales to
    ``log_scale_fraction`` × log_scale_bound (length K each, fractions in (−1, 1)) whatever the
    input: the conditioner's last layer gets zero weights and those biases in the μ and raw-s
    blocks (registry extra ``logit_mixture_fixed``)."""
    cfg, mix = parse_coupling(spec.config)
    k, bound = mix.components, mix.log_scale_bound
    last = f"net.{max(int(name.split('.')[1]) for name in spec.params if name.startswith('net.'))}"
    weight, bias = np.array(spec.params[f"{last}.weight"]), np.array(spec.params[f"{last}.bias"])
    n = len(bias) // cfg.outputs_per_entry
    blocks = {k + i: float(mu[i]) for i in range(k)}
    blocks.update({2 * k + i: float(bound * np.arctanh(log_scale_fraction[i])) for i in range(k)})
    for block, value in blocks.items():
        weight[block * n:(block + 1) * n] = 0.0
        bias[block * n:(block + 1) * n] = value
    return FlowSpec(spec.kind, spec.config, {**spec.params, f"{last}.weight": weight, f"{last}.bias": bias})


# Flow++ eqs. 19–20: y_t = ℓ(x_t; π, μ, s)·e^{a} + b with every parameter from the conditioner on the
# unchanged part, y_u = x_u.
coupling.register_coupling_kind(
    "logistic_mixture_coupling", FAMILY, parse_coupling, coupling_law,
    "Flow++: y = σ⁻¹(MixLogCDF(x; π, μ, s))·e^a + b per transformed entry (3K + 2 outputs per entry)",
    extras={"logit_mixture": entry_mixtures, "logit_mixture_fixed": with_fixed_components})
