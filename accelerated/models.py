r"""Ready-made models: a flow with its standard-normal base, built in one line.

:class:`FlowModel` holds a :class:`~.base.Flow` ``f`` (the normalizing direction, data → latent) and
gives it the density of the change of variables,

.. math::

    \log p(x \mid c) = \log \mathcal N\big(f(x; c); 0, I\big)
                      + \log \left|\det \frac{\partial f(x; c)}{\partial x}\right|,

with sampling ``x = f⁻¹(z; c)``, ``z ~ N(0, I)``, and :meth:`FlowModel.save` / :meth:`FlowModel.load`
(spec and weights in one file). The builders (:data:`BUILDERS`, one convention for all: the event
shape first, then keywords ``layers``, ``hidden``, ``context_dim``, ``learn_base`` and the family's
own options) return a :class:`FlowModel`::

    model = models.realnvp(2)                       # a 2-D density model
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for x in batches:
        loss = -model.log_prob(x).mean(); opt.zero_grad(); loss.backward(); opt.step()

``event_shape`` is an int ``D`` (vectors ``(D,)``) or a tuple: ``(D,)`` or an image ``(C, H, W)``.
Vector models hold no ActNorm (a fresh model samples at once); the image models of the residual,
QuAR and Glow families keep their ActNorms, which initialise from the first forward in training mode.
``learn_base=True`` appends an :class:`~.elementwise.ElementwiseAffine` layer ``z = u⊙exp(s) + t``
in front of the standard normal, so the base of ``u`` is the learnable diagonal Gaussian
``N(−t⊙exp(−s), diag(exp(−2s)))`` while the contract above is unchanged.
"""
from __future__ import annotations

import inspect
import io
import json
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

import flowspec
from flowspec.errors import ConfigError, FlowInputError
from flowspec.spec import FlowSpec

from .autoregressive import MAF
from .base import Flow
from .coupling import AffineCoupling
from .distribution import FlowDistribution
from .elementwise import ElementwiseAffine, Logit
from .multiscale import MultiScale
from .planar import Planar
from .radial import Radial
from .sequential import Sequential
from .spline import SplineAutoregressive, SplineCoupling
from .squeeze import Squeeze
from .sylvester import Sylvester

FORMAT = "flowspec.model"
"""The format tag of a file written by :meth:`FlowModel.save`."""

FORMAT_VERSION = 1
"""The version of that format; :meth:`FlowModel.load` refuses any other."""

