"""Residual blocks f(x) = x + g(x) with a contractive g (i-ResNet; Residual Flows, Chen et al. 2019).

Kinds
-----
``residual_mlp``
    Event of any shape ``config["shape"]``, flattened to D entries. With pre-activation (App. E),
    ``g(x) = W_{L−1} φ(… W_1 φ(W_0 φ(x) + b_0) + b_1 …) + b_{L−1}``, widths D → hidden… → D.
``residual_conv``
    Event ``(C, H, W)``; the same chain with stride-1 zero-padded ("same") convolutions of kernel
    sizes ``config["kernels"]`` (default 3, 1, …, 1, 3: LipSwish → 3×3 conv → LipSwish → 1×1 conv →
    LipSwish → 3×3 conv for two hidden layers, App. E), channels C → hidden… → C.

Canonical params: ``weight{l}`` (torch layout), ``bias{l}`` and, for LipSwish, ``beta{l}`` of shape
(1,) (the pre-softplus β of eq. 10). The weights are the **effective** (normalised) weights: an
implementation that divides raw weights by an estimated norm exports what it applies, so that the
reference computes the same function; the constraint ‖W_l‖_{p_l→p_{l+1}} ≤ coeff is checked on its
own, with exact norms (:func:`weight_norms`). ``orders`` (MLP only) are p_0, …, p_{L−1}: layer l maps
the p_l-normed space to the p_{l+1}-normed one and the last maps back to p_0, so
‖J_g‖_{p_0} ≤ ∏ ‖W_l‖ ≤ coeff^L (App. D, eq. 17; |φ′| ≤ 1). With ``learn_orders`` (MLP only) the
hidden orders are p_i = 2 + tanh(s_i)/2 with s = the param ``order_logits`` (App. D); they enter the
constraints only, not the map.

The remaining config keys choose the implementation's log-det estimator and solvers; the reference
computes exactly what each choice estimates:

* ``logdet``: ``"exact"`` (slogdet of the full Jacobian), ``"series"`` (the i-ResNet truncated power
  series, eq. 3, with ``n_exact_terms`` terms and a Hutchinson probe: biased) or ``"roulette"``
  (Theorem 1, eq. 6: unbiased).
* The Russian-roulette estimator with ``m = n_exact_terms`` and a draw N ~ p(N):

      est(v, N) = Σ_{k=1}^{m+N} c_k · (−1)^{k+1}/k · vᵀ J_g^k v,    c_k = 1 (k ≤ m),
                                                                  c_k = 1 / P(N ≥ k − m) (k > m).

  p(N) (``dist``, ``dist_param``): ``"geometric"`` with success probability q, **counted from 1**
  (numpy's convention: P(N = n) = q(1 − q)^{n−1}, n ≥ 1; torch's geometric counts failures from 0 and
  is off by one); ``"poisson"`` with mean λ, n ≥ 0. In evaluation mode m is
  max(n_exact_terms, eval_exact_terms) (20 in the paper, Sec. 5.1).
* Exact finite identity (no truncated infinite sum): for every M ≥ n_min,

      Σ_{n=n_min}^{M} p(n)·est(v, n) + P(N > M)·est(v, M) = S_{m+M}(v) = Σ_{k=1}^{m+M} (−1)^{k+1}/k vᵀJ^k v,

  because term k is weighted by c_k·P(N ≥ k − m) = 1; :func:`expectation_over_n` evaluates the left
  side for any quantity that is linear in the coefficients (values and gradients alike).
* Neumann gradient series (Theorem 2, eq. 8; App. C): for the same (v, N),

      G(v, N) = ∂/∂θ [wᵀ J_g v] with w = Σ_{j=0}^{m+N} (−1)^j c_j (J_gᵀ)^j v held fixed,

  whose expectation over N is the Neumann partial sum and, as M → ∞, vᵀ(I + J_g)⁻¹(∂J_g/∂θ)v
  (:func:`neumann_exact`); averaged over probes, ∂log|det(I + J_g)|/∂θ. The series estimator's
  gradient uses j = 0, …, m − 1 (the trace-derivative of its m value terms). With
  ``neumann_grad=False`` the gradient is the derivative of est(v, N) itself (eq. 7).
* Variance (:func:`roulette_variance`, :func:`estimate_variance` for either estimator): finite for
  the geometric p(N) iff ρ(J_g)² < 1 − q (the k-th term grows like (ρ²/(1 − q))^k), infinite for the
  Poisson p(N) whenever ρ(J_g) > 0. Means (:func:`estimator_mean`: log|det| or S_m;
  :func:`surrogate_mean`: the Neumann surrogate's tr((I + J_g)⁻¹J_g), which is not a log-det) and
  sub-gamma constants of one estimate (:func:`concentration`, finite when ρ(J_g) < 1 − q) are what
  the suite's statistical test is built from.
* ``n_samples``: the forward's estimate is the mean of that many independent (probe, N) estimates.
* ``draw`` (roulette): how a forward draws N. ``"sample"``: independently for every sample and
  probe (a sample's estimate does not depend on its batch; a batch then costs its largest N).
  ``"batch"``: one N per probe index, shared by every sample of the batch (the official code's
  choice; a batch costs that N). Each sample's estimate has the same law either way, so both are
  unbiased with the same per-sample variance; they differ in the variance of the *batch mean*,
  which per-batch draws do not average over N: Var_N(E_v[est | N]) (bounded by
  ``VarianceReport.n_variance_upper``) stays in it whatever the batch size. The default is
  ``"batch"``: per second of computing it, the variance of the batch mean was clearly lower on the
  App. E conv blocks and within two standard errors on the MLP (``flowspec bench residual``
  measures both).
* ``inverse_rtol`` r (default 32ε/(1 − L), L = coeff^layers): the inverse returns x̂ with
  ‖x̂ − f⁻¹(y)‖₂ ≤ L·r·max(‖y‖₂, 1) up to rounding, when its iteration converged and L bounds Lip(g)
  in the 2-norm (p_0 = 2); ``inverse_max_iter`` caps the iteration (then ``ConvergenceError``).
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import autograd.numpy as anp
import numpy as np
from autograd import grad
from scipy import stats

from flowspec.errors import ConfigError
from flowspec.registry import Kind, config_sequence, register
from flowspec.spec import FlowSpec

from .conv import conv2d
from .core import check_input, map_jacobian, vjp
from .elementwise import shape_of
from .lipschitz import ACTIVATIONS, activation, constraint_norm, has_beta, jacobian_norm
from .norms import spectral_norm

FAMILY = "residual"
KINDS = ("residual_mlp", "residual_conv")
ESTIMATORS = ("exact", "series", "roulette")
DRAWS = ("sample", "batch")
DISTRIBUTIONS = ("geometric", "poisson")
PROBES = ("gaussian", "rademacher")

# Defaults of every optional config key (the accelerated constructors use the same values).
DEFAULTS: dict[str, Any] = {
    "activation": "lipswish",
    "coeff": 0.97,
    "logdet": "roulette",
    "n_exact_terms": 2,
    "eval_exact_terms": 20,
    "n_samples": 1,
    "draw": "batch",
    "dist": "geometric",
    "dist_param": 0.5,
    "probe": "gaussian",
    "neumann_grad": True,
    "grad_in_forward": True,
    "atol": 0.0,
    "rtol": 1e-4,
    "max_iter": 200,
    "inverse_rtol": None,
    "inverse_max_iter": 1000,
}


# ----------------------------------------------------------------------------- configuration

def setting(config: Mapping[str, Any], key: str) -> Any:
    """``config[key]``, or its default from :data:`DEFAULTS`."""
    return config.get(key, DEFAULTS[key])


def is_conv(spec: FlowSpec) -> bool:
    """Whether the spec is a convolutional block (kind ``residual_conv``)."""
    return spec.kind == "residual_conv"


def _hidden(config: Mapping[str, Any]) -> tuple[int, ...]:
    hidden = config_sequence(config, "hidden")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in hidden):
        raise ConfigError(f"config['hidden'] must be a list of positive ints (hidden widths), got {hidden!r}")
    return hidden


def default_kernels(n_layers: int) -> tuple[int, ...]:
    """3, 1, …, 1, 3 (App. E's 3×3 → 1×1 → 3×3 for three layers); a single layer gets 3."""
    return (3,) if n_layers == 1 else (3,) + (1,) * (n_layers - 2) + (3,)


@dataclass(frozen=True)
class Layer:
    """Layer l of g: a weight mapping ``in_width`` to ``out_width`` channels (kernel k×k for a
    convolution, None for a linear layer), constrained in ‖·‖_{p→q}."""

    index: int
    in_width: int
    out_width: int
    kernel: int | None
    p: float
    q: float

    @property
    def weight_shape(self) -> tuple[int, ...]:
        if self.kernel is None:
            return (self.out_width, self.in_width)
        return (self.out_width, self.in_width, self.kernel, self.kernel)


def orders_of(config: Mapping[str, Any], n_layers: int) -> tuple[float, ...]:
    orders = tuple(float(p) for p in config_sequence(config, "orders", (2.0,) * n_layers))
    if len(orders) != n_layers or not all(p >= 1.0 for p in orders):
        raise ConfigError(f"config['orders'] must list {n_layers} norm orders in [1, ∞], got {orders!r}")
    learn = config.get("learn_orders", False)
    if not isinstance(learn, bool) or (learn and n_layers < 2):
        raise ConfigError(f"config['learn_orders'] must be a bool and needs a hidden layer, got {learn!r}")
    return orders


def learned_orders(orders: Sequence[float], logits: np.ndarray) -> tuple[float, ...]:
    """p_0 as configured, p_i = 2 + tanh(s_i)/2 for the hidden spaces (App. D's learnable orders)."""
    return (orders[0],) + tuple(2.0 + 0.5 * np.tanh(np.asarray(logits, dtype=np.float64)))


def layers_of(config: Mapping[str, Any], conv: bool, learned: Mapping[str, Any] | None = None) -> list[Layer]:
    """The layers of g (see the module docstring), checking sizes, kernels and orders; ``learned``
    (the params) supplies learned orders where the config asks for them."""
    learned = {} if learned is None else learned
    shape, hidden = shape_of(config), _hidden(config)
    if conv and len(shape) != 3:
        raise ConfigError(f"residual_conv needs an image shape (C, H, W), got {shape!r}")
    outer = shape[0] if conv else int(np.prod(shape))
    widths = (outer,) + hidden + (outer,)
    n_layers = len(widths) - 1
    if conv:
        if "orders" in config or "learn_orders" in config:
            raise ConfigError("residual_conv constrains convolutions in the spectral norm only: it takes no orders")
        kernels = config_sequence(config, "kernels", default_kernels(n_layers))
        if len(kernels) != n_layers or not all(isinstance(k, int) and k > 0 and k % 2 for k in kernels):
            raise ConfigError(f"config['kernels'] must list {n_layers} odd positive kernel sizes, got {kernels!r}")
        orders = (2.0,) * n_layers
    else:
        if "kernels" in config:
            raise ConfigError("residual_mlp has no kernels")
        kernels = (None,) * n_layers
        orders = orders_of(config, n_layers)
        if "order_logits" in learned:
            orders = learned_orders(orders, learned["order_logits"])
    return [
        Layer(l, widths[l], widths[l + 1], kernels[l], orders[l], orders[(l + 1) % n_layers])
        for l in range(n_layers)
    ]


def _choice(config: Mapping[str, Any], key: str, choices: Sequence[str]) -> str:
    value = setting(config, key)
    if value not in choices:
        raise ConfigError(f"config[{key!r}] must be one of {', '.join(choices)}, got {value!r}")
    return value


def _count(config: Mapping[str, Any], key: str, low: int) -> int:
    value = setting(config, key)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"config[{key!r}] must be an int ≥ {low}, got {value!r}")
    return value


