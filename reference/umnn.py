"""Unconstrained monotonic neural networks (Wehenkel & Louppe 2019, "Unconstrained Monotonic Neural
Networks", Sec. 3: a monotone map as the integral of a positive network; Sec. 3.2: Clenshaw–Curtis
quadrature). The paper is not in ``../shared/papers``; section numbers refer to the NeurIPS 2019 version.

Kind ``umnn`` (autoregressive, one pass forward, D sequential passes inverse)::

    z_d = β_d + ∫₀^{x_d} g(t; h_d) dt,        log|det ∂z/∂x| = Σ_d log g(x_d; h_d)  (exact)

* a MADE (:mod:`flowspec.reference.autoregressive`) reading x_<d (and the context) gives
  k = 1 + E outputs per dimension: row 0 is β_d, rows 1 … E the embedding h_d ∈ R^E
  (E = ``embedding``, default 4);
* the integrand network, one for all dimensions, reads (t, h_d) ∈ R^{1+E}: dense layers of widths
  ``integrand_hidden`` (default [8]) with tanh between them and one output a, and
  g = softplus(a) + ``floor`` (floor > 0, default 1e-3), so g ≥ floor > 0 and z_d is strictly
  increasing in x_d. softplus and tanh (not the paper's ELU + 1, nor the MADE's relu/elu) because g
  must be analytic in t: Clenshaw–Curtis and Gauss–Legendre then converge geometrically in the node
  count, while ELU is only C¹ at 0 and its integral converges like N⁻³ (the reference's doubling
  to 1e-13 would not end);
* ``nodes`` N (≥ :data:`MIN_NODES` = 8, default 128) is the accelerated layer's rule: Clenshaw–Curtis
  on the N + 1 Chebyshev points cos(kπ/N) of [−1, 1] mapped to [0, x_d]; the nested rule on 2N + 1
  points (it contains them) is its error estimate. The default 128 puts the rule at float64
  rounding for integrands of the initial weights' smoothness at inputs up to 10·N(0, 1) (measured
  over 60 strategy-like draws: error vs the exact integral ≤ 0.05 of the forward tolerance at
  3·N(0, 1), ≤ 0.21 at 10·N(0, 1)); N = 32 stays below float32's forward tolerance at 3·N(0, 1),
  not at 10·N(0, 1). Below N = 8 the rule does not resolve even a unit-width feature of g and
  the nested estimate says nothing. The reference does not use N for its
  value (see below); :func:`rule_forward` evaluates the N-node rule itself, exactly, for the
  conformance suite's per-rule comparisons.

**The reference's integral.** Gauss–Legendre with n = 16, 32, … nodes, doubled until two successive
estimates agree to :data:`AGREEMENT` = 1e-13 relative per entry (g > 0, so |∫| ≥ floor·|x| and the
relative criterion meets no cancellation); the finer estimate is returned, whose error under the
geometric convergence of an analytic integrand is about the square of the agreement (rounding level).
The node count is chosen on unboxed values; more than :data:`MAX_NODES` raises
:class:`~flowspec.errors.ConvergenceError` with the last relative disagreement. The returned rule is
then differentiated by autograd: its x-derivative Σ_i w_i·∂/∂x[(x/2)·g(x(s_i + 1)/2)] is the same
rule applied to the derivative's integrand, which converges at the same geometric rate, so the
generic Jacobian's diagonal is g(x_d) to rounding (measured ≤ 2e-15 in log at |x| ≤ 300, against
the logdet row's 1.4e-14·D) and the log-det Σ log g is exact up to it.

Parameters: the MADE's ``net.{2i}.weight/bias`` (layers D + context_dim → hidden → (1 + E)·D, row
j·D + d being output j of dimension d) and the integrand's ``integrand.{2i}.weight/bias`` (layers
1 + E → integrand_hidden → 1; input 0 is t).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping

import autograd.numpy as anp
import numpy as np
from autograd.tracer import getval

from flowspec.errors import ConfigError, ConvergenceError
from flowspec.registry import Kind, int_at_least, positive_number, register
from flowspec.spec import FlowSpec

from . import autoregressive
from .solve import expand_bracket, safeguarded_newton

FAMILY = "umnn"
MIN_NODES = 8
AGREEMENT = 1e-13
FIRST_NODES = 16
MAX_NODES = 4096
NEWTON_STEPS = 8  # the roots' Newton steps (quadratic convergence: 3–4 reach rounding)
UMNN_DEFAULTS: dict[str, Any] = {"embedding": 4, "integrand_hidden": [8], "nodes": 128, "floor": 1e-3}
WHAT = "a umnn flow"


@dataclass(frozen=True)
class UmnnConfig:
    """The UMNN keys of a validated config (module docstring)."""

    embedding: int
    integrand_hidden: tuple[int, ...]
    nodes: int
    floor: float

    @property
    def outputs_per_dim(self) -> int:
        """β_d and the E entries of h_d."""
        return 1 + self.embedding

    def integrand_sizes(self) -> list[int]:
        return [1 + self.embedding, *self.integrand_hidden, 1]


def parse_umnn(config: Mapping[str, Any]) -> tuple[autoregressive.MadeConfig, UmnnConfig]:
    """The MADE keys (:func:`flowspec.reference.autoregressive.parse_made`) and the UMNN keys, with
    :data:`UMNN_DEFAULTS` filled in; raises :class:`ConfigError` naming the key and the value."""
    made_cfg = autoregressive.parse_made(config, tuple(UMNN_DEFAULTS), WHAT)
    full = {**UMNN_DEFAULTS, **{k: v for k, v in config.items() if k in UMNN_DEFAULTS}}
    hidden = full["integrand_hidden"]
    if not isinstance(hidden, (list, tuple)) or not hidden:
        raise ConfigError(f"config['integrand_hidden'] of {WHAT} must be a non-empty list of widths ≥ 1, got {hidden!r}")
    widths = tuple(int_at_least({"integrand_hidden": v}, "integrand_hidden", 1, WHAT) for v in hidden)
    return made_cfg, UmnnConfig(embedding=int_at_least(full, "embedding", 1, WHAT), integrand_hidden=widths,
                                nodes=int_at_least(full, "nodes", MIN_NODES, WHAT),
                                floor=positive_number(full, "floor", WHAT))


# ----------------------------------------------------------------------------- rules on [−1, 1]

@lru_cache(maxsize=None)
def gauss_legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of the n-point Gauss–Legendre rule on [−1, 1]: the roots of P_n by Newton's
    method from cos(π(k − 1/4)/(n + 1/2)), P_n and P_n′ by the three-term recurrence (O(n²) per step,
    where ``numpy.polynomial.legendre.leggauss``'s eigenvalue solve is O(n³): 80 s at n = 4096);
    weights 2/((1 − x²)·P_n′(x)²)."""
    x = np.cos(np.pi * (np.arange(1, n + 1) - 0.25) / (n + 0.5))
    for _ in range(NEWTON_STEPS):
        p_prev, p = np.ones_like(x), x.copy()
        for j in range(2, n + 1):
            p_prev, p = p, ((2 * j - 1) * x * p - (j - 1) * p_prev) / j
        slope = n * (x * p - p_prev) / (x ** 2 - 1.0)
        step = p / slope
        x = x - step
        if np.max(np.abs(step)) <= np.finfo(np.float64).eps:
            break
    return x, 2.0 / ((1.0 - x ** 2) * slope ** 2)


