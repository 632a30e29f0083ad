"""``flowspec kinds`` and ``flowspec properties`` (conformance/catalogue.py), and the pytest plugin's
selection options (the CLI's: kinds, properties, dtypes, devices)."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from flowspec import cli, registry
from flowspec.accelerated import MODULES, conformance_adapter
from flowspec.accelerated.models import BUILDERS, describe
from flowspec.conformance import catalogue, load_families, pytest_plugin
from flowspec.conformance.property import PROPERTIES
from flowspec.conformance.strategies import has_specs


def _main(argv: list[str]) -> int:
    """``flowspec.cli.main``, whose EXTENSIONS add the catalogue's subcommands."""
    return cli.main(argv)


def _json(capsys, argv: list[str]) -> list[dict]:
    assert _main(argv) == 0
    return json.loads(capsys.readouterr().out)


def _usage_error(capsys, argv: list[str], *needles: str) -> None:
    assert _main(argv) == catalogue.EXIT_USAGE
    captured = capsys.readouterr()
    line = captured.err.strip()
    assert not captured.out and len(line.splitlines()) == 1 and "Traceback" not in line, captured.err
    for needle in needles:
        assert needle in line, line


def test_kinds_lists_every_kind_with_its_family_class_context_and_builders(capsys) -> None:
    records = {r["name"]: r for r in _json(capsys, ["kinds", "--json"])}
    assert list(records) == registry.names()
    for name, record in records.items():
        kind = registry.get(name)
        assert record["family"] == kind.family and record["summary"] == kind.summary, name
        assert record["conditional"] == (kind.context_shape is not None), name
        cls = MODULES.get(name)
        assert record["accelerated"] == (None if cls is None else f"{cls.__module__}.{cls.__qualname__}"), name
        assert record["builders"] == [b for b in BUILDERS if name in describe(b)["kinds"]], name
    assert records["planar"]["accelerated"] == "flowspec.accelerated.planar.Planar"
    assert records["affine_coupling"]["conditional"] and not records["planar"]["conditional"]
    assert records["affine_coupling"]["builders"] == ["realnvp", "glow"]


def test_kinds_prints_a_table_and_selects_families(capsys) -> None:
    assert _main(["kinds", "--family", "coupling", "planar"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["kind", "family", "conditional"]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    expected = [n for n in registry.names() if registry.get(n).family in ("coupling", "planar")]
    assert list(rows) == expected
    assert rows["planar"][1:5] == ["planar", "no", "planar.Planar", "planar"]
    assert rows["affine_coupling"][2] == "yes"
    _usage_error(capsys, ["kinds", "--family", "coupling", "no_such_family"], "unknown families ['no_such_family']",
                 "coupling")


def test_properties_lists_what_each_checks_and_its_kinds(capsys) -> None:
    load_families()
    records = {r["name"]: r for r in _json(capsys, ["properties", "--json"])}
    assert set(records) == set(PROPERTIES)
    with_specs = [k for k in registry.names() if has_specs(k)]
    for name, record in records.items():
        prop = PROPERTIES[name]
        assert record["checks"] == " ".join(prop.description.split("\n\n")[0].split()) and record["checks"], name
        assert record["kinds"] == [k for k in with_specs if prop.applies(k)], name
    assert "spline" in records["spline_monotone"]["kinds"] and "planar" not in records["spline_monotone"]["kinds"]


def test_properties_of_some_kinds(capsys) -> None:
    records = _json(capsys, ["properties", "--json", "--kinds", "planar"])
    assert [r["name"] for r in records] == [n for n, p in PROPERTIES.items() if p.applies("planar")]
    assert all(r["kinds"] == ["planar"] for r in records)
    assert _main(["properties", "--kinds", "planar"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["property", "checks", "kinds"] and len(table) == len(records) + 2
    _usage_error(capsys, ["properties", "--kinds", "planar", "plannar"], "unknown kinds ['plannar']", "planar")


PLUGIN = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--pyargs", "flowspec.conformance",
          "--flowspec-impl=flowspec.accelerated", "--flowspec-kinds=logit", "--flowspec-dtypes=float64"]


def test_the_pytest_plugin_takes_properties_and_devices() -> None:
    run = subprocess.run(PLUGIN + ["--flowspec-properties=forward_matches_reference,inverse_round_trip",
                                   "--flowspec-devices=cpu"], capture_output=True, text=True)
    assert run.returncode == 0 and "2 passed" in run.stdout, run.stdout[-2000:]


class _Options:
    """The plugin's options as pytest's config hands them out."""

    def __init__(self, **options: str | None):
        self.options = {"--flowspec-kinds": "logit", "--flowspec-properties": None, "--flowspec-dtypes": "float64",
                        "--flowspec-devices": None, **{f"--flowspec-{k}": v for k, v in options.items()}}

    def getoption(self, name: str) -> str | None:
        return self.options[name]


def test_the_pytest_plugins_selection_is_the_clis() -> None:
    adapter = conformance_adapter
    cases = pytest_plugin.selection(_Options(properties="inverse_round_trip", dtypes="float64,float32"), adapter)
    assert [(k, p.name, d, dev) for _, k, p, d, dev in cases] == [
        ("logit", "inverse_round_trip", "float64", "cpu"), ("logit", "inverse_round_trip", "float32", "cpu")]
    everything = pytest_plugin.selection(_Options(), adapter)
    assert {p.name for _, _, p, _, _ in everything} == {n for n, p in PROPERTIES.items() if p.applies("logit")}
    for options, needle in (({"properties": "inverse_round_trip,no_such_property"}, "no_such_property"),
                            ({"kinds": "logit,no_such_kind"}, "unknown kinds ['no_such_kind']"),
                            ({"devices": "tpu"}, "--flowspec-devices: tpu not available"),
                            ({"dtypes": "float16"}, "unknown dtypes ['float16']"),
                            ({"properties": "spline_monotone"}, "matches no property")):
        with pytest.raises(pytest.UsageError, match=re.escape(needle)):
            pytest_plugin.selection(_Options(**options), adapter)
