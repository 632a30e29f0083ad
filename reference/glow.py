"""Glow as a model (Kingma & Dhariwal 2018, Sec. 3 and Fig. 2; survey Sec. 6.3; lecture slides
"Glow: Generative Flow with 1x1 Convolutions"), built from the existing kinds.

``L`` levels; level ``i`` is a ``sequential`` of a 2×2 ``squeeze`` and ``K`` steps of flow, each
``actnorm`` → ``conv1x1_lu`` → an affine or additive coupling; after every level but the last the
multi-scale split factors out half of the channels through Glow's **learned prior**. The spec is the
one of a ``multiscale`` flow with ``split_prior`` (see :mod:`.multiscale`: the first half is factored
out, and the prior z′ = (z_out − μ(h))·exp(−log σ(h)) with log|det| = −Σ log σ is an affine coupling
of that half on the kept half h, followed by the standard normal) whose structure the config fixes:

* params ``"0"``, …, ``"L-1"``: the levels; level ``i`` acts on ``(C·2^i, H/2^i, W/2^i)`` and its
  steps on the squeezed ``(4C·2^i, H/2^(i+1), W/2^(i+1))``;
* params ``"prior0"``, …, ``"prior{L-2}"``: the learned priors, on each level's output;
* the config fixes every child's kind and config (:func:`level_layout`, :func:`prior_layout`); the
  map reads the children's parameters only, so a spec whose children's configs disagree with the
  config computes what the config says — :func:`check_structure` refuses such a spec, and the
  accelerated model checks it before loading;
* every coupling (steps and priors) uses the ``channel`` mask with ``parity`` 1 — it transforms the
  first half of the channels from a network of the second, as Glow's Table 1 writes the affine
  coupling (y_a = s ⊙ x_a + t with (log s, t) = NN(x_b)), which with the first half factored out
  mirrors Glow's code — and the ``conv`` conditioner: ``depth`` hidden 3×3 convolutions of
  ``hidden`` channels with ``activation``, then a 3×3 convolution to the law's outputs. The scale is
  the coupling kind's s = scale_factor·tanh(s_raw), not Glow's sigmoid(h + 2), in the steps'
  affine couplings and in the priors.

Config (every key but ``shape`` has a default, :data:`DEFAULTS`): ``shape`` ``[C, H, W]`` with H and
W divisible by 2^L; ``levels`` L ≥ 1; ``steps`` K ≥ 1; ``hidden`` ≥ 1; ``coupling`` ``"affine"`` or
``"additive"`` (the steps'; the priors are affine); ``depth`` ≥ 1; ``activation`` (``"relu"``, as
Glow, ``"tanh"`` or ``"elu"``); ``scale_factor`` > 0.

:func:`glow_params` draws every child's generic parameters (``init_params`` of its kind: random
actnorm parameters marked initialised, a random LU factorisation, random conditioner weights with a
non-zero last layer, so that every part of the map matters in a comparison). Glow's own
initialisation — data-dependent ActNorm, a random rotation's LU factors, zero last convolutions
that make every coupling and prior start as the identity — is the accelerated model's
(:func:`flowspec.accelerated.glow.make_model`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

from flowspec import registry
from flowspec.errors import ConfigError
from flowspec.registry import Kind, int_at_least, one_of, register
from flowspec.spec import FlowSpec

from .core import init_spec
from .coupling import ACTIVATIONS
from .multiscale import multiscale_forward, multiscale_inverse, prior_name
from .sequential import sequential_spec

FAMILY = "glow"
_WHAT = "a glow model"
COUPLINGS = ("affine", "additive")
DEFAULTS: dict[str, Any] = {
    "levels": 3, "steps": 4, "hidden": 32, "coupling": "affine", "depth": 2, "activation": "relu",
    "scale_factor": 1.0,
}

Layout = list[tuple[str, dict[str, Any]]]  # (kind, config) of each child, in order


@dataclass(frozen=True)
class GlowConfig:
    """A validated glow configuration (see the module docstring)."""

    shape: tuple[int, int, int]
    levels: int
    steps: int
    hidden: int
    coupling: str
    depth: int
    activation: str
    scale_factor: float

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shape": list(self.shape)}

    def level_input(self, i: int) -> tuple[int, int, int]:
        """Level ``i``'s input shape (C·2^i, H/2^i, W/2^i)."""
        c, h, w = self.shape
        return c * 2 ** i, h // 2 ** i, w // 2 ** i

    def level_output(self, i: int) -> tuple[int, int, int]:
        """Level ``i``'s output, the squeezed shape its steps act on."""
        c, h, w = self.level_input(i)
        return 4 * c, h // 2, w // 2

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))




