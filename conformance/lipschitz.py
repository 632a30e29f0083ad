"""Norm bounds of Lipschitz-constrained layers: residual blocks here, QuAR blocks through the same
machinery (:mod:`.quar` registers its view). Contracts are checked, not trusted.

**What an estimate may claim, and the cap.** An implementation may report, per constrained layer,
how its current norm estimate was made and what it guarantees (hook ``norm_guarantees``: a
relative ``tolerance`` t and a ``failure_probability`` p: the estimate falls more than t below the
norm with probability at most p; ``hit_cap`` if an iteration stopped at its cap). The suite caps
what it accepts at :func:`norm_cap` = the ``norm_bound`` row, 8√ε (2.8·10⁻³ in float32, 1.2·10⁻⁷
in float64): a power iteration stopped at a σ̂-change of √ε/16 on a layer with r = σ₂/σ₁ ≤ 0.99
is off by about change/(1 − r²) ≈ 3√ε, and a stopping rule looser than that (a 10⁻³ change, a
vector test) claims nothing the suite can use. Each check (:class:`NormLedger`) then runs at

* t, deterministically, where p = 0 and t ≤ cap (an exact or certified estimate);
* t, statistically, where 0 < p < 1 and t ≤ cap: exceedances of t are counted over the example's
  estimates and compared with the Binomial(N, max p) tail at the per-example false-alarm rate
  (:func:`~.stats.per_example_alpha`, ≤ 10⁻⁶ per test): :func:`exceedance_limit`;
* the cap, deterministically, otherwise (no claim, a claim looser than the cap, vectors given by
  a spec or checkpoint): the constraint's own numbers are the contract — except where the
  implementation disclaims the estimate (failure probability 1: general and learned orders, the
  general power method's local maxima) and the reference knows the norm only in a bracket: there
  the only contract is that σ̂ is a lower bound (checked as no over-normalisation), and the
  Jacobian bound, which rests on every layer's, is not claimed either.

Power of the statistical verdict: over N estimates claimed at p the limit k is the smallest with
P(Binomial(N, p) ≥ k) ≤ α, and an implementation whose estimates break their tolerance at a rate
q is caught with probability P(Binomial(N, q) ≥ k): for the training property's N = 72 (24 steps,
three layers) at p = 10⁻³, k = 5, and q = 10 % is caught with probability 0.86, q = 15 % with
0.99 (a warm start stuck after a swap breaks it at every later step, q near 1/2).

An estimate that reports ``hit_cap`` **fails** as non-convergence (the suite sets the iteration cap
itself, :data:`CAP_FACTOR` × the default), and its true norm is compared all the same, in the
message — unless its claim does not rest on that iteration (:data:`CAP_INDEPENDENT`: a random-start
probe's guarantee, a certificate, an exact or closed-form value), where the claim alone is checked. True norms come from the reference, in each constraint's own norm: SVD for 2 → 2, closed
forms for 1 → q and p → ∞, sign enumeration for ∞ → q with few columns, brackets otherwise (the
lower end is compared: a vector the reference found that the weight stretches beyond the bound
is a fact), a convolution's operator norm at the input size from its explicit matrix.

Properties:

1. ``norm_bound_after_updates`` (residual kinds; orders 2, 1, ∞, mixed and learned as the residual
   strategies draw them, every one an axis): after loading and after random in-place updates, in
   training and in evaluation mode, convolutions also at another input size and back: every
   effective weight's exact norm ≤ coeff·(1 + t), no estimate at its cap, the effective weight a
   positive multiple of the raw one and not normalised below min(‖W‖, coeff)(1 − t) (a stale
   estimate of a larger weight); ‖J_g(x)‖_{p₀} ≤ coeff^L·Π(1 + t) on the implementation's own
   finite-difference Jacobian.
2. ``norm_estimates_current`` (residual and QuAR kinds): weights changed the way a user changes
   them — an in-place edit that scales a layer and swaps its top singular pair, an optimiser step
   (Adam from ``vjp`` gradients), ``load_state`` of a checkpoint saved after an update, ``convert``
   to the other dtype and back — then evaluated with **no refresh call**, in training and in
   evaluation mode: the family view's checks (below) on what the forward now applies, and,
   white-box, the forward equals the reference's at the current weights with exact norms.
3. ``norm_bound_under_training`` (residual and QuAR kinds): a few dozen Adam steps on the
   log-likelihood of drawn data, the optimiser in NumPy with gradients from ``vjp`` and applied
   with ``set_parameters`` (no refresh call), from layers whose top singular values are nearly
   equal (σ₂/σ₁ ≥ 0.99, constructed) and with the top pair of every layer swapped by an in-place
   edit halfway: every constrained layer's estimate against its exact norm after every step.
4. ``activation_derivative_bound``: the activation equals the reference's (LipSwish with its 1/1.1,
   eq. 10) for several β, its ``derivative`` equals autograd's, and |φ′| ≤ 1 on a dense grid.

**Family views** (:class:`NormView`, :data:`VIEWS`): how a family's constrained layers are read
and checked. Residual blocks (this module): the effective weights (hook ``normalized_weights``) in
their constraint's norm, and their relation to the raw weights (``parameters``). QuAR blocks
(:mod:`.quar`): the estimates σ̂_i (hook ``power_iteration_state``) against the exact layer norms,
and the certified bound of the Lipschitz trick.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats as sps

from flowspec import reference
from flowspec.reference import residual as R
from flowspec.reference.lipschitz import activation, constraint_norm, jacobian_norm
from flowspec.spec import FlowSpec

from . import finite_diff, namespace
from .covering import axis, declare_axes
from .property import CheckContext, PropertyFailure, prop
from .seeding import rng
from .stats import per_example_alpha
from .strategies import SEEDS, event_size
from .tolerances import EPS, relative_error, tolerance

LIPSCHITZ_KINDS = ("residual_mlp", "residual_conv")
UPDATE_SCALES = (0.1, 1.0, 5.0)
BETAS = (-4.0, -1.0, 0.0, 0.5, 2.0, 5.0)
GRID = np.linspace(-20.0, 20.0, 8001)
CAP_FACTOR = 10
TRAINING_STEPS = 24
SWAP_STEP = TRAINING_STEPS // 2
ADAM = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
TOP_RATIOS = (0.99, 0.995, 0.999)
CHANGES = ("in-place edit", "optimiser step", "load_state", "convert")
declare_axes(LIPSCHITZ_KINDS + ("quar_mlp", "quar_conv"), top_ratio=TOP_RATIOS, change=CHANGES)


def power_rtol(dtype: str) -> float:
    """The power iteration's stopping change for the norm-bound checks: √ε/16 (module docstring)."""
    return EPS[dtype] ** 0.5 / 16.0


