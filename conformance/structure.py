"""Dependency structure that a kind declares, checked for every kind that declares it.

A kind's registry entry (:class:`~flowspec.registry.Kind`) may declare, per config, in its
``extras``:

* ``"forbidden"(config)`` — a boolean ``(N, N)`` matrix over C-order flat indices, True where
  ``∂z_i/∂x_j`` must be exactly zero: the autoregressive kinds in the order they declare (QuAR
  blocks, MAF, IAF, the spline autoregressive flow, PixelCNN and causal-convolution flows). The
  matrix is computed from the kind's *order*, never from its masks, so a mask error cannot hide;
* ``"required"(config)`` — a boolean ``(N, N)`` matrix of the entries that must not vanish (a MADE
  network with every hidden width ≥ D − 1 connects output d to every earlier input), or None where
  the config promises no such thing. A mask that silently drops connections still gives a
  triangular Jacobian and a right log-det, so only this check sees it. Where a config promises
  nothing beyond the diagonal (a hidden width below D − 1, a ReLU network) it returns None, and
  the diagonal alone is required (every declaring kind transforms each entry strictly monotonically).

Foreign kinds (:class:`~.adapter.ForeignKind`) declare these through their autoregressive order
(``dense``: every allowed entry required) and may declare ``volume_preserving`` and
``residual_lipschitz``, checked by ``volume_preserving_logdet_zero`` and ``residual_lipschitz_bound``
(end of this module).

Properties (one implementation of "forbidden entries" for every such kind):

1. ``autoregressive_forbidden_entries_zero`` — the implementation's own autograd Jacobian (one
   vector-Jacobian product per output) is exactly zero on every forbidden entry; in white-box mode
   it also equals the reference's Jacobian.
2. ``autoregressive_forbidden_entries_zero_fd`` — black-box: outputs do not change *at all* when a
   forbidden input moves (one-sided differences with a step of max(1, |x_j|)). Exact zeros are
   what masked weights give; the suite runs inside :meth:`Adapter.checking` (deterministic
   convolutions, no TF32), so a backend can neither hide nor fake a leak.
3. ``autoregressive_no_dead_connections`` — black-box: for every required entry, output i changes
   when input j moves, at one sample of the batch at least. A dead connection gives exactly zero
   change (the masked weight is zero); a live one through activations without a flat region gives
   a non-zero change except on a set of measure zero, so the check has no false alarms to tune.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from flowspec import reference
from flowspec.spec import FlowSpec

from . import namespace
from .covering import axis
from .property import CheckContext, PropertyFailure, prop
from .strategies import MAGNITUDES, event_size


def declares(extra: str) -> Callable[[str], bool]:
    """Predicate: the kind's registry entry declares ``extras[extra]``."""
    return lambda kind: extra in namespace.kind(kind).extras


def declared(spec: FlowSpec, extra: str) -> np.ndarray | None:
    """The matrix ``extras[extra](config)`` of ``spec``'s kind."""
    value = namespace.kind(spec.kind).extras[extra](spec.config)
    return None if value is None else np.asarray(value, dtype=bool)


def one_sided_changes(ctx: CheckContext, flow: Any, x: np.ndarray, context: np.ndarray | None) -> np.ndarray:
    """``[b, i, j]``: the change of output i of sample b when input j moves by max(1, |x_j|), all
    other inputs fixed. The moved and unmoved points are evaluated at matching batch positions (a
    batched matrix product may round a row differently at another position)."""
    size, event = int(np.prod(x.shape[1:])), tuple(x.shape[1:])
    changes = []
    for b, sample in enumerate(x.reshape(x.shape[0], size)):
        base = np.repeat(sample[None, :], size, axis=0)
        moved = base.copy()
        moved[np.arange(size), np.arange(size)] += np.maximum(1.0, np.abs(sample))
        c = None if context is None else np.repeat(context[b:b + 1], size, axis=0)
        z_base = ctx.adapter.forward(flow, base.reshape((size,) + event), c)[0].reshape(size, -1)
        z_moved = ctx.adapter.forward(flow, moved.reshape((size,) + event), c)[0].reshape(size, -1)
        changes.append((z_moved - z_base).T)
    return np.stack(changes)


