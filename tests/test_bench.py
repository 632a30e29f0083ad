"""``flowspec bench compare``: measurement plumbing, the Table-2 report, the targets and the plot.

The comparison's mechanics are tested with stand-in families (cheap flows whose "log-det" costs a
number of extra passes set by ``configure_logdet``), so that these tests stay fast; the command
itself runs the real residual and QuAR models.
"""
from __future__ import annotations

import math
import pytest
import torch
from torch import Tensor, nn

from flowspec.accelerated import bench
from flowspec.accelerated.base import Flow
from flowspec.accelerated.sequential import Sequential
from flowspec.cli import build_parser


class _StandIn(Flow):
    """z = x·exp(a) + tanh(x W)·0 repeated ``passes`` times: the cost of a log-det estimator, not its value."""

    def __init__(self, shape: tuple[int, ...], passes: int = 1):
        super().__init__()
        self._shape = tuple(shape)
        d = math.prod(shape)
        self.log_scale = nn.Parameter(torch.zeros(self._shape))
        self.weight = nn.Parameter(torch.eye(d))
        self.passes = passes
        self.power_iterations = 0

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self._shape

    def plain(self, x: Tensor) -> Tensor:
        return x * torch.exp(self.log_scale)

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        flat = x.reshape(x.shape[0], -1)
        extra = sum(torch.tanh(flat @ self.weight).sum(1) for _ in range(self.passes))
        return self.plain(x), self.log_scale.sum().expand(x.shape[0]) + 0.0 * extra


def _model(arch: str, shape: tuple[int, ...], *, n_blocks: int, hidden_factor: int, passes: int) -> Flow:
    return Sequential([_StandIn(shape, passes) for _ in range(n_blocks)])


def _configure(model: nn.Module, *, estimator: str, n_exact_terms: int, **kw: object) -> None:
    assert estimator == "roulette" and kw["neumann_grad"] and kw["grad_in_forward"]
    for m in model.modules():
        if isinstance(m, _StandIn):
            m.passes = n_exact_terms + 2  # the mean roulette tail of a geometric(0.5) draw


def _power_iteration(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, _StandIn):
            m.power_iterations += 1


def _plain(model: Flow, x: Tensor) -> Tensor:
    for child in model.flows:
        x = child.plain(x)
    return x


STAND_INS = bench.Families(
    make_residual=lambda arch, shape, *, coeff, **kw: _model(arch, shape, passes=1, **kw),
    configure_logdet=_configure,
    make_quar=lambda arch, shape, *, sigma, norm, **kw: _model(arch, shape, passes=1, **kw),
    residual_plain_forward=_plain,
    quar_plain_forward=_plain,
    power_iteration=_power_iteration,
)

TINY = bench.Settings(n_blocks=2, repeats=2, warmup=1, flat_terms=(2, 20))


def test_time_calls_interleave_warmup_and_repeats_and_take_medians() -> None:
    calls: list[str] = []
    first, second = bench.time_calls([lambda: calls.append("a"), lambda: calls.append("b")], "cpu", repeats=3, warmup=2)
    assert calls == ["a", "b"] * 5 and first >= 0.0 and second >= 0.0


def test_run_case_measures_both_models_on_the_same_data() -> None:
    case = bench.Case("mlp", (16,), 8, 32)
    result = bench.run_case(case, TINY, STAND_INS)
    for model in (result.residual, result.quar):
        for phase in (model.train, model.test):
            assert phase.seconds > 0 and phase.peak_bytes > 0
        assert model.train.saved_bytes > 0
        assert set(model.train_breakdown) == {"forward + log-det", "backward", "optimizer", "Polyak update",
                                              "power iteration"}
        assert set(model.test_breakdown) == {"forward", "log-det"}
    assert set(result.residual_train_peak_by_terms) == {2, 20}
    assert result.quar_fwd_logdet_over_plain > 0


