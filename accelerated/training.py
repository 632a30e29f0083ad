"""Training pieces: dequantised data, bits per dimension, Adam, Polyak averaging, a step and an evaluation.

Data and likelihood. Discrete data ``k ∈ {0, …, n_bins − 1}^d`` are dequantised uniformly,
``x = (k + u) / n_bins`` with ``u ~ U(0, 1)^d``, so ``x`` has the density ``q(x | k) = n_bins^d`` on
its cell. The model is a flow whose first transform is the logit with α (Residual Flows, App. E),
so ``log p(x)`` includes the logit's log-determinant. Bits per dimension are

    bpd = −(log p(x) − log q(x)) / (d · log 2),

the negative of the expression printed in the QuAR paper (App. A.2), which drops the minus sign:
without it, a better model would have a *lower* log-likelihood and a negative bpd.

Optimisation. Adam (QuAR paper, App. A.1) and Polyak averaging with decay 0.999 for evaluation.
Averaging the raw weights of a spectrally normalised layer leaves its stored σ̂ (power-iteration
estimate) describing some other matrix, so :class:`Polyak` reruns the power iteration on the
averaged weights (to tolerance) before it hands out the averaged model: evaluation never uses a
stale σ̂.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import get_ema_multi_avg_fn

from flowspec.errors import ConfigError, FlowInputError

from .base import Flow
from .distribution import FlowDistribution
from .elementwise import Logit
from .sequential import Sequential

Refresh = Callable[[nn.Module], Any]


# ----------------------------------------------------------------------------- data and bpd

def dequantize(k: Tensor, n_bins: int = 256, *, dtype: torch.dtype = torch.float32,
               generator: torch.Generator | None = None) -> Tensor:
    """``x = (k + u) / n_bins`` with ``u ~ U(0, 1)`` per entry, for integer data ``k`` in ``[0, n_bins)``.

    Rounding can put ``x`` on the boundary of (0, 1) (``u = 0`` at ``k = 0``; ``k + u`` rounding up
    to ``n_bins``); such entries are moved to the nearest representable point inside, a set of
    probability of order ``2^-24`` in float32, moved by one unit in the last place.
    """
    if k.is_floating_point() and not bool((k == torch.round(k)).all()):
        raise FlowInputError("dequantize expects integer-valued data k")
    if int(n_bins) < 2:
        raise ConfigError(f"n_bins must be at least 2, got {n_bins!r}")
    if bool((k < 0).any()) or bool((k >= n_bins).any()):
        raise FlowInputError(f"data k must lie in [0, {n_bins}), got values in [{k.min().item()}, {k.max().item()}]")
    u = torch.rand(k.shape, dtype=dtype, device=k.device, generator=generator)
    return dequantize_with(k, u, n_bins)


def dequantize_with(k: Tensor, u: Tensor, n_bins: int) -> Tensor:
    """``x = (k + u) / n_bins`` for given uniform noise ``u`` (in ``u``'s dtype), moved inside (0, 1)
    as :func:`dequantize` does; the trainer draws ``u`` keyed by the global sample index."""
    x = (k.to(u.dtype) + u) / n_bins
    return x.clamp(min=torch.finfo(u.dtype).tiny, max=1.0 - torch.finfo(u.dtype).eps / 2)


def uniform_log_q(d: int, n_bins: int = 256) -> float:
    """``log q(x | k) = d · log n_bins``: the log-density of uniform dequantisation on the cell."""
    return d * math.log(n_bins)


def bits_per_dim(log_p: Tensor, log_q: Tensor | float, d: int) -> Tensor:
    """``bpd = −(log p(x) − log q(x)) / (d · log 2)`` (module docstring; QuAR App. A.2 with its sign fixed)."""
    return -(log_p - log_q) / (d * math.log(2.0))


def with_logit(flow: Flow, alpha: float = 0.05) -> Sequential:
    """``flow`` preceded by the logit transform with ``alpha``: a model of data in (0, 1)."""
    anchor = flow._anchor
    return Sequential([Logit(flow.event_shape, alpha), flow]).to(dtype=anchor.dtype, device=anchor.device)


def log_likelihood(model: Flow, x: Tensor) -> Tensor:
    """``log p(x)`` per sample under a standard normal base (change of variables)."""
    return FlowDistribution(model).log_prob(x)


def bpd_of(model: Flow, x: Tensor, n_bins: int = 256) -> Tensor:
    """Bits per dimension of uniformly dequantised ``x`` (per sample)."""
    d = math.prod(x.shape[1:])
    return bits_per_dim(log_likelihood(model, x), uniform_log_q(d, n_bins), d)


# ----------------------------------------------------------------------------- optimisation

def adam(model: nn.Module, lr: float = 1e-3, **kwargs: Any) -> torch.optim.Adam:
    """Adam over the model's trainable parameters (QuAR App. A.1 trains both model types with it)."""
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr, **kwargs)


