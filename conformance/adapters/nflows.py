"""The conformance adapter for nflows: its transforms held to flowspec's properties.

Run it with::

    flowspec conformance --impl flowspec.conformance.adapters.nflows --timeout 300

**Direction.** nflows's transforms work in flowspec's forward (normalizing) direction:
``t(x, context)`` returns ``(z, log|det ∂z/∂x|)`` and ``t.inverse(z, context)`` returns
``(x, log|det ∂x/∂z|)``, the inverse's own log-det. The adapter passes the forward through and takes
nflows's inverse for both the inverse (its first output) and the inverse direction with its log-det
(requirement ``inverse_logdet``), so a sign error in either direction's log-det is caught. Black-box
only: no flowspec spec can be loaded into nflows's layers.

**Registered kinds** whose map nflows's layer computes (configs from the suite's strategies; a config
the layer cannot honour is declined with the reason):

=======================  =========================================================================
kind                     nflows class; declined configs
=======================  =========================================================================
``actnorm``              ``ActNorm(C)``, z = exp(log_scale)·x + shift per channel; vectors and
                         ``(C, H, W)`` images only (nflows takes 2-D and 4-D batches). Its data
                         initialisation follows the convention ``actnorm_unbiased_std``.
``reverse_permutation``  ``ReversePermutation(C, dim=1)``
``permutation``          ``Permutation(perm, dim=1)``
``sigmoid``              ``Sigmoid()`` (temperature 1)
``logit``                ``Logit()`` (temperature 1); α ≠ 0 is declined: nflows has no α, it clamps
                         its input to [10⁻⁶, 1 − 10⁻⁶] instead
``spline``               ``PiecewiseRationalQuadraticCDF(shape, tails="linear")`` with the config's
                         bins, bound and minimums
``conv1x1_lu``           ``OneByOneConvolution(C, identity_init=False)``: a fixed random channel
                         permutation, then an LU-parameterised 1×1 convolution
``squeeze``              ``SqueezeTransform(factor=2)`` (the same channel order 4c + 2i + j)
=======================  =========================================================================

The parameters of ``actnorm`` (nflows's shift is flowspec's bias times the scale), ``spline`` (three
tensors instead of ``raw``) and ``conv1x1_lu`` (a softplus diagonal, no sign vector) do not have
flowspec's canonical layout, so for these kinds the adapter lacks ``parameters`` (``without``): the
suite neither sets nor names them, and the properties that need them are not supported.

**Foreign kinds** (``nflows:<name>``, vectors of a few entries, configs in :data:`FOREIGN`), each
with the structure it has: ``maf`` (``MaskedAffineAutoregressiveTransform``, z = (softplus(a) +
10⁻³)·x + b: triangular in the natural order and dense, with tanh or elu and hidden widths ≥ D − 1),
``iaf`` (its ``InverseTransform``; the same order, dense), ``rq_autoregressive``
(``MaskedPiecewiseRationalQuadraticAutoregressiveTransform``, linear tails; triangular), the
couplings ``affine_coupling``, ``additive_coupling`` (volume preserving) and ``rq_coupling`` with
nflows's ``ResidualNet`` conditioner (triangular in the order "unchanged entries, then transformed
ones"), the linear layers ``lu_linear``, ``qr_linear`` and ``svd_linear`` (with and without their
evaluation-mode cache), ``householder`` (volume preserving), ``tanh``, ``leaky_relu`` and
``composite`` (a ``CompositeTransform`` of a MAF layer, a reversal and an affine coupling layer).
nflows's scale parameterisations (softplus, sigmoid(· + 2)) differ from flowspec's ``maf``, ``iaf``
and ``affine_coupling``, hence foreign kinds rather than registered ones.

Instantiated flows get generic parameters where nflows initialises to the identity: Householder
vectors (set in cancelling pairs) are drawn from N(0, 1), and an actnorm initialises itself by
nflows's own rule from a random batch; every draw comes from the suite's seed.

**Not mapped**: ``BatchNorm`` (its training-mode map uses the batch's statistics, so a sample's z
depends on its batch by design), splines with ``tails=None`` (maps of [0, 1] with no flowspec kind),
the linear, quadratic and cubic splines, ``LogTanh``, ``MultiscaleCompositeTransform``.

nflows does not claim to validate its input (no finiteness, shape or dtype checks), so the bad-input
properties report ``not_claimed``. The findings are in the documentation's "Checking nflows".
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import torch
from torch.nn import functional as F

try:
    from nflows import transforms as nft
    from nflows.nn import nets as nfnets
except Exception as exc:  # noqa: BLE001 - absent or failing to import: one hint either way
    raise ImportError(
        "the nflows conformance adapter needs nflows; install it with "
        f"pip install -c constraints.txt -e \".[peers]\" ({type(exc).__name__}: {exc})"
    ) from exc

from flowspec.conformance.adapter import Capabilities, Declined, ForeignKind
from flowspec.conformance.torch_adapter import TorchFlowAdapter
from flowspec.reference.spline import SPLINE_DEFAULTS
from flowspec.registry import Domain

Config = Mapping[str, Any]
Builder = Callable[[Config], torch.nn.Module]

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"tanh": torch.tanh, "elu": F.elu}
INIT_BATCH = 8  # samples of the random batch an instantiated actnorm initialises itself from


# ----------------------------------------------------------------------------- config mapping

def _keys(kind: str, config: Config, allowed: set[str]) -> None:
    """Decline a config with a key the mapping does not read (no key is silently ignored)."""
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise Declined(f"the nflows mapping of {kind} does not read the config keys {unknown}")


def _shape(config: Config) -> tuple[int, ...]:
    """The event shape as the config gives it (unchecked: a bad one is nflows's to reject)."""
    return tuple(config["shape"])


def _activation(kind: str, config: Config) -> Callable[[torch.Tensor], torch.Tensor]:
    name = config["activation"]
    if name not in ACTIVATIONS:
        raise Declined(f"{kind}: activation {name!r} is not mapped (mapped: {sorted(ACTIVATIONS)})")
    return ACTIVATIONS[name]


def _context_features(config: Config) -> int | None:
    return int(config["context"]) or None


def _spline_keys(config: Config) -> dict[str, Any]:
    """nflows's spline arguments for flowspec's spline keys, absent ones at flowspec's defaults (the
    same meaning: K bins on [−B, B], linear tails, floors on the bin widths, heights and interior
    derivatives). Values are passed on unchecked: what nflows does with a bad one is its own."""
    full = {**SPLINE_DEFAULTS, **config}
    return {"num_bins": full["bins"], "tails": "linear", "tail_bound": full["bound"],
            "min_bin_width": full["min_width"], "min_bin_height": full["min_height"],
            "min_derivative": full["min_derivative"]}


def _actnorm(config: Config) -> torch.nn.Module:
    _keys("actnorm", config, {"shape"})
    shape = _shape(config)
    if len(shape) not in (1, 3):
        raise Declined(f"nflows's ActNorm takes vectors and (C, H, W) images, not events of shape {shape}")
    return nft.ActNorm(shape[0])


def _reverse_permutation(config: Config) -> torch.nn.Module:
    _keys("reverse_permutation", config, {"shape"})
    return nft.ReversePermutation(_shape(config)[0], dim=1)


def _permutation(config: Config) -> torch.nn.Module:
    _keys("permutation", config, {"shape", "perm"})
    return nft.Permutation(torch.as_tensor(list(config["perm"]), dtype=torch.long), dim=1)


def _sigmoid(config: Config) -> torch.nn.Module:
    _keys("sigmoid", config, {"shape"})
    return nft.Sigmoid()


def _logit(config: Config) -> torch.nn.Module:
    _keys("logit", config, {"shape", "alpha"})
    alpha = config.get("alpha", "absent (flowspec's default, not 0)")
    if alpha != 0.0:
        raise Declined(f"nflows's Logit has no α (it clamps its input to [1e-6, 1 − 1e-6]); α is {alpha}")
    return nft.Logit()


def _spline(config: Config) -> torch.nn.Module:
    _keys("spline", config, {"shape", "bins", "bound", "min_width", "min_height", "min_derivative"})
    return nft.PiecewiseRationalQuadraticCDF(list(_shape(config)), identity_init=False, **_spline_keys(config))


def _conv1x1_lu(config: Config) -> torch.nn.Module:
    _keys("conv1x1_lu", config, {"channels", "height", "width"})
    return nft.OneByOneConvolution(config["channels"], identity_init=False)


# Registered kinds whose nflows parameters do not have flowspec's canonical layout (module docstring).
OTHER_LAYOUT: dict[str, frozenset[str]] = {kind: frozenset({"parameters"})
                                           for kind in ("actnorm", "spline", "conv1x1_lu")}

def _squeeze(config: Config) -> torch.nn.Module:
    _keys("squeeze", config, {"channels", "height", "width"})
    return nft.SqueezeTransform(factor=2)


REGISTERED: dict[str, Builder] = {
    "actnorm": _actnorm, "reverse_permutation": _reverse_permutation, "permutation": _permutation,
    "sigmoid": _sigmoid, "logit": _logit, "spline": _spline, "conv1x1_lu": _conv1x1_lu, "squeeze": _squeeze,
}


# ----------------------------------------------------------------------------- foreign kinds

MADE_KEYS = {"features", "hidden", "blocks", "residual", "activation", "context"}
COUPLING_KEYS = {"mask", "hidden", "blocks", "activation", "context"}
SPLINE_KEYS = {"bins", "bound"}


def _made(kind: str, config: Config) -> dict[str, Any]:
    """MADE arguments shared by nflows's masked autoregressive transforms (sequential degrees)."""
    return {"features": int(config["features"]), "hidden_features": int(config["hidden"]),
            "context_features": _context_features(config), "num_blocks": int(config["blocks"]),
            "use_residual_blocks": bool(config["residual"]), "random_mask": False,
            "activation": _activation(kind, config)}


def _foreign_spline(config: Config) -> dict[str, Any]:
    """nflows's spline arguments for a foreign config: its bins and bound, nflows's default floors."""
    return {"num_bins": int(config["bins"]), "tails": "linear", "tail_bound": float(config["bound"])}


def _maf(config: Config) -> torch.nn.Module:
    _keys("nflows:maf", config, MADE_KEYS)
    return nft.MaskedAffineAutoregressiveTransform(**_made("nflows:maf", config))


def _rq_autoregressive(config: Config) -> torch.nn.Module:
    _keys("nflows:rq_autoregressive", config, MADE_KEYS | SPLINE_KEYS)
    return nft.MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
        **_made("nflows:rq_autoregressive", config), **_foreign_spline(config))


