"""The kind × property table and the JSON report."""
from __future__ import annotations

import json
from collections import Counter
from typing import Iterable

from .runner import STATUSES, Result

SYMBOL = {"passed": "ok", "failed": "FAIL", "inconclusive": "inconcl", "not_supported": "n/s", "skipped": "skip"}


def _cell(result: Result) -> str:
    if result.max_error is None or result.status in ("not_supported", "skipped"):
        return SYMBOL[result.status]
    return f"{SYMBOL[result.status]} {result.max_error:.0e}"


def _grid(results: list[Result], props: list[str]) -> str:
    rows: dict[tuple[str, str, str], dict[str, Result]] = {}
    for r in results:
        if r.property in props:
            rows.setdefault((r.kind, r.dtype, r.device), {})[r.property] = r
    header = ["kind", "dtype", "device"] + props
    lines = [[*key, *(_cell(cells[p]) if p in cells else "-" for p in props)] for key, cells in rows.items()]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines)]
    fmt = lambda row: "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(line) for line in lines])


def table(results: Iterable[Result]) -> str:
    """Kind × property tables: one for the properties every kind has, then one per group of
    kind-specific properties (those that apply to the same kinds), restricted to those kinds.
    Each row is a (kind, dtype, device); each cell the status and the largest error."""
    results = list(results)
    kinds_of: dict[str, frozenset[str]] = {}
    for r in results:
        kinds_of[r.property] = kinds_of.get(r.property, frozenset()) | {r.kind}
    groups: dict[frozenset[str], list[str]] = {}
    for prop, kinds in kinds_of.items():
        groups.setdefault(kinds, []).append(prop)
    ordered = sorted(groups.items(), key=lambda item: (-len(item[0]), sorted(item[0])))
    return "\n\n".join(_grid([r for r in results if r.kind in kinds], props) for kinds, props in ordered)


def summary(results: Iterable[Result]) -> str:
    counts = Counter(r.status for r in results)
    return ", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES)


def failures(results: Iterable[Result]) -> str:
    """The messages of failed and inconclusive results."""
    lines = []
    for r in results:
        if r.status in ("failed", "inconclusive"):
            lines.append(f"[{r.status}] {r.kind} / {r.property} / {r.dtype} / {r.device}:\n    "
                         + r.message.replace("\n", "\n    "))
    return "\n".join(lines)


def to_json(results: Iterable[Result], path: str, *, adapter: str, profile: str) -> None:
    records = [r.to_json() for r in results]
    with open(path, "w") as fh:
        json.dump({"adapter": adapter, "profile": profile, "results": records}, fh, indent=1)
