"""Spec strategies and the family properties of the logit of a logistic-mixture CDF (Flow++ eqs.
17–20): the kind ``logistic_mixture_coupling``.

Axes (:mod:`.covering`): every axis of the coupling kinds (:func:`.coupling.layer_configs`, image
contexts included: the same masks, conditioners, sizes and contexts), and

* ``components``: K = 1 … 4 (K = 1: ℓ = u, an affine map);
* ``scale_factor`` (the bound on a): 0.5, 1.0, 2.0; ``log_scale_bound`` (the bound on s): 2.0 or 7.0;
* ``regime`` of the conditioner's last layer: ``init`` (the reference's generic weights);
  ``large``, every block but the raw log-scales ×8: mixture weights nearly one-hot (log π of the
  others down to about −30, so the log-space sums matter), means ×8, a saturated at ±scale_factor,
  large shifts b; ``peaked``, the raw log-scales shifted by −3 and the means scaled by
  1/4: every component peaked (e^{−s} up to e^{2.8} ≈ 16), centred near the origin where the value
  properties' small inputs fall. Sharper peaks are the subject of ``mixture_logdet_peaked``, which
  builds them itself: the value properties' forward row is not conditioned, and near a component's
  centre a rounding of x − μ is amplified by the slope e^{a − s}.

Family properties attach to every kind whose registry entry declares the extra ``logit_mixture``
(``(spec, x, context) -> EntryMixtures``: the transformed entries of one sample and their log π,
μ, s, a, b, which do not depend on those entries' values) and ``logit_mixture_fixed`` (``(spec,
mu, log_scale_fraction) -> spec`` with those means and log-scales, as fractions of the kind's bound,
at every entry). Each draws points per entry where the map is hard and compares with the
reference's map at the points as the implementation sees them (rounded to its dtype), at a condition
number from a first-order error model (:func:`_sensitivity`: every argument rounded relative to its
size, a network's outputs also relative to 1), rejecting draws beyond the dtype's cap:

* ``mixture_logit_tails``: far in both tails, beyond where σ(u) rounds to 1 (u > log(4/ε)) or to 0
  (u below the log of the smallest subnormal) for every component, so that the naive
  σ⁻¹(Σ π_i σ(u_i)) is ±∞ or clamped: z finite and equal to the reference's, log|det| equal to the
  sum of the reference's a + log ℓ′ (autograd of ℓ, so not the implementation's formula);
* ``mixture_logit_monotone``: along a grid through every component (its centre ± up to 10³ scales)
  z never decreases, grows wherever the reference's grows by more than rounding, and log|det| is finite;
* ``mixture_inverse_to_tolerance``: components whose log-scales spread over ±0.9·log_scale_bound
  and means over [−2, 2] (so brackets [min_i(μ_i + e^{s_i}ℓ), max_i(μ_i + e^{s_i}ℓ)] are wide) and
  targets |ℓ| of 0.5, 30 and 10³: f⁻¹(z) equals the reference's ℓ⁻¹ and f(f⁻¹(z)) = z (an inverse
  stopped by an iteration count instead of its tolerance is off by the bracket's width / 2ⁿ);
* ``mixture_logdet_peaked``: log-scales from −0.97 to −0.5 × log_scale_bound (e^{−s} up to 900),
  centred at 0 (exact in every dtype), points x = μ_i + e^{s_i}v across each peak: log|det| equals
  slogdet of the reference's full autograd Jacobian (the generic log-det properties meet only the
  ``peaked`` regime's e^{2.8}: sharper peaks exceed their float32 condition cap).
"""
from __future__ import annotations

from typing import Any

import autograd
import autograd.numpy as anp
import numpy as np
from hypothesis import assume, strategies as st

from flowspec import reference
from flowspec.reference.logistic_mixture import mixture_logit, mixture_logit_and_log_derivative
from flowspec.spec import FlowSpec

from . import coupling, covering, namespace
from .covering import axis, declare_axes
from .property import CheckContext, prop
from .strategies import MAGNITUDES, event_size, from_configs, register_specs
from .structure import declares
from .tolerances import MAX_CONDITION

