"""Flow++ variational dequantization (Ho et al. 2019, Sec. 3.1, eqs. 7–12): the kind ``dequantizer``.

Discrete data ``k ∈ {0, …, n_bins − 1}^D`` are dequantised as ``x = (k + u)/n_bins`` (the existing
units of :mod:`flowspec.accelerated.training`), with ``u ∈ (0, 1)^D`` drawn from a learned noise
distribution ``q(u | k)`` instead of the uniform one. ``q`` is a conditional flow whose forward maps
``u`` to ``ε`` (the normalizing direction, as every kind's)::

    y₀ = logit(u)                          (the ``logit`` kind with α = 0: (0, 1)^D onto the reals)
    y₁ = y₀ ⊙ exp(s(c)) + t(c)             (the context affine: s = scale_factor·tanh(s_raw),
                                            (s_raw, t) = net(c), the affine coupling's law)
    ε  = g_L(… g_1(y₁; c) …; c)            (conditional couplings, each reading the context c)

so that ``log q(u | k) = log N(f(u); 0, I) + log|det ∂f/∂u|`` — eq. 12's
``q(u|x) = p(q_x⁻¹(u))·|∂q_x⁻¹/∂u|`` with ``q_x = f⁻¹`` — and a sample is ``u = f⁻¹(ε; c)`` with
``ε ~ N(0, I)`` (the existing conditional sampling, :func:`flowspec.reference.sample` with the
context). The first affine layer makes q depend on k for every D (a coupling needs D ≥ 2).

**Context.** ``c = features(k, n_bins) = (2k + 1)/n_bins − 1``: the centre of k's cell in data units,
(k + ½)/n_bins, mapped affinely onto (−1, 1), of the event's shape. No learned feature net: the
conditioners are themselves learned functions of c. Vector data feed c to dense conditioners (the
couplings' ``context_dim`` = D), images to convolutional ones (``context_channels`` = C, the context
an image of the data's own size, concatenated to ``b⊙y`` on the channel axis).

**Objective** (eqs. 9–12) in data units: ``log q(x | k) = log q(u | k) + D·log n_bins`` and, for a
model density ``p`` of data in (0, 1)^D,

    log P(k) = log ∫_{cell k} p(x) dx  ≥  E_{u ~ q(·|k)}[log p(x) − log q(x | k)],

with the gap ``KL(q(·|k) ‖ p̃/P(k))``, ``p̃(u) = p((k + u)/n_bins)/n_bins^D`` (after eq. 12);
bits per dimension are minus the bound over D·log 2. Uniform dequantisation is the bound with
``log q(x | k) = D·log n_bins`` (eqs. 4–6). The per-sample term for a given ε is
:func:`bound_terms`; :func:`log_marginal`, :func:`bound_moments` and :func:`posterior_kl` compute
log P(k) (Gauss–Legendre in u), the bound's mean and variance under q (Gauss–Hermite in ε, through
the inverse) and the gap (tanh-sinh in u, through the forward density) by tensor-product rules,
for the tiny problems (D = 1 or 2) on which the conformance suite checks the bound.

Config (every key but ``shape`` has a default, :data:`DEFAULTS`): ``shape`` (``[D]`` or
``[C, H, W]``), ``couplings`` (the number L of coupling layers, ≥ 0; they need D ≥ 2), ``mask``
(their mask, parities alternating 0, 1, …), ``conditioner`` (``"mlp"``, any shape, or ``"conv"``,
images), ``hidden``, ``depth``, ``activation`` and ``scale_factor``, shared by the context net and
the couplings :func:`init_params` builds. Parameters: the context net's ``net.{2i}.weight`` and
``net.{2i}.bias`` (the coupling conditioners' layout: dense ``D → hidden → 2D`` or 3×3
convolutions ``C → hidden → 2C``; ``s_raw`` then ``t``) and the couplings as nested specs ``"0"``,
``"1"``, …: any conditional flow on the event shape whose context has D entries (the affine
couplings that :func:`init_params` draws, or other coupling kinds), which the forward uses as
given.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import autograd.numpy as anp
import numpy as np
from scipy.special import logsumexp

from flowspec import registry
from flowspec.errors import ConfigError, FlowInputError
from flowspec.registry import REAL, UNIT_INTERVAL, Kind, int_at_least, one_of, positive_number, register
from flowspec.spec import FlowSpec

from . import coupling
from .core import forward_one, init_spec, log_prob
from .elementwise import logit_forward, logit_inverse
from .solve import inverse, inverse_one

FAMILY = "dequantizer"
_WHAT = "a dequantizer"
CONDITIONERS = ("mlp", "conv")
DEFAULTS: dict[str, Any] = {
    "couplings": 2, "mask": "channel", "conditioner": "mlp", "hidden": 8, "depth": 1, "activation": "tanh",
    "scale_factor": 1.0,
}
Array = np.ndarray


@dataclass(frozen=True)
class DequantizerConfig:
    """A validated configuration; ``net`` describes the context net as a coupling conditioner whose
    input is the context alone (only its network fields and ``scale_factor`` are read)."""

    shape: tuple[int, ...]
    couplings: int
    mask: str
    net: coupling.CouplingConfig

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))




def _shape(value: Any, conditioner: str) -> tuple[int, ...]:
    shape = tuple(value) if isinstance(value, (list, tuple)) else ()
    if len(shape) not in (1, 3) or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
        raise ConfigError(f"config['shape'] of a dequantizer must be [D] or [C, H, W] of positive ints, got {value!r}")
    if conditioner == "conv" and len(shape) != 3:
        raise ConfigError(f"the conv conditioner of a dequantizer needs an image shape [C, H, W], got {list(shape)}")
    return shape


def parse_config(config: Mapping[str, Any]) -> DequantizerConfig:
    """Fill in :data:`DEFAULTS` and validate; raises :class:`ConfigError` naming the bad entry."""
    unknown = sorted(set(config) - set(DEFAULTS) - {"shape"})
    if unknown:
        raise ConfigError(f"unknown config keys {unknown} for a dequantizer; known: {['shape', *DEFAULTS]}")
    if "shape" not in config:
        raise ConfigError("a dequantizer needs config['shape'] ([D] or [C, H, W])")
    full = {**DEFAULTS, **config}
    conditioner = one_of(full, "conditioner", CONDITIONERS, _WHAT)
    scale = positive_number(full, "scale_factor", _WHAT)
    shape = _shape(full["shape"], conditioner)
    net = coupling.CouplingConfig(
        shape=shape, mask="channel", parity=0, conditioner=conditioner,
        hidden=int_at_least(full, "hidden", 1, _WHAT), depth=int_at_least(full, "depth", 1, _WHAT),
        activation=one_of(full, "activation", tuple(coupling.ACTIVATIONS), _WHAT), context_dim=0, scale_factor=scale,
    )
    cfg = DequantizerConfig(shape, int_at_least(full, "couplings", 0, _WHAT),
                            one_of(full, "mask", coupling.MASKS, _WHAT), net)
    for i in range(min(cfg.couplings, 2)):  # both parities split the event (D ≥ 2, the mask's halves)
        try:
            coupling.parse_config(child_config(cfg, i), affine=True)
        except ConfigError as exc:
            raise ConfigError(f"config['couplings'] = {cfg.couplings} with config['mask'] = {cfg.mask!r}: "
                              f"the couplings cannot split shape {list(shape)}: {exc}") from None
    return cfg


def child_config(cfg: DequantizerConfig, i: int) -> dict[str, Any]:
    """The config of coupling ``i`` that :func:`init_params` draws: an affine coupling with the
    dequantizer's mask and network, parity ``i mod 2``, reading the context (module docstring)."""
    net = cfg.net
    context = {"context_dim": cfg.size} if net.conditioner == "mlp" else {"context_channels": cfg.shape[0]}
    return {"shape": list(cfg.shape), "mask": cfg.mask, "parity": i % 2, "conditioner": net.conditioner,
            "hidden": net.hidden, "depth": net.depth, "activation": net.activation, **context,
            "scale_factor": net.scale_factor}


