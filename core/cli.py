"""The ``flowspec`` command.

``flowspec conformance [--impl MODULE:ATTR] [--profile ci|thorough] [--json PATH] [--kinds K ...]
[--properties P ...] [--dtypes D ...] [--devices D ...]`` runs the conformance suite (default
implementation: ``flowspec.accelerated``), prints the kind × property table and exits 1 when any
property failed. Other subcommands are added by the packages that own them (``bench``).
"""
from __future__ import annotations

import argparse
import sys
import importlib
from typing import Sequence

# Modules that add a subcommand through add_parser(subparsers); each sets ``func`` on its parser.
EXTENSIONS = ("flowspec.accelerated.bench",)


def _conformance_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("conformance", help="run the conformance suite against an implementation")
    p.add_argument("--impl", default="flowspec.accelerated", help="MODULE:ATTR of an adapter (default: %(default)s)")
    p.add_argument("--profile", default="ci", choices=["ci", "thorough"], help="hypothesis profile")
    p.add_argument("--json", metavar="PATH", help="also write one record per (kind, property, dtype, device)")
    p.add_argument("--kinds", nargs="+", metavar="KIND", help="only these kinds")
    p.add_argument("--properties", nargs="+", metavar="PROPERTY", help="only these properties")
    p.add_argument("--dtypes", nargs="+", default=["float64", "float32"], choices=["float64", "float32"])
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when available")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=_run_conformance)


def _run_conformance(args: argparse.Namespace) -> int:
    from flowspec import conformance
    from flowspec.conformance import report

    adapter = conformance.resolve(args.impl)
    devices = args.devices or sorted(adapter.capabilities().devices, key=lambda d: d != "cpu")

    def progress(result: conformance.Result) -> None:
        if not args.quiet:
            print(f"  {result.status:<13} {result.kind} / {result.property} / {result.dtype} / {result.device}"
                  f"  ({result.seconds:.1f} s)", file=sys.stderr, flush=True)

    results = conformance.run(
        adapter, kinds=args.kinds, properties=args.properties, dtypes=args.dtypes, devices=devices,
        profile=args.profile, progress=progress,
    )
    print(f"flowspec conformance: {adapter.name}, profile {args.profile}, devices {', '.join(devices)}\n")
    print(report.table(results))
    print()
    details = report.failures(results)
    if details:
        print(details + "\n")
    print(report.coverage_summary(results))
    print(report.summary(results))
    if args.json:
        report.to_json(results, args.json, adapter=adapter.name, profile=args.profile)
        print(f"wrote {args.json}")
    return 1 if any(r.status == "failed" for r in results) else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowspec", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _conformance_parser(sub)
    for name in EXTENSIONS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not name.startswith(exc.name):
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
