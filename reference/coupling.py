"""Coupling layers: NICE's additive coupling and RealNVP's affine coupling.

A binary mask ``b`` splits the event into an unchanged part (``b = 1``) and a transformed part
(``b = 0``); a conditioner network reads only the unchanged part (and an optional context) and
outputs the shift ``t`` (and the log-scale ``s``) of the transformed part (survey eq. 36-39; slides
"Coupling Law - NICE", "Coupling Law - RealNVP", "Real NVP via Masked Convolution"):

* ``additive_coupling``:  z = b⊙x + (1 − b)⊙(x + t(b⊙x)),                 log|det| = 0;
* ``affine_coupling``:    z = b⊙x + (1 − b)⊙(x⊙exp(s(b⊙x)) + t(b⊙x)),     log|det| = Σ_{b=0} s,
  with the bounded log-scale ``s = scale_factor · tanh(s_raw)``.

Config (every key but ``shape`` has a default, see :data:`DEFAULTS`):

* ``shape``: ``[D]`` (a vector, D ≥ 2) or ``[C, H, W]`` (an image);
* ``mask``: ``"channel"`` — ``b = 1`` on the first ⌊n/2⌋ entries of the vector (n = D) or on the
  first ⌊C/2⌋ channels of the image (eq. 38: the first d entries pass unchanged); or
  ``"checkerboard"`` — ``b = 1`` on odd indices of a vector, or where h + w is odd in an image
  (the slides' spatial checkerboard);
* ``parity``: 0 uses that ``b``, 1 its complement (the halves swap roles);
* ``conditioner``: ``"mlp"`` (any shape: the unchanged entries, in flat order, followed by the
  context, go through dense layers to ``k·n_t`` outputs for the ``n_t`` transformed entries in flat
  order), ``"conv"`` (images only: 3×3 convolutions with zero padding read ``b⊙x`` and output
  ``k·C`` channels, used where ``b = 0``) or ``"attention"`` (images only: Flow++'s stack of gated
  convolution and multi-head self-attention blocks, :mod:`flowspec.reference.attention`, reading
  ``b⊙x`` and outputting ``k·C`` channels the same way). ``k`` is 1 (``t``) for additive and 2
  (``s_raw`` then ``t``, each a contiguous half of the output) for affine coupling;
* ``hidden`` (width or channels) and ``activation`` in ``"tanh"``, ``"relu"``, ``"elu"`` (after
  every hidden layer; in the attention blocks, the gated convolution's nonlinearity);
  ``depth`` (mlp and conv: number of hidden layers); ``blocks`` and ``heads`` (attention: number
  of blocks, ≥ 1, and of attention heads, which must divide ``hidden``);
* contexts: ``context_dim`` (mlp: a vector of that many entries appended to the unchanged entries)
  or ``context_channels`` (conv and attention: an image context of shape
  ``(context_channels, H, W)`` per sample, concatenated to ``b⊙x`` on the channel axis as the
  conditioner's input); 0 = no context;
* ``scale_factor`` (affine only, > 0).

A key that the chosen conditioner does not read must keep its default (a ``ConfigError`` names it
otherwise), so that no configuration is silently ignored.

Parameters: the conditioner's layers ``net.{2i}.weight`` and ``net.{2i}.bias`` for
``i = 0, …, depth`` (the names of a ``torch.nn.Sequential`` that alternates layers and activations),
with dense weights ``(out, in)`` and convolution weights ``(out, in, 3, 3)``; for the attention
conditioner the names of :mod:`flowspec.reference.attention` (``net.0`` the input projection,
``net.1 … net.{blocks}`` the blocks, ``net.{blocks + 1}`` the output projection: the last layer is
again the one with the largest index).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import autograd.numpy as anp
import numpy as np

from flowspec.errors import ConfigError, FlowInputError
from flowspec.registry import Kind, int_at_least, one_of, register
from flowspec.spec import FlowSpec

from . import attention
from .conv import conv2d
from .lipschitz import tanh

FAMILY = "coupling"
_WHAT = "a coupling layer"
MASKS = ("channel", "checkerboard")
CONDITIONERS = ("mlp", "conv", "attention")
IMAGE_CONDITIONERS = ("conv", "attention")
KERNEL = 3
DEFAULTS: dict[str, Any] = {
    "mask": "channel", "parity": 0, "conditioner": "mlp", "hidden": 8, "depth": 1,
    "activation": "tanh", "context_dim": 0, "context_channels": 0, "blocks": 2, "heads": 4,
}
# The keys each conditioner reads besides hidden and activation; the others must keep their defaults.
CONDITIONER_KEYS: dict[str, tuple[str, ...]] = {
    "mlp": ("depth", "context_dim"),
    "conv": ("depth", "context_channels"),
    "attention": ("blocks", "heads", "context_channels"),
}
AFFINE_DEFAULTS: dict[str, Any] = {**DEFAULTS, "scale_factor": 1.0}

ACTIVATIONS: dict[str, Callable[[Any], Any]] = {
    "tanh": tanh,
    "relu": lambda a: a * (a > 0),
    "elu": lambda a: anp.where(a > 0, a, anp.expm1(anp.minimum(a, 0.0))),
}


@dataclass(frozen=True)
class CouplingConfig:
    """A validated coupling configuration (see the module docstring)."""

    shape: tuple[int, ...]
    mask: str
    parity: int
    conditioner: str
    hidden: int
    depth: int
    activation: str
    context_dim: int
    scale_factor: float | None
    law_outputs: int | None = None  # k of a law other than these two (the spline's 3K − 1)
    context_channels: int = 0
    blocks: int = DEFAULTS["blocks"]
    heads: int = DEFAULTS["heads"]

    @property
    def outputs_per_entry(self) -> int:
        """k: conditioner outputs per transformed entry (t; or s_raw and t; or ``law_outputs``)."""
        if self.law_outputs is not None:
            return self.law_outputs
        return 1 if self.scale_factor is None else 2

    @property
    def context_shape(self) -> tuple[int, ...] | None:
        """One context sample's shape: ``(context_dim,)``, ``(context_channels, H, W)`` or None."""
        if self.context_dim:
            return (self.context_dim,)
        if self.context_channels:
            return (self.context_channels, *self.shape[1:])
        return None

    @property
    def input_channels(self) -> int:
        """Channels of an image conditioner's input: C, and the context's."""
        return self.shape[0] + self.context_channels




