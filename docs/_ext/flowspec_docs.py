"""Build-time generated pages of the flowspec documentation.

Two kinds of page are written from the code when Sphinx reads them, so a new kind or a new module
appears without editing the docs:

* a line ``.. flowspec-api:: PACKAGE`` is replaced by one section per module of ``PACKAGE`` (found
  by :mod:`pkgutil`, as the packages themselves find their family modules), each an ``automodule``
  with its members;
* a line ``.. flowspec-kinds::`` is replaced by the kinds catalogue: every kind of
  :func:`flowspec.registry.names` with its family, summary, the accelerated class that builds it
  (:data:`flowspec.accelerated.MODULES`), that class's arguments and defaults (its constructor's
  signature; a spec's ``config`` takes the same keys), the ready-made model builders made of it
  (:data:`flowspec.accelerated.models.BUILDERS`), the keys the kind declares, and the equation
  it implements (the kind's summary, and the reference family module, which cites the paper's
  equations).

The replacement happens in Sphinx's ``source-read`` event; nothing is written to the source tree.

Two conventions of the project's docstrings are read as the authors mean them:

* ``|x|`` is an absolute value or a norm, never a reST substitution (the docstrings are written to
  be read as plain text by ``help()`` as well): bars outside inline literals, roles and literal
  blocks are escaped before reST parses a docstring;
* a relative reference such as ``:mod:`.lipschitz``` from ``flowspec.accelerated.residual`` means
  the sibling module ``flowspec.accelerated.lipschitz``, not the modules of that name in the other
  layers: where a reference has several targets, the ones nearest the referring module (the longest
  common dotted prefix) are kept.
"""
from __future__ import annotations

import ast
import functools
import importlib
import inspect
import pkgutil
import re
from types import ModuleType
from typing import Any

from sphinx.pycode import ModuleAnalyzer

API = ".. flowspec-api::"
KINDS = ".. flowspec-kinds::"
# Subpackages documented on pages of their own, not as modules of ``flowspec``.
LAYERS = ("flowspec.reference", "flowspec.accelerated", "flowspec.conformance")
# Constructor arguments that are not config keys.
NOT_CONFIG = ("self", "validate_args")


def modules_of(package: str) -> list[str]:
    """``package`` and its public submodules, in name order (the layers' subpackages excluded)."""
    pkg = importlib.import_module(package)
    if package == "flowspec.conformance":
        pkg.load_families()
    names = [f"{package}.{m.name}" for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_")]
    return [package] + sorted(n for n in names if n not in LAYERS)


def _heading(text: str, char: str) -> list[str]:
    return [text, char * len(text), ""]


def _assigned(module: ModuleType) -> set[str]:
    """Names bound by a top-level assignment in the module's source (its data, not its imports)."""
    names = set()
    for node in ast.parse(inspect.getsource(module)).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) else []
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def _is_data(obj: Any) -> bool:
    return not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismodule(obj))


def _public(module: ModuleType) -> list[str]:
    names = getattr(module, "__all__", None)
    return list(names) if names is not None else [n for n in vars(module) if not n.startswith("_")]


@functools.cache
def _commented(module: str) -> frozenset[str]:
    """The module's names that carry a documentation comment (``#:``) or string of their own."""
    return frozenset(name for _, name in ModuleAnalyzer.for_module(module).find_attr_docs())


def _data(module: ModuleType) -> list[str]:
    """The public data the module assigns and autodoc does not document by itself (no ``#:``
    comment): tables, constants, type aliases, ready-made instances."""
    commented = _commented(module.__name__)
    assigned = _assigned(module)
    return [n for n in _public(module) if n in assigned and n not in commented and _is_data(getattr(module, n))]


def _home(package: str, name: str, obj: Any) -> str | None:
    """Where a name a package re-exports is documented: where it is defined (classes, functions)
    or the submodule that assigns it (data)."""
    if not _is_data(obj):
        return f"{obj.__module__}.{obj.__qualname__}"
    for sub in modules_of(package)[1:]:
        module = importlib.import_module(sub)
        if getattr(module, name, None) is obj and name in _assigned(module):
            return f"{sub}.{name}"
    return None


