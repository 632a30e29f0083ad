"""Masked autoregressive flows: MAF (Papamakarios et al. 2017) and IAF (Kingma et al. 2016).

Both kinds share a MADE network (Germain et al. 2015; masks in :mod:`flowspec.made`) that reads the
D entries of the event in flat order (then an optional context) and outputs k = 2 parameters per
dimension, as a ``(k, D)`` array: block 0 is μ, block 1 is α (raw, unbounded). Output d depends
only on the entries earlier than d in the ``order`` (and on the context). Below, ``<d`` means
"earlier in the order" and ``net`` is evaluated at the vector named in brackets.

* ``maf`` (MAF eq. (3)-(5); forward = data → latent = the density direction, one network pass)::

      z_d = (x_d − μ_d[x])·exp(−α_d[x]),          log|det ∂z/∂x| = −Σ_d α_d[x];

  inverse (sampling) by D sequential passes in the order, position i building::

      x_{o_i} = z_{o_i}·exp(α_{o_i}[x]) + μ_{o_i}[x]    from the entries x_{o_0}, …, x_{o_{i−1}} built so far.

* ``iaf``: the inverse of ``maf`` with the same parameters. Its forward (data → latent) is maf's
  inverse, D sequential passes, the network reading the latent being built::

      z_d = x_d·exp(α_d[z]) + μ_d[z],              log|det ∂z/∂x| = +Σ_d α_d[z];

  its inverse (latent → data, the sampling direction) is maf's forward, one pass::

      x_d = (z_d − μ_d[z])·exp(−α_d[z]).

  This is Kingma et al.'s IAF step y = m + σ⊙ε (their eq. (10); here ε = z the latent noise and
  y = x the sample) in which the autoregressive network reads the noise, with the correspondence::

      (μ, α) ↦ (m, log σ) = (−μ·e^{−α}, −α),

  so sampling is one pass and log|det ∂x/∂z| = Σ log σ = −Σ α. Direction and sign conventions:
  both kinds' ``forward`` maps data to latent and returns log|det ∂z/∂x| (README); ``maf`` is fast
  in that direction, ``iaf`` in the other, and ``iaf.forward(maf.forward(x)) = x`` with the log-dets
  summing to zero.

Config (every key but ``dim`` has a default, :data:`DEFAULTS`): ``dim`` (D ≥ 1); ``order``
(``"natural"``, ``"reversed"`` or a permutation of range(D) as a list of ints, ``order[i]`` being the
dimension at position i); ``hidden`` (a list of ≥ 1 hidden widths ≥ 1: any width works, also widths
below D − 1 and widths not divisible by D); ``activation`` (``"tanh"``, ``"relu"``, ``"elu"``);
``context_dim`` (0 = no context; the context has MADE degree 0 and is read by every hidden unit).

Parameters: the MADE's layers ``net.{2i}.weight`` ``(out, in)`` and ``net.{2i}.bias``, i = 0 … L (L
hidden layers, dense and *unmasked*: the kind multiplies each weight by its mask), layer sizes
``D + context_dim → hidden[0] → … → hidden[-1] → 2·D``; output row ``j·D + d`` is parameter j
(μ, α) of dimension d.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import autograd.numpy as anp
import numpy as np

from flowspec import made
from flowspec.errors import ConfigError
from flowspec.registry import Kind, register
from flowspec.spec import FlowSpec

from .coupling import ACTIVATIONS

FAMILY = "autoregressive"
OUTPUTS_PER_DIM = 2  # μ, α
DEFAULTS: dict[str, Any] = {"order": "natural", "hidden": [8], "activation": "tanh", "context_dim": 0}


@dataclass(frozen=True, eq=False)
class MadeConfig:
    """The MADE keys of a validated config (see the module docstring)."""

    dim: int
    order: np.ndarray
    hidden: tuple[int, ...]
    activation: str
    context_dim: int

    def masks(self, outputs_per_dim: int) -> list[np.ndarray]:
        return made.masks(self.order, self.hidden, outputs_per_dim, self.context_dim)

    def layer_sizes(self, outputs_per_dim: int) -> list[int]:
        """Widths of the network's layers, input to output."""
        return [self.dim + self.context_dim, *self.hidden, outputs_per_dim * self.dim]