def _conditioner(kind: str, config: Config) -> Callable[[int, int], torch.nn.Module]:
    """nflows's coupling conditioner factory: its ``ResidualNet`` with the config's width, blocks,
    activation and context size."""
    activation = _activation(kind, config)

    def create(in_features: int, out_features: int) -> torch.nn.Module:
        return nfnets.ResidualNet(in_features, out_features, hidden_features=int(config["hidden"]),
                                  context_features=_context_features(config), num_blocks=int(config["blocks"]),
                                  activation=activation)
    return create


def _coupling(cls: type, kind: str, spline: bool = False) -> Builder:
    """The builder of an nflows coupling class: the config's mask (nflows's convention: > 0 is
    transformed), the conditioner and, for a spline coupling, the spline's bins and bound."""
    def build(config: Config) -> torch.nn.Module:
        _keys(kind, config, COUPLING_KEYS | (SPLINE_KEYS if spline else set()))
        arguments = _foreign_spline(config) if spline else {}
        return cls(torch.as_tensor(list(config["mask"])), _conditioner(kind, config), **arguments)
    return build


def _lu_linear(config: Config) -> torch.nn.Module:
    _keys("nflows:lu_linear", config, {"features", "cache"})
    return nft.LULinear(int(config["features"]), using_cache=bool(config["cache"]), identity_init=False)


