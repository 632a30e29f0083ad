"""Residual blocks (``residual_mlp``, ``residual_conv``): spec strategies and the estimator properties.

The generic properties run on specs with ``logdet="exact"`` (the forward's log-det is then
deterministic and comparable). Every estimator option is an axis of the strategies here
(:func:`estimator_configs`: estimator, n_exact_terms, eval_exact_terms, n_samples, the draw of N per
sample or per batch, p(N) and its parameter, probe, neumann_grad, grad_in_forward; the layout's activation, coeff up to 0.99, MLP norm
orders 2, 1, ∞, mixed and learned, conv kernel sizes 1, 3 and 5), and every mode-dependent path is
drawn in each mode it has (``mode``: training or evaluation, where m = max(n_exact_terms,
eval_exact_terms)). The properties hold the stochastic estimators to the reference
(:mod:`flowspec.reference.residual`, Theorems 1–2 of Residual Flows):

1. ``roulette_estimate_exact`` (white-box, hook ``logdet_estimate``): in either mode, est(v, n)
   equals the reference's for every n ≤ M, and the exact finite identity Σ p(n)·est(v, n) +
   P(N > M)·est(v, M) = S_{m+M}(v) holds for both; ``roulette_sampler_fits`` (hook
   ``roulette_draws``): the draws of N that the implementation's forwards make fit p(N) exactly, in
   either draw mode (per sample: the rows of one forward; per batch: the shared draw of each forward);
   ``logdet_forward_exact`` checks that a per-batch forward shares its draw across a batch.
2. ``logdet_forward_exact`` (white-box, hook ``logdet_noise`` and ``reseed``): the *forward's* value
   — on every value path (under no_grad; with gradients recorded, as a training loss is, through the
   Neumann surrogate or the series, with or without backward-in-forward), in both modes, averaged
   over n_samples probes — equals the reference's estimator for the very noise that forward drew.
3. ``estimate_unbiased_statistical`` (black-box): the mean of many forward log-dets, along every value
   path (training or evaluation mode; no_grad, or gradients recorded through the Neumann surrogate,
   with or without backward-in-forward, or through the series itself), is what the estimator promises
   (log|det| for the roulette, S_m for the series), at a stated resolution and a false-alarm rate
   ≤ 1e-6 per test (see :func:`check_unbiased`).
4. ``neumann_gradient_exact`` (white-box, hook ``logdet_estimate_vjp``): the expectation over N of the
   Neumann gradient equals the reference's partial Neumann sum, in both modes.
5. ``backward_in_forward_matches`` (white-box): gradients with backward-in-forward equal those
   without, and the reference's, with per-sample and uniform weights and several probes per sample.
6. ``logdet_gradient_per_sample`` (black-box, ``reseed``): with the noise fixed, the gradient of
   Σ u_i·est_i with distinct weights is Σ u_i times each sample's own gradient.
7. ``inverse_error_bound`` (black-box, ``parameters``): at a chosen ``inverse_rtol`` on a map whose
   Jacobian has an eigenvalue at −L (the fixed point's worst case), ‖x̂ − x‖ ≤ L·rtol·max(‖y‖, 1) as
   documented; ``inverse_contraction`` (black-box): the iterates contract at the rate L and the backward error is
   within the implementation's own stopping rule; ``noncontractive_config_rejected`` and
   ``inverse_nonconvergence_reported``.

Norm bounds are in :mod:`.lipschitz`; gradients through the inverse in :mod:`.gradients`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import assume, strategies as st

from flowspec import reference
from flowspec.errors import ConvergenceError
from flowspec.reference import residual as R
from flowspec.reference.lipschitz import ACTIVATIONS
from flowspec.reference.norms import spectral_norm
from flowspec.spec import FlowSpec

from . import finite_diff, namespace, stats, strategies
from .covering import axis, declare_axes
from .property import CheckContext, Inconclusive, PropertyFailure, prop
from .seeding import rng
from .strategies import BATCH, SEEDS, event_size, from_configs, register_specs, sizes
from .tolerances import EPS, condition_number, tolerance

KINDS = ("residual_mlp", "residual_conv")
DRAWS_CHECKED = 6  # est(v, n) is compared for n = n_min, …, n_min + DRAWS_CHECKED
SAMPLER_DRAWS = 20000
SHARING_BATCH = 32  # a forward's batch in the check that a per-batch draw is shared

# ----------------------------------------------------------------------------- axes

BOOLS = (False, True)
COEFFS = (0.5, 0.9, 0.97, 0.99)
ORDERS = ("2", "1", "inf", "mixed", "learned")  # MLP norm orders: uniform, mixed per layer, learned (App. D)
ORDER_VALUES = {"2": 2.0, "1": 1.0, "inf": float("inf")}
KERNEL_SIZES = (1, 3, 5)
DEPTHS = (0, 1, 2)  # hidden layers
STOCHASTIC = ("series", "roulette")
DIST_PARAMS = {"geometric": (0.3, 0.5, 0.7), "poisson": (1.0, 2.0, 3.0)}
EXACT_TERMS = (0, 1, 2, 3)
EVAL_EXACT_TERMS = (1, 5, 20)
SAMPLE_COUNTS = (1, 2, 3)
MODES = ("training", "evaluation")

# The forward's value paths: (gradients recorded, neumann_grad, grad_in_forward), and with the mode
# (training first). Each is one axis, so that a run's examples take every path: two-valued axes drawn
# side by side pair the same values in every example of a run (a covering design of eight examples
# cycles each with period two).
GRAD_PATHS = {
    "no_grad": (False, True, True),
    "grad/neumann/in_forward": (True, True, True),
    "grad/neumann": (True, True, False),
    "grad/series/in_forward": (True, False, True),
    "grad/series": (True, False, False),
}
PATHS = {f"{mode}/{path}": (mode == "training",) + GRAD_PATHS[path] for mode, path in (
    ("training", "no_grad"), ("training", "grad/neumann/in_forward"), ("training", "grad/neumann"),
    ("training", "grad/series/in_forward"), ("training", "grad/series"), ("evaluation", "no_grad"),
    ("evaluation", "grad/neumann/in_forward"), ("evaluation", "grad/series"))}
declare_axes(KINDS, activation=ACTIVATIONS, coeff=COEFFS, estimator=STOCHASTIC, dist=R.DISTRIBUTIONS,
             geometric_q=DIST_PARAMS["geometric"], poisson_mean=DIST_PARAMS["poisson"], n_exact_terms=EXACT_TERMS,
             eval_exact_terms=EVAL_EXACT_TERMS, n_samples=SAMPLE_COUNTS, draw=R.DRAWS, probe=R.PROBES, neumann_grad=BOOLS,
             grad_in_forward=BOOLS, mode=MODES, gradient_path=tuple(GRAD_PATHS), forward_path=tuple(PATHS))
declare_axes(KINDS, depth=DEPTHS)
declare_axes("residual_mlp", orders=ORDERS, mixed_order=tuple(ORDER_VALUES), dim=range(1, 7))
declare_axes("residual_conv", kernel=KERNEL_SIZES, channels=range(1, 3), height=range(1, 5), width=range(1, 5))


# ----------------------------------------------------------------------------- strategies

def _widths(draw: Any, widest: int) -> list[int]:
    """Widths for the deepest layout, always all drawn: under the covering design the depth is pinned
    outside hypothesis' data, so what hypothesis draws must not depend on it."""
    return [draw(sizes(1, widest)) for _ in range(max(DEPTHS))]


