"""Lipschitz-constrained layers: normalised weights and activations with |φ′| ≤ 1.

Normalisation (i-ResNet; Residual Flows App. D–E)
-------------------------------------------------
:class:`LipschitzNormalizer` turns any weight tensor W (a raw parameter, a masked one, the output of
any function) into ``W / max(1, σ̂ / coeff)`` (soft normalisation: weights already inside the
constraint are left exactly as they are), where σ̂ estimates ‖W‖ in the constraint's norm:

* ``operator="linear"``, orders p → q:

  - p = q = 2: :func:`~.power_iteration.exact_top_pair` when the smaller side has at most
    ``exact_max_dim`` (default :data:`~.power_iteration.EXACT_MAX_DIM` = 256) entries (the top
    eigenpair of the Gram matrix, in float64); larger: the warm-started power iteration plus a random-start Lanczos probe;
  - p = 1 (largest column q-norm), q = ∞ (largest row p*-norm), or p = ∞ with at most
    :data:`SIGN_ENUMERATION_MAX` columns (sign vectors): **exact** closed forms;
  - any other p, q in [1, ∞]: the general power method (Boyd; Higham; App. D) from several starts
    (:func:`general_power_method`), a local maximum and so a lower bound: an *estimate*, no guarantee;
  - learnable orders (:class:`OrderChain`, ``learn_orders``): 2 + tanh(s)/2 ∈ (1.5, 2.5) with
    learnable s (App. D), shared by consecutive layers; always the general power method, an
    estimate only.

* ``operator="conv"``: the spectral norm of the convolution *operator* at the input's spatial size
  (zero padding, stride 1) — never the norm of the reshaped kernel, which is a different, often
  smaller number. A 1×1 kernel's operator is its ``C_out × C_in`` matrix at every pixel (the same
  norm), estimated as a matrix; a larger kernel's operator is formed explicitly
  (:func:`conv_operator_matrix`) when its smaller side has at most ``exact_max_dim`` entries, else
  iterated with conv2d / conv_transpose2d and certified by a frequency-domain upper bound
  (:func:`conv_norm_bound`). It is re-estimated whenever the spatial size changes.

What σ̂ guarantees (each estimate's :class:`~.power_iteration.PowerIterationReport` states it:
``method``, ``tolerance`` t, ``failure_probability`` p; :meth:`LipschitzNormalizer.guarantee`). Any
σ̂ = uᵀWv is a lower bound, so ‖W_eff‖ = coeff·‖W‖/σ̂ whenever the constraint binds, and:

* closed forms: ‖W_eff‖_{p→q} ≤ coeff up to rounding (t = 4(m + n)ε), deterministic;
* p = q = 2 and convolutions with an explicit matrix (every layer of the conformance suite, the
  App. E MLPs up to 256 units): ‖W_eff‖ ≤ coeff·(1 + t) deterministically, whatever the spectrum —
  t = rounding alone (:func:`~.power_iteration.exact_top_pair`); a swapped top pair cannot fool it;
* larger convolutions: the warm power iteration, **certified** where :func:`conv_norm_bound` is
  within the probe's tolerance of σ̂: ‖W_eff‖ ≤ coeff·(1 + t), t = bound/σ̂ − 1 (0.5–1 % at
  16 × 16 for 3×3 kernels), deterministic; a warm estimate stuck on a non-dominant pair leaves the
  bound loose, and then the probe below joins;
* larger matrices (and convolutions whose bound stays loose): ‖W_eff‖ ≤ coeff·(1 + t) except with
  probability at most p = :data:`PROBE_FAILURE` per estimate, independently of the past, t from the
  Kuczyński–Woźniakowski bound for :data:`~.power_iteration.PROBE_STEPS` Lanczos steps from a fresh
  random start (about 1.2 % at n = 40, 1.6 % at n = 1024: coarse).
  Both are looser than the conformance suite's cap of 8√ε: such layers are not what the suite
  certifies. The warm power iteration stops on the change of σ̂ at most ``atol + rtol·σ̂``, or at
  ``max_iter`` (``hit_cap``); it makes the estimate tight when it settles on the top pair and
  guarantees nothing on its own (σ̂ moves by about (1 − r²) times its error per iteration, r = σ₂/σ₁);
* other orders and learned orders: none — σ̂ is an estimate from below (p = 1).

When the estimate runs
----------------------
* **Training mode** (``module.training``): every forward re-estimates σ̂ from the stored vectors
  (buffers ``_u``/``_v``, kept out of the FlowSpec), so one training step is one estimate on the
  current weights; the gradient flows through σ̂ = uᵀWv with u, v fixed.
* **Evaluation mode**: σ̂ is reused only while the unnormalised weight equals the snapshot taken at
  the last estimate (compared element by element, so optimizer steps, ``load_state_dict``, EMA
  updates and writes through ``.data`` are all seen) and, for convolutions, the input size, dtype
  and device are unchanged; otherwise it is re-estimated before use. Evaluating with stale vectors
  is therefore impossible.
* **Rounding at the constraint.** A weight at its constraint (an effective weight loaded from a
  FlowSpec, :meth:`_LipschitzLayer.load_weight`) has σ̂ = coeff up to rounding, so its estimate can
  exceed coeff by that rounding. With c = 4(m + n) + √min(m, n)/2 for an m × n weight
  (:meth:`LipschitzNormalizer.load_tolerance`: the estimate's rounding plus the entries' rounding),
  evaluation mode applies a weight with coeff < σ̂ ≤ coeff·(1 + c·ε(dtype)) **exactly as it is**, so
  ``to_spec`` → ``from_spec`` (and JSON) is bit-identical there; the loader accepts σ̂ up to
  coeff·(1 + c·ε(float32)) (a spec written by a float32 model) and raises
  :class:`~flowspec.errors.ConfigError` beyond. Training mode always divides by max(1, σ̂/coeff), a
  change by a factor of at most 1 + c·ε for such a weight.
* **Checkpoints**: a layer's ``state_dict`` holds the vectors and, as extra state, whether they are
  the estimate of the stored weight (and whether it is applied as given); loading it restores that,
  so a loaded module evaluates and trains bit-identically to the saved one, without re-estimating.
* :func:`refresh_norms` runs every constrained layer's estimate now: call it before an evaluation,
  after loading a checkpoint and on EMA (Polyak-averaged) weights to obtain the reports up front.

Activations: :class:`LipSwish` (eq. 10, β = softplus(β_raw), the 1/1.1 factor), :class:`ELU`,
:class:`Softplus`, :class:`Identity`, each with ``derivative(x)`` = φ′(x).
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowspec.errors import ConfigError

from .base import softplus
from .power_iteration import (
    EXACT_MAX_DIM, GIVEN, PROBE_STEPS, PowerIterationReport, certify_or_probe, check_tolerances, exact_top_pair,
    lanczos, power_iteration,
)

LIPSWISH_DIVISOR = 1.1
LANCZOS_STEPS = 64
PROBE_FAILURE = 1e-3
"""The probability at which the probe of a large operator states its tolerance (module docstring)."""


# ----------------------------------------------------------------------------- activations

class Activation(nn.Module):
    """An elementwise activation with |φ′| ≤ 1; ``derivative(x)`` is φ′(x).

    ``functional(x, *tensors)`` applies it with given values of its own tensors (``tensors()``: β for
    LipSwish, none otherwise), so that a layer can re-run it on copies of its parameters.
    """

    name = ""

    def tensors(self) -> list[Tensor]:
        return []

    def functional(self, x: Tensor, *tensors: Tensor) -> Tensor:
        return self(x)

    def derivative(self, x: Tensor) -> Tensor:
        raise NotImplementedError


class LipSwish(Activation):
    """φ(x) = x·σ(βx)/1.1 with β = softplus(beta) > 0 (Residual Flows eq. 10); sup|φ′| ≈ 0.99985."""

    name = "lipswish"

    def __init__(self, beta: float = 0.5):
        super().__init__()
        self.beta = nn.Parameter(torch.full((1,), float(beta)))

    def forward(self, x: Tensor) -> Tensor:
        return self.functional(x, self.beta)

    def tensors(self) -> list[Tensor]:
        return [self.beta]

    def functional(self, x: Tensor, *tensors: Tensor) -> Tensor:
        return lipswish(x, *tensors)

    def derivative(self, x: Tensor) -> Tensor:
        u = softplus(self.beta) * x
        s = torch.sigmoid(u)
        return (s + u * s * (1.0 - s)) / LIPSWISH_DIVISOR


def lipswish(x: Tensor, beta_raw: Tensor) -> Tensor:
    """LipSwish with a given pre-softplus β (functional form of :class:`LipSwish`)."""
    return x * torch.sigmoid(softplus(beta_raw) * x) / LIPSWISH_DIVISOR


class ELU(Activation):
    name = "elu"

    def forward(self, x: Tensor) -> Tensor:
        return F.elu(x)

    def derivative(self, x: Tensor) -> Tensor:
        return torch.where(x > 0, torch.ones_like(x), torch.exp(x.clamp_max(0.0)))


class Softplus(Activation):
    name = "softplus"

    def forward(self, x: Tensor) -> Tensor:
        return softplus(x)

    def derivative(self, x: Tensor) -> Tensor:
        return torch.sigmoid(x)


class Identity(Activation):
    name = "identity"

    def forward(self, x: Tensor) -> Tensor:
        return x

    def derivative(self, x: Tensor) -> Tensor:
        return torch.ones_like(x)


ACTIVATIONS: dict[str, type[Activation]] = {cls.name: cls for cls in (LipSwish, ELU, Softplus, Identity)}


def make_activation(name: str) -> Activation:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ConfigError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}") from None


# ----------------------------------------------------------------------------- norms of vectors and matrices

def dual_order(p: float) -> float:
    """p* with 1/p + 1/p* = 1."""
    if p == 1.0:
        return math.inf
    return 1.0 if math.isinf(p) else p / (p - 1.0)


def _vector_norm(t: Tensor, p: float | Tensor, dim: int) -> Tensor:
    """‖t‖_p along ``dim``; p may be a tensor (learnable orders), then computed as (Σ|t|^p)^(1/p)."""
    if isinstance(p, Tensor):
        a = t.abs().clamp_min(torch.finfo(t.dtype).tiny)
        top = a.amax(dim=dim, keepdim=True)
        return top.squeeze(dim) * ((a / top) ** p).sum(dim=dim) ** (1.0 / p)
    return torch.linalg.vector_norm(t, ord=p, dim=dim)


SIGN_ENUMERATION_MAX = 12
"""‖W‖_{∞→q} is computed exactly over the sign vectors for at most this many columns."""


def has_closed_form(p: float, q: float, columns: int) -> bool:
    """Whether :func:`closed_form_norm` computes ‖W‖_{p→q} exactly for a weight with ``columns`` columns."""
    return p == 1.0 or math.isinf(q) or (math.isinf(p) and columns <= SIGN_ENUMERATION_MAX)


def closed_form_norm(weight: Tensor, p: float, q: float) -> Tensor:
    """‖W‖_{p→q} exactly for p = 1 (largest column q-norm), q = ∞ (largest row p*-norm) or p = ∞ with at
    most :data:`SIGN_ENUMERATION_MAX` columns (the largest ‖Ws‖_q over the sign vectors s, the extreme
    points of the ∞-ball, with the first sign fixed; x ↦ ‖Wx‖_q is convex)."""
    if p == 1.0:
        return _vector_norm(weight, q, 0).amax()
    if math.isinf(q):
        return _vector_norm(weight, dual_order(p), 1).amax()
    n = weight.shape[1]
    codes = torch.arange(2 ** (n - 1), device=weight.device)[:, None] >> torch.arange(n - 1, device=weight.device) & 1
    signs = torch.cat([torch.ones(codes.shape[0], 1, device=weight.device), 1.0 - 2.0 * codes], dim=1).to(weight.dtype)
    return _vector_norm(weight @ signs.T, q, 0).amax()


def _dual(y: Tensor, q: float | Tensor) -> Tensor:
    """Column by column (``y`` of shape ``(m, S)``): the unit-q*-norm vector d with dᵀy = ‖y‖_q
    (sign(y) for q = 1; a signed unit vector at the largest entry for q = ∞)."""
    if not isinstance(q, Tensor) and math.isinf(q):
        idx = y.abs().argmax(dim=0, keepdim=True)
        return torch.zeros_like(y).scatter_(0, idx, torch.sign(y.gather(0, idx)))
    if not isinstance(q, Tensor) and q == 1.0:
        return torch.sign(y)
    norm = _vector_norm(y, q, 0).clamp_min(torch.finfo(y.dtype).tiny)
    return torch.sign(y) * (y.abs() / norm) ** (q - 1.0)


GENERAL_STARTS = 16
"""Column starts of the general power method besides the warm one (:func:`general_power_method`)."""
CONTENDING = 0.9
"""Starts whose σ is within this factor of the best one's go on after the screening steps."""
SCREENING_STEPS = 8
"""Steps after which the starts that are not contending are dropped."""
MAX_RATE = 0.9999
"""The largest convergence rate the general power method's stop extrapolates with."""