def _check_shape(value: Any, mask: str, conditioner: str) -> tuple[int, ...]:
    shape = tuple(value) if isinstance(value, (list, tuple)) else ()
    if len(shape) not in (1, 3) or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
        raise ConfigError(
            f"config['shape'] of a coupling layer must be [D] or [C, H, W] of positive ints, got {value!r}"
        )
    if conditioner in IMAGE_CONDITIONERS and len(shape) != 3:
        raise ConfigError(f"the {conditioner} conditioner needs an image shape [C, H, W], got {list(shape)}")
    if len(shape) == 1 and shape[0] < 2:
        raise ConfigError(f"a coupling layer needs D ≥ 2 entries to split, got shape {list(shape)}")
    if len(shape) == 3 and mask == "channel" and shape[0] < 2:
        raise ConfigError(f"the channel mask needs C ≥ 2 channels to split, got shape {list(shape)}")
    if len(shape) == 3 and mask == "checkerboard" and shape[1] * shape[2] < 2:
        raise ConfigError(f"the checkerboard mask needs H·W ≥ 2 pixels to split, got shape {list(shape)}")
    return shape


def parse_config(config: Mapping[str, Any], affine: bool) -> CouplingConfig:
    """Fill in :data:`DEFAULTS` and validate; raises :class:`ConfigError` naming the bad entry."""
    defaults = AFFINE_DEFAULTS if affine else DEFAULTS
    unknown = sorted(set(config) - set(defaults) - {"shape"})
    if unknown:
        raise ConfigError(f"unknown config keys {unknown} for a coupling layer; known: {['shape', *defaults]}")
    if "shape" not in config:
        raise ConfigError("a coupling layer needs config['shape'] ([D] or [C, H, W])")
    full = {**defaults, **config}
    mask, conditioner = one_of(full, "mask", MASKS, _WHAT), one_of(full, "conditioner", CONDITIONERS, _WHAT)
    shape = _check_shape(full["shape"], mask, conditioner)
    parity = full["parity"]
    if isinstance(parity, bool) or not isinstance(parity, int) or parity not in (0, 1):
        raise ConfigError(f"config['parity'] of a coupling layer must be 0 or 1, got {parity!r}")
    sizes = {key: int_at_least(full, key, low, _WHAT) for key, low in
             (("hidden", 1), ("depth", 1), ("context_dim", 0), ("context_channels", 0), ("blocks", 1), ("heads", 1))}
    _check_unread(full, conditioner)
    if conditioner == "attention" and sizes["hidden"] % sizes["heads"]:
        raise ConfigError(f"config['heads'] = {sizes['heads']} of the attention conditioner must divide "
                          f"config['hidden'] = {sizes['hidden']} (each head takes hidden/heads channels)")
    scale = full.get("scale_factor")
    if affine and (isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0.0 < scale < np.inf):
        raise ConfigError(f"config['scale_factor'] of an affine coupling must be a finite number > 0, got {scale!r}")
    return CouplingConfig(
        shape=shape, mask=mask, parity=parity, conditioner=conditioner,
        activation=one_of(full, "activation", tuple(ACTIVATIONS), _WHAT),
        scale_factor=float(scale) if affine else None, **sizes,
    )