def _int_at_least(value: Any, key: str, low: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"config[{key!r}] of {what} must be an int ≥ {low}, got {value!r}")
    return int(value)


def _hidden(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"config['hidden'] of {what} must be a non-empty list of widths ≥ 1, got {value!r}")
    return tuple(_int_at_least(v, "hidden", 1, what) for v in value)


def parse_made(config: Mapping[str, Any], other_keys: Sequence[str] = (), what: str = "a MADE flow") -> MadeConfig:
    """Validate the MADE keys of ``config`` (``dim`` and :data:`DEFAULTS`) and fill in defaults.

    Keys other than these and ``other_keys`` (a family's own keys, validated by that family) are
    rejected; every error is a :class:`ConfigError` naming the key, expected and actual value.
    """
    unknown = sorted(set(config) - set(DEFAULTS) - set(other_keys) - {"dim"})
    if unknown:
        raise ConfigError(f"unknown config keys {unknown} for {what}; known: {['dim', *DEFAULTS, *other_keys]}")
    if "dim" not in config:
        raise ConfigError(f"{what} needs config['dim'] (the event size D ≥ 1)")
    full = {**DEFAULTS, **config}
    dim = _int_at_least(full["dim"], "dim", 1, what)
    if full["activation"] not in ACTIVATIONS:
        raise ConfigError(f"config['activation'] of {what} must be one of {sorted(ACTIVATIONS)}, "
                          f"got {full['activation']!r}")
    return MadeConfig(dim=dim, order=made.parse_order(full["order"], dim), hidden=_hidden(full["hidden"], what),
                      activation=full["activation"], context_dim=_int_at_least(full["context_dim"], "context_dim", 0, what))


