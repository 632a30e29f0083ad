"""The bad-input catalogue: every malformed input class at every public entry point, each asserting
the exception type and that its message names the offending argument, parameter, key or index.

Per kind (every registered kind with conformance strategies, so new kinds join automatically): the
reference's ``init_spec`` with an unknown config key, ``from_spec`` with a parameter missing, of the
wrong shape and holding NaN, the accelerated forward with NaN, inf, a wrong event shape, a wrong
dtype, integers, a NumPy array instead of a tensor and (conditional kinds) no context, the inverse
with NaN and a wrong shape, and the reference's forward and inverse with NaN and a wrong shape.
Then the FlowSpec loader (constructor, ``from_dict``, JSON) and the model builders; the CLI's
cases are in ``test_cli.py``. ``test_catalogue_size`` counts them. A hypothesis fuzz test feeds
random malformed specs and inputs and requires a flowspec exception or a correct, finite result.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from reference_checks import checked_kinds, spec_of

from flowspec import FlowSpec, reference, registry
from flowspec.accelerated import FlowDistribution, from_spec, quar, residual
from flowspec.conformance import strategies
from flowspec.conformance.seeding import rng, seed_for
from flowspec.errors import ConfigError, DomainError, FlowError, FlowInputError

KINDS = checked_kinds()


def _event(spec: FlowSpec) -> tuple[int, ...]:
    return tuple(registry.get(spec.kind).event_shape(spec.config))


def _latent(spec: FlowSpec) -> tuple[int, ...]:
    return tuple(registry.get(spec.kind).output_shape(spec.config))


def _context(spec: FlowSpec, batch: int) -> np.ndarray | None:
    shape = registry.get(spec.kind).context_of(spec.config)
    return None if shape is None else rng("bad-input", "context").standard_normal((batch,) + tuple(shape))


def _valid_x(spec: FlowSpec, batch: int = 2) -> np.ndarray:
    return strategies.sample_array(spec, 0, 0.5, batch)


def _flow_and_inputs(kind: str) -> tuple[Any, torch.Tensor, torch.Tensor | None]:
    spec = spec_of(kind)
    c = _context(spec, 2)
    return from_spec(spec), torch.as_tensor(_valid_x(spec)), None if c is None else torch.as_tensor(c)


def _call(flow: Any, x: Any, c: torch.Tensor | None, inverse: bool = False) -> Any:
    fn = flow.inverse if inverse else flow
    return fn(x) if c is None else fn(x, c)


def _first_param(spec: FlowSpec) -> str | None:
    """The first array parameter of ``spec`` (a child spec's parameters belong to the child)."""
    arrays = [name for name, value in spec.params.items() if not isinstance(value, FlowSpec)]
    return arrays[0] if arrays else None


def _with_nan(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x.reshape(-1)[-1] = float("nan")
    return x


# ----------------------------------------------------------------------------- per kind

Case = tuple[str, Callable[[str], Any], type, str]  # (name, call on the kind, exception, message pattern)


def _unknown_config_key(kind: str) -> Any:
    spec = spec_of(kind)
    return reference.init_spec(kind, {**spec.config, "no_such_option": 1}, rng("bad-input", kind))


def _missing_param(kind: str) -> Any:
    spec = spec_of(kind)
    name = _first_param(spec)
    if name is None:
        pytest.skip(f"{kind} has no array parameters")
    return from_spec(FlowSpec(kind, spec.config, {k: v for k, v in spec.params.items() if k != name}))


def _misshapen_param(kind: str) -> Any:
    spec = spec_of(kind)
    name = _first_param(spec)
    if name is None:
        pytest.skip(f"{kind} has no array parameters")
    bad = np.zeros(np.shape(spec.params[name]) + (2,))
    return from_spec(FlowSpec(kind, spec.config, {**spec.params, name: bad}))


def _nan_param(kind: str) -> Any:
    spec = spec_of(kind)
    name = _first_param(spec)
    if name is None:
        pytest.skip(f"{kind} has no array parameters")
    bad = np.array(spec.params[name], dtype=np.float64)
    bad.reshape(-1)[0] = np.nan
    return FlowSpec(kind, spec.config, {**spec.params, name: bad})


def _forward_with(transform: Callable[[torch.Tensor], Any]) -> Callable[[str], Any]:
    def call(kind: str) -> Any:
        flow, x, c = _flow_and_inputs(kind)
        return _call(flow, transform(x), c)
    return call


def _inverse_with(transform: Callable[[torch.Tensor], Any]) -> Callable[[str], Any]:
    def call(kind: str) -> Any:
        flow, x, c = _flow_and_inputs(kind)
        with torch.no_grad():
            z = flow(x)[0] if c is None else flow(x, c)[0]
        return _call(flow, transform(z), c, inverse=True)
    return call


def _no_context(kind: str) -> Any:
    flow, x, c = _flow_and_inputs(kind)
    if c is None:
        pytest.skip(f"{kind}'s drawn spec takes no context")
    return flow(x)


def _reference_forward_nan(kind: str) -> Any:
    spec = spec_of(kind)
    x = _valid_x(spec)
    x.reshape(-1)[-1] = np.nan
    return reference.forward(spec, x, _context(spec, 2))


def _reference_forward_shape(kind: str) -> Any:
    spec = spec_of(kind)
    return reference.forward(spec, np.zeros((2,) + _event(spec) + (1,)), _context(spec, 2))


def _reference_inverse_shape(kind: str) -> Any:
    spec = spec_of(kind)
    return reference.inverse(spec, np.zeros((2,) + _latent(spec) + (1,)), _context(spec, 2))


def _wrong_shape(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros(x.shape + (1,), dtype=x.dtype)


KIND_CASES: list[Case] = [
    ("init_spec: unknown config key", _unknown_config_key, ConfigError, r"no_such_option"),
    ("from_spec: a parameter missing", _missing_param, ConfigError, r"params? .*|missing"),
    ("from_spec: a parameter of the wrong shape", _misshapen_param, ConfigError, r"shape"),
    ("FlowSpec: a NaN parameter", _nan_param, ConfigError, r"param '.*' holds NaN or inf at index"),
    ("forward: NaN input", _forward_with(_with_nan), FlowInputError, r"\bx\b.*(NaN|non-finite)|(NaN|non-finite).*\bx\b"),
    ("forward: inf input", _forward_with(lambda x: x.masked_fill(torch.ones_like(x, dtype=torch.bool), float("inf"))),
     FlowInputError, r"\bx\b"),
    ("forward: wrong event shape", _forward_with(_wrong_shape), FlowInputError, r"\bx\b.*must have shape"),
    ("forward: wrong dtype", _forward_with(lambda x: x.float()), FlowInputError, r"\bx\b has dtype torch.float32"),
    ("forward: integer input", _forward_with(lambda x: x.long()), FlowInputError, r"\bx\b must be a floating-point"),
    ("forward: a NumPy array", _forward_with(lambda x: x.numpy()), FlowInputError, r"\bx\b must be a torch.Tensor"),
    ("forward: no context for a conditional flow", _no_context, FlowInputError, r"context"),
    ("inverse: NaN input", _inverse_with(_with_nan), FlowInputError, r"\bz\b"),
    ("inverse: wrong shape", _inverse_with(_wrong_shape), FlowInputError, r"\bz\b.*must have shape"),
    ("reference forward: NaN input", _reference_forward_nan, FlowInputError, r"\bx\b"),
    ("reference forward: wrong shape", _reference_forward_shape, FlowInputError, r"\bx\b.*shape"),
    ("reference inverse: wrong shape", _reference_inverse_shape, FlowInputError, r"\by\b.*shape"),
]


@pytest.mark.parametrize("case", KIND_CASES, ids=[c[0] for c in KIND_CASES])
@pytest.mark.parametrize("kind", KINDS)
def test_kind_rejects_bad_input(kind: str, case: Case) -> None:
    name, call, error, pattern = case
    with pytest.raises(error, match=pattern):
        call(kind)


# ----------------------------------------------------------------------------- the loader and the builders

GOOD = {"kind": "elementwise_affine", "config": {"shape": [2]},
        "params": {"shift": {"shape": [2], "data": [0.0, 1.0]}, "log_scale": {"shape": [2], "data": [0.0, 0.0]}}}


def _json(**changes: Any) -> str:
    data = json.loads(json.dumps(GOOD))
    for path, value in changes.items():
        target = data
        keys = path.split("__")
        for key in keys[:-1]:
            target = target[key]
        if value is ...:
            del target[keys[-1]]
        else:
            target[keys[-1]] = value
    return json.dumps(data)


def _sequential_with_gap() -> str:
    child = {"spec": json.loads(json.dumps(GOOD))}
    return json.dumps({"kind": "sequential", "config": {"event_shape": [2], "latent_shape": [2]},
                       "params": {"0": child, "2": child}})


LOADER_CASES: list[tuple[str, Callable[[], Any], type, str]] = [
    ("JSON: not JSON", lambda: FlowSpec.from_json("{kind: 1"), ConfigError, r"JSON"),
    ("JSON: not an object", lambda: FlowSpec.from_json("[1, 2]"), ConfigError, r"object|mapping|dict"),
    ("JSON: no kind", lambda: FlowSpec.from_json(_json(kind=...)), ConfigError, r"kind"),
    ("JSON: unknown kind", lambda: from_spec(FlowSpec.from_json(_json(kind="no_such_kind"))), ConfigError,
     r"no_such_kind"),
    ("JSON: an unknown config key", lambda: from_spec(FlowSpec.from_json(_json(config__scale=2))), ConfigError,
     r"unknown config keys \['scale'\]"),
    ("JSON: no params", lambda: FlowSpec.from_json(_json(params=...)), ConfigError, r"params"),
    ("JSON: config not an object", lambda: FlowSpec.from_json(_json(config=[1])), ConfigError, r"config"),
    ("JSON: data/shape mismatch", lambda: FlowSpec.from_json(_json(params__shift__shape=[3])), ConfigError, r"shift"),
    ("JSON: string data", lambda: FlowSpec.from_json(_json(params__shift__data=["a", "b"])), ConfigError, r"shift"),
    ("JSON: data missing", lambda: FlowSpec.from_json(_json(params__shift__data=...)), ConfigError, r"shift"),
    ("JSON: NaN data", lambda: FlowSpec.from_json(_json(params__shift__data=[0.0, float("nan")])), ConfigError,
     r"shift"),
    ("JSON: a gap in sequential children", lambda: from_spec(FlowSpec.from_json(_sequential_with_gap())), ConfigError,
     r"sequential|children|'1'|keys"),
    ("from_spec: a dict", lambda: from_spec(GOOD), ConfigError, r"from_spec needs a FlowSpec"),
    ("from_spec: a string", lambda: from_spec(json.dumps(GOOD)), ConfigError, r"from_spec needs a FlowSpec"),
    ("from_spec: float16", lambda: from_spec(FlowSpec.from_json(json.dumps(GOOD)), dtype=torch.float16), ConfigError,
     r"float16"),
    ("init_spec: rng None", lambda: reference.init_spec("elementwise_affine", {"shape": [2]}, None), ConfigError,
     r"rng"),
    ("init_spec: unknown kind", lambda: reference.init_spec("no_such_kind", {}, 0), ConfigError, r"no_such_kind"),
    ("residual make_model: a typo", lambda: residual.make_model("mlp", (4,), n_blokcs=2), ConfigError, r"n_blokcs"),
    ("residual make_model: bad arch", lambda: residual.make_model("cnn", (4,)), ConfigError, r"arch"),
    ("residual make_model: non-contractive coeff", lambda: residual.make_model("mlp", (4,), coeff=1.2), ConfigError,
     r"coeff"),
    ("quar make_model: a typo", lambda: quar.make_model("mlp", (4,), sigmaa=0.5), ConfigError, r"sigmaa"),
    ("quar make_model: sigma ≥ 1", lambda: quar.make_model("mlp", (4,), sigma=1.0), ConfigError, r"sigma"),
    ("distribution: sample count against context rows",
     lambda: FlowDistribution(from_spec(reference.init_spec("affine_coupling", {"shape": [4], "context_dim": 2}, 0)),
                              context=torch.zeros(3, 2, dtype=torch.float64)).sample((5,)), FlowInputError,
     r"context row"),
    ("logit: out of (0, 1)", lambda: from_spec(reference.init_spec("logit", {"shape": [2]}, 0))(
        torch.tensor([[0.5, 1.5]], dtype=torch.float64)), DomainError, r"\bx\b.*domain"),
]


@pytest.mark.parametrize("case", LOADER_CASES, ids=[c[0] for c in LOADER_CASES])
def test_loader_and_builders_reject_bad_input(case) -> None:
    name, call, error, pattern = case
    with pytest.raises(error, match=pattern):
        call()


def test_catalogue_size() -> None:
    """At least 150 cases in all (the CLI's are counted in test_cli.py)."""
    assert len(KINDS) * len(KIND_CASES) + len(LOADER_CASES) >= 150


# ----------------------------------------------------------------------------- fuzz

FUZZ_KINDS = [k for k in KINDS if not registry.get(k).family in ("residual", "quar")] + ["residual_mlp", "quar_mlp"]


def _mutations(spec: FlowSpec) -> st.SearchStrategy:
    """Malformed variants of ``spec``: a config value replaced by a value of another type, a config key
    dropped or added, a parameter dropped, reshaped or filled with non-finite values."""
    junk = st.sampled_from([None, -1, 0, 2.5, "x", [1, "a"], {"a": 1}, True, float("nan"), 64])
    config_keys = sorted(spec.config)
    param_keys = sorted(k for k, v in spec.params.items() if not isinstance(v, FlowSpec))
    options = [st.tuples(st.just("add_key"), st.text(min_size=1, max_size=8), junk)]
    if config_keys:
        options += [st.tuples(st.just("set_key"), st.sampled_from(config_keys), junk),
                    st.tuples(st.just("drop_key"), st.sampled_from(config_keys), st.none())]
    if param_keys:
        options += [st.tuples(st.just(op), st.sampled_from(param_keys), st.none())
                    for op in ("drop_param", "reshape_param", "inf_param")]
    return st.one_of(options)


def _mutate(spec: FlowSpec, op: str, key: str, value: Any) -> Callable[[], Any]:
    config, params = dict(spec.config), dict(spec.params)
    if op in ("add_key", "set_key"):
        config[key] = value
    elif op == "drop_key":
        config.pop(key)
    elif op == "drop_param":
        params.pop(key)
    elif op == "reshape_param":
        params[key] = np.zeros(np.shape(params[key]) + (1,))
    else:
        params[key] = np.full(np.shape(params[key]), np.inf)
    return lambda: from_spec(FlowSpec(spec.kind, config, params))


@seed(seed_for("bad-input", "fuzz"))
@settings(max_examples=int(os.environ.get("FLOWSPEC_FUZZ_EXAMPLES", 60)), deadline=None,
          suppress_health_check=list(HealthCheck), database=None)
@given(data=st.data())
def test_fuzzed_specs_and_inputs_give_a_flowspec_error_or_a_finite_result(data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(FUZZ_KINDS), label="kind")
    spec = spec_of(kind)
    op, key, value = data.draw(_mutations(spec), label="mutation")
    try:
        flow = _mutate(spec, op, key, value)()
    except FlowError:
        return
    except Exception as exc:  # noqa: BLE001 - a bare error is the failure being reported
        raise AssertionError(f"{op} {key!r}={value!r} on {kind}: {type(exc).__name__}: {exc}") from exc
    x = torch.as_tensor(_valid_x(spec))
    scale = data.draw(st.sampled_from([1.0, 1e3, 1e30, float("nan")]), label="input scale")
    c = _context(spec, 2)
    try:
        z, logdet = _call(flow, x * scale, None if c is None else torch.as_tensor(c))
    except FlowError:
        return
    except Exception as exc:  # noqa: BLE001
        raise AssertionError(f"forward after {op} {key!r}={value!r} on {kind}: {type(exc).__name__}: {exc}") from exc
    assert torch.isfinite(z).all() and torch.isfinite(logdet).all(), f"non-finite output after {op} {key!r} on {kind}"