VECTOR, IMAGE = "vector (D,)", "image (C, H, W)"
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class FlowModel(nn.Module):
    """A flow with its standard-normal base:
    ``log p(x|c) = log N(f(x; c); 0, I) + log|det ∂f/∂x|`` (module docstring).

    ``flow`` is the normalizing direction (data → latent); ``builder`` and ``arguments`` are the
    name in :data:`BUILDERS` and the keyword arguments that rebuild it (what :meth:`save` records;
    a model made from a flow by hand has none and cannot be saved). Calling the model returns
    :meth:`log_prob`.
    """

    def __init__(self, flow: Flow, *, builder: str | None = None, arguments: Mapping[str, Any] | None = None):
        super().__init__()
        if not isinstance(flow, Flow):
            raise ConfigError(f"FlowModel needs a flowspec Flow, got {type(flow).__name__}")
        self.flow = flow
        self.builder = builder
        self.arguments = dict(arguments or {})

    @property
    def event_shape(self) -> tuple[int, ...]:
        """The shape of one data sample x."""
        return tuple(self.flow.event_shape)

    @property
    def context_shape(self) -> tuple[int, ...] | None:
        """The shape of one context sample c, or None for an unconditional model."""
        cs = self.flow.context_shape
        return None if cs is None else tuple(cs)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """:meth:`log_prob`."""
        return self.log_prob(x, context)

    def distribution(self, context: Tensor | None = None) -> FlowDistribution:
        """The model as a :class:`~.distribution.FlowDistribution` (a ``torch.distributions``
        object), conditioned on ``context`` (one row per sample) where the model is conditional."""
        return FlowDistribution(self.flow, context)

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``log N(f(x; c); 0, I) + log|det ∂f/∂x|`` per sample of the batch ``x``
        (``context``: one row per sample, or one context for all)."""
        return self.distribution(self._context(context, x.shape[0])).log_prob(x)

    def rsample(self, n: int, context: Tensor | None = None, *, generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples ``x = f⁻¹(z; c)``, ``z ~ N(0, I)``, differentiable in the parameters (and
        the context); ``context`` has ``n`` rows or is one context for all."""
        return self.distribution(self._context(context, _count(n))).rsample((n,), generator)

    def sample(self, n: int, context: Tensor | None = None, *, generator: torch.Generator | None = None) -> Tensor:
        """:meth:`rsample` without gradients."""
        with torch.no_grad():
            return self.rsample(n, context, generator=generator)

    def rsample_and_log_prob(self, n: int, context: Tensor | None = None, *,
                             generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``(x, log p(x|c))`` for ``n`` samples in one inverse pass, differentiable: with
        ``z ~ N(0, I)`` and ``(x, log|det ∂x/∂z|) = f⁻¹(z)`` (:meth:`Flow.inverse_and_logdet`, which
        kinds with a direct inverse log-det implement without a forward pass),
        ``log p(x) = log N(z; 0, I) − log|det ∂x/∂z|`` (inverse function theorem)."""
        return self.distribution(self._context(context, _count(n))).rsample_and_log_prob((n,), generator)

    def sample_and_log_prob(self, n: int, context: Tensor | None = None, *,
                            generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """:meth:`rsample_and_log_prob` without gradients."""
        with torch.no_grad():
            return self.rsample_and_log_prob(n, context, generator=generator)

    def _context(self, context: Tensor | None, n: int) -> Tensor | None:
        """``context`` with one row per sample: a single context (of shape ``context_shape``) is
        repeated ``n`` times; an unconditional model refuses one, a conditional model needs one."""
        shape = self.context_shape
        if shape is None:
            if context is not None:
                raise FlowInputError("this model is unconditional (context_shape None), but a context was given")
            return None
        if not isinstance(context, Tensor):
            raise FlowInputError(f"this model is conditional: it needs a context tensor of shape (n, *{shape}) "
                                 f"or {shape}, got {type(context).__name__}")
        if tuple(context.shape) == shape:
            return context.unsqueeze(0).expand(n, *shape)
        if context.dim() != len(shape) + 1 or context.shape[0] != n:
            raise FlowInputError(f"context must have shape ({n}, *{shape}) or {shape}, got {tuple(context.shape)}")
        return context

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> None:
        """Write the model to ``path`` (``torch.save`` of a dict): the format tag :data:`FORMAT` and
        :data:`FORMAT_VERSION`, the flowspec version, the builder's name and arguments, the flow's
        ``to_spec()`` (JSON), the parameters' dtype and the ``state_dict`` (on the CPU)."""
        if self.builder is None:
            raise ConfigError("only a model made by a builder (flowspec.accelerated.models.BUILDERS) can be saved: "
                              "this one has no builder name and arguments to rebuild it from")
        torch.save(self._record(), path)

    def _record(self) -> dict[str, Any]:
        dtype = self.flow._anchor.dtype
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "flowspec_version": flowspec.__version__,
            "builder": self.builder, "arguments": json.dumps(self.arguments), "dtype": str(dtype).split(".")[-1],
            "spec": self.flow.to_spec().to_json(),
            "state_dict": {k: (v.detach().cpu() if isinstance(v, Tensor) else v) for k, v in self.state_dict().items()},
        }

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: Any = None) -> "FlowModel":
        """The model saved at ``path``, bit-identical to the one saved, on ``map_location`` (default: the
        CPU). Refused with a :class:`~flowspec.errors.ConfigError` saying why: a file that cannot be
        read (truncated, corrupted, not a torch file), a file that is not a flowspec model, another
        format version, an unknown builder, weights or a spec that do not match the model the
        builder makes. Nothing is half-loaded: the model is returned only once everything matched."""
        record = _read(path)
        model = _rebuild(record, str(path))
        return model if map_location is None else model.to(map_location)


_KEYS = ("format", "format_version", "flowspec_version", "builder", "arguments", "dtype", "spec", "state_dict")