def _iaf(config: Config) -> torch.nn.Module:
    """nflows's IAF: ``InverseTransform`` of its MAF layer (the forward is the MAF's inverse)."""
    _keys("nflows:iaf", config, MADE_KEYS)
    return nft.InverseTransform(nft.MaskedAffineAutoregressiveTransform(**_made("nflows:iaf", config)))


def _householder(config: Config) -> torch.nn.Module:
    _keys("nflows:householder", config, {"features", "reflections"})
    return nft.HouseholderSequence(int(config["features"]), int(config["reflections"]))


def _qr_linear(config: Config) -> torch.nn.Module:
    _keys("nflows:qr_linear", config, {"features", "reflections", "cache"})
    return nft.QRLinear(int(config["features"]), int(config["reflections"]), using_cache=bool(config["cache"]))


def _svd_linear(config: Config) -> torch.nn.Module:
    _keys("nflows:svd_linear", config, {"features", "reflections", "cache"})
    return nft.SVDLinear(int(config["features"]), int(config["reflections"]), using_cache=bool(config["cache"]),
                         identity_init=False)


def _tanh(config: Config) -> torch.nn.Module:
    _keys("nflows:tanh", config, {"features"})
    return nft.Tanh()


def _leaky_relu(config: Config) -> torch.nn.Module:
    _keys("nflows:leaky_relu", config, {"features", "negative_slope"})
    return nft.LeakyReLU(negative_slope=float(config["negative_slope"]))