def _shape(value: Any, levels: int) -> tuple[int, int, int]:
    shape = tuple(value) if isinstance(value, (list, tuple)) else ()
    if len(shape) != 3 or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
        raise ConfigError(f"config['shape'] of a glow model must be [C, H, W] of positive ints, got {value!r}")
    if shape[1] % 2 ** levels or shape[2] % 2 ** levels:
        raise ConfigError(f"config['shape'] {list(shape)}: {levels} levels squeeze H and W {levels} times, "
                          f"so both must be divisible by 2^{levels} = {2 ** levels} (config['levels'])")
    return shape


def parse_config(config: Mapping[str, Any]) -> GlowConfig:
    """Fill in :data:`DEFAULTS` and validate; raises :class:`ConfigError` naming the bad entry."""
    unknown = sorted(set(config) - set(DEFAULTS) - {"shape"})
    if unknown:
        raise ConfigError(f"unknown config keys {unknown} for a glow model; known: {['shape', *DEFAULTS]}")
    if "shape" not in config:
        raise ConfigError("a glow model needs config['shape'] ([C, H, W])")
    full = {**DEFAULTS, **config}
    levels = int_at_least(full, "levels", 1, _WHAT)
    scale = full["scale_factor"]
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0.0 < scale < np.inf:
        raise ConfigError(f"config['scale_factor'] of a glow model must be a finite number > 0, got {scale!r}")
    return GlowConfig(
        shape=_shape(full["shape"], levels), levels=levels, steps=int_at_least(full, "steps", 1, _WHAT),
        hidden=int_at_least(full, "hidden", 1, _WHAT), coupling=one_of(full, "coupling", COUPLINGS, _WHAT),
        depth=int_at_least(full, "depth", 1, _WHAT), activation=one_of(full, "activation", tuple(ACTIVATIONS), _WHAT),
        scale_factor=float(scale),
    )


# ----------------------------------------------------------------------------- structure

def _coupling_config(cfg: GlowConfig, shape: tuple[int, int, int], affine: bool) -> dict[str, Any]:
    config = {"shape": list(shape), "mask": "channel", "parity": 1, "conditioner": "conv", "hidden": cfg.hidden,
              "depth": cfg.depth, "activation": cfg.activation}
    return {**config, "scale_factor": cfg.scale_factor} if affine else config


def level_layout(cfg: GlowConfig, i: int) -> Layout:
    """The children of level ``i``'s ``sequential``: squeeze, then K × (actnorm, conv1x1_lu, coupling)."""
    c, h, w = cfg.level_input(i)
    out = cfg.level_output(i)
    image = {"channels": out[0], "height": out[1], "width": out[2]}
    step = [("actnorm", {"shape": list(out)}), ("conv1x1_lu", image),
            (f"{cfg.coupling}_coupling", _coupling_config(cfg, out, cfg.coupling == "affine"))]
    return [("squeeze", {"channels": c, "height": h, "width": w})] + step * cfg.steps


def prior_layout(cfg: GlowConfig, i: int) -> tuple[str, dict[str, Any]]:
    """The learned prior of split ``i``: an affine coupling on level ``i``'s output."""
    return "affine_coupling", _coupling_config(cfg, cfg.level_output(i), affine=True)


Leaf = tuple[str, Any, str, dict[str, Any]]  # (where, the spec's child, its kind and config by the layout)


