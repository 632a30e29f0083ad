"""Monotone rational-quadratic splines (Durkan et al. 2019, "Neural Spline Flows", Sec. 3.1).

The kernel :func:`rational_quadratic` maps each entry through a monotone rational-quadratic spline
of K bins on [−B, B], the identity outside it (linear tails). Its parameters for one entry are
``raw`` of length 3K − 1, laid out ``[K width logits | K height logits | K − 1 interior derivative
pre-activations]``:

* bin widths  w_k = min_width  + (1 − K·min_width)·softmax(width logits)_k,   Σ w_k = 1, and
  bin heights h_k = min_height + (1 − K·min_height)·softmax(height logits)_k; the knots are
  x⁽ᵏ⁾ = −B + 2B·Σ_{j<k} w_j (and y⁽ᵏ⁾ likewise), with x⁽⁰⁾ = −B and x⁽ᴷ⁾ = B exactly;
* derivatives at the knots δ⁽ᵏ⁾ = min_derivative + softplus(raw) for the K − 1 interior knots and
  δ⁽⁰⁾ = δ⁽ᴷ⁾ = 1 at ±B, so the spline meets the identity tails with value and slope;
* forward (eq. 4): in bin k with s_k = (y⁽ᵏ⁺¹⁾ − y⁽ᵏ⁾)/(x⁽ᵏ⁺¹⁾ − x⁽ᵏ⁾) and ξ = (x − x⁽ᵏ⁾)/(x⁽ᵏ⁺¹⁾ − x⁽ᵏ⁾),
  y = y⁽ᵏ⁾ + (y⁽ᵏ⁺¹⁾ − y⁽ᵏ⁾)·[s_k ξ² + δ⁽ᵏ⁾ ξ(1 − ξ)] / [s_k + (δ⁽ᵏ⁺¹⁾ + δ⁽ᵏ⁾ − 2s_k) ξ(1 − ξ)];
* derivative (eq. 5): dy/dx = s_k²·[δ⁽ᵏ⁺¹⁾ξ² + 2s_k ξ(1 − ξ) + δ⁽ᵏ⁾(1 − ξ)²] / [denominator]²;
* inverse (eqs. 6-8): the bin is found on the output knots y⁽ᵏ⁾, then ξ is the root in [0, 1] of
  aξ² + bξ + c = 0 with a = (y⁽ᵏ⁺¹⁾ − y⁽ᵏ⁾)(s_k − δ⁽ᵏ⁾) + (y − y⁽ᵏ⁾)(δ⁽ᵏ⁺¹⁾ + δ⁽ᵏ⁾ − 2s_k),
  b = (y⁽ᵏ⁺¹⁾ − y⁽ᵏ⁾)δ⁽ᵏ⁾ − (y − y⁽ᵏ⁾)(δ⁽ᵏ⁺¹⁾ + δ⁽ᵏ⁾ − 2s_k), c = −s_k(y − y⁽ᵏ⁾), taken in the
  stable form ξ = 2c / (−b − √(b² − 4ac)) (the discriminant clamped at 0; a may vanish).

Bins are half-open, [x⁽ᵏ⁾, x⁽ᵏ⁺¹⁾), except the last, which includes B: an input on an interior knot
belongs to the bin it starts. Every slope is positive: the bin slopes s_k ≥ min_height (heights
and widths are fractions of 2B, each width ≤ 1) and the knot derivatives ≥ min(min_derivative, 1),
and inside a bin dy/dx ≥ s_k²·min(δ⁽ᵏ⁾, δ⁽ᵏ⁺¹⁾, s_k)/max(δ⁽ᵏ⁾, δ⁽ᵏ⁺¹⁾, s_k)² (eq. 5: the numerator
is a convex combination of δ⁽ᵏ⁾, s_k, δ⁽ᵏ⁺¹⁾ and so is the denominator's base).

The kind ``spline`` applies the kernel elementwise to an event of any ``shape`` with its own
parameter ``raw`` of shape ``shape + [3K − 1]``. The coupling (NSF-C) and autoregressive (NSF-AR)
kinds live in this module too: see :data:`COUPLING_DEFAULTS` and :data:`AUTOREGRESSIVE_DEFAULTS`.

Config keys of every spline kind (:data:`SPLINE_DEFAULTS`): ``bins`` (K ≥ 1, default 8), ``bound``
(B > 0, default 3.0), ``min_width``, ``min_height``, ``min_derivative`` (each > 0, default 1e-3;
K·min_width < 1 and K·min_height < 1).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

import autograd.numpy as anp
import numpy as np
from autograd.tracer import getval

from flowspec.errors import ConfigError
from flowspec.registry import Kind, positive_number, register
from flowspec.spec import FlowSpec

from . import autoregressive, coupling
from .elementwise import shape_of

FAMILY = "spline"
SPLINE_DEFAULTS: dict[str, Any] = {
    "bins": 8, "bound": 3.0, "min_width": 1e-3, "min_height": 1e-3, "min_derivative": 1e-3,
}


@dataclass(frozen=True)
class SplineConfig:
    """The validated spline keys of a config (module docstring)."""

    bins: int
    bound: float
    min_width: float
    min_height: float
    min_derivative: float

    @property
    def params_per_entry(self) -> int:
        """3K − 1 raw parameters per transformed entry."""
        return 3 * self.bins - 1

    def kernel_args(self) -> dict[str, float]:
        """The keyword arguments of :func:`rational_quadratic`."""
        return {"bound": self.bound, "min_width": self.min_width, "min_height": self.min_height,
                "min_derivative": self.min_derivative}


def parse_spline(config: Mapping[str, Any]) -> SplineConfig:
    """The spline keys of ``config`` with :data:`SPLINE_DEFAULTS` filled in, validated; other keys
    are the caller's to check. Raises :class:`ConfigError` naming the key, expected and actual value."""
    full = {**SPLINE_DEFAULTS, **{k: v for k, v in config.items() if k in SPLINE_DEFAULTS}}
    bins = full["bins"]
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ConfigError(f"config['bins'] of a spline must be an int ≥ 1, got {bins!r}")
    values = {key: positive_number(full, key, "a spline") for key in ("bound", "min_width", "min_height", "min_derivative")}
    for key in ("min_width", "min_height"):
        if bins * values[key] >= 1.0:
            raise ConfigError(
                f"config[{key!r}] of a spline must satisfy bins·{key} < 1, got {values[key]!r} with bins={bins}"
            )
    return SplineConfig(bins=bins, **values)


