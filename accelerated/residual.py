"""Residual blocks f(x) = x + g(x) (i-ResNet; Residual Flows) and the model of App. E.

The kinds ``residual_mlp`` and ``residual_conv`` are defined in :mod:`flowspec.reference.residual`
(architecture, canonical params, estimators and their conventions). g's weights are normalised by
:class:`~.lipschitz.LipschitzNormalizer` (see :mod:`.lipschitz` for when the power iteration runs);
the FlowSpec carries the *effective* weights (:meth:`ResidualBlock.to_spec`), and loading a spec
whose weights lie outside the constraint raises :class:`ConfigError`.

Log-determinant (``logdet``, or :func:`configure_logdet`)
---------------------------------------------------------
* ``"exact"``: slogdet of the full Jacobian (D backward passes per batch: small events only). This
  is also the exact mode of ``log_prob``.
* ``"series"``: the i-ResNet truncated power series (eq. 3) with ``n_exact_terms`` terms and a
  Hutchinson probe: biased.
* ``"roulette"``: the unbiased Russian-roulette estimator (Theorem 1, eq. 6): ``n_exact_terms`` terms
  always, then N ~ p(N) more, term k weighted by 1/P(N ≥ k − n_exact_terms). ``draw="sample"``
  draws N per sample (and per probe), so a sample's estimate does not depend on its batch; a batch
  then costs the largest N among its samples (E[max N] ≈ 7.3 for 64 samples at q = 0.5).
  ``draw="batch"`` draws one N per probe index for the whole batch (the official code's choice): a
  batch costs that N (E[N] = 2), each sample's estimate keeps its law (unbiased, the same variance),
  but the batch mean keeps the variance over N (see :mod:`flowspec.reference.residual`). The
  default is ``"batch"``: by ``flowspec bench residual``'s variance of the batch mean × time, it is
  clearly better on the App. E conv blocks and within two standard errors on the MLP. In
  evaluation mode ``max(n_exact_terms, eval_exact_terms)`` (20, as in the paper's evaluation) terms
  are exact. Without a gradient the series stops once the weighted terms left are certainly below
  half an ulp of every running sum (:meth:`ResidualBlock._series_value`): the same result, fewer
  terms. Because the result is still random, ``log_prob`` offers an averaged mode (``n_samples``
  probes and draws, averaged) and the exact mode above.

  p(N): ``"geometric"`` with success probability q, N ≥ 1 (numpy's convention, not torch's, which
  counts from 0), or ``"poisson"`` with mean λ, N ≥ 0. The estimator's variance is finite for the
  geometric p(N) only when ρ(J_g)² < 1 − q (Lip(g) ≤ 0.71 for q = 0.5; pick q ≤ 1 − coeff^(2L) for a
  guarantee from the constraint) and infinite for the Poisson p(N) whenever ρ(J_g) > 0; see
  :func:`flowspec.reference.residual.roulette_variance`.

Gradients
---------
The forward returns the estimator's *value* with the gradient of ``neumann_grad``'s choice attached:
the Neumann series (Theorem 2, eq. 8) ``G = ∂/∂θ [wᵀ J_g v]`` with
``w = Σ_{j=0}^{m+N} (−1)^j c_j (J_gᵀ)^j v`` computed without a graph (the surrogate is not a log-det
estimate; only its gradient is used), or the derivative of the power series itself (eq. 7, memory
growing with the number of terms). Gradients reach the parameters and the block's input.

Backward-in-forward (eq. 9, ``grad_in_forward``): the log-det's gradients are computed during the
forward and the double-backward graph is released at once. Per-sample: ∂est_i/∂x_i is kept per
sample (the size of x), so any upstream gradient u_i is applied exactly to the input gradient; the
parameter gradient is kept as the batch sum Σ_i ∂est_i/∂θ, which is exact when every u_i is the same
(a mean or sum of log-densities). When the u_i differ (per-sample weighted losses), the backward
recomputes the block's series from the probes and draws and weights it by u: one more series
evaluation (its VJPs and one double backward) for that block, one block at a time. The equality test
on u costs one device synchronisation per block.

Memory: with ``neumann_grad`` and ``grad_in_forward`` a training step keeps g's graph (as any layer
does) and the gradients, none of which grows with the number of terms. The probes and draws of N
that the forward draws are not kept, only what draws them again (a seed on the CPU, the generator's
state on CUDA): the per-sample-weighted backward above draws them again, bit-identical
(:class:`Noise`); noise given by the caller (the conformance hooks) is kept. The series' term
weights are tables per distinct drawn N (one column under ``draw="batch"``), not per row.

Inverse (Algorithm 1 of the QuAR paper; Behrmann et al. 2019)
--------------------------------------------------------------
Fixed-point iteration x ← y − g(x) from x = y. The residual ‖f(x_k) − y‖ = ‖x_{k+1} − x_k‖
understates the error ‖x_k − x*‖ by up to 1/(1 − Lip(g)), so the stop is
``‖x_{k+1} − x_k‖ ≤ (1 − L)·rtol·max(‖y‖, 1)`` per sample with L = coeff^(layers) the constraint's
bound; the returned x_{k+1} is then within L·rtol·max(‖y‖, 1) of x* — when the iteration converged,
and in the 2-norm only where L bounds Lip(g) in the 2-norm (convolutions, and MLPs with p_0 = 2; for
p_0 ∈ {1, ∞} the constraint bounds Lip(g) in the p_0 norm only). ``inverse_rtol`` defaults to
32·ε(dtype)/(1 − L), just above what rounding lets the residual reach. After ``inverse_max_iter``
iterations a :class:`ConvergenceError` carries the relative residual. ``rsample`` is differentiable
through this inverse by implicit differentiation: the adjoint λ = (I + J_g)⁻ᵀ x̄ is solved by the
same fixed-point iteration (a Neumann series), then ȳ = λ and θ̄ = −(∂g/∂θ)ᵀλ.

Randomness: probes and draws come from ``block.generator`` (a ``torch.Generator``, or None for the
global generator; on the CPU the probes from a generator seeded by one draw from it), drawn first
thing in the forward, independently for every sample and probe; the
hook ``logdet_noise`` draws what the next forward will. The other conformance hooks take the probe
and the draw explicitly.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from flowspec.errors import ConfigError, ConvergenceError, NumericalError

from .base import Flow, int_list, register, relative_norm, sample_norm
from .lipschitz import LipSwish, LipschitzConv2d, LipschitzLinear, OrderChain, make_activation

ESTIMATORS = ("exact", "series", "roulette")
DISTRIBUTIONS = ("geometric", "poisson")
PROBES = ("gaussian", "rademacher")
DRAWS = ("sample", "batch")


# ----------------------------------------------------------------------------- p(N)

def _poisson_tail(j: int, lam: float) -> float:
    """P(N ≥ j) for N ~ Poisson(λ), summed upwards from j (no cancellation in the far tail)."""
    if j <= 0:
        return 1.0
    total, i = 0.0, j
    while True:
        term = math.exp(-lam + i * math.log(lam) - math.lgamma(i + 1))
        total += term
        if i > lam and term <= 1e-17 * total:
            return total
        i += 1


class RouletteDistribution:
    """p(N) of the roulette estimator: geometric (N ≥ 1) or Poisson (N ≥ 0)."""

    def __init__(self, dist: str, param: float):
        if dist not in DISTRIBUTIONS:
            raise ConfigError(f"dist must be one of {', '.join(DISTRIBUTIONS)}, got {dist!r}")
        if dist == "geometric" and not 0.0 < param < 1.0:
            raise ConfigError(f"the geometric p(N) needs a success probability in (0, 1), got {param!r}")
        if dist == "poisson" and not param > 0.0:
            raise ConfigError(f"the Poisson p(N) needs a mean > 0, got {param!r}")
        self.dist, self.param = dist, float(param)

    def tail(self, j: int) -> float:
        """P(N ≥ j)."""
        if self.dist == "geometric":
            return 1.0 if j <= 1 else (1.0 - self.param) ** (j - 1)
        return _poisson_tail(j, self.param)

    def coefficient(self, k: int, n_exact_terms: int) -> float:
        """c_k = 1 for k ≤ n_exact_terms, else 1 / P(N ≥ k − n_exact_terms) (eq. 6)."""
        return 1.0 if k <= n_exact_terms else 1.0 / self.tail(k - n_exact_terms)

    def sample(self, count: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        """``count`` independent draws of N (int64)."""
        if self.dist == "geometric":
            u = torch.rand(count, generator=generator, dtype=torch.float64, device=device)
            return 1 + torch.floor(torch.log1p(-u) / math.log1p(-self.param)).long()
        rate = torch.full((count,), self.param, dtype=torch.float64, device=device)
        return torch.poisson(rate, generator=generator).long()


# ----------------------------------------------------------------------------- backward-in-forward

@dataclass
class Noise:
    """The probes ``v`` and draws ``n`` of one forward, and how to draw them again: ``replay`` (None for
    noise given by the caller) redraws both, bit-identical, so that backward-in-forward need not keep
    them (:class:`_LogDetInForward`)."""

    v: Tensor
    n: Tensor
    replay: Callable[[], tuple[Tensor, Tensor]] | None = None

    def tensors(self) -> tuple[Tensor, Tensor]:
        """(v, n): the kept ones, else drawn again."""
        return (self.v, self.n) if self.replay is None else self.replay()


class _LogDetInForward(torch.autograd.Function):
    """Outputs (g(x), log-det estimate); the log-det's gradients are computed in the forward (eq. 9).

    See the module docstring for the per-sample treatment of the upstream gradient and its cost.
    Memory: the probes are kept for backward only when they cannot be drawn again (given by the
    caller); the backward needs them only for a non-uniform upstream gradient of the log-det.
    """

    @staticmethod
    def forward(ctx, block: "ResidualBlock", noise: Noise, x: Tensor, *params: Tensor):
        batch, v, n = x.shape[0], noise.v, noise.n
        with torch.enable_grad():
            x_leaf = x.detach().requires_grad_(True)
            leaves = [p.detach().requires_grad_(p.requires_grad) for p in params]
            x_rep, gx = block._tiled_g(x_leaf, leaves, v.shape[0] // batch)
            value, surrogate = block._series(gx, x_rep, v, n, create_graph=not block.neumann_grad)
            trainable = [p for p in leaves if p.requires_grad]
            grads = _grad_or_none(block._per_sample(surrogate, batch).sum(), [x_leaf] + trainable, retain_graph=True)
        save_in_forward(ctx, block, noise, (gx, x_rep, x_leaf), leaves, grads)
        return gx[:batch].detach(), block._per_sample(value, batch).detach()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_g: Tensor, grad_logdet: Tensor):
        grad_x, *grad_params = ctx.saved_tensors
        batch = grad_logdet.shape[0]
        trainable = [p for p in ctx.leaves if p.requires_grad]
        with torch.enable_grad():
            path = torch.autograd.grad(ctx.gx[:batch], [ctx.x_leaf] + trainable, grad_g,
                                       retain_graph=True, allow_unused=True)
            if bool((grad_logdet == grad_logdet[0]).all()):
                weighted = [grad_logdet[0] * g for g in grad_params]
            else:
                v, n = ctx.noise.tensors()
                _, surrogate = ctx.block._series(ctx.gx, ctx.x_rep, v, n, create_graph=not ctx.block.neumann_grad)
                loss = (ctx.block._per_sample(surrogate, batch) * grad_logdet).sum()
                weighted = _grad_or_none(loss, trainable)
        scale = grad_logdet.reshape(batch, *([1] * (grad_x.dim() - 1)))
        total_x = scale * grad_x + (0.0 if path[0] is None else path[0])
        totals = iter([_add(a, b) for a, b in zip(path[1:], weighted)])
        param_grads = [next(totals) if p.requires_grad else None for p in ctx.leaves]
        return (None, None, total_x, *param_grads)


def save_in_forward(ctx: Any, block: "ResidualBlock", noise: Noise, graph: tuple[Tensor, Tensor, Tensor],
                    leaves: Sequence[Tensor], grads: Sequence[Tensor | None]) -> None:
    """What :meth:`_LogDetInForward.backward` reads: the block, g's graph ``(gx, x_rep, x_leaf)`` and
    its parameter ``leaves``, the log-det's gradients w.r.t. x and the trainable leaves (zeros where
    unused), and the noise — only its replay where it has one."""
    ctx.block, ctx.leaves = block, leaves
    ctx.gx, ctx.x_rep, ctx.x_leaf = graph
    ctx.noise = noise if noise.replay is None else Noise(None, None, noise.replay)  # type: ignore[arg-type]
    wrt = [ctx.x_leaf] + [p for p in leaves if p.requires_grad]
    ctx.save_for_backward(*[torch.zeros_like(t) if g is None else g for g, t in zip(grads, wrt)])


def _default_generator(device: torch.device) -> torch.Generator:
    """The generator that ``torch.randn(..., generator=None)`` draws from on ``device``."""
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    return torch.default_generator


def _grad_or_none(output: Tensor, inputs: Sequence[Tensor], **kwargs: Any) -> list[Tensor | None]:
    """``torch.autograd.grad(output, inputs)`` with None for inputs it does not reach, also when the
    output has no graph at all (an estimate of zero terms: m = 0 and every draw N = 0 under a Poisson
    p(N), whose surrogate is a constant)."""
    if not output.requires_grad:
        return [None] * len(inputs)
    return list(torch.autograd.grad(output, inputs, allow_unused=True, **kwargs))


def _add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b


def tail_factors(value_coef: Tensor, lipschitz: float, length: int) -> Tensor | None:
    """``S[k, r] = (1 + (D + 2)ε)·Σ_{j>k} |c_j[r]|·L^{j−k}`` (float64) for the per-term, per-row weights
    ``c`` of the series (roulette weights and each row's drawn N included; D = ``length``, ε the
    weights' epsilon) and L ≥ ‖J_g‖₂: with u_k = (J_gᵀ)^k v, every later term c_j·u_jᵀv has
    |c_j·u_jᵀv| ≤ |c_j|·L^{j−k}·‖u_k‖·‖v‖, so the terms after k sum to at most S[k]·‖u_k‖·‖v‖ (the
    factor in front covers the rounding of the dot products). None where L is not finite."""
    if not math.isfinite(lipschitz):
        return None
    coef = value_coef.abs().double()
    tails = torch.zeros_like(coef)
    for k in range(coef.shape[0] - 2, -1, -1):
        tails[k] = lipschitz * (coef[k + 1] + tails[k + 1])
    return tails * (1.0 + (length + 2) * torch.finfo(value_coef.dtype).eps)


def _norm64(t: Tensor) -> Tensor:
    """Each row's 2-norm, accumulated in float64 (float32 squares of denormal entries would vanish)."""
    return torch.linalg.vector_norm(t.flatten(1), dim=1, dtype=torch.float64)


def below_half_ulp(total: Tensor, remaining: Tensor) -> bool:
    """Whether every row's bound ``remaining`` on what is left to add is zero or below half the gap
    from ``|total|`` down to the next number of its dtype: then each addition (each no larger than
    the bound) rounds back to ``total`` under round-to-nearest, so the sum would not change."""
    magnitude = total.abs()
    gap = (magnitude - torch.nextafter(magnitude, torch.zeros_like(magnitude))).double()
    return bool(((remaining < gap / 2) | (remaining == 0)).all())


class _ImplicitInverse(torch.autograd.Function):
    """x* = f⁻¹(y) by the fixed point; gradients by implicit differentiation (module docstring)."""

    @staticmethod
    def forward(ctx, block: "ResidualBlock", y: Tensor, *params: Tensor):
        x = block._fixed_point(y, [p.detach() for p in params])
        ctx.block = block
        ctx.save_for_backward(x, *params)
        return x

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_x: Tensor):
        x, *params = ctx.saved_tensors
        block = ctx.block
        with torch.enable_grad():
            x_leaf = x.detach().requires_grad_(True)
            leaves = [p.detach().requires_grad_(p.requires_grad) for p in params]
            gx = block._g(x_leaf, leaves)
            lam = block._solve(lambda t: grad_x - torch.autograd.grad(gx, x_leaf, t, retain_graph=True)[0],
                               grad_x, grad_x, floor=0.0, what="adjoint of the inverse")
            trainable = [p for p in leaves if p.requires_grad]
            grads = iter(torch.autograd.grad(gx, trainable, -lam, allow_unused=True)) if trainable else iter(())
        return (None, lam, *[next(grads) if p.requires_grad else None for p in leaves])