def _composite(config: Config) -> torch.nn.Module:
    """nflows's ``CompositeTransform`` of a MAF layer, a reversal and an affine coupling layer."""
    _keys("nflows:composite", config, {"features", "hidden", "context"})
    features, hidden, context = int(config["features"]), int(config["hidden"]), int(config["context"])
    made = _made_config(features, hidden, 1, False, "tanh", context)
    mask = tuple(i % 2 for i in range(features))
    coupling = _coupling_config(mask, hidden, 1, "tanh", context)
    return nft.CompositeTransform([_maf(made), nft.ReversePermutation(features, dim=1),
                                   FOREIGN_BUILDERS["affine_coupling"](coupling)])


def _features(config: Config) -> tuple[int, ...]:
    return (len(config["mask"]),) if "mask" in config else (int(config["features"]),)


def _context_shape(config: Config) -> tuple[int, ...] | None:
    return (int(config["context"]),) if config.get("context") else None


def _natural_order(config: Config) -> list[int]:
    """A MADE with sequential degrees: z_d depends on x_j, j < d, in the natural order (and on x_d)."""
    return list(range(_features(config)[0]))


def _coupling_order(config: Config) -> list[int]:
    """The unchanged entries (mask ≤ 0, nflows's convention) first, then the transformed ones: each
    transformed z depends on the unchanged entries and on its own x only."""
    mask = list(config["mask"])
    return [i for i, m in enumerate(mask) if m <= 0] + [i for i, m in enumerate(mask) if m > 0]


def _made_config(features: int, hidden: int, blocks: int, residual: bool, activation: str,
                 context: int) -> dict[str, Any]:
    return {"features": features, "hidden": hidden, "blocks": blocks, "residual": residual,
            "activation": activation, "context": context}


def _coupling_config(mask: tuple[int, ...], hidden: int, blocks: int, activation: str, context: int) -> dict[str, Any]:
    return {"mask": mask, "hidden": hidden, "blocks": blocks, "activation": activation, "context": context}


