"""pytest plugin: ``pytest --pyargs flowspec.conformance --flowspec-impl=MODULE:ATTR``.

Registered through the ``pytest11`` entry point; it only adds options and stays inert unless
``--flowspec-impl`` is given. The suite's test module (:mod:`flowspec.conformance.test_suite`)
then runs one test per (kind, property, dtype, device): *not supported* and *inconclusive* results
are reported as skips with their reason, never as passes.
"""
from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("flowspec", "flowspec conformance suite")
    group.addoption("--flowspec-impl", default=None, metavar="MODULE:ATTR",
                    help="adapter of the implementation to check (e.g. flowspec.accelerated)")
    group.addoption("--flowspec-profile", default="ci", choices=["ci", "thorough"], help="hypothesis profile")
    group.addoption("--flowspec-kinds", default=None, help="comma-separated kinds (default: all)")
    group.addoption("--flowspec-dtypes", default="float64,float32", help="comma-separated dtypes")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "flowspec_case" not in metafunc.fixturenames:
        return
    target = metafunc.config.getoption("--flowspec-impl")
    if not target:
        metafunc.parametrize("flowspec_case", [None], ids=["no-impl"])
        return
    from flowspec import conformance
    from flowspec.conformance.runner import applicable

    adapter = conformance.resolve(target)
    kinds = metafunc.config.getoption("--flowspec-kinds")
    dtypes = metafunc.config.getoption("--flowspec-dtypes").split(",")
    devices = sorted(adapter.capabilities().devices)
    cases = [
        (adapter, kind, prop, dtype, device)
        for kind, prop in applicable(kinds.split(",") if kinds else None, None)
        for dtype in dtypes for device in devices
    ]
    metafunc.parametrize("flowspec_case", cases, ids=[f"{k}-{p.name}-{d}-{dev}" for _, k, p, d, dev in cases])
