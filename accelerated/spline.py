"""Rational-quadratic spline flows (Durkan et al. 2019, "Neural Spline Flows"; see
:mod:`flowspec.reference.spline` for the parameterisation and the equations).

:class:`RationalQuadratic` is the vectorised kernel (``torch.searchsorted`` for the bin, ``gather``
for its knots, no loops over entries or bins), with its pieces as small methods that a subclass can
override: :meth:`~RationalQuadratic._bin_sizes` (softmax with a minimum), :meth:`~RationalQuadratic._derivatives`
(the knot derivatives, 1 at ±B: the tail slope), :meth:`~RationalQuadratic._bin_index` (the bin
search) and :meth:`~RationalQuadratic._root` (the root of the inverse's quadratic). Every spline
flow is a :class:`RationalQuadratic`; :func:`rational_quadratic` is the kernel as a function.

Kinds: :class:`Spline` (``spline``, elementwise with its own ``raw``), :class:`SplineCoupling`
(``spline_coupling``, NSF-C, the coupling machinery of :mod:`.coupling`) and
:class:`SplineAutoregressive` (``spline_autoregressive``, NSF-AR, a MADE conditioner).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from flowspec import registry

from .autoregressive import MadeLaw, autoregressive_inverse
from .base import Flow, batch_sum, register, softplus
from .coupling import _Coupling


class RationalQuadratic:
    """The spline kernel; reads ``bound``, ``min_width``, ``min_height`` and ``min_derivative``
    from ``self`` (set by :meth:`_set_spline`)."""

    bound: float
    min_width: float
    min_height: float
    min_derivative: float

    def _set_spline(self, bound: float, min_width: float, min_height: float, min_derivative: float) -> None:
        self.bound, self.min_width = float(bound), float(min_width)
        self.min_height, self.min_derivative = float(min_height), float(min_derivative)

    def _bin_sizes(self, logits: Tensor, minimum: float) -> Tensor:
        """minimum + (1 − K·minimum)·softmax(logits): fractions of [−B, B] summing to 1."""
        return minimum + (1.0 - logits.shape[-1] * minimum) * torch.softmax(logits, dim=-1)

    def _knots(self, sizes: Tensor) -> Tensor:
        """The K + 1 knots, −B and B exactly at the ends."""
        edge = sizes.new_full(sizes.shape[:-1] + (1,), self.bound)
        inner = -self.bound + 2.0 * self.bound * torch.cumsum(sizes, dim=-1)[..., :-1]
        return torch.cat([-edge, inner, edge], dim=-1)

    def _derivatives(self, raw: Tensor) -> Tensor:
        """δ⁽⁰⁾ … δ⁽ᴷ⁾: the tails' slope 1 at ±B, min_derivative + softplus(raw) at the interior knots."""
        edge = raw.new_ones(raw.shape[:-1] + (1,))
        return torch.cat([edge, self.min_derivative + softplus(raw), edge], dim=-1)

    def _bin_index(self, edges: Tensor, values: Tensor) -> Tensor:
        """Index (…, 1) of the bin [t⁽ᵏ⁾, t⁽ᵏ⁺¹⁾) holding each value (values in [−B, B]); the last
        bin also holds B (the right side convention counts the knots ≤ value, which is K there)."""
        index = torch.searchsorted(edges.contiguous(), values[..., None].contiguous(), right=True) - 1
        return index.clamp(0, edges.shape[-1] - 2)

    def _root(self, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
        """The root in [0, 1] of aξ² + bξ + c (Durkan eq. 8), 2c/(−b − √(b² − 4ac)): no cancellation
        (b ≥ 0 > c there) and finite where a = 0; the discriminant clamped at 0."""
        return 2.0 * c / (-b - torch.sqrt((b * b - 4.0 * a * c).clamp(min=0.0)))

    def _inverse_position(self, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
        """ξ = :meth:`_root` clamped to [0, 1], where it lies exactly: in float32 with a bin slope s
        far below the knot derivatives, rounding can push it past 1 by more than s/(δ⁽ᵏ⁾ + δ⁽ᵏ⁺¹⁾),
        where eq. 5's denominator turns negative."""
        return self._root(a, b, c).clamp(0.0, 1.0)

    def _spline(self, x: Tensor, raw: Tensor, inverse: bool = False,
                with_log: bool = True) -> tuple[Tensor, Tensor | None]:
        """(y, log dy/dx) elementwise, or with ``inverse`` (x, log dx/dy) at the solved x; ``raw`` of
        shape ``x.shape + (3K − 1,)`` laid out [widths | heights | interior derivatives], or
        broadcastable to it (the ``spline`` kind's shared parameters: the knots are then computed
        once, not per sample). Without ``with_log`` the log-derivative is not computed (None)."""
        k = (raw.shape[-1] + 1) // 3
        knots = (*x.shape, k + 1)
        xs = self._knots(self._bin_sizes(raw[..., :k], self.min_width)).expand(knots)
        ys = self._knots(self._bin_sizes(raw[..., k:2 * k], self.min_height)).expand(knots)
        ds = self._derivatives(raw[..., 2 * k:]).expand(knots)
        inside = (x >= -self.bound) & (x <= self.bound)
        v = torch.where(inside, x, torch.zeros_like(x))
        index = self._bin_index(ys if inverse else xs, v)
        x0, x1 = xs.gather(-1, index)[..., 0], xs.gather(-1, index + 1)[..., 0]
        y0, y1 = ys.gather(-1, index)[..., 0], ys.gather(-1, index + 1)[..., 0]
        d0, d1 = ds.gather(-1, index)[..., 0], ds.gather(-1, index + 1)[..., 0]
        width, height = x1 - x0, y1 - y0
        s = height / width
        curve = d1 + d0 - 2.0 * s
        if inverse:
            dy = v - y0
            xi = self._inverse_position(height * (s - d0) + dy * curve, height * d0 - dy * curve, -s * dy)
            out = x0 + xi * width
        else:
            xi = (v - x0) / width
            t = xi * (1.0 - xi)
            out = y0 + height * (s * xi * xi + d0 * t) / (s + curve * t)
        if not with_log:
            return torch.where(inside, out, x), None
        t = xi * (1.0 - xi)
        log_slope = (2.0 * torch.log(s) + torch.log(d1 * xi * xi + 2.0 * s * t + d0 * (1.0 - xi) ** 2)
                     - 2.0 * torch.log(s + curve * t))
        log_d = -log_slope if inverse else log_slope
        return torch.where(inside, out, x), torch.where(inside, log_d, torch.zeros_like(log_d))


class _Kernel(RationalQuadratic):
    def __init__(self, **spline: float):
        self._set_spline(**spline)


def rational_quadratic(x: Tensor, raw: Tensor, *, bound: float, min_width: float, min_height: float,
                       min_derivative: float, inverse: bool = False) -> tuple[Tensor, Tensor]:
    """The kernel of :class:`RationalQuadratic` as a function (shared API; same contract as
    :func:`flowspec.reference.spline.rational_quadratic`)."""
    kernel = _Kernel(bound=bound, min_width=min_width, min_height=min_height, min_derivative=min_derivative)
    return kernel._spline(x, raw, inverse)



def per_entry(h: Tensor, k: int) -> Tensor:
    """The conditioner's output ``(batch, k·n, …)`` in k blocks along dim 1 (block j is parameter j
    of every entry, as the affine coupling's s_raw then t) as ``(batch, n, …, k)``."""
    return h.reshape(h.shape[0], k, h.shape[1] // k, *h.shape[2:]).movedim(1, -1)


@register("spline")
class Spline(RationalQuadratic, Flow):
    """z = spline(x) per entry, each with its own parameters ``raw`` of shape ``shape + (3K − 1,)``;
    log|det| = Σ log dz/dx."""

    def __init__(self, shape: Sequence[int], bins: int = 8, bound: float = 3.0, min_width: float = 1e-3,
                 min_height: float = 1e-3, min_derivative: float = 1e-3, *, validate_args: bool | None = None,
                 **unknown: Any):
        """``unknown`` config entries are rejected with a :class:`~flowspec.errors.ConfigError`."""
        super().__init__(validate_args=validate_args)
        self._config: dict[str, Any] = {
            "shape": list(shape) if isinstance(shape, (list, tuple)) else shape, "bins": bins, "bound": bound,
            "min_width": min_width, "min_height": min_height, "min_derivative": min_derivative, **unknown,
        }
        registry.get(self.kind).validate_config(self._config)
        self._shape = tuple(int(n) for n in shape)
        self._set_spline(bound, min_width, min_height, min_derivative)
        self.raw = nn.Parameter(torch.zeros(*self._shape, 3 * bins - 1))

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self._shape

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def _map(self, v: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        y, log_d = self._spline(v, self.raw, inverse)
        return y, batch_sum(log_d)

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._map(x, inverse=False)

    def _inverse(self, z: Tensor, context: Tensor | None) -> Tensor:
        return self._map(z, inverse=True)[0]

    def _inverse_and_logdet(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """log|det ∂x/∂z| = Σ log dx/dz, from the kernel's inverse directly."""
        return self._map(z, inverse=True)


@register("spline_coupling")
class SplineCoupling(RationalQuadratic, _Coupling):
    """NSF-C (Durkan et al. Sec. 3.2): the transformed entries go through the spline whose 3K − 1
    parameters per entry the conditioner outputs (in k = 3K − 1 blocks); log|det| = Σ log dz/dx."""

    def __init__(
        self,
        shape: Sequence[int],
        mask: str = "channel",
        parity: int = 0,
        conditioner: str = "mlp",
        hidden: int = 8,
        depth: int = 1,
        activation: str = "tanh",
        context_dim: int = 0,
        bins: int = 8,
        bound: float = 3.0,
        min_width: float = 1e-3,
        min_height: float = 1e-3,
        min_derivative: float = 1e-3,
        *,
        validate_args: bool | None = None,
        **unknown: Any,
    ):
        """``unknown`` config entries are passed on to be rejected with a :class:`ConfigError`."""
        super().__init__(shape, mask, parity, conditioner, hidden, depth, activation, context_dim,
                         validate_args=validate_args, bins=bins, bound=bound, min_width=min_width,
                         min_height=min_height, min_derivative=min_derivative, **unknown)
        self._set_spline(bound, min_width, min_height, min_derivative)

    @property
    def outputs_per_entry(self) -> int:  # type: ignore[override]
        """k = 3K − 1 raw spline parameters per transformed entry."""
        return 3 * self._config["bins"] - 1

    def _law(self, values: Tensor, h: Tensor, inverse: bool) -> tuple[Tensor, Tensor | None]:
        return self._spline(values, per_entry(h, self.outputs_per_entry), inverse)

    def _law_values(self, values: Tensor, h: Tensor, inverse: bool) -> Tensor:
        """Sampling discards the log-derivative: the kernel skips it."""
        return self._spline(values, per_entry(h, self.outputs_per_entry), inverse, with_log=False)[0]

    def _inverse_and_logdet(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """log|det ∂x/∂z| from the kernel's inverse log-derivatives, in the one pass."""
        return self._couple(z, context, inverse=True)


@register("spline_autoregressive")
class SplineAutoregressive(RationalQuadratic, MadeLaw):
    """NSF-AR (Durkan et al. Sec. 3.2): z_d = spline(x_d; θ_d(x_<d)) with a :class:`MADE` giving
    k = 3K − 1 parameters per dimension; forward in one pass, inverse in D sequential passes
    (:func:`autoregressive_inverse`); log|det| = Σ_d log dz_d/dx_d."""

    def __init__(self, dim: int, order: Any = "natural", hidden: Sequence[int] = (8,), activation: str = "tanh",
                 context_dim: int = 0, bins: int = 8, bound: float = 3.0, min_width: float = 1e-3,
                 min_height: float = 1e-3, min_derivative: float = 1e-3, *, validate_args: bool | None = None,
                 **unknown: Any):
        """``unknown`` config entries are rejected with a :class:`~flowspec.errors.ConfigError`."""
        super().__init__(validate_args=validate_args)
        self._init_made({"dim": dim, "order": order, "hidden": hidden, "activation": activation,
                         "context_dim": context_dim, "bins": bins, "bound": bound, "min_width": min_width,
                         "min_height": min_height, "min_derivative": min_derivative, **unknown},
                        lambda: 3 * bins - 1)
        self._set_spline(bound, min_width, min_height, min_derivative)

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        z, log_d = self._spline(x, self.net(x, context).transpose(1, 2))
        return z, log_d.sum(dim=1)

    def _invert_entries(self, z_d: Tensor, h_d: Tensor) -> Tensor:
        return self._spline(z_d, h_d, inverse=True)[0]

    def _inverse_and_logdet(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """D passes; the last pass's conditioner output is the conditioner at the final x, so the
        inverse's log-derivatives come from one more kernel call, not another network pass."""
        x, h = autoregressive_inverse(lambda w: self.net(w, context), self._invert_entries, z, self._order)
        return x, self._spline(z, h.transpose(1, 2), inverse=True)[1].sum(dim=1)

    def _inverse(self, z: Tensor, context: Tensor | None) -> Tensor:
        return autoregressive_inverse(lambda w: self.net(w, context), self._invert_entries, z, self._order)[0]
