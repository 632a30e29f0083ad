"""Masked autoregressive flows: MAF and IAF (see :mod:`flowspec.reference.autoregressive`).

A :class:`MADE` network (Germain et al. 2015, masks from :mod:`flowspec.made`) gives k = 2
parameters per dimension, μ and α (raw), output d reading only the entries earlier than d in the
order (and the context):

* :class:`MAF` (Papamakarios et al. 2017, eq. (3)-(5)): forward z = (x − μ[x])·exp(−α[x]),
  log|det ∂z/∂x| = −Σα, in **one** batched network pass; inverse by :func:`autoregressive_inverse`.
* :class:`IAF` (Kingma et al. 2016): maf's inverse with the same parameters, so forward
  z = x·exp(α[z]) + μ[z], log|det ∂z/∂x| = +Σα, by :func:`autoregressive_inverse`, and the inverse
  (the sampling direction, Kingma's y = m + σ⊙ε with (m, log σ) = (−μ·e^{−α}, −α)) in one pass.

Cost: the one-pass direction is a single MADE evaluation; the sequential direction is D passes,
each recomputing the whole network on the partially built vector (D × the cost of one pass), as
the autoregressive dependence requires (position i needs the entries at positions < i).
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowspec import made, registry

from .base import Flow, int_list, register

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU}
OUTPUTS_PER_DIM = 2  # μ, α


class MaskedLinear(nn.Linear):
    """A dense layer whose weight is multiplied by a fixed 0/1 mask (the non-persistent buffer
    ``_mask``, left out of the canonical parameters), so masked connections are exactly zero."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__(n_in, n_out)
        self.register_buffer("_mask", torch.ones(n_out, n_in), persistent=False)

    def set_mask(self, mask: Tensor) -> None:
        self._mask = mask.to(dtype=self.weight.dtype, device=self.weight.device)

    def forward(self, h: Tensor) -> Tensor:
        return F.linear(h, self.weight * self._mask, self.bias)


class MADE(nn.Sequential):
    """MADE conditioner: masked dense layers at indices 0, 2, 4, … with activations between, so a
    flow holding it as ``self.net`` has the canonical parameters ``net.{2i}.weight/bias``.

    Inputs are the D entries (flat order) then the ``context_dim`` context entries; ``forward``
    returns ``(batch, k, D)``: ``[:, j, d]`` is parameter j of dimension d. The masks come from
    :meth:`masks` (built from :meth:`degrees`), the points a different connectivity overrides.
    """

    def __init__(self, dim: int, hidden: Sequence[int], outputs_per_dim: int, activation: str, order: Any,
                 context_dim: int = 0):
        widths = [dim + context_dim, *hidden, outputs_per_dim * dim]
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(MaskedLinear(n_in, n_out))
            if i < len(hidden):
                layers.append(ACTIVATIONS[activation]())
        super().__init__(*layers)
        self.dim, self.hidden, self.outputs_per_dim = dim, tuple(hidden), outputs_per_dim
        self.order, self.context_dim = made.parse_order(order, dim), context_dim
        for layer, mask in zip(self.linears(), self.masks()):
            layer.set_mask(mask)

    def linears(self) -> list[MaskedLinear]:
        return [m for m in self if isinstance(m, MaskedLinear)]

    def hidden_degrees(self, width: int) -> np.ndarray:
        """MADE degrees of a hidden layer (:func:`flowspec.made.hidden_degrees`)."""
        return made.hidden_degrees(width, self.dim, self.context_dim > 0)

    def degrees(self) -> list[np.ndarray]:
        """Degrees of the input layer (entries, then the context at 0) and of each hidden layer."""
        first = np.concatenate([made.input_degrees(self.order), np.zeros(self.context_dim, dtype=np.int64)])
        return [first] + [self.hidden_degrees(width) for width in self.hidden]

    def masks(self) -> list[Tensor]:
        """One ``(out, in)`` 0/1 mask per layer (:func:`flowspec.made.masks`' rules on :meth:`degrees`)."""
        degrees = self.degrees()
        hidden = [made.hidden_mask(out, inp) for inp, out in zip(degrees[:-1], degrees[1:])]
        last = made.output_mask(made.input_degrees(self.order), degrees[-1], self.outputs_per_dim)
        return [torch.as_tensor(m, dtype=torch.get_default_dtype()) for m in hidden + [last]]

    def forward(self, x_flat: Tensor, context: Tensor | None = None) -> Tensor:  # type: ignore[override]
        h = x_flat if context is None else torch.cat([x_flat, context.reshape(context.shape[0], -1)], dim=1)
        for module in self:
            h = module(h)
        return h.reshape(h.shape[0], self.outputs_per_dim, self.dim)


