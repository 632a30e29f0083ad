"""Convolutional autoregressive flows: PixelCNN-masked images and WaveNet-style causal sequences.

Both kinds map data to latent in ONE network pass (the conditioner reads x and gives every entry's
transform parameters at once, as in MAF, Papamakarios et al. 2017 eq. 3-4) and invert by sequential
passes, one per autoregressive step:

``pixelcnn_autoregressive`` (event ``(C, H, W)``)
    van den Oord et al. 2016, "Pixel Recurrent Neural Networks", Sec. 3.4 masked convolutions, and
    "Conditional Image Generation with PixelCNN Decoders". Order: raster over pixels (rows top to
    bottom, each row left to right), then channel within a pixel: entry ``(c, r, s)`` has position
    ``(r·W + s)·C + c`` (as ``quar_conv``). The conditioner is ``depth + 1`` masked convolutions
    (kernel ``kernel_size``, odd, zero padding) with the activation between them; channels are split
    into ``C`` groups, channel ``u`` of a layer in group ``u mod C`` (input: channel c is group c).
    Every kernel reads the rows above the centre and the taps left of it in full; at the centre tap
    a unit of group ``g_out`` reads group ``g_in`` iff ``g_in < g_out`` (mask type A, the first
    layer) or ``g_in ≤ g_out`` (type B, every later layer). So the parameters of entry (c, r, s)
    depend on the earlier pixels and on channels < c of its own pixel only. (``quar_conv``'s
    ``kernel_mask`` is type B in every layer, so it does not fit: the builder is
    :func:`pixel_mask`.) The receptive field has PixelCNN's blind spot: d rows up it reaches at most
    ``d·(kernel_size // 2)`` columns to the right, at any depth (pixel (r − 1, s + 2) is never read
    with 3×3 kernels although the order allows it), so only "forbidden" structure is declared, no
    "required" one. Hidden layers have ``hidden_channels · C`` channels (``hidden_channels`` is the
    number of channels PER GROUP); the last layer has ``k · C``. Inverse: ``H·W·C`` sequential
    network passes (one per entry, in the order above).

``causal_autoregressive`` (event ``(C, T)``)
    WaveNet, van den Oord et al. 2016, Sec. 2.1 causal dilated convolutions. The conditioner reads
    the input SHIFTED by one step, ``x̃[:, t] = x[:, t − 1]`` (``x̃[:, 0] = 0``: pad left by one,
    drop the last), through ``depth + 1`` causal 1-D convolutions (kernel ``kernel_size``, dilation
    ``2^i`` in layer ``i``, left zero padding ``(kernel_size − 1)·2^i``, so output t reads inputs ≤
    t) with the activation between them; hidden layers have ``hidden_channels`` channels, the last
    ``k · C``. Hence the parameters at time t depend on ``x_<t`` (every channel) only and all ``C``
    channels of step t are transformed together: ``∂z_{c,t}/∂x_{c',t} = 0`` for ``c' ≠ c``.
    Receptive field: ``1 + (kernel_size − 1)(2^{depth+1} − 1)`` steps of the shifted input. Inverse:
    ``T`` sequential network passes (each gives a whole step).

Transforms (``transform``), per entry, from the network output ``h`` in blocks of ``C`` channels
(output channel ``j·C + c`` is parameter j of input channel c):

* ``"affine"`` (k = 2: the μ block then the α̃ block): ``z = (x − μ)·exp(−α)`` (MAF eq. 4),
  ``log|det| = −Σ α``, with the log-scale bounded as in ``affine_coupling``:
  ``α = scale_factor · tanh(α̃)`` (config ``scale_factor`` > 0, default 1, affine only). MAF's α is
  unbounded; bounded, a conditioner whose output grows with |x| (ReLU, ELU) cannot overflow
  ``exp(−α)`` at large inputs (float32 overflowed at |x| ≈ 200 without the bound);
* ``"spline"`` (k = 3K − 1): the rational-quadratic spline of Durkan et al. 2019 (eqs. 4-6; identity
  outside ``[−B, B]``) from :mod:`.spline`, with its config keys ``bins``, ``bound``,
  ``min_width``, ``min_height``, ``min_derivative`` (refused with the affine transform, as
  ``scale_factor`` is with the spline).

Canonical parameters: ``net.{2i}.weight`` (dense, UNMASKED: the kind multiplies by the mask, so a
mask error shows; pixelcnn ``(out, in, k, k)``, causal ``(out, in, k)``) and ``net.{2i}.bias``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import autograd.numpy as anp
import numpy as np

from flowspec.errors import ConfigError
from flowspec.registry import Kind, register
from flowspec.spec import FlowSpec

from .conv import conv2d
from .coupling import ACTIVATIONS
from .lipschitz import tanh
from .spline import SPLINE_DEFAULTS, SplineConfig, parse_spline, rational_quadratic

FAMILY = "conv_autoregressive"
TRANSFORMS = ("affine", "spline")
COMMON_DEFAULTS: dict[str, Any] = {"transform": "affine", "hidden_channels": 4, "depth": 1, "activation": "tanh"}
KERNEL_DEFAULTS = {"pixelcnn_autoregressive": 3, "causal_autoregressive": 2}
RANKS = {"pixelcnn_autoregressive": 3, "causal_autoregressive": 2}


@dataclass(frozen=True)
class ConvARConfig:
    """A validated configuration of either kind (see the module docstring)."""

    kind: str
    shape: tuple[int, ...]
    transform: str
    hidden_channels: int
    depth: int
    kernel_size: int
    activation: str
    scale_factor: float | None  # the affine log-scale bound, None for the spline
    spline: SplineConfig | None  # None for the affine transform

    @property
    def channels(self) -> int:
        return self.shape[0]

    @property
    def outputs_per_entry(self) -> int:
        """k: 2 (μ, α) for affine, 3K − 1 for the spline."""
        return 2 if self.spline is None else self.spline.params_per_entry


AFFINE_DEFAULTS: dict[str, Any] = {"scale_factor": 1.0}


def defaults(kind: str) -> dict[str, Any]:
    """Every key but ``shape`` and the transform's own keys (:data:`AFFINE_DEFAULTS`,
    ``SPLINE_DEFAULTS``) with its default."""
    return {**COMMON_DEFAULTS, "kernel_size": KERNEL_DEFAULTS[kind]}


def _transform_keys(config: Mapping[str, Any], kind: str, transform: str) -> dict[str, Any]:
    """The given keys of ``transform``; keys of the other transform are refused."""
    own, other = (AFFINE_DEFAULTS, SPLINE_DEFAULTS) if transform == "affine" else (SPLINE_DEFAULTS, AFFINE_DEFAULTS)
    foreign = sorted(k for k in config if k in other)
    if foreign:
        raise ConfigError(f"config keys {foreign} of {kind} do not apply to config['transform'] = {transform!r}")
    return {k: v for k, v in config.items() if k in own}


def _scale_factor(keys: Mapping[str, Any], kind: str) -> float:
    value = {**AFFINE_DEFAULTS, **keys}["scale_factor"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < np.inf:
        raise ConfigError(f"config['scale_factor'] of {kind} must be a finite number > 0, got {value!r}")
    return float(value)


def _int_at_least(config: Mapping[str, Any], key: str, low: int, kind: str) -> int:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"config[{key!r}] of {kind} must be an int ≥ {low}, got {value!r}")
    return value


def _shape(config: Mapping[str, Any], kind: str) -> tuple[int, ...]:
    value = config.get("shape")
    shape = tuple(value) if isinstance(value, (list, tuple)) else ()
    rank = RANKS[kind]
    if len(shape) != rank or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
        layout = "[C, H, W]" if rank == 3 else "[C, T]"
        raise ConfigError(f"config['shape'] of {kind} must be {layout} of positive ints, got {value!r}")
    return shape


def parse_config(config: Mapping[str, Any], kind: str) -> ConvARConfig:
    """Fill in the defaults and validate; raises :class:`ConfigError` naming the bad key."""
    known = {"shape", *defaults(kind), *AFFINE_DEFAULTS, *SPLINE_DEFAULTS}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ConfigError(f"unknown config keys {unknown} for {kind}; known: {sorted(known)}")
    full = {**defaults(kind), **config}
    if full["transform"] not in TRANSFORMS:
        raise ConfigError(f"config['transform'] of {kind} must be one of {list(TRANSFORMS)}, got {full['transform']!r}")
    affine = full["transform"] == "affine"
    keys = _transform_keys(config, kind, full["transform"])
    if full["activation"] not in ACTIVATIONS:
        raise ConfigError(f"config['activation'] of {kind} must be one of {sorted(ACTIVATIONS)}, "
                          f"got {full['activation']!r}")
    kernel_size = _int_at_least(full, "kernel_size", 1, kind)
    if kind == "pixelcnn_autoregressive" and kernel_size % 2 == 0:
        raise ConfigError(f"config['kernel_size'] of {kind} must be odd (a centred tap), got {kernel_size}")
    return ConvARConfig(
        kind=kind, shape=_shape(full, kind), transform=full["transform"],
        hidden_channels=_int_at_least(full, "hidden_channels", 1, kind), depth=_int_at_least(full, "depth", 1, kind),
        kernel_size=kernel_size, activation=full["activation"],
        scale_factor=_scale_factor(keys, kind) if affine else None, spline=None if affine else parse_spline(keys),
    )


# ----------------------------------------------------------------------------- orders

def order(config: Mapping[str, Any], kind: str) -> np.ndarray:
    """C-order flat indices in autoregressive order (pixelcnn: raster then channel; causal: time
    then channel)."""
    shape = parse_config(config, kind).shape
    flat = np.arange(int(np.prod(shape))).reshape(shape)
    return np.moveaxis(flat, 0, -1).ravel()


def pixelcnn_forbidden(config: Mapping[str, Any]) -> np.ndarray:
    """``[i, j]`` True where ``∂z_i/∂x_j`` must be 0: ``rank[j] > rank[i]`` (raster, then channel)."""
    position = order(config, "pixelcnn_autoregressive")
    rank = np.empty_like(position)
    rank[position] = np.arange(len(position))
    return rank[None, :] > rank[:, None]


def causal_forbidden(config: Mapping[str, Any]) -> np.ndarray:
    """``[i, j]`` True where ``∂z_i/∂x_j`` must be 0: ``t_j > t_i``, or ``t_j = t_i`` and ``c_j ≠ c_i``."""
    channels, steps = parse_config(config, "causal_autoregressive").shape
    c, t = np.divmod(np.arange(channels * steps), steps)
    same_step_other_channel = (t[None, :] == t[:, None]) & (c[None, :] != c[:, None])
    return (t[None, :] > t[:, None]) | same_step_other_channel


# ----------------------------------------------------------------------------- masks

def channel_rule(g_in: np.ndarray, g_out: np.ndarray, mask_type: str) -> np.ndarray:
    """Centre-tap connectivity: type A ``g_in < g_out`` (excludes the entry's own channel), type B
    ``g_in ≤ g_out``."""
    return g_in < g_out if mask_type == "A" else g_in <= g_out


def pixel_mask(groups: int, n_out: int, n_in: int, size: int, mask_type: str) -> np.ndarray:
    """``(n_out, n_in, size, size)`` 0/1 PixelCNN mask: rows above the centre and taps left of it in
    full, :func:`channel_rule` at the centre tap; unit ``u`` of a layer is in group ``u mod groups``."""
    c = size // 2
    mask = np.zeros((n_out, n_in, size, size))
    mask[:, :, :c, :] = 1.0
    mask[:, :, c, :c] = 1.0
    mask[:, :, c, c] = channel_rule(np.arange(n_in)[None, :] % groups, np.arange(n_out)[:, None] % groups, mask_type)
    return mask


def layer_sizes(cfg: ConvARConfig) -> list[tuple[int, int]]:
    """(in, out) channels of each conditioner layer."""
    hidden = cfg.hidden_channels * (cfg.channels if cfg.kind == "pixelcnn_autoregressive" else 1)
    widths = [cfg.channels] + [hidden] * cfg.depth + [cfg.outputs_per_entry * cfg.channels]
    return list(zip(widths[:-1], widths[1:]))


def masks(config: Mapping[str, Any]) -> list[np.ndarray]:
    """The pixelcnn conditioner's masks: type A for the first layer, type B for the others."""
    cfg = parse_config(config, "pixelcnn_autoregressive")
    return [pixel_mask(cfg.channels, n_out, n_in, cfg.kernel_size, "A" if i == 0 else "B")
            for i, (n_in, n_out) in enumerate(layer_sizes(cfg))]


# ----------------------------------------------------------------------------- conditioners

def causal_conv1d(x: Any, weight: Any, bias: Any, dilation: int) -> Any:
    """``y[o, t] = bias[o] + Σ_{c,j} weight[o, c, j] · x[c, t − (k − 1 − j)·dilation]`` (zero for a
    negative time): ``torch.nn.functional.conv1d`` on ``x`` left-padded by ``(k − 1)·dilation``."""
    _, c_in, k = np.shape(weight)
    steps = np.shape(x)[-1]
    padded = anp.concatenate([np.zeros((c_in, (k - 1) * dilation)), x], axis=-1)
    out = 0.0
    for j in range(k):
        out = out + anp.dot(weight[:, :, j], padded[:, j * dilation:j * dilation + steps])
    return out + anp.reshape(bias, (-1, 1))


def shift(x: Any) -> Any:
    """``x̃[:, t] = x[:, t − 1]``, ``x̃[:, 0] = 0``: pad left by one step, drop the last."""
    return anp.concatenate([np.zeros((np.shape(x)[0], 1)), x[:, :-1]], axis=-1)


def conditioner(spec: FlowSpec, cfg: ConvARConfig, x: Any) -> Any:
    """The network output ``h`` of one sample, ``(k·C, *spatial)``."""
    act = ACTIVATIONS[cfg.activation]
    pixel = cfg.kind == "pixelcnn_autoregressive"
    layer_masks = masks(spec.config) if pixel else None
    h = x if pixel else shift(x)
    for i in range(cfg.depth + 1):
        weight, bias = spec.params[f"net.{2 * i}.weight"], spec.params[f"net.{2 * i}.bias"]
        h = conv2d(h, weight * layer_masks[i], bias) if pixel else causal_conv1d(h, weight, bias, 2 ** i)
        if i < cfg.depth:
            h = act(h)
    return h


def init_params(config: Mapping[str, Any], rng: np.random.Generator, kind: str) -> dict[str, np.ndarray]:
    """Weights N(0, 1/fan_in) with the fan-in counted through the mask (pixelcnn) and biases
    N(0, 0.5²), the last layer included, so that every entry's transform is generic."""
    cfg = parse_config(config, kind)
    layer_masks = masks(config) if kind == "pixelcnn_autoregressive" else None
    params = {}
    for i, (n_in, n_out) in enumerate(layer_sizes(cfg)):
        taps = (cfg.kernel_size,) * (RANKS[kind] - 1)
        fan_in = (layer_masks[i].reshape(n_out, -1).sum(axis=1) if layer_masks
                  else np.full(n_out, n_in * cfg.kernel_size))
        scale = (1.0 / np.sqrt(np.maximum(fan_in, 1.0))).reshape((-1,) + (1,) * (len(taps) + 1))
        params[f"net.{2 * i}.weight"] = rng.standard_normal((n_out, n_in) + taps) * scale
        params[f"net.{2 * i}.bias"] = rng.normal(0.0, 0.5, n_out)
    return params


# ----------------------------------------------------------------------------- transforms

def entry_params(h: Any, cfg: ConvARConfig) -> Any:
    """``(C, *spatial, k)``: parameter j of entry (c, …) is output channel ``j·C + c``."""
    blocks = anp.reshape(h, (cfg.outputs_per_entry,) + cfg.shape)
    return anp.moveaxis(blocks, 0, -1)


def transform(values: Any, h: Any, cfg: ConvARConfig, inverse: bool) -> Any:
    """The per-entry map of every entry of ``values`` given the network output ``h`` (forward: x → z;
    ``inverse``: z → x)."""
    params = entry_params(h, cfg)
    if cfg.spline is None:
        mu, alpha = params[..., 0], cfg.scale_factor * tanh(params[..., 1])
        return values * anp.exp(alpha) + mu if inverse else (values - mu) * anp.exp(-alpha)
    return rational_quadratic(values, params, **cfg.spline.kernel_args(), inverse=inverse)[0]


def forward(spec: FlowSpec, x: Any, context: Any = None) -> Any:
    """``z`` of one sample: one conditioner pass, then every entry's transform."""
    cfg = parse_config(spec.config, spec.kind)
    return transform(x, conditioner(spec, cfg, x), cfg, inverse=False)


def inverse(spec: FlowSpec, z: Any, context: Any = None) -> np.ndarray:
    """``x`` of one sample by sequential passes: entry by entry in the order (pixelcnn, ``H·W·C``
    passes) or step by step (causal, ``T`` passes); each pass fixes the entries whose parameters
    depend only on those already fixed."""
    cfg = parse_config(spec.config, spec.kind)
    z = np.asarray(z, dtype=np.float64)
    x = np.zeros_like(z)
    steps = order(spec.config, spec.kind) if cfg.kind == "pixelcnn_autoregressive" else range(cfg.shape[1])
    for step in steps:
        solved = np.asarray(transform(z, conditioner(spec, cfg, x), cfg, inverse=True))
        if cfg.kind == "pixelcnn_autoregressive":
            x.flat[step] = solved.flat[step]
        else:
            x[:, step] = solved[:, step]
    return x


def _register(name: str, forbidden: Any, summary: str) -> None:
    register(Kind(
        name=name, family=FAMILY, forward=forward, inverse=inverse,
        event_shape=lambda config: parse_config(config, name).shape,
        init_params=lambda config, rng: init_params(config, rng, name),
        check_config=lambda config: parse_config(config, name),
        extras={"order": lambda config: order(config, name), "forbidden": forbidden},
        summary=summary,
    ))


_register("pixelcnn_autoregressive", pixelcnn_forbidden,
          "PixelCNN-masked conv conditioner (types A/B, raster then channel order), affine or spline per entry")
_register("causal_autoregressive", causal_forbidden,
          "WaveNet causal dilated 1-D convs on the one-step-shifted input, affine or spline per time step")
