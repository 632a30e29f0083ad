"""The conformance suite as pytest tests (collected by ``pytest --pyargs flowspec.conformance``)."""
from __future__ import annotations

import pytest

from flowspec.conformance.runner import run_one


def test_property(flowspec_case, request: pytest.FixtureRequest) -> None:
    if flowspec_case is None:
        pytest.skip("pass --flowspec-impl=MODULE:ATTR to run the conformance suite")
    adapter, kind, prop, dtype, device = flowspec_case
    result = run_one(adapter, prop, kind, dtype, device, request.config.getoption("--flowspec-profile"))
    if result.status in ("not_supported", "skipped", "inconclusive", "not_claimed"):
        pytest.skip(f"{result.status}: {result.message}")
    assert result.status in ("passed", "convention"), result.message