# ----------------------------------------------------------------------------- the kernel

def _softmax(logits: Any) -> Any:
    shifted = logits - anp.max(logits, axis=-1, keepdims=True)
    e = anp.exp(shifted)
    return e / anp.sum(e, axis=-1, keepdims=True)


def _softplus(a: Any) -> Any:
    return anp.logaddexp(0.0, a)


def bin_sizes(logits: Any, minimum: float) -> Any:
    """Fractions of the interval per bin: minimum + (1 − K·minimum)·softmax(logits), summing to 1."""
    k = anp.shape(logits)[-1]
    return minimum + (1.0 - k * minimum) * _softmax(logits)


def knots(sizes: Any, bound: float) -> Any:
    """The K + 1 knots −B = t⁽⁰⁾ < … < t⁽ᴷ⁾ = B of bins with fractions ``sizes`` (ends set exactly)."""
    edge = anp.ones(anp.shape(sizes)[:-1] + (1,))
    inner = -bound + 2.0 * bound * anp.cumsum(sizes, axis=-1)[..., :-1]
    return anp.concatenate([-bound * edge, inner, bound * edge], axis=-1)


def derivatives(raw: Any, min_derivative: float) -> Any:
    """δ⁽⁰⁾ … δ⁽ᴷ⁾: 1 at ±B (the identity tails' slope), min_derivative + softplus(raw) inside."""
    edge = anp.ones(anp.shape(raw)[:-1] + (1,))
    return anp.concatenate([edge, min_derivative + _softplus(raw), edge], axis=-1)


def spline_knots(raw: Any, *, bound: float, min_width: float, min_height: float,
                 min_derivative: float) -> tuple[Any, Any, Any]:
    """(x knots, y knots, derivatives at the knots), each of shape ``raw.shape[:-1] + (K + 1,)``."""
    k = (anp.shape(raw)[-1] + 1) // 3
    xs = knots(bin_sizes(raw[..., :k], min_width), bound)
    ys = knots(bin_sizes(raw[..., k:2 * k], min_height), bound)
    return xs, ys, derivatives(raw[..., 2 * k:], min_derivative)


def _bin_of(values: Any, edges: Any) -> Any:
    """One-hot (…, K) of the bin [t⁽ᵏ⁾, t⁽ᵏ⁺¹⁾) holding each value, the last bin closed at B:
    the number of interior knots ≤ value (a plain array: the choice of bin carries no gradient)."""
    count = np.sum(np.asarray(getval(values))[..., None] >= np.asarray(getval(edges))[..., 1:-1], axis=-1)
    k = np.shape(edges)[-1] - 1
    return (np.arange(k) == count[..., None]).astype(np.float64)


def _pick(onehot: np.ndarray, table: Any) -> Any:
    return anp.sum(onehot * table, axis=-1)


