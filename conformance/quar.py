"""Spec strategies and properties of the QuAR kinds (``quar_mlp``, ``quar_conv``; QuAR flows, Gopal).

Properties (see each docstring):

1. ``quar_diagonal_propagation`` — the implementation's propagated diagonal ``∂F_d/∂x_d`` equals the
   diagonal of the reference's full Jacobian and is not identically zero (a strict MADE mask gives
   a valid, volume-preserving flow that every other check would pass);
   ``quar_logdet_not_zero`` — the same, black-box, on the implementation's log-det.
2. Triangularity: the kinds declare ``forbidden`` (every entry above the diagonal in their
   autoregressive order), so :mod:`.structure`'s ``autoregressive_forbidden_entries_zero`` (the
   implementation's own autograd Jacobian) and ``autoregressive_forbidden_entries_zero_fd``
   (one-sided finite differences) apply to them, as to every autoregressive kind.
3. log|det| = slogdet of the full Jacobian: the generic ``logdet_matches_reference`` and
   ``logdet_matches_fd_jacobian``.
4. ``quar_block_power_iteration`` — App. C's warm-start trap under option (b): estimates converged
   while block 0 dominates stay correct after another block becomes dominant;
   ``quar_option_b_inverse`` — a constructed option-(b) map with ``σ_max(J_F) > σ`` while
   ``|diag| ≤ σ``, where the fixed-point inverse reports failure and the coordinate-wise inverse
   succeeds by backward error.
5. ``quar_lipschitz_bound`` — with layers whose norms exceed 1 and through training steps that
   push θ down: θ stays ≥ 0, and the certified bound (the implementation's Lipschitz-trick factor
   times the exact norms) and the implementation's own Jacobian obey ``Lip(F) ≤ σ(1 + tol)^L``
   (option (a)) or ``|∂F_d/∂x_d| ≤ σ(1 + tol)^L`` (option (b)).
6. ``quar_inverse_methods`` — the coordinate-wise inverse equals the reference's; the fixed-point
   inverse equals it or raises with its residual above its tolerance (the generic inverse
   properties cover the default one), at tolerances scaled by the inverse problem's amplification
   ‖(I + J_F)⁻¹‖ (the condition number is 1 for every 1-D Jacobian).
7. Norm estimates (:mod:`.lipschitz`'s ``norm_estimates_current`` and ``norm_bound_under_training``,
   through :class:`QuARView`): every σ̂_i against the exact layer norm of the current weights, from
   below at its claimed tolerance and from above at rounding, and the certified bound of the
   Lipschitz trick, after user-style weight changes with no refresh call and after every step of
   Adam training from near-degenerate layers.

Strategies: every discrete option is an axis of the covering design — the norm option, the
activation, σ (0.5 to 0.999), the MLP's hidden factors and the conv's kernels, channels, sizes and
factors — and the parameters are moved across their range: θ tiny (the trick's factor is set by the
norms alone) or large, the weights scaled by 0.1 (near-linear) or 10 (saturated activations), the
power-iteration vectors those of the moved weights.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from hypothesis import assume, strategies as st

from flowspec import reference
from flowspec.errors import ConvergenceError
from flowspec.reference import quar as rq
from flowspec.reference.norms import spectral_norm
from flowspec.spec import FlowSpec

from .covering import axis, declare_axes
from .lipschitz import Claim, NormView, claims, norm_cap, register_view, swapped_layers, two_path_matrix
from .property import CheckContext, PropertyFailure, prop
from .seeding import rng
from .strategies import MAGNITUDES, SEEDS, config, event_size, from_configs, register_specs, sizes
from .tolerances import MAX_CONDITION, relative_error, tolerance

KINDS = ("quar_mlp", "quar_conv")
SIGMAS = (0.5, 0.9, 0.97, 0.99, 0.999)
CONV_KERNEL_CHOICES = ((3, 1, 3), (3, 3), (1, 3), (3, 1), (5, 1, 3))
MLP_FACTORS = ((1,), (2,), (3,), (1, 2), (2, 3), (3, 1, 2))
RHO_REGIMES = ("initial", "tiny theta", "large theta")
WEIGHT_REGIMES = ("initial", "small", "large")
WEIGHT_SCALES = {"initial": 1.0, "small": 0.1, "large": 10.0}
TRAINING_STEPS = 3
OPTION_B_DIM = 30  # transient growth of about 1e21 (module docstring of the accelerated QuAR blocks)

declare_axes(KINDS, norm=rq.NORMS, activation=rq.ACTIVATIONS, sigma=SIGMAS, rho=RHO_REGIMES,
             weights=WEIGHT_REGIMES, aligned=(False, True))
declare_axes("quar_mlp", hidden_factors=[list(f) for f in MLP_FACTORS], dim=range(1, 9))
declare_axes("quar_conv", kernels=[list(k) for k in CONV_KERNEL_CHOICES], channels=range(1, 4),
             height=range(1, 5), width=range(1, 5), conv_factor=(1, 2, 3))


def _common(norms: tuple[str, ...]) -> dict[str, st.SearchStrategy]:
    return {"activation": axis("activation", rq.ACTIVATIONS), "sigma": axis("sigma", SIGMAS),
            "norm": axis("norm", norms)}


def mlp_configs(norms: tuple[str, ...] = rq.NORMS, dims: tuple[int, int] = (1, 8)) -> st.SearchStrategy:
    """Configs of ``quar_mlp``: every discrete option an axis (module docstring)."""
    return config(dim=sizes(*dims, name="dim"), hidden_factors=axis("hidden_factors", [list(f) for f in MLP_FACTORS]),
                  **_common(norms))


@st.composite
def conv_configs(draw, norms: tuple[str, ...] = rq.NORMS, channels: tuple[int, int] = (1, 3),
                 spatial: tuple[int, int] = (1, 4)) -> dict[str, Any]:
    """Configs of ``quar_conv``: kernels, channels, sizes and factors, each an axis."""
    kernels = draw(axis("kernels", [list(k) for k in CONV_KERNEL_CHOICES]))
    shape = [draw(sizes(*channels, name="channels")), draw(sizes(*spatial, name="height")),
             draw(sizes(*spatial, name="width"))]
    factors = [draw(axis("conv_factor", (1, 2, 3))) for _ in range(len(kernels) - 1)]
    return {"shape": shape, "hidden_factors": factors, "kernels": list(kernels),
            **{k: draw(v) for k, v in _common(norms).items()}}


def _regimes(spec: FlowSpec, rho: str, weights: str) -> FlowSpec:
    """``spec`` with θ and the weights moved into a regime (:data:`RHO_REGIMES`,
    :data:`WEIGHT_REGIMES`): θ = softplus(ρ) ≈ 2·10⁻⁹ (the Lipschitz trick's factor is then set by the
    norms alone) or ≈ 3 (F far below its bound); weights scaled by 0.1 or 10 (near-linear or saturated
    activations), the power-iteration vectors those of the scaled weights."""
    groups = rq.groups_of(spec.config)
    params = dict(spec.params)
    if rho == "tiny theta":
        params["rho"] = np.full(groups, -20.0)
    elif rho == "large theta":
        params["rho"] = np.full(groups, 3.0)
    scale = WEIGHT_SCALES[weights]
    for i in range(rq.n_layers(spec.config)):
        params[f"weight_{i}"] = scale * np.asarray(params[f"weight_{i}"])
    return _converged(FlowSpec(spec.kind, spec.config, params))


def _specs(kind: str, weight_regimes: tuple[str, ...] = WEIGHT_REGIMES) -> st.SearchStrategy:
    """Specs of ``kind`` with every config option, θ regime and weight regime an axis."""
    configs = mlp_configs() if kind == "quar_mlp" else conv_configs()
    return st.builds(lambda spec, rho, weights: _regimes(spec, rho, weights), from_configs(kind, configs),
                     axis("rho", RHO_REGIMES), axis("weights", weight_regimes))


@register_specs("quar_mlp")
def _mlp_specs():
    return _specs("quar_mlp")


@register_specs("quar_conv")
def _conv_specs():
    return _specs("quar_conv")


# ----------------------------------------------------------------------------- helpers

def _with_params(spec: FlowSpec, **params: np.ndarray) -> FlowSpec:
    return FlowSpec(spec.kind, spec.config, {**spec.params, **params})


def _converged(spec: FlowSpec, **extra: np.ndarray) -> FlowSpec:
    """``spec`` with its power-iteration vectors set to the exact top singular vectors."""
    spec = _with_params(spec, **extra)
    vectors = {}
    for i in range(rq.n_layers(spec.config)):
        vectors[f"u_{i}"], vectors[f"v_{i}"] = rq.converged_vectors(spec.config, i, np.asarray(spec.params[f"weight_{i}"]))
    return _with_params(spec, **vectors)


def _residual_jacobians(ctx: CheckContext, flow: Any, x: np.ndarray) -> np.ndarray:
    """``J_F`` per sample from the implementation's own autograd Jacobian (hook ``jacobian``)."""
    jac = np.asarray(ctx.adapter.call_hook(flow, "jacobian", x))
    return jac - np.eye(jac.shape[-1])


