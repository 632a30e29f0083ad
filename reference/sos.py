"""Sum-of-squares polynomial flow, kind ``sos`` (Jaini, Selby & Yu 2019, "Sum-of-Squares Polynomial
Flow", ICML: its univariate transform, the integral of a sum of squared polynomials; the paper is not
among the project's ``shared/papers``, so no equation number is quoted here).

**The map.** Per dimension d, with parameters θ_d = (c, a, raw ε) from a MADE reading x_<d (the
masks of :mod:`flowspec.made`, as the other MADE kinds):

    z_d = c + ∫₀^{x_d} p(t) dt,     p(t) = Σ_{k=1}^{K} s_k(t)² + ε²,     s_k(t) = Σ_{l=0}^{r} a_{kl} t^l,
    ε² = softplus(raw) + :data:`EPS_FLOOR`   (EPS_FLOOR = 1e-3).

p ≥ ε² ≥ 10⁻³ everywhere, so the map is strictly increasing on the whole line even where every
square shares a real root ρ (the degenerate case of the paper's transform, where without ε² the
derivative p(ρ) vanishes and log|det| = −∞); the floor keeps ε² positive where softplus(raw) underflows.
The learned ε² term is the "+ ε²" of the issue; softplus rather than exp so that it grows linearly,
not exponentially, with raw.

**Closed form.** The square of s_k has the coefficients of the polynomial self-convolution
(s_k²)_m = Σ_{i+j=m} a_{ki} a_{kj} (the cross terms i ≠ j twice, once as (i, j) and once as (j, i)),
so p has q_m = Σ_k Σ_{i+j=m} a_{ki} a_{kj} + ε²·[m = 0], m = 0 … 2r, and termwise integration gives
the degree-(2r + 1) polynomial

    z_d = c + Σ_{m=0}^{2r} q_m x^{m+1} / (m + 1)     (coefficient of x^{m+1}: q_m/(m + 1)),

evaluated by Horner's rule as c + x·(Q_0 + x·(Q_1 + … + x·Q_{2r})), Q_m = q_m/(m + 1). The lower
limit contributes nothing (every term vanishes at t = 0), so z_d(0) = c: c is the constant of
integration.

**Log-det.** log|det ∂z/∂x| = Σ_d log p(x_d) (the Jacobian is triangular in the order). p is not
formed from the expanded q (whose terms cancel near a shared root): each s_k(x) by Horner, then
log p = 2 log m + log(Σ_k (s_k/m)² + ε²/m²) with m = max(max_k |s_k|, ε), which neither cancels
nor overflows while the s_k are finite. The value is the autograd primitive :func:`integral` whose
derivative in x is that p, so the generic machinery's slogdet of the autograd Jacobian is just as
accurate (autograd through the expanded polynomial would cancel near a shared root).

**Float range.** The value grows like |Q_{2r}|·|x|^{2r+1}: in float32 z overflows at about
|x| ≈ (3.4·10³⁸/|Q_{2r}|)^{1/(2r+1)} (with |Q_{2r}| ≈ 1: 3·10⁵ for r = 3, 5·10⁷ for r = 2, 7·10¹² for
r = 1; in float64 1.8·10³⁰⁸ takes its place), while log p stays finite up to |s_k| ≈ 3.4·10³⁸. The
accelerated layer raises :class:`~flowspec.errors.NumericalError` on a non-finite value; the inverse
raises :class:`~flowspec.errors.ConvergenceError` where no finite bracket holds the target.

**Inverse.** D sequential passes in the order (:func:`flowspec.reference.autoregressive.autoregressive_inverse`),
each entry by :func:`~flowspec.reference.solve.expand_bracket` from [−1, 1] then
:func:`~flowspec.reference.solve.safeguarded_newton` (tolerance 16ε relative to |x| + 1), which
raises :class:`~flowspec.errors.ConvergenceError` with its residual at its cap. The bracket's 64
doublings reach |x| ≈ 3.7·10¹⁹; a root beyond that (a float64 target near 10³⁰⁰ at r = 3) raises
:class:`~flowspec.errors.ConvergenceError` too.

**Config**: the MADE keys of :func:`flowspec.reference.autoregressive.parse_made` and
:data:`SOS_DEFAULTS`: ``degree`` (r, an int ≥ 0; r = 0 makes the map affine, z = c + (Σ a_k0² + ε²)x)
and ``squares`` (K, an int ≥ 1). **Layout**: k = 1 + K(r + 1) + 1 conditioner outputs per dimension,
``[c | a_{1,0} … a_{1,r} | … | a_{K,0} … a_{K,r} | raw ε]``; MADE output row j·D + d is parameter j of
dimension d (parameters ``net.{2i}.weight``/``.bias`` as :mod:`flowspec.reference.autoregressive`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import autograd.numpy as anp
import numpy as np
from autograd.extend import defvjp, primitive
from autograd.tracer import getval

from flowspec.errors import ConfigError
from flowspec.registry import Kind, register
from flowspec.spec import FlowSpec

from . import autoregressive
from .solve import DEFAULT_SCALAR_RTOL, expand_bracket, safeguarded_newton

FAMILY = "sos"
SOS_DEFAULTS: dict[str, Any] = {"degree": 2, "squares": 2}
EPS_FLOOR = 1e-3
_WHAT = "a sum-of-squares polynomial flow"


@dataclass(frozen=True)
class SosConfig:
    """The validated ``degree`` (r) and ``squares`` (K) of a config."""

    degree: int
    squares: int

    @property
    def outputs_per_dim(self) -> int:
        """k = 1 + K(r + 1) + 1: c, the K(r + 1) coefficients a_{kl}, raw ε."""
        return 2 + self.squares * (self.degree + 1)


def _int_key(config: Mapping[str, Any], key: str, low: int) -> int:
    value = config.get(key, SOS_DEFAULTS[key])
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"config[{key!r}] of {_WHAT} must be an int ≥ {low}, got {value!r}")
    return int(value)


def parse_sos(config: Mapping[str, Any]) -> SosConfig:
    """``degree`` (int ≥ 0) and ``squares`` (int ≥ 1) with defaults; raises :class:`ConfigError`."""
    return SosConfig(degree=_int_key(config, "degree", 0), squares=_int_key(config, "squares", 1))


def parse_config(config: Mapping[str, Any]) -> tuple[autoregressive.MadeConfig, SosConfig]:
    """The MADE keys and the SOS keys of a ``sos`` config."""
    return autoregressive.parse_made(config, tuple(SOS_DEFAULTS), _WHAT), parse_sos(config)


# ----------------------------------------------------------------------------- the 1-D law

def split_parameters(h: Any, degree: int, squares: int) -> tuple[Any, Any, Any]:
    """(c, a, ε²) from per-entry raw parameters ``h`` (…, k): c (…), a (…, K, r + 1), ε² (…)."""
    a = anp.reshape(h[..., 1:-1], anp.shape(h)[:-1] + (squares, degree + 1))
    return h[..., 0], a, anp.logaddexp(0.0, h[..., -1]) + EPS_FLOOR


def integrand_coefficients(a: Any, eps2: Any) -> Any:
    """q_0 … q_{2r} (…, 2r + 1) of p = Σ_k s_k² + ε²: the self-convolution of each s_k's coefficients,
    summed over the squares, ε² added to q_0."""
    r = anp.shape(a)[-1] - 1
    q = []
    for m in range(2 * r + 1):
        terms = [a[..., i] * a[..., m - i] for i in range(max(0, m - r), min(m, r) + 1)]
        q.append(anp.sum(sum(terms[1:], terms[0]), axis=-1) + (eps2 if m == 0 else 0.0))
    return anp.stack(q, axis=-1)


def horner(coefficients: Any, x: Any) -> Any:
    """Σ_m coefficients[…, m]·x^m by Horner's rule (coefficients from the constant term up)."""
    out = coefficients[..., -1]
    for m in range(anp.shape(coefficients)[-1] - 2, -1, -1):
        out = out * x + coefficients[..., m]
    return out