def autoregressive_inverse(
    params_fn: Callable[[Tensor], Tensor], invert_entries: Callable[[Tensor, Tensor], Tensor], z: Tensor,
    order: Sequence[int],
) -> tuple[Tensor, Tensor]:
    """Invert an autoregressive map by D sequential passes in the order's positions.

    ``params_fn(x) -> (batch, k, D)`` is the conditioner (output d reads only the entries earlier
    than d); ``invert_entries(z_d, h_d) -> x_d`` inverts the elementwise map of one column
    (``z_d``: ``(batch,)``, ``h_d``: ``(batch, k)``). Pass i runs the whole conditioner on the vector
    built so far (entries not built yet are 0, which the masks ignore) and fills position i, so the
    cost is D conditioner passes. Returns ``(x, h)``: ``h`` is the last pass's conditioner output,
    which is the conditioner at the final ``x`` for every dimension (the last entry in the order
    feeds no output), so callers compute log-determinants from it without another pass.
    Differentiable (out-of-place updates), vectorised over the batch.
    """
    x = torch.zeros_like(z)
    h = torch.empty(0)
    for d in order:
        h = params_fn(x)
        column = invert_entries(z[:, d], h[:, :, d])
        x = torch.cat([x[:, :d], column[:, None], x[:, d + 1:]], dim=1)
    return x, h


class MadeLaw(Flow):
    """A flow whose per-dimension elementwise law takes its parameters θ_d(x_<d) from a :class:`MADE`
    (NSF-AR, NAF, SOS, UMNN): the config handling, the shapes and the network, written once.
    ``made_class`` lets a subclass swap the network (the broken MADEs of the tests do)."""

    made_class: ClassVar[type[MADE]] = MADE

    def _init_made(self, config: dict[str, Any], outputs_per_dim: Callable[[], int]) -> None:
        """Keep ``config`` (order and hidden widths as lists), validate it against the reference's
        kind (unknown keys and bad values raise :class:`~flowspec.errors.ConfigError`), then build
        ``net`` with ``outputs_per_dim()`` outputs per dimension."""
        order, hidden = config["order"], config["hidden"]
        self._config = {**config, "order": order if isinstance(order, str) else int_list(order, "order"),
                        "hidden": list(hidden) if isinstance(hidden, (list, tuple)) else hidden}
        registry.get(self.kind).validate_config(self._config)
        self._dim, context_dim = int(config["dim"]), int(config["context_dim"])
        self._order = [int(v) for v in made.parse_order(order, self._dim)]
        self.context_shape = (context_dim,) if context_dim else None
        self.net = self.made_class(self._dim, hidden, outputs_per_dim(), config["activation"], self._order,
                                   context_dim)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self._dim,)

    def config(self) -> dict[str, Any]:
        return dict(self._config)


class _MaskedAffine(Flow):
    """The affine MADE step of both kinds: :meth:`_one_pass` (the network reads its input) and
    :meth:`_sequential` (the network reads the output being built)."""

    made_class: ClassVar[type[MADE]] = MADE

    def __init__(self, dim: int, order: Any = "natural", hidden: Sequence[int] = (8,), activation: str = "tanh",
                 context_dim: int = 0, *, validate_args: bool | None = None, **unknown: Any):
        """``unknown`` config entries are rejected with a :class:`~flowspec.errors.ConfigError`."""
        super().__init__(validate_args=validate_args)
        self._config: dict[str, Any] = {
            "dim": dim, "order": order if isinstance(order, str) else int_list(order, "order"),
            "hidden": list(hidden) if isinstance(hidden, (list, tuple)) else hidden,
            "activation": activation, "context_dim": context_dim, **unknown,
        }
        registry.get(self.kind).validate_config(self._config)
        self._dim = dim
        self._order = [int(v) for v in made.parse_order(order, dim)]
        self.context_shape = (context_dim,) if context_dim else None
        self.net = self.made_class(dim, hidden, OUTPUTS_PER_DIM, activation, self._order, context_dim)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self._dim,)

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def _one_pass(self, v: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """(v − μ[v])·exp(−α[v]) and −Σα: maf's forward, iaf's inverse."""
        h = self.net(v, context)
        return (v - h[:, 0]) * torch.exp(-h[:, 1]), -h[:, 1].sum(dim=1)

    def _sequential(self, v: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """u with v = (u − μ[u])·exp(−α[u]), i.e. u = v·exp(α[u]) + μ[u], and +Σα[u]: maf's inverse,
        iaf's forward (D passes)."""
        u, h = autoregressive_inverse(lambda w: self.net(w, context), self._invert_entries, v, self._order)
        return u, h[:, 1].sum(dim=1)

    @staticmethod
    def _invert_entries(v: Tensor, h: Tensor) -> Tensor:
        return v * torch.exp(h[:, 1]) + h[:, 0]


@register("maf")
class MAF(_MaskedAffine):
    """MAF: z = (x − μ(x_<))·exp(−α(x_<)) in one pass, log|det| = −Σα; inverse D passes."""

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._one_pass(x, context)

    def _inverse(self, z: Tensor, context: Tensor | None) -> Tensor:
        return self._sequential(z, context)[0]

    def _inverse_and_logdet(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._sequential(z, context)


@register("iaf")
class IAF(_MaskedAffine):
    """IAF: maf's inverse: z = x·exp(α(z_<)) + μ(z_<) in D passes, log|det| = +Σα; inverse one pass."""

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._sequential(x, context)

    def _inverse(self, z: Tensor, context: Tensor | None) -> Tensor:
        return self._one_pass(z, context)[0]

    def _inverse_and_logdet(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._one_pass(z, context)
