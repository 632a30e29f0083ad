"""The suite's own machinery: finite differences, tolerances, statuses, CLI, pytest plugin."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from flowspec import FlowSpec
from flowspec.accelerated.adapter import AcceleratedAdapter
from flowspec.cli import main
from flowspec.conformance import PROPERTIES, Inconclusive, Property, load_families, run, run_one
from flowspec.conformance import finite_diff
from flowspec.conformance.seeding import rng, seed_for
from flowspec.conformance.tolerances import TABLE, assert_close, relative_error, tolerance
from flowspec.registry import REAL, UNIT_INTERVAL

load_families()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_richardson_jacobian_is_accurate_to_the_table(dtype: str) -> None:
    a = rng("fd-a").standard_normal((3, 3))
    cast = np.float64 if dtype == "float64" else np.float32

    def f(x: np.ndarray) -> np.ndarray:  # evaluated in the dtype under test, as an implementation would
        xc = x.astype(cast)
        return (np.sin(xc) @ a.T.astype(cast) + xc ** 3).astype(np.float64)

    x = rng("fd-x").standard_normal((2, 3))
    exact = np.stack([a * np.cos(xi)[None, :] + np.diag(3 * xi ** 2) for xi in x.astype(cast).astype(np.float64)])
    approx = finite_diff.jacobian(f, x, dtype, REAL)
    assert_close(approx, exact, "fd_jacobian", dtype, 3)


def test_finite_difference_steps_stay_inside_the_domain() -> None:
    seen = []

    def f(x: np.ndarray) -> np.ndarray:
        seen.append(x.copy())
        return np.log(x) - np.log1p(-x)

    x = np.array([[0.001, 0.999]])
    jac = finite_diff.jacobian(f, x, "float64", UNIT_INTERVAL)
    assert all(((p > 0) & (p < 1)).all() for p in seen)
    assert_close(np.diag(jac[0]), 1 / (x[0] * (1 - x[0])), "fd_jacobian", "float64", x.shape[1])


def test_tolerances_grow_with_size_and_epsilon() -> None:
    for quantity, rule in TABLE.items():
        assert rule.why, f"{quantity} has no documented reason"
        assert tolerance(quantity, "float32", 10) > tolerance(quantity, "float64", 10)
        assert tolerance(quantity, "float64", 100) >= tolerance(quantity, "float64", 10)
    assert relative_error(np.ones(2), np.ones(3)) == float("inf")
    assert relative_error(np.array([np.nan]), np.zeros(1)) == float("inf")


def test_seeds_are_stable_and_distinct() -> None:
    assert seed_for("a", 1) == seed_for("a", 1) != seed_for("a", 2)


def test_missing_kind_and_dtype_are_not_supported() -> None:
    adapter = AcceleratedAdapter()
    adapter.capabilities = lambda: type(AcceleratedAdapter().capabilities())(kinds=frozenset({"logit"}))  # type: ignore[method-assign]
    prop = PROPERTIES["forward_matches_reference"]
    assert run_one(adapter, prop, "sigmoid", "float64", "cpu").status == "not_supported"
    assert run_one(adapter, prop, "logit", "float16", "cpu").status == "not_supported"
    assert run_one(adapter, prop, "logit", "float64", "cuda-absent").status == "skipped"


def test_black_box_adapter_reports_white_box_properties_not_supported() -> None:
    results = run(AcceleratedAdapter(white_box=False), kinds=["logit"], dtypes=["float64"])
    status = {r.property: r.status for r in results}
    assert status["forward_matches_reference"] == "not_supported"
    assert status["grad_matches_reference"] == "not_supported"
    assert status["logdet_matches_fd_jacobian"] == "passed"
    assert status["inverse_round_trip"] == "passed"


def _property(check) -> Property:
    return Property("test_only", check, frozenset(), lambda kind: True, "")


def test_inconclusive_is_never_passed() -> None:
    def check(ctx):
        raise Inconclusive("variance is infinite")

    result = run_one(AcceleratedAdapter(), _property(check), "logit", "float64", "cpu")
    assert result.status == "inconclusive" and "infinite" in result.message


def test_an_implementation_crash_is_a_failure() -> None:
    def check(ctx):
        raise RuntimeError("kernel exploded")

    result = run_one(AcceleratedAdapter(), _property(check), "logit", "float64", "cpu")
    assert result.status == "failed" and "kernel exploded" in result.message


def test_cli_prints_table_writes_json_and_sets_exit_code(tmp_path, monkeypatch, capsys) -> None:
    report = tmp_path / "report.json"
    assert main(["conformance", "--kinds", "logit", "--quiet", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "logit" in out and "forward_matches_reference" in out and "failed" in out
    records = json.loads(report.read_text())["results"]
    assert records and all({"kind", "property", "status", "max_error"} <= set(r) for r in records)
    assert {r["status"] for r in records} == {"passed"}

    (tmp_path / "sign_broken.py").write_text(textwrap.dedent("""
        from flowspec.accelerated.adapter import AcceleratedAdapter
        from flowspec.accelerated.elementwise import ElementwiseAffine

        class Broken(ElementwiseAffine):
            def _forward(self, x, context):
                z, logdet = super()._forward(x, context)
                return z, 2 * logdet

        ADAPTER = AcceleratedAdapter({"elementwise_affine": Broken})
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    code = main(["conformance", "--impl", "sign_broken:ADAPTER", "--kinds", "elementwise_affine",
                 "--properties", "logdet_matches_reference", "--quiet"])
    assert code == 1
    assert "FAIL" in capsys.readouterr().out


def test_pytest_plugin_is_inert_without_its_option_and_runs_with_it() -> None:
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--pyargs", "flowspec.conformance"]
    inert = subprocess.run(base, capture_output=True, text=True)
    assert inert.returncode == 0 and "1 skipped" in inert.stdout
    active = subprocess.run(base + ["--flowspec-impl=flowspec.accelerated", "--flowspec-kinds=logit",
                                    "--flowspec-dtypes=float64"], capture_output=True, text=True)
    assert active.returncode == 0, active.stdout[-2000:]
    assert f"{sum(1 for p in PROPERTIES.values() if p.applies('logit'))} passed" in active.stdout


def test_spec_strategies_draw_valid_specs() -> None:
    from hypothesis import given, settings

    from flowspec.conformance import strategies

    @settings(max_examples=5, derandomize=True, deadline=None)
    @given(strategies.specs("sequential"))
    def check(spec: FlowSpec) -> None:
        assert spec.kind == "sequential" and len(spec.params) >= 1

    check()
