"""Quasi-autoregressive residual blocks and models (QuAR flows, Gopal; see the reference module).

``f(x) = x + F(x)`` with ``F(x) = σ·N(x)/(θ + Π_i σ̂_i)`` (the Lipschitz trick, Sec. 4.2), ``N`` a
masked network whose Jacobian is LOWER triangular in the autoregressive order:

* ``quar_mlp`` — event ``(D,)``, order ``0, …, D−1``. Hidden layer ``i`` has ``k_i·D`` units in
  ``D`` interleaved groups (unit ``u`` in group ``u mod D``); group ``g1`` feeds group ``g2`` of the
  next layer iff ``g1 ≤ g2``, in the first layer too (MADE would use ``g1 < g2`` there and lose the
  diagonal).
* ``quar_conv`` — event ``(C, H, W)``, raster order over pixels, then channel (PixelCNN, App. C):
  ``act → conv → act → … → conv`` (App. A: 3×3, 1×1, 3×3), hidden channels ``k_i·C`` in ``C``
  groups (channel ``c`` in group ``c mod C``); kernels read the rows above and the taps left of the
  centre in full and, at the centre tap, channel groups ``g_in ≤ g_out`` (one mask type, so the
  diagonal is kept).

Log-determinant by diagonal propagation (Sec. 4.1)
    ``∂F_d/∂x_d`` only involves the diagonal blocks ``B_{i,d}`` (``k_i × k_{i−1}``; for convs the
    group-diagonal blocks of the centre taps): ``δ_1 = B_{1,d}``, ``δ_i = φ′(a_i) ⊙ B_{i,d} δ_{i−1}``,
    ``∂N_d/∂x_d = B_{L,d} δ_{L−1}`` (convs start with ``δ_0 = φ′(x)``). It is carried alongside the
    forward pass, without building the Jacobian, and ``log|det| = Σ_d log(1 + ∂F_d/∂x_d)``
    exactly; gradients come from autograd through it. With the interleaved groups a hidden tensor
    reshapes to ``(B, k, G, …)`` with the group axis inner, so ``δ`` lives in the hidden tensors'
    own layout: the product with a layer's blocks is ``k_{i−1}`` broadcast multiply-adds, and the
    product with ``φ′`` one fused kernel for ELU (``elu_backward``) — about ``k + 1`` passes over a
    hidden tensor per layer, next to a matrix product or convolution of ``k·D`` (``9·k·C``) multiply-adds
    per entry.

Norms (``norm``): the estimates ``σ̂_i = u_iᵀ W_i v_i`` come from the vectors ``u_i``, ``v_i``
(canonical buffers), lower bounds of what they estimate:

* ``"full"`` (option (a)): the full masked weight ``M_i ⊙ W_i`` — for convolutions the operator at
  the input's spatial size. Guarantee: ``Lip(F) ≤ σ·Π_i(‖W_i‖/σ̂_i) = σ·Π_i(1 + t_i)``, so the
  fixed-point inverse converges at rate ``≤ σ·Π(1 + t_i)`` and ``cond(I + J_F) ≤ (1 + σ)/(1 − σ)``.
* ``"diagonal"`` (option (b)): the diagonal blocks only, each block estimated on its own vectors
  (batched over the blocks) and the maximum taken (App. C). Guarantee: ``|∂F_d/∂x_d| ≤ σ·Π(1 + t_i)``
  for every ``d`` and ``x``, so ``f`` is invertible (each coordinate's map is strictly increasing with
  slope ``≥ 1 − σ·Π(1 + t_i)``) and ``log|det| ≥ D·log(1 − σ·Π(1 + t_i))`` — but NOT ``Lip(F) ≤ σ``: a
  block-triangular matrix does not have the norm of its block diagonal (``‖[[2, 3], [0, 1]]‖₂ ≈
  3.70``), App. C notwithstanding. Estimating each block on its own vector also removes App. C's
  warm-start trap: one vector over the whole block-diagonal matrix, converged on a block, keeps
  reporting that block's norm after another block has become dominant (``diag(2, 1) → diag(2, 3)``
  stays at 2).

How an estimate is made (:meth:`refresh_norms`; each layer's report in :attr:`last_power_iteration`,
hook ``norm_guarantees``), and what t_i is:

* **exact** where what the layer measures has an explicit matrix whose smaller side has at most
  ``exact_max_dim`` (:data:`~.power_iteration.EXACT_MAX_DIM` = 256) entries — the masked weight of
  every MLP layer up to 256 units, the diagonal blocks, a convolution operator up to 256 entries on
  a side (:func:`~.power_iteration.exact_top_pair`): the top eigenpair of the Gram matrix in
  float64 (t = rounding). **Deterministic**, for every spectrum: after a dozen Adam steps these
  layers have σ₂/σ₁ ≥ 0.99 and their top pair swaps, which a warm start cannot see (it settles on
  the second pair, its stopping rule met after one iteration) but the exact pair does;
* larger (convolution operators at their image size, masked weights wider than 256 on both
  sides): a warm run — the power iteration from the stored vectors until σ̂ changes by at most
  ``pi_rtol`` relative (default ``√ε``; at most ``pi_max_iter`` iterations), a lower bound with no
  guarantee of its own, amortised over steps — **certified** by the frequency-domain upper bound of the operator
  norm (:func:`~.lipschitz.conv_norm_bound`; t = bound/σ̂ − 1, 0.5–1 % at 16 × 16, deterministic)
  where that bound is within the probe's tolerance of σ̂; otherwise a probe of ``krylov_steps``
  Lanczos steps from a fresh random start joins, Rayleigh–Ritz on its Krylov space plus the warm
  vector (never below either), and the estimate is
  **probabilistic**: t from the Kuczyński–Woźniakowski bound at failure probability
  :data:`~.lipschitz.PROBE_FAILURE` per estimate (about 1.6 % at n = 1024 with 32 steps). Both are
  coarse, looser than the conformance suite's cap of 8√ε. A power iteration that stops at ``pi_max_iter``
  is reported as capped and warns.

When the estimates run: whenever a weight has changed since the last run (an optimizer step,
:meth:`assign_parameters`, a ``load_state_dict``, an EMA copy) — at the next forward, inverse or
:func:`plain_forward`, in training and in evaluation mode alike — so a flow never evaluates with
stale vectors (weights are tracked by their storage and version counters; writes through ``.data``
bypass the counter; a dtype or device move is not a change, and an estimate made in float32 keeps
its float32 tolerance after ``.to(float64)``); :meth:`refresh_norms` runs them on demand. Loading a
spec (:meth:`from_spec`) takes the spec's vectors as they are: a spec fixes the function exactly.
**Checkpoints** carry the estimates: the ``state_dict`` holds the vectors and, as extra state,
whether they were current for the saved weights and their reports; loading one that was current
takes its vectors as they are (the same σ̂_i, bit for bit: a reload gives identical log-densities),
loading one saved after a weight change re-estimates at the next use.

Inverses (``inverse`` in the config; default ``"fixed_point"`` under option (a),
``"coordinatewise"`` under (b)):

* :meth:`fixed_point_inverse` — ``x ← y − F(x)`` from ``x = y`` (Algorithm 1), stopping when the
  residual ``‖x + F(x) − y‖ ≤ rtol·max(‖y‖, 1)`` per sample (its forward error is up to
  ``1/(1 − Lip(F))`` larger); raises :class:`ConvergenceError` with the residual at the cap, on
  non-finite iterates, or when the residual stalls at its rounding floor (σ near 1 in float32). As
  the configured inverse (``inverse="fixed_point"``) it hands over to the coordinate-wise inverse
  when it raises. Under option (a) it converges at rate ``σ(1 + tol)``. Under option (b) it
  still converges asymptotically (``J_F`` is triangular with ``|diagonal| ≤ σ``) but with unbounded
  transient growth: for a lower-triangular linear ``F`` with diagonal 0.9 and N(0, 1) entries below
  it the error reaches 1e21 at D = 30 (float32 overflows at D = 60), so it hits its cap.
* :meth:`coordinatewise_inverse` — sure to work under both options: coordinates in the
  autoregressive order, each solved by a safeguarded Newton iteration (bisection inside a bracket
  that the sign of the residual maintains) on its strictly increasing 1-D map. Cost: sequential
  network evaluations, as when sampling an autoregressive flow: every evaluation gives the current
  coordinate a safeguarded Newton step and every later coordinate a Newton step towards its own
  equation, so weakly coupled coordinates converge together (a few evaluations for generic blocks
  near the identity) and strongly coupled ones wait for their predecessors (up to about ``D``
  times the 1–3 steps a coordinate needs: 31 evaluations at ``D = 30`` in the example above). The
  map itself may be ill-conditioned: under (a) ``cond(I + J_F) ≤ (1 + σ)/(1 − σ)``, under (b) there
  is no such bound (``cond`` ≈ 370 in that example at ``D = 30``, ≈ 2·10⁴ at ``D = 60``), so a small
  backward error ``‖f(x̂) − y‖ ≤ rtol·max(‖y‖, 1)`` is what it guarantees.

Memory (``recompute``, a block setting, off by default): a forward with gradients keeps the block's
input only, and backward runs the block's masked network and diagonal propagation again
(``torch.utils.checkpoint``, non-reentrant) before differentiating it: one more forward of the block
per training step for a step's peak memory of about one block's graph rather than all of them. The
values and gradients are those of the plain forward (the same operations on the same weights and
estimates: nothing between the forward and its backward re-estimates the norms). Without it, the
MLP's masked layers keep their weight and mask for backward, not the masked product
(:class:`_MaskedLinear`).

Gradients through the inverse (``rsample``) come by implicit differentiation: for x = f⁻¹(y) and a
loss with gradient g at x, λ = (I + J_F(x))⁻ᵀ g is the gradient at y and −∂(λᵀF(x))/∂θ the
parameters' (:class:`_ImplicitInverse`). The adjoint system is triangular in the autoregressive
order: under option (a) it is solved by the fixed point λ ← g − J_Fᵀλ (rate ``≤ σ(1 + tol)``, one
vector–Jacobian product per step, the inverse's stopping rule); under option (b), whose fixed point
meets the same transient growth as the forward one, by back substitution in reverse autoregressive
order, one vector–Jacobian product per coordinate (exact after ``D`` of them).
"""
from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