def _bound_tolerance(ctx: CheckContext, spec: FlowSpec) -> float:
    """``(1 + tol)^L − 1``: each of the L estimates may fall short of its norm by the relative ``tol``."""
    return (1.0 + tolerance("norm_bound", ctx.dtype, 1)) ** rq.n_layers(spec.config) - 1.0


# ----------------------------------------------------------------------------- 1. diagonal propagation

@prop("quar_diagonal_propagation", requires=["white_box", "diag_jacobian"], kinds=KINDS)
def quar_diagonal_propagation(ctx: CheckContext) -> None:
    """The propagated diagonal ∂F_d/∂x_d equals diag of the reference's full Jacobian, and is not
    identically zero where the reference's is not (saturated activations can zero it: ELU′ ≈ 0 far
    below 0)."""
    spec = ctx.draw_spec()
    x = ctx.draw_input(spec)
    diag = ctx.adapter.call_hook(ctx.load(spec), "diag_jacobian", x)
    size = event_size(spec)
    expected = rq.residual_diagonal(spec, x)
    ctx.assert_close(diag, expected, "diag", size, "∂F_d/∂x_d by diagonal propagation")
    if float(np.max(np.abs(expected))) > 2.0 * ctx.tol("diag", size):
        ctx.require(float(np.max(np.abs(diag))) > ctx.tol("diag", size),
                    "the propagated diagonal is identically zero: the flow is volume-preserving (a strict MADE mask?)")


