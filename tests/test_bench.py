"""``flowspec bench``: the loader of the benchmark scripts, the subcommands, and ``bench compare``'s
measurement plumbing (steady state, rounds, verdicts, breakdowns that add up, the JSON table).

The comparison's mechanics are tested with stand-in families (cheap flows whose "log-det" costs a
number of extra passes set by ``configure_logdet`` and whose "power iteration" is a child module
run in every training-mode forward), so that these tests stay fast; the command itself runs the
real residual and QuAR models.
"""
from __future__ import annotations

import itertools
import json
import math
import sys
from dataclasses import replace

import pytest
import torch
from torch import Tensor, nn

from flowspec import ConfigError, bench
from flowspec.accelerated.base import Flow
from flowspec.accelerated.sequential import Sequential
from flowspec.cli import build_parser, main

compare = bench.load_benchmark("compare")
timing = bench.load_benchmark("timing")


class _Norm(nn.Module):
    """The stand-in's power iteration: a few products with the weight, counted."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, weight: Tensor) -> Tensor:
        self.calls += 1
        v = weight[0]
        for _ in range(3):
            v = weight @ v
        return v


class _StandIn(Flow):
    """z = x·exp(a) + tanh(x W)·0 repeated ``passes`` times: the cost of a log-det estimator, not its value."""

    def __init__(self, shape: tuple[int, ...], passes: int = 1):
        super().__init__()
        self._shape = tuple(shape)
        d = math.prod(shape)
        self.log_scale = nn.Parameter(torch.zeros(self._shape))
        self.weight = nn.Parameter(torch.eye(d))
        self.norm = _Norm()
        self.passes = passes

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self._shape

    def plain(self, x: Tensor) -> Tensor:
        return x * torch.exp(self.log_scale)

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.training:
            self.norm(self.weight.detach())
        flat = x.reshape(x.shape[0], -1)
        extra = sum(torch.tanh(flat @ self.weight).sum(1) for _ in range(self.passes))
        return self.plain(x), self.log_scale.sum().expand(x.shape[0]) + 0.0 * extra


def _model(arch: str, shape: tuple[int, ...], *, n_blocks: int, hidden_factor: int, passes: int) -> Flow:
    return Sequential([_StandIn(shape, passes) for _ in range(n_blocks)])


def _configure(model: nn.Module, *, estimator: str, n_exact_terms: int, **kw: object) -> None:
    assert estimator == "roulette" and kw["neumann_grad"] and kw["grad_in_forward"] and "draw" not in kw
    for m in model.modules():
        if isinstance(m, _StandIn):
            m.passes = n_exact_terms + 2  # the mean roulette tail of a geometric(0.5) draw


def _time_norms(model: nn.Module, sections: "compare.Sections") -> None:
    for m in model.modules():
        if isinstance(m, _Norm):
            sections.hook(m, compare.POWER_ITERATION)


def _plain(model: Flow, x: Tensor) -> Tensor:
    for child in model.flows:
        x = child.plain(x)
    return x


STAND_INS = compare.Families(
    make_residual=lambda arch, shape, *, coeff, **kw: _model(arch, shape, passes=1, **kw),
    configure_logdet=_configure,
    make_quar=lambda arch, shape, *, sigma, norm, recompute, **kw: _model(arch, shape, passes=1, **kw),
    residual_plain_forward=_plain,
    quar_plain_forward=_plain,
    time_power_iteration=_time_norms,
)

TINY = compare.Settings(n_blocks=2, warmup_steps=3, rounds=10, min_time=0.0)
CASE = compare.Case("mlp", (8,), 4, 8)


def _norm_calls(model: nn.Module) -> int:
    return sum(m.calls for m in model.modules() if isinstance(m, _Norm))


# ----------------------------------------------------------------------------- verdicts

@pytest.mark.parametrize("low, high, target, at_most, expected", [
    (30.0, 40.0, 30.0, False, "met"), (29.99, 40.0, 30.0, False, "unclear"), (20.0, 29.99, 30.0, False, "missed"),
    (2.5, 2.5, 2.5, False, "met"), (1.0, 1.2, 1.2, True, "met"), (1.1, 1.21, 1.2, True, "unclear"),
    (1.21, 1.5, 1.2, True, "missed"), (0.9, 1.1, 1.0, False, "unclear"), (0.5, 0.99, 1.0, False, "missed"),
])
def test_verdict_is_met_or_missed_only_when_the_whole_spread_is_on_one_side(low, high, target, at_most, expected):
    assert timing.verdict(low, high, target, at_most=at_most) == expected


def test_verdict_default_target_is_one_and_a_reversed_spread_is_refused():
    assert timing.verdict(1.0, 1.2) == "met" and timing.verdict(0.9, 1.0) == "unclear"
    with pytest.raises(ValueError, match="low end"):
        timing.verdict(1.2, 1.0)


def _result(case: compare.Case, **ratios: tuple[float, float, float]) -> compare.CaseResult:
    summaries = {k: timing.Summary(m, lo, hi, "n/a") for k, (lo, m, hi) in ratios.items()}
    return compare.CaseResult(case, {}, {}, summaries, 0)


def test_each_target_is_judged_at_its_threshold_on_its_cases():
    at = {"test_speedup": (30.0, 31.0, 35.0), "train_speedup": (2.5, 2.6, 3.0),
          "quar_overhead": (1.0, 1.1, 1.2), "train_memory": (1.0, 1.0, 1.0)}
    below = {"test_speedup": (25.0, 28.0, 29.9), "train_speedup": (2.0, 2.2, 2.49),
             "quar_overhead": (1.21, 1.3, 1.4), "train_memory": (1.01, 1.01, 1.01)}
    d64, d256 = compare.Case("mlp", (64,), 96, 256), compare.Case("mlp", (256,), 96, 256)
    conv = compare.Case("conv", (3, 16, 16), 96, 256)
    found = compare.verdicts([_result(d64, **below), _result(d256, **at), _result(conv, **below)])
    assert len(found) == 4 * 3
    assert {v.case: v.scope for v in found if "test-time" in v.target} == {
        "mlp 64": "floor", "mlp 256": "target", "conv 3×16×16": "target"}
    assert all(v.verdict == "met" for v in found if v.case == "mlp 256")
    assert all(v.verdict == "missed" for v in found if v.case != "mlp 256")
    overhead_64 = next(v for v in found if "plain forward" in v.target and v.case == "mlp 64")
    assert overhead_64.scope == "target"  # D ≥ 64: a target, not a floor
    assert compare.totals(found) == {"met": 4, "missed": 6, "unclear": 0}  # floor rows are not counted


def test_ratio_summaries_take_ratios_round_by_round():
    train = {"residual": [3.0] * 10, "quar": [1.0] * 9 + [2.0]}
    test = {"residual": [40.0] * 10, "quar": [1.0] * 10}
    overhead = {"full": [1.1] * 10, "plain": [1.0] * 10}
    s = compare.ratio_summaries(train, test, overhead, {"residual": 200, "quar": 100})
    assert s["train_speedup"].median == pytest.approx(3.0) and s["train_speedup"].low == pytest.approx(2.85)
    assert s["test_speedup"].verdict == "met" and s["quar_overhead"].verdict == "met"
    assert (s["train_memory"].median, s["train_memory"].verdict) == (0.5, "met")


# ----------------------------------------------------------------------------- sections and parts

class _Clock:
    """A fake ``time.perf_counter`` with uneven steps; keeps every value it returned."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self._steps = itertools.cycle([0.0013, 0.0071, 0.00029, 0.031])

    def __call__(self) -> float:
        self.values.append((self.values[-1] if self.values else 100.0) + next(self._steps))
        return self.values[-1]