@torch.no_grad()
def general_power_method(weight: Tensor, x: Tensor, p: float | Tensor, q: float | Tensor, *,
                         atol: float, rtol: float, max_iter: int) -> tuple[Tensor, Tensor, PowerIterationReport]:
    """The general power method for ‖W‖_{p→q} (Boyd 1974; Higham 1992; Residual Flows App. D),
    x ← dual_{p*}(Wᵀ dual_q(Wx)), run at once from several starts and the best kept: the warm start
    ``x``, the top right singular vector (the answer for p = q = 2, close for orders near 2), and
    e_j + 0.1 for the :data:`GENERAL_STARTS` columns of largest q-norm. Each start's σ = ‖Wx‖_q /
    ‖x‖_p is kept only where a step increases it; each step is also extrapolated by Aitken's rule and the
    extrapolation kept where it raises σ (:func:`_extrapolated`). A start's limit is extrapolated at its observed
    linear rate (σ plus gain·r/(1 − r), r the ratio of its last two gains); after
    :data:`SCREENING_STEPS` steps, starts below :data:`CONTENDING` of the best, or whose limit
    cannot reach the best, are dropped, and the run stops when every remaining start's last gain and
    gain still to come are at most ``atol + rtol·σ``, or after ``max_iter`` steps. Returns
    (σ̂, x, report): σ̂ is a lower bound, a local maximum — an estimate with no guarantee (the report
    says so)."""
    check_tolerances(atol, rtol, max_iter)
    p, q = float(p), float(q)  # learned orders: their values now (no gradient flows through the iteration)
    p_dual = dual_order(p)
    starts = _general_starts(weight, x, q)
    starts = starts / _vector_norm(starts, p, 0).clamp_min(torch.finfo(x.dtype).tiny)
    sigma = _vector_norm(weight @ starts, q, 0)
    last_gain, last_step = torch.full_like(sigma, math.inf), torch.zeros_like(starts)
    change, iterations = math.inf, 0
    for iterations in range(1, max_iter + 1):
        candidate = _dual(weight.T @ _dual(weight @ starts, q), p_dual)
        candidate, step = _extrapolated(weight, candidate, candidate - starts, last_step, p, q)
        new_sigma = _vector_norm(weight @ candidate, q, 0)
        gain = (new_sigma - sigma).clamp_min(0.0)
        improved = new_sigma > sigma
        starts = torch.where(improved[None, :], candidate, starts)
        last_step = torch.where(improved[None, :], step, torch.zeros_like(step))
        sigma = torch.maximum(sigma, new_sigma)
        rate = torch.where(last_gain > 0, gain / last_gain, torch.zeros_like(gain)).clamp(0.0, MAX_RATE)
        remaining, last_gain = gain * rate / (1.0 - rate), gain
        best = sigma.max()
        tolerance = atol + rtol * float(best)
        change = float((gain / best.clamp_min(torch.finfo(x.dtype).tiny)).max())
        if iterations < SCREENING_STEPS:
            continue
        keep = (sigma >= CONTENDING * best) & ((sigma + remaining >= best - tolerance) | (sigma == best))
        starts, sigma, last_gain, gain, remaining, last_step = (
            t[..., keep] for t in (starts, sigma, last_gain, gain, remaining, last_step))
        if bool((torch.maximum(gain, remaining) <= tolerance).all()):
            break
    else:
        best_start = int(sigma.argmax())
        return sigma[best_start], starts[:, best_start], PowerIterationReport(iterations, True, change)
    best_start = int(sigma.argmax())
    return sigma[best_start], starts[:, best_start], PowerIterationReport(iterations, False, change)


