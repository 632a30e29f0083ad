"""The covering design of the ci profile (:mod:`flowspec.conformance.covering`)."""
from __future__ import annotations

from hypothesis import strategies as st

from flowspec.accelerated import conformance_adapter
from flowspec.conformance import covering, load_families, prop, run_one
from flowspec.conformance.property import PROPERTIES
from flowspec.conformance.report import coverage_summary, missing_coverage
from flowspec.conformance.strategies import axis

VALUES = ("a", "b", "c", "d", "e")


def _pinned(run: tuple, draws: int) -> list[str]:
    plan = covering.Plan("kind", run, pinned=True)
    return [VALUES[plan.index("letter", VALUES)] for _ in range(draws)]


def test_a_run_that_draws_an_axis_as_often_as_it_has_values_sees_every_value() -> None:
    for run in [("kind", "p", "float64", "cpu"), ("kind", "q", "float32", "cpu")]:
        assert sorted(_pinned(run, len(VALUES))) == sorted(VALUES)


def test_runs_start_at_different_values_and_axes_do_not_move_in_lockstep() -> None:
    starts = {_pinned(("kind", f"p{i}", "float64", "cpu"), 1)[0] for i in range(20)}
    assert len(starts) == len(VALUES)
    plans = [covering.Plan("kind", ("kind", f"p{i}", "float64", "cpu"), pinned=True) for i in range(40)]
    combos = {(p.index("x", (0, 1)), p.index("y", (0, 1))) for p in plans}
    assert len(combos) == 4  # across runs every pair of two two-valued axes occurs


def test_unpinned_plans_leave_the_choice_to_hypothesis_and_still_record_it() -> None:
    plan = covering.Plan("kind", ("r",), pinned=False)
    seen = []
    from hypothesis import given, settings

    @settings(max_examples=30, database=None)
    @given(st.data())
    def draw(data) -> None:
        with covering.active(plan):
            seen.append(data.draw(axis("letter", VALUES)))

    draw()
    assert set(seen) <= set(VALUES)
    assert plan.coverage.axes["letter"][1] == set(map(repr, seen))


@prop("_test_letters", kinds=["elementwise_affine"])
def _letters(ctx) -> None:
    """Draws one axis per example (machinery test only)."""
    ctx.draw(axis("letter", VALUES), "letter")
    ctx.draw(st.integers(0, 3), "noise")


def test_every_ci_run_covers_an_axis_drawn_once_per_example_and_runs_its_eight_examples() -> None:
    try:
        for dtype in ("float64", "float32"):
            result = run_one(conformance_adapter, PROPERTIES["_test_letters"], "elementwise_affine", dtype, "cpu")
            assert result.status == "passed" and result.examples == 8
            assert result.coverage.axes["letter"][1] == {repr(v) for v in VALUES}
    finally:
        del PROPERTIES["_test_letters"]


def test_a_declared_axis_that_no_run_draws_is_reported_missing() -> None:
    load_families()
    result = run_one(conformance_adapter, PROPERTIES["forward_matches_reference"], "elementwise_affine", "float64", "cpu")
    covering.declare_axes("elementwise_affine", never_drawn=("x", "y"))
    try:
        gaps = missing_coverage([result])
        assert gaps["elementwise_affine"]["never_drawn"] == ["'x'", "'y'"]
        assert "never_drawn never drew 'x', 'y'" in coverage_summary([result])
    finally:
        del covering.DECLARED["elementwise_affine"]["never_drawn"]