MADE_CONFIGS = (
    _made_config(3, 4, 1, False, "tanh", 0),
    _made_config(4, 5, 2, True, "elu", 2),
    _made_config(2, 3, 1, True, "tanh", 0),
)
COUPLING_CONFIGS = (
    _coupling_config((1, 0, 1, 0), 4, 1, "tanh", 0),
    _coupling_config((0, 1, 1), 3, 2, "elu", 2),
    _coupling_config((0, 1), 3, 1, "tanh", 0),
)
SPLINE_CONFIGS = ({"bins": 4, "bound": 3.0}, {"bins": 3, "bound": 2.0}, {"bins": 5, "bound": 1.0})

FOREIGN_BUILDERS: dict[str, Builder] = {
    "maf": _maf,
    "rq_autoregressive": _rq_autoregressive,
    "affine_coupling": _coupling(nft.AffineCouplingTransform, "nflows:affine_coupling"),
    "additive_coupling": _coupling(nft.AdditiveCouplingTransform, "nflows:additive_coupling"),
    "rq_coupling": _coupling(nft.PiecewiseRationalQuadraticCouplingTransform, "nflows:rq_coupling", spline=True),
    "lu_linear": _lu_linear,
    "iaf": _iaf,
    "householder": _householder,
    "qr_linear": _qr_linear,
    "svd_linear": _svd_linear,
    "tanh": _tanh,
    "leaky_relu": _leaky_relu,
    "composite": _composite,
}

FOREIGN: tuple[ForeignKind, ...] = (
    ForeignKind("maf", _features, MADE_CONFIGS, "MaskedAffineAutoregressiveTransform: z = (softplus(a) + 1e-3)·x + b",
                context_shape=_context_shape, autoregressive_order=_natural_order, dense=True),
    ForeignKind("rq_autoregressive", _features,
                tuple({**c, **s} for c, s in zip(MADE_CONFIGS, SPLINE_CONFIGS)),
                "MaskedPiecewiseRationalQuadraticAutoregressiveTransform, linear tails",
                context_shape=_context_shape, autoregressive_order=_natural_order),
    ForeignKind("affine_coupling", _features, COUPLING_CONFIGS,
                "AffineCouplingTransform: z = (sigmoid(u + 2) + 1e-3)·x + t on the transformed entries",
                context_shape=_context_shape, autoregressive_order=_coupling_order),
    ForeignKind("additive_coupling", _features, COUPLING_CONFIGS, "AdditiveCouplingTransform: z = x + t",
                context_shape=_context_shape, autoregressive_order=_coupling_order, volume_preserving=True),
    ForeignKind("rq_coupling", _features, tuple({**c, **s} for c, s in zip(COUPLING_CONFIGS, SPLINE_CONFIGS)),
                "PiecewiseRationalQuadraticCouplingTransform, linear tails",
                context_shape=_context_shape, autoregressive_order=_coupling_order),
    ForeignKind("lu_linear", _features, ({"features": 3, "cache": False}, {"features": 4, "cache": True},
                                         {"features": 1, "cache": False}),
                "LULinear: z = L·U·x + b, U's diagonal softplus(·) + 1e-3"),
    ForeignKind("iaf", _features, MADE_CONFIGS,
                "InverseTransform(MaskedAffineAutoregressiveTransform): the MAF layer's inverse as the forward",
                context_shape=_context_shape, autoregressive_order=_natural_order, dense=True),
    ForeignKind("householder", _features, ({"features": 3, "reflections": 3}, {"features": 4, "reflections": 2}),
                "HouseholderSequence: a product of reflections, log|det| = 0", volume_preserving=True),
    ForeignKind("qr_linear", _features, ({"features": 3, "reflections": 2, "cache": False},
                                         {"features": 4, "reflections": 3, "cache": True}),
                "QRLinear: z = Q·R·x + b, Q Householder reflections, R upper triangular with exp(·) diagonal"),
    ForeignKind("svd_linear", _features, ({"features": 3, "reflections": 2, "cache": False},
                                          {"features": 4, "reflections": 4, "cache": True}),
                "SVDLinear: z = U·S·Vᵀ·x + b, U and V Householder reflections, S softplus(·) + 1e-3"),
    ForeignKind("tanh", _features, ({"features": 3}, {"features": 1}), "Tanh: z = tanh(x)",
                codomain=Domain("(-1, 1)", -1.0, 1.0), large=(0.3, 1.0, 3.0)),
    ForeignKind("leaky_relu", _features,
                ({"features": 3, "negative_slope": 0.01}, {"features": 2, "negative_slope": 0.5}),
                "LeakyReLU: z = x for x ≥ 0, slope·x below"),
    ForeignKind("composite", _features, ({"features": 3, "hidden": 4, "context": 0},
                                         {"features": 4, "hidden": 3, "context": 2}),
                "CompositeTransform of a MAF layer, ReversePermutation and an affine coupling layer",
                context_shape=_context_shape),
)


