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
  smaller side, by a symmetric eigendecomposition in float64. **Deterministic**: the relative gap
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
def exact_top_pair(matrix: Tensor, start: tuple[Tensor, Tensor] | None = None,
                   ) -> tuple[Tensor, Tensor, Tensor, PowerIterationReport]:
    """``(σ̂, u, v, report)`` for the largest singular value of each matrix of a stack ``(..., m, n)``,
    with a deterministic bound on the gap ``1 − σ̂/‖W‖`` whatever the spectrum (degenerate or swapped
    top pairs cannot fool it). Everything runs in float64 on the Gram matrix G of the smaller side.

    With ``start`` (the previous ``(u, v)``, a warm start): :data:`CERTIFY_STEPS` power steps on G
    give σ̂ = ‖W v‖, and a Cholesky factorisation of ``μ²I − G`` with μ = σ̂·(1 + t), t =
    :func:`certify_tolerance`, **certifies** ‖W‖ < μ where it succeeds (a positive definite
    ``μ²I − G`` means every eigenvalue of G is below μ²): then the gap is at most t plus rounding.
    Where it fails (a swap, an unsettled vector), or without ``start``: the top eigenvector of G
    (``torch.linalg.eigh``), whose gap is rounding only. The report's tolerance is the bound that
    holds (:func:`exact_tolerance` for the rounding). The vectors come back in the matrix's dtype
    (then uᵀWv = σ̂ up to that rounding); a zero matrix gives σ̂ = 0 with u = 0.
    """
    m, n = matrix.shape[-2:]
    wide = n > m
    work = (matrix.mT if wide else matrix).to(torch.float64)
    gram = work.mT @ work
    rounding = exact_tolerance(m, n, matrix.dtype)
    right, report = None, PowerIterationReport(0, False, 0.0, "exact", rounding, 0.0)
    if start is not None:
        right, certified = _certified(work, gram, start[0 if wide else 1], certify_tolerance(matrix.dtype))
        if certified:
            report = PowerIterationReport(CERTIFY_STEPS, False, 0.0, "certified",
                                          certify_tolerance(matrix.dtype) + rounding, 0.0)
        else:
            right = None
    if right is None:
        right = torch.linalg.eigh(gram)[1][..., :, -1]
    image = (work @ right.unsqueeze(-1)).squeeze(-1)
    sigma = image.norm(dim=-1)
    left = image / torch.where(sigma > 0, sigma, torch.ones_like(sigma)).unsqueeze(-1)
    u, v = (right, left) if wide else (left, right)
    return sigma.to(matrix.dtype), u.to(matrix.dtype), v.to(matrix.dtype), report


CERTIFY_STEPS = 4
"""Power steps on the Gram matrix before a warm start is offered for certification."""


def certify_tolerance(dtype: torch.dtype) -> float:
    """The gap a warm start is certified at (:func:`exact_top_pair`): √ε of the weights' dtype, an
    eighth of the conformance suite's cap on norm estimates (8√ε)."""
    return math.sqrt(torch.finfo(dtype).eps)


def _certified(work: Tensor, gram: Tensor, start: Tensor, tolerance: float) -> tuple[Tensor, bool]:
    """The warm vector after :data:`CERTIFY_STEPS` power steps on ``gram``, and whether every matrix of
    the stack is certified to have ‖W‖ < ‖W v‖·(1 + tolerance) (a Cholesky factorisation succeeds)."""
    v = start.to(torch.float64)
    for _ in range(CERTIFY_STEPS):
        v = (gram @ v.unsqueeze(-1)).squeeze(-1)
        v = v / v.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    bound = ((work @ v.unsqueeze(-1)).squeeze(-1).norm(dim=-1) * (1.0 + tolerance)) ** 2
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    _, info = torch.linalg.cholesky_ex(bound[..., None, None] * eye - gram)
    return v, bool((info == 0).all())


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


def probe_tolerance(n: int, steps: int, probability: float) -> float:
    """The smallest relative tolerance at which :func:`probe_failure_probability` is ≤ ``probability``."""
    if steps >= n:
        return 0.0
    k = 2 * (steps - 1) - 1
    if k <= 0:
        return 1.0
    root = math.log(1.648 * math.sqrt(n) / probability) / k
    if root >= 1.0:
        return 1.0
    return 1.0 - math.sqrt(1.0 - root * root)


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
    until σ̂ = ‖W v‖ changes by at most ``atol + rtol·σ̂`` in every batch entry, or ``max_iter``
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