def check_coeff(coeff: Any) -> float:
    """The Lipschitz coefficient, which must lie in (0, 1): g must be a contraction (i-ResNet)."""
    if not isinstance(coeff, (int, float)) or isinstance(coeff, bool) or not 0.0 < coeff < 1.0:
        raise ConfigError(
            f"coeff must lie in (0, 1) so that g is contractive and f = x + g(x) invertible, got {coeff!r}"
        )
    return float(coeff)


def check_config(config: Mapping[str, Any], conv: bool) -> None:
    """Raise :class:`ConfigError` naming the first invalid entry."""
    layers_of(config, conv)
    check_coeff(setting(config, "coeff"))
    _choice(config, "activation", ACTIVATIONS)
    estimator = _choice(config, "logdet", ESTIMATORS)
    _count(config, "n_exact_terms", 1 if estimator == "series" else 0)
    _count(config, "eval_exact_terms", 0)
    _count(config, "n_samples", 1)
    _count(config, "max_iter", 1)
    _count(config, "inverse_max_iter", 1)
    _choice(config, "probe", PROBES)
    _choice(config, "draw", DRAWS)
    roulette_of(config)
    for key in ("neumann_grad", "grad_in_forward"):
        if not isinstance(setting(config, key), bool):
            raise ConfigError(f"config[{key!r}] must be a bool, got {setting(config, key)!r}")
    atol, rtol = setting(config, "atol"), setting(config, "rtol")
    if not (isinstance(atol, (int, float)) and isinstance(rtol, (int, float)) and atol >= 0 and rtol >= 0
            and atol + rtol > 0):
        raise ConfigError(f"power iteration needs atol ≥ 0, rtol ≥ 0, not both zero; got {atol!r}, {rtol!r}")
    inverse_rtol = setting(config, "inverse_rtol")
    if inverse_rtol is not None and not (isinstance(inverse_rtol, (int, float)) and 0 < inverse_rtol < 1):
        raise ConfigError(f"config['inverse_rtol'] must be None or lie in (0, 1), got {inverse_rtol!r}")