def _package(module: ModuleType) -> list[str]:
    """A package's docstring, the names it defines itself, and links to those it re-exports."""
    own = [n for n in _public(module) if not _is_data(getattr(module, n))
           and getattr(module, n).__module__ == module.__name__]
    lines = [f".. automodule:: {module.__name__}"] + ([f"   :members: {', '.join(own)}"] if own else
                                                       ["   :no-members:"]) + [""]
    links = []
    for name in _public(module):
        obj = getattr(module, name)
        if name in own or (name in _assigned(module) and _is_data(obj)):
            continue
        home = _home(module.__name__, name, obj)
        links.append(f"* :py:obj:`{name} <{home}>`" if home else f"* ``{name}``")
    return lines + (["Re-exported here:", ""] + links + [""] if links else [])


def api_page(package: str) -> list[str]:
    """One section per module: the package's own docstring and re-exports, then each module, each
    followed by its undocumented public data."""
    lines: list[str] = []
    for name in modules_of(package):
        module = importlib.import_module(name)
        lines += _heading(f"``{name}``", "-")
        lines += _package(module) if name == package else [f".. automodule:: {name}", ""]
        for data in _data(module):
            lines += [f".. autodata:: {name}.{data}", "   :no-value:", ""]
    return lines


def _default(value: Any) -> str:
    return "*required*" if value is inspect.Parameter.empty else f"``{value!r}``"


