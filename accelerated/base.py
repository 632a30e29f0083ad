"""The base class of every accelerated flow, its registry, and input validation.

A flow is a ``torch.nn.Module`` with ``forward(x, context=None) -> (z, logabsdet)`` (data to
latent, with ``log|det ∂z/∂x|`` per sample) and ``inverse(z, context=None) -> x``. Parameters and
buffers are named as in the kind's canonical layout, so :meth:`Flow.to_spec` and
:meth:`Flow.from_spec` are generic.

Validation follows ``torch.distributions``: every flow checks its inputs (type, dtype, shape,
NaN/inf, domain) and its outputs (non-finite values) unless validation is turned off, per instance
(``validate_args=False``) or globally (:meth:`Flow.set_default_validate_args`), for hot paths.
Checking finiteness synchronises a CUDA stream, which is what the switch is for.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from flowspec import registry
from flowspec.errors import ConfigError, DomainError, FlowInputError, NumericalError
from flowspec.spec import FlowSpec

MODULES: dict[str, type["Flow"]] = {}


def register(kind: str):
    """Class decorator: make ``cls`` the accelerated implementation of ``kind``."""
    def wrap(cls: type["Flow"]) -> type["Flow"]:
        cls.kind = kind
        MODULES[kind] = cls
        return cls
    return wrap


def _module(kind: str) -> type["Flow"]:
    try:
        return MODULES[kind]
    except KeyError:
        raise ConfigError(
            f"flowspec.accelerated has no implementation of kind {kind!r}; "
            f"it implements: {', '.join(sorted(MODULES))}"
        ) from None


DTYPES = (torch.float32, torch.float64)
"""The dtypes flows are built and checked in (float16 and bfloat16 are not checked by anything)."""


def _check_dtype(dtype: Any) -> torch.dtype:
    if dtype not in DTYPES:
        raise ConfigError(f"flowspec.accelerated supports dtypes torch.float32 and torch.float64, got {dtype!r}")
    return dtype


def from_spec(spec: FlowSpec, *, dtype: torch.dtype = torch.float64, device: Any = "cpu") -> "Flow":
    """Build the accelerated flow described by ``spec`` (any registered kind) in ``dtype``
    (:data:`DTYPES`)."""
    if not isinstance(spec, FlowSpec):
        raise ConfigError(f"from_spec needs a FlowSpec (FlowSpec.from_json reads JSON), got {type(spec).__name__}")
    registry.get(spec.kind).validate_config(spec.config)
    return _module(spec.kind).from_spec(spec).to(dtype=_check_dtype(dtype), device=device)


def fresh_from_spec(spec: FlowSpec, *, dtype: torch.dtype = torch.float64, device: Any = "cpu") -> "Flow":
    """The flow of ``spec``'s kind and config as constructed, before data-dependent initialisation
    (:meth:`Flow.fresh_from_spec`)."""
    return _module(spec.kind).fresh_from_spec(spec).to(dtype=_check_dtype(dtype), device=device)


def int_list(value: Any, name: str) -> list[int]:
    """``value`` (a config entry) as a list of ints; anything but a list or tuple of integers (a bare
    int, a string, a float entry) raises :class:`ConfigError` naming ``name``, never a bare TypeError."""
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"{name} must be a list of ints, got {value!r}")
    return [int(v) for v in value]


def _describe_bad(t: Tensor) -> str:
    bad = ~torch.isfinite(t)
    idx = tuple(int(i) for i in torch.nonzero(bad)[0])
    return f"{int(bad.sum())} non-finite entries, first at index {idx}"


class Flow(nn.Module):
    """Base class (see the module docstring). Subclasses implement ``_forward`` and ``_inverse``."""

    kind: ClassVar[str] = ""
    domain: ClassVar[tuple[float | None, float | None]] = (None, None)
    codomain: ClassVar[tuple[float | None, float | None]] = (None, None)
    context_shape: tuple[int, ...] | None = None
    # Whether the flow sets parameters from its first training batch (see :meth:`fresh_from_spec`).
    data_dependent_init: ClassVar[bool] = False
    _default_validate_args: ClassVar[bool] = True

    def __init__(self, *, validate_args: bool | None = None):
        super().__init__()
        self.validate_args = Flow._default_validate_args if validate_args is None else validate_args
        # An empty buffer that follows .to(dtype, device), so that parameter-free flows know theirs.
        self.register_buffer("_anchor", torch.empty(0), persistent=False)

    @staticmethod
    def set_default_validate_args(value: bool) -> None:
        """Turn validation on or off for every flow created afterwards (default: on)."""
        Flow._default_validate_args = bool(value)

    # ------------------------------------------------------------------ shapes and config
    @property
    def event_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self.event_shape

    def config(self) -> dict[str, Any]:
        """The kind's plain configuration (the ``config`` of :meth:`to_spec`)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ public API
    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(z, log|det ∂z/∂x|)`` for a batch ``x`` of shape ``(batch, *event_shape)``."""
        self._check_call(x, self.event_shape, self.domain, "x", context)
        if x.shape[0] == 0:  # an empty batch: empty results of the right shapes (README, "Empty batches")
            return x.new_zeros((0,) + tuple(self.latent_shape)), x.new_zeros(0)
        z, logdet = self._forward(x, context)
        self._check_outputs(forward=z, **{"log|det|": logdet})
        return z, logdet

    def inverse(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """``x = f⁻¹(z)`` for a batch ``z`` of shape ``(batch, *latent_shape)``."""
        self._check_call(z, self.latent_shape, self.codomain, "z", context)
        if z.shape[0] == 0:
            return z.new_zeros((0,) + tuple(self.event_shape))
        x = self._inverse(z, context)
        self._check_outputs(inverse=x)
        return x

    def inverse_and_logdet(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(x, log|det ∂x/∂z|)`` with ``x = f⁻¹(z)``: the inverse direction's log-determinant,
        ``−log|det ∂z/∂x|`` at x (inverse function theorem). Generic: the inverse, then the
        negated log-det of a forward at the solved point; kinds that know it directly override
        :meth:`_inverse_and_logdet`."""
        self._check_call(z, self.latent_shape, self.codomain, "z", context)
        if z.shape[0] == 0:
            return z.new_zeros((0,) + tuple(self.event_shape)), z.new_zeros(0)
        x, logdet = self._inverse_and_logdet(z, context)
        self._check_outputs(inverse=x, **{"log|det| of the inverse": logdet})
        return x, logdet

    def _inverse_and_logdet(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        x = self._inverse(z, context)
        return x, -self._forward(x, context)[1]

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _inverse(self, z: Tensor, context: Tensor | None) -> Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------ spec exchange
    def spec_children(self) -> dict[str, "Flow"]:
        """Child flows by their name in the spec's params (default: direct child modules that are flows)."""
        return {name: child for name, child in self.named_children() if isinstance(child, Flow)}

    def spec_tensors(self) -> dict[str, Tensor]:
        """Parameters and buffers in the canonical layout, by canonical (dotted) name.

        Tensors of descendant flows belong to their own specs and are left out, as are names with a
        part that starts with an underscore (internal state such as power-iteration vectors).
        """
        nested = {
            id(t) for m in self.modules() if m is not self and isinstance(m, Flow)
            for t in list(m.parameters()) + list(m.buffers())
        }
        tensors = dict(self.named_parameters())
        tensors.update(self.named_buffers())
        return {
            k: v for k, v in tensors.items()
            if id(v) not in nested and not any(part.startswith("_") for part in k.split("."))
        }

    def spec_parameters(self, prefix: str = "") -> dict[str, Tensor]:
        """Trainable tensors by the dotted names of :meth:`FlowSpec.flat_params` (gradients are compared on these)."""
        out = {prefix + k: v for k, v in self.spec_tensors().items() if isinstance(v, nn.Parameter) and v.requires_grad}
        for name, child in self.spec_children().items():
            out.update(child.spec_parameters(f"{prefix}{name}."))
        return out

    def to_spec(self) -> FlowSpec:
        """The neutral description of this flow, with float64 parameters."""
        params: dict[str, Any] = {
            name: t.detach().to("cpu", torch.float64).numpy().copy() for name, t in self.spec_tensors().items()
        }
        params.update({name: child.to_spec() for name, child in self.spec_children().items()})
        return FlowSpec(self.kind, self.config(), params)

    @classmethod
    def require_kind(cls, spec: FlowSpec) -> None:
        """Raise :class:`ConfigError` unless ``spec`` is of this class's kind (every ``from_spec`` and
        ``fresh_from_spec`` checks this first)."""
        if spec.kind != cls.kind:
            raise ConfigError(f"{cls.__name__} implements kind {cls.kind!r}, not {spec.kind!r}")

    @classmethod
    def from_spec(cls, spec: FlowSpec) -> "Flow":
        """Build from ``spec`` (float64, CPU; move it with ``.to``)."""
        cls.require_kind(spec)
        flow = cls(**spec.config).to(torch.float64)
        flow.load_spec_params(spec)
        return flow

    @classmethod
    def fresh_from_spec(cls, spec: FlowSpec) -> "Flow":
        """The flow as a user constructs it for ``spec``'s config, before any data-dependent
        initialisation: kinds with one (:attr:`data_dependent_init`) keep their construction values
        and ignore ``spec``'s params; others (nothing to initialise from data) load them; composites
        build their children the same way."""
        return cls.from_spec(spec)

    def load_spec_params(self, spec: FlowSpec) -> None:
        """Copy the canonical arrays of ``spec`` into this flow's tensors, checking names and shapes."""
        mine = self.spec_tensors()
        arrays = {k: v for k, v in spec.params.items() if not isinstance(v, FlowSpec)}
        if set(mine) != set(arrays):
            raise ConfigError(
                f"params of kind {self.kind!r} must be {sorted(mine)}, got {sorted(arrays)}"
            )
        with torch.no_grad():
            for name, tensor in mine.items():
                value = np.asarray(arrays[name])
                if tuple(value.shape) != tuple(tensor.shape):
                    raise ConfigError(
                        f"param {name!r} of kind {self.kind!r} must have shape {tuple(tensor.shape)}, "
                        f"got {value.shape}"
                    )
                tensor.copy_(torch.as_tensor(np.array(value), dtype=tensor.dtype))

    # ------------------------------------------------------------------ validation
    def _dtype(self) -> torch.dtype:
        return self._anchor.dtype

    def _check(self, t: Any, shape: tuple[int, ...], bounds: tuple[float | None, float | None], what: str) -> None:
        if not isinstance(t, Tensor):
            raise FlowInputError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise FlowInputError(f"{what} must be a floating-point tensor, got dtype {t.dtype}")
        dtype = self._dtype()
        if t.dtype != dtype:
            raise FlowInputError(f"{what} has dtype {t.dtype} but the {self.kind!r} flow's parameters are {dtype}")
        if t.dim() != len(shape) + 1 or tuple(t.shape[1:]) != tuple(shape):
            raise FlowInputError(
                f"{what} for kind {self.kind!r} must have shape (batch, {', '.join(map(str, shape))}), "
                f"got {tuple(t.shape)}"
            )
        if not bool(torch.isfinite(t).all()):
            raise FlowInputError(f"{what} holds NaN or inf: {_describe_bad(t)}")
        low, high = bounds
        outside = torch.zeros_like(t, dtype=torch.bool)
        if low is not None:
            outside |= t <= low
        if high is not None:
            outside |= t >= high
        if bool(outside.any()):
            idx = tuple(int(i) for i in torch.nonzero(outside)[0])
            raise DomainError(
                f"{what} lies outside the domain ({low}, {high}) of kind {self.kind!r} at index {idx} "
                f"(value {float(t[idx])!r}; {int(outside.sum())} entries in all)"
            )

    def _check_context(self, context: Tensor | None, batch: int) -> None:
        if self.context_shape is None:
            if context is not None:
                raise FlowInputError(f"kind {self.kind!r} takes no context, but one was given")
            return
        if context is None:
            raise FlowInputError(f"kind {self.kind!r} needs a context of shape (batch, *{self.context_shape})")
        self._check(context, self.context_shape, (None, None), "context")
        if context.shape[0] != batch:
            raise FlowInputError(f"context has batch size {context.shape[0]}, the input {batch}")

    def _check_call(self, t: Any, shape: tuple[int, ...], bounds: tuple[float | None, float | None], what: str,
                    context: Tensor | None) -> None:
        """Validate a call's input and its context (when validation is on)."""
        if self.validate_args:
            self._check(t, shape, bounds, what)
            self._check_context(context, t.shape[0])

    def _check_outputs(self, **outputs: Tensor) -> None:
        """Validate a call's outputs, by name (when validation is on)."""
        if self.validate_args:
            for what, t in outputs.items():
                self._check_output(t, what)

    def _check_output(self, t: Tensor, what: str) -> None:
        if not bool(torch.isfinite(t).all()):
            raise NumericalError(f"{what} of kind {self.kind!r} produced non-finite values: {_describe_bad(t)}")


def softplus(a: Tensor) -> Tensor:
    """log(1 + exp(a)) without a cut-off (``torch.nn.functional.softplus`` returns a above 20, which
    differs from the reference's exact value by more than a float64 tolerance), as
    a + log1p(exp(−a)) for a > 0 and log1p(exp(a)) otherwise, each branch fed only arguments at which
    it cannot overflow. Its first and second derivatives are finite everywhere: ``torch.logaddexp``'s
    second derivative is NaN where exp(a) underflows (a below about −88 in float32), which the exact
    log-det's gradient (a derivative of the Jacobian) reaches."""
    positive = a.clamp(min=0.0)
    return torch.where(a > 0, positive + torch.log1p(torch.exp(-positive)), torch.log1p(torch.exp(a.clamp(max=0.0))))


def sample_norm(t: Tensor) -> Tensor:
    """The 2-norm of each sample (all but the first axis), overflow-safe: computed as m·‖t/m‖ with m
    the sample's largest |entry|, so a float32 sample of entries near 1e20 (whose squares overflow)
    has its true norm; a sample holding inf or NaN gets inf or NaN."""
    flat = t.reshape(t.shape[0], -1)
    if flat.shape[1] == 0:
        return flat.new_zeros(flat.shape[0])
    m = flat.abs().amax(dim=1, keepdim=True)
    safe = torch.where((m > 0) & torch.isfinite(m), m, torch.ones_like(m))
    return torch.where(torch.isfinite(m[:, 0]), (flat / safe).norm(dim=1) * safe[:, 0], m[:, 0])


def relative_norm(t: Tensor, ref: Tensor, floor: float = 1.0) -> Tensor:
    """‖t_i‖ / max(‖ref_i‖, floor) per sample, overflow-safe: both are divided by max(max|ref_i|, floor)
    first, so inputs whose norm exceeds the dtype's range (a float32 sample near 3e38) still give the
    right ratio (the stopping rules of the fixed-point inverses)."""
    m = ref.reshape(ref.shape[0], -1).abs().amax(dim=1).clamp_min(floor).reshape((-1,) + (1,) * (t.dim() - 1))
    return sample_norm(t / m) / sample_norm(ref / m).clamp_min(floor / m.reshape(-1))


def batch_sum(t: Tensor) -> Tensor:
    """Sum over all but the batch dimension."""
    return t.reshape(t.shape[0], -1).sum(dim=1)