@lru_cache(maxsize=None)
def clenshaw_curtis(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes cos(kπ/n), k = 0 … n, and weights of the Clenshaw–Curtis rule on [−1, 1] (exact for
    polynomials of degree ≤ n): w_k = (c_k/n)·(1 − Σ_{j=1}^{⌊n/2⌋} b_j·cos(2jkπ/n)/(4j² − 1)),
    c_k = 1 at k = 0, n and 2 otherwise, b_j = 1 at j = n/2 and 2 otherwise."""
    k = np.arange(n + 1)
    j = np.arange(1, n // 2 + 1)
    b = np.where(2 * j == n, 1.0, 2.0)
    series = (b[None, :] * np.cos(2.0 * np.pi * np.outer(k, j) / n) / (4.0 * j ** 2 - 1.0)[None, :]).sum(axis=1)
    c = np.where((k == 0) | (k == n), 1.0, 2.0)
    return np.cos(np.pi * k / n), c / n * (1.0 - series)


# ----------------------------------------------------------------------------- the integrand

def integrand_layers(params: Mapping[str, Any], cfg: UmnnConfig) -> list[tuple[Any, Any]]:
    return [(params[f"integrand.{2 * i}.weight"], params[f"integrand.{2 * i}.bias"])
            for i in range(len(cfg.integrand_hidden) + 1)]


def integrand(layers: list[tuple[Any, Any]], t: Any, h: Any, floor: float) -> Any:
    """g(t; h) = softplus(a) + floor at points ``t`` (shape S) with embeddings ``h`` (shape S + (E,)),
    a the network's output on (t, h): dense layers with tanh between them."""
    (w0, b0), rest = layers[0], layers[1:]
    pre = t[..., None] * w0[:, 0] + anp.dot(h, anp.transpose(w0[:, 1:])) + b0
    for w, b in rest:
        pre = anp.dot(anp.tanh(pre), anp.transpose(w)) + b
    return anp.logaddexp(0.0, pre[..., 0]) + floor


def rule_integral(layers: list[tuple[Any, Any]], x: Any, h: Any, floor: float, nodes: np.ndarray,
                  weights: np.ndarray) -> Any:
    """∫₀^{x_d} g(t; h_d) dt per entry by the rule (``nodes``, ``weights``) on [−1, 1] mapped to
    [0, x_d]: (x_d/2)·Σ_i w_i·g(x_d·(s_i + 1)/2; h_d). ``x``: (D,), ``h``: (D, E)."""
    t = x[:, None] * (nodes[None, :] + 1.0) / 2.0
    g = integrand(layers, t, anp.broadcast_to(h[:, None, :], t.shape + (anp.shape(h)[-1],)), floor)
    return x / 2.0 * anp.dot(g, weights)


def _unboxed(layers: list[tuple[Any, Any]]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.asarray(getval(w)), np.asarray(getval(b))) for w, b in layers]


