"""The documentation: it builds with warnings as errors, its API reference names every public name
of the four packages, its kinds catalogue every registered kind, and its examples run.

One Sphinx build (about 25 s on one core) serves the build, API and catalogue checks; the guide's
``>>>`` examples run as doctests and its example scripts (``docs/examples``) as they are.
"""
from __future__ import annotations

import ast
import doctest
import importlib
import inspect
import pkgutil
import posixpath
import runpy
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PACKAGES = ("flowspec", "flowspec.reference", "flowspec.accelerated", "flowspec.conformance")
EXAMPLES = sorted((DOCS / "examples").glob("*.py"))
PAGES = sorted(p for p in DOCS.rglob("*.rst") if "_build" not in p.parts and ">>>" in p.read_text())


def build_html(out: Path) -> None:
    """The HTML build into ``out``; any warning fails it (``-W``)."""
    proc = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS),
                           str(out)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, f"the documentation does not build cleanly:\n{proc.stderr}"


def _inventory(built: Path) -> dict[str, set[str]]:
    from sphinx.util.inventory import InventoryFile

    with open(built / "objects.inv", "rb") as fh:
        inventory = InventoryFile.load(fh, "", posixpath.join)
    return {kind: set(entries) for kind, entries in inventory.items()}


def _modules() -> list[ModuleType]:
    """Every public module of the four packages (the conformance families loaded)."""
    importlib.import_module("flowspec.conformance").load_families()
    names = set(PACKAGES)
    for package in PACKAGES:
        pkg = importlib.import_module(package)
        names |= {f"{package}.{m.name}" for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_")}
    return [importlib.import_module(n) for n in sorted(names)]


def _assigned(module: ModuleType) -> set[str]:
    """Names bound by a top-level assignment in the module's source (its data, not its imports)."""
    tree = ast.parse(inspect.getsource(module))
    names = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) else []
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def public_names(module: ModuleType) -> dict[str, object]:
    """``__all__`` where the module has one; else the classes and functions it defines and the data
    it assigns, whose names do not start with an underscore."""
    if hasattr(module, "__all__"):
        return {name: getattr(module, name) for name in module.__all__}
    assigned = _assigned(module)
    out = {}
    for name, obj in vars(module).items():
        if name.startswith("_") or inspect.ismodule(obj):
            continue
        defined_here = getattr(obj, "__module__", None) == module.__name__
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and defined_here or (
                not inspect.isclass(obj) and not inspect.isfunction(obj) and name in assigned):
            out[name] = obj
    return out


def _homes(module: ModuleType, name: str, obj: object, modules: list[ModuleType]) -> set[str]:
    """The dotted names under which ``module.name`` may be documented: there, or where it is defined."""
    homes = {f"{module.__name__}.{name}"}
    if inspect.isclass(obj) or inspect.isfunction(obj):
        homes.add(f"{obj.__module__}.{obj.__qualname__}")
    else:
        homes |= {f"{m.__name__}.{name}" for m in modules if getattr(m, name, None) is obj and name in _assigned(m)}
    return homes


def test_docs_build(tmp_path: Path) -> None:
    """One build (pytest-xdist would repeat a fixture's build in every worker) for three checks:
    no warnings, every public name in the API reference, every kind in the catalogue."""
    out = tmp_path / "html"
    build_html(out)
    for page in ("index", "kinds", "concepts", "api/index", "api/accelerated", "guide/own_implementation"):
        assert (out / f"{page}.html").is_file(), page
    inventory = _inventory(out)
    check_public_names(inventory)
    check_kinds(inventory, (out / "kinds.html").read_text())


def check_public_names(inventory: dict[str, set[str]]) -> None:
    documented = set().union(*(entries for kind, entries in inventory.items() if kind.startswith("py:")))
    modules = _modules()
    missing = [f"{m.__name__}.{name}" for m in modules for name, obj in public_names(m).items()
               if not _homes(m, name, obj, modules) & documented]
    assert not missing, f"public names absent from the API reference: {missing}"
    assert {m.__name__ for m in modules} <= documented


def check_kinds(inventory: dict[str, set[str]], page: str) -> None:
    from flowspec import registry
    from flowspec.accelerated import MODULES

    for name in registry.names():
        assert f"kind-{name}" in inventory["std:label"], f"kind {name!r} is not in the catalogue"
        cls = MODULES.get(name)
        assert cls is None or f"{cls.__module__}.{cls.__qualname__}" in page, f"{name}: no {cls}"


def test_public_names_see_a_missing_one() -> None:
    """The walk counts what a user imports: a package's ``__all__``, a module's own definitions."""
    import flowspec.accelerated.base as base

    names = public_names(base)
    assert {"Flow", "from_spec", "MODULES"} <= set(names) and "torch" not in names and "nn" not in names
    assert "FlowSpec" not in names  # imported from flowspec.spec, documented there
    assert set(public_names(importlib.import_module("flowspec"))) >= {"FlowSpec", "ConfigError", "__version__"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_doctests_in_pages(page: Path) -> None:
    result = doctest.testfile(str(page), module_relative=False,
                              optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_scripts_run(script: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(script.parent))
    runpy.run_path(str(script), run_name="__main__")
