"""Training presets for ``flowspec train``: model sizes (overrides of the builders of
:mod:`flowspec.accelerated.models`) and training settings per kind of data.

A :class:`Preset` names a builder, which data it takes (``"vector"``: events ``(D,)``; ``"image"``:
``(C, H, W)``; images given to a vector-only preset that has ``flatten_images`` are flattened to
``(C·H·W,)``), the builder's keyword sizes for vectors and for images, and the training settings
(:data:`TRAINING` fields) for each. Everything can be overridden: the model sizes by
``model_options`` (``--set key=value`` or a config file's ``[model]`` table), the training settings
by the :class:`~flowspec.accelerated.trainer.Settings` given.

``flowpp`` is not a builder of :mod:`~flowspec.accelerated.models` (Flow++'s model comes with its
variational dequantizer); :func:`flowpp` builds it here from the logistic-mixture couplings, the
self-attention conditioner and :class:`~flowspec.accelerated.dequantizer.Dequantizer`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from flowspec.errors import ConfigError

TRAINING = ("steps", "batch_size", "lr", "warmup", "clip", "ema", "eval_every", "eval_size", "dequantization")
"""The training settings a preset fixes for each kind of data."""

_VECTOR = {"steps": 2000, "batch_size": 256, "lr": 2e-3, "warmup": 100, "clip": 10.0, "ema": 0.99,
           "eval_every": 500, "eval_size": 2000, "dequantization": "uniform"}
_IMAGE = {"steps": 1000, "batch_size": 64, "lr": 1e-3, "warmup": 100, "clip": 10.0, "ema": 0.99,
          "eval_every": 250, "eval_size": 2000, "dequantization": "uniform"}


@dataclass(frozen=True)
class Preset:
    """A builder with model sizes and training settings for vector and image data (module docstring)."""

    name: str
    builder: str
    takes: tuple[str, ...]
    summary: str
    vector: dict[str, Any] = field(default_factory=dict)
    image: dict[str, Any] = field(default_factory=dict)
    vector_training: dict[str, Any] = field(default_factory=dict)
    image_training: dict[str, Any] = field(default_factory=dict)
    flatten_images: bool = False

    def kind_of(self, event_shape: tuple[int, ...]) -> str:
        """``"vector"`` or ``"image"``: how this preset treats data of ``event_shape``; refuses data it does not take."""
        kind = "image" if len(event_shape) == 3 else "vector" if len(event_shape) == 1 else None
        if kind is None:
            raise ConfigError(f"data of event shape {event_shape} is neither vectors (D,) nor images (C, H, W)")
        if kind == "image" and "image" not in self.takes and self.flatten_images:
            return "flat"
        if kind not in self.takes:
            raise ConfigError(f"model {self.name!r} takes {' and '.join(self.takes)} data only, and the data "
                              f"has event shape {event_shape} ({kind}s); {self.summary}")
        return kind

    def training(self, kind: str) -> dict[str, Any]:
        """The training settings for data of ``kind`` (:data:`TRAINING`)."""
        if kind == "vector":
            return {**_VECTOR, **self.vector_training}
        return {**_IMAGE, **self.image_training}

    def sizes(self, kind: str) -> dict[str, Any]:
        """The builder's keyword sizes for data of ``kind``."""
        return dict(self.vector if kind in ("vector", "flat") else self.image)


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("realnvp", "realnvp", ("vector", "image"), "RealNVP affine couplings",
           vector={"layers": 8, "hidden": 64}, image={"layers": 2, "hidden": 32}),
    Preset("glow", "glow", ("image",), "Glow is an image model (C, H, W)",
           image={"levels": 2, "layers": 4, "hidden": 32}),
    Preset("maf", "maf", ("vector",), "MAF is a vector model (images are flattened)",
           vector={"layers": 5, "hidden": 64}, flatten_images=True,
           image_training={"lr": 1e-3}),
    Preset("nsf", "nsf", ("vector",), "NSF (spline couplings) is a vector model (images are flattened)",
           vector={"layers": 4, "hidden": 64}, flatten_images=True),
    Preset("residual", "residual", ("vector", "image"), "Residual Flows (App. E architecture)",
           vector={"layers": 4, "hidden_factor": 16}, image={"layers": 2, "hidden_factor": 8},
           vector_training={"steps": 1000}, image_training={"steps": 400}),
    Preset("quar", "quar", ("vector", "image"), "QuAR flows (App. A architecture)",
           vector={"layers": 4, "hidden_factor": 16}, image={"layers": 2, "hidden_factor": 8},
           vector_training={"steps": 1000}, image_training={"steps": 400}),
    Preset("flowpp", "flowpp", ("image",), "Flow++ is an image model with variational dequantization",
           image={"couplings": 4, "components": 4, "hidden": 16, "blocks": 1, "heads": 2,
                  "dequantizer_couplings": 2, "dequantizer_hidden": 16},
           image_training={"dequantization": "variational", "steps": 400}),
    Preset("planar", "planar", ("vector",), "planar flows are stacks for 2-D densities (vectors only)",
           vector={"layers": 16}, vector_training={"lr": 5e-3}),
    Preset("radial", "radial", ("vector",), "radial flows are stacks for 2-D densities (vectors only)",
           vector={"layers": 16}, vector_training={"lr": 5e-3}),
)}


