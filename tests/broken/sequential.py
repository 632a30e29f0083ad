"""Broken sequential flows."""
from __future__ import annotations

from flowspec.accelerated.base import from_spec
from flowspec.accelerated.sequential import Sequential

from . import BrokenCase


class ChildrenInSortedKeyOrder(Sequential):
    """The children are read from the spec in sorted key order, which is the numeric order only for
    up to ten children: "10" sorts before "2", so a longer chain runs its children out of order."""

    @classmethod
    def from_spec(cls, spec):
        return cls([from_spec(spec.params[name]) for name in sorted(spec.params)])


class ContextToFirstConditionalChild(Sequential):
    """The context is handed to the first conditional child only (the one that "conditions the
    chain"); a second conditional child gets none."""

    def _first_conditional(self) -> int | None:
        return next((i for i, child in enumerate(self.flows) if child.context_shape is not None), None)

    def _forward(self, x, context):
        first, total = self._first_conditional(), None
        for i, child in enumerate(self.flows):
            x, logdet = child(x, context if i == first else None)
            total = logdet if total is None else total + logdet
        return x, total

    def _inverse(self, z, context):
        first = self._first_conditional()
        for i in range(len(self.flows) - 1, -1, -1):
            z = self.flows[i].inverse(z, context if i == first else None)
        return z


# Black-box mode cannot build composite kinds (their children are not in the config), so these
# faults are checked in white-box mode only.
CASES = [
    BrokenCase("sequential children in sorted key order", "sequential", ChildrenInSortedKeyOrder,
               white_box=("forward_matches_reference", "logdet_matches_reference", "inverse_matches_reference")),
    BrokenCase("sequential context to the first conditional child only", "sequential",
               ContextToFirstConditionalChild,
               white_box=("forward_matches_reference", "inverse_matches_reference", "inverse_round_trip")),
]
