"""Configurations: the paths through a kind's config that drawn specs never take.

The strategies always write every config key, so two paths stay dark: a key left out (the
implementation's default must be the reference's) and a value the reference refuses (the
implementation must refuse it too, with an error naming the key, instead of building a flow that
computes something else). Both properties are generic: the reference decides, key by key, what is a
default and what is invalid, so a new kind inherits them without declaring anything.

* ``config_defaults_match_reference`` (white-box): for every key whose removal the reference accepts
  *without changing its map* (z and, where deterministic, log|det| identical: the drawn value is the
  default, or the key does not act on the forward), the implementation built from the reduced config
  maps x as the reference does. Where the reference's canonical layout for the reduced config differs
  from the spec's parameters (a structural key such as a hidden width or an embedding size), the
  implementation must instead build the reduced config with the reference's generic parameters for
  it, whose shapes are the default's (an implementation with another default refuses them). A
  reduced config is excused where the implementation refuses a *parameter* under it (a constraint of the default that the reference's
  forward does not enforce, such as a residual weight's norm in another order) while it builds that
  config with the reference's generic parameters (a default of another size refuses those too);
* ``config_defaults_constructed`` (requirements ``construct`` and hook ``to_spec``; kinds that list
  ``Kind.defaults``): a flow constructed without an optional key exports the reference's default
  for it — also for keys that act on no compared value (estimator settings, iteration caps);
* ``invalid_config_rejected`` (black-box): for every key, a few values of the wrong sign, size, type
  or option name (an integer key also gets a boolean, a string and an integral float; a list key its
  first number alone and, for integers, the list with its first entry one larger: an even kernel
  size, a count above its bound), plus the
  boundary values a kind declares in ``extras["invalid_configs"]`` (``{key: value}`` entries, such
  as a node count one below its minimum); each one the reference's ``check_config`` rejects must
  make building the flow raise an error whose message names the key, both loading it from a spec and,
  where the adapter has ``construct``, constructing it from the config as a user does (or the key it conflicts with,
  such as ``orders`` for a changed ``hidden``).
* ``invalid_params_rejected`` (white-box; kinds that declare ``extras["invalid_params"]``: entries
  ``(description, param name, make(params) -> {name: bad array} or None)``, values outside a
  parameter's own domain that no strategy draws — a singular weight, a ``P`` that is no permutation,
  a flag other than 0 or 1): loading the spec, its forward or, at the latest, its inverse raises an
  error naming the parameter; returning values throughout accepts a flow the spec does not define.
"""
from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np

from flowspec import reference
from flowspec.errors import ConfigError
from flowspec.spec import FlowSpec

from . import namespace
from .adapter import NotSupported
from .property import CheckContext, PropertyFailure, prop
from .seeding import rng
from .state import draw_deterministic, stochastic_logdet
from .strategies import event_size


REFUSALS = (ConfigError, KeyError, TypeError, ValueError)


def _reference_accepts(kind: str, config: dict[str, Any]) -> bool:
    """Whether the reference's config check accepts ``config`` for ``kind``."""
    try:
        namespace.kind(kind).validate_config(config)
    except REFUSALS:
        return False
    return True


def _reduced_layout(spec: FlowSpec, key: str) -> dict[str, Any] | None:
    """The reference's canonical parameter layout (flat name → array) for ``spec``'s config without
    ``key``, or None where the reference refuses that config (a required key)."""
    reduced = {k: v for k, v in spec.config.items() if k != key}
    if not _reference_accepts(spec.kind, reduced):
        return None
    try:
        return reference.init_spec(spec.kind, reduced, np.random.default_rng(0)).flat_params()
    except REFUSALS:
        return None


def _same_layout(layout: dict[str, Any], spec: FlowSpec) -> bool:
    drawn = spec.flat_params()
    return set(layout) == set(drawn) and all(np.shape(layout[k]) == np.shape(drawn[k]) for k in drawn)


@prop("config_defaults_match_reference", requires=["white_box"])
def config_defaults_match_reference(ctx: CheckContext) -> None:
    """A config key left out takes the reference's default (module docstring)."""
    spec, x, c = draw_deterministic(ctx)
    z_ref, ld_ref = reference.forward_and_log_abs_det(spec, x, c)
    for key in sorted(spec.config):
        layout = _reduced_layout(spec, key)
        if layout is None:
            continue  # a required key
        reduced = FlowSpec(spec.kind, {k: v for k, v in spec.config.items() if k != key}, spec.params)
        if not _same_layout(layout, spec):
            # a structural default (a width, an embedding size): the implementation must build the
            # reduced config with the reference's generic parameters for it, whose shapes are the default's
            _build_default(ctx, key, reference.init_spec(spec.kind, reduced.config,
                                                         rng("default layout", key, spec.to_json())))
            continue
        expected = reference.forward_and_log_abs_det(reduced, x, c)
        if np.array_equal(expected[0], z_ref) and np.array_equal(expected[1], ld_ref):  # else not the default
            flow = _build_default(ctx, key, reduced)
            if flow is not None:
                size = event_size(reduced)
                z, logdet = ctx.adapter.forward(flow, x, c)
                ctx.assert_close(z, z_ref, "forward", size, f"z without config[{key!r}] (the reference's default)")
                if not stochastic_logdet(reduced):
                    ctx.assert_close(logdet, ld_ref, "logdet", size, f"log|det| without config[{key!r}]")


