"""Flow++ variational dequantization (Sec. 3.1, eqs. 9–12; see :mod:`flowspec.reference.dequantizer`).

:class:`Dequantizer` is the conditional flow of ``q(u | k)``: forward ``u ∈ (0, 1)^D → ε`` by the
logit (α = 0), the context affine ``y ⊙ exp(s(c)) + t(c)`` and conditional couplings, each reading
the context ``c = features(k, n_bins) = (2k + 1)/n_bins − 1`` (flat for the MLP conditioners, the
image for the convolutional ones). Sampling ``u`` is the inverse of ``ε ~ N(0, I)``
(``FlowDistribution(dequantizer, features(k, n_bins))`` samples and scores u), and
:meth:`Dequantizer.dequantize` returns the dequantised data ``x = (k + u)/n_bins`` with
``log q(x | k) = log q(u | k) + D·log n_bins``, the quantity that
:func:`flowspec.accelerated.training.variational_bpd` puts into the existing ``bits_per_dim``.

``log q(u | k)`` is computed in the sampling direction, ``log N(ε) − log|det ∂u/∂ε|`` at the drawn
ε (the couplings' −Σ s, the context affine's −Σ s, the sigmoid's Σ log σ(y) + log σ(−y) from y
itself), so it stays exact where float32 rounds σ(y) to 1 (y > 16.6); x = (k + u)/n_bins is then
moved into the open unit interval (by one unit in the last place at the top cell), as
:func:`~flowspec.accelerated.training.dequantize` does.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from flowspec.errors import ConfigError, FlowInputError
from flowspec.reference.dequantizer import child_config, parse_config
from flowspec.spec import FlowSpec

from .base import Flow, batch_sum, from_spec, register
from .coupling import AffineCoupling, conditioner_net
from .elementwise import Logit
from .training import log_likelihood

LOG_2PI = math.log(2.0 * math.pi)


def check_discrete(k: Tensor, n_bins: int, shape: Sequence[int]) -> None:
    """``k``: an integer-valued tensor in [0, n_bins) of shape ``(batch, *shape)``; ``n_bins`` ≥ 2."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 2:
        raise ConfigError(f"n_bins must be an int ≥ 2, got {n_bins!r}")
    if not isinstance(k, Tensor):
        raise FlowInputError(f"discrete data k must be a torch.Tensor, got {type(k).__name__}")
    if tuple(k.shape[1:]) != tuple(shape) or k.dim() != len(shape) + 1:
        raise FlowInputError(f"data k must have shape (batch, {', '.join(map(str, shape))}), got {tuple(k.shape)}")
    if k.is_floating_point() and not bool((k == torch.round(k)).all()):
        raise FlowInputError("discrete data k must be integer-valued")
    if bool((k < 0).any()) or bool((k >= n_bins).any()):
        raise FlowInputError(f"data k must lie in [0, {n_bins}), got values in [{k.min().item()}, {k.max().item()}]")


def features(k: Tensor, n_bins: int, dtype: torch.dtype) -> Tensor:
    """The dequantizer's context: (2k + 1)/n_bins − 1, k's cell centre mapped onto (−1, 1)."""
    return (2.0 * k.to(dtype) + 1.0) / n_bins - 1.0


def standard_normal_log_prob(eps: Tensor) -> Tensor:
    """log N(ε; 0, I) per sample."""
    return -0.5 * batch_sum(eps ** 2) - 0.5 * math.prod(eps.shape[1:]) * LOG_2PI


