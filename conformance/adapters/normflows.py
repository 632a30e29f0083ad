"""The conformance adapter for normflows (``normflows.flows`` layers and ``normflows.NormalizingFlow``).

Run it with::

    flowspec conformance --impl flowspec.conformance.adapters.normflows --timeout 300

**Direction.** normflows's layers are written in the *generative* direction: ``flow(z)`` returns
``(x, log|det ∂x/∂z|)`` and ``flow.inverse(x)`` returns ``(z, log|det ∂z/∂x|)``. flowspec's forward
is the normalizing direction x → z, so for every foreign kind flowspec's forward is the layer's
``inverse`` and flowspec's inverse (with its log-det) is the layer's own ``forward``: both of the
library's directions are exercised, each with its own log-det. ``NormalizingFlow`` is called
through ``inverse_and_log_det`` and ``forward_and_log_det``. ``Planar`` (tanh) and ``Radial`` have
no inverse; the map their ``forward`` computes is flowspec's registered ``planar`` / ``radial`` map
(same formulas: û = u + (softplus(wᵀu) − 1 − wᵀu)·w/‖w‖²; β = softplus(β̂) − α), so flowspec's
forward is their ``forward`` and their inverse-direction properties are not supported.

**Covered.** Registered kinds (black-box; their configs come from the suite's strategies):
``planar`` (``Planar``, act="tanh"), ``radial`` (``Radial``), ``actnorm`` (``ActNorm``, shape
(C, 1, …, 1) for an event (C, …), flowspec's forward its ``inverse``; a flow is built initialised,
its parameters drawn from the seed, a *fresh* one not yet initialised; the hook ``initialize(x)``
is normflows's own rule: the first normalizing call initialises). Foreign kinds ``normflows:*``:
``planar_leaky_relu``, ``masked_affine`` and ``masked_additive`` (``MaskedAffineFlow``),
``affine_coupling_block`` (``AffineCouplingBlock`` with an ``MLP``), ``maf``
(``MaskedAffineAutoregressive``), ``spline_autoregressive`` (``AutoregressiveRationalQuadraticSpline``),
``spline_coupling`` (``CoupledRationalQuadraticSpline``), ``glow_block`` (``GlowBlock``),
``residual_exact`` and ``residual`` (``Residual`` with ``nets.LipschitzMLP``, D = 2) and
``normalizing_flow`` (``NormalizingFlow`` over a MAF, a permutation and a coupling block), each
with the structure it has (autoregressive order, volume preservation, residual Lipschitz bound,
stochastic log-det).

**Declined.** A registered kind's config that normflows's layer cannot honour raises
:class:`~flowspec.conformance.adapter.Declined` with the reason: normflows's ``Planar``, ``Radial``
and ``ActNorm`` take only a shape (any other key is declined), and ``planar``/``radial`` are
checked on vectors only. The registered ``residual_mlp`` kind is not mapped: its config fixes the
power iteration, the inverse's tolerance and iteration cap, the probe law and the norm orders, none
of which normflows's ``Residual``/``LipschitzMLP`` lets a user choose (fixed 1e-5 tolerances, 1000
iterations, Gaussian probes, 2-norms), so every example would be declined. normflows's residual
block is checked as two foreign kinds in D = 2: ``residual_exact`` (``brute_force=True``, exact
log-det in both modes) and ``residual`` (roulette estimate in training, exact in evaluation). For
D > 2 normflows's evaluation-mode log-det is a random estimate too, which no deterministic property
can compare, so no config with D > 2 is offered.

**Conventions.** ``actnorm``: ``actnorm_unbiased_std`` and ``actnorm_std_epsilon`` (it divides by
the unbiased standard deviation plus 10⁻⁶, as Glow's reference code does); ``normflows:residual``:
``training_logdet_surrogate`` (with ``reduce_memory``, the training-mode value is the Neumann
gradient surrogate). normflows does not validate its input (``validates_input=False``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

from flowspec.conformance.adapter import Capabilities, Declined, ForeignKind, NotSupported
from flowspec.conformance.torch_adapter import TorchFlowAdapter

try:
    import normflows as nf
    import torch
except ImportError as exc:  # pragma: no cover - exercised only where normflows is absent
    raise ImportError(
        f"the normflows adapter needs normflows ({exc}); install it with "
        f'pip install -c constraints.txt -e ".[peers]"'
    ) from exc

Config = Mapping[str, Any]

#: How flowspec's calls reach a module: ``"generative"`` (forward is the layer's ``inverse``),
#: ``"same"`` (the layer's ``forward`` is flowspec's map; no inverse), ``"container"``
#: (``NormalizingFlow``'s ``inverse_and_log_det`` / ``forward_and_log_det``).
DIRECTIONS = ("generative", "same", "container")


@dataclass(frozen=True)
class Binding:
    """One kind's normflows class: how to build it from a config and how it is called."""

    build: Callable[[Config], Any]
    direction: str
    context: bool = False
    fresh: Callable[[Config], Any] | None = None  # as a user constructs it, if ``build`` initialises

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}")

    def construct(self, config: Config, fresh: bool) -> Any:
        return (self.fresh if fresh and self.fresh is not None else self.build)(config)