def _arguments(cls: type) -> list[str]:
    rows = [p for p in inspect.signature(cls.__init__).parameters.values()
            if p.name not in NOT_CONFIG and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if not rows:
        return ["Arguments: none.", ""]
    lines = [".. list-table::", "   :header-rows: 1", "", "   * - argument", "     - default"]
    for p in rows:
        lines += [f"   * - ``{p.name}``", f"     - {_default(p.default)}"]
    return lines + [""]


def _declared_keys(kind: Any) -> str | None:
    keys = kind.config_keys
    if keys is None or callable(keys):
        return None
    return ", ".join(f"``{k}``" for k in sorted(keys))


def _equation(family: str) -> list[str]:
    """The first paragraph of the reference family module's docstring (the family and its paper),
    and a link to the whole module, the specification with the paper's equation numbers."""
    doc = inspect.getdoc(importlib.import_module(f"flowspec.reference.{family}")) or ""
    first = escape_docstring(doc.split("\n\n")[0].splitlines())
    return [f".. py:currentmodule:: flowspec.reference.{family}", "",
            f"**Specification** (:py:mod:`flowspec.reference.{family}`, with the paper's equations): "
            + " ".join(line.strip() for line in first).rstrip(":"), "", ".. py:currentmodule:: None", ""]


def kinds_page() -> list[str]:
    """The kinds catalogue: an overview table, then a section per kind."""
    from flowspec import registry
    from flowspec.accelerated import MODULES

    names, builders = registry.names(), _builders()
    lines = [".. list-table::", "   :header-rows: 1", "", "   * - kind", "     - family", "     - conditional",
             "     - accelerated class", "     - ready-made models"]
    for name in names:
        kind, cls = registry.get(name), MODULES.get(name)
        lines += [f"   * - :ref:`{name} <kind-{name}>`", f"     - {kind.family}",
                  f"     - {'yes' if kind.context_shape is not None else 'no'}",
                  f"     - :py:class:`~{cls.__module__}.{cls.__qualname__}`" if cls else "     - (none)",
                  f"     - {_builder_links(builders.get(name, []))}"]
    lines.append("")
    for name in names:
        lines += _kind_section(name, registry.get(name), MODULES.get(name), builders.get(name, []))
    return lines


def _builders() -> dict[str, list[str]]:
    """For each kind, the ready-made model builders (:data:`flowspec.accelerated.models.BUILDERS`)
    whose flows are made of it."""
    from flowspec.accelerated import models

    out: dict[str, list[str]] = {}
    for builder in models.BUILDERS:
        for kind in models.describe(builder)["kinds"]:
            out.setdefault(kind, []).append(builder)
    return out


def _builder_links(builders: list[str]) -> str:
    return ", ".join(f":py:func:`~flowspec.accelerated.models.{b}`" for b in builders) or "—"


def _escape(text: str) -> str:
    """``text`` with the characters reST reads as markup (emphasis, substitutions) escaped."""
    for char in "\\*|`_":
        text = text.replace(char, "\\" + char)
    return text


def _kind_section(name: str, kind: Any, cls: type | None, builders: list[str]) -> list[str]:
    lines = [f".. _kind-{name}:", ""] + _heading(f"``{name}``", "-")
    lines += [f"**Family** ``{kind.family}``{' (composite)' if kind.composite else ''}. "
              f"**Conditional**: {'may take a context' if kind.context_shape is not None else 'no'}.", ""]
    if kind.summary:
        lines += [f"**Map (forward, x → z)**: {_escape(kind.summary)}", ""]
    if cls is None:
        lines += ["No accelerated class implements this kind yet.", ""]
    else:
        lines += [f"**Built by** :py:class:`{cls.__module__}.{cls.__qualname__}` (or "
                  f":py:func:`flowspec.accelerated.from_spec` from a spec of kind ``{name}``).", ""]
        lines += _arguments(cls)
    if builders:
        lines += [f"**Ready-made models** made of it: {_builder_links(builders)}.", ""]
    declared = _declared_keys(kind)
    if declared:
        lines += [f"**Config keys** the kind declares: {declared}.", ""]
    return lines + _equation(kind.family)


# Inline literals and interpreted text (roles), left as they are; and the bars between them.
_SPANS = re.compile(r"(``.+?``|:[a-z:]+:`[^`]*`|`[^`]*`_{0,2})")


def escape_bars(line: str) -> str:
    """``line`` with every ``|`` outside inline literals and roles escaped (module docstring)."""
    parts = _SPANS.split(line)
    return "".join(part if i % 2 else re.sub(r"(?<!\\)\|", r"\\|", part) for i, part in enumerate(parts))


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def escape_docstring(lines: list[str]) -> list[str]:
    """Every line through :func:`escape_bars`, except in literal blocks (after ``::``) and doctests."""
    out, literal_from = [], None
    for line in lines:
        if literal_from is not None and (not line.strip() or _indent(line) > literal_from):
            out.append(line)
            continue
        literal_from = None
        out.append(line if line.lstrip().startswith(">>>") else escape_bars(line))
        if line.rstrip().endswith("::"):
            literal_from = _indent(line)
    return out


def _process_docstring(app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    """Escape the bars (module docstring); data without a comment of its own shows no docstring
    rather than its type's (a dict's, an array's)."""
    module, _, attr = name.rpartition(".")
    if what == "data" and attr not in _commented(module):
        lines[:] = []
    lines[:] = escape_docstring(lines)


def _common_prefix(a: str, b: str) -> int:
    """How many leading dotted components ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a.split("."), b.split(".")):
        if x != y:
            break
        n += 1
    return n


def _nearest_domain() -> type:
    from sphinx.domains.python import PythonDomain

    class NearestPythonDomain(PythonDomain):
        """The Python domain, resolving an ambiguous reference to the targets nearest the referring
        module (module docstring)."""

        def find_obj(self, env, modname, classname, name, type, searchmode=0):  # noqa: A002 - Sphinx's names
            matches = super().find_obj(env, modname, classname, name, type, searchmode)
            if len(matches) > 1 and modname:
                best = max(_common_prefix(modname, m[0]) for m in matches)
                matches = [m for m in matches if _common_prefix(modname, m[0]) == best]
            return matches

    return NearestPythonDomain


def _expand(app: Any, docname: str, source: list[str]) -> None:
    out: list[str] = []
    for line in source[0].splitlines():
        if line.startswith(API):
            out += api_page(line[len(API):].strip())
        elif line.strip() == KINDS:
            out += kinds_page()
        else:
            out.append(line)
    source[0] = "\n".join(out) + "\n"


def setup(app: Any) -> dict[str, Any]:
    app.connect("source-read", _expand)
    app.connect("autodoc-process-docstring", _process_docstring)
    app.add_domain(_nearest_domain(), override=True)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