@register("dequantizer")
class Dequantizer(Flow):
    """q(u | k) as a conditional flow (module docstring); ``layers`` (the couplings, by default
    built from the config as :func:`flowspec.reference.dequantizer.child_config` says) may be any
    conditional flows on the event shape whose context has D entries."""

    domain = (0.0, 1.0)
    conformance_hooks = frozenset({"variational_bound"})

    def __init__(
        self,
        shape: Sequence[int],
        couplings: int = 2,
        mask: str = "channel",
        conditioner: str = "mlp",
        hidden: int = 8,
        depth: int = 1,
        activation: str = "tanh",
        scale_factor: float = 1.0,
        *,
        layers: Sequence[Flow] | None = None,
        validate_args: bool | None = None,
        **unknown: Any,
    ):
        """``unknown`` config entries are passed on to be rejected with a :class:`ConfigError`."""
        super().__init__(validate_args=validate_args)
        self._config: dict[str, Any] = {
            "shape": list(shape) if isinstance(shape, (list, tuple)) else shape, "couplings": couplings, "mask": mask,
            "conditioner": conditioner, "hidden": hidden, "depth": depth, "activation": activation,
            "scale_factor": scale_factor, **unknown,
        }
        cfg = parse_config(self._config)
        self._shape = cfg.shape
        self.context_shape = cfg.shape
        self.conditioner = conditioner
        self.scale_factor = float(scale_factor)
        self.logit = Logit(cfg.shape, alpha=0.0, validate_args=False)
        n_in = cfg.shape[0] if conditioner == "conv" else cfg.size
        self.net = conditioner_net(conditioner, n_in, 2 * n_in, hidden, depth, activation)
        if layers is None:
            layers = [AffineCoupling(**child_config(cfg, i)) for i in range(couplings)]
        self.layers = nn.ModuleList(self._checked(list(layers), couplings))

    def _checked(self, layers: list[Flow], couplings: int) -> list[Flow]:
        if len(layers) != couplings:
            raise ConfigError(f"a dequantizer with config['couplings'] = {couplings} nests {couplings} couplings, "
                              f"got {len(layers)}")
        for i, layer in enumerate(layers):
            context = layer.context_shape
            if tuple(layer.event_shape) != self._shape or tuple(layer.latent_shape) != self._shape:
                raise ConfigError(f"coupling {i} ({layer.kind}) of a dequantizer must map shape {list(self._shape)} "
                                  f"to itself")
            if context is None or math.prod(context) != math.prod(self._shape):
                raise ConfigError(f"coupling {i} ({layer.kind}) of a dequantizer must read a context of "
                                  f"{math.prod(self._shape)} entries, its context shape is {context}")
            layer.validate_args = False  # the dequantizer validates its own input and output
        return layers

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self._shape

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def spec_children(self) -> dict[str, Flow]:
        return {str(i): layer for i, layer in enumerate(self.layers)}

    @classmethod
    def from_spec(cls, spec: FlowSpec) -> "Dequantizer":
        cls.require_kind(spec)
        names = sorted(k for k, v in spec.params.items() if isinstance(v, FlowSpec))
        if set(names) != {str(i) for i in range(len(names))}:
            raise ConfigError(f"a dequantizer nests its couplings as the specs '0', '1', …, got {names}")
        layers = [from_spec(spec.params[str(i)]) for i in range(len(names))]
        flow = cls(**spec.config, layers=layers).to(torch.float64)
        flow.load_spec_params(spec)
        return flow

    # ------------------------------------------------------------------ the map
    def _net_input(self, context: Tensor) -> Tensor:
        """The context net's input: the context, flat for the dense net."""
        return context.reshape(context.shape[0], -1) if self.conditioner == "mlp" else context

    def _context_affine(self, y: Tensor, context: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        """y ⊙ exp(s) + t with (s_raw, t) = net(c), s = scale_factor·tanh(s_raw), or its inverse;
        and the log-det of that direction."""
        s_raw, shift = self.net(self._net_input(context)).chunk(2, dim=1)
        log_scale = self.scale_factor * torch.tanh(s_raw)
        flat = y.reshape(s_raw.shape)
        out = (flat - shift) * torch.exp(-log_scale) if inverse else flat * torch.exp(log_scale) + shift
        total = batch_sum(log_scale)
        return out.reshape(y.shape), -total if inverse else total

    @staticmethod
    def _layer_context(layer: Flow, context: Tensor) -> Tensor:
        return context.reshape(context.shape[0], *layer.context_shape)

    def _forward(self, u: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        y, total = self.logit(u)
        y, logdet = self._context_affine(y, context, inverse=False)
        total = total + logdet
        for layer in self.layers:
            y, logdet = layer(y, self._layer_context(layer, context))
            total = total + logdet
        return y, total

    def _inverse(self, eps: Tensor, context: Tensor | None) -> Tensor:
        y = eps
        for layer in reversed(self.layers):
            y = layer.inverse(y, self._layer_context(layer, context))
        return self.logit.inverse(self._context_affine(y, context, inverse=True)[0])

    def _inverse_and_logdet(self, eps: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """u and log|det ∂u/∂ε|, every term from the sampling direction (module docstring)."""
        y, total = eps, None
        for layer in reversed(self.layers):
            y, logdet = layer.inverse_and_logdet(y, self._layer_context(layer, context))
            total = logdet if total is None else total + logdet
        y, logdet = self._context_affine(y, context, inverse=True)
        u, logdet_sigmoid = self.logit.inverse_and_logdet(y)
        total = logdet + logdet_sigmoid if total is None else total + logdet + logdet_sigmoid
        return u, total

    # ------------------------------------------------------------------ dequantisation
    def context(self, k: Tensor, n_bins: int) -> Tensor:
        """The context of data ``k``: :func:`features` in the flow's dtype."""
        return features(k, n_bins, self._dtype())

    def dequantize(self, k: Tensor, n_bins: int, *, eps: Tensor | None = None,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``(x, log q(x | k))`` for integer data ``k``: u = f⁻¹(ε; features(k)), ε ~ N(0, I) (or the
        given ``eps``), x = (k + u)/n_bins and log q(x | k) = log N(ε) − log|det ∂u/∂ε| + D·log n_bins."""
        check_discrete(k, n_bins, self._shape)
        dtype = self._dtype()
        if eps is None:
            eps = torch.randn(k.shape, dtype=dtype, device=k.device, generator=generator)
        u, logdet = self.inverse_and_logdet(eps, self.context(k, n_bins))
        x = ((k.to(dtype) + u) / n_bins).clamp(min=torch.finfo(dtype).tiny, max=1.0 - torch.finfo(dtype).eps / 2)
        log_q = standard_normal_log_prob(eps) - logdet + math.prod(self._shape) * math.log(n_bins)
        return x, log_q

    def variational_bound(self, model: Flow, k: Tensor, n_bins: int,
                          eps: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The conformance hook: ``(x, log p(x), log q(x | k))`` per sample for ``model``, with the
        given noise ``eps`` or, without it, noise drawn from torch's global generator."""
        x, log_q = self.dequantize(k, n_bins, eps=eps)
        return x, log_likelihood(model, x), log_q