KIND = "logistic_mixture_coupling"
COMPONENTS = (1, 2, 3, 4)
SCALE_FACTORS = (0.5, 1.0, 2.0)
LOG_SCALE_BOUNDS = (2.0, 7.0)
REGIMES = ("init", "large", "peaked")
LARGE_FACTOR = 8.0  # the large regime's factor on every block but the raw log-scales
PEAK_SHIFT = -3.0  # the peaked regime's shift of the raw log-scales
PEAK_MEAN_FACTOR = 0.25  # the peaked regime's factor on the means
TAIL_DEPTHS = (1.5, 10.0)  # how far beyond the dtype's saturation point the tail points lie
INVERSE_TARGETS = (0.5, 30.0, 1000.0)  # |ℓ| of the inverse's targets: centre, past float32's σ(ℓ) = 1, far
GRID = np.array([0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 20.0, 60.0, 200.0, 1000.0])  # offsets in scales
PEAK_OFFSETS = np.array([-3.0, -1.0, -0.25, 0.0, 0.25, 1.0, 3.0])


def _blocks(spec: FlowSpec, factors: dict[int, float], shifts: dict[int, float]) -> FlowSpec:
    """``spec`` with the conditioner's last layer's parameter blocks (k = 3K + 2 blocks of rows,
    block j = parameter j of every entry) scaled by ``factors`` and their biases shifted by ``shifts``."""
    last = f"net.{max(int(name.split('.')[1]) for name in spec.params if name.startswith('net.'))}"
    weight, bias = np.array(spec.params[f"{last}.weight"]), np.array(spec.params[f"{last}.bias"])
    n = len(bias) // (3 * spec.config["components"] + 2)
    for block, factor in factors.items():
        weight[block * n:(block + 1) * n] *= factor
        bias[block * n:(block + 1) * n] *= factor
    for block, shift in shifts.items():
        bias[block * n:(block + 1) * n] += shift
    return FlowSpec(spec.kind, spec.config, {**spec.params, f"{last}.weight": weight, f"{last}.bias": bias})


def in_regime(spec: FlowSpec, regime: str) -> FlowSpec:
    """The regimes of the module docstring, on the blocks [logits | μ | raw s | raw a | b]."""
    k = spec.config["components"]
    if regime == "large":
        return _blocks(spec, {j: LARGE_FACTOR for j in (*range(k), *range(k, 2 * k), 3 * k, 3 * k + 1)}, {})
    if regime == "peaked":
        means, raw_scales = range(k, 2 * k), range(2 * k, 3 * k)
        return _blocks(spec, {j: PEAK_MEAN_FACTOR for j in means}, {j: PEAK_SHIFT for j in raw_scales})
    return spec


@st.composite
def _configs(draw: Any) -> dict[str, Any]:
    base = draw(coupling.layer_configs(False, image_contexts=True))
    return {**base, "components": draw(axis("components", COMPONENTS)),
            "scale_factor": draw(axis("scale_factor", SCALE_FACTORS)),
            "log_scale_bound": draw(axis("log_scale_bound", LOG_SCALE_BOUNDS))}


@register_specs(KIND)
def _mixture_coupling():
    return st.builds(in_regime, from_configs(KIND, _configs()), axis("regime", REGIMES))


covering.DECLARED.setdefault(KIND, {}).update(covering.DECLARED["additive_coupling"])  # the coupling axes
declare_axes(KIND, components=COMPONENTS, scale_factor=SCALE_FACTORS, log_scale_bound=LOG_SCALE_BOUNDS,
             regime=REGIMES)



# ----------------------------------------------------------------------------- family properties

MIXTURE = "logit_mixture"
ARGUMENTS = ("x", "log_pi", "mu", "log_scale", "a", "b")
NETWORK = {"x": 0.0}  # floors of the error model: parameters from a network are off by ε·max(|θ|, 1)
EXACT_COMPONENTS = {"x": 0.0, "mu": 0.0, "log_scale": 0.0}  # μ and s from biases alone: off by ε·|θ|


def _mixtures(spec: FlowSpec, x: np.ndarray, c: np.ndarray | None) -> list[Any]:
    """The registry extra ``logit_mixture`` of each sample of the batch ``x``."""
    extra = namespace.kind(spec.kind).extras[MIXTURE]
    return [extra(spec, x[i], None if c is None else c[i]) for i in range(len(x))]