def _measurement(seconds: float, peak: int) -> bench.Measurement:
    return bench.Measurement(seconds=seconds, peak_bytes=peak, saved_bytes=peak // 2)


def _synthetic(test_speedup: float, train_speedup: float, overhead: float, mem_ratio: float,
               flat: float) -> bench.CaseResult:
    breakdown_train = {"forward + log-det": 0.01, "backward": 0.02, "optimizer": 0.001, "Polyak update": 0.001,
                       "power iteration": 0.002}
    breakdown_test = {"forward": 0.01, "log-det": 0.2}
    residual = bench.ModelResult(_measurement(2.0, 1000), _measurement(40.0, 2000), breakdown_train, breakdown_test)
    quar = bench.ModelResult(
        _measurement(2.0 / train_speedup, round(1000 * mem_ratio)), _measurement(40.0 / test_speedup, 1500),
        breakdown_train, breakdown_test,
    )
    peaks = {2: 10_000, 20: round(10_000 * flat)}
    return bench.CaseResult(bench.Case("mlp", (64,), 96, 256), residual, quar, overhead, peaks)


def test_targets_judge_each_threshold_inclusively() -> None:
    met = {t.name: t for t in bench.targets([_synthetic(20.0, 2.0, 1.3, 1.0, 1.05)])}
    assert len(met) == 5 and all(t.met for t in met.values())
    missed = bench.targets([_synthetic(19.9, 1.99, 1.31, 1.01, 1.051)])
    assert not any(t.met for t in missed)
    shrinking = bench.targets([_synthetic(25.0, 3.0, 1.1, 0.6, 0.949)])
    assert [t.met for t in shrinking] == [True, True, True, True, False]
    assert shrinking[0].text == "25.0×" and shrinking[3].text == "0.60×"


def test_report_has_the_shape_of_table_2_with_ratios() -> None:
    text = bench.format_case(_synthetic(20.0, 2.0, 1.2, 0.5, 1.0))
    lines = text.splitlines()
    assert lines[0].startswith("mlp 64 (D = 64): training batch 96, test batch 256")
    train_time = next(line for line in lines if line.strip().startswith("time per batch"))
    assert train_time.split()[-1] == "0.50"  # QuAR/residual
    train_mem = next(line for line in lines if line.startswith("TRAIN"))
    assert "memory (peak)" in train_mem and train_mem.split()[-1] == "0.50"
    assert any(line.startswith("TEST") for line in lines)
    assert "power iteration" in text and "log-det" in text
    summary = bench.format_targets(bench.targets([_synthetic(10.0, 2.0, 1.2, 0.5, 1.0)]))
    assert "[MISSED] QuAR test evaluation ≥ 20× faster" in summary and "mlp 64: 10.0× (missed)" in summary


def test_compare_command_prints_the_table_and_writes_a_readable_plot(tmp_path, monkeypatch, capsys) -> None:
    import matplotlib.image

    monkeypatch.setattr(bench, "DEFAULT_CASES", (bench.Case("mlp", (8,), 4, 8), bench.Case("conv", (2, 4, 4), 2, 4)))
    monkeypatch.setattr(bench, "QUICK_SWEEP", {"mlp": ((8,), (16,)), "conv": ((2, 4, 4), (2, 6, 6))})
    monkeypatch.setattr(bench, "BASE_SETTINGS", TINY)
    path = tmp_path / "compare.png"
    args = build_parser().parse_args(["bench", "compare", "--quick", "--device", "cpu", "--plot", str(path)])
    assert args.func is bench.run_compare_command
    assert bench.run_compare_command(args, STAND_INS) == 0
    out = capsys.readouterr().out
    assert "mlp 8 (D = 8)" in out and "conv 2×4×4 (D = 32)" in out and "targets:" in out
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 500 and image.shape[1] > 1000


def test_bench_needs_a_subcommand_and_rejects_a_missing_gpu() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench"])
    if not torch.cuda.is_available():
        args = build_parser().parse_args(["bench", "compare", "--device", "cuda"])
        with pytest.raises(Exception, match="no CUDA device"):
            bench.run_compare_command(args, STAND_INS)


def _check_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "check_regression.py"
    spec = importlib.util.spec_from_file_location("check_regression", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_check_reads_failures_that_asv_only_prints(tmp_path) -> None:
    import json

    check = _check_script()
    columns = ["result", "params", "version", "started_at", "duration"]
    results = {
        "flows.A.time_ok": [[0.01, 0.02], [["1", "2"]], "v", 0, 0.1],
        "flows.A.time_raised": [None, [["1", "2"]], "v", 0, 0.1],
        "flows.A.time_one_case_raised": [[0.01, None], [["1", "2"]], "v", 0, 0.1],
        "flows.A.time_skipped": [[float("nan"), 0.02], [["1", "2"]], "v", 0, 0.1],
        "flows.track_scalar": [123, [], "v", 0, 0.1],
    }
    path = tmp_path / "result.json"
    path.write_text(json.dumps({"result_columns": columns, "results": results}))
    discovered = {name: {} for name in [*results, "flows.A.time_never_ran"]}
    assert check._problems(path, discovered) == [
        "flows.A.time_never_ran: no result recorded",
        "flows.A.time_one_case_raised: failed for parameter combinations [1]",
        "flows.A.time_raised: failed",
    ]
    assert check._skipped(path) == ["flows.A.time_skipped"]


def test_build_model_refuses_a_family_model_with_its_own_logit() -> None:
    from dataclasses import replace

    from flowspec import ConfigError
    from flowspec.accelerated.elementwise import Logit

    def with_logit(arch: str, shape: tuple[int, ...], **kw: object) -> Flow:
        return Sequential([Logit(shape), _StandIn(shape)])

    families = replace(STAND_INS, make_quar=with_logit)
    case = bench.Case("mlp", (8,), 4, 4)
    assert bench.build_model("residual", case, TINY, families).flows[-1].event_shape == (8,)
    with pytest.raises(ConfigError, match="unconstrained inputs"):
        bench.build_model("quar", case, TINY, families)