def lipschitz_bound(spec: FlowSpec) -> float:
    """The bound coeff^L on Lip(g) in the p_0 norm that the constraint gives (eq. 16–17)."""
    return check_coeff(setting(spec.config, "coeff")) ** len(layers_of(spec.config, is_conv(spec)))


# ----------------------------------------------------------------------------- the map

def g_one(spec: FlowSpec, x: Any) -> Any:
    """g(x) for one sample of the event shape (autograd-differentiable in x and the params)."""
    config, params = spec.config, spec.params
    name = setting(config, "activation")
    h = x if is_conv(spec) else anp.reshape(x, (-1,))
    for layer in layers_of(config, is_conv(spec)):
        l = layer.index
        h = activation(name, h, params.get(f"beta{l}"))
        if layer.kernel is None:
            h = anp.dot(params[f"weight{l}"], h) + params[f"bias{l}"]
        else:
            h = conv2d(h, params[f"weight{l}"], params[f"bias{l}"])
    return anp.reshape(h, anp.shape(x))


def residual_forward(spec: FlowSpec, x: Any, context: Any = None) -> Any:
    """f(x) = x + g(x)."""
    return x + g_one(spec, x)


def g_jacobian(spec: FlowSpec, x: Any) -> Any:
    """J_g(x), flattened to (D, D) (row: output, column: input), by autograd."""
    return map_jacobian(lambda xs: g_one(spec, xs), x)