def _fixed(spec: FlowSpec, mu: np.ndarray, log_scale_fraction: np.ndarray) -> FlowSpec:
    """The registry extra ``logit_mixture_fixed``: every entry's components at ``mu`` and log-scales
    ``log_scale_fraction`` × the kind's bound."""
    return namespace.kind(spec.kind).extras["logit_mixture_fixed"](spec, mu, log_scale_fraction)


def _components(spec: FlowSpec, x: np.ndarray, c: np.ndarray | None) -> int:
    return _mixtures(spec, x[:1], None if c is None else c[:1])[0].mu.shape[-1]


def _rounded(values: np.ndarray, dtype: str) -> np.ndarray:
    """The points as the implementation sees them (rounded to its dtype), in float64."""
    return np.asarray(values, dtype=dtype).astype(np.float64)


def _saturation(dtype: str) -> tuple[float, float]:
    """(u beyond which σ(u) rounds to 1, −u beyond which σ(u) rounds to 0) in ``dtype``."""
    info = np.finfo(dtype)
    return float(np.log(4.0 / info.eps)), float(-np.log(info.smallest_subnormal))


def _entry_map(x: Any, log_pi: Any, mu: Any, log_scale: Any, a: Any, b: Any) -> Any:
    """The reference's per-entry law z = ℓ(x)·e^{a} + b."""
    return mixture_logit(x, log_pi, mu, log_scale) * anp.exp(a) + b


def _entry_log_slope(x: Any, log_pi: Any, mu: Any, log_scale: Any, a: Any, b: Any) -> Any:
    """log dz/dx = a + log ℓ′(x), the reference's formula."""
    return a + mixture_logit_and_log_derivative(x, log_pi, mu, log_scale)[1]


def _autograd_log_slope(x: np.ndarray, m: Any) -> np.ndarray:
    """a + log of autograd's derivative of the reference's ℓ (independent of the log-derivative formula)."""
    slope = autograd.elementwise_grad(lambda v: mixture_logit(v, m.log_pi, m.mu, m.log_scale))(x)
    return m.a + np.log(slope)


def _arguments(x: np.ndarray, m: Any) -> tuple[np.ndarray, ...]:
    return (x, m.log_pi, m.mu, m.log_scale, m.a, m.b)


def _sensitivity(fn: Any, x: np.ndarray, m: Any, floors: dict[str, float], skip: tuple[str, ...] = ()) -> np.ndarray:
    """Per entry, Σ_v max(|v|, floor_v)·|∂fn/∂v| over x and the entry's parameters: the first-order
    change of ``fn`` when every argument is rounded relative to its size (parameters that a network
    computes also relative to 1: the floors)."""
    args = _arguments(x, m)
    total = np.zeros(len(x))
    for i, name in enumerate(ARGUMENTS):
        if name in skip:
            continue
        grad = autograd.grad(lambda v: anp.sum(fn(*args[:i], v, *args[i + 1:])))(args[i])
        weight = np.maximum(np.abs(args[i]), floors.get(name, 1.0))
        total += (np.abs(grad) * weight).reshape(len(x), -1).sum(axis=1)
    return total


def _logdet_condition(rows: np.ndarray, mixtures: list[Any], expected: np.ndarray, floors: dict[str, float]) -> float:
    """The log-det's relative condition: Σ over entries of the log-slope's sensitivity, over max(1, |log|det||)."""
    flat = rows.reshape(len(rows), -1)
    worst = [np.sum(_sensitivity(_entry_log_slope, flat[i, m.index], m, floors, skip=("b",)))
             / max(1.0, abs(expected[i])) for i, m in enumerate(mixtures)]
    return max(1.0, float(max(worst)))


def _usable(ctx: CheckContext, condition: float) -> float:
    """Reject a draw beyond the dtype's :data:`~.tolerances.MAX_CONDITION` (as :meth:`CheckContext.condition`)."""
    assume(condition <= MAX_CONDITION[ctx.dtype])
    return condition


def _signs(n: int, batch: int) -> np.ndarray:
    """±1 per (sample, entry), alternating along both, so every entry meets both signs in a batch of two."""
    return np.where((np.arange(batch)[:, None] + np.arange(n)[None, :]) % 2 == 0, 1.0, -1.0)