@torch.no_grad()
def lanczos(
    matvec: Operator,
    rmatvec: Operator,
    v: Tensor,
    *,
    rtol: float,
    max_steps: int,
    event_dims: int = 1,
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
    ``v`` the unit Ritz vectors, a warm start for :func:`power_iteration`.
    """
    if rtol < 0 or max_steps < 1:
        raise ConfigError(f"Lanczos needs rtol ≥ 0 and max_steps ≥ 1, got rtol={rtol}, max_steps={max_steps}")
    eps = torch.finfo(v.dtype).tiny ** 0.5
    batch_dims = v.dim() - event_dims
    v = _unit(v, batch_dims, eps)
    steps = min(max_steps, v[(0,) * batch_dims].numel())
    us: list[Tensor] = []
    vs: list[Tensor] = []
    alphas: list[Tensor] = []
    betas: list[Tensor] = []
    sigma, change, svd = None, float("inf"), None
    u = beta = None
    for j in range(steps):
        vs.append(v)
        p = matvec(v) if u is None else matvec(v) - _scaled(beta, u, batch_dims)
        alpha, u = _orthonormalised(p, us, batch_dims, eps)
        us.append(u)
        alphas.append(alpha)
        beta, v = _orthonormalised(rmatvec(u) - _scaled(alpha, vs[-1], batch_dims), vs, batch_dims, eps)
        betas.append(beta)
        if rtol == 0 and j < steps - 1:
            continue  # the probe: every step runs, the Ritz pair is needed once, at the end
        svd = torch.linalg.svd(_bidiagonal(alphas, betas))
        new_sigma = svd[1][..., 0]
        if sigma is not None:
            change = float(((new_sigma - sigma).abs() / new_sigma.clamp_min(eps)).max())
            if rtol > 0 and change <= rtol:
                sigma = new_sigma
                break
        sigma = new_sigma
    left, _, right = svd
    u_ritz = _combine(left[..., :, 0], us, batch_dims, eps)
    v_ritz = _combine(right[..., 0, :], vs, batch_dims, eps)
    hit_cap = rtol > 0 and change > rtol and len(alphas) == max_steps
    return sigma, u_ritz, v_ritz, PowerIterationReport(len(alphas), hit_cap, change)


@torch.no_grad()
def probe(matvec: Operator, rmatvec: Operator, like: Tensor, *, steps: int = PROBE_STEPS, tolerance: float,
          event_dims: int = 1) -> tuple[Tensor, Tensor, Tensor, PowerIterationReport]:
    """:func:`lanczos` for ``steps`` steps from a fresh Gaussian vector shaped like ``like`` (torch's
    generator), batched like it; the report states :func:`probe_failure_probability` at
    ``tolerance`` for the side's dimension (the largest over the batch is the same number)."""
    start = torch.randn(like.shape, dtype=like.dtype, device=like.device)
    sigma, u, v, run = lanczos(matvec, rmatvec, start, rtol=0.0, max_steps=steps, event_dims=event_dims)
    n = like[(0,) * (like.dim() - event_dims)].numel()
    report = PowerIterationReport(run.iterations, False, run.last_change, "probe", tolerance,
                                  probe_failure_probability(n, run.iterations, tolerance))
    return sigma, u, v, report


def _scaled(scale: Tensor, t: Tensor, batch_dims: int) -> Tensor:
    return scale.reshape(*scale.shape, *([1] * (t.dim() - batch_dims))) * t


def _orthonormalised(t: Tensor, basis: list[Tensor], batch_dims: int, eps: float) -> tuple[Tensor, Tensor]:
    """``t`` made orthogonal to ``basis`` (classical Gram–Schmidt, twice, on the stacked basis), and its
    norm and direction; a direction that vanishes (the Krylov space is exhausted) is returned as zeros."""
    if basis:
        stacked = torch.stack(basis).reshape(len(basis), *t.shape[:batch_dims], -1)
        flat = t.reshape(*t.shape[:batch_dims], -1)
        for _ in range(2):
            flat = flat - torch.einsum("k...,k...n->...n", torch.einsum("k...n,...n->k...", stacked, flat), stacked)
        t = flat.reshape(t.shape)
    norm = _norm(t, batch_dims)
    unit = _scaled(torch.where(norm > eps, 1.0 / norm.clamp_min(eps), torch.zeros_like(norm)), t, batch_dims)
    return torch.where(norm > eps, norm, torch.zeros_like(norm)), unit


def _bidiagonal(alphas: list[Tensor], betas: list[Tensor]) -> Tensor:
    """The ``j × j`` upper-bidiagonal matrix with ``alphas`` on the diagonal and ``betas`` above it."""
    j = len(alphas)
    diag = torch.stack(alphas, dim=-1)
    out = torch.diag_embed(diag)
    if j > 1:
        out = out + torch.diag_embed(torch.stack(betas[:-1], dim=-1), offset=1)
    return out


def _combine(weights: Tensor, basis: list[Tensor], batch_dims: int, eps: float) -> Tensor:
    """``Σ_i weights[..., i] · basis[i]``, normalised."""
    total = sum(_scaled(weights[..., i], b, batch_dims) for i, b in enumerate(basis))
    return _unit(total, batch_dims, eps)
