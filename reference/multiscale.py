"""Multi-scale composition with factored-out latents (RealNVP Sec. 3.6; Glow; Residual Flows App. E),
optionally with Glow's learned prior on every factored-out half.

A ``multiscale`` spec nests levels ``"0"``, ``"1"``, …, ``"L-1"`` (any flows on image events).
Level ``i`` maps the current tensor ``h`` of shape ``(C, H, W)`` to ``h'``; for every level but the
last, the **first** half of the channels of ``h'`` is factored out as latent ``z_i`` and the second
half is passed on to level ``i + 1``. The latent is the flat vector

    z = concat(flat(z_0), flat(z_1), …, flat(z_{L-2}), flat(h'_{L-1}))

(C-order flattening), so ``latent_shape`` is ``(D,)`` with D the input size, and
``log|det|`` is the sum of the levels' (the split is a permutation). :func:`multiscale_spec`
checks that the shapes chain and fills in the config.

**Learned-prior split** (``config["split_prior"] = True``; the default False keeps the plain split
above). Glow models the factored-out half z_out with a Gaussian whose mean and scale are computed
from the kept half h. Here, as everywhere in flowspec, that is a flow layer followed by the
standard normal: before split ``i`` the child ``"prior{i}"`` — an ``affine_coupling`` on level
``i``'s output shape with the ``channel`` mask and ``parity`` 1, so that it transforms the first
(factored-out) half conditioned on the second (kept) half, and takes no context — maps

    z′ = z_out·exp(s(h)) + t(h) = (z_out − μ(h))·exp(−log σ(h)),   log σ = −s,  μ = −t·exp(−s),

with the coupling kind's bounded scale s = scale_factor·tanh(s_raw) (not Glow's sigmoid(h + 2)),
and adds Σ s = −Σ log σ(h) to log|det| (survey eqs. 24–25 for the normalisation, eq. 39 for the
coupling); z′ is the latent ``z_i`` that meets N(0, I). Any conditioner the coupling kind has may
compute μ and log σ; Glow's is a zero-initialised convolution (``flowspec.accelerated.glow``). The
first half is factored out as without the prior (Glow's own code factors out the second): one
multi-scale convention for every model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import autograd.numpy as anp
import numpy as np

from flowspec import registry
from flowspec.errors import ConfigError
from flowspec.registry import Kind, register
from flowspec.spec import FlowSpec

from .core import forward_one, jacobian_one
from .coupling import parse_config as coupling_config
from .solve import inverse_one

FAMILY = "multiscale"
PRIOR_KIND = "affine_coupling"
CONFIG_KEYS = ("event_shape", "levels", "size", "split_prior")

Shapes = list[tuple[tuple[int, ...], tuple[int, ...]]]


def prior_name(i: int) -> str:
    """The params name of the learned prior of split ``i`` (after level ``i``)."""
    return f"prior{i}"


def check_prior(kind: str, config: Mapping[str, Any], shape: tuple[int, ...], i: int) -> None:
    """Raise :class:`ConfigError` unless a flow of ``kind`` and ``config`` is a learned prior for split
    ``i`` of a level with output ``shape``: an ``affine_coupling`` on ``shape`` that transforms the
    first (factored-out) half of the channels conditioned on the second (kept) half, without context."""
    where = f"the learned prior of split {i} ({prior_name(i)!r})"
    if kind != PRIOR_KIND:
        raise ConfigError(f"{where} must be an {PRIOR_KIND!r}, got kind {kind!r}")
    cfg = coupling_config(config, affine=True)
    if cfg.shape != tuple(shape):
        raise ConfigError(f"{where} must act on the level's output shape {tuple(shape)}, got shape {cfg.shape}")
    if (cfg.mask, cfg.parity) != ("channel", 1):
        raise ConfigError(f"{where} must use the channel mask with parity 1 (transform the factored-out first "
                          f"half, read the kept second half), got mask {cfg.mask!r} with parity {cfg.parity}")
    if registry.get(kind).context_of(config) is not None:
        raise ConfigError(f"{where} must take no context: the kept half is all it reads")


def level_shapes(levels: Sequence[FlowSpec]) -> Shapes:
    """(input shape, output shape) of every level, checking that each level's input is the previous
    level's output with half its channels."""
    shapes: Shapes = []
    for i, level in enumerate(levels):
        kind = registry.get(level.kind)
        shape_in, shape_out = tuple(kind.event_shape(level.config)), kind.output_shape(level.config)
        if len(shape_out) != 3:
            raise ConfigError(f"multi-scale level {i} must output images (C, H, W), got {shape_out}")
        if i < len(levels) - 1 and shape_out[0] % 2:
            raise ConfigError(f"multi-scale level {i} outputs {shape_out[0]} channels; a split needs an even number")
        if shapes:
            prev = shapes[-1][1]
            expected = (prev[0] // 2,) + prev[1:]
            if shape_in != expected:
                raise ConfigError(f"multi-scale level {i} takes {shape_in}, but level {i - 1} passes on {expected}")
        shapes.append((shape_in, shape_out))
    return shapes


def multiscale_spec(levels: Sequence[FlowSpec], priors: Sequence[FlowSpec] | None = None) -> FlowSpec:
    """Compose ``levels`` with a half-channel split after each level but the last; with ``priors``
    (one per split, see :func:`check_prior`) every split has the learned prior."""
    if not levels:
        raise ConfigError("a multi-scale flow needs at least one level")
    shapes = level_shapes(levels)
    if priors is not None and len(priors) != len(levels) - 1:
        raise ConfigError(f"a multi-scale flow of {len(levels)} levels has {len(levels) - 1} splits, "
                          f"so it needs that many learned priors, got {len(priors)}")
    for i, prior in enumerate(priors or ()):
        check_prior(prior.kind, prior.config, shapes[i][1], i)
    config = {"event_shape": list(shapes[0][0]), "levels": len(levels), "size": int(np.prod(shapes[0][0])),
              "split_prior": priors is not None}
    params = {str(i): level for i, level in enumerate(levels)}
    params.update({prior_name(i): prior for i, prior in enumerate(priors or ())})
    return FlowSpec("multiscale", config, params)


def check_config(config: Mapping[str, Any]) -> tuple[int, ...]:
    """Validate a multiscale config (the keys :func:`multiscale_spec` writes; ``split_prior`` may be
    left out, default False) and return the event shape; raises :class:`ConfigError` naming the key."""
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise ConfigError(f"unknown config keys {unknown} for a multiscale flow; known: {list(CONFIG_KEYS)}")
    for key in ("event_shape", "levels", "size"):
        if key not in config:
            raise ConfigError(f"a multiscale spec needs config[{key!r}]; build it with multiscale_spec()")
    shape = config["event_shape"]
    if not (isinstance(shape, (list, tuple)) and len(shape) == 3
            and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)):
        raise ConfigError(f"config['event_shape'] of a multiscale flow must be [C, H, W] of positive ints, "
                          f"got {shape!r}")
    levels = config["levels"]
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ConfigError(f"config['levels'] of a multiscale flow must be an int ≥ 1, got {levels!r}")
    if isinstance(config["size"], bool) or config["size"] != int(np.prod(shape)):
        raise ConfigError(f"config['size'] of a multiscale flow must be C·H·W = {int(np.prod(shape))} "
                          f"for event_shape {list(shape)}, got {config['size']!r}")
    if not isinstance(config.get("split_prior", False), bool):
        raise ConfigError(f"config['split_prior'] of a multiscale flow must be True or False, "
                          f"got {config['split_prior']!r}")
    return tuple(shape)


