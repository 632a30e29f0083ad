"""``benchmarks/peers_residual.py``: flowspec's residual flow against normflows' at tiny sizes.

What must hold for the comparison to mean anything: after the weight copy both models compute the
same z and, at the same probe and the same draw of N, the same evaluation log-det and the same
training gradients; both sides run the estimator settings the module docstring states; the command
prints and writes every row; without normflows it says how to install it and exits 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys

import numpy as np
import pytest
import torch

from flowspec.bench import load_benchmark

pr = load_benchmark("peers_residual")

try:
    NF = pr.import_normflows()
except pr.NormflowsUnavailable as exc:
    pytest.skip(f"normflows is needed for the residual peer comparison: {exc}", allow_module_level=True)

TINY = {
    "mlp": pr.Case("mlp", (6,), (12, 12), "lipswish", 0.98, n_blocks=2, train_batch=8, eval_batch=8),
    "conv": pr.Case("conv", (2, 5, 5), (8, 8), "lipswish", 0.98, kernels=(3, 1, 3), n_blocks=2,
                    train_batch=4, eval_batch=4),
    "compare": pr.Case("compare", (4, 4, 4), (8, 8), "elu", 0.97, kernels=(3, 1, 3), n_blocks=2,
                       train_batch=4, eval_batch=6),
}
BATCH = 5


def _away_from_identity(model: torch.nn.Module) -> None:
    """Weights of scale 2/√fan_in (the constraint binds), biases and β of order one, so that g is far
    from zero: normflows' own last layers start at 1/1000 of their scale, where g ≈ 0 would hide a
    wrong copy. Then normflows' power iteration is run to convergence, so that its σ̂ is ‖W‖₂."""
    for block in pr.normflows_blocks(model):
        for act, linear in pr.normflows_layers(NF, block):
            with torch.no_grad():
                linear.weight.normal_().mul_(2.0 / linear.weight[0].numel() ** 0.5)
                linear.bias.normal_().mul_(0.3)
                if hasattr(act, "beta"):
                    act.beta.normal_()
    NF.utils.update_lipschitz(model, 3000)


def _pair(case: pr.Case, draw: str = "sample") -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    theirs = pr.build_normflows(NF, case, seed=0, device="cpu")
    _away_from_identity(theirs)
    ours = pr.build_flowspec(case, draw, "cpu")
    pr.copy_weights(NF, theirs, ours)
    return theirs, ours