def autograd_jacobians(ctx: CheckContext, flow: Any, x: np.ndarray, context: np.ndarray | None) -> np.ndarray:
    """``(B, N, N)``: the implementation's own Jacobians ∂z/∂x, one vector-Jacobian product per
    output (a sample's output depends on its own input only: batch independence is checked
    elsewhere)."""
    batch, size = x.shape[0], int(np.prod(x.shape[1:]))
    rows = []
    for i in range(size):
        weight = np.zeros((batch, size))
        weight[:, i] = 1.0
        _, grad_x = ctx.adapter.vjp(flow, x, weight.reshape(x.shape), np.zeros(batch), context)
        rows.append(np.asarray(grad_x).reshape(batch, size))
    return np.stack(rows, axis=1)


def require_forbidden_zero(ctx: CheckContext, spec: FlowSpec, jac: np.ndarray, what: str) -> None:
    """Every forbidden entry of ``jac`` (``(B, N, N)``) is exactly zero."""
    forbidden = declared(spec, "forbidden")
    leak = np.abs(jac[:, forbidden])
    worst = float(leak.max()) if leak.size else 0.0
    ctx.record(worst, 0.0)
    if worst != 0.0:
        _, k = np.unravel_index(int(np.argmax(leak)), leak.shape)
        i, j = np.argwhere(forbidden)[k]
        raise PropertyFailure(
            f"{what}: {int((leak != 0).sum())} entries that the autoregressive order forbids are non-zero, the "
            f"largest {worst:.3e} for output {i} and input {j} (C-order flat indices): a later input leaks",
            worst, 0.0)


@prop("autoregressive_forbidden_entries_zero", requires=["grad"], kinds=declares("forbidden"))
def autoregressive_forbidden_entries_zero(ctx: CheckContext) -> None:
    """Every forbidden entry of the implementation's own autograd Jacobian is exactly zero (and, in
    white-box mode, that Jacobian is the reference's)."""
    spec = ctx.draw_spec()
    x, c = ctx.draw_input(spec, batch=2), ctx.draw_context(spec, batch=2)
    jac = autograd_jacobians(ctx, ctx.instantiate(spec), x, c)
    require_forbidden_zero(ctx, spec, jac, "autograd Jacobian")
    if "white_box" in ctx.adapter.capabilities().modes:
        ctx.assert_close(jac, reference.jacobian(spec, x, c), "grad", event_size(spec), "the autograd Jacobian")


@prop("autoregressive_forbidden_entries_zero_fd", requires=["black_box"], kinds=declares("forbidden"))
def autoregressive_forbidden_entries_zero_fd(ctx: CheckContext) -> None:
    """Outputs do not change at all when a forbidden input moves (one-sided differences)."""
    spec = ctx.draw_spec()
    x, c = ctx.draw_input(spec, batch=2), ctx.draw_context(spec, batch=2)
    changes = one_sided_changes(ctx, ctx.instantiate(spec), x, c)
    require_forbidden_zero(ctx, spec, changes, "one-sided finite differences")


@prop("autoregressive_no_dead_connections", requires=["black_box"], kinds=declares("required"))
def autoregressive_no_dead_connections(ctx: CheckContext) -> None:
    """Every connection the config promises is live: output i changes when a required input j moves,
    at one of the batch's samples at least (inputs of magnitude ≤ 3)."""
    spec = ctx.draw_spec()
    required = declared(spec, "required")
    if required is None:
        required = np.eye(event_size(spec), dtype=bool)
    x, c = ctx.draw_input(spec, MAGNITUDES, batch=2), ctx.draw_context(spec, batch=2)
    live = np.any(one_sided_changes(ctx, ctx.instantiate(spec), x, c) != 0.0, axis=0)
    dead = required & ~live
    ctx.record(float(dead.sum()), 0.0)
    if dead.any():
        pairs = ", ".join(f"z_{i} ← x_{j}" for i, j in np.argwhere(dead)[:6])
        raise PropertyFailure(
            f"{int(dead.sum())} of {int(required.sum())} required connections are dead (no change of the output "
            f"at any sample when the input moves): {pairs} (C-order flat indices)", float(dead.sum()), 0.0)


# ----------------------------------------------------------------------------- declared by foreign kinds