def _extrapolated(weight: Tensor, candidate: Tensor, step: Tensor, last_step: Tensor, p: float,
                  q: float) -> tuple[Tensor, Tensor]:
    """Aitken's extrapolation of a linearly converging iterate, kept per start only where it raises σ:
    with the step ratio ρ = ⟨d_k, d_{k−1}⟩/‖d_{k−1}‖² the geometric tail ρ/(1 − ρ)·d_k is added to the
    iterate (renormalised in the p-norm). Returns the iterates and their steps."""
    norm = (last_step * last_step).sum(0)
    ratio = torch.where(norm > 0, (step * last_step).sum(0) / norm.clamp_min(torch.finfo(step.dtype).tiny),
                        torch.zeros_like(norm)).clamp(0.0, MAX_RATE)
    jumped = candidate + (ratio / (1.0 - ratio))[None, :] * step
    jumped = jumped / _vector_norm(jumped, p, 0).clamp_min(torch.finfo(step.dtype).tiny)
    better = _vector_norm(weight @ jumped, q, 0) > _vector_norm(weight @ candidate, q, 0)
    return torch.where(better[None, :], jumped, candidate), step


def _general_starts(weight: Tensor, x: Tensor, q: float) -> Tensor:
    """The starts of :func:`general_power_method`, as columns."""
    n = weight.shape[1]
    top = torch.linalg.svd(weight.to(torch.float64), full_matrices=False)[2][0].to(weight.dtype)
    count = min(n, GENERAL_STARTS)
    columns = _vector_norm(weight, q, 0).argsort(descending=True)[:count]
    unit = torch.eye(n, dtype=weight.dtype, device=weight.device)[:, columns] + 0.1
    return torch.cat([x.reshape(n, 1), top.reshape(n, 1), unit], dim=1)