@prop("quar_logdet_not_zero", requires=["black_box"], kinds=KINDS)
def quar_logdet_not_zero(ctx: CheckContext) -> None:
    """log|det| is distinguishable from 0 (a QuAR block with generic parameters changes volume), at
    inputs of magnitude ≤ 3 and weights of their initial or a smaller scale, where the activations
    do not saturate."""
    spec = ctx.draw(_specs(ctx.kind, weight_regimes=("initial", "small")), "spec")
    x = ctx.draw_input(spec, MAGNITUDES)
    _, logdet = ctx.adapter.forward(ctx.instantiate(spec), x)
    tol = ctx.tol("logdet", event_size(spec))
    ctx.record(tol / max(float(np.max(np.abs(logdet))), 1e-300), 1.0)
    ctx.require(float(np.max(np.abs(logdet))) > tol,
                f"log|det| is {np.max(np.abs(logdet)):.1e} ≤ {tol:.1e} at every sample: the diagonal of the "
                f"Jacobian is zero, the flow volume-preserving (a strict MADE mask?)")


# ----------------------------------------------------------------------------- 4. App. C pitfalls

def _rescaled_blocks(weight: np.ndarray, config: Mapping[str, Any], index: int, norms: np.ndarray,
                     gen: np.random.Generator) -> np.ndarray:
    """``weight`` with its diagonal blocks (centre-tap blocks for kernels) replaced by fresh random
    blocks of the given spectral norms, one per group."""
    factors, groups = rq.factors_of(config), rq.groups_of(config)
    k_out, k_in = factors[index + 1], factors[index]
    weight = np.array(weight)
    centre = weight[:, :, weight.shape[-1] // 2, weight.shape[-1] // 2] if weight.ndim == 4 else weight
    for g, norm in enumerate(norms):
        block = gen.standard_normal((k_out, k_in))
        centre[np.ix_(_units(g, k_out, groups), _units(g, k_in, groups))] = norm * block / spectral_norm(block)
    return weight


def _units(group: int, k: int, groups: int) -> np.ndarray:
    """The units (channels) of ``group`` in a layer of ``k`` units per group (interleaved layout)."""
    return group + groups * np.arange(k)


@st.composite
def _pitfall_specs(draw, kind: str) -> FlowSpec:
    """Option-(b) specs with at least two groups."""
    if kind == "quar_mlp":
        cfg = draw(mlp_configs(norms=("diagonal",), dims=(2, 5)))
    else:
        cfg = draw(conv_configs(norms=("diagonal",), channels=(2, 3), spatial=(1, 3)))
    return reference.init_spec(kind, cfg, rng("quar", "pitfall", draw(SEEDS)))


@prop("quar_block_power_iteration", requires=["white_box", "refresh_norms", "assign_parameters"], kinds=KINDS)
def quar_block_power_iteration(ctx: CheckContext) -> None:
    """Option (b), App. C: estimates converged while group 0's diagonal block dominates (norm 2,
    others ≤ 1) must follow a weight update that makes group 1's block dominant (norm 3): a single
    warm-started vector over the whole block-diagonal matrix stays on block 0 and keeps reporting 2."""
    spec = ctx.draw(_pitfall_specs(ctx.kind), "spec")
    gen = rng("quar", "pitfall-blocks", spec.to_json())
    groups, layers = rq.groups_of(spec.config), rq.n_layers(spec.config)
    before = {f"weight_{i}": _rescaled_blocks(spec.params[f"weight_{i}"], spec.config, i,
                                              np.r_[2.0, gen.uniform(0.3, 1.0, groups - 1)], gen) for i in range(layers)}
    start = _converged(spec, **before)
    flow = ctx.load(start)
    ctx.adapter.call_hook(flow, "refresh_norms")
    after = {name: _rescaled_blocks(w, spec.config, int(name.split("_")[1]),
                                    np.r_[2.0, 3.0, gen.uniform(0.3, 1.0, groups - 2)], gen) for name, w in before.items()}
    ctx.adapter.call_hook(flow, "assign_parameters", **after)
    estimates = np.asarray(ctx.adapter.call_hook(flow, "refresh_norms"))
    exact = rq.exact_layer_norms(_with_params(start, **after))
    tol = tolerance("norm_bound", ctx.dtype, 1)
    gap = float(np.max(np.abs(estimates - exact) / exact))
    ctx.record(gap, tol)
    if not gap <= tol:
        raise PropertyFailure(
            f"after group 1's diagonal block became dominant the block-norm estimates are {np.round(estimates, 6)}, "
            f"the true maxima {np.round(exact, 6)} (relative gap {gap:.2e} > {tol:.1e}): the warm-started "
            f"iteration stayed on the block that dominated before (App. C)", gap, tol)


@prop("quar_option_b_inverse", requires=["white_box", "fixed_point_inverse", "coordinatewise_inverse"],
      kinds=["quar_mlp"])
def quar_option_b_inverse(ctx: CheckContext) -> None:
    """Option (b) bounds the diagonal, not Lip(F): a linear lower-triangular F (D = 30, diagonal 0.9,
    N(0, 1) below) has σ_max(J_F) > σ while |∂F_d/∂x_d| ≤ σ. The plain fixed-point inverse must not
    return a wrong answer (it hits its cap: transients of about 1e21), and the coordinate-wise and the
    default inverses must succeed, judged by backward error ‖f(x̂) − y‖/‖y‖."""
    seed = ctx.draw(SEEDS, "seed")
    spec = rq.triangular_linear_spec(OPTION_B_DIM, 0.9, rng("quar", "option-b", seed))
    sigma = rq.sigma_of(spec.config)
    x = ctx.draw_input(spec)
    flow = ctx.load(spec)
    jac = _residual_jacobians(ctx, flow, x[:1])[0]
    diag_tol = _bound_tolerance(ctx, spec) + ctx.tol("diag", OPTION_B_DIM)
    ctx.require(float(np.max(np.abs(np.diag(jac)))) <= sigma * (1.0 + diag_tol),
                f"|∂F_d/∂x_d| reaches {np.max(np.abs(np.diag(jac))):.6f} > σ = {sigma}")
    full, blocks = (float(np.prod(rq.exact_layer_norms(spec, which))) for which in ("full", "diagonal"))
    ctx.require(full > 2.0 * blocks and float(spectral_norm(jac)) > 2.0 * sigma,
                f"the constructed case lost its point: Π‖W_i‖ = {full:.3f}, Π max‖B_i,g‖ = {blocks:.3f}, "
                f"σ_max(J_F) = {spectral_norm(jac):.3f}")
    y = reference.forward(spec, x)
    tol = ctx.tol("roundtrip", OPTION_B_DIM)
    try:
        x_fixed = ctx.adapter.call_hook(flow, "fixed_point_inverse", y)
    except ConvergenceError as exc:
        ctx.require(exc.residual > exc.tolerance, f"the fixed-point inverse raised with a residual below its tolerance: {exc}")
    else:
        ctx.assert_close(reference.forward(spec, np.asarray(x_fixed)), y, "roundtrip", OPTION_B_DIM,
                         "backward error of the fixed-point inverse (it returned, so it must be right)")
    for name, x_hat in (("coordinate-wise", ctx.adapter.call_hook(flow, "coordinatewise_inverse", y)),
                        ("default", ctx.adapter.inverse(flow, y))):
        error = relative_error(reference.forward(spec, np.asarray(x_hat)), y)
        ctx.record(error, tol)
        if not error <= tol:
            raise PropertyFailure(f"backward error of the {name} inverse {error:.3e} > {tol:.1e}", error, tol)


# ----------------------------------------------------------------------------- 5. Lipschitz trick

def _aligned_mlp(spec: FlowSpec, gen: np.random.Generator) -> dict[str, np.ndarray]:
    """Weights whose mass is a rank-one path through group 0 (block norms a_i in [1.5, 3], everything
    else 10⁻³ noise): with the identity activation ∂F_0/∂x_0 ≈ scale_0·Π a_i and ‖W_i‖ ≈ a_i, so
    the certified bound is nearly attained by the Jacobian itself."""
    factors, groups = rq.factors_of(spec.config), rq.groups_of(spec.config)
    weights = {}
    for i in range(rq.n_layers(spec.config)):
        k_out, k_in = factors[i + 1], factors[i]
        w = 1e-3 * gen.standard_normal((k_out * groups, k_in * groups))
        w[np.ix_(_units(0, k_out, groups), _units(0, k_in, groups))] = gen.uniform(1.5, 3.0) / np.sqrt(k_out * k_in)
        weights[f"weight_{i}"] = w
    return weights


def _aligned_conv(spec: FlowSpec, gen: np.random.Generator) -> dict[str, np.ndarray]:
    """Positive kernels (every unmasked tap in [1, 1.5], scaled so that layer norms exceed 1): their
    operators' top singular vectors are positive images, nearly aligned, so σ_max(J_F) comes close
    to the certified bound, and a 3×3 operator's norm is well above its reshaped kernel's."""
    weights = {}
    for i, mask in enumerate(rq.masks(spec.config)):
        weights[f"weight_{i}"] = gen.uniform(1.0, 1.5, mask.shape) / np.sqrt(max(mask[0].sum(), 1.0))
    return weights


@st.composite
def _lipschitz_specs(draw, kind: str) -> FlowSpec:
    """θ ≈ 2·10⁻⁹ and layer norms above 1, so that a missing or underestimated factor of the Lipschitz
    trick shows; half of them aligned (identity activation), where the implementation's own Jacobian
    attains the bound."""
    cfg = draw(mlp_configs(dims=(1, 6)) if kind == "quar_mlp" else conv_configs(spatial=(3, 4)))
    aligned = draw(axis("aligned", (False, True)))
    if aligned:
        cfg = {**cfg, "activation": "identity"}
    seed = draw(SEEDS)
    spec = reference.init_spec(kind, cfg, rng("quar", "lipschitz", seed))
    gen = rng("quar", "lipschitz-weights", seed)
    weights = (_aligned_mlp if kind == "quar_mlp" else _aligned_conv)(spec, gen) if aligned else {}
    return _converged(spec, rho=np.full(rq.groups_of(cfg), -20.0), **weights)


def _check_bound(ctx: CheckContext, spec: FlowSpec, flow: Any, x: np.ndarray, when: str) -> None:
    """The certified bound (the implementation's factor times the exact norms), the bound on the
    implementation's own Jacobian, and θ = σ/factor − Π σ̂_i ≥ 0."""
    sigma, full = rq.sigma_of(spec.config), rq.norm_of(spec.config) == "full"
    scale = np.asarray(ctx.adapter.call_hook(flow, "lipschitz_scale"))
    slack = _bound_tolerance(ctx, spec)
    bound = float(np.max(np.abs(scale)) * np.prod(rq.exact_layer_norms(spec)))
    what = "Lip(F)" if full else "max |∂F_d/∂x_d|"
    ctx.record(max(bound / sigma - 1.0, 0.0), slack)
    if not bound <= sigma * (1.0 + slack):
        raise PropertyFailure(f"{when}: certified bound on {what}: |factor|·Π‖W_i‖ = {bound:.6f} > σ(1 + tol) = "
                              f"{sigma * (1 + slack):.6f}", bound / sigma - 1.0, slack)
    jac = _residual_jacobians(ctx, flow, x)
    rounding = ctx.tol("grad", event_size(spec))
    observed = max(float(spectral_norm(j)) if full else float(np.max(np.abs(np.diag(j)))) for j in jac)
    if not observed <= sigma * (1.0 + slack) + rounding:
        raise PropertyFailure(f"{when}: the implementation's Jacobian has {'σ_max(J_F)' if full else '|∂F_d/∂x_d|'} = "
                              f"{observed:.6f} > σ(1 + tol) = {sigma * (1 + slack):.6f}", observed / sigma - 1.0, slack)
    estimates = np.prod(np.asarray(ctx.adapter.call_hook(flow, "power_iteration_state")))
    theta = sigma / scale - estimates
    ctx.require(bool(np.all(theta >= -slack * estimates)),
                f"{when}: θ = σ/factor − Π σ̂_i reaches {theta.min():.3e} < 0 (θ must stay non-negative)")


@prop("quar_lipschitz_bound",
      requires=["white_box", "grad", "jacobian", "refresh_norms", "lipschitz_scale", "power_iteration_state",
                "assign_parameters"], kinds=KINDS)
def quar_lipschitz_bound(ctx: CheckContext) -> None:
    """With layers whose norms exceed 1: after the implementation's power iteration, and after training
    steps that push θ down, θ ≥ 0 and the bound of the norm option holds — certified (the
    implementation's factor σ/(θ + Π σ̂_i) times the exact norms) and on its own Jacobian."""
    spec = ctx.draw(_lipschitz_specs(ctx.kind), "spec")
    x = ctx.draw_input(spec)
    flow = ctx.load(spec)
    ctx.adapter.call_hook(flow, "refresh_norms")
    _check_bound(ctx, spec, flow, x, "after the power iteration")
    rho = np.asarray(spec.params["rho"], dtype=np.float64)
    for step in range(TRAINING_STEPS):
        z, _ = ctx.adapter.forward(flow, x)
        weight = -np.sign(z - x)  # raising |F| lowers the loss, and that needs a smaller θ
        grads, _ = ctx.adapter.vjp(flow, x, weight, np.zeros(x.shape[0]))
        g = grads["rho"]
        rho = rho - 10.0 * g / max(float(np.max(np.abs(g))), 1e-300)
        ctx.adapter.call_hook(flow, "assign_parameters", rho=rho)
        ctx.adapter.call_hook(flow, "refresh_norms")
        _check_bound(ctx, _with_params(spec, rho=rho), flow, x, f"after training step {step + 1}")


# ----------------------------------------------------------------------------- 6. inverses

def _amplification(ctx: CheckContext, spec: FlowSpec, x: np.ndarray, y: np.ndarray) -> float:
    """How much the inverse problem amplifies a relative residual into a relative error, with the
    suite's ``max(1, ·)`` scales: max over the batch of ‖(I + J_F(x))⁻¹‖₂·max(1, ‖y‖)/max(1, ‖x‖). It
    replaces the condition number, which is 1 for every 1-D Jacobian however near zero 1 + F′ is.
    Points beyond the dtype's :data:`~.tolerances.MAX_CONDITION` are rejected (hypothesis draws
    another), as :meth:`CheckContext.condition` does."""
    worst = 1.0
    for xi, yi in zip(x, y):
        jac = np.eye(xi.size) + rq.residual_jacobian(spec, xi)
        smallest = float(np.linalg.svd(jac, compute_uv=False)[-1])
        scale = max(1.0, float(np.linalg.norm(yi))) / max(1.0, float(np.linalg.norm(xi)))
        worst = max(worst, scale / max(smallest, 1e-300))
    assume(worst <= MAX_CONDITION[ctx.dtype])
    return worst


@prop("quar_inverse_methods", requires=["white_box", "fixed_point_inverse", "coordinatewise_inverse"], kinds=KINDS)
def quar_inverse_methods(ctx: CheckContext) -> None:
    """The coordinate-wise inverse equals the reference's inverse; the fixed-point inverse equals it or
    raises :class:`ConvergenceError` with its residual above its tolerance (under option (b), or with σ
    near 1 where it stalls at its rounding floor), never returns a wrong answer. Tolerances at the
    inverse problem's amplification (:func:`_amplification`)."""
    spec = ctx.draw_spec()
    x = ctx.draw_input(spec)
    y = reference.forward(spec, x)
    expected = reference.inverse(spec, y)
    amplification = _amplification(ctx, spec, expected, y)
    flow = ctx.load(spec)
    size = event_size(spec)
    ctx.assert_close(ctx.adapter.call_hook(flow, "coordinatewise_inverse", y), expected, "inverse", size,
                     "coordinate-wise inverse", amplification)
    try:
        x_fixed = ctx.adapter.call_hook(flow, "fixed_point_inverse", y)
    except ConvergenceError as exc:
        ctx.require(exc.residual > exc.tolerance, f"the fixed-point inverse raised with a residual below its tolerance: {exc}")
        return
    ctx.assert_close(x_fixed, expected, "inverse", size, "fixed-point inverse", amplification)


# ----------------------------------------------------------------------------- 7. norms: the QuAR view

def swap_two_largest(matrix: np.ndarray, margin: float = 0.005) -> np.ndarray:
    """``matrix`` with its two largest entries (in distinct rows and columns) exchanged, the smaller
    raised by ``margin`` (relative): on a :func:`~.lipschitz.two_path_matrix` the top singular pair
    swaps while the mask's zeros stay zeros (a dense reconstruction would fill them)."""
    out = np.array(matrix)
    flat = np.argsort(-np.abs(out), axis=None)
    first = np.unravel_index(flat[0], out.shape)
    second = next((np.unravel_index(k, out.shape) for k in flat[1:]
                   if np.unravel_index(k, out.shape)[0] != first[0] and np.unravel_index(k, out.shape)[1] != first[1]),
                  None)
    if second is None:
        return out
    a, b = out[first], out[second]
    out[first], out[second] = b, np.sign(a) * abs(a) * (1.0 + margin)
    return out


class QuARView(NormView):
    """QuAR blocks: the estimates σ̂_i (hook ``power_iteration_state``) against the exact layer norms
    (:func:`~flowspec.reference.quar.exact_layer_norms` of the current weights) — from below at the
    claimed tolerance, from above at rounding (an estimate above the norm describes another weight) —
    and the certified bound |factor|·Π‖W_i‖ ≤ σ·Π(1 + t_i) of the Lipschitz trick (hook
    ``lipschitz_scale``)."""

    def layer_names(self, spec: FlowSpec) -> list[str]:
        return [f"weight_{i}" for i in range(rq.n_layers(spec.config))]

    def check(self, ctx, flow, spec, ledger, when, spatial=None):
        estimates = np.asarray(ctx.adapter.call_hook(flow, "power_iteration_state"))
        exact = rq.exact_layer_norms(spec)
        cap = norm_cap(ctx.dtype)
        claim_of = claims(ctx, flow, self.layer_names(spec), cap)
        for i, name in enumerate(self.layer_names(spec)):
            claim = claim_of[name]
            ledger.check(ctx, claim, 1.0 - estimates[i] / exact[i],
                         f"{when}: σ̂_{i} = {estimates[i]:.8g} below the exact norm {exact[i]:.8g}")
            ledger.check(ctx, Claim(cap), estimates[i] / exact[i] - 1.0,
                         f"{when}: σ̂_{i} = {estimates[i]:.8g} above the exact norm {exact[i]:.8g} (an estimate of "
                         f"another weight)")
        if any(c.probabilistic for c in claim_of.values()):
            return
        sigma = rq.sigma_of(spec.config)
        scale = np.asarray(ctx.adapter.call_hook(flow, "lipschitz_scale"))
        bound = float(np.max(np.abs(scale)) * np.prod(exact))
        slack = float(np.prod([1.0 + c.tolerance for c in claim_of.values()]) - 1.0)
        ledger.check(ctx, Claim(slack), bound / sigma - 1.0,
                     f"{when}: certified bound |factor|·Π‖W_i‖ = {bound:.8g} against σ = {sigma}")

    def reference_forward(self, ctx, flow, spec, x):
        exact_spec = _converged(spec)
        z = reference.forward(exact_spec, x)
        cap = norm_cap(ctx.dtype)
        tolerances = [c.tolerance for c in claims(ctx, flow, self.layer_names(spec), cap).values()]
        residual = float(np.max(np.abs(z - x)))
        return z, float(np.sum(tolerances)) * max(1.0, residual) / max(1.0, float(np.max(np.abs(z))))

    def degenerate(self, spec, ratio, gen):
        config = spec.config
        factors, groups = rq.factors_of(config), rq.groups_of(config)
        out = {}
        for i, mask in enumerate(rq.masks(config)):
            centre = mask[:, :, mask.shape[2] // 2, mask.shape[3] // 2] if mask.ndim == 4 else mask
            labels = None
            if rq.norm_of(config) == "diagonal":  # both paths in one diagonal block where it has room
                centre = centre * np.kron(np.ones((factors[i + 1], factors[i])), np.eye(groups))
                labels = (np.arange(centre.shape[0]) % groups, np.arange(centre.shape[1]) % groups)
            paths = two_path_matrix(centre, ratio, 1.0, gen, groups=labels)
            if mask.ndim == 4:
                weight = 1e-3 * gen.standard_normal(mask.shape) * mask
                weight[:, :, mask.shape[2] // 2, mask.shape[3] // 2] = paths
            else:
                weight = paths
            out[f"weight_{i}"] = weight
        return out

    def swapped(self, spec, weights):
        return swapped_layers(weights, self.layer_names(spec), swap_two_largest)


register_view(KINDS, QuARView())
