"""Deliberately broken implementations, one module per family, and the properties that must catch them.

Each module defines ``CASES``: a list of :class:`BrokenCase`. ``tests/test_broken.py`` runs the
conformance suite against every case (white-box, and black-box where the fault is visible there)
and asserts that each named property fails.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field


@dataclass(frozen=True)
class BrokenCase:
    """``cls`` replaces the implementation of ``kind``; ``white_box``/``black_box`` name the properties
    that must fail in each mode (an empty black-box list: the fault is invisible without the reference)."""

    name: str
    kind: str
    cls: type
    white_box: tuple[str, ...]
    black_box: tuple[str, ...] = ()
    dtypes: tuple[str, ...] = ("float64",)
    extra: dict = field(default_factory=dict)


def all_cases() -> list[BrokenCase]:
    cases: list[BrokenCase] = []
    for module in pkgutil.iter_modules(__path__):
        cases.extend(importlib.import_module(f"{__name__}.{module.name}").CASES)
    return cases
