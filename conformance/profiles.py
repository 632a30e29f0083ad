"""Hypothesis profiles of the suite: ``ci`` (reproducible, covering, fast, the default) and ``thorough``.

Each run of a property (one kind, dtype and device) draws its examples from a seed of its own
(:func:`flowspec.conformance.runner.run_one`), so no two properties see the same examples. Under
``ci`` the discrete choices are pinned by the covering design of :mod:`.covering` (every value of
every axis is exercised) and the examples are fixed by that seed; under ``thorough`` hypothesis
draws everything freely, fresh each run, and shrinks a failure to a minimal case.

The profiles are applied to the suite's own checks only; they do not change the caller's global
hypothesis settings.
"""
from __future__ import annotations

from hypothesis import HealthCheck, Phase, Verbosity, settings

_COMMON = dict(
    deadline=None,
    database=None,
    verbosity=Verbosity.quiet,
    suppress_health_check=list(HealthCheck),
    print_blob=False,
    report_multiple_bugs=False,
)

PROFILES: dict[str, settings] = {
    # Fixed examples (a seed per run) and no shrinking: the same verdicts on every run, in minutes.
    # Eight examples: more than any axis has values, so an axis drawn once per example is covered
    # by every single run (see :mod:`.covering`).
    "ci": settings(max_examples=8, derandomize=False, phases=(Phase.explicit, Phase.generate), **_COMMON),
    # Fresh examples each run, many more of them, and shrinking to a minimal failing case.
    "thorough": settings(max_examples=60, derandomize=False, **_COMMON),
}


# Profiles whose discrete choices follow the covering design (:mod:`.covering`).
COVERING = {"ci": True, "thorough": False}


def covering(name: str) -> bool:
    get(name)
    return COVERING[name]


def get(name: str) -> settings:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown hypothesis profile {name!r}; choose one of {sorted(PROFILES)}") from None
