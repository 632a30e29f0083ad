"""Gradients in black-box mode and through the inverse.

:func:`~.generic.grad_matches_reference` compares forward gradients with the reference's autograd,
which needs a white-box adapter. These properties hold an implementation to finite differences of
its *own* maps (no parameter exchange), and check gradients through the inverse, which the
forward properties never reach:

* ``input_grad_matches_fd`` (black-box, ``grad``): ∂/∂x of L = Σ w·z + Σ_b u_b·log|det J_b| equals
  Σ_o w_o ∂z_o/∂x + u_b ∂log|det J_b|/∂x from Richardson central differences of the
  implementation's forward (z and log|det| together). The per-sample weights u_b are distinct, so a
  backward that applies one sample's upstream weight to the whole batch fails.
* ``param_grad_matches_fd`` (black-box, ``grad`` and ``parameters``): Σ_θ ∂L/∂θ·δ_θ along a random
  unit direction δ equals the central-difference derivative of t ↦ L(θ + tδ), the parameters set in
  place through the adapter (as an optimiser step does), so an implementation that caches anything
  derived from its parameters must notice the change.
* ``inverse_grad_matches_reference`` (white-box, ``inverse_grad``): for x = f⁻¹(z) and weights w,
  ∂(Σ w·x)/∂z = J_f(x)⁻ᵀ w and ∂(Σ w·x)/∂θ = −(J_f(x)⁻ᵀ w)ᵀ ∂f/∂θ (implicit differentiation of
  f(x; θ) = z), both from the reference's Jacobian and autograd.
* ``inverse_grad_matches_fd`` (black-box, ``inverse_grad``): ∂(Σ w·x)/∂z equals J_{f⁻¹}(z)ᵀ w from
  central differences of the implementation's inverse, and, where the adapter has
  ``parameters``, the parameter gradient along a random direction as above.

Central differences measure a derivative only where the map is smooth on the scale of their steps;
a log-det contains φ′ of the activations, whose kinks (ELU, ReLU) float32 steps often reach, so
each finite-difference derivative is also taken at a quarter of the steps and a draw where the two
disagree is rejected (:func:`require_smooth`).

Stochastic log-dets (the residual kinds' roulette and series estimators) are not differentiated
here: central differences need the same noise at every point of the stencil, which a batched call
does not give (each row draws its own), so these properties take deterministic configurations only
(:func:`~.state.draw_deterministic`); the estimators' gradients are held to the reference's
Neumann series by the residual family's properties.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
from hypothesis import assume

from flowspec import reference
from flowspec.registry import REAL, Domain
from flowspec.spec import FlowSpec

from . import finite_diff, namespace, strategies
from .property import CheckContext, PropertyFailure, prop
from .seeding import rng, seed_for
from .state import draw_deterministic, training_mode
from .strategies import event_size
from .tolerances import relative_error

Batched = Callable[[np.ndarray, np.ndarray | None], np.ndarray]


# ----------------------------------------------------------------------------- finite differences

def fd_jacobians_of(ctx: CheckContext, call: Batched, x: np.ndarray, c: np.ndarray | None,
                    domain: Domain, scale: float = 1.0) -> np.ndarray:
    """:func:`~.finite_diff.per_sample_jacobians` at the context's dtype."""
    return finite_diff.per_sample_jacobians(call, x, c, ctx.dtype, domain, scale)


SMOOTHNESS_SCALE = 0.25


def require_smooth(ctx: CheckContext, coarse: Any, fine: Callable[[], Any], quantity: str, size: int,
                   condition: float) -> None:
    """``coarse`` is a central-difference derivative at the usual steps and ``fine()`` the same with
    every step multiplied by :data:`SMOOTHNESS_SCALE`. Where they disagree beyond the tolerance the
    map is not smooth on the scale of the steps — the log-det of a network with ELU or ReLU
    activations contains φ′, whose kinks the float32 steps (ε^(1/5) ≈ 0.04 of max(1, |x|)) often
    reach — so the differences measure no derivative there and the draw is rejected (hypothesis
    draws another). A gradient fault changes neither estimate: the gate costs no power against it."""
    assume(relative_error(fine(), coarse) <= ctx.tol(quantity, size, condition))


def _z_and_logdet(ctx: CheckContext, flow: Any) -> Batched:
    """The forward as one map: z flattened per sample, then log|det| as the last output."""
    def call(points: np.ndarray, c: np.ndarray | None) -> np.ndarray:
        z, logdet = ctx.adapter.forward(flow, points, c)
        return np.concatenate([z.reshape(len(points), -1), logdet.reshape(-1, 1)], axis=1)
    return call


def _direction(theta: dict[str, np.ndarray], key: Any) -> dict[str, np.ndarray]:
    """A random direction of unit 2-norm over all parameters (entries N(0, 1) before scaling)."""
    gen = rng("direction", key)
    delta = {name: gen.standard_normal(value.shape) for name, value in sorted(theta.items())}
    norm = np.sqrt(sum(float(np.sum(d ** 2)) for d in delta.values()))
    return {name: d / norm for name, d in delta.items()}