def converged_nodes(layers: list[tuple[Any, Any]], x: np.ndarray, h: np.ndarray, floor: float) -> int:
    """The Gauss–Legendre node count n whose estimate agrees with the one at n/2 to :data:`AGREEMENT`
    relative in every entry (plain arrays); :class:`ConvergenceError` beyond :data:`MAX_NODES`."""
    n, previous = FIRST_NODES, rule_integral(layers, x, h, floor, *gauss_legendre(FIRST_NODES))
    while True:
        n *= 2
        current = rule_integral(layers, x, h, floor, *gauss_legendre(n))
        gap = np.max(np.abs(current - previous) / np.maximum(np.abs(current), np.finfo(np.float64).tiny))
        if gap <= AGREEMENT:
            return n
        if n >= MAX_NODES:
            raise ConvergenceError(f"the umnn reference integral did not converge within {MAX_NODES} "
                                   "Gauss–Legendre nodes", residual=float(gap), iterations=n, tolerance=AGREEMENT)
        previous = current


def exact_integral(layers: list[tuple[Any, Any]], x: Any, h: Any, floor: float) -> Any:
    """∫₀^{x_d} g(t; h_d) dt to float64 accuracy: the Gauss–Legendre rule at the node count that
    :func:`converged_nodes` chooses on the unboxed values (module docstring)."""
    plain_x, plain_h = np.asarray(getval(x), np.float64), np.asarray(getval(h), np.float64)
    n = converged_nodes(_unboxed(layers), plain_x, plain_h, floor)
    return rule_integral(layers, x, h, floor, *gauss_legendre(n))


# ----------------------------------------------------------------------------- the kind

def _parts(spec: FlowSpec, context: Any) -> tuple[Any, list[tuple[Any, Any]], UmnnConfig, autoregressive.MadeConfig]:
    made_cfg, cfg = parse_umnn(spec.config)
    masks = made_cfg.masks(cfg.outputs_per_dim)
    net = lambda v: autoregressive.made_net(spec.params, masks, made_cfg.activation, v, context)  # noqa: E731
    return net, integrand_layers(spec.params, cfg), cfg, made_cfg