def _check_unread(full: Mapping[str, Any], conditioner: str) -> None:
    """A key the conditioner does not read (:data:`CONDITIONER_KEYS`) must keep its default."""
    for key in sorted(set().union(*CONDITIONER_KEYS.values()) - set(CONDITIONER_KEYS[conditioner])):
        if full[key] == DEFAULTS[key]:
            continue
        if key == "context_dim":
            raise ConfigError(f"a context (context_dim={full[key]}) needs the mlp conditioner, not {conditioner!r}; "
                              f"image conditioners take context_channels")
        if key == "context_channels":
            raise ConfigError(f"an image context (context_channels={full[key]}) needs the conv or attention "
                              f"conditioner, not {conditioner!r}; the mlp conditioner takes context_dim")
        raise ConfigError(f"config[{key!r}] = {full[key]!r} is not read by the {conditioner!r} conditioner "
                          f"(it reads {['hidden', 'activation', *CONDITIONER_KEYS[conditioner]]}); "
                          f"leave it at its default {DEFAULTS[key]!r}")


# ----------------------------------------------------------------------------- masks

def unchanged_mask(shape: tuple[int, ...], mask: str, parity: int) -> np.ndarray:
    """The mask ``b`` (True where entries pass unchanged and feed the conditioner), of ``shape``."""
    if mask == "checkerboard":
        if len(shape) == 1:
            base = np.arange(shape[0]) % 2 == 1
        else:
            base = np.add.outer(np.arange(shape[1]), np.arange(shape[2])) % 2 == 1
    else:
        base = np.arange(shape[0]) < shape[0] // 2
        if len(shape) == 3:
            base = base[:, None, None]
    return np.broadcast_to(base != bool(parity), shape).copy()