from flowspec.errors import ConfigError, ConvergenceError
from flowspec.spec import FlowSpec

from .base import Flow, batch_sum, register, relative_norm, sample_norm, softplus
from .lipschitz import (
    PROBE_FAILURE, ELU, Activation, Identity, conv_norm_bound, conv_operator_matrix, make_activation,
    spread_over_pixels,
)
from .power_iteration import EXACT_MAX_DIM, GIVEN, PowerIterationReport, certify_or_probe, exact_top_pair, power_iteration
from .sequential import residual_stack

NORMS = ("full", "diagonal")
INVERSES = ("fixed_point", "coordinatewise")
DEFAULT_INVERSE = {"full": "fixed_point", "diagonal": "coordinatewise"}
CONV_KERNELS = (3, 1, 3)
MAX_STEPS_PER_COORDINATE = 200
STALL_ITERATIONS = 50
KRYLOV_STEPS = 32  # Lanczos steps of the warm run and of the probe of large layers


# ----------------------------------------------------------------------------- activations

ACTIVATIONS = ("elu", "identity")
"""Activations of QuAR blocks (:mod:`.lipschitz`'s modules, ``|φ′| ≤ 1``; ELU as in App. A)."""


def _times_derivative(act: Activation, delta: Tensor, a: Tensor, value: Tensor) -> Tensor:
    """``δ ⊙ φ′(a)``; for ELU one fused kernel reading ``φ(a)`` (``φ′ = φ + 1`` where ``a ≤ 0``)."""
    if isinstance(act, ELU):
        return torch.ops.aten.elu_backward(delta, 1.0, 1.0, 1.0, True, value)
    if isinstance(act, Identity):
        return delta
    raise TypeError(f"no diagonal-propagation rule for activation {type(act).__name__} (QuAR has {ACTIVATIONS})")


# ----------------------------------------------------------------------------- masks

def group_mask(groups: int, k_out: int, k_in: int) -> Tensor:
    """``(k_out·G, k_in·G)`` 0/1 mask: output unit ``o`` reads input unit ``i`` iff
    ``i mod G ≤ o mod G`` (the quasi-autoregressive rule, equality kept in every layer)."""
    g_out = torch.arange(k_out * groups) % groups
    g_in = torch.arange(k_in * groups) % groups
    return (g_in[None, :] <= g_out[:, None]).to(torch.get_default_dtype())


def kernel_mask(groups: int, k_out: int, k_in: int, size: int) -> Tensor:
    """PixelCNN mask of a ``size × size`` kernel: rows above the centre and taps left of it in full,
    :func:`group_mask` at the centre tap."""
    c = size // 2
    mask = torch.zeros(k_out * groups, k_in * groups, size, size)
    mask[:, :, :c, :] = 1.0
    mask[:, :, c, :c] = 1.0
    mask[:, :, c, c] = group_mask(groups, k_out, k_in)
    return mask


def _check_int_list(name: str, values: Sequence[int]) -> tuple[int, ...]:
    if not isinstance(values, (list, tuple)):
        raise ConfigError(f"{name} must be a non-empty list of positive ints, got {values!r}")
    values = tuple(values)
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
        raise ConfigError(f"{name} must be a non-empty list of positive ints, got {values!r}")
    return values