def test_nested_sections_count_once():
    sections = compare.Sections()
    inner = sections.wrap("outer", lambda: None)
    outer = sections.wrap("outer", lambda: inner() or inner())
    outer()
    sections.wrap("other", lambda: None)()
    parts = sections.take()
    assert set(parts) == {"outer", "other"} and sections.take() == {}


def _trainer() -> "compare.Trainer":
    model = compare.build_model("residual", CASE, TINY, STAND_INS)
    trainer = compare.Trainer(model, TINY.lr)
    trainer.time_sections(STAND_INS, lambda: None)
    return trainer


def test_training_parts_add_up_to_the_step_span(monkeypatch):
    trainer = _trainer()
    x = compare.batch(CASE, TINY, CASE.train_batch, "train")
    trainer.step(x)
    clock = _Clock()
    monkeypatch.setattr(compare.time, "perf_counter", clock)
    before = _norm_calls(trainer.model)
    parts = trainer.timed_step(x)
    monkeypatch.undo()
    assert tuple(parts) == compare.TRAIN_PARTS
    assert _norm_calls(trainer.model) == before + TINY.n_blocks  # a real step: the blocks' iteration ran
    assert all(v > 0 for v in parts.values())
    assert math.isclose(sum(parts.values()), clock.values[-1] - clock.values[0], rel_tol=1e-12)


