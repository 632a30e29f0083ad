"""The main job as a test: every kind of flowspec.accelerated passes the conformance suite."""
from __future__ import annotations

import pytest

from flowspec import registry
from flowspec.accelerated import conformance_adapter
from flowspec.conformance import load_families, run, strategies
from flowspec.conformance.report import missing_coverage

load_families()
KINDS = [k for k in registry.names() if strategies.has_specs(k)]


def test_every_registered_kind_is_checked() -> None:
    missing = [k for k in registry.names() if not strategies.has_specs(k) and not k.startswith("_")]
    assert not missing, f"kinds without conformance strategies: {missing}"
    assert set(KINDS) <= conformance_adapter.capabilities().kinds


@pytest.mark.parametrize("kind", KINDS)
def test_kind_conforms(kind: str) -> None:
    """Every result passes (or is inconclusive for lack of a finite variance), except a property
    that needs a requirement the adapter declares this kind lacks (a composite kind is built from its
    children's flows, so it has no ``construct``)."""
    results = run(conformance_adapter, kinds=[kind])
    assert results
    declined = conformance_adapter.capabilities().without.get(kind, frozenset())
    expected = {f"missing capabilities: {requirement}" for requirement in declined}
    bad = [f"{r.property}/{r.dtype}: {r.status}: {r.message}" for r in results
           if r.status not in ("passed", "inconclusive") and not (r.status == "not_supported" and r.message in expected)]
    assert not bad, "\n".join(bad)
    for r in results:
        if r.status == "inconclusive":
            assert "variance" in r.message, f"{r.property} inconclusive for another reason: {r.message}"
    gaps = missing_coverage(results)
    assert not gaps, f"the ci profile left axis values of {kind} unexercised: {gaps}"
