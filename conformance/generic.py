"""Properties every kind must have.

White-box (same FlowSpec in the implementation and the reference): forward values, log-det
(the reference's is ``slogdet`` of the full autograd Jacobian), inverse and gradients match the
reference. Black-box (the implementation alone): log-det equals ``slogdet`` of a finite-difference
Jacobian of the implementation's own forward, the inverse round-trips, a sample's result does not
depend on the rest of its batch, and bad input raises a clear error.
"""
from __future__ import annotations

import numpy as np
from hypothesis import assume

from flowspec import reference

from . import finite_diff, namespace, strategies
from .adapter import NotSupported
from .property import CheckContext, PropertyFailure, prop
from .strategies import event_size
from .tolerances import MAX_CONDITION, condition_number, relative_error, tolerance


def _draw(ctx: CheckContext, batch: int = strategies.BATCH):
    spec = ctx.draw_spec()
    return spec, ctx.draw_input(spec, batch=batch), ctx.draw_context(spec, batch)


@prop("forward_matches_reference", requires=["white_box"])
def forward_matches_reference(ctx: CheckContext) -> None:
    """z = f(x) equals the reference's."""
    spec, x, c = _draw(ctx)
    z, _ = ctx.adapter.forward(ctx.load(spec), x, c)
    ctx.assert_close(z, reference.forward(spec, x, c), "forward", event_size(spec), "z")


@prop("logdet_matches_reference", requires=["white_box"])
def logdet_matches_reference(ctx: CheckContext) -> None:
    """log|det ∂f/∂x| equals slogdet of the reference's full autograd Jacobian (tolerance at the
    Jacobian's condition number)."""
    spec, x, c = _draw(ctx)
    kappa = ctx.condition(spec, x, c)
    _, logdet = ctx.adapter.forward(ctx.load(spec), x, c)
    ctx.assert_close(logdet, reference.log_abs_det(spec, x, c), "logdet", event_size(spec), "log|det|", kappa)


@prop("logdet_matches_fd_jacobian", requires=["black_box"])
def logdet_matches_fd_jacobian(ctx: CheckContext) -> None:
    """log|det| equals slogdet of a Richardson central-difference Jacobian of the implementation's forward."""
    spec, x, c = _draw(ctx, batch=2)
    flow = ctx.instantiate(spec)
    _, logdet = ctx.adapter.forward(flow, x, c)
    jacobians = fd_jacobians(ctx, flow, spec, x, c)
    kappa = fd_logdet_condition(ctx, spec, x, c, jacobians)
    sign, expected = np.linalg.slogdet(jacobians)
    ctx.require(bool(np.all(sign != 0)), "finite-difference Jacobian is singular")
    ctx.assert_close(logdet, expected, "fd_logdet", event_size(spec), "log|det| vs finite differences", kappa)


def fd_logdet_condition(ctx: CheckContext, spec, x: np.ndarray, c: np.ndarray | None,
                        jacobians: np.ndarray) -> float:
    """The condition a log-det is compared to slogdet of finite-difference ``jacobians`` at: the
    larger of κ and the absolute condition :func:`_absolute_condition` (a contracting Jacobian's
    central differences are rounded relative to the map's values, not to its small derivatives);
    a point beyond the dtype's cap is not compared (hypothesis draws another)."""
    kappa = max(ctx.condition(spec, x, c, jacobians), _absolute_condition(jacobians))
    assume(kappa <= MAX_CONDITION[ctx.dtype])
    return kappa


def fd_jacobians(ctx: CheckContext, flow, spec, x: np.ndarray, c: np.ndarray | None, *,
                 inverse: bool = False) -> np.ndarray:
    """Richardson central-difference Jacobians ``(B, D, D)`` of the implementation's forward (or,
    with ``inverse``, its inverse) at each sample of ``x``, each with its own context row."""
    kind = namespace.kind(spec.kind)
    if inverse:
        return finite_diff.per_sample_jacobians(lambda p, cc: ctx.adapter.inverse(flow, p, cc), x, c, ctx.dtype,
                                                kind.codomain_of(spec.config))
    return finite_diff.per_sample_jacobians(lambda p, cc: ctx.adapter.forward(flow, p, cc)[0], x, c, ctx.dtype,
                                            kind.domain)


@prop("inverse_matches_reference", requires=["white_box", "inverse"])
def inverse_matches_reference(ctx: CheckContext) -> None:
    """f⁻¹(z) equals the reference's inverse, for z = f(x) from the reference."""
    spec, x, c = _draw(ctx)
    kappa = ctx.condition(spec, x, c)
    z = reference.forward(spec, x, c)
    x_hat = ctx.adapter.inverse(ctx.load(spec), z, c)
    ctx.assert_close(x_hat, reference.inverse(spec, z, c), "inverse", event_size(spec), "x = f⁻¹(z)", kappa)