def closed_form(x: Any, a: Any, eps2: Any) -> Any:
    """∫₀ˣ p = Σ_m q_m x^{m+1}/(m + 1), by Horner."""
    q = integrand_coefficients(a, eps2)
    return x * horner(q / np.arange(1, anp.shape(q)[-1] + 1), x)


def integrand(x: Any, a: Any, eps2: Any) -> Any:
    """p(x) = Σ_k s_k(x)² + ε² from the squares' values (never negative, no cancellation)."""
    return anp.sum(horner(a, x[..., None]) ** 2, axis=-1) + eps2


@primitive
def integral(x: Any, a: Any, eps2: Any) -> Any:
    """∫₀ˣ p(t) dt in closed form, as an autograd primitive whose derivatives are written out:
    ∂/∂x = p(x) from the squares (the derivative of the expanded polynomial would cancel near a
    shared root, costing the generic log-det κ = Σ_m |q_m||x|^m / p(x) digits), ∂/∂a_kl =
    2 Σ_i a_ki x^{i+l+1}/(i + l + 1) and ∂/∂ε² = x; each is itself differentiable. x, a and ε² share
    their leading shape."""
    return closed_form(x, a, eps2)


def _grad_a(x: Any, a: Any) -> Any:
    """∂/∂a_kl of ∫₀ˣ Σ_k s_k² = 2 Σ_i a_ki x^{i+l+1}/(i + l + 1), shape of a."""
    n = anp.shape(a)[-1]
    exponents = np.arange(n)[:, None] + np.arange(n)[None, :] + 1.0
    moments = x[..., None, None] ** exponents / exponents
    return 2.0 * anp.matmul(a, moments)


