"""Glow (Kingma & Dhariwal 2018, Sec. 3; the layout and config of :mod:`flowspec.reference.glow`) and
:func:`make_model`.

:class:`Glow` is a :class:`~.multiscale.MultiScale` with learned-prior splits whose levels and priors
its config builds: level ``i`` a :class:`~.sequential.Sequential` of a :class:`~.squeeze.Squeeze`
and K steps of :class:`~.actnorm.ActNorm`, :class:`~.conv1x1.Conv1x1LU` and an affine or additive
coupling (channel mask, parity 1, conv conditioner), the prior of split ``i`` an
:class:`~.coupling.AffineCoupling` on level ``i``'s output. Its spec nests the children's specs
(params ``"0"``, …, ``"prior0"``, …), checked against the config by the reference
(:func:`~flowspec.reference.glow.check_structure`) before they are loaded.

Initialisation, as Glow's (Sec. 3.1–3.3): every ActNorm initialises from its input on the first
forward in training mode (data-dependent; an evaluation or an inverse before that raises
``ConfigError``), every 1×1 convolution starts from the LU factors of a random rotation, and the last
convolution of every coupling's conditioner and of every prior is zero, so that each coupling and
each prior starts as the identity (z′ = z_out: μ = 0, log σ = 0). A flow loaded from a spec takes the
spec's parameters (its ActNorms are initialised and never re-initialise).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from flowspec.errors import ConfigError
from flowspec.reference.glow import DEFAULTS, GlowConfig, check_structure, level_layout, parse_config, prior_layout
from flowspec.spec import FlowSpec

from .base import MODULES, Flow, register
from .multiscale import MultiScale
from .sequential import Sequential


def _child(kind: str, config: dict[str, Any]) -> Flow:
    """A child flow of ``kind`` for ``config``, couplings with their conditioner's last layer zeroed."""
    flow = MODULES[kind](**config)
    last = getattr(flow, "net", None)
    if last is not None:
        with torch.no_grad():
            last[-1].weight.zero_()
            last[-1].bias.zero_()
    return flow


def _load(flow: Flow, spec: FlowSpec) -> None:
    """Copy ``spec``'s arrays into ``flow`` and, recursively, its children's into theirs."""
    flow.load_spec_params(spec)
    for name, child in flow.spec_children().items():
        _load(child, spec.params[name])


@register("glow")
class Glow(MultiScale):
    """Glow's multi-scale model (module docstring); config as :func:`flowspec.reference.glow.parse_config`."""

    def __init__(
        self,
        shape: Sequence[int],
        levels: int = DEFAULTS["levels"],
        steps: int = DEFAULTS["steps"],
        hidden: int = DEFAULTS["hidden"],
        coupling: str = DEFAULTS["coupling"],
        depth: int = DEFAULTS["depth"],
        activation: str = DEFAULTS["activation"],
        scale_factor: float = DEFAULTS["scale_factor"],
        *,
        validate_args: bool | None = None,
        **unknown: Any,
    ):
        """``unknown`` config entries are rejected with a :class:`ConfigError` naming them."""
        cfg = parse_config({"shape": list(shape) if isinstance(shape, (list, tuple)) else shape, "levels": levels,
                            "steps": steps, "hidden": hidden, "coupling": coupling, "depth": depth,
                            "activation": activation, "scale_factor": scale_factor, **unknown})
        level_flows = [Sequential([_child(kind, c) for kind, c in level_layout(cfg, i)]) for i in range(cfg.levels)]
        priors = [_child(*prior_layout(cfg, i)) for i in range(cfg.levels - 1)]
        super().__init__(level_flows, priors, validate_args=validate_args)
        self._glow: GlowConfig = cfg

    def config(self) -> dict[str, Any]:
        return self._glow.as_dict()

    @classmethod
    def from_spec(cls, spec: FlowSpec) -> "Glow":
        """The model of ``spec``'s config with ``spec``'s parameters, after the reference has checked
        that the spec's children are the ones its config describes."""
        cls.require_kind(spec)
        check_structure(spec)
        flow = cls.fresh_from_spec(spec)
        _load(flow, spec)
        return flow

    @classmethod
    def fresh_from_spec(cls, spec: FlowSpec) -> "Glow":
        """A new model for ``spec``'s config, initialised as Glow (module docstring); params not loaded."""
        cls.require_kind(spec)
        return cls(**spec.config).to(torch.float64)


def make_model(event_shape: Sequence[int], *, levels: int = DEFAULTS["levels"], steps: int = DEFAULTS["steps"],
               hidden: int = DEFAULTS["hidden"], coupling: str = DEFAULTS["coupling"], **kw: Any) -> Glow:
    """Glow at a small, configurable size, as a ``glow`` flow (``to_spec()`` gives its spec).

    Event ``(C, H, W)`` with H and W divisible by 2^levels: ``levels`` × (Squeeze → ``steps`` ×
    [ActNorm → 1×1 convolution (LU) → ``coupling`` coupling]) with a learned-prior split after every
    level but the last; every conditioner (couplings and priors) is ``depth`` hidden 3×3
    convolutions of ``hidden`` channels. Keyword options: ``depth`` (2), ``activation`` ("relu"),
    ``scale_factor`` (1.0, the bound of every log-scale), ``validate_args``. Initialised as Glow
    (module docstring): ActNorm from the first batch in training mode, zero last convolutions.
    """
    return Glow(list(event_shape), levels=levels, steps=steps, hidden=hidden, coupling=coupling, **kw)
