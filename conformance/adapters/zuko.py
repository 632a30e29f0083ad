"""The conformance adapter for zuko (``zuko.flows``): zuko's flows held to flowspec's suite.

Run it with::

    flowspec conformance --impl flowspec.conformance.adapters.zuko [--kinds zuko:maf ...]

What is covered, in both directions. Most kinds are one layer of a zuko flow class, built by
that class with ``transforms=1`` so that the structure it claims is exact; the ``*_flow`` kinds are
the flows as zuko ships them, several transforms with zuko's alternating orders or masks:

================================  =================  ==============================================
zuko class (``zuko.flows.``)      kind               structure declared
================================  =================  ==============================================
``MAF``                           ``zuko:maf``       autoregressive order, dense (no dead connection)
``NSF``                           ``zuko:nsf``       autoregressive order
``SOSPF``                         ``zuko:sospf``     autoregressive order, dense
``NAF``                           ``zuko:naf``       autoregressive order, dense
``UNAF``                          ``zuko:unaf``      autoregressive order, dense
``BPF``                           ``zuko:bpf``       autoregressive order
``RealNVP``                       ``zuko:realnvp``   autoregressive in the mask's order (coupling)
``NICE`` (additive)               ``zuko:nice``      coupling order, volume preserving
``MAF``, ``NSF``, ``RealNVP``     ``zuko:*_flow``    none (2 to 4 transforms)
``MAF``                           ``maf``            flowspec's MAF kind (same map, own parameters)
``MAF`` inverted with ``.inv``    ``iaf``            flowspec's IAF kind (zuko's IAF recipe)
================================  =================  ==============================================

The foreign kinds' configs use zuko's argument names (``features``, ``context``,
``hidden_features``, ``activation``, ``bins``, ``degree``, ``polynomials``, ``signal``,
``network``, ``transforms``) and flowspec's ``order`` (the sequence of positions, first transformed first, as in
:func:`flowspec.made.parse_order`); an order other than the natural one reaches zuko as its
documented ``adjacency`` argument (``A[i, j]``: output i reads input j). Dense orders are declared
only where zuko's masked network is dense: every hidden width at least D + 1 (zuko's MADE gives one
hidden unit to each distinct dependency set, the context-only one included) and an activation
without a flat region (ELU, tanh).

The registered kinds ``maf`` and ``iaf`` read flowspec's config (``dim``, ``order``, ``hidden``,
``activation``, ``context_dim``), parsed by flowspec's own parser: zuko never sees flowspec's key
names, so an invalid config is refused by that parser with the key named. zuko's affine layer is
z = x·exp(a) + b with a soft-clipped log-scale a; flowspec's maf is z = (x − μ)·exp(−α): the same
map family, another parameterisation, so the canonical parameters are not offered and the kinds
are checked black-box. ``iaf`` is that MAF with its lazy transform inverted (``.inv``), the
construction zuko documents for inverse autoregressive flows.

Direction. zuko's ``flow(c).transform`` maps data to noise (flowspec's forward): the forward is its
``call_and_ladj(x)``, the inverse its ``.inv(z)`` and the inverse with its log-det
``.inv.call_and_ladj(z)``, zuko's own other direction.

Declined. A config key the mapping does not know, an activation other than ELU, tanh or ReLU, and a
config zuko's constructor refuses (its message is the reason) raise :class:`Declined`. zuko
validates no input (it does not claim to): the bad-input properties report ``not_claimed``. Not
mapped: ``CNF`` (adaptive Dormand–Prince whose step size is chosen over the whole batch and whose
error is the solver tolerance, which a foreign kind cannot declare), ``GF`` (its codomain depends on
the parameters and its inverse is a bisection on [−10, 10]), ``NCSF`` (circular domain) and ``GMM``
(not a transform).

zuko is imported at module import; without it the import fails with the command that installs it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from flowspec import made
from flowspec.errors import ConfigError
from flowspec.reference.autoregressive import parse_made

from ..adapter import Capabilities, Declined, ForeignKind
from ..torch_adapter import TorchFlowAdapter

try:
    from zuko.flows import BPF, MAF, NAF, NICE, NSF, SOSPF, UNAF, Flow, RealNVP
    from zuko.transforms import AdditiveTransform
except ImportError as exc:  # pragma: no cover - exercised only where zuko is absent
    raise ImportError(
        f"flowspec.conformance.adapters.zuko needs zuko ({exc}); install it with: "
        'pip install -c constraints.txt -e ".[peers]"'
    ) from exc

Config = Mapping[str, Any]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"elu": nn.ELU, "tanh": nn.Tanh, "relu": nn.ReLU}
COMMON_KEYS = ("features", "context", "hidden_features", "activation")


# ----------------------------------------------------------------------------- config -> arguments

def _activation(name: Any, key: str) -> Callable[[], nn.Module]:
    """The torch activation class for a config's activation name."""
    if name not in ACTIVATIONS:
        raise Declined(f"config[{key!r}] = {name!r}: the zuko adapter maps only {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _known_keys(config: Config, keys: Sequence[str], kind: str) -> None:
    """Every config key is one the mapping honours (never silently ignored)."""
    unknown = sorted(set(config) - set(keys))
    if unknown:
        raise Declined(f"{kind}: config keys {unknown} have no zuko counterpart; known: {list(keys)}")


def _order(config: Config) -> np.ndarray:
    """The config's order as positions (``order[k]`` is transformed k-th), flowspec's convention."""
    return made.parse_order(config.get("order", "natural"), int(config["features"]))


def _adjacency(order: np.ndarray) -> dict[str, Any]:
    """zuko's arguments for ``order``: none for the natural order (zuko's default), else its
    ``adjacency`` matrix, True at (i, j) where output i reads input j (itself included)."""
    if np.array_equal(order, np.arange(order.size)):
        return {}
    rank = made.ranks(order)
    return {"adjacency": torch.as_tensor((rank[None, :] < rank[:, None]) | np.eye(order.size, dtype=bool))}


def _network(config: Config) -> dict[str, Any]:
    """The conditioner's arguments: hidden widths and activation."""
    return {"hidden_features": [int(h) for h in config["hidden_features"]],
            "activation": _activation(config["activation"], "activation")}


@dataclass(frozen=True)
class Layer:
    """How one foreign kind is built: the zuko flow class, its own config keys and the arguments
    they give (``options(config) -> kwargs``); ``takes_order``: an autoregressive layer (config key
    ``order``), else a coupling layer with zuko's checkered mask; ``stacked``: the flow as zuko ships
    it, ``transforms`` transforms with zuko's own alternation of orders or masks (config key
    ``transforms``), else one transform."""

    flow_class: Callable[..., Flow]
    own_keys: tuple[str, ...]
    options: Callable[[Config], dict[str, Any]]
    takes_order: bool = True
    stacked: bool = False

    def keys(self) -> tuple[str, ...]:
        return COMMON_KEYS + ("order",) * self.takes_order + ("transforms",) * self.stacked + self.own_keys

    def build(self, kind: str, config: Config) -> Flow:
        """The zuko flow for ``config`` (torch's generator seeded by the caller)."""
        _known_keys(config, self.keys(), kind)
        arguments = {**_network(config), **self.options(config)}
        if self.takes_order:
            arguments.update(_adjacency(_order(config)))
        transforms = int(config["transforms"]) if self.stacked else 1
        return _construct(kind, self.flow_class, int(config["features"]), int(config.get("context", 0)),
                          transforms, **arguments)


def _construct(kind: str, flow_class: Callable[..., Flow], features: int, context: int, transforms: int = 1,
               **arguments: Any) -> Flow:
    """``flow_class(features, context, transforms=transforms, **arguments)``; a config zuko refuses is
    declined with zuko's own message."""
    try:
        return flow_class(features, context, transforms=transforms, **arguments)
    except (ValueError, AssertionError) as exc:
        raise Declined(f"{kind}: zuko's {flow_class.__name__} refuses {arguments}: {exc}") from exc


def _univariate_network(config: Config) -> dict[str, Any]:
    """NAF's and UNAF's per-feature network: its signal size and hidden widths."""
    return {"signal": int(config["signal"]), "network": {"hidden_features": [int(h) for h in config["network"]]}}


LAYERS: dict[str, Layer] = {
    "maf": Layer(MAF, (), lambda config: {}),
    "nsf": Layer(NSF, ("bins",), lambda config: {"bins": int(config["bins"])}),
    "sospf": Layer(SOSPF, ("degree", "polynomials"),
                   lambda config: {"degree": int(config["degree"]), "polynomials": int(config["polynomials"])}),
    "naf": Layer(NAF, ("signal", "network"), _univariate_network),
    "unaf": Layer(UNAF, ("signal", "network"), _univariate_network),
    "bpf": Layer(BPF, ("degree",), lambda config: {"degree": int(config["degree"])}),
    "realnvp": Layer(RealNVP, (), lambda config: {}, takes_order=False),
    "nice": Layer(NICE, (), lambda config: {"univariate": AdditiveTransform, "shapes": [()]}, takes_order=False),
    "maf_flow": Layer(MAF, (), lambda config: {}, takes_order=False, stacked=True),
    "nsf_flow": Layer(NSF, ("bins",), lambda config: {"bins": int(config["bins"])}, takes_order=False, stacked=True),
    "realnvp_flow": Layer(RealNVP, (), lambda config: {}, takes_order=False, stacked=True),
}


# ----------------------------------------------------------------------------- the kinds

def _features(config: Config) -> tuple[int, ...]:
    return (int(config["features"]),)


def _context(config: Config) -> tuple[int, ...] | None:
    return (int(config["context"]),) if config.get("context", 0) else None


def _positions(config: Config) -> list[int]:
    return [int(d) for d in _order(config)]


def _coupling_order(config: Config) -> list[int]:
    """zuko's checkered mask of the first coupling transform keeps the even features (``arange(D) %
    2 == 0``) and transforms the odd ones from them: the even positions come first."""
    dim = int(config["features"])
    return list(range(0, dim, 2)) + list(range(1, dim, 2))


def _layout(features: int, context: int, hidden: list[int], activation: str) -> dict[str, Any]:
    """The keys every foreign kind reads (a coupling layer's or a stacked flow's complete layout)."""
    return {"features": features, "context": context, "hidden_features": hidden, "activation": activation}


def _ar(features: int, context: int, order: Any, hidden: list[int], activation: str, **own: Any) -> dict[str, Any]:
    """An autoregressive layer's config: the layout with the order, and the kind's own keys."""
    return {"features": features, "context": context, "order": order, "hidden_features": hidden,
            "activation": activation, **own}


COUPLING_CONFIGS = (_layout(3, 0, [4], "relu"), _layout(4, 2, [5, 5], "elu"), _layout(5, 0, [6], "tanh"),
                    _layout(2, 2, [3], "relu"))

# Stacked flows (zuko's defaults otherwise): features, context, hidden widths, activation.
FLOW_LAYOUTS = ((3, 0, [8], "relu"), (4, 2, [6, 6], "elu"), (2, 2, [5], "tanh"))

# Dense kinds: every hidden width ≥ D + 1 and ELU or tanh (module docstring).
DENSE_CONFIGS = (
    _ar(3, 0, "natural", [4], "elu"),
    _ar(4, 2, "reversed", [6, 6], "tanh"),
    _ar(5, 0, [2, 0, 4, 1, 3], [6], "elu"),
    _ar(2, 2, [1, 0], [3], "tanh"),
    _ar(1, 2, "natural", [3], "elu"),
)

FOREIGN = (
    ForeignKind("maf", _features, DENSE_CONFIGS, "zuko MAF, one affine transform z = x·exp(a) + b",
                _context, autoregressive_order=_positions, dense=True),
    ForeignKind("nsf", _features, (
        _ar(3, 0, "natural", [8], "relu", bins=4),
        _ar(4, 2, [3, 1, 0, 2], [8, 8], "elu", bins=6),
        _ar(2, 0, "reversed", [5], "tanh", bins=8),
        _ar(5, 2, "natural", [4], "relu", bins=3),
    ), "zuko NSF, one rational-quadratic spline transform on [-5, 5], identity outside",
        _context, autoregressive_order=_positions),
    ForeignKind("sospf", _features, tuple({**c, "degree": d, "polynomials": k} for c, (d, k) in
                                          zip(DENSE_CONFIGS, ((2, 2), (3, 1), (2, 3), (4, 2), (1, 1)))),
                "zuko SOSPF, one sum-of-squares polynomial transform, inverse by bisection on [-10, 10]",
                _context, autoregressive_order=_positions, dense=True, large=(0.3, 1.0, 3.0)),
    ForeignKind("naf", _features, tuple({**c, "signal": s, "network": n} for c, (s, n) in
                                        zip(DENSE_CONFIGS[:4], ((3, [4]), (2, [3, 3]), (4, [4]), (2, [2])))),
                "zuko NAF, one monotonic-network transform, inverse by bisection on [-10, 10]",
                _context, autoregressive_order=_positions, dense=True, large=(0.3, 1.0, 3.0)),
    ForeignKind("unaf", _features, tuple({**c, "signal": s, "network": n} for c, (s, n) in
                                         zip(DENSE_CONFIGS[:4], ((3, [4]), (2, [3, 3]), (4, [4]), (2, [2])))),
                "zuko UNAF, one integrated positive network (32-node Gauss-Legendre), bisection inverse",
                _context, autoregressive_order=_positions, dense=True, large=(0.3, 1.0, 3.0)),
    ForeignKind("bpf", _features, tuple({**c, "degree": d} for c, d in zip(DENSE_CONFIGS[:4], (4, 6, 8, 5))),
                "zuko BPF, one bounded Bernstein polynomial on [-5, 5], identity outside",
                _context, autoregressive_order=_positions),
    ForeignKind("realnvp", _features, COUPLING_CONFIGS, "zuko RealNVP, one affine coupling transform (checkered mask)",
                _context, autoregressive_order=_coupling_order),
    ForeignKind("nice", _features, COUPLING_CONFIGS, "zuko NICE with additive coupling, log|det| = 0",
                _context, autoregressive_order=_coupling_order, volume_preserving=True),
    ForeignKind("maf_flow", _features, tuple({**_layout(*c), "transforms": t}
                                             for c, t in zip(FLOW_LAYOUTS, (3, 2, 3))),
                "zuko MAF as shipped: affine transforms in alternating (natural, reversed) orders", _context),
    ForeignKind("nsf_flow", _features, tuple({**_layout(*c), "transforms": t, "bins": b}
                                             for c, t, b in zip(FLOW_LAYOUTS, (2, 3, 2), (4, 8, 5))),
                "zuko NSF as shipped: spline transforms in alternating orders", _context),
    ForeignKind("realnvp_flow", _features, tuple({**_layout(*c), "transforms": t}
                                                 for c, t in zip(FLOW_LAYOUTS, (3, 2, 4))),
                "zuko RealNVP as shipped: affine couplings with alternating checkered masks", _context),
)


# ----------------------------------------------------------------------------- flowspec's own kinds

def _registered_maf(kind: str, config: Config) -> Flow:
    """zuko's MAF of one transform for flowspec's ``maf`` config."""
    try:
        cfg = parse_made(config, what=f"flowspec's {kind}")
    except ConfigError as exc:
        raise ConfigError(f"the zuko adapter cannot map this {kind} config: {exc}") from exc
    return _construct(kind, MAF, cfg.dim, cfg.context_dim, hidden_features=list(cfg.hidden),
                      activation=_activation(cfg.activation, "activation"), **_adjacency(cfg.order))


def _registered_iaf(kind: str, config: Config) -> Flow:
    """flowspec's ``iaf``: zuko's MAF with the same config and seed, its transform inverted with
    ``.inv`` (zuko's inverse autoregressive flow recipe)."""
    maf = _registered_maf(kind, config)
    return Flow(maf.transform.inv, maf.base)


REGISTERED: dict[str, Callable[[str, Config], Flow]] = {"maf": _registered_maf, "iaf": _registered_iaf}


def build(kind: str, config: Config) -> Flow:
    """The zuko flow for ``kind`` (a foreign kind's full name or a registered kind) and ``config``."""
    local = kind.split(":", 1)[1] if kind.startswith("zuko:") else None
    if local is not None and local in LAYERS:
        return LAYERS[local].build(kind, config)
    if local is None and kind in REGISTERED:
        return REGISTERED[kind](kind, config)
    raise Declined(f"the zuko adapter has no mapping for kind {kind!r}")


def instantiate(kind: str, config: Config, seed: int) -> Flow:
    """``build`` with torch's generator seeded by ``seed`` (zuko draws its weights from it), the
    caller's random state left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return build(kind, config)


# ----------------------------------------------------------------------------- the adapter

class ZukoAdapter(TorchFlowAdapter):
    """zuko's flows through :class:`TorchFlowAdapter`: only the calling convention differs."""

    implementation = "zuko"

    def __init__(self) -> None:
        super().__init__(name="zuko", kinds=set(REGISTERED), instantiator=instantiate, hooks={"inverse_logdet"},
                         white_box=False, native_direction="both")

    def capabilities(self) -> Capabilities:
        return replace(super().capabilities(), foreign=FOREIGN, validates_input=False)

    def call_forward(self, module: Flow, x: torch.Tensor, context: torch.Tensor | None):
        """``flow(c).transform`` maps data to noise: its ``call_and_ladj`` is (z, log|det ∂z/∂x|)."""
        return module(context).transform.call_and_ladj(x)

    def call_inverse(self, module: Flow, z: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        return module(context).transform.inv(z)

    def call_inverse_with_logdet(self, module: Flow, z: torch.Tensor, context: torch.Tensor | None):
        """zuko's own inverse transform and its log-det, log|det ∂x/∂z|."""
        return module(context).transform.inv.call_and_ladj(z)


conformance_adapter = ZukoAdapter()

__all__ = ["FOREIGN", "LAYERS", "REGISTERED", "ZukoAdapter", "build", "conformance_adapter", "instantiate"]