def forward(spec: FlowSpec, x: Any, context: Any = None) -> Any:
    """z_d = β_d + ∫₀^{x_d} g(t; h_d) dt (Wehenkel & Louppe Sec. 3) for one sample, in one MADE pass."""
    net, layers, cfg, _ = _parts(spec, context)
    out = net(x)
    return out[0] + exact_integral(layers, x, anp.transpose(out[1:]), cfg.floor)


def rule_forward(spec: FlowSpec, x: Any, context: Any = None, nodes: int | None = None) -> Any:
    """z_d = β_d + Q_N[g](0, x_d) with the N-node Clenshaw–Curtis rule (N = ``nodes``, default the
    config's): what an exact implementation of the accelerated rule returns, autograd-differentiable."""
    net, layers, cfg, _ = _parts(spec, context)
    out = net(x)
    return out[0] + rule_integral(layers, x, anp.transpose(out[1:]), cfg.floor, *clenshaw_curtis(nodes or cfg.nodes))


def log_slopes(spec: FlowSpec, x: Any, context: Any = None) -> Any:
    """log g(x_d; h_d) per entry: the exact log-derivatives, whose sum is the log-det."""
    net, layers, cfg, _ = _parts(spec, context)
    return anp.log(integrand(layers, x, anp.transpose(net(x)[1:]), cfg.floor))


def _invert_entry(layers: list[tuple[Any, Any]], floor: float) -> Any:
    """z_d ↦ x_d for one entry given its MADE outputs (β_d, h_d): bracket from [−1, 1] by
    :func:`expand_bracket`, then :func:`safeguarded_newton` with the slope g (plain float64)."""
    plain = _unboxed(layers)

    def invert(z_d: Any, out_d: Any) -> Any:
        beta, h = float(getval(out_d[0])), np.asarray(getval(out_d[1:]), np.float64)[None, :]
        target = np.array([float(getval(z_d)) - beta])

        def value(v: np.ndarray) -> np.ndarray:
            return exact_integral(plain, v, h, floor)

        def value_and_log_slope(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return value(v), np.log(integrand(plain, v, h, floor))

        lo, hi = expand_bracket(value, target, np.array([-1.0]), np.array([1.0]), what="the umnn reference inverse")
        return safeguarded_newton(value_and_log_slope, target, lo, hi, np.array([1.0]),
                                  what="the umnn reference inverse")[0]
    return invert


def inverse(spec: FlowSpec, z: Any, context: Any = None) -> Any:
    """x by D sequential passes in the order, each entry solved by bracketing and safeguarded Newton."""
    net, layers, cfg, made_cfg = _parts(spec, context)
    return autoregressive.autoregressive_inverse(net, _invert_entry(layers, cfg.floor), z, made_cfg.order)


def init_params(config: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The MADE's and the integrand network's weights N(0, 1/fan_in), biases N(0, 0.5²)."""
    made_cfg, cfg = parse_umnn(config)
    params = autoregressive.init_made_params(made_cfg.layer_sizes(cfg.outputs_per_dim), rng)
    integrand_params = autoregressive.init_made_params(cfg.integrand_sizes(), rng)
    params.update({f"integrand.{name[len('net.'):]}": value for name, value in integrand_params.items()})
    return params


def _extras() -> dict[str, Any]:
    """maf's ``order`` and ``forbidden``; ``required`` only the diagonal (None), as NSF-AR's."""
    extras = dict(autoregressive.made_extras(lambda config: parse_umnn(config)[0]))
    extras["required"] = lambda config: None
    extras["invalid_configs"] = ({"nodes": MIN_NODES - 1},)  # the generic wrong values miss the minimum
    return extras


register(Kind(
    name="umnn", family=FAMILY, forward=forward, inverse=inverse,
    init_params=init_params, extras=_extras(), **autoregressive.made_law_fields(parse_umnn),
    summary="UMNN: z_d = β_d + ∫₀^{x_d} g(t; h_d) dt, g = softplus(net) + floor, MADE conditioner; "
            "log|det| = Σ log g exact; Clenshaw–Curtis with N nodes in the accelerated layer",
))