def init_made_params(sizes: Sequence[int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Dense weights N(0, 1/fan_in) and biases N(0, 0.5²) of layers ``sizes[0] → … → sizes[-1]``,
    named ``net.{2i}.weight`` and ``net.{2i}.bias``."""
    params = {}
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        params[f"net.{2 * i}.weight"] = rng.normal(0.0, 1.0 / np.sqrt(n_in), (n_out, n_in))
        params[f"net.{2 * i}.bias"] = rng.normal(0.0, 0.5, n_out)
    return params


def made_net(params: Mapping[str, Any], masks: list[np.ndarray], activation: str, x_flat: Any, context: Any) -> Any:
    """The MADE network on one sample: ``(k, D)`` outputs, row j holding parameter j of every
    dimension. ``params`` holds the dense weights; each is multiplied by its mask."""
    h = x_flat if context is None else anp.concatenate([x_flat, anp.reshape(context, (-1,))])
    act = ACTIVATIONS[activation]
    for i, mask in enumerate(masks):
        h = anp.dot(params[f"net.{2 * i}.weight"] * mask, h) + params[f"net.{2 * i}.bias"]
        if i < len(masks) - 1:
            h = act(h)
    return anp.reshape(h, (-1, anp.shape(x_flat)[0]))


def autoregressive_inverse(outputs: Callable[[Any], Any], invert: Callable[[Any, Any], Any], z_flat: Any,
                           order: np.ndarray) -> Any:
    """Invert an autoregressive map one coordinate at a time, in the order's positions (D passes).

    ``outputs(x_flat) -> (k, D)`` is the conditioner (output d reads only the entries earlier than d);
    ``invert(z_d, params_d) -> x_d`` inverts the elementwise map of one entry given its ``k``
    parameters. Entries not built yet are 0 (the masks ignore them).
    """
    dim = len(order)
    built: list[Any] = [0.0] * dim
    for d in order:
        h = outputs(anp.stack(built))
        built[int(d)] = invert(z_flat[int(d)], h[:, int(d)])
    return anp.stack(built)


# ----------------------------------------------------------------------------- the affine step

def affine_forward(x: Any, h: Any) -> Any:
    """z = (x − μ)·exp(−α) for every entry (``h`` = (μ, α) rows)."""
    return (x - h[0]) * anp.exp(-h[1])


def affine_inverse(z: Any, h: Any) -> Any:
    """x = z·exp(α) + μ."""
    return z * anp.exp(h[1]) + h[0]


def _net(spec: FlowSpec, cfg: MadeConfig, context: Any) -> Callable[[Any], Any]:
    masks = cfg.masks(OUTPUTS_PER_DIM)
    return lambda v: made_net(spec.params, masks, cfg.activation, v, context)


def one_pass(spec: FlowSpec, v: Any, context: Any) -> Any:
    """maf.forward = iaf.inverse: the network reads its input ``v`` (one pass)."""
    cfg = parse_made(spec.config)
    return affine_forward(v, _net(spec, cfg, context)(v))


def sequential(spec: FlowSpec, v: Any, context: Any) -> Any:
    """maf.inverse = iaf.forward: the network reads the output being built (D passes)."""
    cfg = parse_made(spec.config)
    return autoregressive_inverse(_net(spec, cfg, context), affine_inverse, v, cfg.order)


def init_params(config: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    return init_made_params(parse_made(config).layer_sizes(OUTPUTS_PER_DIM), rng)


def _context_of(cfg: MadeConfig) -> tuple[int, ...] | None:
    return (cfg.context_dim,) if cfg.context_dim else None


def context_shape(config: Mapping[str, Any]) -> tuple[int, ...] | None:
    return _context_of(parse_made(config))


def made_law_fields(parse: Callable[[Mapping[str, Any]], tuple[MadeConfig, Any]]) -> dict[str, Callable[..., Any]]:
    """The :class:`~flowspec.registry.Kind` fields every MADE-conditioned elementwise law shares
    (NSF-AR, NAF, SOS, UMNN), from its parser returning (MADE keys, law keys): ``event_shape`` (D,),
    ``context_shape`` and ``check_config``."""
    return {
        "event_shape": lambda config: (parse(config)[0].dim,),
        "context_shape": lambda config: _context_of(parse(config)[0]),
        "check_config": parse,
    }


def made_extras(parse: Callable[[Mapping[str, Any]], MadeConfig]) -> dict[str, Callable[..., Any]]:
    """The registry extras every MADE kind declares: ``order`` (flat indices in autoregressive
    order), ``forbidden`` and ``required`` (:mod:`flowspec.made`)."""
    return {
        "order": lambda config: parse(config).order,
        "forbidden": lambda config: made.forbidden(parse(config).order),
        "required": lambda config: made.required(parse(config).order, parse(config).hidden, parse(config).activation),
    }


def _register(name: str, forward: Callable[..., Any], inverse: Callable[..., Any], summary: str) -> None:
    register(Kind(
        name=name, family=FAMILY,
        forward=lambda spec, x, context=None: forward(spec, x, context),
        inverse=lambda spec, z, context=None: inverse(spec, z, context),
        event_shape=lambda config: (parse_made(config).dim,),
        init_params=init_params, context_shape=context_shape, check_config=parse_made,
        summary=summary, extras=made_extras(parse_made), defaults=DEFAULTS,
    ))


_register("maf", one_pass, sequential,
          "MAF: z_d = (x_d − μ_d(x_<d))·exp(−α_d(x_<d)), MADE conditioner; log|det| = −Σα; inverse D passes")
_register("iaf", sequential, one_pass,
          "IAF: z_d = x_d·exp(α_d(z_<d)) + μ_d(z_<d) (maf's inverse), D passes; log|det| = +Σα; inverse one pass")
