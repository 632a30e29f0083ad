"""Neural autoregressive flow with deep sigmoidal layers, ``naf`` (Huang et al. 2018, Sec. 3.1, eq. (8);
see :mod:`flowspec.reference.naf` for the map, the layout and why it is a bijection of ℝ).

:class:`NAF` holds a :class:`~.autoregressive.MADE` with k = 3KL outputs per dimension; each of the
L layers is the logit of a logistic-mixture CDF with log π = log-softmax(logits), μ = −b/a and
s = −log a, a = min_slope + softplus(raw a), evaluated by the shared
:func:`~.logistic_mixture.mixture_logit_and_log_derivative` (log space: finite where σ(u) rounds to
0 or 1 in float32) and inverted by the shared :func:`~.logistic_mixture.mixture_logit_inverse`
(safeguarded Newton in the exact bracket; gradients by one implicit step). Forward in one MADE
pass; inverse in D sequential passes (:func:`~.autoregressive.autoregressive_inverse`), each entry's
layers inverted last to first. The pieces are methods a subclass can override:
:meth:`~NAF._layer_parameters`, :meth:`~NAF._layer` and :meth:`~NAF._invert_stack`. Solver settings
are attributes, not config: ``max_iter`` (default 200) and ``rtol`` (None: 16ε of the dtype).
"""
from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor, log_softmax

from .autoregressive import MadeLaw, autoregressive_inverse
from .base import register, softplus
from .logistic_mixture import mixture_logit_and_log_derivative, mixture_logit_inverse
from .solve import DEFAULT_MAX_ITER


@register("naf")
class NAF(MadeLaw):
    """NAF-DSF: z_d = the L-layer DSF stack of x_d with parameters θ_d(x_<d) from a MADE; log|det| =
    Σ_d Σ_l log ℓ′_l; inverse by D passes."""

    def __init__(self, dim: int, order: Any = "natural", hidden: Sequence[int] = (8,), activation: str = "tanh",
                 context_dim: int = 0, components: int = 4, layers: int = 1, min_slope: float = 1e-3, *,
                 validate_args: bool | None = None, **unknown: Any):
        """``unknown`` config entries are rejected with a :class:`~flowspec.errors.ConfigError`."""
        super().__init__(validate_args=validate_args)
        self._init_made({"dim": dim, "order": order, "hidden": hidden, "activation": activation,
                         "context_dim": context_dim, "components": components, "layers": layers,
                         "min_slope": min_slope, **unknown}, lambda: 3 * int(components) * int(layers))
        self.components, self.layers, self.min_slope = int(components), int(layers), float(min_slope)
        self.max_iter = DEFAULT_MAX_ITER
        self.rtol: float | None = None

    def _layer_parameters(self, h: Tensor, layer: int) -> tuple[Tensor, Tensor, Tensor]:
        """(log π, μ, s) of ``layer`` from ``h`` (…, 3KL), block [raw a | b | logits] of K each."""
        k = self.components
        block = h[..., 3 * k * layer:3 * k * (layer + 1)]
        slope = self.min_slope + softplus(block[..., :k])
        return log_softmax(block[..., 2 * k:], dim=-1), -block[..., k:2 * k] / slope, -slope.log()

    def _layer(self, y: Tensor, h: Tensor, layer: int) -> tuple[Tensor, Tensor]:
        """(ℓ_l(y), log ℓ′_l(y)) of one DSF layer (eq. (8))."""
        return mixture_logit_and_log_derivative(y, *self._layer_parameters(h, layer))

    def _stack(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """(z, Σ_l log ℓ′_l) elementwise, ``h`` of shape ``x.shape + (3KL,)``."""
        log_d = x.new_zeros(x.shape)
        for layer in range(self.layers):
            x, log_l = self._layer(x, h, layer)
            log_d = log_d + log_l
        return x, log_d

    def _invert_stack(self, z: Tensor, h: Tensor) -> Tensor:
        """x with :meth:`_stack` (x) = z: the layers inverted last to first."""
        for layer in reversed(range(self.layers)):
            z = mixture_logit_inverse(z, *self._layer_parameters(h, layer), rtol=self.rtol, max_iter=self.max_iter)
        return z

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        z, log_d = self._stack(x, self.net(x, context).transpose(1, 2))
        return z, log_d.sum(dim=1)

    def _sequential(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return autoregressive_inverse(lambda w: self.net(w, context), self._invert_stack, z, self._order)

    def _inverse(self, z: Tensor, context: Tensor | None) -> Tensor:
        return self._sequential(z, context)[0]

    def _inverse_and_logdet(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """The last pass's conditioner output is the conditioner at the final x: log|det ∂x/∂z| =
        −Σ log ℓ′ from one more stack evaluation, not another network pass."""
        x, h = self._sequential(z, context)
        return x, -self._stack(x, h.transpose(1, 2))[1].sum(dim=1)