# ----------------------------------------------------------------------------- the block

class ResidualBlock(Flow):
    """f(x) = x + g(x) with g Lipschitz-constrained (the kinds ``residual_mlp`` and ``residual_conv``).

    Constructor arguments are the kind's config keys (see :mod:`flowspec.reference.residual`).
    """

    conformance_hooks = frozenset({
        "logdet_estimate", "logdet_estimate_vjp", "logdet_noise", "roulette_draws", "normalized_weights",
        "perturb_weights", "norm_hit_cap", "norm_guarantees", "activation_derivatives", "fixed_point_errors",
    })
    conv: bool = False
    in_forward_function = _LogDetInForward  # the autograd Function of backward-in-forward

    def __init__(self, shape: Sequence[int], hidden: Sequence[int] = (), *, activation: str = "lipswish",
                 coeff: float = 0.97, logdet: str = "roulette", n_exact_terms: int = 2, eval_exact_terms: int = 20,
                 n_samples: int = 1, draw: str = "batch", dist: str = "geometric", dist_param: float = 0.5,
                 probe: str = "gaussian",
                 neumann_grad: bool = True, grad_in_forward: bool = True, atol: float = 0.0, rtol: float = 1e-4,
                 max_iter: int = 200, inverse_rtol: float | None = None, inverse_max_iter: int = 1000,
                 validate_args: bool | None = None, **layout: Any):
        super().__init__(validate_args=validate_args)
        self._shape = tuple(int_list(shape, "shape"))
        if not self._shape or min(self._shape) <= 0:
            raise ConfigError(f"shape must be a non-empty list of positive ints, got {tuple(shape)!r}")
        if not isinstance(coeff, (int, float)) or isinstance(coeff, bool) or not 0.0 < coeff < 1.0:
            raise ConfigError(
                f"coeff must lie in (0, 1) so that g is contractive and f = x + g(x) invertible, got {coeff!r}")
        self.hidden = tuple(int_list(hidden, "hidden"))
        if any(h <= 0 for h in self.hidden):
            raise ConfigError(f"hidden widths must be positive, got {self.hidden!r}")
        self.activation, self.coeff = activation, float(coeff)
        self.power = {"atol": float(atol), "rtol": float(rtol), "max_iter": int(max_iter)}
        unknown = sorted(set(layout) - block_options(type(self)))
        if unknown:
            raise ConfigError(f"{self.kind} got unknown options {unknown}; it takes {sorted(block_options(type(self)))}")
        self.layers = self._build_layers(**layout)
        self.activations = nn.ModuleList(make_activation(activation) for _ in self.layers)
        self.eval_exact_terms = _count("eval_exact_terms", eval_exact_terms, 0)
        self.set_logdet(estimator=logdet, n_exact_terms=n_exact_terms, n_samples=n_samples, draw=draw, dist=dist,
                        dist_param=dist_param, probe=probe, neumann_grad=neumann_grad,
                        grad_in_forward=grad_in_forward)
        if inverse_rtol is not None and not 0.0 < inverse_rtol < 1.0:
            raise ConfigError(f"inverse_rtol must be None or lie in (0, 1), got {inverse_rtol!r}")
        self.inverse_rtol, self.inverse_max_iter = inverse_rtol, _count("inverse_max_iter", inverse_max_iter, 1)
        self.generator: torch.Generator | None = None

    def _build_layers(self, **layout: Any) -> nn.ModuleList:
        raise NotImplementedError

    def _widths(self) -> list[int]:
        outer = self._shape[0] if self.conv else math.prod(self._shape)
        return [outer, *self.hidden, outer]

    # ------------------------------------------------------------------ configuration
    def set_logdet(self, *, estimator: str, n_exact_terms: int, n_samples: int = 1, draw: str = "batch",
                   dist: str = "geometric", dist_param: float = 0.5, probe: str | None = None,
                   neumann_grad: bool = True, grad_in_forward: bool = True) -> None:
        """Choose the log-det estimator (module docstring); validates every setting."""
        if estimator not in ESTIMATORS:
            raise ConfigError(f"the log-det estimator (config 'logdet') must be one of {', '.join(ESTIMATORS)}, "
                              f"got {estimator!r}")
        probe = getattr(self, "probe", "gaussian") if probe is None else probe
        if probe not in PROBES:
            raise ConfigError(f"probe must be one of {', '.join(PROBES)}, got {probe!r}")
        if draw not in DRAWS:
            raise ConfigError(f"draw (how the roulette draws N) must be one of {', '.join(DRAWS)}, got {draw!r}")
        for name, flag in (("neumann_grad", neumann_grad), ("grad_in_forward", grad_in_forward)):
            if not isinstance(flag, bool):
                raise ConfigError(f"{name} must be a bool, got {flag!r}")
        self.roulette = RouletteDistribution(dist, dist_param)
        self.estimator, self.probe = estimator, probe
        self.n_exact_terms = _count("n_exact_terms", n_exact_terms, 1 if estimator == "series" else 0)
        self.n_samples = _count("n_samples", n_samples, 1)
        self.draw = draw
        self.neumann_grad, self.grad_in_forward = neumann_grad, grad_in_forward

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self._shape

    def config(self) -> dict[str, Any]:
        return {
            "shape": list(self._shape), "hidden": list(self.hidden), **self._layout_config(),
            "activation": self.activation, "coeff": self.coeff, "logdet": self.estimator,
            "n_exact_terms": self.n_exact_terms, "eval_exact_terms": self.eval_exact_terms,
            "n_samples": self.n_samples, "draw": self.draw, "dist": self.roulette.dist, "dist_param": self.roulette.param,
            "probe": self.probe, "neumann_grad": self.neumann_grad, "grad_in_forward": self.grad_in_forward,
            **self.power, "inverse_rtol": self.inverse_rtol, "inverse_max_iter": self.inverse_max_iter,
        }

    def _layout_config(self) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def lipschitz_bound(self) -> float:
        """coeff^L: the bound on Lip(g) that the constraint gives (eq. 16–17)."""
        return self.coeff ** len(self.layers)

    # ------------------------------------------------------------------ parameters and the spec
    @property
    def _spatial(self) -> tuple[int, int] | None:
        return self._shape[1:] if self.conv else None

    def _params(self, spatial: tuple[int, int] | None = None) -> list[Tensor]:
        """[W_0, b_0, (β_0), W_1, …]: effective weights (normalised now) and the other parameters."""
        spatial = spatial or self._spatial
        out: list[Tensor] = []
        for layer, act in zip(self.layers, self.activations):
            out += [layer.effective_weight(spatial), layer.bias, *act.tensors()]
        return out

    def _named(self) -> list[tuple[str, Any, Any]]:
        """(canonical name, owning module, attribute) for every canonical tensor: learned norm orders
        first (the weights' constraint depends on them), then layer by layer as in :meth:`_params`."""
        chain = getattr(self, "chain", None)  # the MLP's norm orders; convolutions have none
        entries = [("order_logits", chain, "logits")] if chain is not None and chain.learned else []
        for l, (layer, act) in enumerate(zip(self.layers, self.activations)):
            entries += [(f"weight{l}", layer, "raw_weight"), (f"bias{l}", layer, "bias")]
            if isinstance(act, LipSwish):
                entries.append((f"beta{l}", act, "beta"))
        return entries

    def spec_tensors(self) -> dict[str, Tensor]:
        """The canonical tensors, with the **effective** weights (what the block applies)."""
        with torch.no_grad():
            effective = {f"weight{l}": layer.spec_weight(self._spatial) for l, layer in enumerate(self.layers)}
        return {name: effective.get(name, getattr(module, attr)) for name, module, attr in self._named()}

    def spec_parameters(self, prefix: str = "") -> dict[str, Tensor]:
        """Trainable tensors by canonical name: the raw weights stand for the effective ones (equal
        gradients while the constraint is inactive, as for any weight loaded from a spec)."""
        return {prefix + name: getattr(module, attr) for name, module, attr in self._named()}

    def load_spec_params(self, spec) -> None:
        entries = self._named()
        arrays = dict(spec.params)
        if set(arrays) != {name for name, _, _ in entries}:
            raise ConfigError(f"params of kind {self.kind!r} must be {sorted(n for n, _, _ in entries)}, got {sorted(arrays)}")
        for name, module, attr in entries:
            target = getattr(module, attr)
            value = torch.as_tensor(np.array(arrays[name]), dtype=target.dtype, device=target.device)
            if tuple(value.shape) != tuple(target.shape):
                raise ConfigError(f"param {name!r} of kind {self.kind!r} must have shape {tuple(target.shape)}, got {tuple(value.shape)}")
            if attr == "raw_weight":
                try:
                    module.load_weight(value, self._spatial)
                except ConfigError as exc:
                    raise ConfigError(f"param {name!r}: {exc}") from None
            else:
                with torch.no_grad():
                    target.copy_(value)

    # ------------------------------------------------------------------ g
    def _g(self, x: Tensor, params: Sequence[Tensor]) -> Tensor:
        """g(x) with the given [W, b, (β)] list (functional, so that g can be re-run on copies)."""
        h = x if self.conv else x.reshape(x.shape[0], -1)
        it = iter(params)
        for layer, act in zip(self.layers, self.activations):
            weight, bias = next(it), next(it)
            h = act.functional(h, *(next(it) for _ in act.tensors()))
            h = self._linear_map(layer, h, weight, bias)
        return h.reshape(x.shape)

    def _linear_map(self, layer: nn.Module, h: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        raise NotImplementedError

    def _tiled_g(self, x: Tensor, params: Sequence[Tensor], copies: int) -> tuple[Tensor, Tensor]:
        x_rep = x.repeat(copies, *([1] * (x.dim() - 1))) if copies > 1 else x
        return x_rep, self._g(x_rep, params)

    @staticmethod
    def _per_sample(values: Tensor, batch: int) -> Tensor:
        """Average over the probes of each sample (rows are probe-major: row s·batch + i)."""
        return values.reshape(-1, batch).mean(0)

    # ------------------------------------------------------------------ estimators
    def _exact_terms(self) -> int:
        return self.n_exact_terms if self.training else max(self.n_exact_terms, self.eval_exact_terms)

    def _coefficients(self, n: Tensor, like: Tensor) -> tuple[Tensor, Tensor, Tensor | slice]:
        """Per-term weights for each distinct T among the rows: value terms k = 0…K (row 0 unused)
        s_k·c_k·[k ≤ T] and gradient terms j = 0…K (−1)^j c_j·[j ≤ T] (roulette) or [j < T] (series),
        with T = m + N or m; returned as ``(value, grad, columns)``, ``value[k, columns]`` being the
        rows' weights of term k (a table per distinct T, not per row: per-batch draws share one)."""
        m = self._exact_terms()
        roulette = self.estimator == "roulette"
        counts = m + n if roulette else torch.full_like(n, m)
        distinct, inverse = torch.unique(counts, return_inverse=True)
        columns = inverse if distinct.numel() > 1 else slice(None)  # one column broadcasts over the rows
        K = int(distinct.max()) if distinct.numel() else 0
        c = [self.roulette.coefficient(k, m) if roulette else 1.0 for k in range(K + 1)]
        ks = torch.arange(K + 1, device=n.device)
        signs = torch.tensor([0.0] + [(-1.0) ** (k + 1) / k for k in range(1, K + 1)], dtype=torch.float64, device=n.device)
        c_t = torch.tensor(c, dtype=torch.float64, device=n.device)
        present = ks[:, None] <= distinct[None, :]
        grad_present = present if roulette else ks[:, None] < distinct[None, :]
        value = (signs * c_t)[:, None] * present
        grad = ((-1.0) ** ks.double() * c_t)[:, None] * grad_present
        return value.to(like.dtype), grad.to(like.dtype), columns

    def _series(self, gx: Tensor, x_rep: Tensor, v: Tensor, n: Tensor, *, create_graph: bool) -> tuple[Tensor, Tensor]:
        """(value, surrogate) per row: the estimate and the per-row quantity whose gradient is the
        estimator's gradient (wᵀJ_g v with w fixed for the Neumann series; the estimate itself otherwise)."""
        value_coef, grad_coef, columns = self._coefficients(n, gx)
        expand = (-1,) + (1,) * (v.dim() - 1)
        u, value, w = v, gx.new_zeros(v.shape[0]), grad_coef[0][columns].reshape(expand) * v
        for k in range(1, value_coef.shape[0]):
            u = torch.autograd.grad(gx, x_rep, u, retain_graph=True, create_graph=create_graph)[0]
            value = value + value_coef[k][columns] * (u * v).flatten(1).sum(1)
            if not create_graph:
                w = w + grad_coef[k][columns].reshape(expand) * u
        if create_graph:
            return value, value
        jt_w = torch.autograd.grad(gx, x_rep, w.detach(), retain_graph=True, create_graph=True)[0]
        return value.detach(), (jt_w * v).flatten(1).sum(1)

    def _series_value(self, gx: Tensor, x_rep: Tensor, v: Tensor, n: Tensor) -> Tensor:
        """The estimate per row, no gradient wanted: no surrogate, and the last VJP releases the graph.
        The series stops early once the terms left (up to each row's drawn N, with their roulette
        weights) are certainly below half an ulp of every row's running sum (:func:`tail_factors`,
        :func:`below_half_ulp`, with :meth:`jacobian_bound`): adding them would not change the sum
        (in exact arithmetic from the last computed term; where no deterministic bound on ‖J_g‖₂
        exists, every term runs). ``last_series_terms`` records how many ran."""
        value_coef, _, columns = self._coefficients(n, gx)
        total = value_coef.shape[0] - 1
        tails = tail_factors(value_coef, self.jacobian_bound(), v[0].numel()) if total > 1 else None
        v_norm = _norm64(v)
        value, u, k = gx.new_zeros(v.shape[0]), v, 0
        for k in range(1, total + 1):
            last = k == total
            u = torch.autograd.grad(gx, x_rep, u, retain_graph=not last)[0]
            value = value + value_coef[k][columns] * (u * v).flatten(1).sum(1)
            if not last and tails is not None and below_half_ulp(value, _norm64(u) * v_norm * tails[k][columns]):
                break
        self.last_series_terms = k
        return value

    def jacobian_bound(self) -> float:
        """A deterministic bound on ‖J_g(x)‖₂ at every x: the product of the layers'
        :meth:`~.lipschitz.LipschitzNormalizer.operator_bound` (every activation has |φ′| ≤ 1);
        ∞ where a layer's estimate guarantees nothing deterministically."""
        bound = 1.0
        for layer in self.layers:
            bound *= layer.normalizer.operator_bound(layer.unnormalized_weight())
        return bound

    def _exact(self, x: Tensor, params: Sequence[Tensor], need_grad: bool) -> tuple[Tensor, Tensor]:
        """(g(x), log|det(I + J_g)|) by slogdet of the full Jacobian (D backward passes)."""
        with torch.enable_grad():
            x_in = x if x.requires_grad else x.detach().requires_grad_(True)
            gx = self._g(x_in, params)
            batch, dim = x.shape[0], math.prod(self._shape)
            rows = []
            for i in range(dim):
                e = torch.zeros(batch, dim, dtype=x.dtype, device=x.device)
                e[:, i] = 1.0
                rows.append(torch.autograd.grad(gx, x_in, e.reshape(gx.shape), retain_graph=True,
                                                create_graph=need_grad)[0].reshape(batch, dim))
            jac = torch.stack(rows, 1) + torch.eye(dim, dtype=x.dtype, device=x.device)
            sign, logdet = torch.linalg.slogdet(jac)
        if bool((sign <= 0).any()):
            raise NumericalError(f"det(I + J_g) ≤ 0 in a {self.kind!r} block: g is not contractive")
        return (gx, logdet) if need_grad else (gx.detach(), logdet.detach())

    def _estimate(self, x: Tensor, params: Sequence[Tensor], noise: Noise | None) -> tuple[Tensor, Tensor]:
        """(z, log-det estimate) for given probes v (rows probe-major) and draws n (a :class:`Noise`);
        the exact estimator (the log-det of the autograd Jacobian) reads neither."""
        batch = x.shape[0]
        v, n = (None, None) if noise is None else (noise.v, noise.n)
        need_grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params))
        if self.estimator == "exact":
            gx, logdet = self._exact(x, params, need_grad)
            return x + gx, logdet
        if not need_grad:
            with torch.enable_grad():
                x_rep, gx = self._tiled_g(x.detach().requires_grad_(True), [p.detach() for p in params], v.shape[0] // batch)
                value = self._series_value(gx, x_rep, v, n)
            return x + gx[:batch].detach(), self._per_sample(value, batch)
        if self.grad_in_forward:
            gx, logdet = self.in_forward_function.apply(self, noise, x, *params)
            return x + gx, logdet
        x_in = x if x.requires_grad else x.detach().requires_grad_(True)
        x_rep, gx = self._tiled_g(x_in, params, v.shape[0] // batch)
        value, surrogate = self._series(gx, x_rep, v, n, create_graph=not self.neumann_grad)
        value, surrogate = self._per_sample(value, batch), self._per_sample(surrogate, batch)
        logdet = value if not self.neumann_grad else value + (surrogate - surrogate.detach())
        return x + gx[:batch], logdet

    def _draw(self, batch: int, like: Tensor) -> Noise:
        """Probes (n_samples·batch rows) and per-row draws of N (per ``draw``), in that order, with
        their replay (:meth:`_noise_source`)."""
        rows, dtype, device = self.n_samples * batch, like.dtype, like.device
        first, again = self._noise_source(device)

        def draw(generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
            v = self._probes(rows, dtype, device, generator)
            if self.estimator != "roulette":
                return v, torch.zeros(rows, dtype=torch.long, device=device)
            return v, self._draw_n(batch, generator)

        return Noise(*draw(first), replay=lambda: draw(again()))

    def _noise_source(self, device: torch.device) -> tuple[torch.Generator | None, Callable[[], torch.Generator]]:
        """The generator a forward's noise is drawn from, and how to make one that draws it again. On
        the CPU a seed drawn from ``self.generator`` seeds a generator of the forward's own (8 bytes to
        keep, not the 5 KB state of the CPU generator); on CUDA ``self.generator`` (or the device's
        default) draws it, and a copy of its state (16 bytes) draws it again."""
        if device.type == "cpu":
            seed = int(torch.randint(0, 2**62, (), generator=self.generator))
            own = lambda: torch.Generator().manual_seed(seed)  # noqa: E731
            return own(), own
        source = self.generator if self.generator is not None else _default_generator(device)
        state = source.get_state()

        def again() -> torch.Generator:
            generator = torch.Generator(device=device)
            generator.set_state(state)
            return generator

        return source, again

    def _probes(self, rows: int, dtype: torch.dtype, device: torch.device, generator: torch.Generator | None) -> Tensor:
        shape = (rows, *self._shape)
        if self.probe == "gaussian":
            return torch.randn(shape, generator=generator, dtype=dtype, device=device)
        return torch.randint(0, 2, shape, generator=generator, device=device).to(dtype) * 2.0 - 1.0

    def _draw_n(self, batch: int, generator: torch.Generator | None) -> Tensor:
        """The draws of N of one forward of ``batch`` samples (n_samples·batch rows, probe-major):
        independent per row (``draw="sample"``) or one per probe index repeated over the batch."""
        if self.draw == "batch":  # a view, not a copy, for one probe per sample
            return self.sample_n(self.n_samples, generator)[:, None].expand(-1, batch).flatten()
        return self.sample_n(self.n_samples * batch, generator)

    def sample_n(self, count: int, generator: torch.Generator | None = None) -> Tensor:
        """``count`` independent draws of N from the configured p(N) (int64, on the block's device)."""
        return self.roulette.sample(count, generator, self._anchor.device)

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.estimator == "exact":  # no noise to draw
            return self._estimate(x, self._params(), None)
        return self._estimate(x, self._params(), self._draw(x.shape[0], x))  # first: :meth:`logdet_noise` replays it

    # ------------------------------------------------------------------ inverse
    def _inverse_tolerance(self, dtype: torch.dtype) -> float:
        if self.inverse_rtol is not None:
            return self.inverse_rtol
        return 32.0 * torch.finfo(dtype).eps / (1.0 - self.lipschitz_bound)

    def _solve(self, step, start: Tensor, target: Tensor, *, floor: float, what: str) -> Tensor:
        """Fixed point t = step(t) from ``start``; stop when ‖t_{k+1} − t_k‖ ≤ (1 − L)·rtol·max(‖target‖, floor)
        per sample (the step's change understates the error by up to 1/(1 − L)); else ConvergenceError."""
        rtol = self._inverse_tolerance(target.dtype)
        threshold = (1.0 - self.lipschitz_bound) * rtol
        t, change = start, None
        for it in range(self.inverse_max_iter):
            new = step(t)
            change = relative_norm(new - t, target, floor)  # ‖t_{k+1} − t_k‖ / max(‖target‖, floor)
            if not bool(torch.isfinite(change).all()):
                raise ConvergenceError(f"fixed-point {what} of the {self.kind!r} block overflowed to non-finite values "
                                       f"(inputs too large for {target.dtype})", residual=math.inf, iterations=it + 1,
                                       tolerance=rtol)
            t = new
            if bool((change <= threshold).all()):
                return t
        worst = float(change.max())
        raise ConvergenceError(f"fixed-point {what} of the {self.kind!r} block did not converge",
                               residual=worst, iterations=self.inverse_max_iter, tolerance=rtol)

    def _fixed_point(self, y: Tensor, params: Sequence[Tensor]) -> Tensor:
        """x with x + g(x) = y (Algorithm 1, with the stop of the module docstring)."""
        with torch.no_grad():
            return self._solve(lambda x: y - self._g(x, params), y, y, floor=1.0, what="inverse")

    def _inverse(self, z: Tensor, context: Tensor | None) -> Tensor:
        params = self._params()
        if torch.is_grad_enabled() and (z.requires_grad or any(p.requires_grad for p in params)):
            return _ImplicitInverse.apply(self, z, *params)
        return self._fixed_point(z, [p.detach() for p in params])

    # ------------------------------------------------------------------ conformance hooks
    def logdet_estimate(self, x: Tensor, v: Tensor, n: Tensor) -> Tensor:
        """The per-sample estimate for the given probes v and draws n: one row per probe, s·batch + i
        for the s-th probe of sample i (the forward's layout), the estimate being the mean over a
        sample's probes."""
        with torch.no_grad():
            return self._estimate(x, self._params(), Noise(v, _as_draws(n)))[1]

    def logdet_estimate_vjp(self, x: Tensor, v: Tensor, n: Tensor, z_weight: Tensor,
                            logdet_weight: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """Gradients of Σ z_weight·z + Σ logdet_weight·estimate (given v, n, rows as in
        :meth:`logdet_estimate`) w.r.t. the canonical params and x, through the block's own path
        (backward-in-forward if configured)."""
        x = x.detach().requires_grad_(True)
        z, logdet = self._estimate(x, self._params(), Noise(v, _as_draws(n)))
        loss = (z * z_weight).sum() + (logdet * logdet_weight).sum()
        params = self.spec_parameters()
        grads = torch.autograd.grad(loss, list(params.values()) + [x], allow_unused=True)
        out = {name: torch.zeros_like(p) if g is None else g for (name, p), g in zip(params.items(), grads)}
        return out, grads[-1]

    def logdet_noise(self, batch: int) -> tuple[Tensor, Tensor]:
        """The probes (rows as in :meth:`logdet_estimate`: n_samples·batch of them) and the draws of N
        (zeros for the series, which has none) that the next forward of ``batch`` samples will use:
        the forward draws them first, from ``self.generator``, so after the same seeding it draws
        exactly these."""
        noise = self._draw(int(batch), self._anchor)
        return noise.v, noise.n

    def roulette_draws(self, count: int, seed: int) -> Tensor:
        """``count`` draws of N as forwards make them, from a generator seeded with ``seed``: per sample,
        the first ``count`` rows of one forward of ``count`` samples; per batch, the shared draw of each
        probe of successive forwards of two samples (one row of each pair)."""
        generator = torch.Generator(device=self._anchor.device).manual_seed(int(seed))
        count = int(count)
        if self.draw == "sample":
            return self._draw_n(count, generator)[:count]
        forwards = -(-count // self.n_samples)
        return torch.cat([self._draw_n(2, generator)[::2] for _ in range(forwards)])[:count]

    def normalized_weights(self, spatial: Sequence[int] | None = None) -> dict[str, Tensor]:
        """The effective weights the block applies at ``spatial`` (H, W) (convolutions; default the
        event's), estimated as a forward in the current mode would."""
        spatial = tuple(int(s) for s in spatial) if spatial is not None else None
        with torch.no_grad():
            return {f"weight{l}": layer.effective_weight(spatial or self._spatial) for l, layer in enumerate(self.layers)}

    def perturb_weights(self, deltas: Mapping[str, Any]) -> None:
        """Add ``deltas`` (canonical weight names) to the raw weights in place, as an optimizer step does."""
        with torch.no_grad():
            for name, delta in deltas.items():
                layer = self.layers[int(name.removeprefix("weight"))]
                layer.raw_weight.add_(torch.as_tensor(np.asarray(delta), dtype=layer.raw_weight.dtype,
                                                      device=layer.raw_weight.device))

    def norm_hit_cap(self) -> dict[str, bool]:
        """Per canonical weight name: whether its last norm estimate stopped at the iteration cap
        (its bound is then not claimed)."""
        return {f"weight{l}": layer.normalizer.hit_cap for l, layer in enumerate(self.layers)}

    def norm_guarantees(self) -> dict[str, dict[str, object]]:
        """Per canonical weight name: how its last norm estimate was made and what it guarantees
        (:meth:`~flowspec.accelerated.lipschitz.LipschitzNormalizer.guarantee`)."""
        return {f"weight{l}": layer.normalizer.guarantee() for l, layer in enumerate(self.layers)}

    def activation_derivatives(self, z: Tensor, betas: Tensor) -> dict[str, Tensor]:
        """φ(z), φ′(z) by autograd through the activation's forward, and its ``derivative(z)``, for
        each pre-softplus β in ``betas`` (LipSwish; other activations ignore β): shape ``(len(betas), *z)``."""
        act = self.activations[0]
        rows: dict[str, list[Tensor]] = {"value": [], "autograd": [], "derivative": []}
        saved = act.beta.detach().clone() if isinstance(act, LipSwish) else None
        try:
            for beta in betas:
                if saved is not None:
                    with torch.no_grad():
                        act.beta.fill_(float(beta))
                with torch.enable_grad():
                    zz = z.detach().requires_grad_(True)
                    value = act(zz)
                    rows["autograd"].append(torch.autograd.grad(value.sum(), zz)[0].detach())
                rows["value"].append(value.detach())
                rows["derivative"].append(act.derivative(z).detach())
        finally:
            if saved is not None:
                with torch.no_grad():
                    act.beta.copy_(saved)
        return {key: torch.stack(values) for key, values in rows.items()}

    def fixed_point_errors(self, y: Tensor, x_star: Tensor, iterations: int) -> Tensor:
        """‖x_k − x*‖ (per sample) for the iterates x_0 = y, x_{k+1} = y − g(x_k), k = 0…iterations."""
        params = [p.detach() for p in self._params()]
        errors, x = [], y
        with torch.no_grad():
            for _ in range(int(iterations) + 1):
                errors.append(sample_norm(x - x_star))
                x = y - self._g(x, params)
        return torch.stack(errors)


def _as_draws(n: Tensor) -> Tensor:
    return torch.as_tensor(n).round().long()


def _count(name: str, value: Any, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{name} must be an int ≥ {low}, got {value!r}")
    return value


def _orders(orders: Sequence[float] | None, n_layers: int) -> list[float]:
    if orders is not None and not isinstance(orders, (list, tuple)):
        raise ConfigError(f"orders must be a list of {n_layers} norm orders in [1, ∞], got {orders!r}")
    orders = [2.0] * n_layers if orders is None else [float(p) for p in orders]
    if len(orders) != n_layers or not all(p >= 1.0 for p in orders):
        raise ConfigError(f"orders must list {n_layers} norm orders in [1, ∞], got {orders!r}")
    return orders


@register("residual_mlp")
class ResidualMLP(ResidualBlock):
    """``residual_mlp``: g an MLP with pre-activation; layer l constrained in ‖·‖_{p_l→p_{l+1}}.

    With ``learn_orders`` the hidden orders p_1, … are learned (App. D: 2 + tanh(s)/2, the FlowSpec
    param ``order_logits``); p_0 stays fixed. Norms in learned orders are estimates only.
    """

    def _build_layers(self, orders: Sequence[float] | None = None, learn_orders: bool = False) -> nn.ModuleList:
        widths = self._widths()
        self.orders = _orders(orders, len(widths) - 1)
        n = len(self.orders)
        if not isinstance(learn_orders, bool) or (learn_orders and n < 2):
            raise ConfigError(f"learn_orders must be a bool and needs a hidden layer, got {learn_orders!r} with {n} layer(s)")
        self.chain = OrderChain(self.orders, [False] + [learn_orders] * (n - 1))
        return nn.ModuleList(
            LipschitzLinear(widths[l], widths[l + 1], self.coeff, chain=self.chain, link=l, **self.power)
            for l in range(n)
        )

    def _layout_config(self) -> dict[str, Any]:
        return {"orders": list(self.orders), "learn_orders": self.chain.learned}

    def _linear_map(self, layer: nn.Module, h: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        return F.linear(h, weight, bias)


@register("residual_conv")
class ResidualConv(ResidualBlock):
    """``residual_conv``: g a CNN (default LipSwish → 3×3 → LipSwish → 1×1 → LipSwish → 3×3, App. E)."""

    conv = True

    def _build_layers(self, kernels: Sequence[int] | None = None) -> nn.ModuleList:
        if len(self._shape) != 3:
            raise ConfigError(f"residual_conv needs an image shape (C, H, W), got {self._shape!r}")
        widths = self._widths()
        n = len(widths) - 1
        self.kernels = [3] if n == 1 else [3] + [1] * (n - 2) + [3]
        if kernels is not None:
            self.kernels = int_list(kernels, "kernels")
        if len(self.kernels) != n or any(k <= 0 or k % 2 == 0 for k in self.kernels):
            raise ConfigError(f"kernels must list {n} odd positive sizes, got {self.kernels!r}")
        return nn.ModuleList(
            LipschitzConv2d(widths[l], widths[l + 1], self.kernels[l], self.coeff, **self.power) for l in range(n)
        )

    def _layout_config(self) -> dict[str, Any]:
        return {"kernels": list(self.kernels)}

    def _linear_map(self, layer: nn.Module, h: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        return F.conv2d(h, weight, bias, padding=layer.normalizer.padding)


# ----------------------------------------------------------------------------- model (App. E)

def residual_blocks(model: nn.Module) -> list[ResidualBlock]:
    return [m for m in model.modules() if isinstance(m, ResidualBlock)]


def configure_logdet(model: nn.Module, *, estimator: str, n_exact_terms: int, n_samples: int = 1,
                     draw: str = "batch", dist: str = "geometric", dist_param: float = 0.5,
                     neumann_grad: bool = True, grad_in_forward: bool = True) -> int:
    """Set the log-det estimator of every residual block in ``model``; returns how many were set.

    ``estimator``: "exact", "series" or "roulette" (module docstring). For the paper's evaluation
    keep "roulette" and call ``model.eval()`` (20 exact terms); for a lower-variance evaluation raise
    ``n_samples``; for the exact log-density of small inputs use "exact". ``draw``: N per sample or
    per batch (module docstring).
    """
    blocks = residual_blocks(model)
    for block in blocks:
        block.set_logdet(estimator=estimator, n_exact_terms=n_exact_terms, n_samples=n_samples, draw=draw, dist=dist,
                         dist_param=dist_param, neumann_grad=neumann_grad, grad_in_forward=grad_in_forward)
    return len(blocks)


_MODEL_KEYS = {"n_scales", "logit", "alpha", "actnorm", "n_hidden"}


def block_options(block_cls: type) -> set[str]:
    """The keyword options of a residual block class: its constructor's and its layout's."""
    names = set(inspect.signature(block_cls.__init__).parameters) | set(inspect.signature(block_cls._build_layers).parameters)
    return names - {"self", "shape", "hidden", "layout"}


def make_model(arch: str, event_shape: tuple[int, ...], *, n_blocks: int = 4, hidden_factor: int = 4,
               coeff: float = 0.97, **kw: Any) -> Flow:
    """The Residual Flow of App. E at a small, configurable size, as a ``sequential`` flow.

    ``arch="conv"`` (event (C, H, W)): LogitTransform(α) → n_blocks × ResBlock → [Squeeze →
    n_blocks × ResBlock] × (n_scales − 1), ActNorm before and after every block; each ResBlock is
    LipSwish → 3×3 conv → LipSwish → 1×1 conv → LipSwish → 3×3 conv with hidden_factor·C channels.
    ``arch="mlp"`` (event (D,)): n_blocks MLP blocks (``n_hidden`` hidden layers of hidden_factor·D)
    between ActNorms, no logit by default. Keyword options: ``n_scales`` (conv, default 2),
    ``logit`` (default: conv only), ``alpha`` (0.05), ``actnorm`` (True), ``n_hidden`` (2); any other
    keyword is a residual block setting (``activation``, ``logdet``, ``n_exact_terms``, ``rtol``, …).
    """
    from .sequential import residual_stack

    block_cls = ResidualConv if arch == "conv" else ResidualMLP
    unknown = sorted(set(kw) - _MODEL_KEYS - block_options(block_cls))
    if unknown:
        raise ConfigError(f"make_model got unknown options {unknown}; it takes "
                          f"{sorted(_MODEL_KEYS | block_options(block_cls) | {'n_blocks', 'hidden_factor'})}")
    model_kw = {k: kw.pop(k) for k in list(kw) if k in _MODEL_KEYS}
    n_hidden = int(model_kw.pop("n_hidden", 2))

    def block(shape: tuple[int, ...], factor: int) -> Flow:
        return block_cls(list(shape), [factor * shape[0]] * n_hidden, coeff=coeff, **kw)

    return residual_stack(arch, event_shape, block, n_blocks=n_blocks, hidden_factor=hidden_factor, **model_kw)