@prop("inverse_round_trip", requires=["black_box", "inverse"])
def inverse_round_trip(ctx: CheckContext) -> None:
    """f⁻¹(f(x)) ≈ x and f(f⁻¹(z)) ≈ z, including large magnitudes."""
    spec = ctx.draw_spec()
    x = ctx.draw_input(spec, strategies.large_magnitudes(spec.kind), name="round-trip magnitude")
    c = ctx.draw_context(spec)
    flow = ctx.instantiate(spec)
    size = event_size(spec)
    z, _ = ctx.adapter.forward(flow, x, c)
    kappa = ctx.condition(spec, x, c, fd_jacobians(ctx, flow, spec, x, c))
    ctx.assert_close(ctx.adapter.inverse(flow, z, c), x, "roundtrip", size, "f⁻¹(f(x)) vs x", kappa)
    z0 = ctx.draw_input(spec, strategies.MAGNITUDES, latent=True, name="latent magnitude")
    x0 = ctx.adapter.inverse(flow, z0, c)
    kappa = ctx.condition(spec, x0, c, fd_jacobians(ctx, flow, spec, x0, c))
    ctx.assert_close(ctx.adapter.forward(flow, x0, c)[0], z0, "roundtrip", size, "f(f⁻¹(z)) vs z", kappa)


@prop("fresh_flow_round_trip", requires=["black_box", "construct", "inverse"])
def fresh_flow_round_trip(ctx: CheckContext) -> None:
    """A flow as a user constructs it (the implementation's own initialisation; ``construct``), after its
    first training forward (where a data-dependent initialisation runs), is a usable flow at inputs
    of magnitude 1: its log|det| is finite and f⁻¹(f(x)) ≈ x at the round-trip tolerance for the
    implementation's own condition number, capped at the dtype's limit rather than skipped beyond
    it (a singular initial weight is the finding here, not a point to avoid). Where the kind declares
    the log|det| a constructed flow starts at (``extras["constructed_log_abs_det"]``: Glow's random
    rotation, 0), the fresh flow's log|det| is that value, to the rounding of float32 (the dtype torch
    modules are initialised in before any conversion)."""
    spec = ctx.draw_spec()
    x, c = ctx.draw_input(spec, magnitudes=(1.0,)), ctx.draw_context(spec)
    flow = ctx.adapter.construct(spec.kind, spec.config, ctx.dtype, ctx.device)
    if ctx.adapter.capabilities().has("train_eval"):
        ctx.adapter.set_training(flow, True)
        ctx.adapter.forward(flow, x, c)  # the first training batch initialises where the kind does
        ctx.adapter.set_training(flow, False)
    z, logdet = ctx.adapter.forward(flow, x, c)
    ctx.require(bool(np.all(np.isfinite(logdet))), f"log|det| of the fresh flow is not finite: {logdet.tolist()}")
    declared = namespace.kind(spec.kind).extras.get("constructed_log_abs_det") if not namespace.is_foreign(spec.kind) \
        else None
    if declared is not None:  # torch modules are initialised in float32: the value holds to its rounding
        err, tol = relative_error(logdet, np.full_like(logdet, declared)), tolerance("logdet", "float32", event_size(spec))
        ctx.record(err, tol)
        ctx.require(err <= tol, f"log|det| of the constructed flow is {logdet.tolist()}, not the kind's declared "
                                f"starting value {declared} (relative error {err:.3e} > {tol:.1e}, float32 rounding)")
    kappa = condition_number(fd_jacobians(ctx, flow, spec, x, c))  # not skipped beyond the limit: capped
    ctx.assert_close(ctx.adapter.inverse(flow, z, c), x, "roundtrip", event_size(spec), "f⁻¹(f(x)) vs x of the fresh flow",
                     kappa)


