"""Hypothesis profiles of the suite: ``ci`` (derandomized, fast, the default) and ``thorough``.

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
    # Fixed examples (derandomized) and no shrinking: the same verdicts on every run, in minutes.
    "ci": settings(max_examples=4, derandomize=True, phases=(Phase.explicit, Phase.generate), **_COMMON),
    # Fresh examples each run, many more of them, and shrinking to a minimal failing case.
    "thorough": settings(max_examples=60, derandomize=False, **_COMMON),
}


def get(name: str) -> settings:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown hypothesis profile {name!r}; choose one of {sorted(PROFILES)}") from None