def _log_slope(xi: Any, s: Any, d0: Any, d1: Any) -> Any:
    """log dy/dx in a bin (Durkan eq. 5)."""
    t = xi * (1.0 - xi)
    numerator = d1 * xi ** 2 + 2.0 * s * t + d0 * (1.0 - xi) ** 2
    return 2.0 * anp.log(s) + anp.log(numerator) - 2.0 * anp.log(s + (d1 + d0 - 2.0 * s) * t)


def rational_quadratic(x: Any, raw: Any, *, bound: float, min_width: float, min_height: float,
                       min_derivative: float, inverse: bool = False) -> tuple[Any, Any]:
    """(y, log dy/dx) of the spline at ``x`` elementwise; ``raw`` has shape ``x.shape + (3K − 1,)``.

    With ``inverse=True`` it solves the spline for ``x`` (the input is then the output y) and
    returns (x, log dx/dy), the negative of the forward's log-derivative at the solved point.
    Identity outside [−B, B] (log-derivative 0). Differentiable by autograd in x and raw.
    """
    xs, ys, ds = spline_knots(raw, bound=bound, min_width=min_width, min_height=min_height,
                              min_derivative=min_derivative)
    inside = (x >= -bound) & (x <= bound)
    v = anp.where(inside, x, 0.0)  # a safe point outside (not clip: its derivative vanishes at ±B)
    onehot = _bin_of(v, ys if inverse else xs)
    x0, x1 = _pick(onehot, xs[..., :-1]), _pick(onehot, xs[..., 1:])
    y0, y1 = _pick(onehot, ys[..., :-1]), _pick(onehot, ys[..., 1:])
    d0, d1 = _pick(onehot, ds[..., :-1]), _pick(onehot, ds[..., 1:])
    s = (y1 - y0) / (x1 - x0)
    if inverse:
        dy, curve = v - y0, d1 + d0 - 2.0 * s
        a = (y1 - y0) * (s - d0) + dy * curve
        b = (y1 - y0) * d0 - dy * curve
        c = -s * dy
        xi = 2.0 * c / (-b - anp.sqrt(anp.maximum(b ** 2 - 4.0 * a * c, 0.0)))
        out, log_d = x0 + xi * (x1 - x0), -_log_slope(xi, s, d0, d1)
    else:
        xi = (v - x0) / (x1 - x0)
        t = xi * (1.0 - xi)
        out = y0 + (y1 - y0) * (s * xi ** 2 + d0 * t) / (s + (d1 + d0 - 2.0 * s) * t)
        log_d = _log_slope(xi, s, d0, d1)
    return anp.where(inside, out, x), anp.where(inside, log_d, 0.0)


def _check_keys(config: Mapping[str, Any], known: tuple[str, ...], what: str) -> None:
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise ConfigError(f"unknown config keys {unknown} for {what}; known: {list(known)}")


# ----------------------------------------------------------------------------- spline (elementwise)

ELEMENTWISE_KEYS = ("shape", *SPLINE_DEFAULTS)


def parse_elementwise(config: Mapping[str, Any]) -> tuple[tuple[int, ...], SplineConfig]:
    """(shape, spline keys) of a ``spline`` config; raises :class:`ConfigError`."""
    _check_keys(config, ELEMENTWISE_KEYS, "a spline")
    return shape_of(config), parse_spline(config)


def elementwise_forward(spec: FlowSpec, x: Any, context: Any = None, inverse: bool = False) -> Any:
    """z = spline(x) entry by entry, with entry i's own parameters ``raw[i]`` (3K − 1 of them)."""
    _, spl = parse_elementwise(spec.config)
    return rational_quadratic(x, spec.params["raw"], inverse=inverse, **spl.kernel_args())[0]


