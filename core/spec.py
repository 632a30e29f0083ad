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
    if not np.all(np.isfinite(array)):
        bad = np.argwhere(~np.isfinite(array))[0]
        raise ConfigError(f"param {name!r} holds NaN or inf at index {tuple(int(i) for i in bad)} "
                          f"({int((~np.isfinite(array)).sum())} entries in all)")
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

    def numbered_children(self) -> list["FlowSpec"]:
        """The child specs of a composite kept under the keys "0", "1", …, in order; raises
        :class:`ConfigError` naming the keys when they are not exactly those, or a non-spec entry."""
        expected = [str(i) for i in range(len(self.params))]
        if set(self.params) != set(expected):
            raise ConfigError(f"the children of a {self.kind!r} spec must be params '0' … '{len(expected) - 1}', "
                              f"got keys {sorted(self.params)}")
        children = [self.params[k] for k in expected]
        for key, child in zip(expected, children):
            if not isinstance(child, FlowSpec):
                raise ConfigError(f"param {key!r} of a {self.kind!r} spec must be a child spec, got an array")
        return children

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
    def from_dict(cls, data: Mapping[str, Any], where: str = "spec") -> "FlowSpec":
        """The spec of :meth:`to_dict`'s layout; a malformed one raises :class:`ConfigError` naming
        the entry (``where`` is its path, for nested specs)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where} must be a JSON object, got {type(data).__name__}")
        missing = [key for key in ("kind", "config", "params") if key not in data]
        if missing:
            raise ConfigError(f"{where} lacks {missing} (a spec has 'kind', 'config' and 'params')")
        for key in ("config", "params"):
            if not isinstance(data[key], Mapping):
                raise ConfigError(f"{where}['{key}'] must be a JSON object, got {type(data[key]).__name__}")
        params = {k: cls._decode(v, f"{where}['params'][{k!r}]") for k, v in data["params"].items()}
        return cls(data["kind"], data["config"], params)

    @classmethod
    def _decode(cls, value: Any, where: str) -> ParamValue:
        if isinstance(value, Mapping) and "spec" in value:
            return cls.from_dict(value["spec"], f"{where}['spec']")
        if not isinstance(value, Mapping) or not {"data", "shape"} <= set(value):
            raise ConfigError(f"{where} must be {{'shape': [...], 'data': [...]}} or {{'spec': {{...}}}}, got {value!r:.80}")
        shape, data = value["shape"], value["data"]
        if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                                  for n in shape):
            raise ConfigError(f"{where}['shape'] must be a list of non-negative ints, got {shape!r:.80}")
        if not isinstance(data, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in data):
            raise ConfigError(f"{where}['data'] must be a flat list of numbers, got {data!r:.80}")
        if len(data) != int(np.prod(shape)):
            raise ConfigError(f"{where} has {len(data)} numbers in 'data' but its shape {shape} needs {int(np.prod(shape))}")
        return np.asarray(data, dtype=np.float64).reshape(shape)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "FlowSpec":
        if not isinstance(text, (str, bytes)):
            raise ConfigError(f"from_json reads a JSON string, got {type(text).__name__}")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"a spec's JSON does not parse: {exc}") from None
        return cls.from_dict(data)

    def __repr__(self) -> str:
        shapes = {k: (v.kind if isinstance(v, FlowSpec) else tuple(np.shape(v))) for k, v in self.params.items()}
        return f"FlowSpec(kind={self.kind!r}, config={dict(self.config)!r}, params={shapes!r})"