@st.composite
def _mlp_layout(draw) -> dict:
    """D ≤ 6, up to two hidden layers of width ≤ 8, norm orders (:data:`ORDERS`)."""
    orders = draw(axis("orders", ORDERS))
    depth = max(draw(axis("depth", DEPTHS)), 1 if orders == "learned" else 0)  # learned orders live in hidden spaces
    hidden = _widths(draw, 8)[:depth]
    n_layers = depth + 1
    if orders in ORDER_VALUES:
        layout = {"orders": [ORDER_VALUES[orders]] * n_layers}
    elif orders == "mixed":
        layout = {"orders": [ORDER_VALUES[draw(axis("mixed_order", tuple(ORDER_VALUES)))] for _ in range(n_layers)]}
    else:
        layout = {"orders": [2.0] * n_layers, "learn_orders": True}
    return {"shape": [draw(sizes(1, 6, "dim"))], "hidden": hidden, **layout}


@st.composite
def _conv_layout(draw) -> dict:
    """C ≤ 2, H, W ≤ 4, up to two hidden layers of ≤ 4 channels, kernel sizes 1, 3, 5 per layer."""
    hidden = _widths(draw, 4)[:draw(axis("depth", DEPTHS))]
    kernels = [draw(axis("kernel", KERNEL_SIZES)) for _ in range(len(hidden) + 1)]
    shape = [draw(sizes(1, 2, "channels")), draw(sizes(1, 4, "height")), draw(sizes(1, 4, "width"))]
    return {"shape": shape, "hidden": hidden, "kernels": kernels}


def layout(kind: str) -> st.SearchStrategy:
    """Architecture of a small block of ``kind`` with its activation and coeff."""
    arch = _mlp_layout() if kind == "residual_mlp" else _conv_layout()
    return st.builds(lambda a, activation, coeff: {**a, "activation": activation, "coeff": coeff},
                     arch, axis("activation", ACTIVATIONS), axis("coeff", COEFFS))


@st.composite
def estimator_settings(draw, estimators: tuple[str, ...] = STOCHASTIC, fixed: frozenset[str] = frozenset()) -> dict:
    """Every option of the stochastic estimators (module docstring), each an axis; the ``fixed`` ones
    are not drawn."""
    estimator = draw(axis("estimator", estimators))
    dist = draw(axis("dist", R.DISTRIBUTIONS))
    param = draw(axis("geometric_q" if dist == "geometric" else "poisson_mean", DIST_PARAMS[dist]))
    terms = EXACT_TERMS if estimator == "roulette" else EXACT_TERMS[1:]  # the series needs a term
    options = {"n_exact_terms": terms, "eval_exact_terms": EVAL_EXACT_TERMS, "n_samples": SAMPLE_COUNTS,
               "draw": R.DRAWS, "probe": R.PROBES, "neumann_grad": BOOLS, "grad_in_forward": BOOLS}
    drawn = {key: draw(axis(key, values)) for key, values in options.items() if key not in fixed}
    return {"logdet": estimator, "dist": dist, "dist_param": param, **drawn}


def estimator_configs(kind: str, estimators: tuple[str, ...] = STOCHASTIC, **fixed: Any) -> st.SearchStrategy:
    """Configs of ``kind`` with a stochastic estimator and every option drawn but the ``fixed`` ones."""
    return st.builds(lambda a, b: {**a, **b, **fixed}, layout(kind), estimator_settings(estimators, frozenset(fixed)))


def roulette_configs(kind: str, **fixed: Any) -> st.SearchStrategy:
    """Configs of ``kind`` with the roulette estimator (any p(N), exact terms, probe, gradient mode)."""
    return estimator_configs(kind, ("roulette",), **fixed)


def _exact_specs(kind: str) -> st.SearchStrategy:
    return from_configs(kind, layout(kind).map(lambda c: {**c, "logdet": "exact"}))


register_specs("residual_mlp")(lambda: _exact_specs("residual_mlp"))
register_specs("residual_conv")(lambda: _exact_specs("residual_conv"))


def _spec(ctx: CheckContext, configs: st.SearchStrategy) -> FlowSpec:
    return ctx.draw(from_configs(ctx.kind, configs), "spec")


def _with(spec: FlowSpec, **changes: Any) -> FlowSpec:
    return FlowSpec(spec.kind, {**spec.config, **changes}, spec.params)


def _probes(ctx: CheckContext, spec: FlowSpec, count: int) -> np.ndarray:
    """``count`` probes of the spec's kind (:func:`.strategies.probes`)."""
    return strategies.probes(ctx, R.shape_of(spec.config), R.setting(spec.config, "probe"), count)


def _draw_range(spec: FlowSpec) -> np.ndarray:
    n_min = R.roulette_of(spec.config).support_min
    return np.arange(n_min, n_min + DRAWS_CHECKED + 1)


def _jacobian(spec: FlowSpec, x: np.ndarray) -> np.ndarray:
    return np.asarray(R.g_jacobian(spec, x))


def _mode(ctx: CheckContext, flow: Any) -> bool:
    """Draw the mode (axis ``mode``), put ``flow`` in it and return whether it is training."""
    training = ctx.draw(axis("mode", MODES), "mode") == "training"
    ctx.adapter.set_training(flow, training)
    return training


def _reference_estimates(spec: FlowSpec, x: np.ndarray, v: np.ndarray, n: np.ndarray,
                         training: bool) -> tuple[np.ndarray, float]:
    """The reference's estimates for rows (x, v, n) — one Jacobian per distinct x — and the largest
    :func:`~flowspec.reference.residual.estimate_scale` among them, the magnitude an estimate's
    rounding is relative to."""
    jacobians: dict[bytes, np.ndarray] = {}
    for row in x:
        jacobians.setdefault(row.tobytes(), _jacobian(spec, row))
    rows = [(jacobians[x[i].tobytes()], v[i].reshape(-1), int(n[i])) for i in range(len(x))]
    estimates = np.array([float(R.estimate_from_jacobian(spec.config, j, vi, ni, training)) for j, vi, ni in rows])
    return estimates, max(R.estimate_scale(spec.config, j, vi, ni, training) for j, vi, ni in rows)


def _assert_estimates(ctx: CheckContext, actual: Any, expected: Any, scale: float, size: int, what: str) -> None:
    """The ``estimate`` row on errors relative to max(1, ``scale``, |expected|) (``scale`` from
    :func:`_reference_estimates`)."""
    scale = max(1.0, scale)
    ctx.assert_close(np.asarray(actual) / scale, np.asarray(expected) / scale, "estimate", size,
                     f"{what} (relative to the terms' size {scale:.3g})")


# ----------------------------------------------------------------------------- 1. exact estimator

