"""Sequential composition: z = f_n ∘ … ∘ f_1 (x), log-determinants summed."""
from __future__ import annotations

from typing import Any, Callable, Sequence

from torch import Tensor, nn

from flowspec.errors import ConfigError
from flowspec.spec import FlowSpec

from .base import Flow, from_spec, fresh_from_spec, register


def _check_chain(flows: Sequence[Any]) -> None:
    """Every child is a :class:`Flow` and each one's latent shape is the next one's event shape (a
    broadcastable mismatch would otherwise run and sum log-dets of different sizes)."""
    for i, child in enumerate(flows):
        if not isinstance(child, Flow):
            raise ConfigError(f"child {i} of a sequential flow is a {type(child).__name__}, not a flowspec Flow")
    for i, (a, b) in enumerate(zip(flows[:-1], flows[1:])):
        if tuple(a.latent_shape) != tuple(b.event_shape):
            raise ConfigError(f"child {i} of a sequential flow outputs latents of shape {tuple(a.latent_shape)} "
                              f"but child {i + 1} ({b.kind}) takes inputs of shape {tuple(b.event_shape)}")


@register("sequential")
class Sequential(Flow):
    """Children applied first to last in the forward direction, last to first in the inverse.

    Conditional children (those with a ``context_shape``) receive the context; others do not.
    """

    def __init__(self, flows: Sequence[Flow], *, validate_args: bool | None = None):
        super().__init__(validate_args=validate_args)
        if not flows:
            raise ConfigError("a sequential flow needs at least one child")
        _check_chain(flows)
        for child in flows:
            child.validate_args = False  # the sequence validates its own input and output
        self.flows = nn.ModuleList(flows)
        shapes = {f.context_shape for f in flows if f.context_shape is not None}
        if len(shapes) > 1:
            raise ConfigError(f"children need different context shapes: {sorted(shapes)}")
        self.context_shape = next(iter(shapes), None)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.flows[0].event_shape

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self.flows[-1].latent_shape

    @property
    def domain(self):  # type: ignore[override]
        return self.flows[0].domain

    @property
    def codomain(self):  # type: ignore[override]
        return self.flows[-1].codomain

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"event_shape": list(self.event_shape), "latent_shape": list(self.latent_shape)}
        if self.context_shape is not None:
            config["context_shape"] = list(self.context_shape)
        return config

    def _context(self, child: Flow, context: Tensor | None) -> Tensor | None:
        return context if child.context_shape is not None else None

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        total = None
        for child in self.flows:
            x, logdet = child(x, self._context(child, context))
            total = logdet if total is None else total + logdet
        return x, total

    def _inverse(self, z: Tensor, context: Tensor | None) -> Tensor:
        for child in reversed(self.flows):
            z = child.inverse(z, self._context(child, context))
        return z

    def _inverse_and_logdet(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """The children's inverses last to first, their inverse log-dets summed."""
        total = None
        for child in reversed(self.flows):
            z, logdet = child.inverse_and_logdet(z, self._context(child, context))
            total = logdet if total is None else total + logdet
        return z, total

    def spec_children(self) -> dict[str, Flow]:
        return {str(i): f for i, f in enumerate(self.flows)}

    @classmethod
    def from_spec(cls, spec: FlowSpec) -> "Sequential":
        return cls([from_spec(c) for c in cls._child_specs(spec)])

    @classmethod
    def fresh_from_spec(cls, spec: FlowSpec) -> "Sequential":
        return cls([fresh_from_spec(c) for c in cls._child_specs(spec)])

    @classmethod
    def _child_specs(cls, spec: FlowSpec) -> list[FlowSpec]:
        cls.require_kind(spec)
        return spec.numbered_children()


def residual_stack(
    arch: str,
    event_shape: Sequence[int],
    block: Callable[[tuple[int, ...], int], Flow],
    *,
    n_blocks: int,
    hidden_factor: int,
    n_scales: int | None = None,
    logit: bool | None = None,
    alpha: float = 0.05,
    actnorm: bool = True,
) -> Sequential:
    """The multi-scale stack of Residual Flows App. E, shared by the residual and QuAR models.

    ``[Logit(α)] → (per scale: [Squeeze →] ActNorm → (block → ActNorm) × n_blocks)``, where
    ``block(shape, hidden_factor)`` builds one block for the current event shape whose hidden layers
    are ``hidden_factor`` times as wide as its input. ``arch`` is ``"mlp"`` (event
    ``(D,)``, one scale, no logit by default) or ``"conv"`` (event ``(C, H, W)``, two scales and a logit
    by default). ActNorm initialises from the first batch in training mode.
    """
    from .actnorm import ActNorm
    from .elementwise import Logit
    from .squeeze import Squeeze

    if arch not in ("mlp", "conv"):
        raise ConfigError(f"arch must be 'mlp' or 'conv', got {arch!r}")
    shape = tuple(int(n) for n in event_shape)
    if len(shape) != (3 if arch == "conv" else 1):
        raise ConfigError(f"arch {arch!r} needs an event shape {'(C, H, W)' if arch == 'conv' else '(D,)'}, got {shape}")
    n_scales = (2 if arch == "conv" else 1) if n_scales is None else n_scales
    if arch == "mlp" and n_scales != 1:
        raise ConfigError("the MLP model has a single scale")
    for name, value in (("n_blocks", n_blocks), ("hidden_factor", hidden_factor), ("n_scales", n_scales)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive int, got {value!r}")
    flows: list[Flow] = []
    if arch == "conv" if logit is None else logit:
        flows.append(Logit(list(shape), alpha=alpha))
    for scale in range(n_scales):
        if scale:
            if shape[1] % 2 or shape[2] % 2:
                raise ConfigError(f"scale {scale} needs even height and width to squeeze, got {shape}")
            flows.append(Squeeze(*shape))
            shape = tuple(flows[-1].latent_shape)
        if actnorm:
            flows.append(ActNorm(list(shape)))
        for _ in range(n_blocks):
            flows.append(block(shape, hidden_factor))
            if actnorm:
                flows.append(ActNorm(list(shape)))
    return Sequential(flows)