def default_refresh(module: nn.Module) -> None:
    """Rerun the power iteration of every norm-constrained layer of ``module`` to its tolerance.

    Covers the residual blocks' normalised layers (:func:`flowspec.accelerated.lipschitz.refresh_norms`)
    and the QuAR blocks' Lipschitz-trick estimates (:meth:`QuARMLP.refresh_norms`).
    """
    from .lipschitz import refresh_norms
    from .quar import QuARConv, QuARMLP

    refresh_norms(module)
    for block in module.modules():
        if isinstance(block, (QuARMLP, QuARConv)):
            block.refresh_norms()


class Polyak:
    """An exponential moving average of a model's parameters, for evaluation.

    ``update(model)`` after each optimiser step: the first call copies the parameters, later ones
    set ``θ̄ ← decay·θ̄ + (1 − decay)·θ``. Persistent buffers (power-iteration vectors, initialisation
    flags) are copied, not averaged; non-persistent ones (caches such as the weight an estimate was
    made for) belong to the averaged model. :meth:`model` returns the averaged model in evaluation
    mode after ``refresh`` has recomputed the norms of its constrained layers from the averaged
    weights.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, refresh: Refresh = default_refresh):
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"the Polyak decay must lie in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self._average = copy.deepcopy(model)
        self._average.requires_grad_(False)
        self._lerp = get_ema_multi_avg_fn(self.decay)
        self._refresh = refresh
        self._stale = True
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        mine = list(self._average.parameters())
        theirs = [p.detach() for p in model.parameters()]
        if self.updates == 0:
            for a, b in zip(mine, theirs):
                a.copy_(b)
        elif mine:
            self._lerp(mine, theirs, None)
        self._copy_buffers(model)
        self.updates += 1
        self._stale = True

    def _copy_buffers(self, model: nn.Module) -> None:
        """Load the persistent buffers through ``load_state_dict``, so that modules whose buffers
        change shape (convolution power-iteration vectors at a new input size) adapt as they do
        when a checkpoint is loaded."""
        buffers = {name for name, _ in model.named_buffers()}
        state = {k: v for k, v in model.state_dict().items() if k in buffers}
        self._average.load_state_dict(state, strict=False)

    @torch.no_grad()
    def model(self) -> nn.Module:
        """The averaged model, in evaluation mode, with its norms recomputed for the averaged weights."""
        if self._stale:
            self._refresh(self._average)
            self._stale = False
        return self._average.eval()


def train_step(
    model: Flow,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    *,
    n_bins: int = 256,
    polyak: Polyak | None = None,
) -> Tensor:
    """One step on a batch of dequantised data: mean bpd, backward, optimiser step, averaging.

    The model is in training mode, so its norm-constrained layers update their power-iteration
    estimates for the weights of this step (residual layers in every training-mode forward, QuAR
    blocks at the first forward after a weight change). Returns the batch's mean bpd before the
    update (detached).
    """
    model.train()
    return _optimise(lambda: bpd_of(model, x, n_bins).mean(), model, optimizer, polyak)


def _optimise(loss_fn, model: nn.Module, optimizer: torch.optim.Optimizer, polyak: "Polyak | None") -> Tensor:
    """zero_grad, the loss, backward, an optimiser step and the Polyak update; the loss (detached)."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    optimizer.step()
    if polyak is not None:
        polyak.update(model)
    return loss.detach()


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, *, n_bins: int = 256) -> Tensor:
    """Bits per dimension of each sample of ``x`` with ``model`` in evaluation mode, without gradients.

    Pass :meth:`Polyak.model` to evaluate the averaged weights.
    """
    model.eval()
    return bpd_of(model, x, n_bins)