def has_split_prior(config: Mapping[str, Any]) -> bool:
    return bool(config.get("split_prior", False))


def children(spec: FlowSpec) -> tuple[list[FlowSpec], list[FlowSpec] | None]:
    """The levels and (with ``split_prior``) the learned priors of a multiscale spec, checked against
    its config: shapes chain, the event shape is level 0's, each prior fits its split."""
    event = check_config(spec.config)
    names = [str(i) for i in range(spec.config["levels"])]
    priors = [prior_name(i) for i in range(len(names) - 1)] if has_split_prior(spec.config) else []
    missing = [n for n in names + priors if not isinstance(spec.params.get(n), FlowSpec)]
    extra = sorted(set(spec.params) - set(names) - set(priors))
    if missing or extra:
        raise ConfigError(f"a multiscale spec with config {dict(spec.config)} has the children {names + priors}; "
                          f"missing {missing}, unexpected {extra}")
    levels = [spec.params[n] for n in names]
    shapes = level_shapes(levels)
    if shapes[0][0] != event:
        raise ConfigError(f"config['event_shape'] {list(event)} is not level 0's input shape {list(shapes[0][0])}")
    for i, name in enumerate(priors):
        check_prior(spec.params[name].kind, spec.params[name].config, shapes[i][1], i)
    return levels, [spec.params[n] for n in priors] if priors else None