def elementwise_init(config: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``raw`` ~ N(0, 1) of shape ``shape + (3K − 1,)``."""
    shape, spl = parse_elementwise(config)
    return {"raw": rng.normal(0.0, 1.0, shape + (spl.params_per_entry,))}


register(Kind(
    name="spline", family=FAMILY,
    forward=elementwise_forward,
    inverse=lambda spec, z, context=None: elementwise_forward(spec, z, context, inverse=True),
    event_shape=lambda config: parse_elementwise(config)[0],
    init_params=elementwise_init, check_config=parse_elementwise,
    summary="rational-quadratic spline per entry on [−B, B] (K bins), identity tails (NSF eq. 4)",
))


# ----------------------------------------------------------------------------- spline_coupling (NSF-C)

COUPLING_DEFAULTS: dict[str, Any] = {**coupling.DEFAULTS, **SPLINE_DEFAULTS}


def parse_coupling(config: Mapping[str, Any]) -> tuple[coupling.CouplingConfig, SplineConfig]:
    """The coupling keys (as :func:`flowspec.reference.coupling.parse_config`, with k = 3K − 1
    conditioner outputs per transformed entry) and the spline keys."""
    _check_keys(config, ("shape", *COUPLING_DEFAULTS), "a spline coupling layer")
    spl = parse_spline(config)
    base = coupling.parse_config({k: v for k, v in config.items() if k not in SPLINE_DEFAULTS}, affine=False)
    return replace(base, law_outputs=spl.params_per_entry), spl


def per_entry(h: Any, k: int) -> Any:
    """The conditioner's output in k blocks (first axis: k·n_t values, or k·C channels) as the raw
    spline parameters per transformed entry, shape ``h.shape[1:]``-ish + (k,): block j is parameter j."""
    blocks = anp.reshape(h, (k, anp.shape(h)[0] // k) + tuple(anp.shape(h)[1:]))
    return anp.moveaxis(blocks, 0, -1)


def coupling_law(spl: SplineConfig, inverse: bool) -> coupling.Law:
    """The spline as a coupling law: values ← spline(values; raw from the conditioner)."""
    def law(values: Any, h: Any, cfg: coupling.CouplingConfig) -> Any:
        return rational_quadratic(values, per_entry(h, cfg.outputs_per_entry), inverse=inverse,
                                  **spl.kernel_args())[0]
    return law


# NSF-C (Durkan et al. Sec. 3.2): z_t = spline(x_t; θ(b⊙x)), z_u = x_u.
coupling.register_coupling_kind(
    "spline_coupling", FAMILY, parse_coupling, coupling_law,
    "NSF-C: a coupling layer whose law is the rational-quadratic spline (3K − 1 outputs per entry)")


# ----------------------------------------------------------------------------- spline_autoregressive (NSF-AR)

def parse_autoregressive(config: Mapping[str, Any]) -> tuple[autoregressive.MadeConfig, SplineConfig]:
    """The MADE keys (:func:`flowspec.reference.autoregressive.parse_made`) and the spline keys."""
    cfg = autoregressive.parse_made(config, tuple(SPLINE_DEFAULTS), "a spline autoregressive flow")
    return cfg, parse_spline(config)


def _made(spec: FlowSpec, context: Any) -> tuple[Any, SplineConfig, autoregressive.MadeConfig]:
    cfg, spl = parse_autoregressive(spec.config)
    masks = cfg.masks(spl.params_per_entry)
    return (lambda v: autoregressive.made_net(spec.params, masks, cfg.activation, v, context)), spl, cfg


def autoregressive_forward(spec: FlowSpec, x: Any, context: Any = None) -> Any:
    """NSF-AR (Durkan et al. Sec. 3.2): z_d = spline(x_d; θ_d(x_<d)), θ from a MADE with k = 3K − 1
    outputs per dimension (row j·D + d is parameter j of dimension d), in one pass."""
    net, spl, _ = _made(spec, context)
    return rational_quadratic(x, anp.transpose(net(x)), **spl.kernel_args())[0]


def autoregressive_inverse(spec: FlowSpec, z: Any, context: Any = None) -> Any:
    """x by D sequential passes in the order, each inverting one entry's spline."""
    net, spl, cfg = _made(spec, context)
    return autoregressive.autoregressive_inverse(
        net, lambda z_d, h_d: rational_quadratic(z_d, h_d, inverse=True, **spl.kernel_args())[0], z, cfg.order)


def _autoregressive_init(config: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    cfg, spl = parse_autoregressive(config)
    return autoregressive.init_made_params(cfg.layer_sizes(spl.params_per_entry), rng)


def _autoregressive_extras() -> dict[str, Any]:
    """maf's ``order`` and ``forbidden`` (:func:`flowspec.reference.autoregressive.made_extras`);
    ``required`` only the diagonal (None): where x_d lies in a tail, z_d = x_d whatever θ_d(x_<d),
    so no off-diagonal entry is promised to be non-zero at every input."""
    extras = dict(autoregressive.made_extras(lambda config: parse_autoregressive(config)[0]))
    extras["required"] = lambda config: None
    return extras


register(Kind(
    name="spline_autoregressive", family=FAMILY,
    forward=autoregressive_forward, inverse=autoregressive_inverse,
    init_params=_autoregressive_init, **autoregressive.made_law_fields(parse_autoregressive),
    extras=_autoregressive_extras(),
    summary="NSF-AR: z_d = spline(x_d; θ_d(x_<d)) with a MADE conditioner (3K − 1 outputs per dimension)",
))
