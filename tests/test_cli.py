"""The conformance command's exit codes and set-up errors (README, "Exit codes"), and its JSON header."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from flowspec.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from flowspec.conformance import load_families
from flowspec.conformance.property import CheckContext, PropertyFailure
from flowspec.conformance.report import SCHEMA_VERSION
from flowspec.conformance.seeding import base_seed

ADAPTERS = textwrap.dedent("""
    from flowspec.accelerated.adapter import AcceleratedAdapter

    NOT_AN_ADAPTER = object()

    def failing_factory():
        raise RuntimeError("the library's GPU context could not be created")

    class Float64Only(AcceleratedAdapter):
        def capabilities(self):
            import dataclasses
            return dataclasses.replace(super().capabilities(), dtypes=frozenset({"float64"}))

    FLOAT64_ONLY = Float64Only()

    class WithoutLogit(AcceleratedAdapter):
        def capabilities(self):
            import dataclasses
            caps = super().capabilities()
            return dataclasses.replace(caps, kinds=frozenset(caps.kinds - {"logit"}))

    WITHOUT_LOGIT = WithoutLogit()
""")


@pytest.fixture
def adapters(tmp_path, monkeypatch):
    (tmp_path / "cli_adapters.py").write_text(ADAPTERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "cli_adapters"


def _usage_error(capsys, argv: list[str], *needles: str) -> str:
    code = main(["conformance", "--quiet", *argv])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE, err
    line = err.strip()
    assert "Traceback" not in err and len(line.splitlines()) == 1, err
    for needle in needles:
        assert needle in line, line
    return line


def test_unknown_kind_and_property_are_usage_errors(capsys) -> None:
    _usage_error(capsys, ["--kinds", "logit", "no_such_kind"], "unknown kinds ['no_such_kind']", "logit")
    _usage_error(capsys, ["--kinds", "logit", "--properties", "no_such_property"], "no_such_property")


def test_a_named_kind_the_adapter_lacks_is_a_usage_error(adapters, capsys) -> None:
    # otherwise every property of the kind is not_supported and the run exits 0
    _usage_error(capsys, ["--impl", "cli_adapters:WITHOUT_LOGIT", "--kinds", "sigmoid", "logit"],
                 "--kinds logit", "not implemented by")


def test_an_empty_selection_is_a_usage_error(capsys) -> None:
    # coupling_jacobian_structure applies to the coupling kinds only
    _usage_error(capsys, ["--kinds", "logit", "--properties", "coupling_jacobian_structure"], "matches no property")


@pytest.mark.parametrize("impl, needle", [
    ("no_such_module_anywhere", "ModuleNotFoundError"),
    ("cli_adapters:MISSING", "MISSING"),
    ("cli_adapters:NOT_AN_ADAPTER", "not a flowspec.conformance.Adapter"),
    ("cli_adapters:failing_factory", "GPU context could not be created"),
])
def test_an_impl_that_cannot_be_used_is_a_usage_error(adapters, capsys, impl: str, needle: str) -> None:
    _usage_error(capsys, ["--impl", impl, "--kinds", "logit"], f"--impl {impl}", needle)


def test_an_absent_device_is_a_usage_error(capsys) -> None:
    _usage_error(capsys, ["--kinds", "logit", "--devices", "tpu"], "--devices tpu", "available: cpu")
    if not torch.cuda.is_available():
        _usage_error(capsys, ["--kinds", "logit", "--devices", "cuda"], "--devices cuda")


def test_an_unwritable_json_path_is_refused_before_the_run(tmp_path, capsys) -> None:
    _usage_error(capsys, ["--kinds", "logit", "--json", str(tmp_path / "missing" / "r.json")], "does not exist")
    _usage_error(capsys, ["--kinds", "logit", "--json", str(tmp_path)], "is a directory")


def test_nothing_checked_is_not_success(adapters, capsys) -> None:
    code = main(["conformance", "--quiet", "--impl", "cli_adapters:FLOAT64_ONLY", "--kinds", "logit",
                 "--properties", "forward_matches_reference", "--dtypes", "float32"])
    assert code == EXIT_USAGE
    assert "nothing was checked" in capsys.readouterr().err


def test_debug_shows_the_traceback() -> None:
    with pytest.raises(Exception, match="unknown kinds"):
        main(["conformance", "--quiet", "--debug", "--kinds", "no_such_kind"])


def test_a_bad_seed_is_a_usage_error() -> None:
    env = {**os.environ, "FLOWSPEC_SEED": "twelve"}
    done = subprocess.run([sys.executable, "-m", "flowspec.cli", "conformance", "--kinds", "logit", "--quiet"],
                          capture_output=True, text=True, env=env)
    assert done.returncode == EXIT_USAGE, done.stderr
    assert "FLOWSPEC_SEED must be an integer, got 'twelve'" in done.stderr and "Traceback" not in done.stderr


def test_exit_codes_of_a_run_and_the_json_header(tmp_path, capsys) -> None:
    path = tmp_path / "report.json"
    code = main(["conformance", "--quiet", "--kinds", "logit", "--properties", "forward_matches_reference",
                 "--json", str(path)])
    assert code == EXIT_OK
    document = json.loads(path.read_text())
    assert document["schema_version"] == SCHEMA_VERSION
    header = document["header"]
    assert header["seed"] == base_seed() and header["profile"] == "ci" and header["devices"] == ["cpu"]
    assert header["versions"]["torch"] == torch.__version__ and header["versions"]["numpy"] == np.__version__
    assert header["implementation"]["module"] == "flowspec" and header["adapter"] == "flowspec.accelerated"
    assert {r["status"] for r in document["results"]} == {"passed"}
    assert EXIT_FAILED == 1  # a failed property: test_conformance_machinery's broken adapter


def test_a_shape_mismatch_is_reported_as_such() -> None:
    load_families()
    ctx = CheckContext(adapter=None, kind="logit", dtype="float64", device="cpu", data=None)
    with pytest.raises(PropertyFailure, match=r"shape mismatch: got \(3, 2\), expected \(3, 4\)"):
        ctx.assert_close(np.zeros((3, 2)), np.zeros((3, 4)), "forward", 4, "z")


HANGING = textwrap.dedent("""
    import os
    import time

    from flowspec.accelerated.adapter import AcceleratedAdapter
    from flowspec.accelerated.elementwise import ElementwiseAffine, Sigmoid

    class Hangs(ElementwiseAffine):
        def _forward(self, x, context):
            time.sleep(3600)  # a kernel that never returns

    class Crashes(Sigmoid):
        def _forward(self, x, context):
            os._exit(3)  # native code that takes the process down

    ADAPTER = AcceleratedAdapter({"elementwise_affine": Hangs, "sigmoid": Crashes})
""")


def test_a_hanging_or_crashing_property_fails_and_the_run_continues(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "hanging_adapter.py").write_text(HANGING)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "report.json"
    code = main(["conformance", "--quiet", "--impl", "hanging_adapter:ADAPTER", "--kinds", "elementwise_affine",
                 "sigmoid", "logit", "--properties", "forward_matches_reference", "--dtypes", "float64",
                 "--timeout", "4", "--json", str(path)])
    assert code == EXIT_FAILED
    status = {r["kind"]: (r["status"], r["message"]) for r in json.loads(path.read_text())["results"]}
    assert status["elementwise_affine"][0] == "failed" and "timed out after 4 s" in status["elementwise_affine"][1]
    assert status["sigmoid"][0] == "failed" and "worker process died (exit code 3)" in status["sigmoid"][1]
    assert status["logit"][0] == "passed"  # a fresh worker checks the next property
