"""``flowspec bench``: the comparisons of the source checkout's ``benchmarks/`` folder as subcommands.

The comparisons live with the benchmarks, not in the installed packages: ``benchmarks/`` is a
folder of scripts next to the package folders of a source checkout. :func:`load_benchmark` loads
one of them by path, once, as the module ``flowspec_benchmarks_<name>``; the scripts load their
siblings the same way (``timing = load_benchmark("timing")``), so that a script runs alike as a
subcommand, as ``python benchmarks/<name>.py`` and from the asv suite. ``FLOWSPEC_BENCHMARKS``
names another folder of scripts (the asv suite sets it to its own, since asv installs flowspec
from a wheel, without the checkout).

Each subcommand of :data:`SUBCOMMANDS` comes from a script that provides ``add_arguments(parser)``,
``run_command(args) -> int`` and a module docstring (the subcommand's description). A script that
is absent (flowspec installed without its source tree) or fails to import leaves its subcommand
in place: it prints why and exits 2, and the other subcommands are unaffected.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from .errors import ConfigError

#: The source checkout's benchmark scripts: the folder next to this package's folder.
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
#: An environment variable naming another folder of benchmark scripts: a flowspec installed from a
#: wheel (asv builds one per commit) has no checkout around it, and the asv suite points it here.
FOLDER_VARIABLE = "FLOWSPEC_BENCHMARKS"
MODULE_PREFIX = "flowspec_benchmarks_"
EXIT_UNAVAILABLE = 2


def script_path(name: str) -> Path:
    """Where benchmark script ``name`` lies: in ``$FLOWSPEC_BENCHMARKS`` when that is set, else in
    the source checkout's ``benchmarks/`` (it may not exist)."""
    return Path(os.environ.get(FOLDER_VARIABLE) or BENCHMARKS) / f"{name}.py"


def load_benchmark(name: str) -> ModuleType:
    """The script ``benchmarks/<name>.py`` loaded by path as module ``flowspec_benchmarks_<name>``,
    once (registered in ``sys.modules``); ``ConfigError`` naming the missing path when flowspec is
    installed without its source tree. A script that fails while loading is not registered."""
    module_name = MODULE_PREFIX + name
    if module_name in sys.modules:
        return sys.modules[module_name]
    path = script_path(name)
    if not path.is_file():
        raise ConfigError(f"the benchmark script {path.parent.name}/{path.name} of the source checkout is not at "
                          f"{path} (a flowspec installed from a package has no benchmarks/ folder; "
                          f"{FOLDER_VARIABLE} names another)")
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


@dataclass(frozen=True)
class Subcommand:
    """``flowspec bench <name>``, run by the script ``benchmarks/<script>.py``."""

    name: str
    script: str
    help: str


SUBCOMMANDS = (
    Subcommand("compare", "compare", "residual flow vs QuAR flow of the same architecture: time and memory, "
                                     "training and test, against the QuAR targets"),
    Subcommand("peers", "peers", "MAF and neural spline flows against zuko and nflows, the same architecture"),
    Subcommand("residual", "peers_residual", "residual flows against normflows' residual flow, the same architecture"),
)


def _unavailable(command: Subcommand, reason: Exception, args: argparse.Namespace) -> int:
    """What an unavailable subcommand does: say why on stderr and exit 2."""
    print(f"flowspec bench {command.name}: unavailable: {type(reason).__name__}: {reason}", file=sys.stderr)
    return EXIT_UNAVAILABLE


def _add_subcommand(sub: argparse._SubParsersAction, command: Subcommand) -> None:
    """Register ``command`` with the options and run of its script, or as unavailable (prints why, exits 2)."""
    try:
        module = load_benchmark(command.script)
        add_arguments, run_command = module.add_arguments, module.run_command
    except Exception as exc:  # noqa: BLE001 - a missing or broken script must not break the other commands
        p = sub.add_parser(command.name, help=f"{command.help} (unavailable here)", description=str(exc))
        p.set_defaults(func=lambda args, command=command, exc=exc: _unavailable(command, exc, args))
        return
    p = sub.add_parser(command.name, help=command.help, description=module.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run_command)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``flowspec bench`` and its :data:`SUBCOMMANDS` to the ``flowspec`` command."""
    bench = subparsers.add_parser("bench", help="benchmarks of the accelerated flows (from the source checkout)")
    sub = bench.add_subparsers(dest="bench_command", required=True)
    for command in SUBCOMMANDS:
        _add_subcommand(sub, command)