def get(name: str) -> Preset:
    """The preset ``name``; :class:`ConfigError` listing the valid names otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; valid: {', '.join(PRESETS)}") from None


def describe() -> str:
    """One line per preset: name, data it takes, sizes."""
    lines = []
    for p in PRESETS.values():
        sizes = "; ".join(f"{k}: {v}" for k, v in (("vectors", p.vector), ("images", p.image)) if v)
        lines.append(f"{p.name:<9} {'/'.join(p.takes):<13} {sizes}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- building

def build(preset: Preset, event_shape: tuple[int, ...], options: dict[str, Any], *,
          dtype: torch.dtype, device: Any) -> tuple[nn.Module, nn.Module | None]:
    """The model for data of ``event_shape`` (flattened for ``"flat"`` presets) and, for
    ``flowpp``, its dequantizer (else ``None``); sizes are the preset's with ``options`` on top."""
    kind = preset.kind_of(event_shape)
    shape = (math.prod(event_shape),) if kind == "flat" else tuple(event_shape)
    sizes = {**preset.sizes(kind), **options}
    if preset.builder == "flowpp":
        model, dequantizer = flowpp(shape, **sizes)
        return model.to(dtype=dtype, device=device), dequantizer.to(dtype=dtype, device=device)
    from . import models

    event = shape[0] if len(shape) == 1 else shape
    return models.build(preset.builder, event, **sizes).to(dtype=dtype, device=device), None


def flowpp(shape: tuple[int, ...], *, couplings: int = 4, components: int = 4, hidden: int = 16, blocks: int = 1,
           heads: int = 2, dequantizer_couplings: int = 2, dequantizer_hidden: int = 16,
           alpha: float = 0.05) -> tuple[nn.Module, nn.Module]:
    """A small Flow++ (Ho et al. 2019, Sec. 3): logit(α) → ``couplings`` × [logistic-mixture coupling
    (``components`` components, eqs. 17–20; self-attention conditioner with ``hidden`` channels,
    ``blocks`` blocks, ``heads`` heads, Sec. 3.2.2) → ActNorm], checkerboard masks (channel masks on
    every other layer when C > 1) with alternating parity; and its variational dequantizer
    (Sec. 3.1): ``dequantizer_couplings`` conv couplings of ``dequantizer_hidden`` channels."""
    from .actnorm import ActNorm
    from .dequantizer import Dequantizer
    from .elementwise import Logit
    from .logistic_mixture import LogisticMixtureCoupling
    from .sequential import Sequential

    if len(shape) != 3:
        raise ConfigError(f"flowpp is an image model: event shape (C, H, W), got {shape}")
    masks = ("checkerboard", "channel") if shape[0] > 1 else ("checkerboard",)
    layers: list[nn.Module] = [Logit(list(shape), alpha=alpha)]
    for i in range(couplings):
        mask = masks[(i // 2) % len(masks)]
        layers.append(LogisticMixtureCoupling(list(shape), components=components, mask=mask, parity=i % 2,
                                              conditioner="attention", hidden=hidden, blocks=blocks, heads=heads))
        layers.append(ActNorm(list(shape)))
    dequantizer = Dequantizer(list(shape), couplings=dequantizer_couplings, hidden=dequantizer_hidden,
                              conditioner="conv", mask="checkerboard" if shape[0] == 1 else "channel")
    return Sequential(layers), dequantizer
