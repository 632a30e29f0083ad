"""Discovery commands: ``flowspec kinds [--json] [--family F ...]`` and
``flowspec properties [--json] [--kinds K ...]``.

``kinds`` lists every registered kind: its name, family, summary (what it computes), whether it may
be conditional (the registry's ``context_shape``), the class of :mod:`flowspec.accelerated` that
implements it and the ready-made builders (:mod:`flowspec.accelerated.models`) whose models use it.
``properties`` lists the conformance properties: name, what it checks (the first line of the
property's docstring) and the kinds it applies to (those with strategies, as ``flowspec conformance``
runs them); ``--kinds`` keeps the properties that apply to any of those kinds. Both print a table,
or with ``--json`` one JSON list of records. Unknown names are one-line usage errors (exit code 2).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Iterable, Sequence

from flowspec import registry
from flowspec.cli import EXIT_OK, EXIT_USAGE


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``kinds`` and ``properties`` subcommands to the ``flowspec`` command."""
    kinds = sub.add_parser("kinds", help="list the registered flow kinds")
    kinds.add_argument("--json", action="store_true", help="print one JSON list of records")
    kinds.add_argument("--family", nargs="+", metavar="FAMILY", help="only kinds of these families")
    kinds.set_defaults(func=_run_kinds)
    props = sub.add_parser("properties", help="list the conformance properties and the kinds they apply to")
    props.add_argument("--json", action="store_true", help="print one JSON list of records")
    props.add_argument("--kinds", nargs="+", metavar="KIND", help="only properties that apply to these kinds")
    props.set_defaults(func=_run_properties)


class CatalogueError(ValueError):
    """An unknown name in a selection (reported in one line, exit code 2)."""


def kind_records(families: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """One record per registered kind (module docstring), in registration order."""
    from flowspec.accelerated import MODULES
    from flowspec.accelerated.models import BUILDERS, describe

    names = registry.names()
    known = {registry.get(n).family for n in names}
    unknown = sorted(set(families or ()) - known)
    if unknown:
        raise CatalogueError(f"unknown families {unknown}; known: {', '.join(sorted(known))}")
    users: dict[str, list[str]] = {}
    for builder in BUILDERS:
        for kind in describe(builder)["kinds"]:
            users.setdefault(kind, []).append(builder)
    records = []
    for name in names:
        kind = registry.get(name)
        if families and kind.family not in families:
            continue
        cls = MODULES.get(name)
        records.append({
            "name": name, "family": kind.family, "summary": kind.summary,
            "conditional": kind.context_shape is not None,
            "accelerated": None if cls is None else f"{cls.__module__}.{cls.__qualname__}",
            "builders": users.get(name, []),
        })
    return records


def property_records(kinds: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """One record per conformance property (module docstring); with ``kinds``, those that apply to
    any of them, each listing only those kinds (without, every property, with every kind it applies to)."""
    from .property import PROPERTIES
    from .runner import SelectionError, applicable

    try:
        pairs = applicable(kinds, None)
    except SelectionError as exc:
        raise CatalogueError(str(exc)) from None
    applies: dict[str, list[str]] = {}
    for kind, prop in pairs:
        applies.setdefault(prop.name, []).append(kind)
    return [
        {"name": name, "checks": _first_line(prop.description), "requires": sorted(prop.requires),
         "kinds": applies.get(name, [])}
        for name, prop in PROPERTIES.items() if kinds is None or name in applies
    ]


def _first_line(text: str) -> str:
    """The first sentence-line of a docstring (its first paragraph, joined)."""
    return " ".join(text.split("\n\n")[0].split())


def _table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    line = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _emit(records: list[dict[str, Any]], as_json: bool, table: Any) -> int:
    print(json.dumps(records, indent=2, ensure_ascii=False) if as_json else table(records))
    return EXIT_OK


def _guard(command: str, produce: Any) -> int:
    try:
        return produce()
    except CatalogueError as exc:
        print(f"flowspec {command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _run_kinds(args: argparse.Namespace) -> int:
    def table(records: list[dict[str, Any]]) -> str:
        rows = [[r["name"], r["family"], "yes" if r["conditional"] else "no",
                 (r["accelerated"] or "-").removeprefix("flowspec.accelerated."), ", ".join(r["builders"]) or "-",
                 _shorten(r["summary"], 70)] for r in records]
        return _table(rows, ["kind", "family", "conditional", "class (flowspec.accelerated.)", "builders", "summary"])
    return _guard("kinds", lambda: _emit(kind_records(args.family), args.json, table))


def _run_properties(args: argparse.Namespace) -> int:
    def table(records: list[dict[str, Any]]) -> str:
        rows = [[r["name"], _shorten(r["checks"], 70), _shorten(", ".join(r["kinds"]), 60)] for r in records]
        return _table(rows, ["property", "checks", "kinds"])
    return _guard("properties", lambda: _emit(property_records(args.kinds), args.json, table))
