"""The ``ci`` profile's covering design and the coverage record.

A handful of examples per property cannot be left to chance: hypothesis' first example is the
minimal one and a few derandomized draws rarely reach a mask on a wide image, a chain of five
layers or a parameter far from its initialisation. So every discrete choice a strategy makes is an
*axis* (:func:`axis`: a name and its values), and under a profile with ``covering=True`` the value
is not drawn but **pinned**: the t-th time a run of one (kind, property, dtype, device) draws axis
``a`` it takes

    values[π_a[(t + o_run,a) mod |values|]]

where π_a is a fixed permutation of the axis' values (per kind and axis, from :mod:`.seeding`) and
o_run,a an offset per run and axis. Hence

* a run that draws an axis at least ``|values|`` times exercises **every** value of it (the ci
  profile runs 8 examples, more than any axis has values, so an axis drawn once per example is
  covered by every single property run);
* an axis drawn less often (a conditional one: the conditioner of an image layer) is covered across
  the kind's runs, whose offsets differ;
* axes of equal length do not move in lockstep (each has its own permutation and offset), so their
  combinations vary too.

Everything that is not an axis (seeds, continuous values) is still drawn by hypothesis, from a seed
of its own per run (:func:`flowspec.conformance.runner.run_one`), so that no two properties see the
same examples. The values a run actually drew are kept in a :class:`Coverage` record, reported per
kind in the JSON report; ``tests/test_coverage.py`` checks that the ci profile exercises every
value of every declared axis of every kind.
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from hypothesis import strategies as st

from .seeding import rng, seed_for

# kind -> axis name -> the values the kind's strategies must exercise (see :func:`declare_axes`)
DECLARED: dict[str, dict[str, tuple[str, ...]]] = {}


def label(value: Any) -> str:
    """How a value is named in the coverage record (``repr``, stable for JSON-like values)."""
    return repr(value)


def declare_axes(kinds: str | Sequence[str], **axes: Sequence[Any]) -> None:
    """Declare that the strategies of ``kinds`` draw these axes: the ci profile must exercise every
    value of each (``tests/test_coverage.py``). Call it next to the strategies that draw them."""
    for kind in [kinds] if isinstance(kinds, str) else kinds:
        mine = DECLARED.setdefault(kind, {})
        for name, values in axes.items():
            mine[name] = tuple(label(v) for v in values)


@dataclass
class Coverage:
    """The values of each axis offered to and drawn by one run: ``{axis: (offered, seen)}``."""

    axes: dict[str, tuple[tuple[str, ...], set[str]]] = field(default_factory=dict)

    def note(self, name: str, values: Sequence[Any], value: Any) -> None:
        self._offer(name, tuple(label(v) for v in values)).add(label(value))

    def _offer(self, name: str, offered: tuple[str, ...]) -> set[str]:
        """The seen-set of axis ``name``, its offered values extended by ``offered`` (an axis offered
        with other values elsewhere must exercise the union)."""
        known, seen = self.axes.setdefault(name, ((), set()))
        if not set(offered) <= set(known):
            self.axes[name] = (known + tuple(v for v in offered if v not in known), seen)
        return seen

    def merge(self, other: "Coverage") -> None:
        for name, (offered, seen) in other.axes.items():
            self._offer(name, offered).update(seen)

    def to_json(self) -> dict[str, dict[str, list[str]]]:
        return {name: {"values": list(offered),
                       "exercised": [v for v in offered if v in seen] + sorted(seen - set(offered))}
                for name, (offered, seen) in sorted(self.axes.items())}

    def missing(self) -> dict[str, list[str]]:
        """Per axis, the offered values no draw took."""
        out = {name: [v for v in offered if v not in seen] for name, (offered, seen) in self.axes.items()}
        return {name: values for name, values in out.items() if values}


@dataclass
class Plan:
    """The covering design of one run (module docstring); ``pinned=False`` lets hypothesis draw."""

    kind: str
    run: tuple[Any, ...]
    pinned: bool
    coverage: Coverage = field(default_factory=Coverage)
    salt: int = 0
    _counts: dict[str, int] = field(default_factory=dict)

    def index(self, name: str, values: Sequence[Any]) -> int:
        """The pinned index for the next draw of axis ``name``."""
        n = len(values)
        t = self._counts.get(name, 0)
        self._counts[name] = t + 1
        order = rng("covering", self.kind, name, n).permutation(n)
        return int(order[(t + seed_for("covering", *self.run, name)) % n])


_CURRENT: ContextVar[Plan | None] = ContextVar("flowspec_covering_plan", default=None)


@contextlib.contextmanager
def active(plan: Plan | None) -> Iterator[None]:
    """Make ``plan`` the one :func:`axis` consults while a run draws its examples."""
    token = _CURRENT.set(plan)
    try:
        yield
    finally:
        _CURRENT.reset(token)


SALTS = st.integers(min_value=0, max_value=2**63 - 1)


def begin_example(data: Any) -> None:
    """Start an example of the current run: under the covering design draw the example's salt first.

    Pinned values are not hypothesis' own choices, so two examples that began with the same choices
    could continue differently, which hypothesis reports as a flaky strategy. A first draw from 2⁶³
    values makes every example's choice sequence new. The salt (that draw mixed with the run's key)
    also enters every array and parameter drawn from a seed (:func:`salt`), so that hypothesis'
    first, minimal example (every seed 0) differs from run to run.
    """
    plan = _CURRENT.get()
    if plan is not None and plan.pinned:
        plan.salt = seed_for("salt", *plan.run, data.draw(SALTS, label="example salt"))


def salt() -> int:
    """The current example's salt (0 outside a covering run)."""
    plan = _CURRENT.get()
    return 0 if plan is None else plan.salt


@st.composite
def _choose(draw: Any, name: str, values: tuple[Any, ...]) -> Any:
    plan = _CURRENT.get()
    if plan is not None and plan.pinned:
        value = values[plan.index(name, values)]
    else:
        value = draw(st.sampled_from(values))
    if plan is not None:
        plan.coverage.note(name, values, value)
    return value


def axis(name: str, values: Sequence[Any]) -> st.SearchStrategy:
    """A discrete choice among ``values``, pinned by the covering design under the ci profile and
    recorded in the run's coverage (module docstring). Use it for every discrete config choice.
    (The composite is defined once: decorating one per call costs more than the draw itself.)"""
    values = tuple(values)
    if not values:
        raise ValueError(f"axis {name!r} has no values")
    return _choose(name, values)