def _count(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise FlowInputError(f"the number of samples must be an int ≥ 0, got {n!r}")
    return n


def _read(path: str | os.PathLike) -> dict[str, Any]:
    """The saved record, checked for the format tag, version and keys."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read the model file {path}: {exc}") from exc
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol warning: the file is refused below anyway
            warnings.simplefilter("ignore")
            record = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, corrupted or foreign files raise many types
        raise ConfigError(f"{path} is not a readable flowspec model file (truncated or corrupted?): "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a flowspec model file (no format tag {FORMAT!r}; a plain state_dict or "
                          f"another library's checkpoint?)")
    if record.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{path} is a flowspec model file of format version {record.get('format_version')!r} "
                          f"(written by flowspec {record.get('flowspec_version')}); this flowspec "
                          f"({flowspec.__version__}) reads version {FORMAT_VERSION}")
    missing = [k for k in _KEYS if k not in record]
    if missing:
        raise ConfigError(f"{path}: the flowspec model file lacks the entries {missing}")
    return record


def _rebuild(record: dict[str, Any], path: str) -> FlowModel:
    """The builder's model from the record's arguments, with the record's weights, checked against its spec."""
    name, dtype = record["builder"], _DTYPES.get(record["dtype"])
    if name not in BUILDERS:
        raise ConfigError(f"{path}: the model was built by {name!r}, which this flowspec does not have; "
                          f"builders: {', '.join(sorted(BUILDERS))}")
    if dtype is None:
        raise ConfigError(f"{path}: unknown parameter dtype {record['dtype']!r}")
    try:
        arguments, saved = json.loads(record["arguments"]), FlowSpec.from_json(record["spec"])
    except Exception as exc:  # noqa: BLE001 - a damaged entry
        raise ConfigError(f"{path}: damaged arguments or spec entry: {exc}") from None
    with torch.random.fork_rng(devices=[]):  # building draws initial weights: leave the caller's RNG alone
        model = BUILDERS[name](**arguments).to(dtype)
    expected = _structure(FlowSpec.from_json(model.flow.to_spec().to_json()))
    if _structure(saved) != expected:
        raise ConfigError(f"{path}: the saved spec is not the model {name}({_call(arguments)}) builds "
                          f"(another model's spec, or edited arguments)")
    try:
        model.load_state_dict(record["state_dict"], strict=True)
    except Exception as exc:  # noqa: BLE001 - wrong names, shapes or damaged values
        raise ConfigError(f"{path}: the weights do not fit {name}({_call(arguments)}): {exc}") from None
    _check_params(model.flow.to_spec(), saved, path)
    return model


def _structure(spec: FlowSpec) -> tuple:
    """A spec's kinds and configs, recursively (its parameters left out)."""
    children = tuple(sorted((k, _structure(v)) for k, v in spec.params.items() if isinstance(v, FlowSpec)))
    return spec.kind, json.dumps(dict(spec.config), sort_keys=True), children


def _check_params(loaded: FlowSpec, saved: FlowSpec, path: str) -> None:
    """The loaded weights are the saved spec's, exactly (the state_dict and the spec agree)."""
    mine = loaded.flat_params()
    for name, value in saved.flat_params().items():
        if not np.array_equal(np.asarray(mine[name]), np.asarray(value)):
            raise ConfigError(f"{path}: the weights and the saved spec disagree at param {name!r} (a corrupted file)")


def _call(arguments: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in arguments.items())


# ============================================================================== builders

@dataclass(frozen=True)
class _About:
    """What :func:`describe` says of a builder beyond its signature."""

    shapes: tuple[str, ...]
    conditional: bool
    kinds: tuple[str, ...]


BUILDERS: dict[str, Callable[..., FlowModel]] = {}
"""Every builder by name; :func:`build` looks names up here."""

_ABOUT: dict[str, _About] = {}


_COMMON_DOC = """

    ``event_shape``: {shapes} (an int D for a vector). ``context_dim``: the size of the context
    vector c{context}. ``learn_base``: append an :class:`~.elementwise.ElementwiseAffine` layer in
    front of the standard normal (a learnable diagonal Gaussian base). Returns a :class:`FlowModel`
    that records this builder's name and every argument (:meth:`FlowModel.save`).
    """


def _builder(name: str, shapes: tuple[str, ...], conditional: bool, kinds: tuple[str, ...]):
    """Register a builder: its result records the builder's name and the arguments it was called with."""
    def wrap(fn: Callable[..., Flow]) -> Callable[..., FlowModel]:
        signature = inspect.signature(fn)

        def build_model(event_shape: int | Sequence[int], **kw: Any) -> FlowModel:
            shape = _event_shape(event_shape)
            if (IMAGE if len(shape) == 3 else VECTOR) not in shapes:
                raise ConfigError(f"{name} takes event shapes {' or '.join(shapes)}, got {shape}")
            open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
            unknown = sorted(set(kw) - set(signature.parameters))
            if unknown and not open_ended:
                raise ConfigError(f"{name} got unknown options {unknown}; it takes "
                                  f"{sorted(p for p in signature.parameters if p != 'shape')}")
            if kw.get("context_dim", 0) and not conditional:
                raise ConfigError(f"{name} models are not conditional: context_dim must be 0, "
                                  f"got {kw['context_dim']!r}")
            learn_base = kw.get("learn_base", False)
            if not isinstance(learn_base, bool):
                raise ConfigError(f"learn_base must be a bool, got {learn_base!r}")
            flow = fn(shape, **kw)
            if learn_base:
                flow = Sequential([flow, ElementwiseAffine(list(flow.latent_shape))])
            return FlowModel(flow, builder=name, arguments={"event_shape": list(shape), **_plain(_resolved(kw))})

        def _resolved(kw: Mapping[str, Any]) -> dict[str, Any]:
            """Every argument, defaults included (what the file records), the open-ended options flattened."""
            bound = signature.bind(None, **kw)
            bound.apply_defaults()
            args = {k: v for k, v in bound.arguments.items() if k != "shape"}
            for p in signature.parameters.values():
                if p.kind is inspect.Parameter.VAR_KEYWORD:
                    args.update(args.pop(p.name))
            return args

        build_model.__name__ = build_model.__qualname__ = name
        build_model.__doc__ = (fn.__doc__ or "") + _COMMON_DOC.format(
            shapes=" or ".join(shapes), context="" if conditional else " (0: these models are unconditional)")
        build_model.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[inspect.Parameter("event_shape", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
            + [p for p in signature.parameters.values() if p.name != "shape"],
            return_annotation="FlowModel")
        BUILDERS[name] = build_model
        _ABOUT[name] = _About(shapes, conditional, kinds)
        return build_model
    return wrap


def _event_shape(event_shape: Any) -> tuple[int, ...]:
    shape = (event_shape,) if isinstance(event_shape, (int, np.integer)) else event_shape
    if not isinstance(shape, (tuple, list)) or not all(
            isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n > 0 for n in shape):
        raise ConfigError(f"event_shape must be an int D or a tuple of positive ints, got {event_shape!r}")
    if len(shape) not in (1, 3):
        raise ConfigError(f"event_shape must be a vector (D,) or an image (C, H, W), got {tuple(shape)}")
    return tuple(int(n) for n in shape)


def _plain(kw: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments as JSON values (what :meth:`FlowModel.save` records); others are refused."""
    try:
        return json.loads(json.dumps(dict(kw)))
    except TypeError as exc:
        raise ConfigError(f"builder arguments must be plain values (numbers, strings, lists): {exc}") from None


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive int, got {value!r}")
    return value


def _vector_stack(layer: Callable[[int], Flow], layers: int) -> Sequential:
    return Sequential([layer(i) for i in range(_positive("layers", layers))])


@_builder("realnvp", (VECTOR, IMAGE), True, ("affine_coupling", "squeeze", "logit", "multiscale"))
def realnvp(shape: tuple[int, ...], *, layers: int = 4, hidden: int = 64, depth: int = 2, activation: str = "relu",
            scale_factor: float = 1.0, context_dim: int = 0, scales: int = 2, logit: bool = True,
            alpha: float = 0.05, learn_base: bool = False) -> Flow:
    """RealNVP (Dinh et al. 2017; the survey's eq. 38-39): affine couplings z_t = x_t·exp(s) + t,
    s = scale_factor·tanh(s_raw), log|det| = Σ s (:class:`~.coupling.AffineCoupling`).

    Vectors ``(D,)``, D ≥ 2: ``layers`` couplings (default 4) with the channel mask of alternating
    parity, each conditioner an MLP of ``depth`` (2) hidden layers of ``hidden`` (64) units with
    ``activation`` ("relu"), reading the ``context_dim`` (0) context entries too.
    Images ``(C, H, W)`` (Sec. 3.6, unconditional): [Logit(``alpha``), when ``logit``] then a
    :class:`~.multiscale.MultiScale` of ``scales`` (2) levels, each ``layers`` checkerboard couplings,
    and on all levels but the last a Squeeze and ``layers`` channel couplings, half the channels
    factored out after each; conditioners 3×3 convolutions of ``hidden`` channels.
    """
    if len(shape) == 1:
        if shape[0] < 2:
            raise ConfigError(f"realnvp on vectors needs D ≥ 2 (a coupling splits the entries), got {shape}")
        return _vector_stack(lambda i: AffineCoupling(list(shape), "channel", i % 2, "mlp", hidden, depth, activation,
                                                      context_dim, scale_factor), layers)
    if context_dim:
        raise ConfigError("realnvp image models are unconditional: context_dim must be 0 (image contexts: build "
                          "AffineCoupling layers with context_channels)")
    levels, current = [], shape
    for scale in range(_positive("scales", scales)):
        last = scale + 1 == scales
        level: list[Flow] = [AffineCoupling(list(current), "checkerboard", i % 2, "conv", hidden, depth, activation,
                                            scale_factor=scale_factor) for i in range(_positive("layers", layers))]
        if not last:
            if current[1] % 2 or current[2] % 2:
                raise ConfigError(f"realnvp scale {scale} needs an even height and width to squeeze, got {current}")
            level.append(Squeeze(*current))
            current = tuple(level[-1].latent_shape)
            level += [AffineCoupling(list(current), "channel", i % 2, "conv", hidden, depth, activation,
                                     scale_factor=scale_factor) for i in range(layers)]
            current = (current[0] // 2,) + current[1:]
        levels.append(Sequential(level))
    model: Flow = MultiScale(levels)
    return Sequential([Logit(list(shape), alpha=alpha), model]) if logit else model


@_builder("maf", (VECTOR,), True, ("maf",))
def maf(shape: tuple[int, ...], *, layers: int = 4, hidden: int = 64, depth: int = 2, activation: str = "relu",
        context_dim: int = 0, learn_base: bool = False) -> Flow:
    """MAF (Papamakarios et al. 2017, eq. 3-5): ``layers`` (4) masked autoregressive layers
    z = (x − μ(x_<))·exp(−α(x_<)), log|det| = −Σα, orders alternating natural / reversed; each MADE
    has ``depth`` (2) hidden layers of ``hidden`` (64) units with ``activation`` ("relu") and reads
    the ``context_dim`` (0) context entries. Density in one pass, sampling in D passes."""
    return _vector_stack(lambda i: MAF(shape[0], ("natural", "reversed")[i % 2], [hidden] * depth, activation,
                                       context_dim), layers)


@_builder("nsf", (VECTOR,), True, ("spline_coupling", "spline_autoregressive"))
def nsf(shape: tuple[int, ...], *, layers: int = 4, hidden: int = 64, depth: int = 2, activation: str = "relu",
        bins: int = 8, bound: float = 5.0, autoregressive: bool = False, context_dim: int = 0,
        learn_base: bool = False) -> Flow:
    """Neural spline flow (Durkan et al. 2019, eq. 4-8): ``layers`` (4) rational-quadratic splines of
    ``bins`` (8) bins on [−``bound``, ``bound``] (5; identity tails) whose parameters come from a
    conditioner of ``depth`` (2) hidden layers of ``hidden`` (64) units with ``activation`` ("relu").
    ``autoregressive=False``: NSF-C couplings (channel mask, alternating parity; D ≥ 2);
    ``True``: NSF-AR with MADE conditioners, orders alternating natural / reversed."""
    if autoregressive:
        return _vector_stack(lambda i: SplineAutoregressive(shape[0], ("natural", "reversed")[i % 2],
                                                            [hidden] * depth, activation, context_dim, bins, bound),
                             layers)
    if shape[0] < 2:
        raise ConfigError(f"nsf couplings need D ≥ 2, got {shape}; use autoregressive=True for D = 1")
    return _vector_stack(lambda i: SplineCoupling(list(shape), "channel", i % 2, "mlp", hidden, depth, activation,
                                                  context_dim, bins, bound), layers)


def _factor(shape: tuple[int, ...], hidden: int | None, hidden_factor: int | None) -> int:
    """The residual and QuAR blocks' width factor k: hidden widths are ``k·D`` (``k·C`` channels),
    ``hidden_factor`` itself, or the least k with ``k·D ≥ hidden``; by default ``hidden`` = 64 for
    vectors and k = 4 for images."""
    if hidden is not None and hidden_factor is not None:
        raise ConfigError("give hidden (a width) or hidden_factor (a multiple of the event's first size), not both")
    if hidden_factor is not None:
        return _positive("hidden_factor", hidden_factor)
    if hidden is None:
        return 4 if len(shape) == 3 else max(1, math.ceil(64 / shape[0]))
    return max(1, math.ceil(_positive("hidden", hidden) / shape[0]))


def _not_renamed(name: str, options: Mapping[str, Any], renamed: Mapping[str, str]) -> None:
    """Refuse make_model's own names for what the builders call by the common names."""
    for old, new in renamed.items():
        if old in options:
            raise ConfigError(f"{name} takes {new}= (make_model's {old}), got {old}={options[old]!r}")


@_builder("residual", (VECTOR, IMAGE), False, ("residual_mlp", "residual_conv", "actnorm", "squeeze", "logit"))
def residual(shape: tuple[int, ...], *, layers: int = 4, hidden: int | None = None, hidden_factor: int | None = None,
             coeff: float = 0.97, actnorm: bool | None = None, context_dim: int = 0, learn_base: bool = False,
             **options: Any) -> Flow:
    """Residual Flow (Chen et al. 2019; i-ResNet, Behrmann et al. 2019): ``layers`` (4) blocks
    f(x) = x + g(x) with Lip(g) ≤ ``coeff`` (0.97), log|det| by the unbiased Russian-roulette series
    (eq. 6-8), as :func:`flowspec.accelerated.residual.make_model` builds them: ``arch="mlp"`` for
    vectors, ``"conv"`` for images. Hidden widths ``k·D`` (channels ``k·C``): k = ``hidden_factor``,
    or the least k with k·D ≥ ``hidden`` (default: 64 units for vectors, k = 4 for images).
    ``actnorm`` (default: images only) puts ActNorm around every block; ``options`` are make_model's
    (``n_hidden``, ``n_scales``, ``logit``, ``alpha``, block settings such as ``logdet``)."""
    from .residual import make_model

    _not_renamed("residual", options, {"n_blocks": "layers"})
    arch, use_actnorm = ("conv", True) if len(shape) == 3 else ("mlp", False)
    return make_model(arch, shape, n_blocks=_positive("layers", layers),
                      hidden_factor=_factor(shape, hidden, hidden_factor),
                      coeff=coeff, actnorm=use_actnorm if actnorm is None else actnorm, **options)


@_builder("quar", (VECTOR, IMAGE), False, ("quar_mlp", "quar_conv", "actnorm", "squeeze", "logit"))
def quar(shape: tuple[int, ...], *, layers: int = 4, hidden: int | None = None, hidden_factor: int | None = None,
         sigma: float = 0.97, norm: str = "full", actnorm: bool | None = None, context_dim: int = 0,
         learn_base: bool = False, **options: Any) -> Flow:
    """QuAR flow: ``layers`` (4) quasi-autoregressive residual blocks with their exact log-det by
    diagonal propagation, as :func:`flowspec.accelerated.quar.make_model` builds them (``"mlp"`` for
    vectors, ``"conv"`` for images), spectral bound ``sigma`` (0.97), ``norm`` ("full"). Hidden
    widths ``k·D`` (channels ``k·C``) from ``hidden`` or ``hidden_factor`` as for :func:`residual`;
    ``actnorm`` (default: images only); ``options`` are make_model's."""
    from .quar import make_model

    _not_renamed("quar", options, {"n_blocks": "layers"})
    arch, use_actnorm = ("conv", True) if len(shape) == 3 else ("mlp", False)
    return make_model(arch, shape, n_blocks=_positive("layers", layers),
                      hidden_factor=_factor(shape, hidden, hidden_factor),
                      sigma=sigma, norm=norm, actnorm=use_actnorm if actnorm is None else actnorm, **options)


@_builder("planar", (VECTOR,), False, ("planar",))
def planar(shape: tuple[int, ...], *, layers: int = 8, context_dim: int = 0, learn_base: bool = False) -> Flow:
    """A stack of ``layers`` (8) planar flows f(x) = x + û·tanh(wᵀx + b) (Rezende & Mohamed 2015;
    the survey's eq. 15-16), û reparameterised so that wᵀû > −1 (invertible);
    inverse by a scalar safeguarded Newton solve along w."""
    return _vector_stack(lambda i: Planar(list(shape)), layers)


@_builder("radial", (VECTOR,), False, ("radial",))
def radial(shape: tuple[int, ...], *, layers: int = 8, context_dim: int = 0, learn_base: bool = False) -> Flow:
    """A stack of ``layers`` (8) radial flows f(x) = x + β(x − x0)/(α + ‖x − x0‖) (Rezende & Mohamed
    2015; the survey's eq. 17-18), β > −α (invertible); closed-form inverse. Each starts as
    the identity."""
    return _vector_stack(lambda i: Radial(list(shape)), layers)


def _made_stack(kind: str, shape: tuple[int, ...], n_layers: int, hidden: int, depth: int, activation: str,
                context_dim: int, **options: Any) -> Sequential:
    """``layers`` flows of a MADE-conditioned ``kind`` (the class :data:`~.base.MODULES` registers for
    it, looked up when called), orders alternating natural / reversed; ``options`` its own config."""
    from .base import MODULES

    if kind not in MODULES:
        raise ConfigError(f"flowspec.accelerated has no implementation of kind {kind!r} to build from")
    return _vector_stack(lambda i: MODULES[kind](shape[0], ("natural", "reversed")[i % 2], [hidden] * depth,
                                                 activation, context_dim, **options), n_layers)


@_builder("naf", (VECTOR,), True, ("naf",))
def naf(shape: tuple[int, ...], *, layers: int = 4, hidden: int = 64, depth: int = 2, activation: str = "relu",
        components: int = 8, sigmoid_layers: int = 1, context_dim: int = 0, learn_base: bool = False) -> Flow:
    """Neural autoregressive flow with deep sigmoidal transformers (Huang et al. 2018, eq. 8):
    ``layers`` (4) NAF-DSF layers z_d = σ⁻¹(Σ_j w_j σ(a_j x_d + b_j)), ``sigmoid_layers`` (1) such
    stages of ``components`` (8) sigmoids each, with parameters from a MADE of ``depth`` (2) hidden
    layers of ``hidden`` (64) units (``activation`` "relu", ``context_dim`` (0) context entries);
    orders alternating natural / reversed. Density in one pass, sampling in D passes of solves."""
    return _made_stack("naf", shape, layers, hidden, depth, activation, context_dim, components=components,
                       layers=sigmoid_layers)


@_builder("sos", (VECTOR,), True, ("sos",))
def sos(shape: tuple[int, ...], *, layers: int = 4, hidden: int = 64, depth: int = 2, activation: str = "relu",
        degree: int = 2, squares: int = 2, context_dim: int = 0, learn_base: bool = False) -> Flow:
    """Sum-of-squares polynomial flow (Jaini et al. 2019, Sec. 3): ``layers`` (4) layers
    z_d = c + ∫₀^{x_d} Σ_k (Σ_l a_kl t^l)² + ε² dt with ``squares`` (2) squares of polynomials of
    ``degree`` (2), parameters from a MADE of ``depth`` (2) hidden layers of ``hidden`` (64) units;
    orders alternating natural / reversed. Density in one pass, sampling in D passes of solves."""
    return _made_stack("sos", shape, layers, hidden, depth, activation, context_dim, degree=degree, squares=squares)


@_builder("umnn", (VECTOR,), True, ("umnn",))
def umnn(shape: tuple[int, ...], *, layers: int = 4, hidden: int = 64, depth: int = 2, activation: str = "relu",
         nodes: int = 32, context_dim: int = 0, learn_base: bool = False) -> Flow:
    """Unconstrained monotonic neural network flow (Wehenkel & Louppe 2019, Sec. 3):
    ``layers`` (4) layers z_d = β_d + ∫₀^{x_d} g(t; h_d) dt, g > 0 an integrand network, the integral
    by Clenshaw–Curtis with ``nodes`` (32) nodes, (β_d, h_d) from a MADE of ``depth`` (2) hidden
    layers of ``hidden`` (64) units; orders alternating natural / reversed."""
    return _made_stack("umnn", shape, layers, hidden, depth, activation, context_dim, nodes=nodes)


@_builder("sylvester", (VECTOR,), True, ("sylvester",))
def sylvester(shape: tuple[int, ...], *, layers: int = 4, m: int | None = None, parameterization: str = "orthogonal",
              context_dim: int = 0, learn_base: bool = False) -> Flow:
    """A stack of ``layers`` (4) Sylvester flows f(x) = x + Q·R·tanh(R̃·Qᵀx + b) (van den Berg et
    al. 2018; the survey's eq. 31-33), log|det| = Σ_i log(1 + r_ii·r̃_ii·h′(a_i)) by the
    determinant identity; Q of ``m`` (default D) orthonormal columns by ``parameterization``
    ("orthogonal", "householder" or "triangular"). With ``context_dim`` the parameters are amortized,
    θ + θ_context·c per sample. Inverse by back-substitution of scalar solves."""
    return _vector_stack(lambda i: Sylvester(list(shape), m=m, parameterization=parameterization,
                                             context_dim=context_dim), layers)


@_builder("glow", (IMAGE,), False,
          ("glow", "squeeze", "actnorm", "conv1x1_lu", "affine_coupling", "additive_coupling", "multiscale"))
def glow(shape: tuple[int, ...], *, layers: int = 4, hidden: int = 64, levels: int = 2, coupling: str = "affine",
         context_dim: int = 0, learn_base: bool = False, **options: Any) -> Flow:
    """Glow (Kingma & Dhariwal 2018, Sec. 3, Table 1): ``levels`` (2) × (Squeeze → ``layers`` (4)
    steps of ActNorm → invertible 1×1 convolution (LU) → ``coupling`` ("affine") coupling) with
    learned-prior splits, conditioners of ``hidden`` (64) channels, as
    :func:`flowspec.accelerated.glow.make_model` builds it (``options``: ``depth``, ``activation``,
    ``scale_factor``). H and W divisible by 2^levels."""
    from .glow import make_model

    _not_renamed("glow", options, {"steps": "layers"})
    return make_model(shape, levels=levels, steps=_positive("layers", layers), hidden=hidden, coupling=coupling,
                      **options)


def build(name: str, event_shape: int | Sequence[int], **overrides: Any) -> FlowModel:
    """The model of builder ``name`` (:data:`BUILDERS`) for ``event_shape`` with its defaults, some
    replaced by ``overrides``; an unknown name raises :class:`~flowspec.errors.ConfigError` listing
    the builders."""
    if name not in BUILDERS:
        raise ConfigError(f"unknown model builder {name!r}; builders: {', '.join(sorted(BUILDERS))}")
    return BUILDERS[name](event_shape, **overrides)


def describe(name: str) -> dict[str, Any]:
    """What builder ``name`` makes: ``summary`` (its docstring's first sentence), ``defaults`` (its
    keyword arguments' defaults), ``shapes`` (the event shapes it takes), ``conditional`` (whether
    ``context_dim`` may be non-zero) and ``kinds`` (the registered kinds its flows are made of)."""
    if name not in BUILDERS:
        raise ConfigError(f"unknown model builder {name!r}; builders: {', '.join(sorted(BUILDERS))}")
    about, fn = _ABOUT[name], BUILDERS[name]
    params = inspect.signature(fn).parameters.values()
    return {
        "name": name,
        "summary": " ".join((fn.__doc__ or "").split("\n\n")[0].split()),
        "defaults": {p.name: p.default for p in params if p.default is not inspect.Parameter.empty},
        "shapes": list(about.shapes),
        "conditional": about.conditional,
        "kinds": list(about.kinds),
    }


__all__ = ["BUILDERS", "FORMAT", "FORMAT_VERSION", "FlowModel", "build", "describe", "glow", "maf", "naf", "nsf",
           "planar", "quar", "radial", "realnvp", "residual", "sos", "sylvester", "umnn"]