@prop("grad_matches_reference", requires=["white_box", "grad"])
def grad_matches_reference(ctx: CheckContext) -> None:
    """Gradients of Σ w·z + Σ u·log|det| w.r.t. params and x equal the reference's autograd."""
    spec, x, c = _draw(ctx, batch=2)
    z = reference.forward(spec, x, c)
    zw = ctx.draw(strategies.weights(z.shape), "z_weight")
    lw = ctx.draw(strategies.weights((x.shape[0],)), "logdet_weight")
    g_params, g_x = ctx.adapter.vjp(ctx.load(spec), x, zw, lw, c)
    r_params, r_x = reference.vjp(spec, x, zw, lw, c)
    unknown = sorted(set(g_params) - set(r_params))
    ctx.require(not unknown, f"gradients for names not in the spec: {unknown}")
    size = event_size(spec)
    ctx.assert_close(g_x, r_x, "grad", size, "∂L/∂x")
    for name in sorted(g_params):
        ctx.assert_close(g_params[name], r_params[name], "grad", size, f"∂L/∂{name}")


@prop("batch_independence", requires=["black_box"])
def batch_independence(ctx: CheckContext) -> None:
    """A sample's z and log|det| do not depend on the other samples of its batch."""
    spec, x, c = _draw(ctx)
    flow = ctx.instantiate(spec)
    other = ctx.draw_input(spec)
    mixed = np.concatenate([x[:1], other[1:]])
    c_mixed = None if c is None else np.concatenate([c[:1], ctx.draw_context(spec)[1:]])
    z, ld = ctx.adapter.forward(flow, x, c)
    z_alone, ld_alone = ctx.adapter.forward(flow, x[:1], None if c is None else c[:1])
    z_mixed, ld_mixed = ctx.adapter.forward(flow, mixed, c_mixed)
    size = event_size(spec)
    for name, (zz, ll) in {"alone": (z_alone, ld_alone), "in another batch": (z_mixed[:1], ld_mixed[:1])}.items():
        ctx.assert_close(zz, z[:1], "forward", size, f"z of sample 0 {name}")
        ctx.assert_close(ll, ld[:1], "logdet", size, f"log|det| of sample 0 {name}")


