"""Configurations: the paths through a kind's config that drawn specs never take.

The strategies always write every config key, so two paths stay dark: a key left out (the
implementation's default must be the reference's) and a value the reference refuses (the
implementation must refuse it too, with an error naming the key, instead of building a flow that
computes something else). Both properties are generic: the reference decides, key by key, what is a
default and what is invalid, so a new kind inherits them without declaring anything.

* ``config_defaults_match_reference`` (white-box): for every key whose removal the reference accepts
  *without changing its map* (z and, where deterministic, log|det| identical: the drawn value is the
  default, or the key does not act on the forward), the implementation built from the reduced config
  maps x as the reference does. A reduced config is skipped where the reference's canonical layout
  for it differs from the spec's parameters (a structural key such as a hidden width) or where the
  implementation refuses a *parameter* under it (a constraint of the default that the reference's
  forward does not enforce, such as a residual weight's norm in another order) while it builds that
  config with the reference's generic parameters (a default of another size refuses those too);
* ``invalid_config_rejected`` (black-box): for every key, a few values of the wrong sign, size, type
  or option name (an integer key also gets a boolean, a string and an integral float), plus the
  boundary values a kind declares in ``extras["invalid_configs"]`` (``{key: value}`` entries, such
  as a node count one below its minimum); each one the reference's ``check_config`` rejects must
  make building the flow raise an error whose message names the key (or the key it conflicts with,
  such as ``orders`` for a changed ``hidden``).
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
from .state import draw_deterministic, stochastic_logdet
from .strategies import event_size


REFUSALS = (ConfigError, KeyError, TypeError, ValueError)


def _reference_map(spec: FlowSpec, x: np.ndarray, c: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | None:
    """The reference's (z, log|det|) for ``spec``, or None where the reference refuses the config or
    its canonical layout for that config differs from the spec's parameters (a structural key such
    as a hidden width, which the reference's forward reads off the parameters)."""
    try:
        namespace.kind(spec.kind).validate_config(spec.config)
        layout = reference.init_spec(spec.kind, spec.config, np.random.default_rng(0)).flat_params()
    except REFUSALS:
        return None
    drawn = spec.flat_params()
    if set(layout) != set(drawn) or any(np.shape(layout[k]) != np.shape(drawn[k]) for k in drawn):
        return None
    return reference.forward_and_log_abs_det(spec, x, c)


@prop("config_defaults_match_reference", requires=["white_box"])
def config_defaults_match_reference(ctx: CheckContext) -> None:
    """A config key left out takes the reference's default (module docstring)."""
    spec, x, c = draw_deterministic(ctx)
    z_ref, ld_ref = reference.forward_and_log_abs_det(spec, x, c)
    size = event_size(spec)
    for key in sorted(spec.config):
        reduced = FlowSpec(spec.kind, {k: v for k, v in spec.config.items() if k != key}, spec.params)
        expected = _reference_map(reduced, x, c)
        if expected is None or not (np.array_equal(expected[0], z_ref) and np.array_equal(expected[1], ld_ref)):
            continue  # a required key, or the drawn value is not the default
        try:
            flow = ctx.load(reduced)
        except ConfigError as exc:
            if _refuses_params(exc, reduced) and _builds_generic(ctx, reduced):
                continue  # the parameters break a constraint of the default (module docstring)
            raise PropertyFailure(f"without config[{key!r}] (the reference's default applies) the implementation "
                                  f"refuses to build: ConfigError: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - the failure reported
            raise PropertyFailure(f"without config[{key!r}] (the reference's default applies) the implementation "
                                  f"refuses to build: {type(exc).__name__}: {exc}") from exc
        z, logdet = ctx.adapter.forward(flow, x, c)
        ctx.assert_close(z, z_ref, "forward", size, f"z without config[{key!r}] (the reference's default)")
        if not stochastic_logdet(reduced):
            ctx.assert_close(logdet, ld_ref, "logdet", size, f"log|det| without config[{key!r}]")


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


@prop("invalid_config_rejected", requires=["black_box"], kinds=lambda kind: not namespace.is_foreign(kind),
      claim="validation")
def invalid_config_rejected(ctx: CheckContext) -> None:
    """A config value the reference rejects is rejected by the implementation with an error naming
    the key (module docstring)."""
    spec = ctx.draw_spec()
    kind = namespace.kind(spec.kind)
    checked = 0
    for key, bad in _candidates(spec):
        config = {**spec.config, key: bad}
        try:
            kind.validate_config(config)
            continue  # the reference accepts it: nothing to hold the implementation to
        except REFUSALS:
            pass
        checked += 1
        try:
            ctx.instantiate(FlowSpec(spec.kind, config, spec.params))
        except Exception as exc:  # noqa: BLE001 - any error counts if it names the key
            named = [k for k in {*spec.config, key} if k in str(exc)]  # the conflict may be reported on a partner key
            ctx.require(key in named or bool(named), f"config[{key!r}] = {bad!r} raised {type(exc).__name__} "
                                                     f"without naming a config key: {exc}")
            continue
        raise PropertyFailure(f"config[{key!r}] = {bad!r}, which the reference rejects, built a flow without an error")
    ctx.record(0.0, 0.0)
