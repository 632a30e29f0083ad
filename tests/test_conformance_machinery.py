"""The suite's own machinery: finite differences, tolerances, statuses, CLI, pytest plugin, the adapter protocol."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import math

import numpy as np
import pytest
import torch

import flowspec.conformance as flowspec_conformance
from flowspec import FlowSpec
from flowspec.accelerated.adapter import AcceleratedAdapter
from flowspec.cli import main
from flowspec.conformance import (PROPERTIES, Inconclusive, NotSupported, Property, TorchFlowAdapter, load_families,
                                  run, run_one)
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


# ----------------------------------------------------------------------------- the adapter protocol

class _Scale(torch.nn.Module):
    """A minimal torch flow outside flowspec.accelerated: z = x·exp(s), log|det| = D·s."""

    def __init__(self, s: float = 0.3):
        super().__init__()
        self.s = torch.nn.Parameter(torch.tensor(s, dtype=torch.float64))
        self.register_buffer("calls", torch.tensor(0.0, dtype=torch.float64))

    def forward(self, x, context=None):
        self.calls += 1
        return x * torch.exp(self.s), (x.shape[1] * self.s).expand(x.shape[0])

    def inverse(self, z, context=None):
        return z * torch.exp(-self.s)

    def inverse_and_logdet(self, z, context=None):
        return self.inverse(z), (-z.shape[1] * self.s).expand(z.shape[0])

    def spec_parameters(self):
        return {"s": self.s}


class _Bare(flowspec_conformance.Adapter):
    name = "bare"

    def capabilities(self):
        return flowspec_conformance.Capabilities(kinds=frozenset({"logit"}))

    def forward(self, flow, x, context=None, *, raw=False, grad=False):
        return x, np.zeros(len(x))


def _torch_adapter(**kwargs) -> TorchFlowAdapter:
    return TorchFlowAdapter(name="scale", kinds={"elementwise_affine"}, builder=lambda spec: _Scale(), **kwargs)


@pytest.mark.parametrize("call, requirement", [
    (lambda a: a.set_training(None, True), "train_eval"),
    (lambda a: a.inverse_with_logdet(None, np.zeros((1, 2))), "inverse_logdet"),
    (lambda a: a.inverse_vjp(None, np.zeros((1, 2)), np.zeros((1, 2))), "inverse_grad"),
    (lambda a: a.parameters(None), "parameters"),
    (lambda a: a.set_parameters(None, {}), "parameters"),
    (lambda a: a.save_state(None), "state"),
    (lambda a: a.load_state(None, b""), "state"),
    (lambda a: a.convert(None, "float32"), "convert"),
    (lambda a: a.fresh("logit", {}, 0, "float64", "cpu"), "fresh"),
    (lambda a: a.reseed(0), "reseed"),
])
def test_base_adapter_methods_are_not_supported(call, requirement: str) -> None:
    with pytest.raises(NotSupported, match=requirement):
        call(_Bare())


def test_native_direction_is_declared_and_checked() -> None:
    assert _Bare().capabilities().native_direction == "forward"
    assert _torch_adapter(native_direction="both").capabilities().native_direction == "both"
    with pytest.raises(ValueError, match="native_direction"):
        flowspec_conformance.Capabilities(kinds=frozenset(), native_direction="sideways")


def test_a_property_with_a_missing_requirement_is_not_supported() -> None:
    from flowspec.accelerated import from_spec

    without_fresh = TorchFlowAdapter(name="no fresh", kinds={"actnorm"}, builder=from_spec)
    result = run_one(without_fresh, PROPERTIES["data_init_from_fresh"], "actnorm", "float64", "cpu")
    assert result.status == "not_supported" and "fresh" in result.message
    assert run_one(AcceleratedAdapter(), PROPERTIES["data_init_from_fresh"], "actnorm", "float64", "cpu").status \
        == "passed"


def test_torch_adapter_declares_what_a_module_supports() -> None:
    hooks = _torch_adapter().capabilities().hooks
    assert {"grad", "inverse", "inverse_grad", "train_eval", "state", "convert", "parameters", "reseed"} <= hooks
    assert not {"fresh", "inverse_logdet"} & hooks
    with pytest.raises(NotSupported, match="fresh"):
        _torch_adapter().fresh("elementwise_affine", {}, 0, "float64", "cpu")
    with pytest.raises(NotSupported, match="inverse_logdet"):
        _torch_adapter().inverse_with_logdet(_Scale(), np.ones((1, 2)))
    full = _torch_adapter(fresh=lambda kind, config, seed: _Scale(0.0), hooks={"inverse_logdet"})
    assert {"fresh", "inverse_logdet"} <= full.capabilities().hooks
    assert full.fresh("elementwise_affine", {}, 0, "float32", "cpu").s.item() == 0.0


def test_torch_adapter_modes_state_conversion_and_parameters() -> None:
    adapter = _torch_adapter(hooks={"inverse_logdet"})
    flow, x = _Scale(), rng("protocol-x").standard_normal((3, 2))
    adapter.set_training(flow, False)
    assert not flow.training
    adapter.set_training(flow, True)
    assert flow.training
    z, logdet = adapter.forward(flow, x, grad=True)
    np.testing.assert_allclose(z, x * math.exp(0.3))
    np.testing.assert_allclose(logdet, [0.6] * 3)
    x_back, inverse_logdet = adapter.inverse_with_logdet(flow, z)
    np.testing.assert_allclose(x_back, x)
    np.testing.assert_allclose(inverse_logdet, [-0.6] * 3)

    state = adapter.save_state(flow)
    other = _Scale(-1.0)
    adapter.load_state(other, state)
    assert other.s.item() == 0.3 and other.calls.item() == flow.calls.item()

    tensor = flow.s
    params = adapter.parameters(flow)
    adapter.set_parameters(flow, {"s": np.array(0.5)})
    assert flow.s is tensor and flow.s.item() == 0.5 and params["s"] == 0.3  # in place; the read was a copy
    with pytest.raises(KeyError, match="no parameters"):
        adapter.set_parameters(flow, {"t": np.array(1.0)})
    with pytest.raises(ValueError, match="shape"):
        adapter.set_parameters(flow, {"s": np.zeros(2)})

    converted = adapter.convert(flow, "float32")
    assert converted.s.dtype == torch.float32
    assert adapter.forward(converted, x)[0].dtype == np.float64  # arrays out are always float64


def test_torch_adapter_gradients_through_the_inverse() -> None:
    adapter, flow = _torch_adapter(), _Scale()
    z, w = rng("protocol-z").standard_normal((2, 3)), rng("protocol-w").standard_normal((2, 3))
    grads, g_z = adapter.inverse_vjp(flow, z, w)
    np.testing.assert_allclose(g_z, w * math.exp(-0.3))
    np.testing.assert_allclose(grads["s"], -np.sum(w * z) * math.exp(-0.3))


def test_torch_adapter_reseed_repeats_the_generator() -> None:
    adapter = _torch_adapter()
    adapter.reseed(7)
    first = torch.rand(3)
    adapter.reseed(7)
    assert torch.equal(first, torch.rand(3))


def test_stochastic_log_dets_are_recognised_by_what_the_spec_declares() -> None:
    from flowspec import reference
    from flowspec.conformance.state import stochastic_logdet
    from flowspec.reference.sequential import sequential_spec

    config = {"shape": [2], "hidden": [3], "coeff": 0.5}
    exact = reference.init_spec("residual_mlp", {**config, "logdet": "exact"}, rng("stochastic-exact"))
    roulette = reference.init_spec("residual_mlp", config, rng("stochastic-roulette"))  # the default estimator
    affine = reference.init_spec("elementwise_affine", {"shape": [2]}, rng("stochastic-affine"))
    assert not stochastic_logdet(exact) and not stochastic_logdet(affine)
    assert stochastic_logdet(roulette) and stochastic_logdet(sequential_spec([affine, roulette]))