def norm_cap(dtype: str) -> float:
    """The loosest relative tolerance the suite accepts for a norm estimate (module docstring)."""
    return tolerance("norm_bound", dtype, 1)


# ----------------------------------------------------------------------------- claims and verdicts

@dataclass(frozen=True)
class Claim:
    """How one layer's estimate is checked: at ``tolerance``, statistically with ``failure_probability``
    where ``probabilistic``; ``hit_cap`` fails it. ``disclaimed``: the implementation states that the
    estimate guarantees nothing (failure probability 1: general and learned orders), so where the
    reference cannot compute the norm exactly either, only what is claimed of every estimate — that
    it is a lower bound — is checked."""

    tolerance: float
    probabilistic: bool = False
    failure_probability: float = 0.0
    hit_cap: bool = False
    method: str = ""
    disclaimed: bool = False


CAP_INDEPENDENT = frozenset({"probe", "certified", "exact", "closed_form"})
"""Methods whose guarantee does not rest on an iteration's convergence: a warm iteration that stopped
at its cap before them does not fail the estimate (module docstring)."""


def claims(ctx: CheckContext, flow: Any, names: Sequence[str], cap: float) -> dict[str, Claim]:
    """Each layer's :class:`Claim` from the hooks ``norm_guarantees`` or ``norm_hit_cap`` where the
    adapter has them, at the cap otherwise (module docstring)."""
    caps = ctx.adapter.capabilities()
    if caps.has("norm_guarantees"):
        reported = ctx.adapter.call_hook(flow, "norm_guarantees")
    elif caps.has("norm_hit_cap"):
        reported = {name: {"hit_cap": capped} for name, capped in ctx.adapter.call_hook(flow, "norm_hit_cap").items()}
    else:
        reported = {}
    out = {}
    for name in names:
        given = reported.get(name, {})
        t, p = float(given.get("tolerance", np.inf)), float(given.get("failure_probability", 1.0))
        method = str(given.get("method", ""))
        capped = bool(given.get("hit_cap", False)) and method not in CAP_INDEPENDENT
        if method == "given" or not t <= cap or not p < 1.0:
            out[name] = Claim(cap, hit_cap=capped, method=method, disclaimed="failure_probability" in given and p >= 1.0)
        else:
            out[name] = Claim(t, p > 0.0, p, capped, method)
    return out