def _split_indices(cfg: CouplingConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat indices of the unchanged and transformed entries, and the permutation that interleaves them back."""
    b = unchanged_mask(cfg.shape, cfg.mask, cfg.parity).ravel()
    keep, trans = np.flatnonzero(b), np.flatnonzero(~b)
    return keep, trans, np.argsort(np.concatenate([keep, trans]))


# ----------------------------------------------------------------------------- conditioner

def _layer_sizes(cfg: CouplingConfig) -> list[tuple[int, int]]:
    """(in, out) of each layer of the conditioner."""
    if cfg.conditioner == "conv":
        first, last = cfg.input_channels, cfg.outputs_per_entry * cfg.shape[0]
    else:
        n_keep = int(unchanged_mask(cfg.shape, cfg.mask, cfg.parity).sum())
        n_trans = int(np.prod(cfg.shape)) - n_keep
        first, last = n_keep + cfg.context_dim, cfg.outputs_per_entry * n_trans
    widths = [first] + [cfg.hidden] * cfg.depth + [last]
    return list(zip(widths[:-1], widths[1:]))


def _dense(h: Any, weight: Any, bias: Any) -> Any:
    return anp.dot(weight, h) + bias


def conditioner(spec: FlowSpec, cfg: CouplingConfig, h: Any) -> Any:
    """The conditioner network on its input ``h`` (a flat vector for mlp, ``(C', H, W)`` for conv
    and attention, C' = C + context_channels)."""
    act = ACTIVATIONS[cfg.activation]
    if cfg.conditioner == "attention":
        return attention.attention_net(spec.params, h, cfg.blocks, cfg.heads, act)
    layer = _dense if cfg.conditioner == "mlp" else conv2d
    for i in range(cfg.depth + 1):
        h = layer(h, spec.params[f"net.{2 * i}.weight"], spec.params[f"net.{2 * i}.bias"])
        if i < cfg.depth:
            h = act(h)
    return h


def init_conditioner(cfg: CouplingConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The conditioner's generic random params for ``cfg``: weights N(0, 1/fan_in), biases N(0, 0.5²),
    the last layer included (the attention conditioner's: :func:`flowspec.reference.attention.init_params`)."""
    if cfg.conditioner == "attention":
        return attention.init_params(rng, cfg.input_channels, cfg.outputs_per_entry * cfg.shape[0], cfg.hidden,
                                     cfg.blocks)
    taps = KERNEL * KERNEL if cfg.conditioner == "conv" else 1
    params = {}
    for i, (n_in, n_out) in enumerate(_layer_sizes(cfg)):
        shape = (n_out, n_in, KERNEL, KERNEL) if cfg.conditioner == "conv" else (n_out, n_in)
        params[f"net.{2 * i}.weight"] = rng.normal(0.0, 1.0 / np.sqrt(n_in * taps), shape)
        params[f"net.{2 * i}.bias"] = rng.normal(0.0, 0.5, n_out)
    return params


# ----------------------------------------------------------------------------- coupling laws

Law = Callable[[Any, Any, CouplingConfig], Any]  # (transformed values, conditioner output, config) -> values


def _halves(h: Any) -> tuple[Any, Any]:
    n = anp.shape(h)[0] // 2
    return h[:n], h[n:]


def log_scale(h: Any, cfg: CouplingConfig) -> Any:
    """s = scale_factor · tanh(s_raw), from the first half of the conditioner output."""
    return cfg.scale_factor * tanh(_halves(h)[0])


def additive_law(x: Any, h: Any, cfg: CouplingConfig) -> Any:
    return x + h


def additive_inverse_law(z: Any, h: Any, cfg: CouplingConfig) -> Any:
    return z - h


def affine_law(x: Any, h: Any, cfg: CouplingConfig) -> Any:
    return x * anp.exp(log_scale(h, cfg)) + _halves(h)[1]


def affine_inverse_law(z: Any, h: Any, cfg: CouplingConfig) -> Any:
    return (z - _halves(h)[1]) * anp.exp(-log_scale(h, cfg))


def couple(spec: FlowSpec, cfg: CouplingConfig, x: Any, context: Any, law: Law) -> Any:
    """Apply ``law`` to the transformed part of one sample ``x``, conditioned on its unchanged part.

    Used in both directions: the unchanged part is the same in x and z, so the inverse is the same
    computation with the inverse law. The conditioner's input is ``b⊙x`` (image conditioners) or
    the unchanged entries (mlp), followed by the context: masking comes first, so no transformed
    entry reaches the conditioner.
    """
    if cfg.conditioner in IMAGE_CONDITIONERS:
        b = unchanged_mask(cfg.shape, cfg.mask, cfg.parity)
        return anp.where(b, x, law(x, conditioner(spec, cfg, _with_context(cfg, x * b, context)), cfg))
    keep, trans, perm = _split_indices(cfg)
    flat = anp.reshape(x, (-1,))
    inputs = _with_context(cfg, flat[keep], context)
    z = anp.concatenate([flat[keep], law(flat[trans], conditioner(spec, cfg, inputs), cfg)])[perm]
    return anp.reshape(z, cfg.shape)


def _with_context(cfg: CouplingConfig, inputs: Any, context: Any) -> Any:
    """The conditioner's input: ``inputs`` followed by the context (on the first axis: the channels
    of an image), if the layer takes one."""
    if cfg.context_shape is None:
        return inputs
    if context is None or anp.shape(context) != cfg.context_shape:
        raise FlowInputError(f"this coupling layer needs a context of shape {cfg.context_shape} per sample, "
                             f"got {None if context is None else anp.shape(context)}")
    return anp.concatenate([inputs, context], axis=0)



Parse = Callable[[Mapping[str, Any]], tuple[CouplingConfig, Any]]  # config -> (coupling config, law settings)
LawFor = Callable[[Any, bool], Law]  # (law settings, inverse) -> the law of that direction


def register_coupling_kind(name: str, family: str, parse: Parse, law_for: LawFor, summary: str,
                           extras: Mapping[str, Callable[..., Any]] | None = None,
                           defaults: Mapping[str, Any] | None = None) -> None:
    """Register a coupling kind: ``parse`` validates a config into the coupling's config and the
    law's own settings, ``law_for`` gives the law of either direction; masks, conditioner,
    parameters and context are the coupling machinery's (:func:`couple`, :func:`init_conditioner`)."""
    def run(spec: FlowSpec, x: Any, context: Any = None, inverse: bool = False) -> Any:
        cfg, settings = parse(spec.config)
        return couple(spec, cfg, x, context, law_for(settings, inverse))

    register(Kind(
        name=name, family=family,
        forward=run,
        inverse=lambda spec, z, context=None: run(spec, z, context, inverse=True),
        event_shape=lambda config: parse(config)[0].shape,
        init_params=lambda config, rng: init_conditioner(parse(config)[0], rng),
        context_shape=lambda config: parse(config)[0].context_shape,
        check_config=parse,
        extras=dict(extras or {}),
        defaults=dict(defaults or {}),
        summary=summary,
    ))


def _register(name: str, law: Law, inverse_law: Law, affine: bool, summary: str) -> None:
    register_coupling_kind(name, FAMILY, lambda config: (parse_config(config, affine), None),
                           lambda _, inverse: inverse_law if inverse else law, summary,
                           defaults=AFFINE_DEFAULTS if affine else DEFAULTS)


_register("additive_coupling", additive_law, additive_inverse_law, False,
          "NICE: z = b⊙x + (1−b)⊙(x + t(b⊙x)), log|det| = 0")
_register("affine_coupling", affine_law, affine_inverse_law, True,
          "RealNVP: z = b⊙x + (1−b)⊙(x⊙exp(s(b⊙x)) + t(b⊙x)), s = scale_factor·tanh(s_raw)")