@prop("roulette_estimate_exact", requires=["white_box", "logdet_estimate", "train_eval"], kinds=KINDS)
def roulette_estimate_exact(ctx: CheckContext) -> None:
    """For a probe v, est(v, n) equals the reference's for n = n_min … M — with m exact terms in training
    and max(m, eval_exact_terms) in evaluation mode — and both satisfy the exact finite identity
    Σ_{n≤M} p(n)·est(v, n) + P(N > M)·est(v, M) = S_{m+M}(v) (Theorem 1, eq. 6), p(n) being the
    named distribution's."""
    spec = _spec(ctx, roulette_configs(ctx.kind))
    x = ctx.draw_input(spec, batch=2)
    v = _probes(ctx, spec, 2)
    ns = _draw_range(spec)
    rows = np.repeat(np.arange(2), len(ns))
    n_rows = np.tile(ns, 2)
    flow = ctx.load(spec)
    training = _mode(ctx, flow)
    actual = ctx.adapter.call_hook(flow, "logdet_estimate", x[rows], v[rows], n_rows)
    expected, scale = _reference_estimates(spec, x[rows], v[rows], n_rows, training)
    size = event_size(spec)
    _assert_estimates(ctx, actual, expected, scale, size, "est(v, n) for n = n_min … M")
    roulette, m, M = R.roulette_of(spec.config), R.exact_terms(spec.config, training), int(ns[-1])
    for i in range(2):
        partial = np.sum(R.hutchinson_terms(_jacobian(spec, x[i]), v[i].reshape(-1), m + M))
        for name, values in (("reference", expected), ("implementation", actual)):
            combined = R.expectation_over_n(list(values[rows == i]), roulette, M)
            _assert_estimates(ctx, combined, partial, scale, size, f"finite identity of the {name}'s est(v, n)")


@prop("roulette_sampler_fits", requires=["black_box", "roulette_draws"], kinds=KINDS)
def roulette_sampler_fits(ctx: CheckContext) -> None:
    """The draws of N that the implementation's forwards make (hook ``roulette_draws``: per sample, the
    rows of one forward; per batch, one shared draw per forward and probe) fit the named p(N)
    (geometric from 1, Poisson from 0): every draw in the support and each count within its exact
    binomial law (false alarm ≤ 1e-6 per test). Both draw modes are an axis of the configs."""
    spec = _spec(ctx, roulette_configs(ctx.kind))
    seed = ctx.draw(SEEDS, "sampler seed")
    draws = np.asarray(ctx.adapter.call_hook(ctx.instantiate(spec), "roulette_draws", SAMPLER_DRAWS, seed))
    roulette = R.roulette_of(spec.config)
    ctx.require(draws.shape == (SAMPLER_DRAWS,), f"asked for {SAMPLER_DRAWS} draws, got shape {draws.shape}")
    problems = stats.discrete_fit_failures(draws, roulette.pmf, roulette.support_min, stats.per_example_alpha())
    ctx.require(not problems, f"draws of N do not fit the {roulette.dist}({roulette.param}) p(N): " + "; ".join(problems))
    ctx.record(0.0, 0.0)


# ----------------------------------------------------------------------------- 2. the forward's value

def _check_noise(ctx: CheckContext, spec: FlowSpec, v: np.ndarray, n: np.ndarray, batch: int) -> None:
    """The noise a forward reports: n_samples probes per sample (Rademacher ones ±1) and draws of N
    in the support of p(N)."""
    rows = R.setting(spec.config, "n_samples") * batch
    shape = (rows,) + R.shape_of(spec.config)
    ctx.require(v.shape == shape and n.shape == (rows,),
                f"the forward's noise has shapes {v.shape}, {n.shape}; n_samples = "
                f"{R.setting(spec.config, 'n_samples')} probes per sample need {shape}, {(rows,)}")
    if R.setting(spec.config, "probe") == "rademacher":
        ctx.require(bool(np.all(np.abs(v) == 1.0)), "Rademacher probes must have entries ±1")
    if R.setting(spec.config, "logdet") == "roulette":
        ctx.require(bool(np.all(n >= R.roulette_of(spec.config).support_min)), f"draws of N below the support: {n}")


def _check_sharing(ctx: CheckContext, spec: FlowSpec) -> None:
    """The spec as a roulette with per-batch draws shares each probe's N across a batch of
    :data:`SHARING_BATCH` samples (which per-sample draws all match with probability at most
    max p(n)^(SHARING_BATCH − 1) < 1e-4). Checked on every example whatever the drawn estimator and
    draw, so that the pairing of those two axes cannot leave the per-batch roulette unchecked."""
    config = {**spec.config, "logdet": "roulette", "draw": "batch"}
    flow = ctx.load(FlowSpec(spec.kind, config, spec.params))
    _, n = ctx.adapter.call_hook(flow, "logdet_noise", SHARING_BATCH)
    per_probe = np.rint(np.asarray(n)).astype(int).reshape(-1, SHARING_BATCH)
    ctx.require(bool(np.all(per_probe == per_probe[:, :1])),
                f"draw='batch' must share each probe's N across the batch; a forward of {SHARING_BATCH} drew "
                f"{per_probe.tolist()}")


@prop("logdet_forward_exact", requires=["white_box", "grad", "train_eval", "reseed", "logdet_noise"], kinds=KINDS)
def logdet_forward_exact(ctx: CheckContext) -> None:
    """The forward's log-det along every value path (axis ``gradient_path``: under no_grad or with
    gradients recorded — what a training loss sees — through the Neumann surrogate or the series
    itself, with or without backward-in-forward), in training and then in evaluation mode, is the
    mean over the sample's n_samples probes of the reference's estimate for the probes and draws
    that very forward used (the hook ``logdet_noise`` replays them after the same ``reseed``):
    est(v, N) with m = n_exact_terms in training and max(m, eval_exact_terms) in evaluation, or the
    m-term series. So the Neumann surrogate cannot stand in for the value, nor evaluation mode ignore
    its exact terms."""
    path = ctx.draw(axis("gradient_path", tuple(GRAD_PATHS)), "gradient path")
    grad, neumann, in_forward = GRAD_PATHS[path]
    spec = _spec(ctx, estimator_configs(ctx.kind, neumann_grad=neumann, grad_in_forward=in_forward))
    x = ctx.draw_input(spec, batch=BATCH)
    flow = ctx.load(spec)
    seed = ctx.draw(SEEDS, "noise seed")
    _check_sharing(ctx, spec)
    for training in (True, False):
        ctx.adapter.set_training(flow, training)
        _check_forward_noise(ctx, spec, flow, x, seed, grad, training, path)


