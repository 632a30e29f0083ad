"""Spectral-norm estimates shared by every norm-constrained layer: exact for small operators,
warm-started power iteration with a random-start Lanczos probe for large ones.

What an estimate σ̂ = uᵀWv (unit u, v) is worth: it is always a *lower* bound of ‖W‖₂, so
normalising by it can only under-normalise, and no local test on the vectors certifies it: a warm
start can settle on a non-dominant singular pair when the top singular values are close (trained
layers often have σ₂/σ₁ ≥ 0.99, and the top pair swaps during training), and the singular-pair
residual ‖Wᵀu − σ̂v‖ is then small too. So the estimators here state their guarantee and report it
(:class:`PowerIterationReport`):

* :func:`exact_top_pair` (operators whose smaller side is at most :data:`EXACT_MAX_DIM`; a matrix, or
  the explicit matrix of a small convolution operator): the top eigenpair of the Gram matrix of the
  smaller side in float64 (the top eigenvalue and its vector by inverse iteration, checked, or the
  full eigendecomposition where the check fails). **Deterministic**: the relative gap
  ``1 − σ̂/‖W‖`` is at most :func:`exact_tolerance` = 4(m + n)·ε + m·min(m, n)·ε₆₄ (rounding of
  the Gram matrix and of uᵀWv in the weight's dtype, ε its epsilon), whatever the spectrum.
* :func:`power_iteration` (warm-started, adaptive; Residual Flows App. E) and :func:`lanczos`
  (Golub–Kahan–Lanczos): lower bounds whose stopping rules bound the *change* of σ̂, not its error
  (per iteration σ̂ moves by about (1 − r²) times its error, r = σ₂/σ₁). On their own they
  guarantee nothing. Convolutions are first offered a deterministic certificate, a frequency-domain
  upper bound of their operator norm (:func:`flowspec.accelerated.lipschitz.conv_norm_bound`); where
  it is loose, and for large matrices, the estimators add a **probe**: :func:`lanczos`
  run for a fixed number of steps from a fresh Gaussian start, the larger of the two estimates
  kept. Kuczyński and Woźniakowski (1992, Thm. 4.2) bound the probe's failure for *any* spectrum
  (no gap assumption): with q Lanczos steps on the n×n matrix WᵀW from a uniformly random start,
  P(σ̂² < (1 − ε)‖W‖²) ≤ 1.648·√n·exp(−√ε·(2q − 1)), counted here conservatively with q − 1 for
  q (:func:`probe_failure_probability`). **Probabilistic**: each estimate falls more than a
  relative ``tolerance`` below the norm with at most that probability, independently of the past
  (the start is drawn afresh from torch's generator each time), so a swapped top pair that warm
  iterations cannot see is found with that probability at every estimate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from flowspec.errors import ConfigError

Operator = Callable[[Tensor], Tensor]

EXACT_MAX_DIM = 256
"""Operators whose smaller side is at most this are estimated exactly (:func:`exact_top_pair`): the
eigendecomposition of a 256 × 256 Gram matrix costs about as much as 100 power-iteration steps on
one CPU thread, fewer than a near-degenerate layer needs."""

PROBE_STEPS = 32
"""Lanczos steps of the random-start probe of large operators (:func:`probe_failure_probability`)."""

@dataclass(frozen=True)
class PowerIterationReport:
    """How one estimate was made and what it guarantees.

    ``iterations``: operator applications spent (pairs W, Wᵀ); ``hit_cap``: whether an iteration
    stopped at its cap; ``last_change``: the last relative change of σ̂ (the largest over a batch).
    ``method``: ``"exact"`` or ``"certified"`` (:func:`exact_top_pair`), ``"closed_form"`` (induced norms with one),
    ``"probe"`` (warm iteration and a random-start Lanczos probe), ``"power"`` (an iteration with no
    guarantee: general orders), ``"given"`` (vectors taken from a spec, no estimate made).
    ``tolerance`` and ``failure_probability``: the estimate falls more than ``tolerance`` (relative)
    below the norm with probability at most ``failure_probability`` (0: never; 1: no claim).
    """

    iterations: int
    hit_cap: bool
    last_change: float
    method: str = "power"
    tolerance: float = math.inf
    failure_probability: float = 1.0

    def to_list(self) -> list:
        """The report as a list of plain values (checkpoints' extra state); :meth:`from_list` reads it."""
        return [self.iterations, self.hit_cap, self.last_change, self.method, self.tolerance, self.failure_probability]

    @classmethod
    def from_list(cls, values: list) -> "PowerIterationReport":
        iterations, hit_cap, last_change, method, tolerance, failure_probability = values
        return cls(int(iterations), bool(hit_cap), float(last_change), str(method), float(tolerance),
                   float(failure_probability))

    def guarantee(self) -> dict[str, object]:
        """The report as plain values (what the conformance hooks hand out)."""
        return {"method": self.method, "tolerance": self.tolerance, "failure_probability": self.failure_probability,
                "hit_cap": self.hit_cap, "iterations": self.iterations}


GIVEN = PowerIterationReport(0, False, 0.0, "given")


def check_tolerances(atol: float, rtol: float, max_iter: int) -> None:
    if atol < 0 or rtol < 0 or (atol == 0 and rtol == 0):
        raise ConfigError(f"power iteration needs atol ≥ 0, rtol ≥ 0, not both zero; got atol={atol}, rtol={rtol}")
    if max_iter < 1:
        raise ConfigError(f"power iteration needs max_iter ≥ 1, got {max_iter}")


# ----------------------------------------------------------------------------- exact

def exact_tolerance(m: int, n: int, dtype: torch.dtype) -> float:
    """The deterministic bound on ``1 − σ̂/‖W‖`` of :func:`exact_top_pair` for an ``m × n`` matrix
    whose σ̂ = uᵀWv is evaluated in ``dtype``: 4(m + n)·ε(dtype) for that evaluation and the unit
    vectors' rounding, plus m·min(m, n)·ε₆₄ for the float64 Gram matrix (its error is at most
    m·ε₆₄·‖W‖_F² ≤ m·min(m, n)·ε₆₄·‖W‖₂²) and its eigendecomposition."""
    return 4.0 * (m + n) * torch.finfo(dtype).eps + m * min(m, n) * torch.finfo(torch.float64).eps


@torch.no_grad()
def exact_top_pair(matrix: Tensor) -> tuple[Tensor, Tensor, Tensor, PowerIterationReport]:
    """``(σ̂, u, v, report)`` for the largest singular value of each matrix of a stack ``(..., m, n)``,
    with a deterministic bound on the gap ``1 − σ̂/‖W‖`` whatever the spectrum (degenerate or swapped
    top pairs cannot fool it): the top eigenvector of the Gram matrix G of the smaller side, in
    float64 (:func:`_top_eigenvector`), whose gap is rounding only (:func:`exact_tolerance`, the
    report's tolerance). No warm start: after an optimiser step the top eigenvalues of trained
    layers are too close (σ₂/σ₁ ≥ 0.99) for a few Krylov steps from the old vector to certify the new
    norm, and an attempt costs about as much as the exact pair. The vectors come back in the
    matrix's dtype (then uᵀWv = σ̂ up to that rounding); a zero matrix gives σ̂ = 0 with u = 0.
    """
    m, n = matrix.shape[-2:]
    wide = n > m
    work = (matrix.mT if wide else matrix).to(torch.float64)
    gram = work.mT @ work
    right = _top_eigenvector(work, gram, m * min(m, n) * torch.finfo(torch.float64).eps)
    image = (work @ right.unsqueeze(-1)).squeeze(-1)
    sigma = image.norm(dim=-1)
    left = image / torch.where(sigma > 0, sigma, torch.ones_like(sigma)).unsqueeze(-1)
    u, v = (right, left) if wide else (left, right)
    report = PowerIterationReport(0, False, 0.0, "exact", exact_tolerance(m, n, matrix.dtype), 0.0)
    return sigma.to(matrix.dtype), u.to(matrix.dtype), v.to(matrix.dtype), report


INVERSE_SHIFT = 1e-8
"""Relative shift above the top eigenvalue for the inverse iteration of :func:`_top_eigenvector`."""


def _top_eigenvector(work: Tensor, gram: Tensor, check: float) -> Tensor:
    """The unit top eigenvector of each Gram matrix ``gram = workᵀwork`` of a stack (float64): the top
    eigenvalue λ̂ alone (``eigvalsh``, a third of the cost of a full ``eigh`` at 256), then two steps of
    inverse iteration with the Cholesky factor of ``(1 + INVERSE_SHIFT)·λ̂·I − G`` (each damps every
    eigenvalue at a relative gap γ below λ̂ by about INVERSE_SHIFT/γ). The result is **checked**, not
    trusted: its Rayleigh quotient ‖work·v‖² must reach λ̂·(1 − ``check``); where it does not (a top
    eigenvalue within about INVERSE_SHIFT of the next, a start without a top component) or the
    factorisation fails, the full ``eigh`` decides, so the bound of :func:`exact_tolerance` holds
    either way."""
    top = torch.linalg.eigvalsh(gram)[..., -1]
    tiny = torch.finfo(gram.dtype).tiny
    shift = top * (1.0 + INVERSE_SHIFT) + tiny
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    factor, info = torch.linalg.cholesky_ex(shift[..., None, None] * eye - gram)
    if bool((info == 0).all()):
        generator = torch.Generator(device=gram.device).manual_seed(0)
        v = torch.randn(gram.shape[:-1], generator=generator, dtype=gram.dtype, device=gram.device)
        for _ in range(2):
            v = torch.cholesky_solve(v.unsqueeze(-1), factor).squeeze(-1)
            v = v / v.norm(dim=-1, keepdim=True).clamp_min(tiny ** 0.5)
        quotient = (work @ v.unsqueeze(-1)).squeeze(-1).norm(dim=-1) ** 2
        if bool((quotient >= top * (1.0 - check)).all()):
            return v
    return torch.linalg.eigh(gram)[1][..., :, -1]


# ----------------------------------------------------------------------------- the probe

def probe_failure_probability(n: int, steps: int, tolerance: float) -> float:
    """Kuczyński–Woźniakowski (1992, Thm. 4.2) for ``steps`` Lanczos steps from a uniformly random
    start on an ``n``-dimensional side: P(σ̂ < (1 − tolerance)·‖W‖) ≤ 1.648·√n·exp(−√ε·(2(q − 1) − 1))
    with ε = 1 − (1 − tolerance)² (their bound is on σ̂², and q − 1 in place of q is conservative
    about how steps are counted). A Krylov space of dimension n is the whole space: then exact up
    to rounding (probability 0). Capped at 1."""
    if steps >= n:
        return 0.0
    if tolerance >= 1.0:
        return 0.0
    eps = 1.0 - (1.0 - tolerance) ** 2
    exponent = math.sqrt(eps) * (2 * (steps - 1) - 1)
    return min(1.0, 1.648 * math.sqrt(n) * math.exp(-exponent))


def certified_gap(bound: float, estimate: float, rounding: float) -> float:
    """The relative tolerance ``t`` that an upper bound ``bound`` ≥ ‖W‖ certifies for ``estimate``:
    1 − σ̂/‖W‖ ≤ 1 − σ̂/bound ≤ bound/σ̂ − 1, never below 0 (a bound that rounding put below the
    estimate), plus ``rounding`` (both are computed in floating point)."""
    return max(bound / estimate - 1.0, 0.0) + rounding


def probe_tolerance(n: int, steps: int, probability: float, rounding: float = 0.0) -> float:
    """The smallest relative tolerance at which :func:`probe_failure_probability` is ≤ ``probability``,
    and at least ``rounding``: a Krylov space of the whole dimension is exact in exact arithmetic
    only, so the caller passes the rounding of the estimate it evaluates (:func:`exact_tolerance`
    for the operator's sides and dtype), which is the whole tolerance there."""
    if steps >= n:
        return rounding
    k = 2 * (steps - 1) - 1
    if k <= 0:
        return 1.0
    root = math.log(1.648 * math.sqrt(n) / probability) / k
    if root >= 1.0:
        return 1.0
    return max(rounding, 1.0 - math.sqrt(1.0 - root * root))


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
    """Alternate ``u ← W v / ‖W v‖`` and ``v ← Wᵀ u / ‖Wᵀ u‖`` from the caller's vectors (warm start)
    until σ̂ = ‖Wᵀu‖ changes by at most ``atol + rtol·σ̂`` in every batch entry, or ``max_iter``
    iterations have run (Residual Flows, App. E, "adaptive number of power iterations"); return
    ``(σ̂, u, v, report)``. A lower bound with no guarantee of its own (module docstring).

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
    image = matvec(v)
    sigma = _norm(image, batch_dims)
    change, iterations = float("inf"), 0
    for iterations in range(1, max_iter + 1):
        u = _unit(image, batch_dims, eps)
        back = rmatvec(u)
        new_sigma = _norm(back, batch_dims)  # ‖Wᵀu‖ ≥ ‖W v‖: two operator applications per iteration
        v = _scaled(1.0 / new_sigma.clamp_min(eps), back, batch_dims)
        image = matvec(v)
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


@torch.no_grad()
def lanczos(
    matvec: Operator,
    rmatvec: Operator,
    v: Tensor,
    *,
    rtol: float,
    max_steps: int,
    event_dims: int = 1,
    keep: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, PowerIterationReport]:
    """Golub–Kahan–Lanczos bidiagonalisation from ``v``, batched like :func:`power_iteration`.

    With full reorthogonalisation, ``W V_j = U_j B_j`` for the ``j × j`` upper-bidiagonal ``B_j``;
    the largest singular value of ``B_j`` (the top Ritz value) rises towards ``‖W‖₂`` and is always
    a lower bound. It converges far faster than the power iteration when the top singular values
    are close (convolution operators: ratios of 0.999 are common, where the power iteration needs
    thousands of steps): the error falls like ``exp(−4j·√γ)`` instead of ``exp(−2j·γ)``, ``γ`` the
    relative gap. Stops when the Ritz value changes by at most ``rtol`` relative in every batch entry
    (at least two steps) or after ``max_steps`` (capped at the vectors' length, where the Krylov space
    is exhausted); ``rtol = 0`` runs every step (the probe). Returns ``(σ̂, u, v, report)`` with ``u``,
    ``v`` the unit Ritz vectors, a warm start for :func:`power_iteration`. With ``keep``, the final
    Ritz pair is that of the Krylov space plus ``keep`` (:func:`_augmented`). The bases live in
    buffers of ``steps`` rows allocated once (:class:`_Basis`).
    """
    if rtol < 0 or max_steps < 1:
        raise ConfigError(f"Lanczos needs rtol ≥ 0 and max_steps ≥ 1, got rtol={rtol}, max_steps={max_steps}")
    eps = torch.finfo(v.dtype).tiny ** 0.5
    batch_dims = v.dim() - event_dims
    v = _unit(v, batch_dims, eps)
    steps = min(max_steps, v[(0,) * batch_dims].numel())
    vs = _Basis(v, steps + (keep is not None), batch_dims)
    us: _Basis | None = None
    alphas: list[Tensor] = []
    betas: list[Tensor] = []
    sigma, change, svd = None, float("inf"), None
    u = beta = None
    for j in range(steps):
        vs.append(v)
        p = matvec(v) if u is None else matvec(v) - _scaled(beta, u, batch_dims)
        if us is None:
            us = _Basis(p, steps, batch_dims)
        alpha, u = _orthonormalised(p, us, batch_dims, eps)
        us.append(u)
        alphas.append(alpha)
        beta, v = _orthonormalised(rmatvec(u) - _scaled(alpha, vs.last, batch_dims), vs, batch_dims, eps)
        betas.append(beta)
        if rtol == 0 and (j < steps - 1 or keep is not None):
            continue  # the probe: every step runs, the Ritz pair is needed once, at the end
        svd = torch.linalg.svd(_bidiagonal(alphas, betas))
        new_sigma = svd[1][..., 0]
        if sigma is not None:
            change = float(((new_sigma - sigma).abs() / new_sigma.clamp_min(eps)).max())
            if rtol > 0 and change <= rtol:
                sigma = new_sigma
                break
        sigma = new_sigma
    hit_cap = rtol > 0 and change > rtol and len(alphas) == max_steps
    report = PowerIterationReport(len(alphas) + (keep is not None), hit_cap, change)
    if keep is not None:
        return (*_augmented(matvec, _bidiagonal(alphas, betas), us, vs, keep, batch_dims, eps), report)
    left, _, right = svd
    u_ritz = _combine(left[..., :, 0], us, batch_dims, eps)
    v_ritz = _combine(right[..., 0, :], vs, batch_dims, eps)
    return sigma, u_ritz, v_ritz, report


class _Basis:
    """Up to ``rows`` vectors shaped like ``like`` (``(*batch, *event)``), kept flat in one buffer
    ``(rows, *batch, n)`` filled row by row: the projections read a view of the rows so far instead
    of stacking the vectors again at every step."""

    def __init__(self, like: Tensor, rows: int, batch_dims: int):
        self.shape, self.batch_dims = like.shape, batch_dims
        self.buffer = like.new_empty((rows, *like.shape[:batch_dims], like[(0,) * batch_dims].numel()))
        self.size = 0

    def append(self, t: Tensor) -> None:
        self.buffer[self.size] = t.reshape(self.buffer.shape[1:])
        self.size += 1

    @property
    def rows(self) -> Tensor:
        """The vectors so far, ``(size, *batch, n)``."""
        return self.buffer[:self.size]

    @property
    def last(self) -> Tensor:
        return self.buffer[self.size - 1].reshape(self.shape)


def _augmented(matvec: Operator, bidiagonal: Tensor, us: _Basis, vs: _Basis, keep: Tensor,
               batch_dims: int, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """The top Ritz triple ``(σ̂, u, v)`` of W on span{V_j, keep}, from W V_j = U_j B_j: with k the part
    of ``keep`` orthogonal to V_j (unit; zero if none), W [V_j, k] = [U_j B_j, W k], whose Gram matrix
    [[BᵀB, Bᵀ Uᵀ W k], [·, ‖W k‖²]] is (j + 1) × (j + 1); its top eigenvector y gives
    v = V_j y₁ + k y₂ and σ̂ = ‖W v‖ = √λ."""
    _, extra = _orthonormalised(keep, vs, batch_dims, eps)
    image = matvec(extra)
    flat = lambda t: t.reshape(*t.shape[:batch_dims], -1)  # noqa: E731
    u_stack = us.rows.movedim(0, -2)  # (*batch, j, m)
    cross = bidiagonal.mT @ (u_stack @ flat(image).unsqueeze(-1))  # (*batch, j, 1)
    corner = flat(image).square().sum(-1)[..., None, None]
    top = torch.cat([bidiagonal.mT @ bidiagonal, cross], dim=-1)
    gram = torch.cat([top, torch.cat([cross.mT, corner], dim=-1)], dim=-2).to(torch.float64)
    values, vectors = torch.linalg.eigh(gram)
    y = vectors[..., :, -1].to(keep.dtype)
    vs.append(extra)
    v = _combine(y, vs, batch_dims, eps)
    w_v = matvec(v)
    sigma = _norm(w_v, batch_dims)
    return sigma, _unit(w_v, batch_dims, eps), v


@torch.no_grad()
def probe(matvec: Operator, rmatvec: Operator, like: Tensor, *, steps: int = PROBE_STEPS, tolerance: float,
          event_dims: int = 1, keep: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, PowerIterationReport]:
    """:func:`lanczos` for ``steps`` steps from a fresh Gaussian vector shaped like ``like`` (torch's
    generator), batched like it; the report states :func:`probe_failure_probability` at
    ``tolerance`` for the side's dimension (the largest over the batch is the same number).

    ``keep`` (right vectors batched like ``like``, e.g. the warm start): the Ritz pair comes from the
    Krylov space *plus* ``keep`` (Rayleigh–Ritz on the larger space). Its top Ritz value is at least
    the Krylov space's own (Courant–Fischer), so the probe's guarantee stands, and at least
    ‖W·keep‖: a warm vector carries its accuracy from estimate to estimate at the cost of one more
    operator application, and needs no iteration of its own."""
    start = torch.randn(like.shape, dtype=like.dtype, device=like.device)
    sigma, u, v, run = lanczos(matvec, rmatvec, start, rtol=0.0, max_steps=steps, event_dims=event_dims, keep=keep)
    n = like[(0,) * (like.dim() - event_dims)].numel()
    krylov_steps = run.iterations - (keep is not None)  # the guarantee is the random Krylov space's alone
    report = PowerIterationReport(run.iterations, False, run.last_change, "probe", tolerance,
                                  probe_failure_probability(n, krylov_steps, tolerance))
    return sigma, u, v, report


@torch.no_grad()
def certify_or_probe(matvec: Operator, rmatvec: Operator, u: Tensor, v: Tensor, warm: PowerIterationReport, *,
                     bound: float, steps: int, failure: float, event_dims: int = 1,
                     ) -> tuple[Tensor, Tensor, PowerIterationReport]:
    """What a warm estimate of a large operator guarantees: from the warm run's unit vectors ``u``,
    ``v`` (batched like :func:`power_iteration`) and its ``warm`` report, with ``bound`` ≥ ‖W‖ (∞ where
    there is none), σ̂ = ‖W v‖ is **certified** where :func:`certified_gap` is within the probe's
    tolerance (:func:`probe_tolerance` at ``failure``, never below the rounding of
    :func:`exact_tolerance`); otherwise a :func:`probe` of ``steps`` Lanczos steps joins (its Krylov
    space plus ``v``), the better pair per batch entry is kept, and the report states the certificate
    if it now holds, else the probe's guarantee. Returns ``(u, v, report)``."""
    batch_dims = v.dim() - event_dims
    n, m = (t[(0,) * batch_dims].numel() for t in (v, u))
    rounding = exact_tolerance(m, n, v.dtype)
    tolerance = probe_tolerance(n, steps, failure, rounding)
    spent, estimate = warm.iterations, _norm(matvec(v), batch_dims)
    if certified_gap(bound, float(estimate.min()), rounding) > tolerance:
        probed, u_probe, v_probe, found = probe(matvec, rmatvec, v, steps=steps, tolerance=tolerance,
                                                event_dims=event_dims, keep=v)
        spent += found.iterations
        better = probed > estimate  # the probe's σ̂ is ‖W v_probe‖ for its unit v_probe
        shape = better.shape + (1,) * event_dims
        u, v = torch.where(better.reshape(shape), u_probe, u), torch.where(better.reshape(shape), v_probe, v)
        estimate = torch.where(better, probed, estimate)
    gap = certified_gap(bound, float(estimate.min()), rounding)
    if gap <= tolerance:
        return u, v, PowerIterationReport(spent, warm.hit_cap, warm.last_change, "certified", gap, 0.0)
    return u, v, PowerIterationReport(spent, warm.hit_cap, warm.last_change, "probe", tolerance, failure)


def _scaled(scale: Tensor, t: Tensor, batch_dims: int) -> Tensor:
    return scale.reshape(*scale.shape, *([1] * (t.dim() - batch_dims))) * t


def _orthonormalised(t: Tensor, basis: _Basis, batch_dims: int, eps: float) -> tuple[Tensor, Tensor]:
    """``t`` made orthogonal to ``basis`` (classical Gram–Schmidt, twice, on the stacked basis), and its
    norm and direction; a direction that vanishes is returned as zeros.

    Where ``t`` lay (numerically) in span(basis) — the Krylov space is exhausted, or a kept vector is
    already in it — what is left after the projections is mostly rounding, and its direction, once
    normalised, is not orthogonal to the basis (its overlap is about ε‖t‖ over what is left, up to
    O(1)): where less than half of ‖t‖ is left, the normalised direction is projected twice more
    (Kahan–Parlett's "twice is enough", applied to it): an arbitrary but orthogonal new direction, or
    zeros where less than half of it is left again (the basis spans the whole space), so that the
    relations the Ritz values rest on (orthonormal bases) keep holding to rounding. The norm
    returned is the one measured (a rounding-sized coefficient)."""
    if basis.size == 0:
        norm = _norm(t, batch_dims)
        return torch.where(norm > eps, norm, torch.zeros_like(norm)), _unit_or_zero(t, norm, batch_dims, eps)
    stacked = basis.rows
    before = _norm(t, batch_dims)
    flat = _project_out(t.reshape(*t.shape[:batch_dims], -1), stacked, passes=2)
    norm = flat.norm(dim=-1)
    unit = _unit_or_zero(flat, norm, batch_dims, eps)
    cancelled = norm < 0.5 * before
    if bool(cancelled.any()):
        again = _project_out(unit, stacked, passes=2)
        left = again.norm(dim=-1)
        # less than half of a unit vector left: the basis spans the whole space, no direction is new
        fresh = _unit_or_zero(again, torch.where(left < 0.5, torch.zeros_like(left), left), batch_dims, eps)
        unit = torch.where(cancelled[..., None], fresh, unit)
    return torch.where(norm > eps, norm, torch.zeros_like(norm)), unit.reshape(t.shape)


def _project_out(flat: Tensor, stacked: Tensor, passes: int) -> Tensor:
    """``flat`` (``(*batch, n)``) less its components along the orthonormal rows of ``stacked``
    (``(k, *batch, n)``), classical Gram–Schmidt ``passes`` times."""
    for _ in range(passes):
        flat = flat - torch.einsum("k...,k...n->...n", torch.einsum("k...n,...n->k...", stacked, flat), stacked)
    return flat


def _unit_or_zero(t: Tensor, norm: Tensor, batch_dims: int, eps: float) -> Tensor:
    """``t / norm`` per batch entry, zeros where ``norm`` ≤ ``eps`` (a vanished direction)."""
    return _scaled(torch.where(norm > eps, 1.0 / norm.clamp_min(eps), torch.zeros_like(norm)), t, batch_dims)


def _bidiagonal(alphas: list[Tensor], betas: list[Tensor]) -> Tensor:
    """The ``j × j`` upper-bidiagonal matrix with ``alphas`` on the diagonal and ``betas`` above it."""
    j = len(alphas)
    diag = torch.stack(alphas, dim=-1)
    out = torch.diag_embed(diag)
    if j > 1:
        out = out + torch.diag_embed(torch.stack(betas[:-1], dim=-1), offset=1)
    return out


def _combine(weights: Tensor, basis: _Basis, batch_dims: int, eps: float) -> Tensor:
    """``Σ_i weights[..., i] · basis[i]``, normalised, shaped like the basis' vectors."""
    total = torch.einsum("...k,k...n->...n", weights, basis.rows).reshape(basis.shape)
    return _unit(total, batch_dims, eps)