def spread_over_pixels(vector: Tensor, spatial: tuple[int, int]) -> Tensor:
    """A 1×1 kernel's singular vector (length C) as a unit singular vector of its operator at
    ``spatial``, shaped ``(C, H, W)``: the same vector at every pixel, scaled by 1/√(HW)."""
    height, width = spatial
    return vector.reshape(-1, 1, 1).expand(-1, height, width) * (height * width) ** -0.5


BOUND_SQUARINGS = 10
"""Squarings of the transfer matrices' Gram matrices in :func:`conv_norm_bound` (an overestimate of
at most c^(1/1024), c the smaller channel count: 0.1 % for c = 3, 0.4 % for c = 64)."""


@torch.no_grad()
def conv_norm_bound(weight: Tensor, spatial: tuple[int, int], padding: int) -> float:
    """A certified upper bound of the operator norm of the stride-1 convolution with zero ``padding``
    at ``spatial`` = (H, W). The zero-padded operator is a compression of the circular convolution on
    the (H + padding) × (W + padding) grid (an input placed in the grid's corner never wraps onto
    itself), whose norm is the largest singular value of the kernel's transfer matrices K̂(ω) over
    that grid's DFT frequencies. Each is bounded above without an eigensolver: λ_max(G) ≤
    (tr G^(2^j))^(1/2^j) for the Gram matrix G of the smaller side, by :data:`BOUND_SQUARINGS`
    renormalised squarings (float64). Tight up to boundary effects (measured: 0.4–1.2 % at 16 × 16
    for 3×3 kernels, 2–4 % at 8 × 8) and that overestimate."""
    grid = (spatial[0] + padding, spatial[1] + padding)
    transfer = torch.fft.fft2(weight.to(torch.float64), s=grid).permute(2, 3, 0, 1)
    gram = transfer.mH @ transfer if transfer.shape[-1] <= transfer.shape[-2] else transfer @ transfer.mH
    trace = torch.diagonal(gram, dim1=-2, dim2=-1).real.sum(-1).clamp_min(torch.finfo(torch.float64).tiny)
    power, log_trace = gram / trace[..., None, None], torch.zeros_like(trace)  # tr(M^(2^j)) = exp(log_trace)
    for _ in range(BOUND_SQUARINGS):
        power = power @ power
        step = torch.diagonal(power, dim1=-2, dim2=-1).real.sum(-1).clamp_min(torch.finfo(torch.float64).tiny)
        power, log_trace = power / step[..., None, None], 2.0 * log_trace + torch.log(step)
    top = trace * torch.exp(log_trace / 2 ** BOUND_SQUARINGS)
    return float(top.max().sqrt())


def conv_operator_matrix(weight: Tensor, spatial: tuple[int, int], padding: int, max_dim: int) -> Tensor | None:
    """The ``(C_out·H·W, C_in·H·W)`` matrix of the stride-1 convolution with ``padding`` at ``spatial``
    (rows and columns in C-order), or None when its smaller side exceeds ``max_dim``. Built by applying
    the convolution (or its transpose) to the unit images of the smaller side: exact, since each
    output entry is a single product."""
    c_out, c_in = weight.shape[:2]
    height, width = spatial
    n_out, n_in = c_out * height * width, c_in * height * width
    if min(n_out, n_in) > max_dim:
        return None
    if n_in <= n_out:
        basis = torch.eye(n_in, dtype=weight.dtype, device=weight.device).reshape(n_in, c_in, height, width)
        return F.conv2d(basis, weight, padding=padding).reshape(n_in, n_out).T
    basis = torch.eye(n_out, dtype=weight.dtype, device=weight.device).reshape(n_out, c_out, height, width)
    return F.conv_transpose2d(basis, weight, padding=padding).reshape(n_out, n_in)


# ----------------------------------------------------------------------------- norm orders

class OrderChain(nn.Module):
    """Norm orders p_0, …, p_{L−1} of a chain of layers: link l maps the p_l-normed space to the
    p_{(l+1) mod L}-normed one, so a chain that ends where it starts bounds ‖J_g‖_{p_0} (eq. 17).
    Learnable orders are 2 + tanh(s)/2 ∈ (1.5, 2.5) with s a parameter starting at 0 (App. D);
    fixed ones are the given numbers. Norms in learned orders are only ever estimated.
    """

    def __init__(self, orders: Sequence[float], learnable: Sequence[bool] | None = None):
        super().__init__()
        self.fixed = tuple(float(p) for p in orders)
        self.learnable = tuple(bool(b) for b in (learnable or [False] * len(self.fixed)))
        if len(self.learnable) != len(self.fixed) or not all(p >= 1.0 for p in self.fixed):
            raise ConfigError(f"norm orders must lie in [1, ∞], one flag each; got {orders!r}, {learnable!r}")
        count = sum(self.learnable)
        self.logits = nn.Parameter(torch.zeros(count)) if count else None
        self._slot = {i: k for k, i in enumerate(i for i, flag in enumerate(self.learnable) if flag)}

    @property
    def learned(self) -> bool:
        return self.logits is not None

    def order(self, i: int) -> float | Tensor:
        if not self.learnable[i]:
            return self.fixed[i]
        return 2.0 + 0.5 * torch.tanh(self.logits[self._slot[i]])

    def pair(self, link: int) -> tuple[float | Tensor, float | Tensor]:
        return self.order(link), self.order((link + 1) % len(self.fixed))