@prop("mixture_logit_tails", requires=["black_box", "parameters"], kinds=declares(MIXTURE))
def mixture_logit_tails(ctx: CheckContext) -> None:
    """Far in both tails (every component's σ(u) rounds to 1, or to 0, in the dtype, by the factor
    ``tail_depth``): z is finite and equals the reference's, and log|det| equals Σ (a + log ℓ′) with
    ℓ′ from autograd of the reference's ℓ, at the log-det's condition (module docstring)."""
    spec = ctx.draw_spec()
    x, c = ctx.draw_input(spec, MAGNITUDES), ctx.draw_context(spec)
    depth = ctx.draw(axis("tail_depth", TAIL_DEPTHS), "tail depth")
    right, left = _saturation(ctx.dtype)
    mixtures = _mixtures(spec, x, c)
    rows = x.reshape(len(x), -1).copy()
    for i, m in enumerate(mixtures):
        scale = np.exp(m.log_scale)
        far_right, far_left = np.max(m.mu + scale * depth * right, -1), np.min(m.mu - scale * depth * left, -1)
        rows[i, m.index] = np.where(_signs(len(m.index), len(x))[i] > 0, far_right, far_left)
    rows = _rounded(rows.reshape(x.shape), ctx.dtype)
    z, logdet = ctx.adapter.forward(ctx.instantiate(spec), rows, c)
    size = event_size(spec)
    ctx.assert_close(z, reference.forward(spec, rows, c), "forward", size, "z far in the tails")
    flat = rows.reshape(len(rows), -1)
    expected = np.array([np.sum(_autograd_log_slope(flat[i, m.index], m)) for i, m in enumerate(mixtures)])
    condition = _usable(ctx, _logdet_condition(rows, mixtures, expected, NETWORK))
    ctx.assert_close(logdet, expected, "logdet", size, "log|det| far in the tails", condition)


@prop("mixture_logit_monotone", requires=["black_box", "parameters"], kinds=declares(MIXTURE))
def mixture_logit_monotone(ctx: CheckContext) -> None:
    """Along a grid through every component of every transformed entry (μ_i + e^{s_i}·v, |v| up to
    10³, sorted), z never decreases (up to the forward row), increases wherever the reference's z
    increases by more than four times that, and log|det| is finite."""
    spec = ctx.draw_spec()
    x, c = ctx.draw_input(spec, MAGNITUDES, batch=1), ctx.draw_context(spec, batch=1)
    m = _mixtures(spec, x, c)[0]
    offsets = np.concatenate([-GRID[:0:-1], GRID])
    grid = np.sort((m.mu[..., None] + np.exp(m.log_scale)[..., None] * offsets).reshape(len(m.index), -1), axis=1)
    rows = np.repeat(x.reshape(1, -1), grid.shape[1], axis=0)
    rows[:, m.index] = grid.T
    rows = _rounded(rows.reshape((-1,) + x.shape[1:]), ctx.dtype)
    cc = None if c is None else np.repeat(c, len(rows), axis=0)
    z, logdet = ctx.adapter.forward(ctx.instantiate(spec), rows, cc)
    z_t = np.asarray(z, np.float64).reshape(len(rows), -1)[:, m.index]
    ref_t = reference.forward(spec, rows, cc).reshape(len(rows), -1)[:, m.index]
    tol = ctx.tol("forward", event_size(spec))
    size = np.maximum(1.0, np.maximum(np.abs(ref_t[1:]), np.abs(ref_t[:-1])))
    steps, ref_steps = np.diff(z_t, axis=0), np.diff(ref_t, axis=0)
    decrease = float(np.max(np.maximum(0.0, -steps) / size))
    ctx.record(decrease, tol)
    ctx.require(decrease <= tol, f"z decreases by {decrease:.3e} (relative) along the grid", decrease)
    slack = tol * size
    grows = ref_steps > 4.0 * slack
    ctx.require(bool(np.all(steps[grows] > 0.0)), f"z stays flat at {int(np.sum(steps[grows] <= 0))} grid steps "
                f"where the reference's grows (saturated?)")
    ctx.require(bool(np.all(np.isfinite(logdet))), "log|det| is not finite on the grid")