def _has_defaults(kind: str) -> bool:
    return not namespace.is_foreign(kind) and bool(namespace.kind(kind).defaults)


@prop("config_defaults_constructed", requires=["construct", "to_spec"], kinds=_has_defaults)
def config_defaults_constructed(ctx: CheckContext) -> None:
    """For every optional key whose default the kind lists (``Kind.defaults``) and whose removal the
    reference accepts, a flow constructed from the drawn config without that key, as a user does, exports (``to_spec``) the reference's
    default for it (or leaves it out). This reaches the defaults that act on no value the other
    properties compare — estimator settings such as the number of exact series terms, iteration
    caps and tolerances — which ``config_defaults_match_reference`` cannot tell apart."""
    spec = ctx.draw_spec()
    defaults = namespace.kind(spec.kind).defaults
    absent = sorted(set(defaults) - set(spec.config))  # keys the strategy leaves out: one flow checks them all
    for left_out in [absent] * bool(absent) + [[key] for key in sorted(set(spec.config) & set(defaults))]:
        reduced = {k: v for k, v in spec.config.items() if k not in left_out}
        if not _reference_accepts(spec.kind, reduced):
            continue  # the default conflicts with the other drawn values: the reference refuses it too
        exported = _constructed_config(ctx, spec.kind, reduced, left_out)
        for key in left_out:
            ctx.require(key not in exported or _plain(exported[key]) == _plain(defaults[key]),
                        f"without config[{key!r}] the constructed flow exports {key} = {exported.get(key)!r}, "
                        f"not the reference's default {defaults[key]!r}")
    ctx.record(0.0, 0.0)


def _constructed_config(ctx: CheckContext, kind: str, config: dict[str, Any], left_out: list[str]) -> dict[str, Any]:
    """The config that a flow constructed from ``config`` exports (hook ``to_spec``)."""
    try:
        flow = ctx.adapter.construct(kind, config, ctx.dtype, ctx.device)
    except NotSupported:
        raise
    except Exception as exc:  # noqa: BLE001 - the failure reported
        raise PropertyFailure(f"without config keys {left_out} (their defaults apply) the implementation refuses "
                              f"to construct the flow: {type(exc).__name__}: {exc}") from exc
    return dict(ctx.adapter.call_hook(flow, "to_spec").config)


