"""Spec strategies of the ``dequantizer`` kind and the properties of the variational dequantization
objective (Flow++ Sec. 3.1, eqs. 9–12; :mod:`flowspec.reference.dequantizer`).

Axes of the dequantizer's strategies (:mod:`.covering`), drawn in this order so that a pinned value
is honoured where another choice depends on it: ``couplings`` (0, 1 or 2 conditional affine
couplings), ``layout`` (``vector`` of D = 1…4 entries, axis ``size``, D ≥ 2 with couplings; or
``image``), for images the ``conditioner`` (``mlp``: dense nets on the flat context; ``conv``: 3×3
convolutions on the image context) and C, H, W ≤ 2 (axes ``channels``, ``height``, ``width``; the
mask must split the image when there are couplings), the couplings' ``mask``, the networks'
``hidden`` width (1…4), ``depth``, ``activation`` and ``scale_factor``, and the parameters'
``regime``: ``init`` or ``large`` (the raw log-scale rows of every last layer scaled by
:data:`RAW_FACTOR`: log-scales saturated at ±scale_factor). D ≤ 8 keeps the reference's Jacobians
cheap. Scale factors ≤ 0.3 and unscaled shifts keep the inverse's gain moderate: σ(y) rounds to 1 in
float32 for y > 16.6, and a latent of the round trips' magnitudes (|ε| up to about 10) must not map
there (u = 1 lies outside the domain, and no finite-difference stencil fits between u and 1); with
scale factors 0.25, 0.5 and 1 (shifts scaled too) 6 %, 8 % and 33 % of such latents did.

Properties of every kind that declares ``extras["variational_bound"]`` (the reference's
:func:`~flowspec.reference.dequantizer.bound_terms`), through the adapter hook ``variational_bound``
(``flow.variational_bound(model, k, n_bins, eps=None) -> (x, log p(x), log q(x | k))``):

* ``variational_bound_matches_reference`` (white-box): for given data k and noise ε, x, log q(x | k)
  and the model's log p(x) equal the reference's;
* ``variational_bound_consistent`` (black-box): x, log q(x | k) and log p(x) are what the
  implementation's own inverse and forwards give with the documented context (2k + 1)/n_bins − 1
  and log q(x | k) = log N(f(u)) + log|det ∂f/∂u| + D·log n_bins;
* ``variational_bound_statistical`` (white-box): on tiny problems (D = 1, a few levels) the mean of
  n sampled bounds, the implementation drawing its own noise, does not exceed log P(k) beyond a
  one-sided confidence bound, and equals the reference's E_q[bound] within a two-sided one
  (:func:`check_bound`, which states the false-alarm rate, the power check and the smallest bias
  detected).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import assume, strategies as st

from flowspec import reference
from flowspec.reference import dequantizer as R
from flowspec.reference.coupling import ACTIVATIONS, MASKS
from flowspec.reference.sequential import sequential_spec
from flowspec.spec import FlowSpec

from . import namespace, stats
from .covering import axis, declare_axes, salt
from .property import CheckContext, PropertyFailure, prop
from .seeding import rng
from .strategies import SEEDS, from_configs, register_specs, scaled_last_layer, sizes
from .state import fd_condition
from .tolerances import relative_error, tolerance

KIND = "dequantizer"
COUPLING_COUNTS = (0, 1, 2)
LAYOUTS = ("vector", "image")
IMAGE_CONDITIONERS = ("mlp", "conv")
DEPTHS = (1, 2)
SCALE_FACTORS = (0.1, 0.2, 0.3)
REGIMES = ("init", "large")
RAW_FACTOR = 8.0  # the large regime's factor on every last layer (the coupling strategies')


# ----------------------------------------------------------------------------- the kind's strategies

def _image_shape(draw: Any, mask: str, split: bool) -> list[int]:
    """C, H, W ≤ 2 that the mask splits where there are couplings (``split``)."""
    channels = draw(sizes(2 if split and mask == "channel" else 1, 2, name="channels"))
    height = draw(sizes(1, 2, name="height"))
    width = draw(sizes(2 if split and mask == "checkerboard" and height == 1 else 1, 2, name="width"))
    return [channels, height, width]


@st.composite
def dequantizer_configs(draw: Any) -> dict[str, Any]:
    """Configs of the dequantizer (module docstring)."""
    couplings = draw(axis("couplings", COUPLING_COUNTS))
    layout = draw(axis("layout", LAYOUTS))
    conditioner = draw(axis("conditioner", IMAGE_CONDITIONERS)) if layout == "image" else "mlp"
    mask = draw(axis("mask", MASKS))
    shape = _image_shape(draw, mask, couplings > 0) if layout == "image" else \
        [draw(sizes(2 if couplings else 1, 4, name="size"))]
    return {"shape": shape, "couplings": couplings, "mask": mask, "conditioner": conditioner,
            "hidden": draw(sizes(1, 4, name="hidden")), "depth": draw(axis("depth", DEPTHS)),
            "activation": draw(axis("activation", sorted(ACTIVATIONS))),
            "scale_factor": draw(axis("scale_factor", SCALE_FACTORS))}


def _scaled_log_scales(spec: FlowSpec) -> FlowSpec:
    """``spec`` (own params only) with the raw log-scale rows of its last layer, the first half of the
    outputs (``s_raw`` before ``t``), scaled by :data:`RAW_FACTOR`."""
    own = FlowSpec(spec.kind, spec.config, {k: v for k, v in spec.params.items() if not isinstance(v, FlowSpec)})
    last = max(int(name.split(".")[1]) for name in own.params if name.startswith("net."))
    rows = own.params[f"net.{last}.bias"].shape[0]
    return scaled_last_layer(own, np.where(np.arange(rows) < rows // 2, RAW_FACTOR, 1.0))


def in_regime(spec: FlowSpec, regime: str) -> FlowSpec:
    """``spec`` with the raw log-scales of the context net and of every coupling scaled by
    :data:`RAW_FACTOR` in the ``large`` regime (module docstring)."""
    if regime == "init":
        return spec
    layers = {name: _scaled_log_scales(child) for name, child in spec.children()}
    return FlowSpec(spec.kind, spec.config, {**_scaled_log_scales(spec).params, **layers})


@register_specs(KIND)
def _dequantizers():
    return st.builds(in_regime, from_configs(KIND, dequantizer_configs()), axis("regime", REGIMES))


declare_axes(KIND, couplings=COUPLING_COUNTS, layout=LAYOUTS, conditioner=IMAGE_CONDITIONERS, mask=MASKS,
             size=range(1, 5), channels=range(1, 3), height=range(1, 3), width=range(1, 3), hidden=range(1, 5),
             depth=DEPTHS, activation=sorted(ACTIVATIONS), scale_factor=SCALE_FACTORS, regime=REGIMES)


# ----------------------------------------------------------------------------- problems

def _bound_kinds(kind: str) -> bool:
    return "variational_bound" in namespace.kind(kind).extras


N_BINS = (2, 5, 256)
STAT_N_BINS = (8, 16, 32)  # the statistical tiny problems: cells narrow enough that q's gap stays below log n_bins
MODEL_ALPHAS = (1e-6, 0.05)
NOISE_MAGNITUDES = (0.1, 1.0, 2.0)


declare_axes(KIND, n_bins=N_BINS + STAT_N_BINS, model_alpha=MODEL_ALPHAS, noise_magnitude=NOISE_MAGNITUDES)


def _discrete(ctx: CheckContext, spec: FlowSpec, n_bins: int, batch: int) -> np.ndarray:
    """A batch of data k in [0, n_bins) with the lowest and the highest cell in its first entries."""
    shape = (batch,) + tuple(namespace.kind(spec.kind).event_shape(spec.config))
    k = rng("discrete data", salt(), ctx.draw(SEEDS, "data")).integers(0, n_bins, shape)
    k.reshape(batch, -1)[:2, 0] = (0, n_bins - 1)[:batch]
    return k


def _model(ctx: CheckContext, shape: list[int]) -> FlowSpec:
    """A model of data in (0, 1)^shape: the logit with α (an axis), then an elementwise affine map."""
    alpha = ctx.draw(axis("model_alpha", MODEL_ALPHAS), "model alpha")
    gen = rng("model", salt(), ctx.draw(SEEDS, "model"))
    return sequential_spec([FlowSpec("logit", {"shape": shape, "alpha": alpha}),
                            reference.init_spec("elementwise_affine", {"shape": shape}, gen)])


def _noise(ctx: CheckContext, k: np.ndarray) -> np.ndarray:
    magnitude = ctx.draw(axis("noise_magnitude", NOISE_MAGNITUDES), "noise magnitude")
    return magnitude * rng("noise", salt(), ctx.draw(SEEDS, "noise")).standard_normal(k.shape)


def _bound(ctx: CheckContext, flow: Any, model: Any, k: np.ndarray, n_bins: int,
           eps: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return ctx.adapter.call_hook(flow, "variational_bound", model, k, n_bins, eps)


# ----------------------------------------------------------------------------- given noise

@prop("variational_bound_matches_reference", requires=["white_box", "variational_bound"], kinds=_bound_kinds)
def variational_bound_matches_reference(ctx: CheckContext) -> None:
    """For data k and noise ε: x = (k + f⁻¹(ε; c))/n_bins, log q(x | k) and log p(x) equal the
    reference's (:func:`~flowspec.reference.dequantizer.bound_terms`); log p is compared at the
    implementation's own x, whose error is held to the inverse's row."""
    spec = ctx.draw_spec()
    n_bins = ctx.draw(axis("n_bins", N_BINS), "n_bins")
    k = _discrete(ctx, spec, n_bins, 3)
    eps, model = _noise(ctx, k), _model(ctx, list(k.shape[1:]))
    x_ref, _, log_q_ref = namespace.kind(spec.kind).extras["variational_bound"](spec, model, k, eps, n_bins)
    context = R.features(k, n_bins)
    kappa = ctx.condition(spec, reference.inverse(spec, eps, context), context)
    x, log_p, log_q = _bound(ctx, ctx.load(spec), ctx.load(model), k, n_bins, eps)
    size = int(np.prod(k.shape[1:]))
    ctx.assert_close(x, x_ref, "inverse", size, "x = (k + u)/n_bins", kappa)
    ctx.assert_close(log_q, log_q_ref, "logdet", size, "log q(x | k)", kappa)
    # at the same x, log p is a sum of D log terms each rounded relative to itself: no κ
    ctx.assert_close(log_p, reference.log_prob(model, x), "logdet", size, "log p(x) at the implementation's x")


@prop("variational_bound_consistent", requires=["black_box", "variational_bound", "inverse"], kinds=_bound_kinds)
def variational_bound_consistent(ctx: CheckContext) -> None:
    """Without the reference: for data k and noise ε, x is (k + u)/n_bins with u the flow's own
    inverse of ε at the documented context (2k + 1)/n_bins − 1, log q(x | k) is log N(f(u)) +
    log|det ∂f/∂u| + D·log n_bins from its own forward at u, and log p(x) is the model's own
    log-density at x (the model: the logit kind with α)."""
    spec = ctx.draw_spec()
    n_bins = ctx.draw(axis("n_bins", N_BINS), "n_bins")
    k = _discrete(ctx, spec, n_bins, 3)
    eps = _noise(ctx, k)
    shape = list(k.shape[1:])
    model_spec = FlowSpec("logit", {"shape": shape, "alpha": ctx.draw(axis("model_alpha", MODEL_ALPHAS), "alpha")})
    flow, model = ctx.instantiate(spec), ctx.instantiate(model_spec)
    x, log_p, log_q = _bound(ctx, flow, model, k, n_bins, eps)
    context = R.features(k, n_bins)
    u = ctx.adapter.inverse(flow, eps, context)
    z, logdet = ctx.adapter.forward(flow, u, context)
    size = int(np.prod(shape))
    expected = {"x vs (k + f⁻¹(ε))/n_bins": (x, (k + u) / n_bins, "inverse"),
                "log q(x | k) vs the forward's density at u + D·log n_bins":
                    (log_q, reference.standard_normal_log_prob(z) + logdet + size * np.log(n_bins), "logdet")}
    kappa = fd_condition(ctx, flow, spec, u, context)
    for what, (actual, value, quantity) in expected.items():
        # the two routes (sampling direction, forward at u) agree to rounding, amplified by κ at u
        condition = 1.0 if relative_error(actual, value) <= ctx.tol(quantity, size) else kappa()
        ctx.assert_close(actual, value, quantity, size, what, condition)
    z_model, logdet_model = ctx.adapter.forward(model, x)
    ctx.assert_close(log_p, reference.standard_normal_log_prob(z_model) + logdet_model, "logdet", size,
                     "log p(x) vs the model's forward at x")


# ----------------------------------------------------------------------------- statistical

QUADRATURE_NODES = (24, 16)  # the rule used and a coarser one, whose difference estimates its error
STEP, CAP = 2 ** 14, 2 ** 19  # sampled bounds: drawn in calls of STEP, at most CAP per test
TESTS = 2  # the one-sided test against log P(k) and the two-sided one against E_q[bound]
RESOLUTION_GOAL = 0.1  # the sample size aims at a resolution of this fraction of one bound's sd (plus slack)


def _statistical_problem(ctx: CheckContext) -> tuple[FlowSpec, FlowSpec, np.ndarray, int]:
    """A dequantizer of D = 1 entry (the logit and the context affine), a model (logit with α = 0.05,
    an elementwise affine map and a planar flow: smooth, so that Gauss quadrature converges fast), a
    level count and one datum k."""
    config = {"shape": [1], "couplings": 0, "hidden": ctx.draw(sizes(1, 4, name="hidden"), "hidden"),
              "activation": ctx.draw(axis("activation", sorted(ACTIVATIONS)), "activation"),
              "scale_factor": ctx.draw(axis("scale_factor", SCALE_FACTORS), "scale factor")}
    gen = rng("statistical problem", salt(), ctx.draw(SEEDS, "problem"))
    spec = in_regime(reference.init_spec(KIND, config, gen), ctx.draw(axis("regime", REGIMES), "regime"))
    layers = [reference.init_spec(kind, {"shape": [1]}, gen) for kind in ("elementwise_affine", "planar")]
    model = sequential_spec([FlowSpec("logit", {"shape": [1], "alpha": 0.05}), *layers])
    n_bins = ctx.draw(axis("n_bins", STAT_N_BINS), "n_bins")
    k = np.array([int(gen.integers(0, n_bins))])
    return spec, model, k, n_bins


@dataclass(frozen=True)
class BoundPlan:
    """The statistical test of one problem (:func:`check_bound`)."""

    log_marginal: float  # log P(k)
    mean: float  # E_q[bound]
    sd: float  # the bound's standard deviation under q
    samples: int
    groups: int
    halfwidth: float  # the median of means strays beyond it with probability ≤ alpha (each test)
    slack_marginal: float  # quadrature error estimates and rounding
    slack_mean: float
    biases: dict[str, float]
    method: str
    alpha: float

    @property
    def resolution(self) -> float:
        """The smallest bias either test detects with probability ≥ 1 − alpha."""
        return 2.0 * (self.halfwidth + max(self.slack_marginal, self.slack_mean))

    @property
    def scale(self) -> float:
        return abs(self.log_marginal) + self.sd

    def describe(self) -> str:
        biases = ", ".join(f"{k} {v:+.3g}" for k, v in self.biases.items())
        return (f"{self.samples} bounds, {self.method}; log P(k) {self.log_marginal:.6g}, E_q[bound] {self.mean:.6g}, "
                f"sd {self.sd:.3g}; smallest detectable bias {self.resolution:.3g} at a false-alarm rate "
                f"{self.alpha:.1e} per test; biases of known mistakes here: {biases}")


def _samples(variance: float, halfwidth: float, alpha: float) -> int:
    """The fewest bounds, a multiple of :data:`STEP`, whose median of means (the best Chebyshev level
    of :func:`~.stats.mom_plan`) strays beyond ``halfwidth`` with probability ≤ ``alpha``."""
    fewest = min(stats.median_groups(p, alpha) * math.ceil(variance / (p * halfwidth ** 2))
                 for p in stats.CHEBYSHEV_LEVELS)
    return STEP * max(1, math.ceil(fewest / STEP))


def plan_bound_test(spec: FlowSpec, model: FlowSpec, k: np.ndarray, n_bins: int, dtype: str) -> BoundPlan | None:
    """The test of :func:`check_bound` for one problem, or None where no sample size up to
    :data:`CAP` detects the stated mistakes (the power check)."""
    fine, coarse = QUADRATURE_NODES
    log_p = [R.log_marginal(model, k, n_bins, n) for n in (fine, coarse)]
    moments = [R.bound_moments(spec, model, k, n_bins, n) for n in (fine, coarse)]
    rounding = tolerance("logdet", dtype, k.size) * max(1.0, abs(log_p[0]))
    slack_marginal = abs(log_p[0] - log_p[1]) + rounding
    slack_mean = abs(moments[0].mean - moments[1].mean) + rounding
    variance = moments[0].variance + abs(moments[0].variance - moments[1].variance)
    alpha = stats.per_example_alpha() / TESTS
    missing, flipped = "objective without D·log n_bins", "log q(u | k) with its sign flipped"
    biases = {missing: k.size * np.log(n_bins), flipped: 2.0 * moments[0].mean_log_q}
    # what each mistake must exceed to be caught: test 1 sees the excess over log P(k), test 2 the bias
    needed = min(moments[0].mean + biases[missing] - log_p[0], abs(biases[flipped]))
    powered = 0.5 * needed - max(slack_marginal, slack_mean)
    if powered <= 0.0 or _samples(variance, powered, alpha) > CAP:
        return None
    goal = 0.5 * RESOLUTION_GOAL * float(np.sqrt(variance))
    samples = max(_samples(variance, powered, alpha), min(_samples(variance, goal, alpha), CAP))
    mom = stats.mom_plan(lambda b: variance / b, samples, alpha)
    return BoundPlan(log_p[0], moments[0].mean, float(np.sqrt(variance)), mom.groups * mom.group_size, mom.groups,
                     mom.halfwidth, slack_marginal, slack_mean, biases,
                     f"median of {mom.groups} means of {mom.group_size} (Chebyshev)", alpha)


def check_bound(ctx: CheckContext, flow: Any, model: Any, k: np.ndarray, n_bins: int, plan: BoundPlan) -> None:
    """The statistical test of the variational bound on one problem.

    **Design.** The reference computes, by Gauss–Legendre and Gauss–Hermite quadrature (24 nodes,
    and 16 for an estimate of the rule's error, which joins the slack), log P(k), the bound's mean
    E_q[B] ≤ log P(k) and variance under q, and the biases of known mistakes. The sample size is
    fixed from these before any bound is drawn (:func:`plan_bound_test`); the implementation then
    draws that many bounds B = log p(x) − log q(x | k) with its own noise (hook ``variational_bound``
    without ``eps``), in calls of :data:`STEP`.

    **Tests.** Median of means of K groups (Chebyshev; B has a finite variance, which the quadrature
    computes, but no certified sub-gamma constants): (1) the median must not exceed log P(k) + h +
    slack — the bound holds in expectation, single samples may exceed it; (2) it must lie within
    h + slack of E_q[B]. Each at α = 1e-6 / (the most examples a profile runs) / 2, so a correct
    implementation fails an example with probability ≤ 1e-6 over a profile's examples.

    **Power.** A mean beyond the threshold by h, the resolution 2(h + slack), is detected with
    probability ≥ 1 − α. The test runs only where that resolution is below what the stated mistakes
    must exceed — the objective without D·log n_bins (excess D·log n_bins − KL over log P(k), test 1)
    and log q with its sign flipped (bias 2·E_q[log q(u | k)], test 2) — with the fewest samples
    (steps of 2¹⁴, at most 2¹⁹) that reach it; elsewhere hypothesis draws another problem.
    """
    bounds = []
    for start in range(0, plan.samples, STEP):
        count = min(STEP, plan.samples - start)
        _, log_p, log_q = _bound(ctx, flow, model, np.repeat(k[None], count, axis=0), n_bins)
        ctx.require(log_p.shape == (count,) and log_q.shape == (count,)
                    and bool(np.all(np.isfinite(log_p)) and np.all(np.isfinite(log_q))),
                    f"the sampled log p and log q have shapes {log_p.shape}, {log_q.shape} or non-finite values")
        bounds.append(log_p - log_q)
    groups = np.concatenate(bounds).reshape(plan.groups, -1)
    median = stats.median_of_means(groups.mean(axis=1))
    excess = median - plan.log_marginal
    allowed = plan.halfwidth + plan.slack_marginal
    ctx.record(max(excess, 0.0) / plan.scale, allowed / plan.scale)
    if excess > allowed:
        raise PropertyFailure(f"the median of means of the sampled bounds, {median:.6g}, exceeds log P(k) = "
                              f"{plan.log_marginal:.6g} by {excess:.3g} > {allowed:.3g}: not a lower bound "
                              f"({plan.describe()})", excess / plan.scale, allowed / plan.scale)
    error, allowed = abs(median - plan.mean), plan.halfwidth + plan.slack_mean
    ctx.record(error / plan.scale, allowed / plan.scale)
    if error > allowed:
        raise PropertyFailure(f"the median of means of the sampled bounds, {median:.6g}, is off E_q[bound] = "
                              f"{plan.mean:.6g} by {error:.3g} > {allowed:.3g} ({plan.describe()})",
                              error / plan.scale, allowed / plan.scale)


@prop("variational_bound_statistical", requires=["white_box", "variational_bound"], kinds=_bound_kinds)
def variational_bound_statistical(ctx: CheckContext) -> None:
    """The mean of sampled bounds (the implementation's own noise) does not exceed log P(k) and equals
    E_q[bound] (the reference's quadrature), at a stated false-alarm rate, with a power check
    (:func:`check_bound`)."""
    spec, model, k, n_bins = _statistical_problem(ctx)
    plan = plan_bound_test(spec, model, k, n_bins, ctx.dtype)
    assume(plan is not None)
    check_bound(ctx, ctx.load(spec), ctx.load(model), k, n_bins, plan)