def test_evaluation_parts_add_up_to_the_call_span(monkeypatch):
    trainer = _trainer()
    x = compare.batch(CASE, TINY, CASE.test_batch, "test")
    trainer.step(x)
    evaluator = compare.Evaluator(trainer.polyak.model(), x, lambda: None)
    clock = _Clock()
    monkeypatch.setattr(compare.time, "perf_counter", clock)
    parts = evaluator.timed_call()
    monkeypatch.undo()
    assert set(parts) == {"Logit", "_StandIn", compare.EVAL_REST}
    assert math.isclose(sum(parts.values()), clock.values[-1] - clock.values[0], rel_tol=1e-12)


def test_parts_are_filed_by_round_and_warmup_calls_are_dropped():
    log = compare.PartsLog()
    call = log.record(lambda: {"a": 1.0, "b": 2.0})
    call()  # before the first round: warm-up
    log.start_round(0)
    call()
    call()
    log.start_round(1)
    call()
    assert log.per_call() == [{"a": 1.0, "b": 2.0}, {"a": 1.0, "b": 2.0}] and log.calls == [2, 1]


# ----------------------------------------------------------------------------- one case

def test_run_case_warms_up_then_times_real_steps_in_rounds(monkeypatch):
    seen: list[tuple[list[str], int]] = []
    real = timing.interleaved
    models: list[nn.Module] = []
    build = compare.build_model

    def remember(*args, **kwargs):
        models.append(build(*args, **kwargs))
        return models[-1]

    def spy(calls, rounds, *args, **kwargs):
        seen.append((list(calls), min(_norm_calls(m) for m in models)))
        return real(calls, rounds, *args, **kwargs)

    monkeypatch.setattr(compare, "build_model", remember)
    monkeypatch.setattr(compare.timing, "interleaved", spy)
    result = compare.run_case(CASE, TINY, STAND_INS)
    train_calls, norm_calls_before_timing = seen[0]
    assert train_calls == ["residual", "quar"]
    assert norm_calls_before_timing == TINY.warmup_steps * TINY.n_blocks  # every warm-up step ran, nothing else
    assert result.warmup_steps == TINY.warmup_steps
    for phase in (*result.train.values(), *result.test.values()):
        assert phase.seconds.low <= phase.seconds.median <= phase.seconds.high and phase.peak_bytes > 0
        assert phase.parts_sum.median <= phase.seconds.median  # the parts lie inside the timed calls
    assert set(result.train["quar"].parts) == set(compare.TRAIN_PARTS)
    assert result.train["residual"].parts[compare.POWER_ITERATION].median > 0
    assert set(result.ratios) == {"train_speedup", "test_speedup", "quar_overhead", "train_memory"}


def test_build_model_refuses_a_family_model_with_its_own_logit():
    from flowspec.accelerated.elementwise import Logit

    def with_logit(arch: str, shape: tuple[int, ...], **kw: object) -> Flow:
        return Sequential([Logit(shape), _StandIn(shape)])

    families = replace(STAND_INS, make_quar=with_logit)
    assert compare.build_model("residual", CASE, TINY, families).flows[-1].event_shape == (8,)
    with pytest.raises(ConfigError, match="unconstrained inputs"):
        compare.build_model("quar", CASE, TINY, families)


# ----------------------------------------------------------------------------- the command

@pytest.fixture
def tiny_command(monkeypatch):
    monkeypatch.setattr(compare, "DEFAULT_CASES", (CASE, compare.Case("conv", (2, 4, 4), 2, 4)))
    monkeypatch.setattr(compare, "QUICK_SWEEP", {"mlp": ((8,), (16,)), "conv": ((2, 4, 4),)})
    monkeypatch.setattr(compare, "BASE_SETTINGS", TINY)
    monkeypatch.setattr(compare, "QUICK_WARMUP_STEPS", 2)