# ----------------------------------------------------------------------------- the normaliser

class LipschitzNormalizer(nn.Module):
    """``W ↦ W / max(1, σ̂/coeff)`` for weights of a fixed shape (see the module docstring).

    ``operator``: ``"linear"`` for a matrix ``(out, in)``, ``"conv"`` for a kernel
    ``(out, in, k, k)`` applied with zero padding k//2 and stride 1 (norm at the input's size).
    """

    def __init__(self, weight_shape: tuple[int, ...], coeff: float, *, operator: str = "linear",
                 in_order: float = 2.0, out_order: float = 2.0, learn_orders: bool = False,
                 chain: "OrderChain | None" = None, link: int = 0,
                 atol: float = 0.0, rtol: float = 1e-4, max_iter: int = 200, exact_max_dim: int = EXACT_MAX_DIM):
        super().__init__()
        if not isinstance(coeff, (int, float)) or not 0.0 < coeff:
            raise ConfigError(f"coeff must be a positive number, got {coeff!r}")
        check_tolerances(atol, rtol, max_iter)
        if operator not in ("linear", "conv"):
            raise ConfigError(f"operator must be 'linear' or 'conv', got {operator!r}")
        self._orders = chain if chain is not None else OrderChain([in_order, out_order], [learn_orders] * 2)
        self.link = int(link)
        if operator == "conv" and (self._orders.learned or self.orders() != (2.0, 2.0)):
            raise ConfigError("convolutions are normalised in the spectral norm (orders 2 → 2) only")
        self.weight_shape = tuple(weight_shape)
        self.coeff, self.operator = float(coeff), operator
        self.atol, self.rtol, self.max_iter = float(atol), float(rtol), int(max_iter)
        self.exact_max_dim = int(exact_max_dim)
        self.padding = self.weight_shape[-1] // 2 if operator == "conv" else 0
        out_dim, in_dim = self.weight_shape[0], self.weight_shape[1]
        self.register_buffer("_u", torch.randn(out_dim) if operator == "linear" else torch.empty(0))
        self.register_buffer("_v", torch.randn(in_dim) if operator == "linear" else torch.empty(0))
        self.register_buffer("_snapshot", torch.empty(0), persistent=False)
        self._spatial: tuple[int, int] | None = None
        self._cold = True  # the vectors are random: the next estimate starts with Lanczos
        self._estimated_for: tuple | None = None
        self._given = False  # within rounding of the constraint at an evaluation estimate: applied as it is
        self.last_report: PowerIterationReport | None = None

    # ------------------------------------------------------------------ what kind of estimate
    @property
    def exact(self) -> bool:
        """Whether σ̂ is the exact norm (closed form) rather than an iterative estimate."""
        p, q = self.orders()
        return not self._orders.learned and self.operator == "linear" and has_closed_form(p, q, self.weight_shape[1])

    @property
    def spectral(self) -> bool:
        """Whether σ̂ comes from the (2 → 2) power iteration of :mod:`.power_iteration`."""
        return self.operator == "conv" or (not self._orders.learned and self.orders() == (2.0, 2.0))

    @property
    def hit_cap(self) -> bool:
        """Whether the last estimate stopped at ``max_iter`` (no convergence claimed)."""
        return bool(self.last_report is not None and self.last_report.hit_cap)

    def guarantee(self) -> dict[str, object]:
        """How the last estimate was made and what it guarantees
        (:meth:`~.power_iteration.PowerIterationReport.guarantee`; ``"given"`` before any)."""
        return (self.last_report or GIVEN).guarantee()

    def operator_bound(self, weight: Tensor) -> float:
        """A deterministic upper bound on the 2-norm of the operator that ``weight``'s normalised
        weight applies (at the last spatial size for a convolution): B/max(1, σ̂/coeff) (B for a
        weight within rounding of the constraint, applied as it is). B ≥ ‖W‖ is σ̂/(1 − t) where the
        last estimate guarantees σ̂ ≥ (1 − t)·‖W‖ with failure probability 0 (an exact top pair, a
        certified convolution), else, for a convolution, :func:`conv_norm_bound` (one FFT of the
        kernel and its transfer matrices' Gram matrices: formed only when needed); ∞ where neither
        exists (a probed matrix, other orders, no estimate yet)."""
        report = self.last_report
        if not self.spectral or report is None:
            return math.inf
        weight = weight.detach()
        sigma, norm = float(self.sigma(weight)), math.inf
        if report.failure_probability == 0.0 and report.tolerance < 1.0:
            norm = sigma / (1.0 - report.tolerance)
        elif self.operator == "conv":
            norm = conv_norm_bound(weight, self._spatial, self.padding)
        return norm if self._given else norm / max(1.0, sigma / self.coeff)

    def orders(self) -> tuple[float | Tensor, float | Tensor]:
        """(p, q) of the constraint ‖W‖_{p→q}: link ``link`` of the order chain."""
        return self._orders.pair(self.link)

    # ------------------------------------------------------------------ operator
    def _matvec(self, weight: Tensor) -> Callable[[Tensor], Tensor]:
        if self.operator == "linear":
            return lambda v: weight @ v
        return lambda v: F.conv2d(v, weight, padding=self.padding)

    def _rmatvec(self, weight: Tensor) -> Callable[[Tensor], Tensor]:
        if self.operator == "linear":
            return lambda u: weight.T @ u
        return lambda u: F.conv_transpose2d(u, weight, padding=self.padding)

    def _vectors_for(self, spatial: tuple[int, int] | None, like: Tensor) -> None:
        """Make the warm-start vectors fit the operator: drawn afresh for a new spatial size."""
        if self.operator == "linear":
            return
        if spatial is None:
            spatial = self._spatial
        if spatial is None:
            raise ConfigError("a convolution's norm depends on the input size: give the spatial size (H, W)")
        spatial = (int(spatial[0]), int(spatial[1]))
        if self._spatial != spatial or self._v.shape[-2:] != spatial:
            self._spatial = spatial
            self._u = torch.randn(1, self.weight_shape[0], *spatial, dtype=like.dtype, device=like.device)
            self._v = torch.randn(1, self.weight_shape[1], *spatial, dtype=like.dtype, device=like.device)
            self._cold = True

    # ------------------------------------------------------------------ estimation
    def _key(self, weight: Tensor) -> tuple:
        return (self._spatial, weight.dtype, weight.device, tuple(weight.shape))

    def _is_current(self, weight: Tensor) -> bool:
        return (self._estimated_for == self._key(weight) and self._snapshot.shape == weight.shape
                and bool(torch.equal(self._snapshot, weight.detach())))

    def _stale(self, weight: Tensor) -> bool:
        """Whether an evaluation must re-estimate: the weight (or size, dtype, device) changed since
        the last estimate (a training step's estimate is made as an evaluation's would be)."""
        return not self._is_current(weight)

    def estimate(self, weight: Tensor, spatial: tuple[int, int] | None = None, *,
                 warm: bool = False) -> PowerIterationReport:
        """Run the iteration on ``weight`` (at ``spatial`` for a convolution) to its tolerance,
        store the vectors and the snapshot, and return the report. ``warm`` (training steps): the
        weight is normalised as estimated, never applied as given (module docstring)."""
        self._vectors_for(spatial, weight)
        w = weight.detach()
        p, q = self.orders()
        if self.exact:
            m, n = w.shape[-2:]
            report = PowerIterationReport(0, False, 0.0, "closed_form", 4.0 * (m + n) * torch.finfo(w.dtype).eps, 0.0)
        elif self.spectral:
            report = self._spectral_estimate(w)
        else:
            _, x, report = general_power_method(w, self._v.to(w), p, q, atol=self.atol, rtol=self.rtol,
                                                max_iter=self.max_iter)
            self._v = x
        self._snapshot = w.clone()
        self._estimated_for = self._key(weight)
        self.last_report = report
        if warm:
            self._given = False
        else:
            with torch.no_grad():
                self._given = 1.0 < float(self.sigma(w)) / self.coeff <= 1.0 + self.load_tolerance(w.dtype)
        return report

    def load_tolerance(self, dtype: torch.dtype) -> float:
        """c·ε(dtype) by which a *loaded* effective weight's estimate may exceed coeff (module docstring):
        c = 4(m + n) for the estimate's own rounding (the closed forms' bound) plus √min(m, n)/2 for
        rounding the weight's entries into ``dtype`` (‖ΔW‖₂ ≤ ‖ΔW‖_F ≤ ε/2·‖W‖_F ≤ ε/2·√r·‖W‖₂), with
        m × n the weight's shape as a matrix (``out × in·k·k``)."""
        m, n = self.weight_shape[0], math.prod(self.weight_shape[1:])
        return (4.0 * (m + n) + 0.5 * math.sqrt(min(m, n))) * torch.finfo(dtype).eps

    def excess(self, weight: Tensor, spatial: tuple[int, int] | None = None) -> float:
        """σ̂/coeff for ``weight`` by an evaluation estimate (the loader rejects it beyond
        1 + :meth:`load_tolerance`; up to that, evaluation applies the weight as it is)."""
        with torch.no_grad():
            self._vectors_for(spatial, weight)
            if self._stale(weight):
                self.estimate(weight, spatial)
            return float(self.sigma(weight)) / self.coeff

    def state(self, weight: Tensor) -> dict[str, object]:
        """What decides whether the next evaluation re-estimates (for checkpoints): whether the stored
        vectors are those of ``weight``'s last estimate, whether it is applied as given, and the report."""
        report = self.last_report
        return {"current": self._is_current(weight), "given": self._given,
                "report": None if report is None else report.to_list()}

    def restore(self, state: dict, weight: Tensor) -> None:
        """Mark the loaded vectors as the estimate of the loaded ``weight`` (the inverse of :meth:`state`),
        so that a loaded checkpoint evaluates exactly as the saved module did, with no re-estimate."""
        self._snapshot = weight.detach().clone()
        self._estimated_for = self._key(weight)
        self._given = bool(state.get("given"))
        report = state.get("report")
        self.last_report = None if report is None else PowerIterationReport.from_list(report)

    @torch.no_grad()
    def _spectral_estimate(self, w: Tensor) -> PowerIterationReport:
        """σ̂ of the 2 → 2 operator: exact where the operator has an explicit matrix whose smaller side
        is at most :data:`~.power_iteration.EXACT_MAX_DIM` (:meth:`_dense`), else
        :meth:`_iterative_estimate` (module docstring)."""
        dense = self._dense(w)
        if dense is None:
            return self._iterative_estimate(w)
        _, u, v, report = exact_top_pair(dense)
        self._u, self._v = self._vectors_from_dense(u, v, w)
        self._cold = False
        return report

    def _dense(self, w: Tensor) -> Tensor | None:
        """The operator's explicit matrix when its smaller side is at most ``EXACT_MAX_DIM``, else None:
        the weight (linear); a 1×1 kernel's ``C_out × C_in`` matrix (the operator is that matrix at
        every pixel, with the same norm); the matrix of a larger kernel at the input size, built by
        applying the convolution (or its transpose) to the unit images of the smaller side (exact:
        each output entry is one product)."""
        if self.operator == "linear" or w.shape[-1] == 1:
            matrix = w if self.operator == "linear" else w[:, :, 0, 0]
            return matrix if min(matrix.shape) <= self.exact_max_dim else None
        return conv_operator_matrix(w, self._spatial, self.padding, self.exact_max_dim)

    def _vectors_from_dense(self, u: Tensor, v: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
        """Singular vectors of :meth:`_dense`'s matrix in the layout of ``_u``, ``_v`` (for a 1×1 kernel:
        its vectors spread evenly over the pixels, a top pair of the operator)."""
        if self.operator == "linear":
            return u, v
        height, width = self._spatial
        if w.shape[-1] == 1:
            return spread_over_pixels(u, self._spatial)[None], spread_over_pixels(v, self._spatial)[None]
        return u.reshape(1, -1, height, width), v.reshape(1, -1, height, width)

    def _iterative_estimate(self, w: Tensor) -> PowerIterationReport:
        """Large operators: the warm-started power iteration (:meth:`_warm_estimate`), then
        :func:`~.power_iteration.certify_or_probe` with a convolution's :func:`conv_norm_bound` (none for
        a matrix) and a probe of :data:`~.power_iteration.PROBE_STEPS` Lanczos steps (module docstring)."""
        warm = self._warm_estimate(w)
        bound = conv_norm_bound(w, self._spatial, self.padding) if self.operator == "conv" else math.inf
        self._u, self._v, report = certify_or_probe(
            self._matvec(w), self._rmatvec(w), self._u, self._v, warm, bound=bound, steps=PROBE_STEPS,
            failure=PROBE_FAILURE, event_dims=1 if self.operator == "linear" else 3)
        return report

    def _warm_estimate(self, w: Tensor) -> PowerIterationReport:
        """Power iteration until the change of σ̂ is within atol + rtol·σ̂ (App. E), at most ``max_iter``
        iterations in all (Lanczos steps included); from random vectors (a new layer, a new input
        size) it starts with at most :data:`LANCZOS_STEPS` Golub–Kahan–Lanczos steps, which find the
        top pair of operators with close singular values far sooner than power iteration. **No
        guarantee of its own**: per iteration σ̂ moves by about (1 − r²) times its error (r = σ₂/σ₁),
        so a small change does not mean a small error, and a warm start can sit on a swapped pair.
        A stricter stop (on the singular-pair residual) would not help: near-degenerate trained layers
        then run to the cap on every step and still claim nothing. What :meth:`_iterative_estimate`
        reports is the certificate's or the random-start probe's guarantee."""
        matvec, rmatvec = self._matvec(w), self._rmatvec(w)
        event_dims = 1 if self.operator == "linear" else 3
        u, v, spent = self._u.to(w), self._v.to(w), 0
        if self._cold:
            _, u, v, start = lanczos(matvec, rmatvec, v, rtol=self.rtol, max_steps=min(self.max_iter, LANCZOS_STEPS),
                                     event_dims=event_dims)
            spent, self._cold = start.iterations, False
        report = PowerIterationReport(0, spent >= self.max_iter, math.inf)  # the Lanczos start spent it all
        if spent < self.max_iter:
            _, _, v, report = power_iteration(matvec, rmatvec, u, v, atol=self.atol, rtol=self.rtol,
                                              max_iter=self.max_iter - spent, event_dims=event_dims)
        self._u, self._v = self._unit(matvec(v)), v
        return PowerIterationReport(spent + report.iterations, report.hit_cap, report.last_change)

    @staticmethod
    def _unit(t: Tensor) -> Tensor:
        return t / t.norm().clamp_min(torch.finfo(t.dtype).tiny)

    def sigma(self, weight: Tensor) -> Tensor:
        """σ̂ as a differentiable function of ``weight`` at the stored vectors (uᵀWv; exact forms)."""
        p, q = self.orders()
        if self.exact:
            return closed_form_norm(weight, p, q)
        if self.operator == "conv":
            return (self._u * F.conv2d(self._v, weight, padding=self.padding)).sum()
        if self.spectral:
            return self._u @ (weight @ self._v)
        return _vector_norm(weight @ self._v, q, 0) / _vector_norm(self._v, p, 0)

    def forward(self, weight: Tensor, spatial: tuple[int, int] | None = None) -> Tensor:
        """The normalised weight; runs the iteration as the module docstring says."""
        self._vectors_for(spatial, weight)
        if self.training:
            self.estimate(weight, spatial, warm=True)
        elif self._stale(weight):
            self.estimate(weight, spatial)
        if self._given:
            return weight
        return weight / torch.clamp(self.sigma(weight) / self.coeff, min=1.0)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Convolution vectors have the shape of the last input size: take the stored ones as they are.
        for name in ("_u", "_v"):
            stored = state_dict.get(prefix + name)
            if stored is not None and stored.shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(stored))
                if self.operator == "conv" and stored.dim() == 4:
                    self._spatial = tuple(stored.shape[-2:])
        if prefix + "_v" in state_dict:
            self._cold = False
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