# ----------------------------------------------------------------------------- implicit differentiation

class _MaskedLinear(torch.autograd.Function):
    """``F.linear(x, masked, bias)`` for ``masked = weight ⊙ mask`` that keeps ``weight`` and ``mask``
    for backward instead of ``masked`` (formed again there): a masked layer's product costs no memory
    between its forward and its backward (``F.linear`` would keep it). Its backward is differentiable."""

    @staticmethod
    def forward(ctx, x: Tensor, masked: Tensor, weight: Tensor, mask: Tensor, bias: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight, mask)
        return F.linear(x, masked, bias)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, mask = ctx.saved_tensors
        rows, inputs = grad.reshape(-1, grad.shape[-1]), x.reshape(-1, x.shape[-1])
        grad_x = grad @ (weight * mask) if ctx.needs_input_grad[0] else None
        grad_masked = rows.T @ inputs if ctx.needs_input_grad[1] else None
        grad_bias = rows.sum(0) if ctx.needs_input_grad[4] else None
        return grad_x, grad_masked, None, None, grad_bias


class _ImplicitInverse(torch.autograd.Function):
    """x = f⁻¹(y) by the block's inverse; gradients by implicit differentiation (module docstring)."""

    @staticmethod
    def forward(ctx, block: "_QuARBlock", y: Tensor, *params: Tensor) -> Tensor:
        x = block._solve_inverse(y)
        ctx.block = block
        ctx.save_for_backward(x)
        return x

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_x: Tensor):
        (x,) = ctx.saved_tensors
        block = ctx.block
        params = list(block.parameters())
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            out, diag = block._residual(leaf, True)
            lam = block._adjoint(out, leaf, diag.detach(), grad_x)
            trainable = [p for p in params if p.requires_grad]
            grads = iter(torch.autograd.grad(out, trainable, -lam, allow_unused=True)) if trainable else iter(())
        return (None, lam, *[next(grads) if p.requires_grad else None for p in params])


# ----------------------------------------------------------------------------- the block