def test_compare_command_prints_targets_writes_json_and_a_plot(tiny_command, tmp_path, capsys):
    import matplotlib.image

    png, table = tmp_path / "compare.png", tmp_path / "compare.json"
    args = build_parser().parse_args(["bench", "compare", "--quick", "--device", "cpu", "--min-time", "0",
                                      "--plot", str(png), "--json", str(table)])
    assert args.func is compare.run_command
    assert compare.run_command(args, STAND_INS) == 0
    out = capsys.readouterr().out
    assert "mlp 8 (D = 8)" in out and "conv 2×4×4 (D = 32)" in out and "after 2 warm-up steps" in out
    assert "thread(s)" in out and "targets (median [p10, p90]" in out and "→ " in out
    image = matplotlib.image.imread(png)
    assert image.shape[0] > 500 and image.shape[1] > 1000
    report = json.loads(table.read_text())
    assert report["header"]["hardware"]["threads"] == torch.get_num_threads()
    assert report["header"]["settings"]["rounds"] == timing.MIN_ROUNDS
    assert report["header"]["settings"]["warmup_steps"] == 2
    assert [c["case"]["label"] for c in report["cases"]] == ["mlp 8", "conv 2×4×4"]
    quar_train = report["cases"][0]["train"]["quar"]
    assert set(quar_train["seconds"]) == {"median", "low", "high"} and set(quar_train["parts"]) == set(compare.TRAIN_PARTS)
    assert quar_train["peak_bytes"] > 0 and "parts_sum" in quar_train
    assert report["cases"][0]["ratios"]["train_speedup"]["verdict"] in timing.VERDICTS
    assert {t["verdict"] for t in report["targets"]} <= set(timing.VERDICTS) and len(report["targets"]) == 8
    assert set(report["totals"]) == set(timing.VERDICTS)


@pytest.mark.parametrize("option, message", [(["--rounds", "9"], "--rounds must be ≥ 10"),
                                             (["--warmup-steps", "-1"], "--warmup-steps must be ≥ 0"),
                                             (["--json", "/no/such/folder/t.json"], "does not exist")])
def test_compare_command_refuses_bad_settings_before_running(tiny_command, capsys, option, message):
    args = build_parser().parse_args(["bench", "compare", "--device", "cpu", *option])
    assert compare.run_command(args, STAND_INS) == 2
    assert message in capsys.readouterr().err


def test_bench_needs_a_subcommand_and_rejects_a_missing_gpu(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench"])
    if not torch.cuda.is_available():
        args = build_parser().parse_args(["bench", "compare", "--device", "cuda"])
        assert compare.run_command(args, STAND_INS) == 2
        assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize("name, text", [("compare", "Residual flows against QuAR flows"),
                                        ("peers", "against zuko and nflows")])
def test_bench_subcommands_have_their_scripts_help(name, text, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", name, "--help"])
    assert exit_.value.code == 0 and text in capsys.readouterr().out


def test_a_subcommand_without_its_script_says_why_and_exits_2(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv(bench.FOLDER_VARIABLE, raising=False)
    monkeypatch.delitem(sys.modules, bench.MODULE_PREFIX + "peers_residual", raising=False)
    monkeypatch.setattr(bench, "BENCHMARKS", tmp_path / "benchmarks")
    assert main(["bench", "residual"]) == 2
    err = capsys.readouterr().err
    assert "flowspec bench residual: unavailable" in err and str(tmp_path / "benchmarks" / "peers_residual.py") in err


def test_load_benchmark_loads_once_and_names_a_missing_script(monkeypatch, tmp_path):
    assert bench.load_benchmark("timing") is timing and sys.modules[bench.MODULE_PREFIX + "timing"] is timing
    monkeypatch.delenv(bench.FOLDER_VARIABLE, raising=False)
    monkeypatch.setattr(bench, "BENCHMARKS", tmp_path)
    with pytest.raises(ConfigError, match="absent.py of the source checkout is not at"):
        bench.load_benchmark("absent")


def test_a_script_that_fails_to_load_is_not_registered(monkeypatch, tmp_path):
    (tmp_path / "broken.py").write_text("raise ImportError('no such peer')\n")
    monkeypatch.setenv(bench.FOLDER_VARIABLE, str(tmp_path))  # the folder the asv suite names
    with pytest.raises(ImportError, match="no such peer"):
        bench.load_benchmark("broken")
    assert bench.MODULE_PREFIX + "broken" not in sys.modules


# ----------------------------------------------------------------------------- the asv smoke check

def _check_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "check_regression.py"
    spec = importlib.util.spec_from_file_location("check_regression", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_check_reads_failures_that_asv_only_prints(tmp_path) -> None:
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
