"""The kind × property table and the JSON report."""
from __future__ import annotations

import importlib
import json
import platform
from collections import Counter
from typing import Any, Iterable

from .covering import DECLARED, Coverage
from .runner import STATUSES, Result

SYMBOL = {"passed": "ok", "failed": "FAIL", "convention": "conv", "not_claimed": "n/c", "inconclusive": "inconcl",
          "not_supported": "n/s", "skipped": "skip"}


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


def failures(results: Iterable[Result], statuses: tuple[str, ...] = ("failed", "inconclusive")) -> str:
    """The messages of the results with one of ``statuses`` (failed and inconclusive ones first)."""
    lines = []
    for status in statuses:
        for r in results:
            if r.status == status:
                lines.append(f"[{r.status}] {r.kind} / {r.property} / {r.dtype} / {r.device}:\n    "
                             + r.message.replace("\n", "\n    "))
    return "\n".join(lines)


def findings(results: Iterable[Result]) -> str:
    """What a reader needs first: failures, inconclusive results, then (as information) the results
    that hold only by a declared convention and the bad-input checks of an implementation that does
    not claim to validate."""
    return failures(list(results), ("failed", "inconclusive", "convention", "not_claimed"))


def not_supported_summary(results: Iterable[Result]) -> str:
    """The not-supported results counted by reason (one line each, most frequent first), and the
    examples adapters declined, per property with their reasons."""
    results = list(results)
    reasons = Counter(r.message for r in results if r.status == "not_supported")
    lines = [f"not supported: {sum(reasons.values())} results"] if reasons else []
    lines += [f"  {n:>4} × {why}" for why, n in reasons.most_common()]
    declined: dict[str, Counter] = {}
    for r in results:
        for why, n in r.declined.items():
            declined.setdefault(r.property, Counter())[why] += n
    if declined:
        lines.append("declined examples (the adapter cannot honour these configs):")
        lines += [f"  {prop}: " + "; ".join(f"{why} ({n}×)" for why, n in counts.most_common())
                  for prop, counts in declined.items()]
    return "\n".join(lines)


def coverage(results: Iterable[Result]) -> dict[str, Coverage]:
    """Per kind, the axis values its runs exercised (merged over properties, dtypes and devices)."""
    out: dict[str, Coverage] = {}
    for r in results:
        out.setdefault(r.kind, Coverage()).merge(r.coverage)
    return out


def missing_coverage(results: Iterable[Result]) -> dict[str, dict[str, list[str]]]:
    """Per kind and axis, the values offered or declared (:func:`~.covering.declare_axes`) that no
    run drew; an axis declared but never drawn lists all its values. Kinds the adapter checked
    nothing of (every result not supported or skipped) have no gaps to report."""
    results = list(results)
    checked = {r.kind for r in results if r.status not in ("not_supported", "skipped")}
    out = {}
    for kind, cov in coverage(results).items():
        if kind not in checked:
            continue
        declared = DECLARED.get(kind, {})
        for name, values in declared.items():
            cov._offer(name, values)
        gaps = cov.missing()
        if gaps:
            out[kind] = gaps
    return out


def coverage_summary(results: Iterable[Result]) -> str:
    """One line (plus the gaps, if any): how many axis values the run exercised."""
    results = list(results)
    per_kind = coverage(results)
    offered = sum(len(o) for cov in per_kind.values() for o, _ in cov.axes.values())
    seen = sum(len(set(o) & s) for cov in per_kind.values() for o, s in cov.axes.values())
    axes = sum(len(cov.axes) for cov in per_kind.values())
    gaps = missing_coverage(results)
    line = f"coverage: {seen} of {offered} values of {axes} axes exercised across {len(per_kind)} kinds"
    return line + "".join(f"\n  {kind}: {name} never drew {', '.join(v)}"
                          for kind, axes_ in gaps.items() for name, v in axes_.items())


SCHEMA_VERSION = 3
"""Version of the JSON report's layout: 2 added ``schema_version`` and the ``header``; 3 added the
statuses ``convention`` and ``not_claimed`` and each record's ``declined`` (reason → examples) and
``conventions`` (the declared conventions a ``convention`` result holds by)."""


def _version(module: str) -> str | None:
    try:
        return str(importlib.import_module(module).__version__)
    except AttributeError:  # a module without __version__ (nflows): its distribution's version
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version(module)
        except PackageNotFoundError:
            return None
    except Exception:  # noqa: BLE001 - an absent or version-less module is recorded as None
        return None


def header(adapter: Any, profile: str, devices: Iterable[str]) -> dict[str, Any]:
    """What a run depends on: the seed, the profile, the versions, the implementation and the devices."""
    from importlib.metadata import PackageNotFoundError, version

    from .seeding import base_seed

    try:
        flowspec_version = version("flowspec")
    except PackageNotFoundError:
        flowspec_version = None
    impl_module = adapter.implementation or type(adapter).__module__.split(".")[0]
    return {
        "seed": base_seed(), "profile": profile, "devices": list(devices), "adapter": adapter.name,
        "implementation": {"module": impl_module, "version": _version(impl_module)},
        "versions": {"flowspec": flowspec_version, "torch": _version("torch"), "numpy": _version("numpy"),
                     "hypothesis": _version("hypothesis"), "python": platform.python_version()},
    }


def to_json(results: Iterable[Result], path: str, *, adapter: Any, profile: str, devices: Iterable[str] = ("cpu",)) -> None:
    """Write ``{"schema_version", "header", "coverage", "results"}``; ``results`` is one record per
    (kind, property, dtype, device), as the table's cells."""
    results = list(results)
    records = [r.to_json() for r in results]
    kinds = {kind: cov.to_json() for kind, cov in coverage(results).items()}
    document = {"schema_version": SCHEMA_VERSION, "header": header(adapter, profile, devices), "coverage": kinds,
                "results": records}
    with open(path, "w") as fh:
        json.dump(document, fh, indent=1)