defvjp(integral,
       lambda ans, x, a, eps2: lambda g: g * integrand(x, a, eps2),
       lambda ans, x, a, eps2: lambda g: g[..., None, None] * _grad_a(x, a),
       lambda ans, x, a, eps2: lambda g: g * x)


def sos_value(x: Any, c: Any, a: Any, eps2: Any) -> Any:
    """z = c + Σ_m q_m x^{m+1}/(m + 1), the closed-form integral (module docstring), by Horner."""
    return c + integral(x, a, eps2)


def sos_log_integrand(x: Any, a: Any, eps2: Any) -> Any:
    """log p(x) = log(Σ_k s_k(x)² + ε²) from the squares' values, scaled by their largest magnitude."""
    s = horner(a, x[..., None])
    m = np.maximum(np.max(np.abs(getval(s)), axis=-1), np.sqrt(getval(eps2)))
    return 2.0 * anp.log(m) + anp.log(anp.sum((s / m[..., None]) ** 2, axis=-1) + eps2 / m ** 2)


def sos_inverse(z: Any, c: Any, a: Any, eps2: Any, *, rtol: float = DEFAULT_SCALAR_RTOL) -> np.ndarray:
    """x with sos_value(x) = z elementwise, in float64 (plain NumPy): :func:`expand_bracket` from
    [−1, 1], then :func:`safeguarded_newton` (floor 1: tolerance relative to |x| + 1)."""
    z, c, a, eps2 = (np.asarray(getval(v), np.float64) for v in (z, c, a, eps2))
    lo, hi = expand_bracket(lambda v: sos_value(v, c, a, eps2), z, -np.ones_like(z), np.ones_like(z),
                            what="the SOS inverse's bracket")
    return safeguarded_newton(lambda v: (sos_value(v, c, a, eps2), sos_log_integrand(v, a, eps2)), z, lo, hi,
                              np.ones_like(z), rtol=rtol, what="the SOS inverse")


# ----------------------------------------------------------------------------- the kind

def _made(spec: FlowSpec, context: Any) -> tuple[Any, SosConfig, autoregressive.MadeConfig]:
    cfg, sos = parse_config(spec.config)
    masks = cfg.masks(sos.outputs_per_dim)
    return (lambda v: autoregressive.made_net(spec.params, masks, cfg.activation, v, context)), sos, cfg


def forward(spec: FlowSpec, x: Any, context: Any = None) -> Any:
    """z_d = c_d + ∫₀^{x_d} p_d(t) dt with θ_d(x_<d) from the MADE, one pass (module docstring)."""
    net, sos, _ = _made(spec, context)
    return sos_value(x, *split_parameters(anp.transpose(net(x)), sos.degree, sos.squares))


def inverse(spec: FlowSpec, z: Any, context: Any = None) -> Any:
    """x by D sequential passes in the order, each solving one entry's 1-D law (:func:`sos_inverse`)."""
    net, sos, cfg = _made(spec, context)

    def invert(z_d: Any, h_d: Any) -> np.ndarray:
        return sos_inverse(np.atleast_1d(z_d), *split_parameters(np.atleast_2d(h_d), sos.degree, sos.squares))[0]
    return autoregressive.autoregressive_inverse(net, invert, np.asarray(z, np.float64), cfg.order)


def entry_laws(spec: FlowSpec, x: Any, context: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 1-D laws of one sample ``x`` (registry extra ``sos_law``): (c, a, ε²) of every dimension,
    shapes (D,), (D, K, r + 1), (D,), from the conditioner at x (they do not depend on x's own entries)."""
    net, sos, _ = _made(spec, context)
    law = split_parameters(np.transpose(net(np.asarray(x, np.float64))), sos.degree, sos.squares)
    return tuple(np.asarray(v, np.float64) for v in law)  # type: ignore[return-value]


def init_params(config: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The MADE's generic weights (:func:`flowspec.reference.autoregressive.init_made_params`)."""
    cfg, sos = parse_config(config)
    return autoregressive.init_made_params(cfg.layer_sizes(sos.outputs_per_dim), rng)


register(Kind(
    name="sos", family=FAMILY, forward=forward, inverse=inverse,
    init_params=init_params, **autoregressive.made_law_fields(parse_config),
    extras={**autoregressive.made_extras(lambda config: parse_config(config)[0]), "sos_law": entry_laws},
    summary="SOS: z_d = c + ∫₀^{x_d} Σ_k (Σ_l a_kl t^l)² + ε² dt, MADE conditioner (2 + K(r + 1) outputs per dimension)",
))