@prop("mixture_inverse_to_tolerance", requires=["black_box", "parameters", "inverse"], kinds=declares(MIXTURE))
def mixture_inverse_to_tolerance(ctx: CheckContext) -> None:
    """Components with log-scales spread over ±0.9 × the bound and means over [−2, 2] (wide brackets),
    targets |ℓ| = ``logit_target`` with alternating signs: f⁻¹(z) equals the reference's inverse (at
    the inverse's condition: z and the parameters rounded), and f(f⁻¹(z)) = z."""
    drawn = ctx.draw_spec()
    x0, c0 = ctx.draw_input(drawn, MAGNITUDES), ctx.draw_context(drawn)
    k = _components(drawn, x0, c0)
    spec = _fixed(drawn, np.linspace(-2.0, 2.0, k), np.linspace(-0.9, 0.9, k))
    target = ctx.draw(axis("logit_target", INVERSE_TARGETS), "|logit target|")
    mixtures = _mixtures(spec, x0, c0)
    z = x0.reshape(len(x0), -1).copy()
    for i, m in enumerate(mixtures):
        z[i, m.index] = target * _signs(len(m.index), len(x0))[i] * np.exp(m.a) + m.b
    z = _rounded(z.reshape(x0.shape), ctx.dtype)
    flow, size = ctx.instantiate(spec), event_size(spec)
    x_ref = reference.inverse(spec, z, c0)
    flat_x, flat_z = x_ref.reshape(len(z), -1), z.reshape(len(z), -1)
    inverse_condition, round_trip_condition = 1.0, 1.0
    for i, m in enumerate(mixtures):
        xt, zt = flat_x[i, m.index], flat_z[i, m.index]
        slope = np.exp(_entry_log_slope(xt, *_arguments(xt, m)[1:]))
        spread = _sensitivity(_entry_map, xt, m, EXACT_COMPONENTS, skip=("x",)) + np.abs(zt)
        inverse_condition = max(inverse_condition, float(np.max(spread / slope)) / max(1.0, float(np.max(np.abs(xt)))))
        round_trip = float(np.max(slope * np.abs(xt) / np.maximum(1.0, np.abs(zt))))
        round_trip_condition = max(round_trip_condition, round_trip)
    _usable(ctx, max(inverse_condition, round_trip_condition))
    x_hat = ctx.adapter.inverse(flow, z, c0)
    ctx.assert_close(x_hat, x_ref, "inverse", size, "f⁻¹(z) vs the reference's ℓ⁻¹", inverse_condition)
    ctx.assert_close(ctx.adapter.forward(flow, x_hat, c0)[0], z, "roundtrip", size, "f(f⁻¹(z)) vs z",
                     round_trip_condition)


@prop("mixture_logdet_peaked", requires=["black_box", "parameters"], kinds=declares(MIXTURE))
def mixture_logdet_peaked(ctx: CheckContext) -> None:
    """Very peaked components (log-scales from −0.97 to −0.5 × the bound, e^{−s} up to e^{6.8} ≈ 900
    at the bound 7), centred at 0, each entry at a point μ_i + e^{s_i}·v across a peak: log|det|
    equals slogdet of the reference's full autograd Jacobian, at the log-det's condition."""
    drawn = ctx.draw_spec()
    x, c = ctx.draw_input(drawn, MAGNITUDES, batch=1), ctx.draw_context(drawn, batch=1)
    k = _components(drawn, x, c)
    spec = _fixed(drawn, np.zeros(k), -np.linspace(0.97, 0.5, k))
    m = _mixtures(spec, x, c)[0]
    n = len(m.index)
    rows = np.repeat(x.reshape(1, -1), len(PEAK_OFFSETS), axis=0)
    which = (np.arange(len(PEAK_OFFSETS))[:, None] + np.arange(n)[None, :]) % k  # component per (row, entry)
    rows[:, m.index] = m.mu[np.arange(n), which] + np.exp(m.log_scale[np.arange(n), which]) * PEAK_OFFSETS[:, None]
    rows = _rounded(rows.reshape((-1,) + x.shape[1:]), ctx.dtype)
    cc = None if c is None else np.repeat(c, len(rows), axis=0)
    _, logdet = ctx.adapter.forward(ctx.instantiate(spec), rows, cc)
    expected = reference.log_abs_det(spec, rows, cc)
    condition = _usable(ctx, _logdet_condition(rows, [m] * len(rows), expected, EXACT_COMPONENTS))
    ctx.assert_close(logdet, expected, "logdet", event_size(spec), "log|det| across very peaked components", condition)


declare_axes(KIND, tail_depth=TAIL_DEPTHS, logit_target=INVERSE_TARGETS)