def _plain(value: Any) -> Any:
    """``value`` with tuples as lists and NumPy scalars as Python numbers, for comparing configs."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


def _build_default(ctx: CheckContext, key: str, reduced: FlowSpec) -> Any:
    """The implementation's flow for ``reduced`` (``key`` left out), or None where the parameters
    break a constraint of the default (module docstring); any other refusal fails."""
    try:
        return ctx.load(reduced)
    except ConfigError as exc:
        if _refuses_params(exc, reduced) and _builds_generic(ctx, reduced):
            return None  # the parameters break a constraint of the default (module docstring)
        raise PropertyFailure(f"without config[{key!r}] (the reference's default applies) the implementation "
                              f"refuses to build: ConfigError: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - the failure reported
        raise PropertyFailure(f"without config[{key!r}] (the reference's default applies) the implementation "
                              f"refuses to build: {type(exc).__name__}: {exc}") from exc


def _builds_generic(ctx: CheckContext, spec: FlowSpec) -> bool:
    """Whether the implementation builds a flow of ``spec``'s config (its own defaults filling the
    keys left out) with the reference's generic parameters for that config. A refused parameter is
    a constraint of the default only then: when even the generic parameters are refused (a default
    hidden width of another size changes every weight's shape), the default is not the reference's.
    An adapter that cannot instantiate from a config gets the benefit of the doubt."""
    try:
        ctx.adapter.instantiate(spec.kind, spec.config, 0, ctx.dtype, ctx.device)
    except NotSupported:
        return True
    except REFUSALS:
        return False
    return True


def _refuses_params(exc: ConfigError, spec: FlowSpec) -> bool:
    """Whether a refusal names one of the spec's parameters rather than its config (module docstring)."""
    return any(f"param {name!r}" in str(exc) for name in spec.flat_params())


def _candidates(spec: FlowSpec) -> Iterator[tuple[str, Any]]:
    """(key, value) pairs to try: the generic wrong values of every key, then the kind's declared ones."""
    for key in sorted(spec.config):
        for bad in _invalid_values(spec.config[key]):
            yield key, bad
    for entry in namespace.kind(spec.kind).extras.get("invalid_configs", ()):
        yield from entry.items()


def _invalid_values(value: Any) -> Iterator[Any]:
    """Values of the wrong sign, size, type or option name for a config entry like ``value``."""
    if isinstance(value, bool):
        yield "yes"
    elif isinstance(value, int):
        yield from (-1, 0, 1.5, True, str(value), float(value))
    elif isinstance(value, float):
        yield from (-1.0, 0.0, 0.5, 1.0, 2.0, math.nan, math.inf, 1e9)
    elif isinstance(value, str):
        yield "no-such-option"
    elif isinstance(value, (list, tuple)) and value and all(isinstance(v, (int, float)) for v in value):
        yield from ([], [0] * len(value), [-1] * len(value), [0.5] * len(value))
        yield value[0]  # a number where a list belongs
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            yield [value[0] + 1, *value[1:]]  # the other parity (odd kernel sizes), one more than allowed


@prop("invalid_config_rejected", requires=["black_box"], kinds=lambda kind: not namespace.is_foreign(kind),
      claim="validation")
def invalid_config_rejected(ctx: CheckContext) -> None:
    """A config value the reference rejects is rejected by the implementation with an error naming
    the key (module docstring)."""
    spec = ctx.draw_spec()
    for key, bad in _candidates(spec):
        config = {**spec.config, key: bad}
        if _reference_accepts(spec.kind, config):
            continue  # nothing to hold the implementation to
        for how, build in _builders(ctx, FlowSpec(spec.kind, config, spec.params)):
            try:
                build()
            except NotSupported:
                continue  # this way of building does not exist for the kind (a composite): not a rejection
            except Exception as exc:  # noqa: BLE001 - any error counts if it names the key
                named = [k for k in {*spec.config, key} if k in str(exc)]  # the conflict may be reported on a partner key
                ctx.require(bool(named), f"config[{key!r}] = {bad!r} {how} raised {type(exc).__name__} "
                                         f"without naming a config key: {exc}")
                continue
            raise PropertyFailure(f"config[{key!r}] = {bad!r}, which the reference rejects, {how} built a flow "
                                  f"without an error")
    ctx.record(0.0, 0.0)


def _declares_invalid_params(kind: str) -> bool:
    return bool(namespace.kind(kind).extras.get("invalid_params"))


@prop("invalid_params_rejected", requires=["white_box"], kinds=_declares_invalid_params, claim="validation")
def invalid_params_rejected(ctx: CheckContext) -> None:
    """A parameter outside its domain is refused by the load, the forward or the inverse, with an
    error naming it (module docstring)."""
    spec = ctx.draw_spec()
    x = ctx.draw_input(spec)
    for description, name, make in namespace.kind(spec.kind).extras["invalid_params"]:
        bad = make(dict(spec.params))
        if bad is None:
            continue  # not applicable to this config (one channel)
        error = _first_error(ctx, FlowSpec(spec.kind, spec.config, {**spec.params, **bad}), x)
        if error is None:
            raise PropertyFailure(f"{description}: loaded, and its forward and inverse returned values without an error")
        ctx.require(name in str(error), f"{description}: {type(error).__name__} without naming param {name!r}: {error}")
    ctx.record(0.0, 0.0)


def _first_error(ctx: CheckContext, spec: FlowSpec, x: np.ndarray) -> BaseException | None:
    """The error of the first of load, forward and inverse (where supported) that raises, else None."""
    try:
        flow = ctx.load(spec)
        z, _ = ctx.adapter.forward(flow, x)
        if ctx.adapter.capabilities().has("inverse"):
            ctx.adapter.inverse(flow, z)
    except NotSupported:
        raise
    except Exception as exc:  # noqa: BLE001 - the refusal examined by the caller
        return exc
    return None


def _builders(ctx: CheckContext, spec: FlowSpec) -> list[tuple[str, Any]]:
    """The ways the flow of ``spec`` gets built: from the spec (as the suite loads it) and, where the
    adapter has ``construct``, constructed from the config alone, as a user constructs it (a path
    that need not pass through the spec loader's checks)."""
    builders = [("loaded from a spec", lambda: ctx.instantiate(spec))]
    if ctx.adapter.capabilities().has("construct"):
        builders.append(("constructed", lambda: ctx.adapter.construct(spec.kind, spec.config, ctx.dtype, ctx.device)))
    return builders
