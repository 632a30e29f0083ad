"""The ``flowspec`` command.

``flowspec conformance [--impl MODULE:ATTR] [--profile ci|thorough] [--json PATH] [--kinds K ...]
[--properties P ...] [--dtypes D ...] [--devices D ...]`` runs the conformance suite (default
implementation: ``flowspec.accelerated``), prints the findings (failures first), the kind × property
table and the not-supported results by reason, and exits 0, 1 (a
property failed) or 2 (a usage or set-up error, or nothing checked: :data:`EXIT_OK`). Other
subcommands are added by the packages that own them (``bench``).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

# Modules that add a subcommand through add_parser(subparsers); each sets ``func`` on its parser.
EXTENSIONS = ("flowspec.bench", "flowspec.accelerated.trainer", "flowspec.conformance.catalogue")


EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
"""Exit codes: 0 when something was checked and nothing failed; 1 when a property failed; 2 for a
usage or set-up error (unknown kind or property, an ``--impl`` that cannot be imported or is not an
adapter, an adapter factory that raises, a device that is not there, an empty selection, an
unwritable ``--json`` path, a bad ``FLOWSPEC_SEED``) and when nothing at all was checked."""


DEFAULT_TIMEOUT = 600.0
"""Seconds a property may take before it is reported as timed out (the default run's slowest
property takes well under a minute on one core)."""


class UsageError(Exception):
    """A set-up problem reported in one line with exit code 2 (``--debug`` shows the traceback)."""


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
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help="time limit per property, after which it fails as timed out (default: %(default)s; "
                        "0: no limit, properties run in this process)")
    p.add_argument("--debug", action="store_true", help="show the traceback of a set-up error")
    p.set_defaults(func=_run_conformance)


def _check_json_path(path: str | None) -> None:
    """Refuse an ``--json`` path that cannot be written, before the run."""
    if path is None:
        return
    target = os.path.abspath(path)
    folder = os.path.dirname(target)
    if os.path.isdir(target):
        raise UsageError(f"--json {path}: is a directory")
    if not os.path.isdir(folder):
        raise UsageError(f"--json {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (os.path.exists(target) and not os.access(target, os.W_OK)):
        raise UsageError(f"--json {path}: not writable")


def _setup(args: argparse.Namespace) -> tuple:
    """Resolve the adapter, the devices and the selection; every problem is a :class:`UsageError`."""
    from flowspec import conformance
    from flowspec.conformance.namespace import kinds_of
    from flowspec.conformance.runner import SelectionError, applicable
    from flowspec.conformance.seeding import base_seed

    base_seed()
    _check_json_path(args.json)
    if args.timeout < 0:
        raise UsageError(f"--timeout must be ≥ 0 seconds, got {args.timeout:g}")
    try:
        adapter = conformance.resolve(args.impl)
    except Exception as exc:  # noqa: BLE001 - import errors, factories that raise, non-adapters
        raise UsageError(f"--impl {args.impl}: {type(exc).__name__}: {exc}") from exc
    available = adapter.capabilities().devices
    devices = args.devices or sorted(available, key=lambda d: d != "cpu")
    absent = [d for d in devices if d not in available]
    if absent:
        raise UsageError(f"--devices {' '.join(absent)}: not available to {adapter.name} "
                         f"(available: {', '.join(sorted(available))})")
    try:
        selection = applicable(args.kinds, args.properties, adapter)
    except SelectionError as exc:
        raise UsageError(str(exc)) from exc
    if not selection:
        raise UsageError(f"the selection (kinds {args.kinds or 'all'}, properties {args.properties or 'all'}) "
                         f"matches no property of any kind")
    implemented = kinds_of(adapter)
    unimplemented = [k for k in args.kinds or () if k not in implemented]
    if unimplemented:
        raise UsageError(f"--kinds {' '.join(unimplemented)}: not implemented by {adapter.name}, so nothing "
                         f"of {'it' if len(unimplemented) == 1 else 'them'} would be checked")
    return adapter, devices


def _run_conformance(args: argparse.Namespace) -> int:
    try:
        adapter, devices = _setup(args)
    except Exception as exc:  # noqa: BLE001 - a bad FLOWSPEC_SEED fails on import, for example
        if args.debug:
            raise
        message = str(exc) if isinstance(exc, UsageError) else f"{type(exc).__name__}: {exc}"
        print(f"flowspec conformance: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return EXIT_USAGE
    return _report(args, adapter, devices)


def _report(args: argparse.Namespace, adapter, devices: list[str]) -> int:
    from flowspec import conformance
    from flowspec.conformance import report

    def progress(result: conformance.Result) -> None:
        if not args.quiet:
            print(f"  {result.status:<13} {result.kind} / {result.property} / {result.dtype} / {result.device}"
                  f"  ({result.seconds:.1f} s)", file=sys.stderr, flush=True)

    results = conformance.run(
        adapter, kinds=args.kinds, properties=args.properties, dtypes=args.dtypes, devices=devices,
        profile=args.profile, progress=progress, timeout=args.timeout or None,
    )
    print(f"flowspec conformance: {adapter.name}, profile {args.profile}, devices {', '.join(devices)}\n")
    details = report.findings(results)
    if details:
        print(details + "\n")
    print(report.table(results))
    print()
    unsupported = report.not_supported_summary(results)
    if unsupported:
        print(unsupported + "\n")
    print(report.coverage_summary(results))
    print(report.summary(results))
    if args.json:
        report.to_json(results, args.json, adapter=adapter, profile=args.profile, devices=devices)
        print(f"wrote {args.json}")
    if any(r.status == "failed" for r in results):
        return EXIT_FAILED
    if not any(r.status in ("passed", "inconclusive", "convention", "not_claimed") for r in results):
        print("flowspec conformance: nothing was checked (every result is not_supported or skipped)", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


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
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # the reader of a pipe stopped early (``flowspec kinds | head``): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