# ----------------------------------------------------------------------------- variational dequantization

class UniformDequantization(nn.Module):
    """Uniform dequantisation in the interface of
    :meth:`flowspec.accelerated.dequantizer.Dequantizer.dequantize`: ``x = dequantize(k)`` and
    ``log q(x | k) = uniform_log_q``. The variational objective with it is the uniform bound (Flow++
    eqs. 4–6 are eqs. 8–10 with a uniform q that ignores k): :func:`variational_bpd` then equals
    :func:`bpd_of` on the same draws."""

    def __init__(self, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.dtype = dtype

    def dequantize(self, k: Tensor, n_bins: int = 256, *, eps: Tensor | None = None,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``(x, log q(x | k))``; uniform noise is drawn here (``eps``, Gaussian noise, is refused)."""
        if eps is not None:
            raise ConfigError("uniform dequantisation draws its own uniform noise; it takes no eps")
        x = dequantize(k, n_bins, dtype=self.dtype, generator=generator)
        log_q = uniform_log_q(math.prod(k.shape[1:]), n_bins)
        return x, torch.full((k.shape[0],), log_q, dtype=self.dtype, device=k.device)


def variational_bpd(model: Flow, dequantizer: nn.Module, k: Tensor, n_bins: int = 256, *,
                    eps: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Bits per dimension of the variational bound, per sample of integer data ``k``:
    ``bits_per_dim(log p(x), log q(x | k), D)`` with ``(x, log q(x | k))`` from
    ``dequantizer.dequantize(k, n_bins, eps=..., generator=...)`` (Flow++ eq. 12 in the units of this
    module). Its expectation over the noise is at least −log₂ P(k)/D, P(k) the model's probability
    of k's cell (eqs. 7–10): a bound in bits per dimension."""
    x, log_q = dequantizer.dequantize(k, n_bins, eps=eps, generator=generator)
    return bits_per_dim(log_likelihood(model, x), log_q, math.prod(k.shape[1:]))


def variational_train_step(
    model: Flow,
    dequantizer: nn.Module,
    optimizer: torch.optim.Optimizer,
    k: Tensor,
    *,
    n_bins: int = 256,
    polyak: Polyak | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One step of Flow++'s joint maximisation over the model and q (eq. 12, pathwise gradients
    through u = f⁻¹(ε)): the batch's mean :func:`variational_bpd`, backward, optimiser step (build it
    over both, e.g. ``adam(nn.ModuleList([model, dequantizer]))``), averaging of the model. Both are
    in training mode; returns the mean bpd before the update (detached)."""
    model.train()
    dequantizer.train()
    return _optimise(lambda: variational_bpd(model, dequantizer, k, n_bins, generator=generator).mean(),
                     model, optimizer, polyak)


@torch.no_grad()
def variational_evaluate(model: nn.Module, dequantizer: nn.Module, k: Tensor, *, n_bins: int = 256,
                         generator: torch.Generator | None = None) -> Tensor:
    """:func:`variational_bpd` of each sample of ``k``, both modules in evaluation mode, without
    gradients (one draw of the noise per sample; pass :meth:`Polyak.model` as the model)."""
    model.eval()
    dequantizer.eval()
    return variational_bpd(model, dequantizer, k, n_bins, generator=generator)