# ----------------------------------------------------------------------------- parameters

def init_context_net(cfg: DequantizerConfig, rng: np.random.Generator) -> dict[str, Array]:
    """The context net's params, drawn as the coupling conditioners' (weights N(0, 1/fan_in), biases
    N(0, 0.5²)): dense D → hidden (× depth) → 2D, or 3×3 convolutions C → hidden → 2C."""
    net = cfg.net
    n_in = cfg.shape[0] if net.conditioner == "conv" else cfg.size
    taps = coupling.KERNEL ** 2 if net.conditioner == "conv" else 1
    widths = [n_in] + [net.hidden] * net.depth + [2 * n_in]
    params = {}
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        shape = (b, a, coupling.KERNEL, coupling.KERNEL) if net.conditioner == "conv" else (b, a)
        params[f"net.{2 * i}.weight"] = rng.normal(0.0, 1.0 / np.sqrt(a * taps), shape)
        params[f"net.{2 * i}.bias"] = rng.normal(0.0, 0.5, b)
    return params


def init_params(config: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """The context net's params and ``couplings`` affine couplings of :func:`child_config`."""
    cfg = parse_config(config)
    params: dict[str, Any] = init_context_net(cfg, rng)
    for i in range(cfg.couplings):
        params[str(i)] = init_spec("affine_coupling", child_config(cfg, i), rng)
    return params


def children(spec: FlowSpec, cfg: DequantizerConfig) -> list[FlowSpec]:
    """The coupling specs ``"0"``, …, checked: ``couplings`` of them, each a flow on the event shape
    (latent of the same shape) whose context has D entries."""
    found = sorted(k for k, v in spec.params.items() if isinstance(v, FlowSpec))
    expected = [str(i) for i in range(cfg.couplings)]
    if set(found) != set(expected):
        raise ConfigError(f"a dequantizer with config['couplings'] = {cfg.couplings} nests the specs {expected}, "
                          f"got {found}")
    layers = [spec.params[name] for name in expected]
    for name, child in zip(expected, layers):
        kind = registry.get(child.kind)
        context = kind.context_of(child.config)
        if tuple(kind.event_shape(child.config)) != cfg.shape or kind.output_shape(child.config) != cfg.shape:
            raise ConfigError(f"coupling {name} ({child.kind}) of a dequantizer must map shape {list(cfg.shape)} "
                              f"to itself")
        if context is None or int(np.prod(context)) != cfg.size:
            raise ConfigError(f"coupling {name} ({child.kind}) of a dequantizer must read a context of "
                              f"{cfg.size} entries (the features of k), its context shape is {context}")
    return layers


# ----------------------------------------------------------------------------- the map

def _logit(shape: tuple[int, ...]) -> FlowSpec:
    return FlowSpec("logit", {"shape": list(shape), "alpha": 0.0})


def context_affine(spec: FlowSpec, cfg: DequantizerConfig, y: Any, context: Any, inverse_map: bool) -> Any:
    """y ⊙ exp(s(c)) + t(c) (or its inverse): the affine coupling's law with (s_raw, t) from the
    context net on the context alone (flat for mlp, the image for conv)."""
    dense = cfg.net.conditioner == "mlp"
    h = coupling.conditioner(spec, cfg.net, anp.reshape(context, (-1,)) if dense else context)
    law = coupling.affine_inverse_law if inverse_map else coupling.affine_law
    return anp.reshape(law(anp.reshape(y, (-1,)) if dense else y, h, cfg.net), cfg.shape)


def _child_context(child: FlowSpec, context: Any) -> Any:
    return anp.reshape(context, registry.get(child.kind).context_of(child.config))


def dequantizer_forward(spec: FlowSpec, u: Any, context: Any = None) -> Any:
    """ε = f(u; c) for one sample (module docstring)."""
    cfg = parse_config(spec.config)
    y = context_affine(spec, cfg, logit_forward(_logit(cfg.shape), u), context, inverse_map=False)
    for child in children(spec, cfg):
        y = forward_one(child, y, _child_context(child, context))
    return y


def dequantizer_inverse(spec: FlowSpec, eps: Any, context: Any = None) -> Any:
    """u = f⁻¹(ε; c): the couplings' inverses last to first, the context affine's, then σ."""
    cfg = parse_config(spec.config)
    y = eps
    for child in reversed(children(spec, cfg)):
        y = inverse_one(child, y, _child_context(child, context))
    return logit_inverse(_logit(cfg.shape), context_affine(spec, cfg, y, context, inverse_map=True))


# ----------------------------------------------------------------------------- the objective

def check_discrete(k: Any, n_bins: Any, shape: tuple[int, ...] | None = None) -> Array:
    """``k`` as a float64 batch after checking that it is integer-valued in [0, n_bins) (and, with
    ``shape``, that one sample has that shape); ``n_bins`` must be an int ≥ 2."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 2:
        raise ConfigError(f"n_bins must be an int ≥ 2, got {n_bins!r}")
    arr = np.asarray(k)
    if arr.dtype.kind not in "fiu" or not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
        raise FlowInputError("discrete data k must be integer-valued")
    if np.any(arr < 0) or np.any(arr >= n_bins):
        raise FlowInputError(f"data k must lie in [0, {n_bins}), got values in [{arr.min()}, {arr.max()}]")
    if shape is not None and tuple(arr.shape[1:]) != tuple(shape):
        raise FlowInputError(f"data k must have shape (batch, {', '.join(map(str, shape))}), got {arr.shape}")
    return arr.astype(np.float64)


def features(k: Any, n_bins: int) -> Array:
    """The context of the dequantizer: (2k + 1)/n_bins − 1, k's cell centre mapped onto (−1, 1)."""
    return (2.0 * np.asarray(k, dtype=np.float64) + 1.0) / n_bins - 1.0


def bound_terms(spec: FlowSpec, model: FlowSpec, k: Any, eps: Any, n_bins: int) -> tuple[Array, Array, Array]:
    """For a batch of data ``k`` and noise ``ε``: ``(x, log p(x), log q(x | k))`` with u = f⁻¹(ε; c),
    x = (k + u)/n_bins and log q(x | k) = log N(f(u)) + log|det ∂f/∂u| + D·log n_bins; the
    per-sample bound (eq. 12) is ``log p(x) − log q(x | k)``."""
    shape = parse_config(spec.config).shape
    k = check_discrete(k, n_bins, shape)
    context = features(k, n_bins)
    u = inverse(spec, eps, context)
    x = (k + u) / n_bins
    log_q = log_prob(spec, u, context) + int(np.prod(shape)) * np.log(n_bins)
    return x, log_prob(model, x), log_q


# ----------------------------------------------------------------------------- quadrature

NEGLIGIBLE_WEIGHT = 1e-18  # Gauss–Hermite nodes with a smaller weight (relative to the largest) are dropped


def _tensor_rule(points: Array, weights: Array, shape: tuple[int, ...]) -> tuple[Array, Array]:
    """The product rule of a 1-D rule over ``prod(shape)`` axes: nodes ``(N, *shape)`` and weights."""
    d = int(np.prod(shape))
    grids = np.meshgrid(*([points] * d), indexing="ij")
    nodes = np.stack([g.ravel() for g in grids], axis=1).reshape((-1,) + tuple(shape))
    w = np.prod(np.stack(np.meshgrid(*([weights] * d), indexing="ij"), axis=0).reshape(d, -1), axis=0)
    return nodes, w


def legendre_rule(nodes: int, shape: tuple[int, ...]) -> tuple[Array, Array]:
    """Gauss–Legendre on the unit cube (0, 1)^D: ∫ g(u) du ≈ Σ w_i g(u_i)."""
    t, w = np.polynomial.legendre.leggauss(nodes)
    return _tensor_rule(0.5 * (t + 1.0), 0.5 * w, shape)


def hermite_rule(nodes: int, shape: tuple[int, ...]) -> tuple[Array, Array]:
    """Gauss–Hermite for ε ~ N(0, I): E g(ε) ≈ Σ w_i g(ε_i), nodes of negligible weight dropped."""
    t, w = np.polynomial.hermite_e.hermegauss(nodes)
    eps, weights = _tensor_rule(t, w / np.sqrt(2.0 * np.pi), shape)
    keep = weights > NEGLIGIBLE_WEIGHT * weights.max()
    return eps[keep], weights[keep] / weights[keep].sum()


TANH_SINH_REACH = 36.0  # the nodes' logits stay within ±36, where σ is still below 1 in float64


def tanh_sinh_rule(step: float, shape: tuple[int, ...]) -> tuple[Array, Array]:
    """The tanh-sinh (double exponential) rule on (0, 1)^D: u = σ(π·sinh t) on the grid t = j·step,
    weights step·π·cosh t·σ′(π·sinh t), truncated where |π·sinh t| > 36 (weights below 1e-14).
    Integrands that vanish at the boundary like q(u | k) does, faster than any power, defeat Gauss–Legendre
    (its error falls slowly there) but not this rule, whose error falls like exp(−c/step)."""
    t = step * np.arange(-np.ceil(np.arcsinh(TANH_SINH_REACH / np.pi) / step),
                         np.ceil(np.arcsinh(TANH_SINH_REACH / np.pi) / step) + 1)
    z = np.pi * np.sinh(t)
    keep = np.abs(z) <= TANH_SINH_REACH
    z, t = z[keep], t[keep]
    sigma = 1.0 / (1.0 + np.exp(-z))
    return _tensor_rule(sigma, step * np.pi * np.cosh(t) * sigma * (1.0 - sigma), shape)


def _model_log_density(model: FlowSpec, k: Array, u: Array, n_bins: int) -> Array:
    """log p̃(u) = log p((k + u)/n_bins) − D·log n_bins, the model's density of u on k's cell."""
    return log_prob(model, (k + u) / n_bins) - k.size * np.log(n_bins)


def log_marginal(model: FlowSpec, k: Any, n_bins: int, nodes: int) -> float:
    """log P(k) = log ∫_{(0,1)^D} p̃(u) du for one sample ``k`` (event shape), Gauss–Legendre with
    ``nodes`` per axis."""
    k = check_discrete(np.asarray(k)[None], n_bins)[0]
    u, w = legendre_rule(nodes, k.shape)
    return float(logsumexp(np.log(w) + _model_log_density(model, k, u, n_bins)))


@dataclass(frozen=True)
class BoundMoments:
    """Moments under u ~ q(·|k) of the bound B = log p̃(u) − log q(u | k) = log p(x) − log q(x | k),
    and the mean of log q(u | k) (the bias of a bound with the sign of log q flipped is twice it)."""

    mean: float
    variance: float
    mean_log_q: float


def bound_moments(spec: FlowSpec, model: FlowSpec, k: Any, n_bins: int, nodes: int) -> BoundMoments:
    """:class:`BoundMoments` by Gauss–Hermite in ε (``nodes`` per axis), u = f⁻¹(ε; c)."""
    k = check_discrete(np.asarray(k)[None], n_bins)[0]
    eps, w = hermite_rule(nodes, k.shape)
    context = np.repeat(features(k, n_bins)[None], len(eps), axis=0)
    u = inverse(spec, eps, context)
    log_q = log_prob(spec, u, context)
    bound = _model_log_density(model, k, u, n_bins) - log_q
    mean = float(w @ bound)
    return BoundMoments(mean, float(w @ (bound - mean) ** 2), float(w @ log_q))


def posterior_kl(spec: FlowSpec, model: FlowSpec, k: Any, n_bins: int, step: float) -> float:
    """KL(q(·|k) ‖ p̃/P(k)) = ∫ q(u)·[log q(u | k) − log p̃(u) + log P(k)] du over u itself, with q
    from the forward density and log P(k) on the same nodes: the tanh-sinh rule of ``step``
    (:func:`tanh_sinh_rule`). Independent of :func:`bound_moments` (sampling direction, ε-space) and
    of :func:`log_marginal` (Gauss–Legendre), so that log P(k) − E_q[bound] = KL checks all three."""
    k = check_discrete(np.asarray(k)[None], n_bins)[0]
    u, w = tanh_sinh_rule(step, k.shape)
    log_q = log_prob(spec, u, np.repeat(features(k, n_bins)[None], len(u), axis=0))
    log_pt = _model_log_density(model, k, u, n_bins)
    log_p = logsumexp(np.log(w) + log_pt)
    return float(np.sum(w * np.exp(log_q) * (log_q - log_pt + log_p)))


register(Kind(
    name="dequantizer", family=FAMILY, forward=dequantizer_forward, inverse=dequantizer_inverse,
    event_shape=lambda config: parse_config(config).shape, init_params=init_params,
    domain=UNIT_INTERVAL, codomain=REAL, context_shape=lambda config: parse_config(config).shape,
    check_config=parse_config, extras={"variational_bound": bound_terms}, defaults=DEFAULTS,
    summary="Flow++ variational dequantizer q(u|k): u ∈ (0,1)^D → logit → context affine → conditional "
            "couplings → ε; context (2k + 1)/n_bins − 1",
))
