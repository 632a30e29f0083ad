"""pytest plugin: ``pytest --pyargs flowspec.conformance --flowspec-impl=MODULE:ATTR``.

Registered through the ``pytest11`` entry point; it only adds options and stays inert unless
``--flowspec-impl`` is given. The suite's test module (:mod:`flowspec.conformance.test_suite`)
then runs one test per (kind, property, dtype, device): *not supported* and *inconclusive* results
are reported as skips with their reason, never as passes.

The selection options are those of ``flowspec conformance``, comma-separated:
``--flowspec-kinds``, ``--flowspec-properties``, ``--flowspec-dtypes`` and ``--flowspec-devices``
(default: every device the adapter has). An unknown kind, property, dtype or device, or a selection
that matches nothing, is a usage error (pytest exits with code 4), as it is for the command.
"""
from __future__ import annotations

import pytest

DTYPES = ("float64", "float32")
"""The dtypes ``--flowspec-dtypes`` may name (the command's ``--dtypes`` choices)."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("flowspec", "flowspec conformance suite")
    group.addoption("--flowspec-impl", default=None, metavar="MODULE:ATTR",
                    help="adapter of the implementation to check (e.g. flowspec.accelerated)")
    group.addoption("--flowspec-profile", default="ci", choices=["ci", "thorough"], help="hypothesis profile")
    group.addoption("--flowspec-kinds", default=None, help="comma-separated kinds (default: all)")
    group.addoption("--flowspec-properties", default=None, help="comma-separated properties (default: all)")
    group.addoption("--flowspec-dtypes", default=",".join(DTYPES), help="comma-separated dtypes")
    group.addoption("--flowspec-devices", default=None,
                    help="comma-separated devices (default: every device the adapter has)")


def _names(config: pytest.Config, option: str) -> list[str] | None:
    value = config.getoption(option)
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def selection(config: pytest.Config, adapter) -> list[tuple]:
    """The (adapter, kind, property, dtype, device) cases the options select; a bad option raises
    :class:`pytest.UsageError` naming what is unknown."""
    from flowspec.conformance.runner import SelectionError, applicable

    dtypes = _names(config, "--flowspec-dtypes") or []
    bad = sorted(set(dtypes) - set(DTYPES))
    if bad or not dtypes:
        raise pytest.UsageError(f"--flowspec-dtypes: unknown dtypes {bad}; known: {', '.join(DTYPES)}")
    available = adapter.capabilities().devices
    devices = _names(config, "--flowspec-devices") or sorted(available, key=lambda d: d != "cpu")
    absent = sorted(set(devices) - set(available))
    if absent:
        raise pytest.UsageError(f"--flowspec-devices: {', '.join(absent)} not available to {adapter.name} "
                                f"(available: {', '.join(sorted(available))})")
    kinds, properties = _names(config, "--flowspec-kinds"), _names(config, "--flowspec-properties")
    try:
        pairs = applicable(kinds, properties, adapter)
    except SelectionError as exc:
        raise pytest.UsageError(f"flowspec selection: {exc}") from None
    if not pairs:
        raise pytest.UsageError(f"the selection (kinds {kinds or 'all'}, properties {properties or 'all'}) "
                                f"matches no property of any kind")
    return [(adapter, kind, prop, dtype, device) for kind, prop in pairs for dtype in dtypes for device in devices]


def pytest_configure(config: pytest.Config) -> None:
    """With ``--flowspec-impl``: resolve the adapter and the selection once, before collection, so that
    a bad option ends the run as a usage error."""
    target = config.getoption("--flowspec-impl", None)
    if target:
        from flowspec import conformance

        config.stash[_CASES] = selection(config, conformance.resolve(target))


_CASES = pytest.StashKey[list]()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "flowspec_case" not in metafunc.fixturenames:
        return
    cases = metafunc.config.stash.get(_CASES, None)
    if cases is None:
        metafunc.parametrize("flowspec_case", [None], ids=["no-impl"])
        return
    metafunc.parametrize("flowspec_case", cases, ids=[f"{k}-{p.name}-{d}-{dev}" for _, k, p, d, dev in cases])
