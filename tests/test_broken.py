"""The suite's own honesty: every deliberately broken implementation is caught."""
from __future__ import annotations

import pytest

from flowspec.accelerated.adapter import AcceleratedAdapter
from flowspec.conformance import run

from broken import BrokenCase, all_cases

CASES = all_cases()


def _statuses(case: BrokenCase, white_box: bool, properties: tuple[str, ...]) -> dict[tuple[str, str], str]:
    adapter = AcceleratedAdapter({case.kind: case.cls}, name=f"broken: {case.name}", white_box=white_box)
    results = run(adapter, kinds=[case.kind], properties=properties, dtypes=case.dtypes)
    return {(r.property, r.dtype): r.status for r in results}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_white_box_catches(case: BrokenCase) -> None:
    statuses = _statuses(case, True, case.white_box)
    missed = {k: s for k, s in statuses.items() if s != "failed"}
    assert statuses and not missed, f"{case.name}: not caught by {missed}"


@pytest.mark.parametrize("case", [c for c in CASES if c.black_box], ids=[c.name for c in CASES if c.black_box])
def test_black_box_catches(case: BrokenCase) -> None:
    statuses = _statuses(case, False, case.black_box)
    missed = {k: s for k, s in statuses.items() if s != "failed"}
    assert statuses and not missed, f"{case.name}: not caught in black-box mode by {missed}"


def test_at_least_eight_distinct_faults() -> None:
    assert len({c.name for c in CASES}) >= 8