def _leaves(spec: FlowSpec, cfg: GlowConfig) -> list[Leaf]:
    """Every child of every level and every prior, with the kind and config the layout gives it;
    raises :class:`ConfigError` where the params' names or the levels' lengths are not the layout's."""
    names = [str(i) for i in range(cfg.levels)] + [prior_name(i) for i in range(cfg.levels - 1)]
    if sorted(spec.params) != sorted(names):
        raise ConfigError(f"a glow spec with {cfg.levels} levels has the params {names}, got {sorted(spec.params)}")
    leaves = []
    for i in range(cfg.levels):
        level, layout = spec.params[str(i)], level_layout(cfg, i)
        if not (isinstance(level, FlowSpec) and level.kind == "sequential" and len(level.params) == len(layout)):
            raise ConfigError(f"level {i} of this glow spec must be a sequential of {len(layout)} children "
                              f"(squeeze and {cfg.steps} steps of actnorm, conv1x1_lu, coupling)")
        leaves += [(f"child {j} of level {i}", level.params.get(str(j)), kind, c) for j, (kind, c) in enumerate(layout)]
    leaves += [(f"the prior {prior_name(i)!r}", spec.params[prior_name(i)], *prior_layout(cfg, i))
               for i in range(cfg.levels - 1)]
    for where, child, kind, _ in leaves:
        if not isinstance(child, FlowSpec) or child.kind != kind:
            got = child.kind if isinstance(child, FlowSpec) else type(child).__name__
            raise ConfigError(f"{where} of this glow spec must be a {kind!r} flow, got {got!r}")
    return leaves


def check_structure(spec: FlowSpec) -> GlowConfig:
    """Raise :class:`ConfigError` unless ``spec``'s children are those its config describes: names,
    kinds and configs (compared as their kinds validate them, defaults filled in). The reference's
    map reads only the children's parameters (:func:`multiscale_view`); implementations that build
    a glow flow from its config check a spec with this before loading it."""
    cfg = parse_config(spec.config)
    for where, child, kind, config in _leaves(spec, cfg):
        check = registry.get(kind).check_config
        if check(child.config) != check(config):
            raise ConfigError(f"{where} of this glow spec has the config {dict(child.config)}, but the glow config "
                              f"{dict(spec.config)} makes it {dict(config)}")
    return cfg


def multiscale_view(spec: FlowSpec) -> FlowSpec:
    """The ``multiscale`` spec (with ``split_prior``) that a glow spec computes: its children's
    parameters in the kinds and configs that the glow config gives them (the config fixes the
    structure; the children's own configs are descriptive and not read, see :func:`check_structure`)."""
    cfg = parse_config(spec.config)
    rebuilt = iter([FlowSpec.unchecked(kind, config, child.params) for _, child, kind, config in _leaves(spec, cfg)])
    params: dict[str, FlowSpec] = {}
    for i in range(cfg.levels):
        shapes = {"event_shape": list(cfg.level_input(i)), "latent_shape": list(cfg.level_output(i))}
        children = {str(j): next(rebuilt) for j in range(len(level_layout(cfg, i)))}
        params[str(i)] = FlowSpec.unchecked("sequential", shapes, children)
    params.update({prior_name(i): next(rebuilt) for i in range(cfg.levels - 1)})
    config = {"event_shape": list(cfg.shape), "levels": cfg.levels, "size": cfg.size, "split_prior": True}
    return FlowSpec.unchecked("multiscale", config, params)


def glow_forward(spec: FlowSpec, x: Any, context: Any = None) -> Any:
    """The multi-scale forward of :func:`multiscale_view` (levels, learned priors, flat latent)."""
    return multiscale_forward(multiscale_view(spec), x)


def glow_inverse(spec: FlowSpec, z: Any, context: Any = None) -> Any:
    return multiscale_inverse(multiscale_view(spec), z)


def glow_params(config: Mapping[str, Any], rng: np.random.Generator) -> dict[str, FlowSpec]:
    """Every child with its kind's generic random parameters (module docstring)."""
    cfg = parse_config(config)
    params: dict[str, FlowSpec] = {
        str(i): sequential_spec([init_spec(kind, c, rng) for kind, c in level_layout(cfg, i)])
        for i in range(cfg.levels)
    }
    params.update({prior_name(i): init_spec(*prior_layout(cfg, i), rng) for i in range(cfg.levels - 1)})
    return params


# Not ``composite``: the config fixes every child's kind and config, so a glow flow can be built from
# its config alone (black-box mode instantiates it), while its params nest the children's specs.
register(Kind(
    name="glow", family=FAMILY, forward=glow_forward, inverse=glow_inverse,
    event_shape=lambda config: parse_config(config).shape,
    latent_shape=lambda config: (parse_config(config).size,),
    init_params=glow_params, check_config=parse_config,
    summary="Glow: L levels of squeeze and K × (actnorm, conv1x1_lu, coupling), learned-prior splits; flat latent",
    extras={"split_prior": multiscale_view}, defaults=DEFAULTS,
))