def directional_derivative(ctx: CheckContext, flow: Any, loss: Callable[[], float],
                           delta: dict[str, np.ndarray], scale: float = 1.0) -> float:
    """d/dt loss(θ + tδ) at t = 0 by Richardson central differences (steps multiplied by
    ``scale``), the parameters set in place through the adapter at each point of the stencil and
    restored afterwards."""
    theta = ctx.adapter.parameters(flow)

    def f(ts: np.ndarray) -> np.ndarray:
        values = []
        for t in ts.reshape(-1):
            ctx.adapter.set_parameters(flow, {n: theta[n] + scale * t * d for n, d in delta.items()})
            values.append(loss())
        return np.array(values).reshape(-1, 1)

    try:
        return float(finite_diff.jacobian(f, np.zeros((1, 1)), ctx.dtype, REAL)[0, 0, 0]) / scale
    finally:
        ctx.adapter.set_parameters(flow, theta)


def _check_direction(ctx: CheckContext, spec: FlowSpec, flow: Any, grads: dict[str, np.ndarray],
                     loss: Callable[[], float], key: Any, what: str, condition: float) -> None:
    """Σ grad·δ against the central-difference derivative of ``loss`` along a random δ, the error
    relative to max(1, |derivative|, |loss|): central differences round relative to the values they
    difference, so a loss far larger than its derivative (large inputs) is resolved only to that."""
    theta = ctx.adapter.parameters(flow)
    ctx.require(set(grads) == set(theta), f"gradients for {sorted(grads)}, parameters {sorted(theta)}")
    if not theta:
        return
    delta = _direction(theta, key)
    expected = directional_derivative(ctx, flow, loss, delta)
    actual = sum(float(np.sum(grads[n] * d)) for n, d in delta.items())
    quantity, size = ("fd_grad_iterative" if estimates_norms(spec) else "fd_grad"), event_size(spec)
    scale = max(1.0, abs(expected), abs(loss()))
    require_smooth(ctx, expected / scale, lambda: directional_derivative(ctx, flow, loss, delta, SMOOTHNESS_SCALE)
                   / scale, quantity, size, condition)
    error = abs(actual - expected) / scale
    tol = ctx.tol(quantity, size, condition)
    ctx.record(error, tol)
    if not error <= tol:
        raise PropertyFailure(f"{what} along a random direction: {actual:.6e}, finite differences {expected:.6e}: "
                              f"error {error:.3e} relative to the loss > tolerance {tol:.1e} (condition number "
                              f"{condition:.2e})", error, tol)


def estimates_norms(spec: FlowSpec) -> bool:
    """Whether every forward of ``spec`` normalises by power-iteration estimates (the reference declares
    ``extras["estimated_layer_norms"]``, as the QuAR kinds do), in ``spec`` or a child: the map is then
    computed to the iteration's tolerance, and the ``fd_grad_iterative`` row applies."""
    children = [c for c in spec.params.values() if isinstance(c, FlowSpec)]
    return "estimated_layer_norms" in namespace.kind(spec.kind).extras or any(map(estimates_norms, children))


