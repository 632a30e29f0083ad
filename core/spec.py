"""The neutral description of a flow shared by every layer.

A :class:`FlowSpec` names a registered ``kind``, a ``config`` of plain values (sizes, activation
names, coefficients) and ``params``: float64 arrays in the reference's canonical layout, or nested
``FlowSpec`` objects for flows that compose others (sequences, multi-scale models).

Direction convention (the papers'): ``forward`` maps data ``x`` to latent ``z`` (the normalizing
direction, f = g⁻¹) and comes with ``log|det ∂f/∂x|``; ``inverse`` maps ``z`` back to ``x``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import numpy as np

from .errors import ConfigError

PLAIN_TYPES = (int, float, str, bool, type(None))
ParamValue = Any  # np.ndarray (float64), a nested FlowSpec, or an autograd box inside the reference


def _check_plain(name: str, value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_check_plain(name, v) for v in value)
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if not isinstance(value, PLAIN_TYPES):
        raise ConfigError(
            f"config entry {name!r} must be a plain int/float/str/bool/None or a list of them, "
            f"got {type(value).__name__}"
        )
    return value


def _check_param(name: str, value: Any) -> ParamValue:
    if isinstance(value, FlowSpec):
        return value
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise ConfigError(f"param {name!r} must be numeric, got dtype {array.dtype}")
    array = np.array(array, dtype=np.float64)
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class FlowSpec:
    """A flow's kind, plain configuration and float64 parameters (see the module docstring)."""

    kind: str
    config: Mapping[str, Any] = field(default_factory=dict)
    params: Mapping[str, ParamValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not self.kind:
            raise ConfigError(f"kind must be a non-empty string, got {self.kind!r}")
        object.__setattr__(self, "config", {k: _check_plain(k, v) for k, v in self.config.items()})
        object.__setattr__(self, "params", {k: _check_param(k, v) for k, v in self.params.items()})

    @classmethod
    def unchecked(cls, kind: str, config: Mapping[str, Any], params: Mapping[str, Any]) -> "FlowSpec":
        """Build without validation; the reference uses this to carry autograd boxes as params."""
        spec = object.__new__(cls)
        object.__setattr__(spec, "kind", kind)
        object.__setattr__(spec, "config", config)
        object.__setattr__(spec, "params", params)
        return spec

    def children(self) -> Iterator[tuple[str, "FlowSpec"]]:
        """Nested flow specs, in the order of ``params``."""
        return ((k, v) for k, v in self.params.items() if isinstance(v, FlowSpec))

    def flat_params(self, prefix: str = "") -> dict[str, ParamValue]:
        """All arrays, nested ones included, under dotted names (``"0.weight"``)."""
        flat: dict[str, ParamValue] = {}
        for name, value in self.params.items():
            if isinstance(value, FlowSpec):
                flat.update(value.flat_params(f"{prefix}{name}."))
            else:
                flat[f"{prefix}{name}"] = value
        return flat

    def with_flat_params(self, flat: Mapping[str, ParamValue], prefix: str = "") -> "FlowSpec":
        """The same flow with arrays replaced from a dotted-name mapping (unchecked: may hold boxes)."""
        params: dict[str, ParamValue] = {}
        for name, value in self.params.items():
            if isinstance(value, FlowSpec):
                params[name] = value.with_flat_params(flat, f"{prefix}{name}.")
            else:
                params[name] = flat[f"{prefix}{name}"]
        return FlowSpec.unchecked(self.kind, self.config, params)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dictionary (arrays become nested lists with their shape)."""
        def encode(value: ParamValue) -> Any:
            if isinstance(value, FlowSpec):
                return {"spec": value.to_dict()}
            return {"shape": list(value.shape), "data": np.asarray(value).ravel().tolist()}

        return {
            "kind": self.kind,
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in self.config.items()},
            "params": {k: encode(v) for k, v in self.params.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FlowSpec":
        def decode(value: Mapping[str, Any]) -> ParamValue:
            if "spec" in value:
                return cls.from_dict(value["spec"])
            return np.asarray(value["data"], dtype=np.float64).reshape(value["shape"])

        return cls(data["kind"], data["config"], {k: decode(v) for k, v in data["params"].items()})

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "FlowSpec":
        return cls.from_dict(json.loads(text))

    def __repr__(self) -> str:
        shapes = {k: (v.kind if isinstance(v, FlowSpec) else tuple(np.shape(v))) for k, v in self.params.items()}
        return f"FlowSpec(kind={self.kind!r}, config={dict(self.config)!r}, params={shapes!r})"
