"""Norm bounds of Lipschitz-constrained blocks (property 5 of the residual-flow properties).

``norm_bound_after_updates``: after loading and after a sequence of random weight updates (as
optimizer steps would make them), every normalised weight's norm *in its constraint's own norm*,
computed exactly by the reference (SVD for 2 → 2, closed forms for 1 → q and p → ∞; a convolution's
operator norm at the input size, never its reshaped kernel), is at most coeff·(1 + tol); the check is
repeated for convolutions at a larger input size and back, where the operator norm changes; and
‖J_g(x)‖ in the p_0 norm (finite-difference Jacobian of the implementation) is at most the bound
coeff^L·(1 + tol)^L the constraint claims. The power iteration is configured to stop at a relative
change of :func:`power_rtol` = √ε/16, on which the ``norm_bound`` tolerance (8√ε) is built, and at
most :data:`MAX_ITER` iterations; a weight whose estimate reports that it hit the cap (hook
``norm_hit_cap``) claims no bound and is not checked — so an implementation that stops without a
tolerance and does not report it is caught.

``activation_derivative_bound``: the activation equals the reference's (for LipSwish, eq. 10 with
its 1/1.1) for several β, its ``derivative`` equals autograd's, and |φ′| ≤ 1 on a dense grid.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from flowspec import registry
from flowspec.reference import residual as R
from flowspec.reference.lipschitz import activation, jacobian_norm
from flowspec.spec import FlowSpec

from . import finite_diff
from .property import CheckContext, PropertyFailure, prop
from .seeding import rng
from .strategies import SEEDS, event_size
from .tolerances import EPS

LIPSCHITZ_KINDS = ("residual_mlp", "residual_conv")
UPDATE_SCALES = (0.1, 1.0, 5.0)
BETAS = (-4.0, -1.0, 0.0, 0.5, 2.0, 5.0)
GRID = np.linspace(-20.0, 20.0, 8001)
MAX_ITER = 2000


def power_rtol(dtype: str) -> float:
    """The power iteration's stopping change for the norm-bound checks: √ε/16 (see ``norm_bound``)."""
    return EPS[dtype] ** 0.5 / 16.0


def _check_weights(ctx: CheckContext, spec: FlowSpec, flow: Any, spatial: Sequence[int] | None, tol: float,
                   when: str) -> None:
    coeff = R.setting(spec.config, "coeff")
    weights = ctx.adapter.call_hook(flow, "normalized_weights", None if spatial is None else tuple(spatial))
    capped = ctx.adapter.call_hook(flow, "norm_hit_cap")
    where = "" if spatial is None else f" at input size {tuple(spatial)}"
    for name, (lower, _) in R.weight_norms(spec, weights, spatial).items():
        if capped[name]:
            continue  # the estimate stopped at its cap and claims no bound
        excess = lower / coeff - 1.0
        ctx.record(max(excess, 0.0), tol)
        if excess > tol:
            raise PropertyFailure(f"{when}: ‖{name}‖ = {lower:.8g}{where} exceeds coeff·(1 + tol) = "
                                  f"{coeff * (1 + tol):.8g} (constraint norm computed exactly)", excess, tol)


def _check_jacobian(ctx: CheckContext, spec: FlowSpec, flow: Any, x: np.ndarray, tol: float) -> None:
    size = event_size(spec)
    jac_f = finite_diff.jacobian(lambda p: ctx.adapter.forward(flow, p)[0], x, ctx.dtype,
                                 registry.get(spec.kind).domain)
    bound = R.lipschitz_bound(spec) * (1.0 + tol) ** len(R.weight_constraints(spec))
    slack = ctx.tol("fd_jacobian", size) * size
    for jac in jac_f:
        lower, _ = jacobian_norm(jac - np.eye(size), R.input_order(spec))
        ctx.record(max(lower - bound, 0.0), slack)
        if lower > bound + slack:
            raise PropertyFailure(f"‖J_g(x)‖_p0 = {lower:.8g} exceeds the constraint's bound coeff^L(1 + tol)^L = "
                                  f"{bound:.8g}", lower - bound, slack)


@prop("norm_bound_after_updates", requires=["black_box", "normalized_weights", "perturb_weights", "norm_hit_cap"],
      kinds=LIPSCHITZ_KINDS)
def norm_bound_after_updates(ctx: CheckContext) -> None:
    """Exact norms of the normalised weights ≤ coeff·(1 + tol) after loading and after random weight
    updates (convolutions also at another input size), and ‖J_g(x)‖ ≤ coeff^L·(1 + tol)^L."""
    drawn = ctx.draw_spec()
    spec = FlowSpec(drawn.kind, {**drawn.config, "atol": 0.0, "rtol": power_rtol(ctx.dtype), "max_iter": MAX_ITER},
                    drawn.params)
    flow = ctx.instantiate(spec)
    tol = ctx.tol("norm_bound", event_size(spec))
    sizes: list[tuple[int, int] | None] = [None]
    if spec.kind == "residual_conv":
        _, height, width = R.shape_of(spec.config)
        sizes += [(height + 3, width + 2), (height, width)]
    _check_weights(ctx, spec, flow, None, tol, "after loading")
    gen = rng("norm updates", ctx.draw(SEEDS, "update seed"))
    for step, scale in enumerate(UPDATE_SCALES):
        current = ctx.adapter.call_hook(flow, "normalized_weights", None)
        deltas = {name: scale * np.sqrt(np.mean(w ** 2)) * gen.standard_normal(w.shape) for name, w in current.items()}
        ctx.adapter.call_hook(flow, "perturb_weights", deltas)
        for spatial in sizes:
            _check_weights(ctx, spec, flow, spatial, tol, f"after update {step + 1} (scale {scale})")
    _check_jacobian(ctx, spec, flow, ctx.draw_input(spec, batch=2), tol)


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