# ----------------------------------------------------------------------------- the adapter

class NflowsAdapter(TorchFlowAdapter):
    """nflows's transforms through the suite (module docstring): the mapping above, nflows's calling
    convention (``inverse`` returns ``(x, logabsdet)``) and nothing else. ``implementation`` names
    the library checked, for the report's header."""

    implementation = "nflows"

    def __init__(self) -> None:
        super().__init__(name="nflows", kinds=set(REGISTERED), instantiator=self._instantiate, fresh=self._fresh,
                         hooks={"inverse_logdet"}, input_errors=(ValueError, nft.InputOutsideDomain),
                         white_box=False, native_direction="both")

    def capabilities(self) -> Capabilities:
        return dataclasses.replace(super().capabilities(), foreign=FOREIGN, validates_input=False,
                                   without=OTHER_LAYOUT, conventions={"actnorm": frozenset({"actnorm_unbiased_std"})})

    @staticmethod
    def builder(kind: str) -> Builder:
        """The builder of ``kind`` (registered, or ``nflows:<name>``)."""
        local = kind.removeprefix("nflows:")
        builders = FOREIGN_BUILDERS if kind.startswith("nflows:") else REGISTERED
        if local not in builders:
            raise Declined(f"nflows has no mapping for kind {kind!r}")
        return builders[local]

    def _fresh(self, kind: str, config: Config, seed: int) -> torch.nn.Module:
        """The module as a user constructs it, its parameters drawn from ``seed`` by nflows."""
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return self.builder(kind)(config)

    def _instantiate(self, kind: str, config: Config, seed: int) -> torch.nn.Module:
        """As :meth:`_fresh`, with generic parameters where nflows's initialisation is the identity:
        Householder vectors (initialised in cancelling pairs) are drawn from N(0, 1), and an actnorm
        initialises itself (nflows's own rule) from a random batch, so that its scale and shift are
        not 1 and 0. Everything is drawn from ``seed``."""
        module = self._fresh(kind, config, seed)
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(seed)
            for sequence in (m for m in module.modules() if isinstance(m, nft.HouseholderSequence)):
                sequence.q_vectors.normal_()
        if kind == "actnorm":
            with torch.random.fork_rng(), torch.no_grad():
                torch.manual_seed(seed)
                module(torch.randn(INIT_BATCH, *_shape(config)) * 2.0 + 1.0)
        return module

    # nflows's calling convention: the forward as it is, the inverse returns (x, its own log-det).
    def call_inverse(self, module: Any, z: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        return module.inverse(z, context)[0]

    def call_inverse_with_logdet(self, module: Any, z: torch.Tensor,
                                 context: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        return module.inverse(z, context)


conformance_adapter = NflowsAdapter()