# ----------------------------------------------------------------------------- layers

class _LipschitzLayer(nn.Module):
    """A layer whose weight is ``transform(raw ⊙ mask)`` normalised by a :class:`LipschitzNormalizer`."""

    def __init__(self, weight_shape: tuple[int, ...], coeff: float, mask: Tensor | None, bias: bool,
                 transform: Callable[[Tensor], Tensor] | None, operator: str, **normalizer):
        super().__init__()
        self.raw_weight = nn.Parameter(torch.randn(weight_shape) / math.sqrt(math.prod(weight_shape[1:])))
        self.bias = nn.Parameter(torch.zeros(weight_shape[0])) if bias else None
        if mask is not None:
            mask = torch.as_tensor(mask, dtype=torch.get_default_dtype())
            if tuple(mask.shape) != tuple(weight_shape):
                raise ConfigError(f"mask has shape {tuple(mask.shape)}, the weight {tuple(weight_shape)}")
            self.register_buffer("_mask", mask)
        else:
            self._mask = None
        self.transform = transform
        self.normalizer = LipschitzNormalizer(weight_shape, coeff, operator=operator, **normalizer)
        self._loaded_state: dict | None = None
        self.register_load_state_dict_post_hook(self._restore_after_load)

    def unnormalized_weight(self) -> Tensor:
        """transform(raw ⊙ mask): the weight before normalisation."""
        weight = self.raw_weight if self._mask is None else self.raw_weight * self._mask
        return weight if self.transform is None else self.transform(weight)

    def get_extra_state(self) -> dict[str, object]:
        """Saved with the ``state_dict``: whether the stored vectors are the estimate of the stored
        weight (and whether it is applied as given), so that loading the checkpoint evaluates exactly
        as this layer does, without re-estimating (:meth:`LipschitzNormalizer.state`)."""
        with torch.no_grad():
            return self.normalizer.state(self.unnormalized_weight())

    def set_extra_state(self, state: object) -> None:
        self._loaded_state = state if isinstance(state, dict) else None

    @staticmethod
    def _restore_after_load(layer: "_LipschitzLayer", incompatible: object) -> None:
        """After the whole layer (normaliser included) has loaded: trust the loaded vectors for the
        loaded weight when the checkpoint says they were current; otherwise the next use re-estimates."""
        state, layer._loaded_state = getattr(layer, "_loaded_state", None), None
        if state and state.get("current"):
            with torch.no_grad():
                layer.normalizer.restore(state, layer.unnormalized_weight())

    def effective_weight(self, spatial: tuple[int, int] | None = None) -> Tensor:
        """The normalised weight used by the layer (see :class:`LipschitzNormalizer`)."""
        return self.normalizer(self.unnormalized_weight(), spatial)

    def spec_weight(self, spatial: tuple[int, int] | None = None) -> Tensor:
        """The effective weight as evaluation mode applies it, whatever the mode: what a FlowSpec
        carries (a weight at its constraint is applied as given there; module docstring)."""
        mode = self.normalizer.training
        self.normalizer.train(False)
        try:
            return self.effective_weight(spatial)
        finally:
            self.normalizer.train(mode)

    @property
    def weight(self) -> Tensor:
        return self.effective_weight()

    def load_weight(self, weight: Tensor, spatial: tuple[int, int] | None = None) -> None:
        """Set the raw weight so that the layer applies exactly ``weight`` (an effective weight inside
        the constraint); raises :class:`ConfigError` if the mask, transform or constraint would change it."""
        weight = torch.as_tensor(weight, dtype=self.raw_weight.dtype, device=self.raw_weight.device)
        with torch.no_grad():
            self.raw_weight.copy_(weight)
            produced = self.unnormalized_weight()
            if not torch.equal(produced, weight):
                raise ConfigError("the loaded weight is not reproduced by the layer's mask or transform")
            factor = self.normalizer.excess(produced, spatial)
        tolerance = self.normalizer.load_tolerance(torch.float32)  # the least precise dtype a spec comes from
        if factor > 1.0 + tolerance:
            raise ConfigError(
                f"the loaded weight has estimated norm {factor * self.normalizer.coeff:.9g} > coeff "
                f"{self.normalizer.coeff}·(1 + {tolerance:.2g}) (the rounding allowance): it is not an "
                f"effective (normalised) weight of this layer"
            )


