"""Warm-started, adaptive, batched power iteration (shared by every norm-constrained layer).

For a linear operator W given by ``matvec(v) = W v`` and ``rmatvec(u) = Wᵀ u`` (batched over
leading dimensions, so that a stack of independent blocks is iterated at once), alternate
``u ← W v / ‖W v‖`` and ``v ← Wᵀ u / ‖Wᵀ u‖`` from the caller's previous vectors (warm start) until
the estimate ``σ̂ = ‖W v‖`` changes by at most ``atol + rtol·σ̂`` in every batch entry, or ``max_iter``
iterations have run (Residual Flows, App. E, "adaptive number of power iterations").

What the estimate is worth: σ̂ = uᵀWv with unit u, v is always a *lower* bound of the spectral
norm. The stopping rule bounds the change of σ̂, not its error: a slowly converging iteration
(close top singular values) or a start nearly orthogonal to the top singular vector can stop far
below the norm. :class:`PowerIterationReport` records whether the cap was hit, so that a caller
can refuse to claim convergence. Guarantees built on σ̂ are therefore stated as σ·(1 + tol), where
tol is the relative gap between the estimate and the norm, checked exactly by the reference.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from flowspec.errors import ConfigError

Operator = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class PowerIterationReport:
    """How one run ended: iterations spent, whether ``max_iter`` stopped it, and the last relative
    change of σ̂ (the largest over the batch)."""

    iterations: int
    hit_cap: bool
    last_change: float


def check_tolerances(atol: float, rtol: float, max_iter: int) -> None:
    if atol < 0 or rtol < 0 or (atol == 0 and rtol == 0):
        raise ConfigError(f"power iteration needs atol ≥ 0, rtol ≥ 0, not both zero; got atol={atol}, rtol={rtol}")
    if max_iter < 1:
        raise ConfigError(f"power iteration needs max_iter ≥ 1, got {max_iter}")


@torch.no_grad()
def power_iteration(
    matvec: Operator,
    rmatvec: Operator,
    u: Tensor,
    v: Tensor,
    *,
    atol: float,
    rtol: float,
    max_iter: int,
    event_dims: int = 1,
) -> tuple[Tensor, Tensor, Tensor, PowerIterationReport]:
    """Run the iteration from ``(u, v)``; return ``(σ̂, u, v, report)``.

    ``u`` and ``v`` have shape ``(*batch, *event)`` with ``event_dims`` trailing event dimensions
    (1 for matrices; 3 for a convolution's ``(C, H, W)`` vectors); norms are taken over the event
    dimensions, and ``σ̂`` has shape ``batch``. The vectors are returned normalised, ready to be
    stored as the next warm start. No gradient flows through the iteration (as in spectral
    normalisation, the caller differentiates ``uᵀ W v`` with ``u``, ``v`` fixed).
    """
    check_tolerances(atol, rtol, max_iter)
    eps = torch.finfo(v.dtype).tiny ** 0.5
    batch_dims = v.dim() - event_dims
    v = _unit(v, batch_dims, eps)
    sigma = _norm(matvec(v), batch_dims)
    change, iterations = float("inf"), 0
    for iterations in range(1, max_iter + 1):
        u = _unit(matvec(v), batch_dims, eps)
        v = _unit(rmatvec(u), batch_dims, eps)
        new_sigma = _norm(matvec(v), batch_dims)
        change = float(((new_sigma - sigma).abs() / new_sigma.clamp_min(eps)).max())
        converged = bool(((new_sigma - sigma).abs() <= atol + rtol * new_sigma).all())
        sigma = new_sigma
        if converged:
            return sigma, u, v, PowerIterationReport(iterations, False, change)
    return sigma, u, v, PowerIterationReport(iterations, True, change)


def _norm(t: Tensor, batch_dims: int) -> Tensor:
    return t.reshape(*t.shape[:batch_dims], -1).norm(dim=-1)


def _unit(t: Tensor, batch_dims: int, eps: float) -> Tensor:
    norm = _norm(t, batch_dims).clamp_min(eps)
    return t / norm.reshape(*norm.shape, *([1] * (t.dim() - batch_dims)))