def exceedance_limit(trials: int, probability: float, alpha: float) -> int:
    """The smallest k with P(Binomial(trials, probability) ≥ k) ≤ alpha: more exceedances than a
    claim of ``probability`` per estimate allows at false-alarm rate ``alpha``."""
    k = int(sps.binom.isf(alpha, trials, probability))
    while k <= trials and sps.binom.sf(k - 1, trials, probability) > alpha:
        k += 1
    while k > 0 and sps.binom.sf(k - 2, trials, probability) <= alpha:
        k -= 1
    return k


@dataclass
class NormLedger:
    """The verdicts of one example's estimate checks (module docstring): deterministic ones raise at
    once; probabilistic exceedances are counted and judged by :meth:`verdict`."""

    trials: list[float] = field(default_factory=list)
    exceeded: list[str] = field(default_factory=list)

    def check(self, ctx: CheckContext, claim: Claim, excess: float, what: str) -> None:
        """``excess``: how far the checked quantity is beyond its bound, relative (≤ the claim's
        tolerance when the estimate keeps its promise)."""
        if claim.hit_cap:
            raise PropertyFailure(f"{what}: the estimate stopped at its iteration cap (not converged; the suite "
                                  f"sets the cap at {CAP_FACTOR}× the default); its true excess is {excess:.3e} "
                                  f"against a tolerance of {claim.tolerance:.1e}", excess, claim.tolerance)
        ctx.record(max(excess, 0.0), claim.tolerance)
        if claim.probabilistic:
            self.trials.append(claim.failure_probability)
            if excess > claim.tolerance:
                self.exceeded.append(f"{what} ({excess:.2e})")
        elif not excess <= claim.tolerance:
            method = f" ({claim.method} estimate)" if claim.method else ""
            raise PropertyFailure(f"{what}: {excess:.3e} beyond the bound, tolerance {claim.tolerance:.1e}{method}",
                                  excess, claim.tolerance)

    def verdict(self) -> None:
        """Fail when more probabilistic claims were broken than their failure probabilities allow."""
        if not self.trials:
            return
        limit = exceedance_limit(len(self.trials), max(self.trials), per_example_alpha())
        if len(self.exceeded) >= limit:
            raise PropertyFailure(
                f"{len(self.exceeded)} of {len(self.trials)} probabilistic norm estimates broke their tolerance, "
                f"at most {limit - 1} allowed at a failure probability of {max(self.trials):.1e} each and a false "
                f"alarm of {per_example_alpha():.1e}: {'; '.join(self.exceeded[:3])}", float(len(self.exceeded)),
                float(limit))


# ----------------------------------------------------------------------------- family views