class LipschitzLinear(_LipschitzLayer):
    """y = W_eff x + b with ‖W_eff‖_{in_order→out_order} ≤ coeff (up to the estimate; module docstring)."""

    def __init__(self, in_features: int, out_features: int, coeff: float, mask: Tensor | None = None,
                 bias: bool = True, *, transform: Callable[[Tensor], Tensor] | None = None, **normalizer):
        super().__init__((out_features, in_features), coeff, mask, bias, transform, "linear", **normalizer)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.effective_weight(), self.bias)


class LipschitzConv2d(_LipschitzLayer):
    """Stride-1 'same' convolution with the operator norm of W_eff at the input's size ≤ coeff."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, coeff: float,
                 mask: Tensor | None = None, bias: bool = True, *,
                 transform: Callable[[Tensor], Tensor] | None = None, **normalizer):
        if kernel_size % 2 != 1:
            raise ConfigError(f"kernel_size must be odd for 'same' padding, got {kernel_size}")
        super().__init__((out_channels, in_channels, kernel_size, kernel_size), coeff, mask, bias, transform,
                         "conv", **normalizer)

    def forward(self, x: Tensor) -> Tensor:
        weight = self.effective_weight(tuple(x.shape[-2:]))
        return F.conv2d(x, weight, self.bias, padding=self.normalizer.padding)


# ----------------------------------------------------------------------------- model-wide

def normalizers(model: nn.Module) -> Iterator[tuple[str, LipschitzNormalizer]]:
    return ((name, m) for name, m in model.named_modules() if isinstance(m, LipschitzNormalizer))


def refresh_norms(model: nn.Module) -> dict[str, PowerIterationReport]:
    """Run every constrained layer's estimate to its tolerance now, on its current weight (and, for
    convolutions, the last input size); returns the reports by module name. Use before evaluation,
    after loading and on EMA weights (module docstring)."""
    reports = {}
    for name, module in model.named_modules():
        if isinstance(module, _LipschitzLayer):
            with torch.no_grad():
                reports[f"{name}.normalizer" if name else "normalizer"] = module.normalizer.estimate(
                    module.unnormalized_weight())
    return reports


def norm_reports(model: nn.Module) -> dict[str, PowerIterationReport | None]:
    """The last report of every normaliser in ``model`` (None where none has run yet)."""
    return {name: m.last_report for name, m in normalizers(model)}