def _check_forward_noise(ctx: CheckContext, spec: FlowSpec, flow: Any, x: np.ndarray, seed: int, grad: bool,
                         training: bool, path: str) -> None:
    """:func:`logdet_forward_exact` in one mode."""
    ctx.adapter.reseed(seed)
    v, n = ctx.adapter.call_hook(flow, "logdet_noise", BATCH)
    n = np.rint(n).astype(int)
    _check_noise(ctx, spec, v, n, BATCH)
    ctx.adapter.reseed(seed)
    z, logdet = ctx.adapter.forward(flow, x, grad=grad)
    size = event_size(spec)
    ctx.assert_close(z, reference.forward(spec, x), "forward", size, "z")
    tiled = np.tile(x, (len(v) // BATCH,) + (1,) * (x.ndim - 1))
    expected, scale = _reference_estimates(spec, tiled, v, n, training)
    where = f"{'training' if training else 'evaluation'} mode, {path}"
    _assert_estimates(ctx, logdet, expected.reshape(-1, BATCH).mean(0), scale, size,
                      f"forward's log-det vs the estimator for its own noise ({where})")


# ----------------------------------------------------------------------------- 3. unbiasedness, statistical

STAT_COEFF = 0.8  # two layers: ρ(J_g) ≤ 0.64 < 1 − q, so one estimate is bounded or sub-gamma
STAT_Q = 0.3
# Exact terms: the roulette's 0 or 1, the series' 2 — so that the biases of the mistakes the test must
# resolve (:func:`_stated_biases`) are of first or second order in J_g (a 1-term series' surrogate
# equals its value; one term too few in a 3-term series is of third order).
STAT_EXACT_TERMS = {"roulette": (0, 1), "series": (2,)}
STAT_EVAL_EXACT_TERMS = 4  # evaluation mode's m (the paper's 20 costs 20 more products per estimate)
STAT_SAMPLE_COUNTS = (1, 2)
# Estimator and probe as one axis, for the same reason as :data:`PATHS`.
STAT_ESTIMATORS = ("roulette/rademacher", "roulette/gaussian", "series/rademacher", "series/gaussian")
STAT_SHAPES = {"residual_mlp": ([1], [2], [3], [4]), "residual_conv": ([1, 1, 1], [1, 1, 2], [1, 2, 1], [2, 1, 1])}
# The estimates one example spends at most to reach the resolution goal (a small convolution costs
# ~10× an MLP of the same D on a CPU) and how many go into one forward call; to reach the power check
# (:func:`check_unbiased`) it may spend up to POWER_BUDGET times as many.
STAT_BUDGET = {"residual_mlp": (1 << 17, 1 << 14), "residual_conv": (1 << 15, 1 << 12)}
POWER_BUDGET = 2
RESOLUTION_GOAL = 2.5e-4  # the smallest detectable bias the sample size aims at (absolute)
CANDIDATE_SPECS = 6
CANDIDATE_POINTS = 4
declare_axes(KINDS, statistical_estimator=STAT_ESTIMATORS)
declare_axes("residual_mlp", statistical_shape=STAT_SHAPES["residual_mlp"])
declare_axes("residual_conv", statistical_shape=STAT_SHAPES["residual_conv"])


def statistical_configs(kind: str) -> st.SearchStrategy:
    """Configs of the statistical test (see :func:`check_unbiased`): two layers at
    coeff 0.8 and a geometric p(N) with q = 0.3, so that ρ(J_g) ≤ 0.64 < 1 − q; a few exact terms,
    small events (the Hutchinson variance grows with D). N is drawn per sample: the test treats a
    forward's outputs as independent, which per-batch draws are not (they share N); a per-batch
    draw gives each output the same law, which ``roulette_sampler_fits`` and ``logdet_forward_exact``
    hold to the reference."""
    @st.composite
    def build(draw) -> dict:
        estimator, probe = draw(axis("statistical_estimator", STAT_ESTIMATORS)).split("/")
        hidden = [draw(sizes(2, 4))] if kind == "residual_mlp" else [draw(sizes(1, 2))]
        return {"shape": draw(axis("statistical_shape", STAT_SHAPES[kind])), "hidden": hidden,
                "activation": draw(axis("activation", ACTIVATIONS)), "coeff": STAT_COEFF, "logdet": estimator,
                "dist": "geometric", "dist_param": STAT_Q,
                "n_exact_terms": draw(axis("n_exact_terms", STAT_EXACT_TERMS[estimator])),
                "eval_exact_terms": STAT_EVAL_EXACT_TERMS, "n_samples": draw(axis("n_samples", STAT_SAMPLE_COUNTS)),
                "draw": "sample", "probe": probe}
    return build()


@dataclass(frozen=True)
class StatisticalPlan:
    """One pre-registered statistical test: ``outputs`` forward log-dets of ``flow`` at ``x``
    (each the mean of n_samples estimates), whose mean must lie within ``allowed`` of ``mean``."""

    flow: Any
    x: np.ndarray
    mean: float
    sd: float
    bound: float
    biases: dict[str, float]
    outputs: int
    per_call: int
    halfwidth: float
    allowed: float
    method: str
    alpha: float

    @property
    def resolution(self) -> float:
        """The smallest bias detected with probability ≥ 1 − alpha: twice ``allowed`` (the sample mean
        then lies beyond ``allowed`` from ``mean``)."""
        return 2.0 * self.allowed

    @property
    def scale(self) -> float:
        """The natural scale of the estimate: |log det| (or |S_m|) plus one output's standard deviation."""
        return abs(self.mean) + self.sd

    @property
    def power(self) -> float:
        """The smallest stated bias over the resolution (≥ 1: the test detects each of them)."""
        return min(abs(b) for b in self.biases.values()) / self.resolution

    def describe(self) -> str:
        biases = ", ".join(f"{k} {v:+.3g}" for k, v in self.biases.items())
        return (f"{self.outputs} outputs, {self.method}; smallest detectable bias {self.resolution:.3g} = "
                f"{self.resolution / self.scale:.2e} × (|mean| {abs(self.mean):.3g} + sd {self.sd:.3g}) at a "
                f"false-alarm rate {self.alpha:.1e}; biases of known mistakes here: {biases}")


def _jacobian_flow(ctx: CheckContext, spec: FlowSpec, flow: Any) -> tuple[Any, str]:
    """The flow whose finite differences give J_g, and their dtype: a float64 copy of the same flow
    where the adapter can convert (central differences in float32 are accurate to ~1e-4 only)."""
    if ctx.dtype == "float64" or not ctx.adapter.capabilities().has("convert"):
        return flow, ctx.dtype
    return ctx.adapter.convert(ctx.instantiate(spec), "float64"), "float64"


def _stated_biases(spec: FlowSpec, jac: np.ndarray, training: bool) -> dict[str, float]:
    """Biases of known mistakes at J_g, computed exactly: the Neumann surrogate returned as the value
    (every mode) and, in training mode, one term too few (series) or a draw N off by one (roulette,
    −q·(log|det| − S_m))."""
    config = spec.config
    mean = R.estimator_mean(jac, config, training)
    biases = {"surrogate as value": R.surrogate_mean(jac, config, training) - mean}
    if training:
        m = R.exact_terms(config, training)
        taus = R.trace_terms(jac, m + 1)
        if R.setting(config, "logdet") == "series":
            biases["one term too few"] = -float(taus[m - 1])
        else:
            biases["N off by one"] = -R.roulette_of(config).param * (mean - float(np.sum(taus[:m])))
    return biases


def _plan(ctx: CheckContext, spec: FlowSpec, flow: Any, x: np.ndarray, jac: np.ndarray, training: bool,
          fd_dtype: str) -> StatisticalPlan | str:
    """The test at one point (see :func:`check_unbiased`), or why the estimator's variance is not
    certified finite there."""
    config, size = spec.config, event_size(spec)
    samples = R.setting(config, "n_samples")
    variance = R.estimate_variance(jac, config, training=training)
    if not variance.finite:
        return variance.why
    alpha = stats.per_example_alpha()
    mean = R.estimator_mean(jac, config, training)
    sd = float(np.sqrt(variance.variance_upper / samples))
    kappa = condition_number(np.eye(size) + jac)
    slack = (tolerance("fd_logdet", fd_dtype, size, kappa) + tolerance("estimate", ctx.dtype, size)) * max(1.0, abs(mean) + sd)
    budget, step = STAT_BUDGET[spec.kind]
    budget, step = budget // samples, step // samples
    biases = _stated_biases(spec, jac, training)
    smallest = min(abs(b) for b in biases.values())
    bounds = R.concentration(jac, config, training=training, variance=variance)
    if bounds.finite:
        v, c = bounds.variance_factor / samples, bounds.scale / samples

        def outputs_for(resolution: float, cap: int) -> int:
            return stats.subgamma_samples(v, c, alpha, max(0.5 * resolution - slack, 1e-3 * resolution), step, cap)

        outputs = outputs_for(min(RESOLUTION_GOAL, 0.5 * smallest), budget)
        if 2.0 * (stats.subgamma_halfwidth(v, c, outputs, alpha) + slack) > smallest:
            outputs = outputs_for(smallest, POWER_BUDGET * budget)
        halfwidth = stats.subgamma_halfwidth(v, c, outputs, alpha)
        method = f"Bernstein, {bounds.why}"
    else:
        mom = stats.mom_plan(lambda b: variance.variance_upper / samples / b, budget, alpha)
        outputs, halfwidth = mom.groups * mom.group_size, mom.halfwidth
        method = f"median of {mom.groups} means of {mom.group_size} (Chebyshev; {bounds.why})"
    return StatisticalPlan(flow, x, mean, sd, bounds.bound, biases, outputs, step,
                           halfwidth, halfwidth + slack, method, alpha)


def check_unbiased(ctx: CheckContext, specs: list[FlowSpec], points: np.ndarray, *, training: bool = True,
                   grad: bool = False) -> None:
    """The statistical test of the forward's log-det mean for the candidate ``specs`` and ``points``.

    **Design.** For every candidate flow and point, J_g comes from central differences of the
    implementation's forward (of a float64 copy where the adapter converts), and the reference
    computes what the estimator promises there (log|det(I + J_g)| for the roulette in either mode,
    S_m for the series), the variance of one estimate, sub-gamma constants of one estimate
    (:func:`~flowspec.reference.residual.concentration`: with ρ(J_g) < 1 − q an estimate is bounded
    for Rademacher probes, sub-gamma for Gaussian ones) and the biases of known mistakes
    (:func:`_stated_biases`). The candidate whose smallest stated bias is largest relative to the
    resolution is tested; the number of estimates is fixed from these quantities before any is
    drawn (the fewest reaching the resolution goal, at most the kind's budget), never adapted to
    what the estimates show.

    **Test.** The mean of the forward's log-dets at that point must lie within
    h + slack of the promised value, h = √(2v·t/n) + c·t/n (Bernstein, t = log(2/α)), slack the
    finite-difference Jacobian's error in the promised value plus the estimate's rounding. A
    Rademacher output outside the range a correct estimator can produce fails at once (no false
    alarm). Where no sub-gamma constants exist but the variance is finite, a median of means with
    Chebyshev's bound takes over; where the variance is not certified finite, the result is
    *inconclusive*. The batch's estimates are independent (each sample and probe draws its own
    noise: the documented contract of a forward).

    **False alarms and power.** α = 1e-6 over the most examples a profile runs
    (:func:`~.stats.per_example_alpha`), per example; one test per example. Any bias ≥ 2(h + slack),
    the resolution, is detected with probability ≥ 1 − α; the test runs only where that resolution
    is at most each stated bias (the power check; otherwise hypothesis draws another example). Its
    record is (|error|, h + slack) relative to the natural scale |mean| + sd; a failure's message
    states the resolution, the scale and the stated biases.
    """
    plans, why = [], None
    for spec in specs:
        flow = ctx.instantiate(spec)
        ctx.adapter.set_training(flow, training)
        jac_flow, fd_dtype = _jacobian_flow(ctx, spec, flow)
        size = event_size(spec)
        for point in points:
            x = point.reshape((1,) + R.shape_of(spec.config))
            jac_f = finite_diff.jacobian(lambda p: ctx.adapter.forward(jac_flow, p)[0], x, fd_dtype,
                                         namespace.kind(spec.kind).domain)[0]
            plan = _plan(ctx, spec, flow, x, jac_f - np.eye(size), training, fd_dtype)
            if isinstance(plan, str):
                why = plan
            else:
                plans.append(plan)
    if not plans:
        raise Inconclusive(f"no finite-variance guarantee: {why}")
    plan = max(plans, key=lambda p: p.power)
    assume(plan.power >= 1.0)
    _run_plan(ctx, plan, grad)


def _run_plan(ctx: CheckContext, plan: StatisticalPlan, grad: bool) -> None:
    """Draw the plan's outputs (in forward calls of the kind's batch size) and judge their mean."""
    total, drawn, worst = 0.0, 0, 0.0
    while drawn < plan.outputs:
        count = min(plan.per_call, plan.outputs - drawn)
        _, logdet = ctx.adapter.forward(plan.flow, np.repeat(plan.x, count, axis=0), grad=grad)
        ctx.require(logdet.shape == (count,) and bool(np.all(np.isfinite(logdet))),
                    f"the forward's log-dets have shape {logdet.shape} or non-finite values")
        worst = max(worst, float(np.max(np.abs(logdet - plan.mean))))
        total += float(np.sum(logdet))
        drawn += count
    if np.isfinite(plan.bound) and worst > plan.bound * (1.0 + 1e-6) + plan.allowed:
        raise PropertyFailure(f"a log-det estimate lies {worst:.4g} from its mean {plan.mean:.6g}, beyond the "
                              f"{plan.bound:.4g} a correct estimator can reach ({plan.describe()})", worst, plan.bound)
    error = abs(total / drawn - plan.mean)
    ctx.record(error / plan.scale, plan.allowed / plan.scale)
    if error > plan.allowed:
        raise PropertyFailure(f"the mean of {drawn} forward log-dets is {total / drawn:.6g}, the estimator's mean is "
                              f"{plan.mean:.6g}: off by {error:.3g} > {plan.allowed:.3g} ({plan.describe()})",
                              error / plan.scale, plan.allowed / plan.scale)


@prop("estimate_unbiased_statistical", requires=["black_box", "grad", "train_eval"], kinds=KINDS)
def estimate_unbiased_statistical(ctx: CheckContext) -> None:
    """The forward's log-det has the estimator's mean — log|det| (roulette, both modes) or S_m (series)
    — along every value path (axis ``forward_path``: mode, gradients recorded or not, Neumann
    surrogate or the series' own gradient, backward-in-forward or not), at a pre-registered sample
    size, a false alarm ≤ 1e-6 per test and a stated resolution (:func:`check_unbiased`)."""
    cfg = ctx.draw(statistical_configs(ctx.kind), "config")
    path = ctx.draw(axis("forward_path", tuple(PATHS)), "forward path")
    training, grad, neumann, in_forward = PATHS[path]
    cfg = {**cfg, "neumann_grad": neumann, "grad_in_forward": in_forward}
    seeds = ctx.draw(st.lists(SEEDS, min_size=CANDIDATE_SPECS, max_size=CANDIDATE_SPECS), "parameter seeds")
    specs = [reference.init_spec(ctx.kind, cfg, rng("statistical spec", s)) for s in seeds]
    points = strategies.sample_array(specs[0], ctx.draw(SEEDS, "points"), 1.0, CANDIDATE_POINTS)
    check_unbiased(ctx, specs, points, training=training, grad=grad)


# ----------------------------------------------------------------------------- 4. Neumann gradients

def _vjp(ctx: CheckContext, flow: Any, x: np.ndarray, v: np.ndarray, n: np.ndarray, z_weight: np.ndarray,
         logdet_weight: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    return ctx.adapter.call_hook(flow, "logdet_estimate_vjp", x, v, n, z_weight, logdet_weight)


def _row_gradients(spec: FlowSpec, x: np.ndarray, v: np.ndarray, n: np.ndarray,
                   training: bool) -> list[tuple[dict[str, np.ndarray], np.ndarray]]:
    """The reference's gradient of the estimator for each row (v, n) of sample row % batch."""
    return [R.gradient_estimate(spec, x[row % len(x)], v[row], int(n[row]), training) for row in range(len(v))]


def _reference_vjp(spec: FlowSpec, x: np.ndarray, rows: list[tuple[dict[str, np.ndarray], np.ndarray]],
                   z_weight: np.ndarray, logdet_weight: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Σ z_weight·f(x) (exact) + Σ_i logdet_weight_i·(mean over sample i's probes of the estimator's
    gradient), by the reference, from the per-row gradients of :func:`_row_gradients` (row s·batch + i)."""
    batch = x.shape[0]
    copies = len(rows) // batch
    g_params, g_x = reference.vjp(spec, x, z_weight, np.zeros(batch))
    g_x = g_x.copy()
    for row, (p_i, x_i) in enumerate(rows):
        i = row % batch
        g_x[i] += logdet_weight[i] / copies * x_i
        g_params = {name: g_params[name] + logdet_weight[i] / copies * p_i[name] for name in g_params}
    return g_params, g_x


def _compare_grads(ctx: CheckContext, actual: tuple, expected: tuple, size: int, what: str) -> None:
    (a_params, a_x), (e_params, e_x) = actual, expected
    ctx.require(set(a_params) == set(e_params), f"{what}: gradient names {sorted(a_params)} ≠ {sorted(e_params)}")
    ctx.assert_close(a_x, e_x, "estimate", size, f"{what}: ∂/∂x")
    for name in sorted(e_params):
        ctx.assert_close(a_params[name], e_params[name], "estimate", size, f"{what}: ∂/∂{name}")


def _neumann_terms(lip: float, tol: float) -> int:
    """Terms after which the Neumann series' remainder ‖J‖^T/(1 − ‖J‖) is below tol/1000."""
    if lip == 0.0:
        return 1
    return max(1, int(np.ceil(np.log(1e-3 * tol * (1.0 - lip)) / np.log(lip))))


def _neumann_partial(jac: np.ndarray, v: np.ndarray, terms: int) -> np.ndarray:
    """Σ_{j<terms} (−1)^j (Jᵀ)^j v."""
    rows = R.probe_powers(jac, v, terms - 1)
    return ((-1.0) ** np.arange(terms)) @ rows


@prop("neumann_gradient_exact", requires=["white_box", "logdet_estimate_vjp", "train_eval"], kinds=KINDS)
def neumann_gradient_exact(ctx: CheckContext) -> None:
    """The Neumann gradient series (Theorem 2, eq. 8), in training and evaluation mode: single draws
    equal the reference's; its expectation over N (finite identity, as per-sample weights p(n) and
    P(N > M)) equals the partial Neumann sum wᵀ(∂J/∂θ)v, w = Σ_{j≤m+M} (−1)^j (Jᵀ)^j v, for params and
    x; and the reference's partial sums tend to vᵀ(I + J)⁻¹(∂J/∂θ)v."""
    spec = _spec(ctx, roulette_configs(ctx.kind, neumann_grad=True))
    x = ctx.draw_input(spec, batch=1)
    v = _probes(ctx, spec, 1)
    flow = ctx.load(spec)
    training = _mode(ctx, flow)
    size = event_size(spec)
    roulette, m = R.roulette_of(spec.config), R.exact_terms(spec.config, training)
    ns = _draw_range(spec)
    M = int(ns[-1])
    k = len(ns)
    weights = np.array([roulette.pmf(int(n)) for n in ns])
    weights[-1] += roulette.tail(M + 1)
    zeros = np.zeros((k,) + x.shape[1:])
    params, g_x = _vjp(ctx, flow, np.repeat(x, k, 0), np.repeat(v, k, 0), ns, zeros, weights)
    jac = _jacobian(spec, x[0])
    v_flat = v[0].reshape(-1)
    expected = R.bilinear_gradient(spec, x[0], _neumann_partial(jac, v_flat, m + M + 1), v_flat)
    _compare_grads(ctx, (params, g_x.sum(0)), expected, size, "E_N of the Neumann gradient (finite identity)")
    single = _vjp(ctx, flow, x, v, ns[-1:], zeros[:1], np.ones(1))
    _compare_grads(ctx, single, _reference_vjp(spec, x, _row_gradients(spec, x, v, ns[-1:], training), zeros[:1],
                                               np.ones(1)), size,
                   f"Neumann gradient for n = {M}")
    lip = float(spectral_norm(jac))
    limit = R.bilinear_gradient(spec, x[0], _neumann_partial(jac, v_flat, _neumann_terms(lip, ctx.tol("grad", size))),
                                v_flat)
    _compare_grads(ctx, limit, R.neumann_exact(spec, x[0], v[0]), size, "reference: Neumann series vs vᵀ(I + J)⁻¹(∂J)v")


# ----------------------------------------------------------------------------- 5. backward-in-forward

@prop("backward_in_forward_matches", requires=["white_box", "logdet_estimate_vjp", "train_eval"], kinds=KINDS)
def backward_in_forward_matches(ctx: CheckContext) -> None:
    """Gradients of Σ w·z + Σ u·estimate with backward-in-forward (eq. 9) equal those without it and
    the reference's, for the same probes (n_samples per sample) and draws, in either mode, with
    per-sample weights u and with uniform ones."""
    spec = _spec(ctx, estimator_configs(ctx.kind))
    batch = 2
    copies = R.setting(spec.config, "n_samples")
    x = ctx.draw_input(spec, batch=batch)
    v = _probes(ctx, spec, copies * batch)
    offsets = rng("draws", ctx.draw(SEEDS, "draws")).integers(0, DRAWS_CHECKED + 1, len(v))
    n = _draw_range(spec)[offsets] if R.setting(spec.config, "logdet") == "roulette" else np.zeros(len(v), dtype=int)
    z_weight = ctx.draw(strategies.weights(x.shape), "z_weight")
    per_sample = ctx.draw(strategies.weights((batch,)), "logdet_weight")
    size = event_size(spec)
    in_forward = ctx.load(_with(spec, grad_in_forward=True))
    training = _mode(ctx, in_forward)
    after = ctx.load(_with(spec, grad_in_forward=False))
    ctx.adapter.set_training(after, training)
    rows = _row_gradients(spec, x, v, n, training)
    for label, u in (("per-sample weights", per_sample), ("uniform weights", np.full(batch, per_sample[0]))):
        expected = _reference_vjp(spec, x, rows, z_weight, u)
        with_bif = _vjp(ctx, in_forward, x, v, n, z_weight, u)
        _compare_grads(ctx, with_bif, _vjp(ctx, after, x, v, n, z_weight, u), size,
                       f"backward-in-forward vs without, {label}")
        _compare_grads(ctx, with_bif, expected, size, f"backward-in-forward vs reference, {label}")


# ----------------------------------------------------------------------------- 6. per-sample weights, black-box

@prop("logdet_gradient_per_sample", requires=["black_box", "grad", "reseed", "train_eval"], kinds=KINDS)
def logdet_gradient_per_sample(ctx: CheckContext) -> None:
    """With the noise fixed (``reseed`` before each call), the gradient of Σ_i u_i·est_i for distinct
    weights u is made of each sample's own gradient: w.r.t. x, row i is u_i times row i under unit
    weights; the gradient of est_i alone (one-hot weights) has row i equal to that and the other
    rows zero; w.r.t. the parameters, it is Σ_i u_i times the one-hot gradients. Black-box: no
    reference, so a backward that applies one sample's weight to the batch fails here."""
    spec = _spec(ctx, estimator_configs(ctx.kind))
    x = ctx.draw_input(spec, batch=BATCH)
    u = ctx.draw(strategies.weights((BATCH,)), "logdet_weight")
    flow = ctx.instantiate(spec)
    training = _mode(ctx, flow)
    seed = ctx.draw(SEEDS, "noise seed")
    zeros = np.zeros_like(x)

    def grads(weights: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        ctx.adapter.reseed(seed)
        return ctx.adapter.vjp(flow, x, zeros, weights)

    size = event_size(spec)
    mode = "training" if training else "evaluation"
    weighted, unit = grads(u), grads(np.ones(BATCH))
    alone = [grads(np.eye(BATCH)[i]) for i in range(BATCH)]
    ctx.assert_close(weighted[1], u.reshape((-1,) + (1,) * (x.ndim - 1)) * unit[1], "estimate", size,
                     f"∂(Σ u_i est_i)/∂x_i vs u_i·∂(Σ est_i)/∂x_i ({mode} mode)")
    for i, (_, g_x) in enumerate(alone):
        expected = np.zeros_like(g_x)
        expected[i] = unit[1][i]
        ctx.assert_close(g_x, expected, "estimate", size, f"∂est_{i}/∂x: row {i} as under unit weights, others zero")
    for name in sorted(weighted[0]):
        combined = sum(u[i] * alone[i][0][name] for i in range(BATCH))
        ctx.assert_close(weighted[0][name], combined, "estimate", size, f"∂(Σ u_i est_i)/∂{name} vs Σ u_i ∂est_i/∂{name}")
        ctx.assert_close(unit[0][name], sum(a[0][name] for a in alone), "estimate", size,
                         f"∂(Σ est_i)/∂{name} vs Σ ∂est_i/∂{name}")


# ----------------------------------------------------------------------------- 7. inverse

# inverse_rtol values per dtype: well above what rounding lets the fixed point's steps reach.
INVERSE_RTOLS = {"float64": (1e-3, 1e-6, 1e-10), "float32": (1e-2, 1e-3, 1e-4)}
WORST_COEFFS = (0.9, 0.97)  # κ(I + J) ≤ (1 + L)/(1 − L) stays within the float32 cap (66 at 0.97)
declare_axes(KINDS, inverse_rtol=("default",) + INVERSE_RTOLS["float64"] + INVERSE_RTOLS["float32"])


def _worst_case_spec(ctx: CheckContext) -> FlowSpec:
    """A one-layer block with identity activation, g(x) = Wx + b, whose W has an eigenvalue at
    −coeff·(1 − 1e-9) (its top singular pair, so that ‖W‖₂ is at the constraint) and the rest of its
    spectrum random within it: along that eigenvector the fixed point's error shrinks by exactly L
    per step without changing sign, so its change understates the error by the full 1/(1 − L)."""
    coeff = ctx.draw(axis("coeff", WORST_COEFFS), "coeff")
    rtol = ctx.draw(axis("inverse_rtol", INVERSE_RTOLS[ctx.dtype]), "inverse_rtol")
    gen = rng("worst case", ctx.draw(SEEDS, "worst-case seed"))
    if ctx.kind == "residual_mlp":
        cfg = {"shape": [ctx.draw(sizes(2, 6))], "hidden": [], "orders": [2.0]}
    else:
        cfg = {"shape": [ctx.draw(sizes(1, 3)), ctx.draw(sizes(1, 3)), ctx.draw(sizes(1, 3))], "hidden": [], "kernels": [1]}
    width = cfg["shape"][0]
    frame = np.linalg.qr(gen.standard_normal((width, width)))[0]
    spectrum = np.concatenate([[-1.0], gen.uniform(-0.99, 0.99, width - 1)]) * coeff * (1.0 - 1e-9)
    weight = frame @ np.diag(spectrum) @ frame.T
    cfg = {**cfg, "activation": "identity", "coeff": coeff, "logdet": "exact", "inverse_rtol": rtol,
           "inverse_max_iter": 100_000}
    params = {"weight0": weight if ctx.kind == "residual_mlp" else weight[:, :, None, None],
              "bias0": gen.standard_normal(width)}
    return FlowSpec(ctx.kind, cfg, params)


@prop("inverse_error_bound", requires=["black_box", "inverse", "parameters"], kinds=KINDS)
def inverse_error_bound(ctx: CheckContext) -> None:
    """At a chosen ``inverse_rtol`` r, on the fixed point's worst case (:func:`_worst_case_spec`, its
    parameters set in place), the inverse is as accurate as documented: ‖x̂ − x‖₂ ≤ L·r·max(‖y‖₂, 1)
    per sample for y = f(x) by the implementation's forward, L = coeff^layers (plus the solve's
    rounding, ``fixed_point`` row at κ ≤ (1 + L)/(1 − L)). A stop on the step ‖x_{k+1} − x_k‖ ≤
    r·max(‖y‖, 1) without the factor (1 − L) is caught, as is any stop looser than the documented one."""
    spec = _worst_case_spec(ctx)
    flow = ctx.instantiate(spec)
    names = {name: np.shape(value) for name, value in ctx.adapter.parameters(flow).items()}
    ctx.require(names == {name: value.shape for name, value in spec.params.items()},
                f"a one-layer identity-activation block should have the parameters "
                f"{ {n: v.shape for n, v in spec.params.items()} }, has {names}")
    ctx.adapter.set_parameters(flow, {name: np.array(value) for name, value in spec.params.items()})
    x = ctx.draw_input(spec, strategies.large_magnitudes(spec.kind), name="round-trip magnitude")
    y = ctx.adapter.forward(flow, x)[0]
    x_hat = ctx.adapter.inverse(flow, y)
    lip = R.lipschitz_bound(spec)
    rtol = R.setting(spec.config, "inverse_rtol")
    scale = np.maximum(np.linalg.norm(y.reshape(len(y), -1), axis=1), 1.0)
    size = event_size(spec)
    rounding = ctx.tol("fixed_point", size, (1.0 + lip) / (1.0 - lip))
    error = np.linalg.norm((x_hat - x).reshape(len(x), -1), axis=1) / scale
    allowed = lip * rtol + rounding
    ctx.record(float(np.max(error)), allowed)
    if np.any(error > allowed):
        i = int(np.argmax(error))
        raise PropertyFailure(f"inverse at inverse_rtol = {rtol:g}: ‖x̂ − x‖ / max(‖y‖, 1) = {error[i]:.3e} exceeds the "
                              f"documented L·rtol = {lip * rtol:.3e} (+ rounding {rounding:.1e}; L = {lip:.4f}, an "
                              f"eigenvalue of J_g at −L)", float(error[i]), allowed)


@prop("inverse_contraction", requires=["black_box", "inverse", "fixed_point_errors"], kinds=KINDS)
def inverse_contraction(ctx: CheckContext) -> None:
    """The fixed-point iterates x_{k+1} = y − g(x_k) approach x = f⁻¹(y) at least as fast as the
    Lipschitz bound L = coeff^layers allows: ‖x_k − x‖ ≤ L^k‖x_0 − x‖ up to rounding in the p_0 norm
    in which L bounds Lip(g), so in the 2-norm checked here up to a factor √D where p_0 ≠ 2. Where
    p_0 = 2, the inverse at a chosen ``inverse_rtol`` r (or the default 32ε/(1 − L)) also stops within
    its own rule: a stop at ‖x_{k+1} − x_k‖ ≤ (1 − L)·r·max(‖y‖, 1) leaves ‖f(x̂) − y‖ ≤
    L(1 − L)·r·max(‖y‖, 1), which in turn certifies ‖x̂ − x‖ ≤ L·r·max(‖y‖, 1)."""
    drawn = ctx.draw_spec()
    spectral = R.input_order(drawn) == 2.0
    choices = ("default",) + INVERSE_RTOLS[ctx.dtype][:2]
    choice = ctx.draw(axis("inverse_rtol", choices), "inverse_rtol") if spectral else "default"
    spec = _with(drawn, inverse_rtol=None if choice == "default" else choice)
    flow = ctx.instantiate(spec)
    x = ctx.draw_input(spec, strategies.large_magnitudes(spec.kind))
    y = ctx.adapter.forward(flow, x)[0]
    iterations = 25
    errors = np.asarray(ctx.adapter.call_hook(flow, "fixed_point_errors", y, x, iterations))
    lip = R.lipschitz_bound(spec)
    size = event_size(spec)
    scale = np.maximum(np.linalg.norm(y.reshape(len(y), -1), axis=1), 1.0)
    slack = ctx.tol("roundtrip", size) * scale / (1.0 - lip)
    equivalence = 1.0 if spectral else np.sqrt(size)  # ‖·‖₂ against the p_0 norm, both ways
    bound = equivalence * lip ** np.arange(iterations + 1)[:, None] * errors[:1] + slack
    worst = float(np.max((errors - bound) / scale))
    ctx.record(max(worst, 0.0), ctx.tol("roundtrip", size))
    if np.any(errors > bound):
        k, i = np.argwhere(errors > bound)[0]
        raise PropertyFailure(f"fixed-point error {errors[k, i]:.3e} after {k} iterations exceeds L^k·e_0 + slack = "
                              f"{bound[k, i]:.3e} (L = {lip:.4f})", worst, ctx.tol("roundtrip", size))
    if not spectral:
        return
    rtol = 32.0 * EPS[ctx.dtype] / (1.0 - lip) if choice == "default" else choice
    x_hat = ctx.adapter.inverse(flow, y)
    residual = np.linalg.norm((ctx.adapter.forward(flow, x_hat)[0] - y).reshape(len(y), -1), axis=1) / scale
    allowed = lip * (1.0 - lip) * rtol + ctx.tol("forward", size)
    ctx.record(float(np.max(residual)), allowed)
    if np.any(residual > allowed):
        raise PropertyFailure(f"backward error ‖f(x̂) − y‖ / max(‖y‖, 1) = {float(np.max(residual)):.3e} at inverse_rtol "
                              f"{rtol:.3g} exceeds L(1 − L)·rtol + rounding = {allowed:.3e}: the inverse stopped "
                              f"short of its documented tolerance", float(np.max(residual)), allowed)


# ----------------------------------------------------------------------------- bad configurations

def _build(ctx: CheckContext, spec: FlowSpec) -> Any:
    if "white_box" in ctx.adapter.capabilities().modes:
        return ctx.load(spec)
    return ctx.adapter.instantiate(spec.kind, spec.config, 0, ctx.dtype, ctx.device)


@prop("noncontractive_config_rejected", requires=["black_box"], kinds=KINDS, claim="validation")
def noncontractive_config_rejected(ctx: CheckContext) -> None:
    """A coefficient ≥ 1 (g not contractive, f not invertible) is refused with an error naming coeff."""
    spec = ctx.draw_spec()
    for coeff in (1.0, 1.5):
        try:
            _build(ctx, _with(spec, coeff=coeff))
        except Exception as exc:  # noqa: BLE001 - which error is checked below
            ctx.require("coeff" in str(exc), f"coeff = {coeff} raised {type(exc).__name__} without naming coeff: {exc}")
            continue
        raise PropertyFailure(f"a {spec.kind} block with coeff = {coeff} was built without an error")
    ctx.record(0.0, 0.0)


@prop("inverse_nonconvergence_reported", requires=["black_box", "inverse"], kinds=KINDS)
def inverse_nonconvergence_reported(ctx: CheckContext) -> None:
    """An inverse stopped by its iteration cap raises an error that carries its residual."""
    spec = _with(ctx.draw_spec(), inverse_max_iter=1, inverse_rtol=1e-12)
    flow = _build(ctx, spec)
    z = ctx.draw_input(spec, latent=True)
    try:
        x = ctx.adapter.inverse(flow, z)
    except ConvergenceError as exc:
        ctx.require(exc.residual > 0 and "residual" in str(exc), f"the error does not report its residual: {exc}")
        ctx.record(0.0, 0.0)
        return
    except Exception as exc:  # noqa: BLE001 - any other error must still name the residual
        ctx.require("residual" in str(exc), f"{type(exc).__name__} without the residual: {exc}")
        ctx.record(0.0, 0.0)
        return
    residual = float(np.max(np.abs(ctx.adapter.forward(flow, x)[0] - z)))
    raise PropertyFailure(f"an inverse capped at one iteration returned silently (residual {residual:.3e})")