class _QuARBlock(Flow):
    """What the MLP and conv blocks share: parameters, the Lipschitz trick, the power iteration,
    diagonal propagation driver, the two inverses and the conformance hooks (module docstring)."""

    conformance_hooks = frozenset({
        "diag_jacobian", "jacobian", "power_iteration_state", "refresh_norms", "lipschitz_scale",
        "assign_parameters", "fixed_point_inverse", "coordinatewise_inverse", "norm_guarantees",
    })

    def __init__(
        self, groups: int, factors: tuple[int, ...], *, activation: str, sigma: float, norm: str,
        inverse: str | None, pi_rtol: float | None, pi_max_iter: int, krylov_steps: int,
        inverse_rtol: float | None, inverse_max_iter: int, validate_args: bool | None,
        exact_max_dim: int = EXACT_MAX_DIM, recompute: bool = False,
    ):
        super().__init__(validate_args=validate_args)
        if activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0.0 < sigma < 1.0:
            raise ConfigError(f"sigma must lie in (0, 1) for a contractive residual branch, got {sigma!r}")
        if norm not in NORMS:
            raise ConfigError(f"norm must be one of {NORMS}, got {norm!r}")
        if not isinstance(recompute, bool):
            raise ConfigError(f"recompute must be True or False, got {recompute!r}")
        inverse = DEFAULT_INVERSE[norm] if inverse is None else inverse
        if inverse not in INVERSES:
            raise ConfigError(f"inverse must be one of {INVERSES} or None, got {inverse!r}")
        if min(pi_max_iter, krylov_steps, inverse_max_iter) < 1:
            raise ConfigError(f"iteration caps must be ≥ 1, got pi_max_iter={pi_max_iter}, "
                              f"krylov_steps={krylov_steps}, inverse_max_iter={inverse_max_iter}")
        self.groups, self.factors = groups, factors
        self.activation, self.sigma, self.norm, self.inverse_method = activation, float(sigma), norm, inverse
        self.recompute = recompute
        self.pi_rtol, self.pi_max_iter, self.krylov_steps = pi_rtol, pi_max_iter, krylov_steps
        self.exact_max_dim = int(exact_max_dim)
        self.inverse_rtol, self.inverse_max_iter = inverse_rtol, inverse_max_iter
        self._act = make_activation(activation)
        self.rho = nn.Parameter(torch.full((groups,), -3.0))
        self.last_power_iteration: list[PowerIterationReport] = []
        self._fresh: tuple | None = None
        self._loaded_extra: dict[str, Any] | None = None
        self._plain = False  # set by plain_forward(): the forward then skips the log-determinant

    # ------------------------------------------------------------------ layers (subclass hooks)
    @property
    def n_layers(self) -> int:
        return len(self.factors) - 1

    def _add_layer(self, i: int, weight_shape: tuple[int, ...], mask: Tensor, u_shape: tuple[int, ...], v_shape: tuple[int, ...]) -> None:
        self.register_parameter(f"weight_{i}", nn.Parameter(torch.empty(weight_shape)))
        self.register_parameter(f"bias_{i}", nn.Parameter(torch.zeros(weight_shape[0])))
        self.register_buffer(f"u_{i}", self._random_unit(u_shape))
        self.register_buffer(f"v_{i}", self._random_unit(v_shape))
        self.register_buffer(f"_mask_{i}", mask, persistent=False)

    def _random_unit(self, shape: tuple[int, ...]) -> Tensor:
        """A random start of the power iteration: one unit vector, or one per block under option (b)."""
        t = torch.randn(shape)
        flat = t.reshape(-1) if self.norm == "full" else t
        return F.normalize(flat, dim=-1).reshape(shape)

    def weights(self) -> list[Tensor]:
        return [getattr(self, f"weight_{i}") for i in range(self.n_layers)]

    def masked_weights(self) -> list[Tensor]:
        """``M_i ⊙ W_i`` for every layer (differentiable in the weights)."""
        return [w * getattr(self, f"_mask_{i}") for i, w in enumerate(self.weights())]

    def block_diagonal(self, i: int, weight: Tensor) -> Tensor:
        """Layer ``i``'s diagonal blocks (of the centre tap for kernels) as ``(k_i, k_{i−1}, G)``:
        entry ``[o, j, g]`` connects unit ``j`` of group ``g`` to unit ``o`` of group ``g``."""
        if weight.dim() == 4:
            c = weight.shape[-1] // 2
            weight = weight[:, :, c, c]
        g, k_out, k_in = self.groups, self.factors[i + 1], self.factors[i]
        # contiguous: a strided diagonal view would push every pass that reads it off the vector path
        return weight.reshape(k_out, g, k_in, g).diagonal(dim1=1, dim2=3).contiguous()

    def diagonal_blocks(self, i: int, weight: Tensor) -> Tensor:
        """The ``(G, k_i, k_{i−1})`` stack of layer ``i``'s diagonal blocks."""
        return self.block_diagonal(i, weight).permute(2, 0, 1)

    def _propagate(self, i: int, weight: Tensor, delta: Tensor) -> Tensor:
        """``δ ↦ B_i δ`` group by group, for ``δ`` of shape ``(B, k_{i−1}, G, …)``: ``k_{i−1}``
        broadcast multiply-adds."""
        blocks = self.block_diagonal(i, weight)
        blocks = blocks.reshape(blocks.shape + (1,) * (delta.dim() - 3))
        out = delta[:, 0:1] * blocks[:, 0]
        for j in range(1, blocks.shape[1]):
            out.addcmul_(delta[:, j:j + 1], blocks[:, j])
        return out

    def _full_operator(self, i: int, weight: Tensor) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor], int]:
        raise NotImplementedError

    def _network(self, x: Tensor, weights: list[Tensor], with_diagonal: bool) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    # ------------------------------------------------------------------ power iteration
    def _operator(self, i: int, weight: Tensor) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor], int]:
        """``(matvec, rmatvec, event_dims)`` of what layer ``i``'s estimate measures."""
        if self.norm == "full":
            return self._full_operator(i, weight)
        blocks = self.diagonal_blocks(i, weight)
        return (lambda v: torch.einsum("gok,gk->go", blocks, v), lambda u: torch.einsum("gok,go->gk", blocks, u), 1)

    def _versions(self) -> tuple:
        return tuple((w.data_ptr(), w._version) for w in self.weights())

    def _mark_fresh(self) -> None:
        self._fresh = self._versions()

    def is_stale(self) -> bool:
        """Whether a weight changed since the power iteration last ran (or the spec was loaded)."""
        return self._fresh != self._versions()

    def _default_pi_rtol(self) -> float:
        return math.sqrt(torch.finfo(self.rho.dtype).eps)

    @torch.no_grad()
    def refresh_norms(self) -> Tensor:
        """Re-estimate every layer's vectors now (:meth:`_estimate_layer`, module docstring); return the
        estimates ``σ̂_i``."""
        reports = [self._estimate_layer(i, w) for i, w in enumerate(self.masked_weights())]
        self.last_power_iteration = reports
        self._mark_fresh()
        capped = [i for i, r in enumerate(reports) if r.hit_cap]
        if capped:
            warnings.warn(
                f"{self.kind}: the warm power iteration of layers {capped} stopped at its cap of {self.pi_max_iter} "
                f"iterations (last relative change {max(reports[i].last_change for i in capped):.1e}); "
                f"only the random-start probe's guarantee holds", RuntimeWarning, stacklevel=3,
            )
        return self.power_iteration_state()

    def _estimate_layer(self, i: int, weight: Tensor) -> PowerIterationReport:
        """Layer ``i``'s vectors: exact where what it measures has an explicit matrix (stack) with a
        smaller side of at most ``exact_max_dim`` (:meth:`_dense`), else :meth:`_iterative_layer`."""
        u, v = getattr(self, f"u_{i}"), getattr(self, f"v_{i}")
        dense = self._dense(i, weight)
        if dense is None:
            return self._iterative_layer(i, weight)
        pixels = self._pixelwise(weight)
        _, u_new, v_new, report = exact_top_pair(dense)
        if pixels:
            u_new, v_new = (spread_over_pixels(t, tuple(self.event_shape[1:])) for t in (u_new, v_new))
        u.copy_(u_new.reshape(u.shape))
        v.copy_(v_new.reshape(v.shape))
        return report

    def _pixelwise(self, weight: Tensor) -> bool:
        """Whether layer ``weight`` is a 1×1 convolution measured in full: its operator is its
        ``C_out × C_in`` matrix at every pixel, with that matrix's norm."""
        return self.norm == "full" and weight.dim() == 4 and weight.shape[-1] == 1

    def _dense(self, i: int, weight: Tensor) -> Tensor | None:
        """What layer ``i``'s estimate measures as an explicit matrix — the stack of diagonal blocks
        (option (b)), the masked weight, a 1×1 kernel's matrix or the conv operator at the event size
        (option (a)) — or None where its smaller side exceeds ``exact_max_dim``."""
        if self.norm == "diagonal":
            blocks = self.diagonal_blocks(i, weight)
            return blocks if min(blocks.shape[-2:]) <= self.exact_max_dim else None
        if weight.dim() == 2 or self._pixelwise(weight):
            matrix = weight if weight.dim() == 2 else weight[:, :, 0, 0]
            return matrix if min(matrix.shape) <= self.exact_max_dim else None
        return conv_operator_matrix(weight, tuple(self.event_shape[1:]), weight.shape[-1] // 2, self.exact_max_dim)

    def _iterative_layer(self, i: int, weight: Tensor) -> PowerIterationReport:
        """Large layers: the warm run — the power iteration from the stored vectors until σ̂ changes
        by at most ``pi_rtol`` relative (at most ``pi_max_iter`` iterations) — then
        :func:`~.power_iteration.certify_or_probe` with a convolution's
        :func:`~.lipschitz.conv_norm_bound` and a probe of ``krylov_steps`` Lanczos steps at
        :data:`PROBE_FAILURE` (per block under option (b))."""
        rtol = self._default_pi_rtol() if self.pi_rtol is None else self.pi_rtol
        matvec, rmatvec, event_dims = self._operator(i, weight)
        u, v = getattr(self, f"u_{i}"), getattr(self, f"v_{i}")
        _, u_warm, v_warm, warm = power_iteration(matvec, rmatvec, u, v, atol=0.0, rtol=rtol,
                                                  max_iter=self.pi_max_iter, event_dims=event_dims)
        u_new, v_new, report = certify_or_probe(matvec, rmatvec, u_warm, v_warm, warm, bound=self._conv_bound(weight),
                                                steps=self.krylov_steps, failure=PROBE_FAILURE, event_dims=event_dims)
        u.copy_(u_new)
        v.copy_(v_new)
        return report

    def _conv_bound(self, weight: Tensor) -> float:
        """:func:`~.lipschitz.conv_norm_bound` of a masked kernel measured in full, ∞ otherwise."""
        if self.norm != "full" or weight.dim() != 4:
            return math.inf
        return conv_norm_bound(weight, tuple(self.event_shape[1:]), weight.shape[-1] // 2)

    def norm_guarantees(self) -> dict[str, dict[str, object]]:
        """Per layer (``weight_i``): how its current estimate was made and what it guarantees
        (:meth:`~.power_iteration.PowerIterationReport.guarantee`; ``"given"`` for vectors loaded
        from a spec or a checkpoint), and the estimate ``σ̂_i`` itself."""
        estimates = self.power_iteration_state()
        reports = self.last_power_iteration or [GIVEN] * self.n_layers
        return {f"weight_{i}": {**r.guarantee(), "estimate": float(estimates[i])} for i, r in enumerate(reports)}

    def _ensure_fresh(self) -> None:
        if self.is_stale():
            self.refresh_norms()

    def _estimates(self, weights: list[Tensor]) -> list[Tensor]:
        """``σ̂_i = u_iᵀ W_i v_i`` (max over blocks under option (b)), differentiable in the weights."""
        out = []
        for i, w in enumerate(weights):
            u, v = getattr(self, f"u_{i}"), getattr(self, f"v_{i}")
            if self.norm == "diagonal":
                out.append(torch.einsum("go,gok,gk->g", u, self.diagonal_blocks(i, w), v).max())
            else:
                matvec, _, _ = self._full_operator(i, w)
                out.append((u * matvec(v)).sum())
        return out

    def theta(self) -> Tensor:
        """``θ = softplus(ρ) = log(1 + e^ρ) ≥ 0`` per group (Sec. 4.2), without a linear cut-off."""
        return softplus(self.rho)

    def _scale(self, weights: list[Tensor]) -> Tensor:
        """``σ / (θ + Π_i σ̂_i)``, the Lipschitz trick's factor per group (Sec. 4.2)."""
        return self.sigma / (self.theta() + torch.stack(self._estimates(weights)).prod())

    # ------------------------------------------------------------------ the map
    def _prepare(self) -> tuple[list[Tensor], Tensor]:
        """What every evaluation shares: the masked weights and the Lipschitz-trick factor."""
        weights = self.masked_weights()
        return weights, self._scale(weights)

    def _residual(self, x: Tensor, with_diagonal: bool, prepared: tuple[list[Tensor], Tensor] | None = None,
                  ) -> tuple[Tensor, Tensor | None]:
        """``F(x)`` and, with ``with_diagonal``, ``∂F_d/∂x_d`` (both shaped like ``x``); ``prepared`` from
        :meth:`_prepare` saves recomputing the weights in iterative solves."""
        weights, scale = self._prepare() if prepared is None else prepared
        scale = scale.reshape((-1,) + (1,) * (x.dim() - 2))
        out, diag = self._network(x, weights, with_diagonal)
        return scale * out, (None if diag is None else scale * diag)

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        self._ensure_fresh()
        if self.recompute and torch.is_grad_enabled():  # keep x only; backward runs the block again
            out, diag = checkpoint(self._residual, x, not self._plain, use_reentrant=False)
        else:
            out, diag = self._residual(x, not self._plain)
        return x + out, (x.new_zeros(x.shape[0]) if diag is None else batch_sum(torch.log1p(diag)))

    def _inverse(self, z: Tensor, context: Tensor | None) -> Tensor:
        params = list(self.parameters())
        if torch.is_grad_enabled() and (z.requires_grad or any(p.requires_grad for p in params)):
            return _ImplicitInverse.apply(self, z, *params)
        return self._solve_inverse(z)

    def _solve_inverse(self, z: Tensor) -> Tensor:
        """The configured inverse; a fixed point that does not converge hands over to the coordinate-wise
        inverse, which is sure to work (module docstring)."""
        if self.inverse_method == "fixed_point":
            try:
                return self.fixed_point_inverse(z)
            except ConvergenceError:
                pass
        return self.coordinatewise_inverse(z)

    def _adjoint(self, out: Tensor, x: Tensor, diag: Tensor, grad: Tensor) -> Tensor:
        """λ with (I + J_F(x))ᵀλ = ``grad``, ``out = F(x)`` recorded with gradients at the leaf ``x`` and
        ``diag`` its ∂F_d/∂x_d (module docstring: fixed point under option (a), back substitution in
        reverse autoregressive order under (b))."""
        def vjp(t: Tensor) -> Tensor:
            return torch.autograd.grad(out, x, t, retain_graph=True)[0]

        batch, size = grad.shape[0], math.prod(self.event_shape)
        if self.norm == "diagonal":
            lam = torch.zeros_like(grad).reshape(batch, size)
            flat_grad, flat_diag = grad.reshape(batch, size), diag.reshape(batch, size)
            for d in self.autoregressive_order().flip(0).tolist():
                later = vjp(lam.reshape(grad.shape)).reshape(batch, size)[:, d]
                lam[:, d] = (flat_grad[:, d] - later) / (1.0 + flat_diag[:, d])
            return lam.reshape(grad.shape)
        rtol, tiny = self._rtol(None, grad.dtype), torch.finfo(grad.dtype).tiny
        lam, change = grad, float("inf")
        for _ in range(self.inverse_max_iter):
            new = grad - vjp(lam)
            change = float(relative_norm(new - lam, grad, tiny).max())
            lam = new
            if change <= rtol:
                return lam
        raise ConvergenceError("the adjoint fixed point of a QuAR block's inverse did not converge",
                               residual=change, iterations=self.inverse_max_iter, tolerance=rtol)

    # ------------------------------------------------------------------ inverses
    def _rtol(self, rtol: float | None, dtype: torch.dtype) -> float:
        if rtol is not None:
            return float(rtol)
        return self.inverse_rtol if self.inverse_rtol is not None else 32.0 * torch.finfo(dtype).eps

    @torch.no_grad()
    def fixed_point_inverse(self, y: Tensor, rtol: float | None = None, max_iter: int | None = None) -> Tensor:
        """``x ← y − F(x)`` from ``x = y`` until ``‖x + F(x) − y‖ ≤ rtol·max(‖y‖, 1)`` per sample
        (module docstring); :class:`ConvergenceError` at the cap, on non-finite iterates, or when the
        largest residual has not reached a new low for :data:`STALL_ITERATIONS` iterations while staying
        within 10× of it (it hovers at its rounding floor above the tolerance, as with σ near 1 in
        float32; a transient growth under option (b) is not a stall)."""
        rtol, cap = self._rtol(rtol, y.dtype), self.inverse_max_iter if max_iter is None else max_iter
        self._ensure_fresh()
        prepared = self._prepare()
        x = y.clone()
        worst, best, best_at = float("inf"), float("inf"), 0
        for it in range(cap):
            out = self._residual(x, False, prepared)[0]
            relative = relative_norm(x + out - y, y)
            worst = float(relative.max())
            if not math.isfinite(worst):
                raise ConvergenceError("fixed-point inverse of a QuAR block diverged to non-finite values",
                                       residual=worst, iterations=it, tolerance=rtol)
            if worst <= rtol:
                return x
            if worst < best:
                best, best_at = worst, it
            elif it - best_at >= STALL_ITERATIONS and worst <= 10.0 * best:  # hovering, not a transient
                raise ConvergenceError("fixed-point inverse of a QuAR block stalled above its tolerance",
                                       residual=worst, iterations=it, tolerance=rtol)
            x = y - out
        raise ConvergenceError("fixed-point inverse of a QuAR block did not converge",
                               residual=worst, iterations=cap, tolerance=rtol)

    def autoregressive_order(self) -> Tensor:
        """C-order flat indices of one sample listed in the autoregressive order."""
        raise NotImplementedError

    @torch.no_grad()
    def coordinatewise_inverse(self, y: Tensor, rtol: float | None = None) -> Tensor:
        """Solve coordinate by coordinate in the autoregressive order (module docstring).

        Each evaluation of the network gives every coordinate's residual ``r_j`` and slope
        ``1 + ∂F_j/∂x_j ≥ 1 − σ(1 + tol) > 0``. The current coordinate ``d`` (the first whose
        ``|r_d|`` exceeds ``rtol·max(‖y‖, 1)/√D``) takes a Newton step kept inside the bracket that
        the signs of its residuals have established (bisection otherwise); it is accepted at that
        tolerance or when the bracket or the step has shrunk to the rounding of ``x_d``. Coordinates
        after ``d`` take Newton steps from the same evaluation (kept finite and within ``10⁶`` of
        ``max(|y|, 1)``), which only sets their starting points: ``F_d`` does not depend on them.
        """
        rtol = self._rtol(rtol, y.dtype)
        self._ensure_fresh()
        batch, shape = y.shape[0], y.shape[1:]
        size = math.prod(shape)
        order = self.autoregressive_order().to(y.device)
        target = y.reshape(batch, size)[:, order]
        x = target.clone()
        norm = sample_norm(y).clamp(min=1.0, max=torch.finfo(y.dtype).max)  # a norm beyond the range: its largest value
        tol = (norm * rtol / math.sqrt(size))[:, None]
        limit = 1e6 * target.abs().amax(dim=1, keepdim=True).clamp_min(1.0)
        eps = torch.finfo(y.dtype).eps
        position = torch.zeros(batch, dtype=torch.long, device=y.device)
        low = torch.full((batch,), -math.inf, dtype=y.dtype, device=y.device)
        high = torch.full_like(low, math.inf)
        steps = torch.zeros_like(position)
        rows = torch.arange(batch, device=y.device)
        index = torch.arange(size, device=y.device)
        inverse_order = torch.empty_like(order)
        inverse_order[order] = index
        prepared = self._prepare()
        for _ in range(MAX_STEPS_PER_COORDINATE * size):
            current = x[:, inverse_order].reshape(y.shape)
            out, diag = self._residual(current, True, prepared)
            residual = x + out.reshape(batch, size)[:, order] - target
            slope = 1.0 + diag.reshape(batch, size)[:, order]
            pending = (residual.abs() > tol) & (index[None, :] >= position[:, None])
            new_position = torch.where(pending.any(dim=1), pending.to(torch.int8).argmax(dim=1), size)
            moved = new_position != position
            low, high = torch.where(moved, -math.inf, low), torch.where(moved, math.inf, high)
            steps = torch.where(moved, 0, steps)
            position = new_position
            active = position < size
            if not bool(active.any()):
                return x[:, inverse_order].reshape(y.shape)
            d = position.clamp(max=size - 1)
            t, r, s = x[rows, d], residual[rows, d], slope[rows, d]
            high = torch.where(active & (r > 0), torch.minimum(high, t), high)
            low = torch.where(active & (r < 0), torch.maximum(low, t), low)
            newton = t - r / s
            inside = (newton > low) & (newton < high) & (s > 0)
            bracketed = torch.isfinite(low) & torch.isfinite(high)
            step = torch.where(inside, newton, torch.where(bracketed, 0.5 * (low + high), t - r))
            stalled = (bracketed & ((high - low) <= 4 * eps * torch.maximum(low.abs(), high.abs()))) | (
                (step - t).abs() <= 2 * eps * t.abs())
            if bool((steps > MAX_STEPS_PER_COORDINATE).any()):
                worst = float(relative_norm(residual, y).max())
                raise ConvergenceError(
                    f"coordinate-wise inverse of a QuAR block did not converge at coordinate {int(d.max())}",
                    residual=worst, iterations=int(steps.max()), tolerance=rtol)
            ahead = index[None, :] > position[:, None]
            guess = x - residual / slope
            keep = ahead & torch.isfinite(guess) & ((guess - target).abs() <= limit) & (slope > 0)
            x = torch.where(keep, guess, x)
            x[rows, d] = torch.where(active & ~stalled, step, t)
            position = torch.where(active & stalled, position + 1, position)
            low = torch.where(stalled, -math.inf, low)
            high = torch.where(stalled, math.inf, high)
            steps = torch.where(stalled, 0, steps + 1)
        raise ConvergenceError("coordinate-wise inverse of a QuAR block ran out of evaluations",
                               residual=float("inf"), iterations=MAX_STEPS_PER_COORDINATE * size, tolerance=rtol)

    # ------------------------------------------------------------------ spec exchange
    def load_spec_params(self, spec: FlowSpec) -> None:
        """Load the spec's arrays; its power-iteration vectors are taken as the current state."""
        super().load_spec_params(spec)
        self.last_power_iteration = [GIVEN] * self.n_layers
        self._mark_fresh()

    # ------------------------------------------------------------------ checkpoints
    def get_extra_state(self) -> dict[str, Any]:
        """Saved with the ``state_dict``: whether the stored vectors are the estimates of the stored
        weights, and those estimates' reports, so that loading the checkpoint reproduces the same
        σ̂_i exactly instead of re-estimating (module docstring)."""
        return {"norms_current": not self.is_stale(), "reports": [r.to_list() for r in self.last_power_iteration]}

    def set_extra_state(self, state: Any) -> None:
        self._loaded_extra = state if isinstance(state, dict) else None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        """After loading, the stored vectors are trusted only if the checkpoint says they were current
        for its weights and it holds every weight and vector; otherwise the next use re-estimates."""
        self._loaded_extra = None
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        names = [f"{prefix}{k}_{i}" for i in range(self.n_layers) for k in ("weight", "u", "v")]
        extra = self._loaded_extra
        if extra and extra.get("norms_current") and all(n in state_dict for n in names):
            self.last_power_iteration = [PowerIterationReport.from_list(r) for r in extra["reports"]]
            self._mark_fresh()
        elif any(n in state_dict for n in names):
            self._fresh = None

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        stale = self.is_stale()
        out = super()._apply(fn, recurse)
        if not stale:
            self._mark_fresh()
        return out

    # ------------------------------------------------------------------ hooks
    def diag_jacobian(self, x: Tensor) -> Tensor:
        """``∂F_d/∂x_d`` by diagonal propagation, shaped like ``x`` (the residual branch's diagonal)."""
        self._ensure_fresh()
        with torch.no_grad():
            return self._residual(x, True)[1]

    def jacobian(self, x: Tensor) -> Tensor:
        """This implementation's own autograd Jacobian ``∂z/∂x`` per sample, ``(B, D, D)`` over C-order
        flat indices (for the exact-zero check of the entries above the diagonal)."""
        self._ensure_fresh()
        size = math.prod(self.event_shape)
        rows = []
        for sample in x:
            def one(flat: Tensor) -> Tensor:
                point = flat.reshape((1,) + tuple(self.event_shape))
                return (point + self._residual(point, False)[0]).reshape(size)
            rows.append(torch.autograd.functional.jacobian(one, sample.reshape(size).detach()))
        return torch.stack(rows)

    def power_iteration_state(self) -> Tensor:
        """The estimates ``σ̂_i`` the forward uses now, one per layer."""
        with torch.no_grad():
            return torch.stack(self._estimates(self.masked_weights()))

    def lipschitz_scale(self) -> Tensor:
        """The Lipschitz trick's factor ``σ/(θ + Π σ̂_i)`` per group, as the forward uses it."""
        with torch.no_grad():
            return self._scale(self.masked_weights())

    def assign_parameters(self, **values: Tensor) -> None:
        """Overwrite trainable parameters in place, as an optimizer step does (the power-iteration
        vectors stay warm; the next evaluation refreshes them)."""
        params = dict(self.named_parameters())
        unknown = sorted(set(values) - set(params))
        if unknown:
            raise ConfigError(f"{self.kind} has no parameters {unknown}; it has {sorted(params)}")
        with torch.no_grad():
            for name, value in values.items():
                params[name].copy_(torch.as_tensor(value, dtype=params[name].dtype))

    def config(self) -> dict[str, Any]:
        return {
            "hidden_factors": list(self.factors[1:-1]), "activation": self.activation, "sigma": self.sigma,
            "norm": self.norm, "inverse": self.inverse_method,
        }


@register("quar_mlp")
class QuARMLP(_QuARBlock):
    """QuAR block on vectors ``(D,)``: masked MLP ``D → k_1·D → … → D`` (module docstring)."""

    def __init__(
        self, dim: int, hidden_factors: Sequence[int], activation: str = "elu", sigma: float = 0.97,
        norm: str = "full", inverse: str | None = None, *, pi_rtol: float | None = None, pi_max_iter: int = 1000,
        krylov_steps: int = KRYLOV_STEPS, inverse_rtol: float | None = None, inverse_max_iter: int = 2000,
        validate_args: bool | None = None, recompute: bool = False,
    ):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ConfigError(f"dim must be a positive int, got {dim!r}")
        factors = (1,) + _check_int_list("hidden_factors", hidden_factors) + (1,)
        super().__init__(
            dim, factors, activation=activation, sigma=sigma, norm=norm, inverse=inverse, pi_rtol=pi_rtol,
            pi_max_iter=pi_max_iter, krylov_steps=krylov_steps, inverse_rtol=inverse_rtol,
            inverse_max_iter=inverse_max_iter, validate_args=validate_args, recompute=recompute,
        )
        for i in range(self.n_layers):
            n_out, n_in = factors[i + 1] * dim, factors[i] * dim
            full = self.norm == "full"
            self._add_layer(i, (n_out, n_in), group_mask(dim, factors[i + 1], factors[i]),
                            (n_out,) if full else (dim, factors[i + 1]), (n_in,) if full else (dim, factors[i]))
            mask = getattr(self, f"_mask_{i}")
            bound = 1.0 / math.sqrt(n_in)
            with torch.no_grad():
                getattr(self, f"weight_{i}").uniform_(-bound, bound).mul_(mask)
        self.refresh_norms()

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self.groups,)

    def config(self) -> dict[str, Any]:
        return {"dim": self.groups, **super().config()}

    def autoregressive_order(self) -> Tensor:
        return torch.arange(self.groups)

    def _full_operator(self, i, weight):
        return (lambda v: weight @ v, lambda u: weight.T @ u, 1)

    def _network(self, x: Tensor, weights: list[Tensor], with_diagonal: bool) -> tuple[Tensor, Tensor | None]:
        """Masked MLP and, with ``with_diagonal``, ``∂N_d/∂x_d`` by diagonal propagation (Sec. 4.1):
        ``δ`` has the layout ``(B, k_i, D)`` of the hidden units; the first layer's blocks enter the
        fused ``φ′`` product as a broadcast view."""
        batch, last = x.shape[0], self.n_layers - 1
        h, delta = x, None
        for i, w in enumerate(weights):
            a = _MaskedLinear.apply(h, w, getattr(self, f"weight_{i}"), getattr(self, f"_mask_{i}"), getattr(self, f"bias_{i}"))
            if with_diagonal:
                delta = (self.block_diagonal(i, w)[:, 0].expand(batch, -1, -1) if delta is None
                         else self._propagate(i, w, delta))
            if i == last:
                return a, (None if delta is None else delta.reshape(x.shape))
            h = self._act(a)
            if with_diagonal:
                grouped = (batch, self.factors[i + 1], self.groups)
                delta = _times_derivative(self._act, delta, a.view(grouped), h.view(grouped))
        raise AssertionError("the last layer returns")


@register("quar_conv")
class QuARConv(_QuARBlock):
    """QuAR block on images ``(C, H, W)``: ``act → conv → … → conv`` with PixelCNN masks over raster
    order and channel groups (module docstring; App. A, C)."""

    def __init__(
        self, shape: Sequence[int], hidden_factors: Sequence[int], kernels: Sequence[int] = CONV_KERNELS,
        activation: str = "elu", sigma: float = 0.97, norm: str = "full", inverse: str | None = None, *,
        pi_rtol: float | None = None, pi_max_iter: int = 1000, krylov_steps: int = KRYLOV_STEPS,
        inverse_rtol: float | None = None,
        inverse_max_iter: int = 2000, validate_args: bool | None = None, recompute: bool = False,
    ):
        shape = _check_int_list("shape", shape)
        if len(shape) != 3:
            raise ConfigError(f"shape must be [C, H, W] of positive ints, got {shape!r}")
        kernels = _check_int_list("kernels", kernels)
        if any(k % 2 == 0 for k in kernels):
            raise ConfigError(f"kernels must be odd sizes (centred taps), got {kernels!r}")
        factors = (1,) + _check_int_list("hidden_factors", hidden_factors) + (1,)
        if len(factors) != len(kernels) + 1:
            raise ConfigError(f"hidden_factors needs {len(kernels) - 1} entries for kernels {kernels}, got {hidden_factors!r}")
        super().__init__(
            shape[0], factors, activation=activation, sigma=sigma, norm=norm, inverse=inverse, pi_rtol=pi_rtol,
            pi_max_iter=pi_max_iter, krylov_steps=krylov_steps, inverse_rtol=inverse_rtol,
            inverse_max_iter=inverse_max_iter, validate_args=validate_args, recompute=recompute,
        )
        self._shape, self.kernels = shape, kernels
        c, height, width = shape
        for i, size in enumerate(kernels):
            n_out, n_in = factors[i + 1] * c, factors[i] * c
            full = self.norm == "full"
            self._add_layer(i, (n_out, n_in, size, size), kernel_mask(c, factors[i + 1], factors[i], size),
                            (n_out, height, width) if full else (c, factors[i + 1]),
                            (n_in, height, width) if full else (c, factors[i]))
            mask = getattr(self, f"_mask_{i}")
            bound = 1.0 / math.sqrt(float(mask.sum(dim=(1, 2, 3)).clamp_min(1).mean()))
            with torch.no_grad():
                getattr(self, f"weight_{i}").uniform_(-bound, bound).mul_(mask)
        self.refresh_norms()

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self._shape

    def config(self) -> dict[str, Any]:
        return {"shape": list(self._shape), "kernels": list(self.kernels), **super().config()}

    def autoregressive_order(self) -> Tensor:
        c, h, w = self._shape
        return torch.arange(c * h * w).reshape(c, h, w).permute(1, 2, 0).reshape(-1)

    def _full_operator(self, i, weight):
        p = weight.shape[-1] // 2
        return (lambda v: F.conv2d(v[None], weight, padding=p)[0],
                lambda u: F.conv_transpose2d(u[None], weight, padding=p)[0], 3)

    def _network(self, x: Tensor, weights: list[Tensor], with_diagonal: bool) -> tuple[Tensor, Tensor | None]:
        """Masked conv net and, with ``with_diagonal``, ``∂N_d/∂x_d`` by diagonal propagation through
        the centre taps' group-diagonal blocks: ``δ`` has the layout ``(B, k_i, C, H, W)`` of the
        hidden channels; ``δ_0 = φ′(x)`` enters the first block product as one fused pass."""
        batch, c, height, width = x.shape
        h, delta = x, None
        for i, w in enumerate(weights):
            g = self._act(h)
            if with_diagonal:
                grouped = (batch, self.factors[i], c, height, width)
                if delta is None:
                    first = self.block_diagonal(i, w)[:, 0, :, None, None].expand(batch, -1, -1, height, width)
                    delta = _times_derivative(self._act, first, h.view(grouped).expand_as(first),
                                              g.view(grouped).expand_as(first))
                else:
                    delta = self._propagate(i, w, _times_derivative(self._act, delta, h.view(grouped), g.view(grouped)))
            h = F.conv2d(g, w, getattr(self, f"bias_{i}"), padding=w.shape[-1] // 2)
        return h, (None if delta is None else delta.reshape(x.shape))


# ----------------------------------------------------------------------------- models

_MODEL_KEYS = {"n_scales", "logit", "alpha", "actnorm", "n_hidden", "kernels"}
_BLOCK_KEYS = {"activation", "inverse", "pi_rtol", "pi_max_iter", "krylov_steps", "inverse_rtol", "inverse_max_iter",
               "recompute"}


def make_model(
    arch: str, event_shape: tuple[int, ...], *, n_blocks: int = 4, hidden_factor: int = 4, sigma: float = 0.97,
    norm: str = "full", **kw: Any,
) -> Flow:
    """A QuAR flow with the architecture of the residual-flows model
    (:func:`flowspec.accelerated.residual.make_model`; QuAR App. A), as a ``sequential`` flow.

    ``arch="conv"`` (event ``(C, H, W)``): LogitTransform(α) → n_blocks × QuARConv →
    [Squeeze → n_blocks × QuARConv] × (n_scales − 1), ActNorm before and after every block; each
    block is ``ELU → 3×3 → ELU → 1×1 → ELU → 3×3`` masked convolutions (``kernels``) with
    ``hidden_factor·C`` hidden channels.
    ``arch="mlp"`` (event ``(D,)``): n_blocks QuARMLP blocks (``n_hidden`` hidden layers of
    ``hidden_factor·D`` units) between ActNorms, no logit by default.
    ``norm``: ``"full"`` = option (a), ``"diagonal"`` = option (b) (the module docstring says what each
    guarantees). Model options: ``n_scales`` (conv, default 2), ``logit`` (default: conv only),
    ``alpha`` (0.05), ``actnorm`` (True), ``n_hidden`` (2), ``kernels`` (conv, (3, 1, 3)); any other
    keyword is a block setting (``activation``, ``inverse``, ``pi_rtol``, ``pi_max_iter``,
    ``krylov_steps``, ``inverse_rtol``, ``inverse_max_iter``, ``recompute``). ActNorm initialises from the first
    batch in training mode.
    """
    unknown = sorted(set(kw) - _MODEL_KEYS - _BLOCK_KEYS)
    if unknown:
        raise ConfigError(f"make_model got unknown options {unknown}; it takes {sorted(_MODEL_KEYS | _BLOCK_KEYS)}")
    model_kw = {k: kw.pop(k) for k in list(kw) if k in _MODEL_KEYS}
    kernels = model_kw.pop("kernels", CONV_KERNELS)
    mlp_hidden = model_kw.pop("n_hidden", 2)  # the conv block's depth comes from its kernels
    n_hidden = len(kernels) - 1 if arch == "conv" else mlp_hidden
    block_kw = {"sigma": sigma, "norm": norm, **kw}

    def block(shape: tuple[int, ...], factor: int) -> Flow:
        factors = [factor] * n_hidden
        if arch == "conv":
            return QuARConv(shape, factors, kernels, **block_kw)
        return QuARMLP(shape[0], factors, **block_kw)

    return residual_stack(arch, event_shape, block, n_blocks=n_blocks, hidden_factor=hidden_factor, **model_kw)


@contextlib.contextmanager
def _without_logdet(model: nn.Module) -> Iterator[None]:
    blocks = [m for m in model.modules() if isinstance(m, _QuARBlock)]
    for b in blocks:
        b._plain = True
    try:
        yield
    finally:
        for b in blocks:
            b._plain = False


def plain_forward(model: Flow, x: Tensor) -> Tensor:
    """``z`` of ``model`` with every QuAR block running the same masked network without diagonal
    propagation (its log-det reported as 0 inside this call); other flows run as usual."""
    with _without_logdet(model):
        return model(x)[0]
