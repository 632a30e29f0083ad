"""``flowspec bench peers`` (benchmarks/peers.py): ratios, spreads and verdicts; peers that are
absent or fail to import; the same architecture on every side. No timing assertions: the runs
here use tiny models and check only what the harness computes from the times it is given."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from flowspec import bench
from flowspec.cli import build_parser, main
from flowspec.errors import ConfigError

peers = bench.load_benchmark("peers")

TINY = {"hidden": (8, 8), "bins": 3, "batch": 16}


def _contender(name: str, arch: "peers.Arch") -> "peers.Contender":
    build = (lambda: peers.build_flowspec(arch, "off")) if name == "flowspec" else (lambda: peers.build_peer(name, arch))
    try:
        return build()
    except peers.Unavailable as exc:
        pytest.skip(str(exc))


# ----------------------------------------------------------------------------- statistics

def test_ratio_is_peer_time_over_flowspec_time_round_by_round():
    assert peers.round_ratios([2.0, 3.0], [1.0, 2.0]) == [2.0, 1.5]
    with pytest.raises(ValueError, match="rounds"):
        peers.round_ratios([1.0], [1.0, 1.0])


@pytest.mark.parametrize("low, high, expected", [
    (1.0, 1.2, "met"), (1.05, 3.0, "met"), (0.5, 0.99, "missed"), (0.9, 1.1, "unclear"), (0.9, 1.0, "unclear"),
])
def test_verdict_from_the_spread(low, high, expected):
    assert peers.verdict(low, high) == expected


def test_summary_is_median_and_10th_90th_percentiles_of_rounds():
    ratios = [1.0 + 0.1 * i for i in range(11)]  # 1.0 … 2.0
    s = peers.summarize(ratios)
    assert (s.median, s.verdict) == (pytest.approx(1.5), "met")
    assert (s.low, s.high) == (pytest.approx(1.1), pytest.approx(1.9))
    assert peers.summarize([0.9] * 5 + [1.1] * 5).verdict == "unclear"
    assert peers.summarize([0.8] * 10).verdict == "missed"
    with pytest.raises(ValueError):
        peers.summarize([])


def test_rows_compare_with_the_faster_peer_in_both_validation_settings():
    arch = peers.Arch("maf", 4)
    times = {"flowspec (validation off)": [1.0] * 10, "flowspec (validation on)": [2.0] * 10,
             "zuko": [1.5] * 10, "nflows": [3.0] * 10}
    off, on = peers.rows_from_times(arch, "density", times, [])
    assert off.faster == on.faster == "zuko"
    assert (off.validation, off.verdict, on.validation, on.verdict) == ("off", "met", "on", "missed")
    assert off.ratios["nflows"].median == pytest.approx(3.0) and on.summary.median == pytest.approx(0.75)
    assert off.peer_s == {"zuko": 1.5, "nflows": 3.0}


def test_rows_without_flowspec_or_without_peers_say_so():
    arch = peers.Arch("spline_coupling", 4)
    missing = "flowspec has no kind 'spline_coupling' in this checkout"
    (row,) = peers.rows_from_times(arch, "train", {"zuko": [1.0] * 10}, [missing])
    assert (row.verdict, row.flowspec_s, row.note) == ("n/a", None, missing)
    assert missing in peers.format_table([row])
    rows = peers.rows_from_times(arch, "train", {"flowspec (validation off)": [1.0] * 10,
                                                 "flowspec (validation on)": [1.0] * 10}, ["zuko skipped: …"])
    assert [r.verdict for r in rows] == ["n/a", "n/a"] and all(r.faster is None for r in rows)


def test_interleaved_rounds_time_every_call_once_per_round_in_a_rotating_order():
    order: list[str] = []
    calls = {n: (lambda n=n: order.append(n)) for n in "abc"}
    times = peers.interleaved(calls, rounds=3, min_time=0.0, warmup=0)
    assert {n: len(t) for n, t in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert order[3:] == list("abc" "bca" "cab")  # after the one-call calibration of each
    assert peers.calls_per_measurement(0.001, 0.02) == 20 and peers.calls_per_measurement(1.0, 0.02) == 1


def test_breakdown_of_a_missed_row_is_printed():
    row = peers.Row("maf", 8, "density", "on", 2e-3, {"zuko": 1e-3}, {"zuko": peers.summarize([0.5] * 10)},
                    "zuko", "missed", breakdown={
                        "training step": {"zuko": dict(zip(peers.TRAIN_PARTS, (1e-3, 2e-3, 3e-3)))},
                        "top operators": {"zuko": {"aten::addmm": 1e-3}}})
    text = peers.format_breakdowns([row])
    assert "missed: maf D=8 density (validation on), median ratio 0.50 vs zuko" in text
    assert "aten::addmm 1.00" in text and "3.00" in text


def test_top_operators_names_torch_operators():
    a = torch.randn(32, 32)
    ops = peers.top_operators({"mm": lambda: a @ a}, calls_each=1, top=3)
    assert "aten::mm" in ops["mm"]


# ----------------------------------------------------------------------------- peers absent or broken

def test_absent_peer_is_skipped_with_a_message_naming_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "nflows", None)  # what an uninstalled package looks like to import
    with pytest.raises(peers.Unavailable, match=r"nflows skipped: nflows is not installed .*flowspec\[peers\]"):
        peers.import_peer("nflows")


def test_peer_that_fails_to_import_is_skipped_with_the_error(monkeypatch, tmp_path):
    package = tmp_path / "zuko"
    package.mkdir()
    (package / "__init__.py").write_text("raise AttributeError(\"module 'numpy' has no attribute 'float'\")\n")
    for name in [m for m in sys.modules if m == "zuko" or m.startswith("zuko.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(peers.Unavailable, match="zuko skipped: importing zuko failed: AttributeError: .*numpy"):
        peers.import_peer("zuko")


def test_a_run_without_a_peer_keeps_the_other_rows(monkeypatch):
    monkeypatch.setitem(sys.modules, "nflows", None)
    arch = peers.Arch("maf", 3, **TINY)
    rows = peers.run_case(arch, ["density"], peers.PEERS, rounds=2, min_time=0.0)
    assert all("nflows skipped: nflows is not installed" in r.note for r in rows)
    assert all("nflows" not in r.peer_s for r in rows)
    if rows[0].flowspec_s is not None and "zuko" in rows[0].peer_s:
        assert {r.validation for r in rows} == {"off", "on"} and all(r.faster == "zuko" for r in rows)
        assert all(r.verdict in ("met", "missed", "unclear") for r in rows)


def test_flowspec_row_says_when_a_kind_is_missing(monkeypatch):
    from flowspec.accelerated import MODULES

    monkeypatch.delitem(MODULES, "maf", raising=False)
    with pytest.raises(peers.Unavailable, match="flowspec has no kind 'maf'"):
        peers.build_flowspec(peers.Arch("maf", 3, **TINY), "off")


# ----------------------------------------------------------------------------- same architecture

@pytest.mark.parametrize("model", peers.MODELS)
@pytest.mark.parametrize("side", ["flowspec", *peers.PEERS])
def test_every_side_builds_the_same_number_of_parameters(model, side):
    arch = peers.Arch(model, 5, hidden=(16, 16), bins=4, batch=8)  # odd D: the coupling halves differ
    c = _contender(side, arch)
    assert peers.parameter_count(c.module) == peers.expected_parameters(arch)
    x = torch.randn(arch.batch, arch.dim)
    assert c.log_prob(x).shape == (arch.batch,)
    with torch.no_grad():
        assert c.sample(3).shape == (3, arch.dim)


def test_expected_parameters_counts_dense_layers():
    maf = peers.Arch("maf", 8)
    assert peers.expected_parameters(maf) == 4 * (8 * 64 + 64 + 64 * 64 + 64 + 64 * 16 + 16)
    coupling = peers.Arch("spline_coupling", 5, hidden=(16, 16), bins=4)  # halves 2 | 3, then 3 | 2
    per = {(a, b): a * 16 + 16 + 16 * 16 + 16 + 16 * 11 * b + 11 * b for a, b in ((2, 3), (3, 2))}
    assert peers.expected_parameters(coupling) == 2 * per[2, 3] + 2 * per[3, 2]


def test_flowspec_validation_setting_is_the_models_as_a_user_sets_it():
    """On or off at the sequence's boundary; its children run unchecked either way (a sequence
    validates its own input and output)."""
    from flowspec.accelerated.base import Flow

    arch = peers.Arch("maf", 3, **TINY)
    for setting in peers.VALIDATION:
        flow = _contender("flowspec", arch).module if setting == "off" else peers.build_flowspec(arch, "on").module
        assert flow.validate_args == (setting == "on")
        assert not any(m.validate_args for m in flow.modules() if isinstance(m, Flow) and m is not flow)


# ----------------------------------------------------------------------------- the command

def test_bench_peers_is_a_flowspec_subcommand():
    args = build_parser().parse_args(["bench", "peers", "--models", "maf", "--dims", "4", "--rounds", "12"])
    assert args.func == peers.run_command and args.rounds == 12 and args.models == ["maf"]


def test_bench_peers_refuses_fewer_than_ten_rounds(capsys):
    assert main(["bench", "peers", "--rounds", "5"]) == 2
    assert "--rounds must be ≥ 10" in capsys.readouterr().out


def test_bench_peers_prints_the_table_and_writes_json(tmp_path, capsys):
    path = tmp_path / "peers.json"
    code = main(["bench", "peers", "--models", "maf", "spline_coupling", "--dims", "2", "--phases", "density",
                 "--batch", "8", "--rounds", "10", "--min-time", "0", "--json", str(path),
                 "--threads", str(torch.get_num_threads())])
    out = capsys.readouterr().out
    assert code == 0
    assert "zuko/flowspec [p10, p90]" in out and "totals:" in out
    report = json.loads(path.read_text())
    assert report["header"]["rounds"] == 10 and report["header"]["threads"] == torch.get_num_threads()
    assert {(r["model"], r["phase"]) for r in report["rows"]} == {("maf", "density"), ("spline_coupling", "density")}


def test_without_the_source_tree_the_command_says_why(monkeypatch, tmp_path):
    monkeypatch.delitem(sys.modules, bench.MODULE_PREFIX + "peers")
    monkeypatch.delenv(bench.FOLDER_VARIABLE, raising=False)
    monkeypatch.setattr(bench, "BENCHMARKS", tmp_path / "benchmarks")
    with pytest.raises(ConfigError, match="benchmarks/peers.py of the source checkout is not at"):
        bench.load_benchmark("peers")
    assert main(["bench", "peers"]) == 2


# ----------------------------------------------------------------------------- the monotone transforms against zuko

def _peers_zuko():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "peers_zuko.py"
    sys.path.insert(0, str(path.parent))
    try:
        import peers_zuko  # noqa: PLC0415  (benchmarks/ is not a package)
    finally:
        sys.path.remove(str(path.parent))
    return peers_zuko


@pytest.mark.parametrize("name", ["naf", "sos", "umnn", "cnf"])
def test_zuko_side_by_side_builds_both_sides_of_one_problem(name):
    """Both contenders take the same (batch, D) data, give finite per-sample log-densities and
    samples of the data's shape; the flowspec side is the kind named, three transforms deep (one
    continuous-time transform for cnf). The data
    are N(0, 0.5²): three stacked degree-9 SOS polynomials at torch's default initialisation grow like
    |x|^{9³} and overflow float32 near |x| = 2 (zuko rescales and soft-clips between transforms)."""
    module = _peers_zuko()
    model = module.MODELS[name]
    x = 0.5 * torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    ours = module.build_flowspec(model, 3)
    spec = ours.module.to_spec()
    kinds = [child.kind for child in spec.numbered_children()] if spec.kind == "sequential" else [spec.kind]
    assert kinds.count(name) == (module.TRANSFORMS if model.autoregressive else 1)
    try:
        theirs = module.build_zuko(model, 3)
    except module.peers.Unavailable as exc:  # the peers module peers_zuko loaded by path, not bench's copy
        pytest.skip(str(exc))
    for contender in (ours, theirs):
        with torch.no_grad():
            log_p, samples = contender.log_prob(x), contender.sample(4)
        assert log_p.shape == (5,) and bool(torch.isfinite(log_p).all())
        assert samples.shape == (4, 3)