class NormView:
    """How a family's constrained layers are read and checked (module docstring)."""

    def layer_names(self, spec: FlowSpec) -> list[str]:
        raise NotImplementedError

    def current(self, ctx: CheckContext, flow: Any, spec: FlowSpec) -> FlowSpec:
        """``spec`` with the flow's current trainable parameters (adapter ``parameters``)."""
        params = ctx.adapter.parameters(flow)
        return FlowSpec(spec.kind, spec.config, {**spec.params, **{k: params[k] for k in spec.params if k in params}})

    def check(self, ctx: CheckContext, flow: Any, spec: FlowSpec, ledger: NormLedger, when: str,
              spatial: tuple[int, int] | None = None) -> None:
        """Check every constrained layer of ``flow`` whose trainable parameters ``spec`` holds."""
        raise NotImplementedError

    def reference_forward(self, ctx: CheckContext, flow: Any, spec: FlowSpec, x: np.ndarray) -> tuple[np.ndarray, float]:
        """The reference's z at ``spec``'s weights with exact norms, and the relative allowance the
        estimates' tolerances add to the forward's."""
        raise NotImplementedError

    def degenerate(self, spec: FlowSpec, ratio: float, gen: np.random.Generator) -> dict[str, np.ndarray]:
        """Trainable weights of ``spec``'s layout whose top two singular values have ``ratio``."""
        raise NotImplementedError

    def swapped(self, spec: FlowSpec, weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``weights`` with every layer's top singular pair exchanged with its second (:func:`swap_top_pair`)."""
        raise NotImplementedError

    def suite_settings(self, spec: FlowSpec, dtype: str) -> FlowSpec:
        """``spec`` with the suite's iteration settings, where the family's config has them."""
        return spec


VIEWS: dict[str, NormView] = {}


def register_view(kinds: Sequence[str], view: NormView) -> None:
    for kind in kinds:
        VIEWS[kind] = view


def _has_view(kind: str) -> bool:
    return kind in VIEWS


# ----------------------------------------------------------------------------- constructed spectra

def two_path_matrix(mask: np.ndarray, ratio: float, scale: float, gen: np.random.Generator,
                    noise: float = 1e-3, groups: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """A matrix supported on ``mask`` (2-D) whose top two singular values are ``scale`` and about
    ``ratio·scale``: two large entries in distinct rows and columns of the mask, and noise of
    relative size ``noise`` (its singular values far below), so the top singular vectors are nearly
    unit vectors. With ``groups`` (a label per row and per column, ``(row_groups, col_groups)``) the
    second entry is taken in the first one's group where it can be (the two then share a block).
    Where the mask has no two such entries, a single one."""
    rows, cols = np.nonzero(mask)
    order = gen.permutation(len(rows))
    first = order[0]
    distinct = [k for k in order[1:] if rows[k] != rows[first] and cols[k] != cols[first]]
    if groups is not None:
        same = [k for k in distinct if groups[0][rows[k]] == groups[0][rows[first]]
                and groups[1][cols[k]] == groups[1][cols[first]]]
        distinct = same or distinct
    out = noise * scale * gen.standard_normal(mask.shape) * mask / np.sqrt(max(mask.shape))
    out[rows[first], cols[first]] = scale
    if distinct:
        out[rows[distinct[0]], cols[distinct[0]]] = ratio * scale
    return out


def swap_top_pair(matrix: np.ndarray, margin: float = 0.005) -> np.ndarray:
    """``matrix`` with its largest singular value moved to the second pair of singular vectors and
    the second raised above the first by ``margin`` (relative): the top pair swaps, as training can
    swap near-degenerate pairs, while the vectors of the old top pair stay exact singular vectors."""
    left, values, right = np.linalg.svd(matrix, full_matrices=False)
    if len(values) < 2:
        return matrix
    values = values.copy()
    values[0], values[1] = values[1], values[0] * (1.0 + margin)
    return (left * values) @ right


def swapped_layers(weights: dict, names, swap) -> dict:
    """``weights`` with ``swap`` applied to each named layer's matrix (a convolution's centre tap,
    where the two-path matrices of :func:`two_path_matrix` live)."""
    out = dict(weights)
    for name in names:
        w = np.array(weights[name])
        if w.ndim == 4:
            c_h, c_w = w.shape[2] // 2, w.shape[3] // 2
            w[:, :, c_h, c_w] = swap(w[:, :, c_h, c_w])
            out[name] = w
        else:
            out[name] = swap(w)
    return out


# ----------------------------------------------------------------------------- the residual view

class ResidualView(NormView):
    """Residual blocks: effective weights W_eff = W / max(1, σ̂/coeff) in each constraint's norm."""

    def layer_names(self, spec: FlowSpec) -> list[str]:
        return list(R.weight_constraints(spec))

    def check(self, ctx, flow, spec, ledger, when, spatial=None):
        coeff = R.setting(spec.config, "coeff")
        effective = ctx.adapter.call_hook(flow, "normalized_weights", None if spatial is None else tuple(spatial))
        cap = norm_cap(ctx.dtype)
        claim_of = claims(ctx, flow, self.layer_names(spec), cap)
        where = "" if spatial is None else f" at input size {tuple(spatial)}"
        applied = R.weight_norms(spec, effective, spatial)
        raw = R.weight_norms(spec, None, spatial) if ctx.adapter.capabilities().has("parameters") else None
        for name, (lower, upper) in applied.items():
            claim = claim_of[name]
            if claim.disclaimed and lower < upper:  # an estimate only, of a norm known only in a bracket
                ledger.check(ctx, claim, 0.0, f"{when}: ‖{name}‖ (an estimate without a claim)")
            else:
                ledger.check(ctx, claim, lower / coeff - 1.0, f"{when}: ‖{name}‖ = {lower:.8g}{where} against coeff "
                             f"{coeff} (exact norm of the applied weight)")
            if raw is not None:
                self._check_against_raw(ctx, np.asarray(spec.params[name]), effective[name], raw[name][1],
                                        applied[name][1], coeff, claim, ledger, f"{when}: {name}{where}")

    @staticmethod
    def _check_against_raw(ctx: CheckContext, weight: np.ndarray, effective: np.ndarray, raw_upper: float,
                           applied_upper: float, coeff: float, claim: Claim, ledger: NormLedger, what: str) -> None:
        """W_eff is a positive multiple of the raw weight W, at most W itself, and normalised no further
        than to min(‖W‖, coeff)·(1 − t): a stale estimate or cached weight of another W shows in one of
        them (upper ends of the brackets: exact where a closed form exists)."""
        ratio = float(np.linalg.norm(weight) / max(np.linalg.norm(effective), 1e-300))
        ctx.assert_close(effective * ratio, weight, "forward", weight.size,
                         f"{what}: the applied weight is not a multiple of the current raw weight")
        ctx.require(ratio >= 1.0 - ctx.tol("forward", weight.size),
                    f"{what}: the applied weight is {1 / ratio:.6g}× the raw one (soft normalisation only shrinks)")
        floor = min(raw_upper, coeff)
        ledger.check(ctx, claim, 1.0 - applied_upper / floor,
                     f"{what}: normalised to {applied_upper:.8g}, below min(‖W‖, coeff) = {floor:.8g} (an estimate "
                     f"of another weight)")

    def current(self, ctx, flow, spec):
        if not ctx.adapter.capabilities().has("parameters"):
            return spec
        return FlowSpec(spec.kind, spec.config, {**spec.params, **ctx.adapter.parameters(flow)})

    def reference_forward(self, ctx, flow, spec, x):
        """The reference at the applied weights the hook reports; the allowance covers a re-estimate
        in training mode landing elsewhere within the claimed tolerances (each layer's weight moves by
        at most its t relative, g by at most Σ t·|g|)."""
        effective = ctx.adapter.call_hook(flow, "normalized_weights", None)
        applied = FlowSpec(spec.kind, spec.config, {**spec.params, **effective})
        z = reference.forward(applied, x)
        tolerances = [c.tolerance for c in claims(ctx, flow, self.layer_names(spec), norm_cap(ctx.dtype)).values()]
        g = float(np.max(np.abs(z - x)))
        return z, float(np.sum(tolerances)) * max(1.0, g) / max(1.0, float(np.max(np.abs(z))))

    def degenerate(self, spec, ratio, gen):
        coeff = R.setting(spec.config, "coeff")
        out = {}
        for name, (p, q, in_shape) in R.weight_constraints(spec).items():
            shape = np.shape(spec.params[name])
            if len(shape) == 2:
                weight = two_path_matrix(np.ones(shape), ratio, 1.0, gen)
            else:
                weight = 1e-3 * gen.standard_normal(shape)
                weight[:, :, shape[2] // 2, shape[3] // 2] = two_path_matrix(np.ones(shape[:2]), ratio, 1.0, gen)
            _, upper = constraint_norm(weight, p, q, in_shape)
            out[name] = weight * (1.5 * coeff / upper)
        return out

    def swapped(self, spec, weights):
        return swapped_layers(weights, R.weight_constraints(spec), swap_top_pair)

    def suite_settings(self, spec, dtype):
        return _capped(spec, dtype)


register_view(LIPSCHITZ_KINDS, ResidualView())


# ----------------------------------------------------------------------------- 1. after updates

def _capped(spec: FlowSpec, dtype: str) -> FlowSpec:
    """``spec`` with the suite's iteration settings: stop at a change of :func:`power_rtol`, cap at
    :data:`CAP_FACTOR` × the default ``max_iter``."""
    settings = {"atol": 0.0, "rtol": power_rtol(dtype), "max_iter": CAP_FACTOR * R.DEFAULTS["max_iter"]}
    return FlowSpec(spec.kind, {**spec.config, **settings}, spec.params)


def _modes(ctx: CheckContext) -> list[bool | None]:
    return [True, False] if ctx.adapter.capabilities().has("train_eval") else [None]


def _set_mode(ctx: CheckContext, flow: Any, training: bool | None) -> str:
    if training is None:
        return ""
    ctx.adapter.set_training(flow, training)
    return " in training mode" if training else " in evaluation mode"


def _check_jacobian(ctx: CheckContext, spec: FlowSpec, flow: Any, x: np.ndarray, tol: float) -> None:
    size = event_size(spec)
    jac_f = finite_diff.jacobian(lambda p: ctx.adapter.forward(flow, p)[0], x, ctx.dtype,
                                 namespace.kind(spec.kind).domain)
    bound = R.lipschitz_bound(spec) * (1.0 + tol) ** len(R.weight_constraints(spec))
    slack = ctx.tol("fd_jacobian", size) * size
    for jac in jac_f:
        lower, _ = jacobian_norm(jac - np.eye(size), R.input_order(spec))
        ctx.record(max(lower - bound, 0.0), slack)
        if lower > bound + slack:
            raise PropertyFailure(f"‖J_g(x)‖_p0 = {lower:.8g} exceeds the constraint's bound coeff^L(1 + tol)^L = "
                                  f"{bound:.8g} (finite differences of the forward)", lower - bound, slack)


@prop("norm_bound_after_updates", requires=["black_box", "normalized_weights", "perturb_weights"],
      kinds=LIPSCHITZ_KINDS)
def norm_bound_after_updates(ctx: CheckContext) -> None:
    """After loading and after random in-place updates, in training and evaluation mode (convolutions
    also at another input size and back), with the iteration cap at 10× the default: no estimate at
    its cap, exact norms of the applied weights ≤ coeff·(1 + t), applied weights proportional to the
    raw ones and not over-normalised, and ‖J_g(x)‖ ≤ coeff^L·(1 + t)^L (module docstring)."""
    view = VIEWS[ctx.kind]
    spec = view.suite_settings(ctx.draw_spec(), ctx.dtype)
    flow = ctx.instantiate(spec)
    sizes: list[tuple[int, int] | None] = [None]
    if spec.kind == "residual_conv":
        _, height, width = R.shape_of(spec.config)
        sizes += [(height + 3, width + 2), (height, width)]
    ledger = NormLedger()
    gen = rng("norm updates", ctx.draw(SEEDS, "update seed"))
    for training in _modes(ctx):
        mode = _set_mode(ctx, flow, training)
        view.check(ctx, flow, view.current(ctx, flow, spec), ledger, f"after loading{mode}")
        for step, scale in enumerate(UPDATE_SCALES):
            current = ctx.adapter.call_hook(flow, "normalized_weights", None)
            deltas = {name: scale * np.sqrt(np.mean(w ** 2)) * gen.standard_normal(w.shape) for name, w in current.items()}
            ctx.adapter.call_hook(flow, "perturb_weights", deltas)
            now = view.current(ctx, flow, spec)
            for spatial in sizes:
                view.check(ctx, flow, now, ledger, f"after update {step + 1} (scale {scale}){mode}", spatial)
    ledger.verdict()
    now = view.current(ctx, flow, spec)
    if not any(c.disclaimed for c in claims(ctx, flow, view.layer_names(spec), norm_cap(ctx.dtype)).values()):
        _check_jacobian(ctx, now, flow, ctx.draw_input(spec, batch=2), norm_cap(ctx.dtype))


# ----------------------------------------------------------------------------- 2. estimates follow the weights

def _load_degenerate(ctx: CheckContext, spec: FlowSpec, view: NormView, ratio: float) -> tuple[Any, FlowSpec]:
    """A flow of ``spec`` whose constrained weights are set in place (``set_parameters``) to
    near-degenerate ones (:meth:`NormView.degenerate`); returns it with the spec of its parameters."""
    flow = ctx.instantiate(spec)
    weights = view.degenerate(spec, ratio, rng("degenerate", spec.to_json()))
    ctx.adapter.set_parameters(flow, weights)
    return flow, view.current(ctx, flow, spec)


def _adam_step(ctx: CheckContext, flow: Any, x: np.ndarray, state: dict[str, Any]) -> None:
    """One Adam step (NumPy, :data:`ADAM`) on −mean log p(x), p the flow's density with a standard
    normal base: gradients from ``vjp`` with z-weights −z/B and log-det weights 1/B, applied with
    ``set_parameters``."""
    z, _ = ctx.adapter.forward(flow, x)
    batch = x.shape[0]
    grads, _ = ctx.adapter.vjp(flow, x, -z / batch, np.full(batch, 1.0 / batch))
    params = ctx.adapter.parameters(flow)
    state["t"] = state.get("t", 0) + 1
    t, b1, b2 = state["t"], ADAM["beta1"], ADAM["beta2"]
    new = {}
    for name in sorted(params):
        g = -np.asarray(grads[name])  # the gradient of the loss −log p
        m = state.setdefault(("m", name), np.zeros_like(g))
        v = state.setdefault(("v", name), np.zeros_like(g))
        m[...] = b1 * m + (1 - b1) * g
        v[...] = b2 * v + (1 - b2) * g * g
        step = ADAM["lr"] * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + ADAM["eps"])
        new[name] = params[name] - step
    ctx.adapter.set_parameters(flow, new)


def _edit(ctx: CheckContext, flow: Any, spec: FlowSpec, view: NormView, factor: float) -> None:
    """An in-place edit (``set_parameters``): every constrained weight scaled by ``factor`` with its top
    singular pair swapped (:meth:`NormView.swapped`), so the old top vectors become exact singular
    vectors of the second pair (what warm starts cannot see)."""
    now = view.current(ctx, flow, spec)
    scaled = {name: factor * np.asarray(now.params[name]) for name in view.layer_names(spec)}
    ctx.adapter.set_parameters(flow, view.swapped(spec, scaled))


def _perturb(ctx: CheckContext, flow: Any, spec: FlowSpec, view: NormView, gen: np.random.Generator) -> None:
    """An in-place edit adding to every constrained weight a random perturbation of half its RMS:
    every layer's singular vectors move, so estimates of the weights before it are visibly stale."""
    now = view.current(ctx, flow, spec)
    moved = {}
    for name in view.layer_names(spec):
        w = np.asarray(now.params[name])
        moved[name] = w + 0.5 * np.sqrt(np.mean(w ** 2)) * gen.standard_normal(w.shape)
    ctx.adapter.set_parameters(flow, moved)


def _stale_checkpoint(ctx: CheckContext, spec: FlowSpec, view: NormView, x: np.ndarray) -> bytes:
    """A checkpoint of another flow of the same config, evaluated, then edited in place
    (:func:`_perturb`) and saved before any further evaluation: its stored estimates describe the
    weights before the edit."""
    other, _ = _load_degenerate(ctx, spec, view, TOP_RATIOS[0])
    ctx.adapter.forward(other, x)
    _perturb(ctx, other, spec, view, rng("stale checkpoint", spec.to_json()))
    return ctx.adapter.save_state(other)


OTHER_DTYPE = {"float64": "float32", "float32": "float64"}


def _apply_change(ctx: CheckContext, flow: Any, spec: FlowSpec, view: NormView, change: str,
                  x: np.ndarray) -> Any:
    """Change the flow's weights as a user does (:data:`CHANGES`: :func:`_edit` ×1.5, an Adam step, a
    :func:`_stale_checkpoint` loaded, or the flow moved to the other dtype, evaluated there, edited
    by :func:`_perturb` and moved back); returns the flow."""
    if change == "in-place edit":
        _edit(ctx, flow, spec, view, 1.5)
    elif change == "optimiser step":
        _adam_step(ctx, flow, x, {})
    elif change == "load_state":
        ctx.adapter.load_state(flow, _stale_checkpoint(ctx, spec, view, x))
    else:
        flow = ctx.adapter.convert(flow, OTHER_DTYPE[ctx.dtype])
        ctx.adapter.forward(flow, x)
        _perturb(ctx, flow, spec, view, rng("convert", spec.to_json()))
        flow = ctx.adapter.convert(flow, ctx.dtype)
    return flow


@prop("norm_estimates_current", requires=["black_box", "parameters", "state", "convert", "grad"], kinds=_has_view)
def norm_estimates_current(ctx: CheckContext) -> None:
    """Weights changed as a user changes them (an in-place edit scaling every layer and swapping its
    top singular pair, an Adam step, loading a checkpoint saved after an edit, ``.to`` the other
    dtype and back), then evaluated with no refresh call, in training and in evaluation mode: the
    family's checks on what the forward applies (estimates against exact norms at the claimed
    tolerance) and, white-box, the forward equals the reference's at the current weights."""
    view = VIEWS[ctx.kind]
    spec = view.suite_settings(ctx.draw_spec(), ctx.dtype)
    change = ctx.draw(axis("change", CHANGES), "change")
    ratio = ctx.draw(axis("top_ratio", TOP_RATIOS), "top ratio")
    x = ctx.draw_input(spec, magnitudes=(1.0,))
    ledger = NormLedger()
    for training in _modes(ctx):
        flow, _ = _load_degenerate(ctx, spec, view, ratio)
        mode = _set_mode(ctx, flow, training)
        z_before, _ = ctx.adapter.forward(flow, x)
        flow = _apply_change(ctx, flow, spec, view, change, x)
        _set_mode(ctx, flow, training)
        z, _ = ctx.adapter.forward(flow, x)
        now = view.current(ctx, flow, spec)
        view.check(ctx, flow, now, ledger, f"after {change}{mode}, no refresh")
        if "white_box" in ctx.adapter.capabilities().modes:
            _check_forward(ctx, view, flow, now, x, z, f"after {change}{mode}", relative_error(z, z_before))
    ledger.verdict()


def _check_forward(ctx: CheckContext, view: NormView, flow: Any, spec: FlowSpec, x: np.ndarray, z: np.ndarray,
                   when: str, moved: float) -> None:
    """White-box: z equals the reference's at the current weights with exact norms
    (:meth:`NormView.reference_forward`)."""
    expected, allowance = view.reference_forward(ctx, flow, spec, x)
    tol = ctx.tol("forward", event_size(spec)) + allowance
    err = relative_error(z, expected)
    ctx.record(err, tol)
    if not err <= tol:
        raise PropertyFailure(f"{when}, no refresh: z differs from the reference's at the current weights with exact "
                              f"norms by {err:.3e} > {tol:.1e} (a stale estimate; the change moved z by {moved:.2e})",
                              err, tol)


# ----------------------------------------------------------------------------- 3. under training

@prop("norm_bound_under_training", requires=["black_box", "parameters", "grad"], kinds=_has_view)
def norm_bound_under_training(ctx: CheckContext) -> None:
    """:data:`TRAINING_STEPS` Adam steps on the log-likelihood of drawn data (NumPy Adam, ``vjp``
    gradients, ``set_parameters``, no refresh call) from layers with σ₂/σ₁ ≥ 0.99 and every layer's top
    pair swapped in place at step :data:`SWAP_STEP`: every constrained layer's estimate is checked
    against its exact norm after every step, at its claimed tolerance (module docstring)."""
    view = VIEWS[ctx.kind]
    spec = view.suite_settings(ctx.draw_spec(), ctx.dtype)
    flow, now = _load_degenerate(ctx, spec, view, ctx.draw(axis("top_ratio", TOP_RATIOS), "top ratio"))
    if ctx.adapter.capabilities().has("train_eval"):
        ctx.adapter.set_training(flow, True)
    data = ctx.draw_input(spec, magnitudes=(1.0,), batch=4 * TRAINING_STEPS)
    ledger, state = NormLedger(), {}
    for step in range(TRAINING_STEPS):
        if step == SWAP_STEP:
            _edit(ctx, flow, spec, view, 1.0)
        _adam_step(ctx, flow, data[4 * step:4 * step + 4], state)
        ctx.adapter.forward(flow, data[4 * step:4 * step + 4])  # the next evaluation, no refresh call
        now = view.current(ctx, flow, spec)
        view.check(ctx, flow, now, ledger, f"after Adam step {step + 1}{' (top pairs swapped)' if step >= SWAP_STEP else ''}")
    ledger.verdict()


# ----------------------------------------------------------------------------- 4. activations

@prop("activation_derivative_bound", requires=["black_box", "activation_derivatives"], kinds=LIPSCHITZ_KINDS)
def activation_derivative_bound(ctx: CheckContext) -> None:
    """φ equals the reference's activation (LipSwish with its 1/1.1, eq. 10) for several β, its
    ``derivative`` equals autograd's, and sup |φ′| ≤ 1 on a dense grid (every β for LipSwish)."""
    spec = ctx.draw_spec()
    flow = ctx.instantiate(spec)
    name = R.setting(spec.config, "activation")
    betas = np.array(BETAS)
    out = ctx.adapter.call_hook(flow, "activation_derivatives", GRID, betas)
    expected = np.stack([np.asarray(activation(name, GRID, np.array([b]))) for b in betas])
    ctx.assert_close(out["value"], expected, "forward", 1, f"{name}(z) for β_raw in {BETAS}")
    ctx.assert_close(out["derivative"], out["autograd"], "forward", 1, f"{name}.derivative vs autograd")
    sup = float(np.max(np.abs(out["autograd"])))
    ctx.record(max(sup - 1.0, 0.0), ctx.tol("forward", 1))
    if sup > 1.0 + ctx.tol("forward", 1):
        raise PropertyFailure(f"sup |{name}′| = {sup:.6f} > 1 on the grid", sup - 1.0, ctx.tol("forward", 1))