def init_params(config: Mapping[str, Any], rng: np.random.Generator, conv: bool) -> dict[str, np.ndarray]:
    """Generic params whose Jacobian is far from zero (so that tests have power).

    Weights come from :func:`chained_matrices` (random singular frames and spectra, each layer's
    input frame the previous layer's output frame; for a convolution this is the centre tap, the
    other taps are Gaussian at a third of its scale) and are scaled to a constraint norm of
    coeff·U(0.6, 0.95) (the exact norm, or the upper end of its bracket). Biases ~ N(0, 0.5²),
    LipSwish's β_raw ~ N(0, 1).
    """
    check_config(config, conv)
    coeff = check_coeff(setting(config, "coeff"))
    spatial = shape_of(config)[1:] if conv else None
    params: dict[str, np.ndarray] = {}
    if config.get("learn_orders", False):
        params["order_logits"] = rng.normal(0.0, 1.0, len(_hidden(config)))
    layers = layers_of(config, conv, params)
    matrices = chained_matrices([layers[0].in_width] + [layer.out_width for layer in layers], rng)
    for layer, matrix in zip(layers, matrices):
        weight = matrix
        if layer.kernel is not None:
            weight = rng.normal(0.0, np.abs(matrix).mean() / 3.0, layer.weight_shape)
            weight[:, :, layer.kernel // 2, layer.kernel // 2] = matrix
        _, upper = constraint_norm(weight, layer.p, layer.q, _in_shape(layer, spatial))
        params[f"weight{layer.index}"] = weight * (coeff * rng.uniform(0.6, 0.95) / upper)
        params[f"bias{layer.index}"] = rng.normal(0.0, 0.5, layer.out_width)
        if has_beta(setting(config, "activation")):
            params[f"beta{layer.index}"] = rng.normal(0.0, 1.0, 1)
    return params


def chained_matrices(widths: Sequence[int], rng: np.random.Generator) -> list[np.ndarray]:
    """Matrices A_l of shape (widths[l+1], widths[l]) = U_{l+1} diag(s_l) U_lᵀ with random orthonormal
    frames U_l (shared by consecutive layers, so that the product's norm is near the product of the
    norms) and singular values s_l drawn from U(0.2, 1)."""
    frames = [np.linalg.qr(rng.standard_normal((w, w)))[0] for w in widths]
    matrices = []
    for l in range(len(widths) - 1):
        rank = min(widths[l], widths[l + 1])
        spectrum = np.sort(rng.uniform(0.2, 1.0, rank))[::-1]
        matrices.append(frames[l + 1][:, :rank] @ np.diag(spectrum) @ frames[l][:, :rank].T)
    return matrices


def _in_shape(layer: Layer, spatial: Sequence[int] | None) -> tuple[int, ...] | None:
    return None if layer.kernel is None else (layer.in_width, *spatial)


# ----------------------------------------------------------------------------- norms

def weight_constraints(spec: FlowSpec, spatial: Sequence[int] | None = None) -> dict[str, tuple[float, float, tuple[int, ...] | None]]:
    """Per weight name: ``(p, q, in_shape)`` of its constraint; convolutions at ``spatial`` (H, W),
    by default the event's."""
    if is_conv(spec):
        spatial = tuple(spatial) if spatial is not None else shape_of(spec.config)[1:]
    return {f"weight{layer.index}": (layer.p, layer.q, _in_shape(layer, spatial))
            for layer in layers_of(spec.config, is_conv(spec), spec.params)}


def weight_norms(spec: FlowSpec, weights: Mapping[str, np.ndarray] | None = None,
                 spatial: Sequence[int] | None = None) -> dict[str, tuple[float, float]]:
    """``(lower, upper)`` of each weight's norm in its constraint's own norm (exact where known):
    the spec's weights, or ``weights`` (same names) such as an implementation's normalised weights."""
    weights = spec.params if weights is None else weights
    return {
        name: constraint_norm(np.asarray(weights[name]), p, q, in_shape)
        for name, (p, q, in_shape) in weight_constraints(spec, spatial).items()
    }


def input_order(spec: FlowSpec) -> float:
    """p_0: the norm of the space g maps to itself."""
    return layers_of(spec.config, is_conv(spec))[0].p


def jacobian_constraint_norm(spec: FlowSpec, x: np.ndarray) -> tuple[float, float]:
    """``(lower, upper)`` of ‖J_g(x)‖_{p_0→p_0} at one sample x (exact for p_0 ∈ {1, 2, ∞})."""
    return jacobian_norm(np.asarray(g_jacobian(spec, _event(spec, x))), input_order(spec))


# ----------------------------------------------------------------------------- p(N)

@dataclass(frozen=True)
class Roulette:
    """The distribution p(N) of the roulette draw (see the module docstring for the conventions)."""

    dist: str
    param: float

    @property
    def support_min(self) -> int:
        """The smallest possible N: 1 for the geometric (numpy's convention), 0 for the Poisson."""
        return 1 if self.dist == "geometric" else 0

    def pmf(self, n: int) -> float:
        """P(N = n)."""
        if n < self.support_min:
            return 0.0
        if self.dist == "geometric":
            return self.param * (1.0 - self.param) ** (n - 1)
        return float(stats.poisson.pmf(n, self.param))

    def tail(self, j: int) -> float:
        """P(N ≥ j)."""
        if j <= self.support_min:
            return 1.0
        if self.dist == "geometric":
            return (1.0 - self.param) ** (j - 1)
        return float(stats.poisson.sf(j - 1, self.param))

    def coefficient(self, k: int, n_exact_terms: int) -> float:
        """c_k: 1 for the first ``n_exact_terms`` terms, then 1 / P(N ≥ k − n_exact_terms) (eq. 6)."""
        return 1.0 if k <= n_exact_terms else 1.0 / self.tail(k - n_exact_terms)


def roulette_of(config: Mapping[str, Any]) -> Roulette:
    dist = _choice(config, "dist", DISTRIBUTIONS)
    param = setting(config, "dist_param")
    if not isinstance(param, (int, float)) or isinstance(param, bool):
        raise ConfigError(f"config['dist_param'] must be a number, got {param!r}")
    if dist == "geometric" and not 0.0 < param < 1.0:
        raise ConfigError(f"the geometric p(N) needs a success probability in (0, 1), got {param!r}")
    if dist == "poisson" and not param > 0.0:
        raise ConfigError(f"the Poisson p(N) needs a mean > 0, got {param!r}")
    return Roulette(dist, float(param))


def exact_terms(config: Mapping[str, Any], training: bool = True) -> int:
    """m: ``n_exact_terms``, or in evaluation mode max(n_exact_terms, eval_exact_terms)."""
    m = setting(config, "n_exact_terms")
    return m if training else max(m, setting(config, "eval_exact_terms"))


def expectation_over_n(values: Sequence[Any], roulette: Roulette, M: int) -> Any:
    """Σ_{n=n_min}^{M} p(n)·values[n − n_min] + P(N > M)·values[M − n_min]: E over N of a quantity whose
    N-th value is ``values[N − n_min]`` and that stops changing after M (the finite identity)."""
    n_min = roulette.support_min
    if len(values) != M - n_min + 1:
        raise ConfigError(f"need the values for n = {n_min}, …, {M}: {M - n_min + 1} of them, got {len(values)}")
    total = roulette.tail(M + 1) * np.asarray(values[-1], dtype=np.float64)
    for n, value in zip(range(n_min, M + 1), values):
        total = total + roulette.pmf(n) * np.asarray(value, dtype=np.float64)
    return total


# ----------------------------------------------------------------------------- series and estimators

def _signs(K: int) -> np.ndarray:
    """s_k = (−1)^{k+1} / k for k = 1, …, K."""
    k = np.arange(1, K + 1)
    return (-1.0) ** (k + 1) / k


def probe_powers(jac: Any, v: Any, K: int) -> Any:
    """Rows (Jᵀ)^k v for k = 0, …, K (so that vᵀJ^k v = row_k · v)."""
    rows = [v]
    for _ in range(K):
        rows.append(anp.dot(rows[-1], jac))
    return anp.stack(rows)


def hutchinson_terms(jac: Any, v: Any, K: int) -> Any:
    """a_k(v) = (−1)^{k+1}/k · vᵀJ^k v for k = 1, …, K (eq. 3 with the Hutchinson probe v)."""
    return _signs(K) * anp.dot(probe_powers(jac, v, K)[1:], v)


def trace_terms(jac: np.ndarray, K: int) -> np.ndarray:
    """τ_k = (−1)^{k+1}/k · tr(J^k) for k = 1, …, K (the expected a_k)."""
    traces, power = [], np.eye(jac.shape[0])
    for _ in range(K):
        power = power @ jac
        traces.append(np.trace(power))
    return _signs(K) * np.array(traces)


def partial_sums(spec: FlowSpec, x: np.ndarray, K: int) -> np.ndarray:
    """S_1, …, S_K: the exact partial sums Σ_{k≤K} (−1)^{k+1} tr(J_g^k)/k of log|det(I + J_g)| at x."""
    return np.cumsum(trace_terms(np.asarray(g_jacobian(spec, _event(spec, x))), K))


def _event(spec: FlowSpec, x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(shape_of(spec.config))


def _coefficients(config: Mapping[str, Any], count: int, training: bool, start: int = 1) -> np.ndarray:
    """c_k for k = start, …, count − 1 + start under the config's estimator (1 for the series)."""
    ks = range(start, start + count)
    if setting(config, "logdet") != "roulette":
        return np.ones(count)
    roulette, m = roulette_of(config), exact_terms(config, training)
    return np.array([roulette.coefficient(k, m) for k in ks])


def value_terms(config: Mapping[str, Any], n: int, training: bool = True) -> int:
    """How many series terms the estimate uses: m + n (roulette) or m (series)."""
    m = exact_terms(config, training)
    return m + n if setting(config, "logdet") == "roulette" else m


def gradient_terms(config: Mapping[str, Any], n: int, training: bool = True) -> int:
    """How many Neumann terms j = 0, 1, … the gradient uses: m + n + 1 (roulette) or m (series)."""
    m = exact_terms(config, training)
    return m + n + 1 if setting(config, "logdet") == "roulette" else m


def _check_n(config: Mapping[str, Any], n: int) -> int:
    if setting(config, "logdet") == "roulette":
        roulette = roulette_of(config)
        if int(n) != n or n < roulette.support_min:
            raise ConfigError(f"N = {n!r} is outside the support of the {roulette.dist} p(N) (n ≥ {roulette.support_min})")
    return int(n)


def estimate_from_jacobian(config: Mapping[str, Any], jac: Any, v: Any, n: int, training: bool = True) -> Any:
    """The configured estimator's value for J_g = ``jac``, probe ``v`` (flat) and draw n."""
    if setting(config, "logdet") == "exact":
        return anp.linalg.slogdet(anp.eye(anp.shape(jac)[0]) + jac)[1]
    K = value_terms(config, _check_n(config, n), training)
    if K == 0:
        return 0.0 * anp.sum(v)
    return anp.sum(_coefficients(config, K, training) * hutchinson_terms(jac, v, K))


def estimate_scale(config: Mapping[str, Any], jac: np.ndarray, v: np.ndarray, n: int, training: bool = True) -> float:
    """‖v‖²·Σ_{k≤K} c_k‖J_g‖₂^k/k over the estimate's K terms, an upper bound of Σ_k c_k|a_k(v)|: the
    size of what an estimate sums, to which its rounding error is relative (cancellation can make the
    estimate itself much smaller, and heavy draws N make the terms much larger)."""
    if setting(config, "logdet") == "exact":
        return 1.0
    K = value_terms(config, _check_n(config, n), training)
    norm = float(spectral_norm(np.asarray(jac, dtype=np.float64))) if np.size(jac) else 0.0
    terms = _coefficients(config, K, training) * norm ** np.arange(1, K + 1) / np.arange(1, K + 1)
    return float(np.sum(np.asarray(v, dtype=np.float64) ** 2) * np.sum(terms))


def logdet_estimate(spec: FlowSpec, x: np.ndarray, v: np.ndarray, n: int, training: bool = True) -> float:
    """The estimate of log|det ∂f/∂x| at one sample x for probe v (event-shaped) and draw n:
    slogdet for ``exact``, the m-term series for ``series`` (n unused), est(v, n) for ``roulette``."""
    jac = np.asarray(g_jacobian(spec, _event(spec, x)))
    return float(estimate_from_jacobian(spec.config, jac, np.asarray(v, dtype=np.float64).reshape(-1), n, training))


def neumann_vector(config: Mapping[str, Any], jac: np.ndarray, v: np.ndarray, n: int, training: bool = True) -> np.ndarray:
    """w = Σ_j (−1)^j c_j (Jᵀ)^j v over the gradient's terms (eq. 8); G = ∂(wᵀ J_g v)/∂θ."""
    T = gradient_terms(config, _check_n(config, n), training)
    rows = probe_powers(jac, v, max(T - 1, 0))[:T]
    coeff = _coefficients(config, T, training, start=0) * (-1.0) ** np.arange(T)
    return coeff @ rows if T else np.zeros_like(v)


def bilinear_gradient(spec: FlowSpec, x: np.ndarray, w: np.ndarray, v: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """∂/∂θ and ∂/∂x of wᵀ J_g(x; θ) v with w and v held fixed (exact, by nested autograd)."""
    flat = spec.flat_params()
    names = list(flat)
    shape = shape_of(spec.config)

    def bilinear(params_list: list[Any], xs: Any) -> Any:
        s = spec.with_flat_params(dict(zip(names, params_list)))
        jt_w = grad(lambda xx: anp.sum(anp.reshape(g_one(s, xx), (-1,)) * w))(xs)
        return anp.sum(anp.reshape(jt_w, (-1,)) * v)

    x = _event(spec, x)
    params = [flat[name] for name in names]
    with _affine_g_allowed():
        g_params = grad(bilinear, 0)(params, x)
        g_x = grad(bilinear, 1)(params, x)
    return {name: np.asarray(g) for name, g in zip(names, g_params)}, np.asarray(g_x).reshape(shape)


def gradient_estimate(spec: FlowSpec, x: np.ndarray, v: np.ndarray, n: int, training: bool = True) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The gradient the configured estimator attaches to its value, w.r.t. params and x, at one sample:
    the exact ∂log|det|/∂(θ, x) for ``exact``; with ``neumann_grad`` the Neumann series G(v, n)
    (:func:`neumann_vector`, :func:`bilinear_gradient`); otherwise ∂est(v, n)/∂(θ, x) (eq. 7)."""
    config = spec.config
    x = _event(spec, x)
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    if setting(config, "logdet") == "exact":
        return logdet_gradient(spec, x)
    if setting(config, "neumann_grad"):
        jac = np.asarray(g_jacobian(spec, x))
        return bilinear_gradient(spec, x, neumann_vector(config, jac, v, n, training), v)
    return _direct_gradient(spec, x, v, n, training)


def _direct_gradient(spec: FlowSpec, x: np.ndarray, v: np.ndarray, n: int, training: bool) -> tuple[dict[str, np.ndarray], np.ndarray]:
    flat = spec.flat_params()
    names = list(flat)

    def estimate(params_list: list[Any], xs: Any) -> Any:
        s = spec.with_flat_params(dict(zip(names, params_list)))
        return estimate_from_jacobian(s.config, g_jacobian(s, xs), v, n, training)

    params = [flat[name] for name in names]
    with _affine_g_allowed():
        return ({name: np.asarray(g) for name, g in zip(names, grad(estimate, 0)(params, x))},
                np.asarray(grad(estimate, 1)(params, x)))


@contextmanager
def _affine_g_allowed() -> Iterator[None]:
    """Silence autograd's notice that a gradient is identically zero: for an affine g (identity
    activation) J_g does not depend on x, and ∂/∂x of a J_g quantity is exactly 0. Also silence
    overflow in the derivatives of saturated activations (σ(z)'s derivative through 1/(1 + e^{−z}),
    whose square overflows for z below about −355): the quotient is then exactly the 0 it tends to, and
    a non-finite result would still fail every comparison."""
    with warnings.catch_warnings(), np.errstate(over="ignore"):
        warnings.filterwarnings("ignore", message="Output seems independent of input")
        yield


def neumann_exact(spec: FlowSpec, x: np.ndarray, v: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """vᵀ(I + J_g)⁻¹(∂J_g/∂θ)v and the same for ∂/∂x: the limit of the Neumann series (App. C, eq. 15)."""
    x = _event(spec, x)
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    jac = np.asarray(g_jacobian(spec, x))
    w = np.linalg.solve((np.eye(jac.shape[0]) + jac).T, v)
    return bilinear_gradient(spec, x, w, v)


def logdet_gradient(spec: FlowSpec, x: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The exact ∂log|det ∂f/∂x|/∂θ and ∂/∂x at one sample (autograd through slogdet)."""
    x = _event(spec, x)
    g_params, g_x = vjp(spec, x[None], np.zeros((1,) + x.shape), np.ones(1))
    return g_params, g_x[0]


def logdet_estimates(spec: FlowSpec, x: np.ndarray, v: np.ndarray, n: Sequence[int], training: bool = True) -> np.ndarray:
    """:func:`logdet_estimate` for a batch (x and v of shape ``(batch, *event)``, n of length batch)."""
    x = check_input(spec, x)
    return np.array([logdet_estimate(spec, x[i], v[i], int(n[i]), training) for i in range(x.shape[0])])


# ----------------------------------------------------------------------------- moments of the estimators

def estimator_mean(jac: np.ndarray, config: Mapping[str, Any], training: bool = True) -> float:
    """E over (v, N) of the configured estimator at J_g = ``jac``: log|det(I + J_g)| for ``exact`` and
    ``roulette`` (Theorem 1; the series converges for ρ(J_g) < 1), the m-term partial sum S_m for the
    ``series`` (eq. 3: its bias is log|det| − S_m)."""
    jac = np.asarray(jac, dtype=np.float64)
    if setting(config, "logdet") == "series":
        return float(np.sum(trace_terms(jac, exact_terms(config, training))))
    return float(np.linalg.slogdet(np.eye(jac.shape[0]) + jac)[1])


def surrogate_mean(jac: np.ndarray, config: Mapping[str, Any], training: bool = True) -> float:
    """E over (v, N) of the Neumann-gradient surrogate wᵀJ_g v (eq. 8), the quantity whose gradient the
    forward attaches, which is *not* a log-det estimate: Σ_j (−1)^j tr(J_g^{j+1}) over the gradient's
    terms, i.e. tr((I + J_g)⁻¹J_g) for the roulette (every c_j·P(N ≥ j − m) = 1) and Σ_{j<m} for the
    series. Returning it as the value biases the log-det by surrogate_mean − estimator_mean."""
    jac = np.asarray(jac, dtype=np.float64)
    dim = jac.shape[0]
    if setting(config, "logdet") == "series":
        m = exact_terms(config, training)
        powers = [np.linalg.matrix_power(jac, j + 1) for j in range(m)]
        return float(sum((-1.0) ** j * np.trace(p) for j, p in enumerate(powers)))
    return float(np.trace(np.linalg.solve(np.eye(dim) + jac, jac)))


@dataclass(frozen=True)
class VarianceReport:
    """The variance of one estimate (one probe, one draw of N) at one J_g (:func:`estimate_variance`).

    ``finite`` says whether a finite variance is certified; ``variance`` is the double series summed
    to ``terms`` terms and ``variance_upper`` adds a rigorous bound of the rest (both inf when not
    finite). ``n_variance_upper`` bounds Var_N(E_v[est | N]), the part that a draw of N shared by a
    batch does not average away. ``mean`` is the estimator's mean (:func:`estimator_mean`), ``rho``
    the spectral radius.
    """

    finite: bool
    variance: float
    variance_upper: float
    n_variance_upper: float
    mean: float
    rho: float
    terms: int
    why: str


def _fourth_moment(dim: int, probe: str) -> float:
    """E‖v‖⁴: D² + 2D for a Gaussian probe, D² for a Rademacher one."""
    return float(dim * dim + (2 * dim if probe == "gaussian" else 0))


def _power_bound(jac: np.ndarray, r: float, max_power: int) -> float | None:
    """C with ‖J^k‖₂ ≤ C·r^k for every k, or None: find K0 with ‖J^{K0}‖ ≤ r^{K0}; then
    J^{aK0+b} = (J^{K0})^a J^b gives C = max_{b<K0} ‖J^b‖ / r^b."""
    power, worst = np.eye(jac.shape[0]), 1.0
    for k in range(1, max_power + 1):
        power = power @ jac
        norm = float(spectral_norm(power))
        if norm <= r ** k:
            return worst
        worst = max(worst, norm / r ** k)
    return None


def estimate_variance(jac: np.ndarray, config: Mapping[str, Any], *, training: bool = True) -> VarianceReport:
    """Variance of one estimate of the configured stochastic estimator at J_g = ``jac``: the roulette's
    (:func:`roulette_variance`) or the series' (a finite sum of m² probe moments, exact)."""
    if setting(config, "logdet") != "series":
        return roulette_variance(jac, config, training=training)
    jac = np.asarray(jac, dtype=np.float64)
    m, probe = exact_terms(config, training), _choice(config, "probe", PROBES)
    rho = float(np.max(np.abs(np.linalg.eigvals(jac)))) if jac.size else 0.0
    return _variance_sum(jac, np.ones(m), probe, m, estimator_mean(jac, config, training), rho, tail=0.0, tail_n=0.0)


def roulette_variance(jac: np.ndarray, config: Mapping[str, Any], *, training: bool = True,
                      rel_tol: float = 1e-9, abs_tol: float = 1e-18, max_terms: int = 4096) -> VarianceReport:
    """Variance over (v, N) of one draw of the roulette estimator at J_g = ``jac``.

    E[est²] = Σ_{k,l≥1} c_{min(k,l)} E_v[a_k a_l] (term k is present iff N ≥ k − m, and
    P(N ≥ max(k,l) − m) = 1/c_{max(k,l)}), with E[vᵀAv·vᵀBv] = trA·trB + tr(ABᵀ) + tr(AB)
    (Gaussian; minus 2Σ_i A_ii B_ii for Rademacher). The sum is finite iff ρ(J)² < 1 − q for the
    geometric p(N); for the Poisson p(N), c_k grows faster than any geometric rate, so it is infinite
    unless J is nilpotent. The rest of the double sum beyond K terms is bounded through
    ‖J^k‖ ≤ C·r^k (ρ < r < √(1 − q)) and c_{min(k,l)} ≤ √(c_k c_l); the sum is extended until that
    bound is below rel_tol·variance or abs_tol·max(1, mean²) (a variance far below rounding needs no
    more digits), ``variance_upper`` staying a rigorous upper bound either way.
    """
    jac = np.asarray(jac, dtype=np.float64)
    dim = jac.shape[0]
    roulette, m, probe = roulette_of(config), exact_terms(config, training), _choice(config, "probe", PROBES)
    rho = float(np.max(np.abs(np.linalg.eigvals(jac)))) if dim else 0.0
    mean = float(np.linalg.slogdet(np.eye(dim) + jac)[1])

    def infinite(why: str) -> VarianceReport:
        return VarianceReport(False, np.inf, np.inf, np.inf, mean, rho, 0, why)

    def coefficients(K: int) -> np.ndarray:
        return np.array([roulette.coefficient(k, m) for k in range(1, K + 1)])

    if roulette.dist == "poisson":
        if np.any(np.linalg.matrix_power(jac, dim) != 0.0):
            return infinite(f"Poisson p(N): c_k grows faster than ρ(J)^(-2k) for any ρ > 0 (ρ = {rho:.3g})")
        return _variance_sum(jac, coefficients(dim + m), probe, dim + m, mean, rho, tail=0.0, tail_n=0.0)
    limit = np.sqrt(1.0 - roulette.param)
    if rho >= limit:
        return infinite(f"geometric p(N) with q = {roulette.param}: ρ(J)² = {rho ** 2:.4g} ≥ 1 − q = {limit ** 2:.4g}")
    r = 0.5 * (rho + limit)
    c_bound = _power_bound(jac, r, max_terms)
    if c_bound is None:
        return infinite(f"could not certify ‖J^k‖ ≤ C·r^k with r = {r:.4g} within {max_terms} powers")
    theta = r / limit
    # c_k = (1 − q)^-(k − m − 1) must stay finite in float64 (the products c·E[a_k a_l] are small).
    max_terms = min(max_terms, m + 1 + int(250.0 * np.log(10.0) / -np.log(1.0 - roulette.param)))
    K = min(max(64, m + 1), max_terms)
    while True:
        b = np.array([np.sqrt(roulette.coefficient(k, m)) * c_bound * r ** k / k for k in range(1, K + 1)])
        rest = c_bound * limit ** (m + 1) * theta ** (K + 1) / ((K + 1) * (1.0 - theta))
        spread = rest * (2.0 * b.sum() + rest)
        report = _variance_sum(jac, coefficients(K), probe, K, mean, rho,
                               tail=_fourth_moment(dim, probe) * spread, tail_n=dim * dim * spread)
        floor = max(rel_tol * report.variance, abs_tol * max(1.0, mean ** 2))
        if report.variance_upper - report.variance <= floor or 2 * K > max_terms:
            return report
        K *= 2


def _variance_sum(jac: np.ndarray, coeff: np.ndarray, probe: str, K: int, mean: float, rho: float,
                  *, tail: float, tail_n: float) -> VarianceReport:
    """Σ_{k,l≤K} c_{min(k,l)} E_v[a_k a_l] − mean² and the same for the traces only (see above);
    ``coeff`` holds c_1, …, c_K (non-decreasing, as 1/P(N ≥ k − m) is)."""
    dim = jac.shape[0]
    powers = [np.eye(dim)]
    for _ in range(2 * K):
        powers.append(powers[-1] @ jac)
    stack = np.stack(powers[1:K + 1]) if K else np.zeros((0, dim, dim))
    traces = np.array([np.trace(p) for p in powers])
    s = _signs(K)
    k = np.arange(1, K + 1)
    frob = np.einsum("kij,lij->kl", stack, stack)
    moments = np.outer(traces[k], traces[k]) + frob + traces[k[:, None] + k[None, :]]
    if probe == "rademacher":
        diag = np.einsum("kii->ki", stack)
        moments = moments - 2.0 * diag @ diag.T
    cmin = coeff[np.minimum.outer(k, k) - 1] if K else np.zeros((0, 0))
    weights = cmin * np.outer(s, s)
    second = float(np.sum(weights * moments))
    second_n = float(np.sum(weights * np.outer(traces[k], traces[k])))
    variance = max(second - mean ** 2, 0.0)
    variance_n = max(second_n - mean ** 2, 0.0)
    return VarianceReport(True, variance, variance + tail, variance_n + tail_n, mean, rho, K, "finite")


# ----------------------------------------------------------------------------- concentration

@dataclass(frozen=True)
class Concentration:
    """Sub-gamma constants of one estimate X (one probe, one draw of N) at one J_g
    (:func:`concentration`): for every |λ| < 1/``scale``,

        log E exp(λ(X − E X)) ≤ λ²·``variance_factor`` / (2(1 − ``scale``·|λ|)),

    so that the mean of n independent estimates strays from E X by more than
    √(2·variance_factor·t/n) + scale·t/n with probability at most 2e^(−t) (Boucheron, Lugosi and
    Massart, Concentration Inequalities, §2.4). ``finite`` is False where no such constants are
    certified (``why`` says why). ``bound`` is sup |X − E X| where X is bounded (Rademacher probes),
    else inf.
    """

    finite: bool
    variance_factor: float
    scale: float
    bound: float
    mean: float
    why: str


def _partial_matrices(jac: np.ndarray, config: Mapping[str, Any], training: bool) -> tuple[list[np.ndarray], float] | str:
    """M_T = Σ_{k≤T} c_k s_k J^k for every number of terms T the estimator can use, and a bound on
    ‖M_T − M_K‖₂ for all the T beyond the last one listed; or why no such bound exists."""
    m = exact_terms(config, training)
    dim = jac.shape[0]
    if setting(config, "logdet") == "series":
        return [sum((s * p for s, p in zip(_signs(m), _stack_powers(jac, m))), np.zeros((dim, dim)))], 0.0
    roulette = roulette_of(config)
    if roulette.dist == "poisson":
        return "Poisson p(N): its weights 1/P(N ≥ k) grow faster than any geometric rate"
    rate = 1.0 - roulette.param
    rho = float(np.max(np.abs(np.linalg.eigvals(jac)))) if dim else 0.0
    if rho >= rate:
        return (f"geometric p(N) with q = {roulette.param}: ρ(J) = {rho:.4g} ≥ 1 − q, so c_k·J^k does not "
                "decay and a single estimate is unbounded")
    r = 0.5 * (rho + rate)
    c_bound = _power_bound(jac, r, 4096)
    if c_bound is None:
        return f"could not certify ‖J^k‖ ≤ C·r^k with r = {r:.4g}"
    theta = r / rate
    K = m + roulette.support_min
    matrices, current, power = [], np.zeros((dim, dim)), np.eye(dim)
    for k in range(1, 10_000):
        power = power @ jac
        current = current + roulette.coefficient(k, m) * _signs(k)[-1] * power
        if k >= K:
            matrices.append(current.copy())
            rest = c_bound * rate ** (m + 1) * theta ** (k + 1) / ((k + 1) * (1.0 - theta))
            if rest <= 1e-12 * max(1.0, float(np.abs(current).max())):
                return matrices, rest
    return f"the partial sums did not settle within 10000 terms (θ = {theta:.6f})"


def _stack_powers(jac: np.ndarray, K: int) -> list[np.ndarray]:
    powers, power = [], np.eye(jac.shape[0])
    for _ in range(K):
        power = power @ jac
        powers.append(power)
    return powers


def concentration(jac: np.ndarray, config: Mapping[str, Any], *, training: bool = True,
                  variance: VarianceReport | None = None) -> Concentration:
    """Sub-gamma constants (:class:`Concentration`) of one estimate of the configured stochastic
    estimator at J_g = ``jac``.

    An estimate with T terms is X = vᵀM_T v, M_T = Σ_{k≤T} c_k s_k J^k, with T = m + N (roulette) or m
    (series). Write S_T for the symmetric part of M_T, β = sup_T ‖S_T‖₂, F = sup_T ‖S_T‖_F and R the
    range of tr M_T over T (all finite when c_k·‖J^k‖ decays geometrically: ρ(J) < 1 − q for the
    geometric p(N); never for the Poisson one).

    * Rademacher probes: |X| ≤ D·β, so X − E X is bounded by b = D·β + |E X| and Bernstein's
      inequality gives variance_factor = Var X (:func:`estimate_variance`) and scale = b/3.
    * Gaussian probes: given T, vᵀS_T v − tr S_T is a Gaussian chaos with
      log E e^{λ(·)} ≤ λ²‖S_T‖_F²/(1 − 2|λ|‖S_T‖₂) (BLM Example 2.12), and tr M_T − E X is centred and
      confined to an interval of length R (Hoeffding: ≤ λ²R²/8); as v and N are independent,
      variance_factor = 2F² + R²/4 and scale = 2β.

    ``variance`` may pass :func:`estimate_variance`'s report at the same point, if already computed.
    """
    jac = np.asarray(jac, dtype=np.float64)
    dim = jac.shape[0]
    mean = estimator_mean(jac, config, training)
    partial = _partial_matrices(jac, config, training)
    if isinstance(partial, str):
        return Concentration(False, np.inf, np.inf, np.inf, mean, partial)
    matrices, rest = partial
    sym = [0.5 * (M + M.T) for M in matrices]
    beta = max(float(np.max(np.abs(np.linalg.eigvalsh(S)))) if dim else 0.0 for S in sym) + rest
    if _choice(config, "probe", PROBES) == "rademacher":
        variance = variance or estimate_variance(jac, config, training=training)
        if not variance.finite:
            return Concentration(False, np.inf, np.inf, np.inf, mean, variance.why)
        bound = dim * beta + abs(mean)
        return Concentration(True, variance.variance_upper, bound / 3.0, bound, mean, "bounded (Rademacher probe)")
    frob = max(float(np.linalg.norm(S)) for S in sym) + np.sqrt(dim) * rest
    traces = [float(np.trace(M)) for M in matrices]
    spread = max(traces) - min(traces) + 2.0 * dim * rest
    return Concentration(True, 2.0 * frob ** 2 + spread ** 2 / 4.0, 2.0 * beta, np.inf, mean,
                         "sub-gamma (Gaussian probe)")


# ----------------------------------------------------------------------------- registration

def _kind(name: str, conv: bool) -> Kind:
    return Kind(
        name=name, family=FAMILY, forward=residual_forward, event_shape=shape_of,
        init_params=lambda config, rng: init_params(config, rng, conv),
        check_config=lambda config: check_config(config, conv),
        config_keys=frozenset({"shape", "hidden", *DEFAULTS, *(("kernels",) if conv else ("orders", "learn_orders"))}),
        summary=("x + g(x), g a Lipschitz-constrained "
                 + ("CNN (LipSwish → 3×3 → 1×1 → 3×3 conv)" if conv else "MLP") + ", coeff < 1"),
        extras={"logdet_estimate": logdet_estimate, "gradient_estimate": gradient_estimate,
                "roulette_variance": roulette_variance, "weight_norms": weight_norms},
        defaults=DEFAULTS,
    )


register(_kind("residual_mlp", conv=False))
register(_kind("residual_conv", conv=True))