def _weights(ctx: CheckContext, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upstream weights of z and per-sample weights of log|det| (independent N(0, 1): distinct)."""
    return (ctx.draw(strategies.weights(z.shape), "z_weight"),
            ctx.draw(strategies.weights((z.shape[0],)), "logdet_weight"))


# ----------------------------------------------------------------------------- forward gradients

@prop("input_grad_matches_fd", requires=["black_box", "grad"])
def input_grad_matches_fd(ctx: CheckContext) -> None:
    """∂(Σ w·z + Σ_b u_b·log|det J_b|)/∂x with distinct per-sample u_b equals the same combination of
    central-difference derivatives of the implementation's own z and log|det|."""
    spec, x, c = draw_deterministic(ctx, batch=2)
    flow = ctx.instantiate(spec)
    training_mode(ctx, flow)
    z, _ = ctx.adapter.forward(flow, x, c)
    w, u = _weights(ctx, z)
    _, g_x = ctx.adapter.vjp(flow, x, w, u, c)
    domain, size = namespace.kind(spec.kind).domain, event_size(spec)
    combined = np.concatenate([w.reshape(len(x), -1), u[:, None]], axis=1)

    def gradient(jacobians: np.ndarray) -> np.ndarray:
        return np.einsum("bo,boi->bi", combined, jacobians).reshape(x.shape)

    jacobians = fd_jacobians_of(ctx, _z_and_logdet(ctx, flow), x, c, domain)
    kappa = ctx.condition(spec, x, c, jacobians[:, :-1])
    expected = gradient(jacobians)
    require_smooth(ctx, expected, lambda: gradient(
        fd_jacobians_of(ctx, _z_and_logdet(ctx, flow), x, c, domain, SMOOTHNESS_SCALE)), "fd_grad", size, kappa)
    ctx.assert_close(g_x, expected, "fd_grad", size, "∂L/∂x vs finite differences", kappa)


@prop("param_grad_matches_fd", requires=["black_box", "grad", "parameters"])
def param_grad_matches_fd(ctx: CheckContext) -> None:
    """Σ ∂L/∂θ·δ for L = Σ w·z + Σ u·log|det| along a random unit direction δ equals the central-
    difference derivative of L(θ + tδ), the parameters set in place (module docstring)."""
    spec, x, c = draw_deterministic(ctx, batch=2)
    flow = ctx.instantiate(spec)
    training_mode(ctx, flow)
    z, _ = ctx.adapter.forward(flow, x, c)
    w, u = _weights(ctx, z)
    kappa = ctx.condition(spec, x, c, fd_jacobians_of(ctx, lambda p, cc: ctx.adapter.forward(flow, p, cc)[0], x, c,
                                                       namespace.kind(spec.kind).domain))
    grads, _ = ctx.adapter.vjp(flow, x, w, u, c)

    def loss() -> float:
        z_t, logdet_t = ctx.adapter.forward(flow, x, c)
        return float(np.sum(w * z_t) + np.sum(u * logdet_t))

    _check_direction(ctx, spec, flow, grads, loss, ("forward", seed_for(spec.to_json())), "∂L/∂θ", kappa)


# ----------------------------------------------------------------------------- through the inverse

@prop("inverse_grad_matches_reference", requires=["white_box", "inverse_grad"])
def inverse_grad_matches_reference(ctx: CheckContext) -> None:
    """For x = f⁻¹(z): ∂(Σ w·x)/∂z = J_f(x)⁻ᵀ w and ∂(Σ w·x)/∂θ = −(J_f(x)⁻ᵀ w)ᵀ ∂f/∂θ (implicit
    differentiation), from the reference's Jacobian and autograd at x, for z = f(x) from the reference."""
    spec, x, c = draw_deterministic(ctx, batch=2)
    z = reference.forward(spec, x, c)  # x is the reference's preimage of z (to z's rounding, within κ)
    w = ctx.draw(strategies.weights(x.shape), "x_weight")
    g_params, g_z = ctx.adapter.inverse_vjp(ctx.load(spec), z, w, c)
    jacobians = reference.jacobian(spec, x, c)
    kappa = ctx.condition(spec, x, c, jacobians)
    upstream = np.linalg.solve(np.swapaxes(jacobians, 1, 2), w.reshape(len(w), -1, 1))[..., 0].reshape(z.shape)
    r_params, _ = reference.vjp(spec, x, upstream, np.zeros(len(x)), c)
    size = event_size(spec)
    ctx.assert_close(g_z, upstream, "inverse_grad", size, "∂(Σw·f⁻¹(z))/∂z vs J⁻ᵀw", kappa)
    unknown = sorted(set(g_params) - set(r_params))
    ctx.require(not unknown, f"gradients for names not in the spec: {unknown}")
    for name in sorted(g_params):
        ctx.assert_close(g_params[name], -r_params[name], "inverse_grad", size,
                         f"∂(Σw·f⁻¹(z))/∂{name} vs −(J⁻ᵀw)ᵀ∂f/∂{name}", kappa)


@prop("inverse_grad_matches_fd", requires=["black_box", "inverse_grad"])
def inverse_grad_matches_fd(ctx: CheckContext) -> None:
    """∂(Σ w·f⁻¹(z))/∂z equals J_{f⁻¹}(z)ᵀ w from central differences of the implementation's inverse
    and, where the adapter has ``parameters``, the parameter gradient along a random unit direction
    equals the central-difference derivative of Σ w·f⁻¹(z; θ + tδ)."""
    spec = ctx.draw_spec()
    z = ctx.draw_input(spec, strategies.MAGNITUDES, batch=2, latent=True, name="latent magnitude")
    c = ctx.draw_context(spec, 2)
    flow = ctx.instantiate(spec)
    training_mode(ctx, flow)
    w = ctx.draw(strategies.weights(ctx.adapter.inverse(flow, z, c).shape), "x_weight")
    g_params, g_z = ctx.adapter.inverse_vjp(flow, z, w, c)
    codomain = namespace.kind(spec.kind).codomain_of(spec.config)
    jacobians = fd_jacobians_of(ctx, lambda p, cc: ctx.adapter.inverse(flow, p, cc), z, c, codomain)
    kappa = ctx.condition(spec, z, c, jacobians)
    expected = np.einsum("bo,boi->bi", w.reshape(len(w), -1), jacobians).reshape(z.shape)
    ctx.assert_close(g_z, expected, "fd_grad", event_size(spec), "∂(Σw·f⁻¹(z))/∂z vs finite differences", kappa)
    if ctx.adapter.capabilities().has("parameters"):
        loss = lambda: float(np.sum(w * ctx.adapter.inverse(flow, z, c)))  # noqa: E731
        _check_direction(ctx, spec, flow, g_params, loss, ("inverse", seed_for(spec.to_json())), "∂(Σw·f⁻¹(z))/∂θ",
                         kappa)