# ----------------------------------------------------------------------------- registered kinds

def _only_shape(kind: str, config: Config, vector: bool) -> tuple[int, ...]:
    """The event shape of a registered kind whose normflows layer takes only a shape."""
    extra = sorted(set(config) - {"shape"})
    if extra:
        raise Declined(f"normflows's layer for {kind} has no options {extra}")
    shape = tuple(config["shape"])
    if vector and len(shape) != 1:
        raise Declined(f"normflows's {kind} is checked on vectors only (got the event shape {list(shape)})")
    return shape


def _planar(config: Config) -> Any:
    return nf.flows.Planar(_only_shape("planar", config, vector=True), act="tanh")


def _radial(config: Config) -> Any:
    return nf.flows.Radial(_only_shape("radial", config, vector=True))


def _actnorm_shape(config: Config) -> tuple[int, ...]:
    """normflows's parameter shape for flowspec's per-channel actnorm of an event (C, …)."""
    shape = _only_shape("actnorm", config, vector=False)
    return (shape[0],) + (1,) * (len(shape) - 1)


def _actnorm_fresh(config: Config) -> Any:
    return nf.flows.ActNorm(_actnorm_shape(config))


def _actnorm(config: Config) -> Any:
    """An initialised ActNorm with parameters drawn from torch's (seeded) generator, as a
    checkpoint of an initialised one would be loaded."""
    module = _actnorm_fresh(config)
    with torch.no_grad():
        module.s.normal_(0.0, 0.5)
        module.t.normal_(0.0, 0.5)
    module.data_dep_init_done = torch.tensor(1.0)
    return module


# ----------------------------------------------------------------------------- foreign kinds

def _vector(config: Config) -> tuple[int, ...]:
    return (int(config["dim"]),)


def _context(config: Config) -> tuple[int, ...] | None:
    return (int(config["context"]),) if config.get("context") else None


def _natural(config: Config) -> list[int]:
    return list(range(int(config["dim"])))


def _mask(config: Config) -> Any:
    """MaskedAffineFlow's mask: 1 on the entries passed through, alternating from ``parity``."""
    dim, parity = int(config["dim"]), int(config["parity"])
    return torch.tensor([float((i + parity) % 2 == 0) for i in range(dim)])


def _mask_order(config: Config) -> list[int]:
    kept = [i for i, b in enumerate(_mask(config).tolist()) if b]
    return kept + [i for i in range(int(config["dim"])) if i not in kept]


def _mlp(inputs: int, hidden: int, outputs: int) -> Any:
    return nf.nets.MLP([inputs, hidden, outputs], init_zeros=False)