def _normflows_noise(case: pr.Case, seed: int) -> list[tuple[int, torch.Tensor]]:
    """The (N, probe) each normflows block draws in one ``log_prob`` after seeding both generators
    with ``seed``: numpy's geometric N and torch's Gaussian probe, block after block."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    return [(int(np.random.geometric(pr.GEOMETRIC_Q, 1)[0]), torch.randn(BATCH, *case.shape))
            for _ in range(case.n_blocks)]


@pytest.mark.parametrize("name", list(TINY))
def test_copied_weights_give_the_same_z_and_evaluation_log_det(name: str) -> None:
    """Eval mode, 20 exact terms + the tail at normflows' own N and probe: z and every block's
    log-det agree to float32 rounding, with the constraint binding (σ̂ > coeff) in every layer."""
    case = TINY[name]
    theirs, ours = _pair(case)
    scales = [float(lin.scale) for block in pr.normflows_blocks(theirs) for _, lin in pr.normflows_layers(NF, block)]
    assert min(scales) > case.coeff
    x = pr.batch(case, BATCH, seed=1, device="cpu")
    theirs.eval()
    ours.eval()
    noise = _normflows_noise(case, seed=5)
    torch.manual_seed(5)
    np.random.seed(5)
    z, theirs_out = x.detach(), []  # a view: normflows sets requires_grad on its input in place
    for flow in reversed(list(theirs.flows)):  # first: flowspec's own estimates draw from torch's generator
        z, logdet = flow.inverse(z)
        theirs_out.append((z.detach(), logdet.detach()))
    h = x
    for block, (n, v), (z, logdet) in zip(ours.flows, noise, theirs_out):
        ours_logdet = block.logdet_estimate(h, v, torch.full((BATCH,), n))
        with torch.no_grad():
            h = h + block._g(h, block._params())
        assert float((h - x).abs().max()) > 0.1  # g is far from zero
        torch.testing.assert_close(h, z, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours_logdet, logdet, rtol=1e-5, atol=1e-6)


def test_copied_weights_give_the_same_exact_log_density_in_two_dimensions() -> None:
    """At D = 2 normflows' evaluation computes the exact log-det (its brute-force 2 × 2 Jacobian);
    flowspec's exact estimator (slogdet of the Jacobian) must give the same log-density."""
    case = pr.Case("mlp", (2,), (8, 8), "lipswish", 0.98, n_blocks=2)
    theirs, ours = _pair(case)
    for block in ours.flows:
        block.set_logdet(estimator="exact", n_exact_terms=2)
    x = pr.batch(case, BATCH, seed=1, device="cpu")
    theirs.eval()
    ours.eval()
    from flowspec.accelerated import FlowDistribution

    with torch.no_grad():
        expected = theirs.log_prob(x).detach()
        torch.testing.assert_close(FlowDistribution(ours).log_prob(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(TINY))
def test_copied_weights_give_the_same_training_gradients(name: str) -> None:
    """Training mode (2 exact terms + roulette, Neumann gradient, backward-in-forward) at the same N
    and probe: the gradients of −mean log p of every weight, bias and β agree to float32 rounding."""
    case = dataclasses.replace(TINY[name], n_blocks=1)
    theirs, ours = _pair(case, draw="batch")
    x = pr.batch(case, BATCH, seed=1, device="cpu")
    theirs.train()
    ours.train()
    [(n, v)] = _normflows_noise(case, seed=7)
    torch.manual_seed(7)
    np.random.seed(7)
    (-theirs.log_prob(x).mean()).backward()
    block = ours.flows[0]
    with torch.no_grad():
        z = x + block._g(x, block._params())
    grads, _ = block.logdet_estimate_vjp(x, v, torch.full((BATCH,), n), z / BATCH, torch.full((BATCH,), -1.0 / BATCH))
    for l, (act, linear) in enumerate(pr.normflows_layers(NF, pr.normflows_blocks(theirs)[0])):
        torch.testing.assert_close(grads[f"weight{l}"], linear.weight.grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(grads[f"bias{l}"], linear.bias.grad, rtol=1e-4, atol=1e-6)
        if hasattr(act, "beta"):
            torch.testing.assert_close(grads[f"beta{l}"], act.beta.grad, rtol=1e-4, atol=1e-6)


def test_a_wrong_layout_is_refused() -> None:
    case = TINY["mlp"]
    theirs = pr.build_normflows(NF, case, seed=0, device="cpu")
    ours = pr.build_flowspec(dataclasses.replace(case, hidden=(12, 12, 12)), "sample", "cpu")
    with pytest.raises(ValueError, match="layers"):
        pr.copy_weights(NF, theirs, ours)


@pytest.mark.parametrize("name", list(TINY))
def test_estimator_settings_of_both_sides(name: str) -> None:
    """What the docstring states: normflows with 2 exact terms, one geometric(0.5) draw per batch,
    Neumann gradient and backward-in-forward, the official 1e-3 stopping rule; flowspec the same
    estimator with 20 exact terms in evaluation, the draw mode as built."""
    case = TINY[name]
    theirs = pr.build_normflows(NF, case, seed=0, device="cpu")
    for settings in pr.normflows_settings(theirs):
        assert settings == {"n_exact_terms": 2, "n_samples": 1, "n_dist": "geometric",
                            "geom_p": pytest.approx(0.5), "n_power_series": None, "neumann_grad": True,
                            "grad_in_forward": True, "exact_trace": False, "brute_force": False}
    for block in pr.normflows_blocks(theirs):
        for act, linear in pr.normflows_layers(NF, block):
            assert (linear.n_iterations, linear.atol, linear.rtol) == (None, 1e-3, 1e-3)
            assert isinstance(act, NF.nets.lipschitz.Swish if case.activation == "lipswish" else torch.nn.ELU)
    for draw in pr.DRAWS:
        ours = pr.build_flowspec(case, draw, "cpu")
        for block in ours.flows:
            config = block.config()
            assert {k: config[k] for k in ("logdet", "n_exact_terms", "eval_exact_terms", "n_samples", "draw", "dist",
                                           "dist_param", "probe", "neumann_grad", "grad_in_forward", "activation",
                                           "coeff")} == {
                "logdet": "roulette", "n_exact_terms": 2, "eval_exact_terms": 20, "n_samples": 1, "draw": draw,
                "dist": "geometric", "dist_param": 0.5, "probe": "gaussian", "neumann_grad": True,
                "grad_in_forward": True, "activation": case.activation, "coeff": case.coeff}
            block.eval()
            assert block._exact_terms() == 20
            block.train()
            assert block._exact_terms() == 2


def _args(tmp_path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    pr.add_arguments(parser)
    return parser.parse_args(["--rounds", "10", "--warmup", "1", "--min-time", "0.0001", "--memory-repeats", "1",
                              "--variance-repeats", "3", "--json", str(tmp_path / "out.json"), *extra])


def test_command_prints_and_writes_every_row(tmp_path, monkeypatch, capsys) -> None:
    for name, case in TINY.items():
        monkeypatch.setitem(pr.CASES, name, case)
    assert pr.run_command(_args(tmp_path, "--cases", "compare")) == 0
    out = capsys.readouterr().out
    data = json.loads((tmp_path / "out.json").read_text())
    assert set(data) == {"header", "totals", "rows", "variance", "better_draw", "profiles"}
    assert data["better_draw"]["compare"] in (*pr.DRAWS, None)
    assert {"cpu", "threads", "torch", "normflows", "rounds", "warmup_steps", "cases", "batches"} <= set(data["header"])
    assert data["header"]["threads"] == 1
    expected = {("compare", p, d) for p in ("train", "eval", "train memory", "eval memory")
                for d in pr.DRAWS}
    assert {(r["case"], r["phase"], r["draw"]) for r in data["rows"]} == expected
    for row in data["rows"]:
        assert set(row) == {"case", "phase", "draw", "unit", "flowspec", "normflows", "ratio", "target", "verdict"}
        assert row["verdict"] in ("met", "missed", "unclear")
        assert row["ratio"]["low"] <= row["ratio"]["median"] <= row["ratio"]["high"]
        assert row["flowspec"] > 0 and row["normflows"] > 0
    assert sum(data["totals"].values()) == len(expected)
    assert {(v["case"], v["draw"]) for v in data["variance"]} == {("compare", d) for d in pr.DRAWS}
    for v in data["variance"]:
        assert v["variance_time"] == pytest.approx(v["variance"] * v["seconds"])
    for row in data["rows"]:
        profiled = f"{row['case']} {row['phase']} flowspec draw={row['draw']}" in data["profiles"]
        assert profiled == (row["verdict"] == "missed" and row["unit"] == "ms")
    assert "better: " in out and "correlated" in out and "verdict" in out


def test_the_better_draw_mode_is_named_only_beyond_the_variances_errors() -> None:
    def result(draw: str, variance: float) -> pr.DrawVariance:
        return pr.DrawVariance("mlp", draw, 101, variance, 1.0)  # relative error √(2/100) ≈ 14 %

    assert pr.better_draw([result("sample", 1.0), result("batch", 2.0)]) == "sample"
    assert pr.better_draw([result("sample", 1.0), result("batch", 1.3)]) is None
    assert pr.better_draw([result("sample", 1.0)]) == "sample"


def test_rounds_below_ten_are_refused(tmp_path, capsys) -> None:
    args = _args(tmp_path)
    args.rounds = 9
    assert pr.run_command(args) == 2
    assert "--rounds must be ≥ 10" in capsys.readouterr().err


def test_without_normflows_the_command_exits_2_naming_the_extra(tmp_path, monkeypatch, capsys) -> None:
    for name in [m for m in sys.modules if m == "normflows" or m.startswith("normflows.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "normflows", None)  # import normflows raises ModuleNotFoundError
    assert pr.run_command(_args(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "normflows is not installed" in err and "pip install 'flowspec[peers]'" in err
    assert not (tmp_path / "out.json").exists()


def test_a_normflows_that_fails_to_import_exits_2(tmp_path, monkeypatch, capsys) -> None:
    real = importlib.import_module

    def broken(name: str, *args, **kwargs):
        if name.startswith("normflows"):
            raise RuntimeError("incompatible torch")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(pr.importlib, "import_module", broken)
    assert pr.run_command(_args(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "importing normflows failed: RuntimeError: incompatible torch" in err and "flowspec[peers]" in err