@prop("volume_preserving_logdet_zero", requires=["black_box"], kinds=declares("volume_preserving"))
def volume_preserving_logdet_zero(ctx: CheckContext) -> None:
    """A kind declared volume preserving returns log|det| = 0, and slogdet of a finite-difference
    Jacobian of its forward is 0 (within the fd_logdet row at the Jacobian's condition number)."""
    from .generic import fd_jacobians

    spec = ctx.draw_spec()
    x, c = ctx.draw_input(spec, batch=2), ctx.draw_context(spec, batch=2)
    flow = ctx.instantiate(spec)
    size = event_size(spec)
    _, logdet = ctx.adapter.forward(flow, x, c)
    ctx.assert_close(logdet, np.zeros(x.shape[0]), "logdet", size, "the returned log|det| of a volume-preserving flow")
    jacobians = fd_jacobians(ctx, flow, spec, x, c)
    sign, fd = np.linalg.slogdet(jacobians)
    ctx.require(bool(np.all(sign != 0)), "finite-difference Jacobian is singular")
    ctx.assert_close(fd, np.zeros_like(fd), "fd_logdet", size, "slogdet of the finite-difference Jacobian",
                     ctx.condition(spec, x, c, jacobians))


def _residual(ctx: CheckContext, flow: Any, x: np.ndarray, c: np.ndarray | None) -> np.ndarray:
    """g(x) = f(x) − x per sample, flattened."""
    z, _ = ctx.adapter.forward(flow, x, c)
    return (z - x).reshape(x.shape[0], -1)


@prop("residual_lipschitz_bound", requires=["black_box"], kinds=declares("residual_lipschitz"))
def residual_lipschitz_bound(ctx: CheckContext) -> None:
    """For a kind declared f(x) = x + g(x) with Lip(g) ≤ c (2-norm): ‖g(x) − g(y)‖ ≤ c·‖x − y‖ for
    pairs at distances 0.1 to 1 of max(1, ‖x‖), and ‖J_f − I‖₂ ≤ c for finite-difference Jacobians.
    A bound enforced through a power-iteration estimate of ‖W‖ may exceed c by that estimate's error:
    the slack is the norm_bound row (relative), plus the rounding of the two forwards (fd_jacobian
    row for the Jacobians)."""
    from .generic import fd_jacobians

    spec = ctx.draw_spec()
    bound = float(namespace.kind(spec.kind).extras["residual_lipschitz"])
    x, c = ctx.draw_input(spec, batch=2), ctx.draw_context(spec, batch=2)
    direction = ctx.draw_input(spec, MAGNITUDES, batch=2, name="direction")
    distance = ctx.draw(axis("relative distance", (0.1, 1.0)), "relative distance")
    flat = x.reshape(x.shape[0], -1)
    step = direction.reshape(flat.shape)
    length = distance * np.maximum(1.0, np.linalg.norm(flat, axis=1))
    step *= (length / np.linalg.norm(step, axis=1))[:, None]
    flow = ctx.instantiate(spec)
    size = event_size(spec)
    y = x + step.reshape(x.shape)
    gap = np.linalg.norm(_residual(ctx, flow, x, c) - _residual(ctx, flow, y, c), axis=1)
    scale = np.maximum(1.0, np.maximum(np.abs(flat).max(axis=1), np.abs(y).reshape(flat.shape).max(axis=1)))
    rounding = 2.0 * ctx.tol("forward", size) * scale * np.sqrt(size)
    allowed = bound * (1.0 + ctx.tol("norm_bound", size)) * length + rounding
    ratio = gap / length
    ctx.record(float(np.max(ratio)), bound)
    if np.any(gap > allowed):
        b = int(np.argmax(gap - allowed))
        raise PropertyFailure(f"‖g(x) − g(y)‖ / ‖x − y‖ = {ratio[b]:.6g} > the declared Lipschitz bound {bound:g} "
                              f"(‖x − y‖ = {length[b]:.3g})", float(ratio[b]), bound)
    jacobians = fd_jacobians(ctx, flow, spec, x, c)
    norms = np.linalg.norm(jacobians - np.eye(size), ord=2, axis=(1, 2))
    allowed = bound * (1.0 + ctx.tol("norm_bound", size)) + ctx.tol("fd_jacobian", size) * size
    ctx.record(float(np.max(norms)), bound)
    if np.any(norms > allowed):
        raise PropertyFailure(f"‖J_f − I‖₂ = {float(np.max(norms)):.6g} > the declared Lipschitz bound {bound:g} "
                              f"(finite-difference Jacobians)", float(np.max(norms)), bound)