def _bad_inputs(spec, x: np.ndarray, dtype: str) -> dict[str, np.ndarray]:
    """Bad batches derived from ``x``, each in the dtype under test but for the dtype cases (so that a
    flow that rejects only because the dtype differs cannot pass the others)."""
    kind = namespace.kind(spec.kind)
    x = x.astype(dtype)
    bad = {}
    nan, inf = x.copy(), x.copy()
    nan.flat[x.size // 2] = np.nan
    inf.flat[0] = np.inf
    bad.update({"NaN entry": nan, "inf entry": inf, "no batch dimension": x[0]})
    bad["wrong event shape"] = np.concatenate([x, x], axis=-1)
    other = np.float32 if dtype == "float64" else np.float64
    bad[f"dtype {np.dtype(other).name} for a {dtype} flow"] = x.astype(other)
    bad["integer dtype"] = np.round(x).astype(np.int64)
    if kind.domain.high is not None:
        for value in (kind.domain.high, kind.domain.high + 0.5):
            above = x.copy()
            above.flat[0] = value
            bad[f"entry {value} outside the domain {kind.domain.name}"] = above
    if kind.domain.low is not None:
        below = x.copy()
        below.flat[0] = kind.domain.low
        bad[f"entry {kind.domain.low} outside the domain {kind.domain.name}"] = below
    return bad


@prop("bad_input_rejected", requires=["black_box"], claim="validation")
def bad_input_rejected(ctx: CheckContext) -> None:
    """NaN, inf, wrong shape or dtype and out-of-domain input raise the declared input error. Bad
    inputs arrive in the dtype under test
    (but for the dtype cases); a :class:`~.adapter.NotSupported` is never a rejection. Every case is
    tried, and a failure lists each one that was not rejected."""
    spec, x, c = _draw(ctx)
    flow = ctx.instantiate(spec)
    caps = ctx.adapter.capabilities()
    cases = [("forward", name, bad) for name, bad in _bad_inputs(spec, x, ctx.dtype).items()]
    if caps.has("inverse"):
        z = ctx.adapter.forward(flow, x, c)[0].astype(ctx.dtype)
        z[0].flat[0] = np.nan
        cases.append(("inverse", "NaN entry", z))
    problems = []
    for direction, name, bad in cases:
        call = ctx.adapter.forward if direction == "forward" else ctx.adapter.inverse
        batch = bad.shape[0] if bad.ndim == x.ndim else 1
        cb = None if c is None else np.resize(c, (batch,) + c.shape[1:]).astype(ctx.dtype)
        problems += _rejection_problems(caps.input_errors, direction, name, lambda: call(flow, bad, cb, raw=True))
    if c is not None:
        problems += _rejection_problems(caps.input_errors, "forward", "no context",
                                        lambda: ctx.adapter.forward(flow, x.astype(ctx.dtype), None, raw=True))
    ctx.record(float(len(problems)), 0.0)
    if problems:
        raise PropertyFailure(f"{len(problems)} of {len(cases) + (c is not None)} bad inputs were not rejected: "
                              + "; ".join(problems), float(len(problems)), 0.0)


@prop("empty_batch_shapes", requires=["black_box"])
def empty_batch_shapes(ctx: CheckContext) -> None:
    """A batch of 0 samples is valid input: the forward gives z of shape ``(0, *latent)`` and log-dets
    of shape ``(0,)``, the inverse x of shape ``(0, *event)`` (the README's "Empty batches"); an error
    is a failure (no validation claim is involved)."""
    spec, x, c = _draw(ctx)
    check_empty_batch(ctx, ctx.instantiate(spec), spec, x, c, ctx.has("inverse"))
    ctx.record(0.0, 0.0)


def check_empty_batch(ctx: CheckContext, flow, spec, x: np.ndarray, c: np.ndarray | None, inverse: bool) -> None:
    """Forward (and, with ``inverse``, inverse) of ``x[:0]``: empty results of the right shapes."""
    kind = namespace.kind(spec.kind)
    latent, event = tuple(kind.output_shape(spec.config)), tuple(kind.event_shape(spec.config))
    c0 = None if c is None else c[:0]
    results = {"forward": lambda: ctx.adapter.forward(flow, x[:0], c0)}
    if inverse:
        results["inverse"] = lambda: (ctx.adapter.inverse(flow, np.zeros((0,) + latent, dtype=x.dtype), c0),)
    expected = {"forward": [(0,) + latent, (0,)], "inverse": [(0,) + event]}
    for direction, call in results.items():
        try:
            shapes = [tuple(np.shape(out)) for out in call()]
        except Exception as exc:  # noqa: BLE001 - any exception is the failure being reported
            raise PropertyFailure(f"{direction} of an empty batch raised {type(exc).__name__}: {exc}") from exc
        if shapes != expected[direction]:
            raise PropertyFailure(f"{direction} of an empty batch gave shapes {shapes}, expected {expected[direction]}")


def _rejection_problems(errors: tuple, direction: str, name: str, call) -> list[str]:
    """``[]`` when ``call()`` raises one of ``errors`` with a message, else what happened instead."""
    try:
        call()
    except NotSupported as exc:
        return [f"{direction} with {name} raised NotSupported ({exc}), which is no rejection"]
    except errors as exc:
        return [] if str(exc) else [f"{direction} with {name} raised {type(exc).__name__} without a message"]
    except Exception as exc:  # noqa: BLE001 - any other exception is the failure being reported
        return [f"{direction} with {name} raised {type(exc).__name__} ({exc}), not one of {[e.__name__ for e in errors]}"]
    return [f"{direction} with {name} passed through silently"]


def _expect_error(errors: tuple, direction: str, name: str, call) -> None:
    problems = _rejection_problems(errors, direction, name, call)
    if problems:
        raise PropertyFailure(problems[0])


# ----------------------------------------------------------------------------- the inverse direction

@prop("inverse_logdet_matches_reference", requires=["white_box", "inverse_logdet"])
def inverse_logdet_matches_reference(ctx: CheckContext) -> None:
    """The implementation's inverse direction (x̂, log|det ∂x/∂z|) at z = f(x) from the reference:
    x̂ equals x and log|det ∂x/∂z| equals −log|det ∂z/∂x| of the reference at x (inverse function
    theorem), deterministic log-dets only (:func:`~.state.draw_deterministic`)."""
    from .state import draw_deterministic

    spec, x, c = draw_deterministic(ctx)
    z = reference.forward(spec, x, c)  # x is the reference's preimage of z (to z's rounding, within κ)
    x_hat, logdet = ctx.adapter.inverse_with_logdet(ctx.load(spec), z, c)
    jacobians = reference.jacobian(spec, x, c)  # the reference's log|det| is slogdet of its Jacobian
    kappa = ctx.condition(spec, x, c, jacobians)
    size = event_size(spec)
    ctx.assert_close(x_hat, x, "inverse", size, "x of the inverse direction", kappa)
    ctx.assert_close(logdet, -np.linalg.slogdet(jacobians)[1], "logdet", size,
                     "log|det ∂x/∂z| vs −log|det ∂z/∂x| of the reference", kappa)


@prop("inverse_logdet_matches_fd_jacobian", requires=["black_box", "inverse", "inverse_logdet"])
def inverse_logdet_matches_fd_jacobian(ctx: CheckContext) -> None:
    """The implementation's inverse direction (x, log|det ∂x/∂z|) at drawn latents z: x equals its
    inverse(z), log|det ∂x/∂z| equals slogdet of a Richardson central-difference Jacobian of its
    inverse at z and −log|det ∂z/∂x| of its own forward at x (deterministic log-dets only)."""
    from .state import stochastic_logdet

    spec = ctx.draw_spec()
    assume(not stochastic_logdet(spec))
    z = ctx.draw_input(spec, strategies.MAGNITUDES, batch=2, latent=True, name="latent magnitude")
    c = ctx.draw_context(spec, 2)
    flow = ctx.instantiate(spec)
    x, logdet = ctx.adapter.inverse_with_logdet(flow, z, c)
    jacobians = fd_jacobians(ctx, flow, spec, z, c, inverse=True)
    kappa = fd_logdet_condition(ctx, spec, z, c, jacobians)
    size = event_size(spec)
    ctx.assert_close(x, ctx.adapter.inverse(flow, z, c), "inverse", size, "x of the inverse direction vs inverse",
                     kappa)
    sign, expected = np.linalg.slogdet(jacobians)
    ctx.require(bool(np.all(sign != 0)), "finite-difference Jacobian of the inverse is singular")
    ctx.assert_close(logdet, expected, "fd_logdet", size, "log|det ∂x/∂z| vs finite differences of the inverse",
                     kappa)
    ctx.assert_close(logdet, -ctx.adapter.forward(flow, x, c)[1], "logdet", size,
                     "log|det ∂x/∂z| vs −log|det ∂z/∂x| of the forward at x", kappa)


def _absolute_condition(jacobians: np.ndarray) -> float:
    """max over the batch of ‖J⁻¹‖₂·max(1, ‖J‖₂): how much log|det J| = log|det| of entries known to
    a tolerance relative to max(1, |J|) (finite differences) can move, per unit of that tolerance and
    of D (δ log|det J| = tr(J⁻¹ δJ)). It is the condition number κ where ‖J‖ ≥ 1 and larger for a
    contracting J (an inverse direction that shrinks, whose central differences are rounded relative
    to its values, not to its small derivatives)."""
    singular = np.linalg.svd(jacobians, compute_uv=False)
    smallest = singular[:, -1]
    if not np.all(smallest > 0):
        return float("inf")
    return float(np.max(np.maximum(1.0, singular[:, 0]) / smallest))


def _bounded_codomain(kind: str) -> bool:
    k = namespace.kind(kind)
    return k.codomain_fn is not None or k.codomain.low is not None or k.codomain.high is not None


def _beyond_codomain(domain, dtype: str) -> dict[str, float]:
    """Latent values outside the open codomain: each finite bound where the dtype represents it
    exactly (elsewhere the rounded bound may lie inside), and a value one unit (relative to the
    bound) beyond it."""
    values = {}
    for side, bound, outward in (("upper", domain.high, 1.0), ("lower", domain.low, -1.0)):
        if bound is None:
            continue
        if float(finite_diff.ROUND[dtype](bound)) == bound:
            values[f"the {side} bound {bound}"] = bound
        beyond = bound + outward * max(1.0, abs(bound))
        values[f"{beyond} beyond the {side} bound"] = beyond
    return values


@prop("inverse_rejects_out_of_codomain", requires=["black_box", "inverse"], kinds=_bounded_codomain,
      claim="validation")
def inverse_rejects_out_of_codomain(ctx: CheckContext) -> None:
    """A latent entry on or beyond the bound of the kind's codomain (sigmoid: (0, 1); logit with
    α > 0: (logit α, logit(1 − α))) has no preimage: the inverse (and the inverse direction's
    log-det, where the adapter has it) raises the declared input error, never a silent value. A
    config whose codomain is unbounded has no such value and passes trivially."""
    spec = ctx.draw_spec()
    z = ctx.draw_input(spec, strategies.MAGNITUDES, latent=True, name="latent magnitude")
    c = ctx.draw_context(spec)
    flow = ctx.instantiate(spec)
    caps = ctx.adapter.capabilities()
    calls = {"inverse": ctx.adapter.inverse}
    if caps.has("inverse_logdet"):
        calls["inverse with log-det"] = ctx.adapter.inverse_with_logdet
    for name, value in _beyond_codomain(namespace.kind(spec.kind).codomain_of(spec.config), ctx.dtype).items():
        bad = z.astype(ctx.dtype)
        bad.flat[0] = value
        for direction, call in calls.items():
            _expect_error(caps.input_errors, direction, f"entry {name}", lambda: call(flow, bad, c))
    ctx.record(0.0, 0.0)