def _masked_affine(config: Config) -> Any:
    dim, hidden = int(config["dim"]), int(config["hidden"])
    return nf.flows.MaskedAffineFlow(_mask(config), t=_mlp(dim, hidden, dim), s=_mlp(dim, hidden, dim))


def _masked_additive(config: Config) -> Any:
    dim, hidden = int(config["dim"]), int(config["hidden"])
    return nf.flows.MaskedAffineFlow(_mask(config), t=_mlp(dim, hidden, dim))


def _halves(config: Config) -> tuple[list[int], list[int]]:
    """(conditioning, transformed) entries of AffineCouplingBlock's split (``torch.chunk``)."""
    dim = int(config["dim"])
    first, second = list(range((dim + 1) // 2)), list(range((dim + 1) // 2, dim))
    return (first, second) if config["split_mode"] == "channel" else (second, first)


def _coupling_order(config: Config) -> list[int]:
    kept, moved = _halves(config)
    return kept + moved


def _coupling_block(config: Config) -> Any:
    kept, moved = _halves(config)
    net = _mlp(len(kept), int(config["hidden"]), 2 * len(moved))
    return nf.flows.AffineCouplingBlock(net, scale=True, scale_map=config["scale_map"], split_mode=config["split_mode"])


ACTIVATIONS: dict[str, Callable[[Any], Any]] = {"relu": torch.relu, "tanh": torch.tanh}


def _maf(config: Config) -> Any:
    return nf.flows.MaskedAffineAutoregressive(
        int(config["dim"]), int(config["hidden"]), context_features=config.get("context") or None,
        num_blocks=int(config["blocks"]), use_residual_blocks=bool(config["residual_blocks"]),
        activation=ACTIVATIONS[config["activation"]],
    )


def _spline_autoregressive(config: Config) -> Any:
    return nf.flows.AutoregressiveRationalQuadraticSpline(
        int(config["dim"]), int(config["blocks"]), int(config["hidden"]),
        num_context_channels=config.get("context") or None, num_bins=int(config["bins"]),
        tail_bound=float(config["tail_bound"]), init_identity=False,
    )


def _spline_coupling_transformed(config: Config) -> list[int]:
    """The entries the coupling's spline conditions on the others (normflows's alternating mask)."""
    start = 0 if config["reverse_mask"] else 1
    return list(range(start, int(config["dim"]), 2))


def _spline_coupling_order(config: Config) -> list[int]:
    moved = _spline_coupling_transformed(config)
    return [i for i in range(int(config["dim"])) if i not in moved] + moved


def _spline_coupling(config: Config) -> Any:
    return nf.flows.CoupledRationalQuadraticSpline(
        int(config["dim"]), int(config["blocks"]), int(config["hidden"]),
        num_context_channels=config.get("context") or None, num_bins=int(config["bins"]),
        tail_bound=float(config["tail_bound"]), reverse_mask=bool(config["reverse_mask"]),
    )


def _image(config: Config) -> tuple[int, ...]:
    return tuple(int(n) for n in config["shape"])


def _initialised(module: Any) -> Any:
    """``module`` with every ActNorm inside it initialised from torch's (seeded) generator, as a
    trained checkpoint would be loaded (not from a data batch the suite would then depend on)."""
    for layer in module.modules():
        if isinstance(layer, nf.flows.ActNorm):
            with torch.no_grad():
                layer.s.normal_(0.0, 0.3)
                layer.t.normal_(0.0, 0.3)
            layer.data_dep_init_done = torch.tensor(1.0)
    return module


def _glow_block_fresh(config: Config) -> Any:
    return nf.flows.GlowBlock(
        int(config["shape"][0]), int(config["hidden"]), scale=True, scale_map=config["scale_map"],
        split_mode=config["split_mode"], init_zeros=False, use_lu=bool(config["use_lu"]),
    )


def _glow_block(config: Config) -> Any:
    return _initialised(_glow_block_fresh(config))


def _lipschitz_layers(config: Config) -> int:
    return len(config["hidden"]) + 1


def _residual_net(config: Config) -> Any:
    dim = int(config["dim"])
    return nf.nets.LipschitzMLP([dim, *config["hidden"], dim], lipschitz_const=float(config["lipschitz_const"]),
                                init_zeros=False)


def _residual_exact(config: Config) -> Any:
    return nf.flows.Residual(_residual_net(config), brute_force=True)


def _residual(config: Config) -> Any:
    """Residual with its estimator options; D = 2, where evaluation mode computes the exact log-det
    (brute force) and training mode the roulette estimate (for D > 2 both modes are random)."""
    return nf.flows.Residual(
        _residual_net(config), reduce_memory=bool(config["reduce_memory"]), n_samples=int(config["n_samples"]),
        n_exact_terms=int(config["n_exact_terms"]), n_dist=config["n_dist"],
    )


def _normalizing_flow(config: Config) -> Any:
    dim, hidden = int(config["dim"]), int(config["hidden"])
    half = {"dim": dim, "hidden": hidden, "scale_map": "exp", "split_mode": "channel"}
    layers = [nf.flows.MaskedAffineAutoregressive(dim, hidden, num_blocks=1), nf.flows.Permute(dim, mode="swap"),
              _coupling_block(half)]
    return nf.NormalizingFlow(nf.distributions.DiagGaussian(dim), layers)


def _lipschitz_bound(configs: tuple[Config, ...]) -> float:
    """The bound on Lip(g) every config gives: Π_l lipschitz_const (each InducedNormLinear is
    scaled to at most that 2-norm; Swish/1.1 is 1-Lipschitz)."""
    return max(float(c["lipschitz_const"]) ** _lipschitz_layers(c) for c in configs)


RESIDUAL_EXACT_CONFIGS = ({"dim": 2, "hidden": [6], "lipschitz_const": 0.9},
                          {"dim": 2, "hidden": [4, 4], "lipschitz_const": 0.8})
RESIDUAL_CONFIGS = (
    {"dim": 2, "hidden": [6], "lipschitz_const": 0.9, "reduce_memory": True, "n_samples": 1, "n_exact_terms": 2,
     "n_dist": "geometric"},
    {"dim": 2, "hidden": [5], "lipschitz_const": 0.8, "reduce_memory": False, "n_samples": 2, "n_exact_terms": 3,
     "n_dist": "poisson"},
)

FOREIGN: tuple[tuple[ForeignKind, Binding], ...] = (
    (ForeignKind(
        "planar_leaky_relu", _vector, ({"dim": 2}, {"dim": 3}, {"dim": 5}),
        summary="Planar(act='leaky_relu'): x = z + û·leaky_relu(wᵀz + b), closed-form inverse",
    ), Binding(lambda c: nf.flows.Planar(_vector(c), act="leaky_relu"), "generative")),
    (ForeignKind(
        "masked_affine", _vector,
        ({"dim": 2, "hidden": 4, "parity": 0}, {"dim": 3, "hidden": 4, "parity": 1},
         {"dim": 5, "hidden": 6, "parity": 0}),
        summary="MaskedAffineFlow with MLP scale and shift (RealNVP)", autoregressive_order=_mask_order,
    ), Binding(_masked_affine, "generative")),
    (ForeignKind(
        "masked_additive", _vector, ({"dim": 2, "hidden": 4, "parity": 1}, {"dim": 4, "hidden": 4, "parity": 0}),
        summary="MaskedAffineFlow with a shift only (NICE)", autoregressive_order=_mask_order,
        volume_preserving=True,
    ), Binding(_masked_additive, "generative")),
    (ForeignKind(
        "affine_coupling_block", _vector,
        tuple({"dim": d, "hidden": 4, "scale_map": m, "split_mode": s}
              for d, m, s in ((2, "exp", "channel"), (3, "sigmoid", "channel_inv"), (5, "sigmoid_inv", "channel"),
                              (4, "exp", "channel_inv"))),
        summary="AffineCouplingBlock (split, affine coupling with an MLP, merge)", autoregressive_order=_coupling_order,
    ), Binding(_coupling_block, "generative")),
    (ForeignKind(
        "maf", _vector,
        ({"dim": 2, "hidden": 4, "blocks": 1, "residual_blocks": True, "activation": "relu"},
         {"dim": 3, "hidden": 5, "blocks": 2, "residual_blocks": False, "activation": "tanh"},
         {"dim": 4, "hidden": 6, "blocks": 1, "residual_blocks": True, "activation": "tanh", "context": 2}),
        summary="MaskedAffineAutoregressive (MADE), x = scale(z_<d)·z + shift(z_<d): D passes to z",
        context_shape=_context, autoregressive_order=_natural,
    ), Binding(_maf, "generative", context=True)),
    (ForeignKind(
        "spline_autoregressive", _vector,
        ({"dim": 2, "hidden": 4, "blocks": 1, "bins": 4, "tail_bound": 3.0},
         {"dim": 3, "hidden": 5, "blocks": 1, "bins": 3, "tail_bound": 2.0, "context": 2}),
        summary="AutoregressiveRationalQuadraticSpline (NSF-AR, linear tails), one pass to z",
        context_shape=_context, autoregressive_order=_natural,
    ), Binding(_spline_autoregressive, "generative", context=True)),
    (ForeignKind(
        "spline_coupling", _vector,
        ({"dim": 2, "hidden": 4, "blocks": 1, "bins": 4, "tail_bound": 3.0, "reverse_mask": False},
         {"dim": 3, "hidden": 5, "blocks": 1, "bins": 3, "tail_bound": 2.0, "reverse_mask": True, "context": 2}),
        summary="CoupledRationalQuadraticSpline (NSF-C with unconditional splines on the kept half)",
        context_shape=_context, autoregressive_order=_spline_coupling_order,
    ), Binding(_spline_coupling, "generative", context=True)),
    (ForeignKind(
        "glow_block", _image,
        ({"shape": [2, 2, 2], "hidden": 4, "scale_map": "sigmoid", "split_mode": "channel", "use_lu": True},
         {"shape": [3, 2, 2], "hidden": 3, "scale_map": "exp", "split_mode": "checkerboard", "use_lu": False}),
        summary="GlowBlock: affine coupling (conv net), invertible 1×1 conv, ActNorm", large=(1.0, 10.0),
    ), Binding(_glow_block, "generative", fresh=_glow_block_fresh)),
    (ForeignKind(
        "residual_exact", _vector, RESIDUAL_EXACT_CONFIGS,
        summary="Residual(LipschitzMLP), D = 2, brute-force exact log-det", large=(1.0, 10.0),
        residual_lipschitz=_lipschitz_bound(RESIDUAL_EXACT_CONFIGS),
    ), Binding(_residual_exact, "generative")),
    (ForeignKind(
        "residual", _vector, RESIDUAL_CONFIGS,
        summary="Residual(LipschitzMLP), D = 2: roulette estimate in training, exact in evaluation", large=(1.0, 10.0),
        residual_lipschitz=_lipschitz_bound(RESIDUAL_CONFIGS), stochastic_logdet=True,
    ), Binding(_residual, "generative")),
    (ForeignKind(
        "normalizing_flow", _vector, ({"dim": 2, "hidden": 4}, {"dim": 3, "hidden": 4}),
        summary="NormalizingFlow([MaskedAffineAutoregressive, Permute('swap'), AffineCouplingBlock])",
    ), Binding(_normalizing_flow, "container")),
)

REGISTERED: dict[str, Binding] = {
    "planar": Binding(_planar, "same"),
    "radial": Binding(_radial, "same"),
    "actnorm": Binding(_actnorm, "generative", fresh=_actnorm_fresh),
}

#: Requirements a kind lacks: the tanh planar flow and the radial flow have no inverse in normflows.
NO_INVERSE = frozenset({"inverse", "inverse_logdet", "inverse_grad"})


# ----------------------------------------------------------------------------- the adapter

class NormflowsAdapter(TorchFlowAdapter):
    """normflows's layers through flowspec's calling convention (module docstring)."""

    implementation = "normflows"

    def __init__(self) -> None:
        self._bindings: dict[str, Binding] = {**REGISTERED, **{f"normflows:{k.name}": b for k, b in FOREIGN}}
        super().__init__(name="normflows", kinds=set(REGISTERED), instantiator=self._build, fresh=self._fresh_build,
                         hooks={"inverse_logdet", "initialize"}, native_direction="both")

    def capabilities(self) -> Capabilities:
        return replace(
            super().capabilities(), foreign=tuple(k for k, _ in FOREIGN),
            without={"planar": NO_INVERSE, "radial": NO_INVERSE}, validates_input=False,
            conventions={"actnorm": frozenset({"actnorm_unbiased_std", "actnorm_std_epsilon"}),
                         "normflows:residual": frozenset({"training_logdet_surrogate"})},
        )

    def _binding(self, kind: str) -> Binding:
        if kind not in self._bindings:
            raise Declined(f"normflows has no layer mapped to the kind {kind!r}")
        return self._bindings[kind]

    def _construct(self, kind: str, config: Config, seed: int, fresh: bool) -> Any:
        """The module of ``kind`` for ``config``, parameters drawn from ``seed`` (torch's generator,
        forked so the caller's stream is untouched)."""
        binding = self._binding(kind)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            module = binding.construct(config, fresh)
        module.flowspec_kind = kind
        return module

    def _build(self, kind: str, config: Config, seed: int) -> Any:
        return self._construct(kind, config, seed, fresh=False)

    def _fresh_build(self, kind: str, config: Config, seed: int) -> Any:
        """As a user constructs it: ActNorm layers not yet initialised (other kinds as built)."""
        return self._construct(kind, config, seed, fresh=True)

    def _direction(self, module: Any) -> Binding:
        return self._binding(module.flowspec_kind)

    @staticmethod
    def _args(binding: Binding, value: Any, context: Any) -> tuple[Any, ...]:
        return (value, context) if binding.context else (value,)

    def call_forward(self, module: Any, x: Any, context: Any) -> tuple[Any, Any]:
        binding = self._direction(module)
        if binding.direction == "same":
            return module(x)
        if binding.direction == "container":
            return module.inverse_and_log_det(x)
        return module.inverse(*self._args(binding, x, context))

    def call_inverse_with_logdet(self, module: Any, z: Any, context: Any) -> tuple[Any, Any]:
        binding = self._direction(module)
        if binding.direction == "same":
            raise NotSupported(f"normflows's {type(module).__name__} has no inverse")
        if binding.direction == "container":
            return module.forward_and_log_det(z)
        return module(*self._args(binding, z, context))

    def call_inverse(self, module: Any, z: Any, context: Any) -> Any:
        return self.call_inverse_with_logdet(module, z, context)[0]

    def spec_parameters(self, flow: Any) -> dict[str, Any]:
        """The module's trainable parameters under normflows's own names, prefixed ``normflows.``:
        none is in flowspec's canonical layout (Planar's ``u``, ``w``, ``b`` carry a batch axis), so
        the suite never writes a spec's parameters into them by name."""
        return {f"normflows.{name}": p for name, p in flow.named_parameters() if p.requires_grad}

    def call_hook(self, flow: Any, hook: str, *args: Any, **kwargs: Any) -> Any:
        """``initialize(x)``: normflows's ActNorm initialises on its first normalizing-direction
        call, so the flag is cleared and that call made; other hooks as the base class."""
        if hook != "initialize" or getattr(flow, "flowspec_kind", None) != "actnorm":
            return super().call_hook(flow, hook, *args, **kwargs)
        (x,) = args
        flow.data_dep_init_done = torch.zeros((), dtype=flow.data_dep_init_done.dtype)
        with torch.no_grad():
            flow.inverse(self.tensor(flow, x))
        return None


conformance_adapter = NormflowsAdapter