def _halves(h: Any) -> tuple[Any, Any]:
    """(factored-out first half of the channels, kept second half)."""
    half = anp.shape(h)[0] // 2
    return h[:half], h[half:]


def multiscale_forward(spec: FlowSpec, x: Any, context: Any = None) -> Any:
    levels, priors = children(spec)
    latents, h = [], x
    for i, level in enumerate(levels):
        h = forward_one(level, h, None)
        if i < len(levels) - 1:
            if priors is not None:
                h = forward_one(priors[i], h, None)
            factored, h = _halves(h)
            latents.append(anp.reshape(factored, (-1,)))
    return anp.concatenate(latents + [anp.reshape(h, (-1,))])


def multiscale_inverse(spec: FlowSpec, z: Any, context: Any = None) -> Any:
    levels, priors = children(spec)
    shapes = level_shapes(levels)
    pieces, start = [], 0
    for i, (_, shape_out) in enumerate(shapes):
        factored = (shape_out[0] // 2,) + shape_out[1:] if i < len(levels) - 1 else shape_out
        n = int(np.prod(factored))
        pieces.append(np.reshape(z[start:start + n], factored))
        start += n
    h = pieces[-1]
    for i in range(len(levels) - 1, -1, -1):
        if i < len(levels) - 1:
            h = np.concatenate([pieces[i], h])
            if priors is not None:
                h = inverse_one(priors[i], h, None)
        h = inverse_one(levels[i], h, None)
    return h


# ----------------------------------------------------------------------------- the learned prior, split by split

@dataclass(frozen=True)
class Split:
    """One learned-prior split of one sample: what the prior reads and what it produces."""

    kept: np.ndarray  # h: the kept (second) half of the level's output, passed on to the next level
    factored: np.ndarray  # z_out: the factored-out (first) half before the prior
    latent: np.ndarray  # z′ = (z_out − μ(h))·exp(−log σ(h)): the split's latent z_i
    jacobian: np.ndarray  # ∂(prior output)/∂(level output), flattened: the prior alone
    logdet: float  # the prior's log|det| = −Σ log σ(h), by slogdet of that Jacobian


def split_terms(spec: FlowSpec, x: np.ndarray) -> list[Split]:
    """Every split of a multiscale spec with ``split_prior``, for one sample ``x``: the levels run as in
    :func:`multiscale_forward`, and at each split the prior's input halves, output and log|det|."""
    levels, priors = children(spec)
    if priors is None:
        raise ConfigError("split_terms needs a multiscale spec with config['split_prior'] = True")
    splits, h = [], np.asarray(x, dtype=np.float64)
    for i, level in enumerate(levels[:-1]):
        out = np.asarray(forward_one(level, h, None))
        jac = np.asarray(jacobian_one(priors[i], out))
        factored, kept = _halves(out)
        latent = _halves(np.asarray(forward_one(priors[i], out, None)))[0]
        splits.append(Split(kept, factored, latent, jac, float(np.linalg.slogdet(jac)[1])))
        h = kept
    return splits


def without_priors(spec: FlowSpec) -> FlowSpec:
    """The same levels with the plain split (no learned priors)."""
    return multiscale_spec(children(spec)[0])


def _no_params(config: Mapping[str, Any], rng: np.random.Generator) -> dict:
    raise ConfigError("multi-scale flows take their levels' params; build them with multiscale_spec()")


register(Kind(
    name="multiscale", family=FAMILY, forward=multiscale_forward, inverse=multiscale_inverse,
    event_shape=check_config, latent_shape=lambda config: (int(config["size"]),), init_params=_no_params,
    check_config=check_config, composite=True,
    summary="levels with half the channels factored out after each (optionally through a learned prior); flat latent",
    extras={"split_prior": lambda spec: spec},
))
