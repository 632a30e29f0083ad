"""flowspec's MAF and neural spline flows against zuko and nflows at the same architecture (``flowspec bench peers``).

One process, one thread (``--threads``), float32. For each model and size the command builds the
same architecture in flowspec (twice: input validation off, the hot-path setting, and on, the
default), in zuko and in nflows, and times three phases on the same batch in interleaved rounds:

* **train**: ``-log_prob(x).mean()``, backward, an Adam step (lr 1e-3);
* **density**: ``log_prob(x)`` under ``torch.no_grad()``;
* **sample**: ``sample(batch)`` under ``torch.no_grad()`` (base noise, then the generative direction:
  for the autoregressive models the D sequential passes of every layer, for the coupling model one
  pass of every layer).

Architecture (:class:`Arch`; every side has exactly :func:`expected_parameters` parameters, checked
by the tests):

* ``maf``: L = 4 MADE affine layers (Papamakarios et al. 2017) with the reversed order between
  layers, MADE hidden widths [64, 64], ReLU, D → 64 → 64 → 2·D dense masked layers.
  flowspec: ``sequential`` of ``maf`` and ``reverse_permutation``; zuko: ``MAF(D, transforms=4)``,
  which alternates the natural and reversed order instead of permuting; nflows:
  ``MaskedAffineAutoregressiveTransform(num_blocks=1, use_residual_blocks=False)`` and
  ``ReversePermutation``. What differs is the scale parameterisation, not the cost: flowspec
  z = (x − μ)·exp(−α) with α unbounded (MAF eq. 4); zuko z = x·exp(a') + b with the soft clamp
  a' = a / (1 + |a / log 1e-3|) of the log-scale; nflows z = x·s + b with s = softplus(a) + 1e-3;
  and the MADE hidden degrees (flowspec and nflows assign 1..D−1 cyclically; zuko assigns the
  distinct output dependency sets cyclically, the same set of masks for a full autoregressive order).
* ``spline_autoregressive`` (NSF-AR, Durkan et al. 2019): as ``maf`` with a rational-quadratic
  spline of K = 8 bins on [−B, B], B = 3 (zuko's default of 5 is overridden), 3K − 1 = 23 outputs
  per dimension, identity tails. flowspec: ``spline_autoregressive``; zuko: ``MAF`` with
  ``MonotonicRQSTransform(bound=3)`` (zuko's NSF with the bound set); nflows:
  ``MaskedPiecewiseRationalQuadraticAutoregressiveTransform(tails="linear", tail_bound=3)``.
  Differences: flowspec and nflows floor the bin widths, heights and derivatives at 1e-3
  (min + (1 − K·min)·softmax); zuko soft-clamps the raw widths and heights instead and floors
  only the derivative (slope 1e-3).
* ``spline_coupling`` (NSF-C): L = 4 coupling layers alternating the half that passes unchanged
  (the first ⌊D/2⌋ entries, then the others), an MLP conditioner ⌊D/2⌋ → 64 → 64 → 23·⌈D/2⌉, the
  same spline. flowspec: ``spline_coupling`` (channel mask, parity 0, 1, 0, 1); zuko:
  ``GeneralCouplingTransform`` with the spline; nflows: ``PiecewiseRationalQuadraticCouplingTransform``.

Validation: flowspec checks its inputs and outputs (dtype, shape, finiteness) unless
``validate_args`` is off; both settings are rows of the table. The peers check no data; zuko's base
distribution is a ``torch.distributions.Normal`` with torch's default argument checks (a support
check of the latent).

Statistics (:func:`summarize`): in every round each contender is timed once, in a rotating order;
a measurement is the mean of ``number`` calls (chosen so that one measurement takes ≥ ``--min-time``,
the same for every contender of a case). ratio = peer time / flowspec time in the same round (> 1:
flowspec faster). A row compares flowspec with the *faster* peer (lower median time) and reports
the median ratio over rounds with its spread, the 10th–90th percentile of the per-round ratios.
Verdict (target: flowspec no slower than the faster peer, ratio ≥ 1.0): **met** if the 10th
percentile ≥ 1.0, **missed** if the 90th percentile < 1.0, **unclear** otherwise.

A peer that is not installed or fails to import (nflows' last release is from 2020) is skipped with
a message naming the library (install both with ``pip install 'flowspec[peers]'``); a flowspec kind
that this checkout lacks or cannot build is reported in its row. Missed rows get a breakdown, for
flowspec with validation off and on and for the faster peer: the training step split into
forward + log-density, backward and the Adam step, and the phase's top torch operators by self CPU
time (``torch.profiler``).

Parameters: each side starts from torch's default ``nn.Linear`` initialisation
(:func:`reset_linear_layers`); density and sampling are timed on freshly built models, not on
those the training rounds moved.

This module lives in the source tree (``benchmarks/`` is not installed); ``flowspec bench peers``
loads it by path (:func:`flowspec.bench.load_benchmark`), and it takes its timing and statistics
from ``benchmarks/timing.py`` the same way.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import platform
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from types import ModuleType
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from flowspec.bench import load_benchmark

timing = load_benchmark("timing")
LOW_Q, HIGH_Q, MIN_ROUNDS, Summary = timing.LOW_Q, timing.HIGH_Q, timing.MIN_ROUNDS, timing.Summary
measure, calls_per_measurement, interleaved = timing.measure, timing.calls_per_measurement, timing.interleaved
round_ratios, verdict, summarize = timing.round_ratios, timing.verdict, timing.summarize

MODELS = ("maf", "spline_autoregressive", "spline_coupling")
PHASES = ("train", "density", "sample")
PEERS = ("zuko", "nflows")
VALIDATION = ("off", "on")
DIMS = (8, 16)
LR = 1e-3
TRAIN_PARTS = ("forward+log_prob", "backward", "adam")
INSTALL_HINT = "pip install 'flowspec[peers]'"


# ----------------------------------------------------------------------------- architecture

@dataclass(frozen=True)
class Arch:
    """One model at one size, the same on every side (module docstring)."""

    model: str
    dim: int
    layers: int = 4
    hidden: tuple[int, ...] = (64, 64)
    bins: int = 8
    bound: float = 3.0
    batch: int = 256
    minimum: float = 1e-3  # min bin width, min bin height, min derivative

    @property
    def label(self) -> str:
        return f"{self.model} D={self.dim}"

    @property
    def outputs_per_entry(self) -> int:
        return 2 if self.model == "maf" else 3 * self.bins - 1

    def coupling_split(self, layer: int) -> tuple[int, int]:
        """(unchanged, transformed) entry counts of coupling ``layer`` (parity ``layer % 2``)."""
        first = self.dim // 2
        return (first, self.dim - first) if layer % 2 == 0 else (self.dim - first, first)


def _dense_parameters(sizes: Sequence[int]) -> int:
    return sum(i * o + o for i, o in zip(sizes[:-1], sizes[1:]))


def expected_parameters(arch: Arch) -> int:
    """The number of parameters of ``arch``: dense (masked) weights and biases of every conditioner."""
    k = arch.outputs_per_entry
    if arch.model == "spline_coupling":
        return sum(_dense_parameters([a, *arch.hidden, k * b]) for a, b in map(arch.coupling_split, range(arch.layers)))
    return arch.layers * _dense_parameters([arch.dim, *arch.hidden, k * arch.dim])


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------- contenders

@dataclass
class Contender:
    """One implementation of an :class:`Arch`: its module and how to evaluate and sample it."""

    name: str
    module: nn.Module
    log_prob: Callable[[Tensor], Tensor]
    sample: Callable[[int], Tensor]
    optimizer: torch.optim.Optimizer = field(init=False)

    def __post_init__(self) -> None:
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=LR)


class Unavailable(Exception):
    """A contender that cannot be built here; the message names the library and the reason."""


def import_peer(name: str) -> ModuleType:
    """Import peer library ``name`` (with the submodules the builders use), or raise :class:`Unavailable`."""
    try:
        module = importlib.import_module(name)
        for sub in {"zuko": ("zuko.flows", "zuko.transforms", "zuko.distributions"),
                    "nflows": ("nflows.flows", "nflows.transforms", "nflows.distributions")}.get(name, ()):
            importlib.import_module(sub)
    except ModuleNotFoundError as exc:
        raise Unavailable(f"{name} skipped: {name} is not installed ({INSTALL_HINT})") from exc
    except Exception as exc:  # noqa: BLE001 - an old release may fail to import in many ways
        raise Unavailable(f"{name} skipped: importing {name} failed: {type(exc).__name__}: {exc}") from exc
    return module


def _flowspec_children(arch: Arch) -> list[Any]:
    from flowspec import reference
    from flowspec.conformance.seeding import rng

    spline = {"bins": arch.bins, "bound": arch.bound, "min_width": arch.minimum,
              "min_height": arch.minimum, "min_derivative": arch.minimum}
    if arch.model == "spline_coupling":
        if len(set(arch.hidden)) != 1:
            raise ValueError(f"a coupling conditioner has one hidden width, got {arch.hidden}")
        return [reference.init_spec("spline_coupling", {
            "shape": [arch.dim], "mask": "channel", "parity": i % 2, "conditioner": "mlp",
            "hidden": arch.hidden[0], "depth": len(arch.hidden), "activation": "relu", **spline,
        }, rng("peers", arch.label, i)) for i in range(arch.layers)]
    config = {"dim": arch.dim, "hidden": list(arch.hidden), "activation": "relu"}
    if arch.model == "spline_autoregressive":
        config.update(spline)
    children = []
    for i in range(arch.layers):
        if i:
            children.append(reference.init_spec("reverse_permutation", {"shape": [arch.dim]}, rng("peers", arch.label, i)))
        children.append(reference.init_spec(arch.model, config, rng("peers", arch.label, i)))
    return children


def reset_linear_layers(flow: nn.Module) -> None:
    """torch's default ``nn.Linear`` initialisation, the peers' (in place of the reference's
    test-oriented N(0, 1/fan_in) weights and N(0, 0.5²) biases, under which a 4-layer MAF of width 64
    draws samples of 10⁸): the same starting distribution on every side, from torch's generator."""
    for m in flow.modules():
        if isinstance(m, nn.Linear):
            m.reset_parameters()


def _set_validation(flow: nn.Module, on: bool) -> None:
    """Validation of the model as a user switches it: on the outer flow (a ``sequential`` flow
    validates at its own boundary and runs its children unchecked)."""
    flow.validate_args = on


def build_flowspec(arch: Arch, validation: str, device: str = "cpu") -> Contender:
    """flowspec's ``sequential`` flow of ``arch``, input validation ``"on"`` or ``"off"``."""
    try:
        from flowspec import registry
        from flowspec.accelerated import MODULES, FlowDistribution, from_spec
        from flowspec.reference.sequential import sequential_spec
    except ImportError as exc:
        raise Unavailable(f"flowspec skipped: {exc}") from exc
    missing = [k for k in (arch.model, "reverse_permutation", "sequential")
               if k not in MODULES or k not in registry.names()]
    if missing:
        raise Unavailable(f"flowspec has no kind {missing[0]!r} in this checkout")
    try:
        flow = from_spec(sequential_spec(_flowspec_children(arch)), dtype=torch.float32, device=device)
    except Exception as exc:  # noqa: BLE001 - a kind whose config differs is reported, not fatal
        raise Unavailable(f"flowspec could not build {arch.model}: {type(exc).__name__}: {exc}") from exc
    reset_linear_layers(flow)
    _set_validation(flow, validation == "on")
    dist = FlowDistribution(flow)
    return Contender(f"flowspec (validation {validation})", flow, dist.log_prob, lambda n: dist.sample((n,)))


def _zuko_univariate(zuko: ModuleType, arch: Arch) -> dict[str, Any]:
    if arch.model == "maf":
        return {}
    rqs = partial(zuko.transforms.MonotonicRQSTransform, bound=arch.bound, slope=arch.minimum)
    return {"univariate": rqs, "shapes": [(arch.bins,), (arch.bins,), (arch.bins - 1,)]}


def build_zuko(zuko: ModuleType, arch: Arch) -> nn.Module:
    """zuko's flow of ``arch`` (a ``zuko.lazy.Flow``: call it for the distribution)."""
    common = {"hidden_features": list(arch.hidden), "activation": nn.ReLU, **_zuko_univariate(zuko, arch)}
    if arch.model != "spline_coupling":
        return zuko.flows.MAF(arch.dim, transforms=arch.layers, **common)
    first = torch.arange(arch.dim) < arch.dim // 2  # True: the entries that pass unchanged
    transforms = [zuko.flows.GeneralCouplingTransform(arch.dim, mask=first if i % 2 == 0 else ~first, **common)
                  for i in range(arch.layers)]
    base = zuko.flows.UnconditionalDistribution(
        zuko.distributions.DiagNormal, torch.zeros(arch.dim), torch.ones(arch.dim), buffer=True)
    return zuko.flows.Flow(transforms, base)


class _NflowsMLP(nn.Module):
    """The coupling conditioner for nflows, which calls its net as ``net(x, context)`` and scales the
    width logits by 1/√``hidden_features`` (as for its own ``ResidualNet``)."""

    def __init__(self, sizes: Sequence[int]):
        super().__init__()
        self.hidden_features = sizes[1]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.net(x)


def _nflows_layer(nflows: ModuleType, arch: Arch, i: int) -> nn.Module:
    t = nflows.transforms
    if len(set(arch.hidden)) != 1:
        raise Unavailable(f"nflows skipped: its MADE has one hidden width, not {list(arch.hidden)}")
    made = {"features": arch.dim, "hidden_features": arch.hidden[0], "num_blocks": len(arch.hidden) - 1,
            "use_residual_blocks": False, "activation": torch.relu}
    spline = {"num_bins": arch.bins, "tails": "linear", "tail_bound": arch.bound, "min_bin_width": arch.minimum,
              "min_bin_height": arch.minimum, "min_derivative": arch.minimum}
    if arch.model == "maf":
        return t.MaskedAffineAutoregressiveTransform(**made)
    if arch.model == "spline_autoregressive":
        return t.MaskedPiecewiseRationalQuadraticAutoregressiveTransform(**made, **spline)
    transformed = torch.arange(arch.dim) >= arch.dim // 2  # nflows: mask > 0 is transformed
    mask = (transformed if i % 2 == 0 else ~transformed).int()
    return t.PiecewiseRationalQuadraticCouplingTransform(
        mask, lambda a, b: _NflowsMLP([a, *arch.hidden, b]), **spline)


def build_nflows(nflows: ModuleType, arch: Arch) -> nn.Module:
    """nflows' ``Flow`` of ``arch`` (reversed order between autoregressive layers)."""
    layers: list[nn.Module] = []
    for i in range(arch.layers):
        if i and arch.model != "spline_coupling":
            layers.append(nflows.transforms.ReversePermutation(arch.dim))
        layers.append(_nflows_layer(nflows, arch, i))
    base = nflows.distributions.StandardNormal([arch.dim])
    return nflows.flows.Flow(nflows.transforms.CompositeTransform(layers), base)


def build_peer(name: str, arch: Arch, device: str = "cpu") -> Contender:
    """Peer ``name``'s model of ``arch`` as a :class:`Contender`, or raise :class:`Unavailable`."""
    lib = import_peer(name)
    try:
        module = (build_zuko if name == "zuko" else build_nflows)(lib, arch).to(device)
    except Unavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - an API change in a peer is reported, not fatal
        raise Unavailable(f"{name} skipped: building {arch.model} failed: {type(exc).__name__}: {exc}") from exc
    if name == "zuko":
        return Contender(name, module, lambda x: module().log_prob(x), lambda n: module().sample((n,)))
    return Contender(name, module, module.log_prob, module.sample)


# ----------------------------------------------------------------------------- phases

def phase_call(contender: Contender, phase: str, x: Tensor) -> Callable[[], object]:
    """The work of ``phase`` for ``contender`` on batch ``x``, as a call without arguments."""
    if phase == "train":
        return partial(train_parts, contender, x)
    if phase == "density":
        return lambda: _no_grad(contender.log_prob, x)
    if phase == "sample":
        return lambda: _no_grad(contender.sample, x.shape[0])
    raise ValueError(f"unknown phase {phase!r}; expected one of {PHASES}")


def _no_grad(fn: Callable[[Any], Tensor], arg: Any) -> None:
    with torch.no_grad():
        fn(arg)


def train_parts(contender: Contender, x: Tensor, sync: Callable[[], None] = lambda: None) -> tuple[float, float, float]:
    """One training step; returns the seconds of (forward + log-density, backward, Adam step)."""
    opt = contender.optimizer
    opt.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    loss = -contender.log_prob(x).mean()
    sync()
    t1 = time.perf_counter()
    loss.backward()
    sync()
    t2 = time.perf_counter()
    opt.step()
    sync()
    return t1 - t0, t2 - t1, time.perf_counter() - t2


def faster_peer(peer_times: dict[str, Sequence[float]]) -> str | None:
    """The peer with the lowest median time, or None when no peer was timed."""
    return min(peer_times, key=lambda n: float(np.median(peer_times[n])), default=None)


# ----------------------------------------------------------------------------- rows

@dataclass
class Row:
    """One (model, D, phase, validation) line of the table."""

    model: str
    dim: int
    phase: str
    validation: str
    flowspec_s: float | None
    peer_s: dict[str, float]
    ratios: dict[str, Summary]
    faster: str | None
    verdict: str
    note: str = ""
    breakdown: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    @property
    def summary(self) -> Summary | None:
        return self.ratios.get(self.faster) if self.faster else None


def rows_from_times(arch: Arch, phase: str, times: dict[str, list[float]], notes: Sequence[str]) -> list[Row]:
    """The validation-off and -on rows of one case from the interleaved ``times`` of its contenders."""
    peers = {n: t for n, t in times.items() if n in PEERS}
    faster = faster_peer(peers)
    peer_s = {n: float(np.median(t)) for n, t in peers.items()}
    note = "; ".join(notes)
    if not any(f"flowspec (validation {v})" in times for v in VALIDATION):
        return [Row(arch.model, arch.dim, phase, "–", None, peer_s, {}, faster, "n/a", note)]
    rows = []
    for validation in VALIDATION:
        ours = times.get(f"flowspec (validation {validation})")
        if ours is None:
            rows.append(Row(arch.model, arch.dim, phase, validation, None, peer_s, {}, faster, "n/a", note))
            continue
        ratios = {n: summarize(round_ratios(t, ours)) for n, t in peers.items()}
        result = ratios[faster].verdict if faster else "n/a"
        rows.append(Row(arch.model, arch.dim, phase, validation, float(np.median(ours)), peer_s, ratios,
                        faster, result, note))
    return rows


def build_contenders(arch: Arch, peers: Sequence[str], device: str) -> tuple[dict[str, Contender], list[str]]:
    """flowspec (validation off and on) and the ``peers`` that are available; messages for the rest."""
    out: dict[str, Contender] = {}
    notes: list[str] = []
    torch.manual_seed(1000 * arch.dim + MODELS.index(arch.model))  # the peers' initialisation
    builders = [partial(build_flowspec, arch, v, device) for v in VALIDATION]
    builders += [partial(build_peer, p, arch, device) for p in peers]
    for build in builders:
        try:
            c = build()
        except Unavailable as exc:
            if str(exc) not in notes:
                notes.append(str(exc))
            continue
        out[c.name] = c
    return out, notes


def batch(arch: Arch, device: str) -> Tensor:
    g = torch.Generator().manual_seed(1000 * arch.dim + MODELS.index(arch.model))
    return torch.randn(arch.batch, arch.dim, generator=g).to(device)


def run_case(arch: Arch, phases: Sequence[str], peers: Sequence[str], rounds: int, min_time: float,
             device: str = "cpu") -> list[Row]:
    """All rows of ``arch``: each phase on freshly built contenders (so that density and sampling
    see the initial parameters, not those of the training rounds), then a breakdown of missed rows."""
    x = batch(arch, device)
    sync = timing.sync_for(device)
    rows = []
    for phase in phases:
        contenders, notes = build_contenders(arch, peers, device)
        calls = {name: phase_call(c, phase, x) for name, c in contenders.items()}
        times = interleaved(calls, rounds, min_time, sync) if calls else {}
        rows += rows_from_times(arch, phase, times, notes)
    splits: dict[str, dict[str, dict[str, float]]] = {}
    for row in rows:
        if row.verdict != "missed":
            continue
        contenders, _ = build_contenders(arch, peers, device)
        names = [f"flowspec (validation {v})" for v in VALIDATION] + [row.faster]
        if row.faster not in splits:
            splits[row.faster] = train_breakdown(contenders, names, x, rounds, sync)
        row.breakdown = {"training step": splits[row.faster],
                         "top operators": top_operators({n: phase_call(contenders[n], row.phase, x) for n in names})}
    return rows


def train_breakdown(contenders: dict[str, Contender], names: Sequence[str], x: Tensor, rounds: int,
                    sync: Callable[[], None]) -> dict[str, dict[str, float]]:
    """Median seconds of the parts of a training step (forward + log-density, backward, Adam), per contender."""
    parts: dict[str, list[tuple[float, float, float]]] = {n: [] for n in names if n in contenders}
    for _ in range(rounds):
        for name in parts:
            parts[name].append(train_parts(contenders[name], x, sync))
    return {n: dict(zip(TRAIN_PARTS, map(float, np.median(np.asarray(p), axis=0)))) for n, p in parts.items()}


def top_operators(calls: dict[str, Callable[[], object]], calls_each: int = 10, top: int = 5) -> dict[str, dict[str, float]]:
    """The ``top`` torch operators by self CPU time per call (seconds), per contender (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    out = {}
    for name, fn in calls.items():
        with timing.quiet_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(calls_each):
                fn()
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
        out[name] = {e.key: e.self_cpu_time_total * 1e-6 / calls_each for e in events}
    return out


# ----------------------------------------------------------------------------- report

def _ms(s: float | None) -> str:
    return "–" if s is None else f"{s * 1e3:.2f}"


def _ratio(s: Summary | None) -> str:
    return "–" if s is None else f"{s.median:.2f} [{s.low:.2f}, {s.high:.2f}]"


HEADER = ("model", "D", "phase", "valid.", "flowspec ms", "zuko ms", "nflows ms",
          "zuko/flowspec [p10, p90]", "nflows/flowspec [p10, p90]", "vs", "verdict")


def table_cells(row: Row) -> tuple[str, ...]:
    return (row.model, str(row.dim), row.phase, row.validation, _ms(row.flowspec_s),
            _ms(row.peer_s.get("zuko")), _ms(row.peer_s.get("nflows")),
            _ratio(row.ratios.get("zuko")), _ratio(row.ratios.get("nflows")), row.faster or "–", row.verdict)


def format_table(rows: Sequence[Row]) -> str:
    cells = [HEADER] + [table_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = list(dict.fromkeys(r.note for r in rows if r.note))
    return "\n".join(lines + [f"note: {n}" for n in notes])


def format_breakdowns(rows: Sequence[Row]) -> str:
    """Where the time of each missed row goes: the training step's parts and the top operators."""
    lines = []
    for row in rows:
        if not row.breakdown:
            continue
        lines.append(f"missed: {row.model} D={row.dim} {row.phase} (validation {row.validation}), "
                     f"median ratio {row.summary.median:.2f} vs {row.faster}")
        lines.append("  training step (ms): " + ", ".join(TRAIN_PARTS))
        for name, parts in row.breakdown["training step"].items():
            lines.append(f"    {name:28} " + "  ".join(f"{_ms(parts[p]):>7}" for p in TRAIN_PARTS))
        lines.append(f"  top operators of the {row.phase} phase (self CPU ms per call)")
        for name, ops in row.breakdown["top operators"].items():
            lines.append(f"    {name:28} " + ", ".join(f"{op} {_ms(s)}" for op, s in ops.items()))
    return "\n".join(lines)


def totals(rows: Sequence[Row]) -> dict[str, int]:
    return {v: sum(r.verdict == v for r in rows) for v in ("met", "missed", "unclear", "n/a")}


def to_json(rows: Sequence[Row], header: dict[str, Any]) -> dict[str, Any]:
    return {"header": header, "totals": totals(rows), "rows": [asdict(r) for r in rows]}


# ----------------------------------------------------------------------------- command line

def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``flowspec bench peers``."""
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--dims", nargs="+", type=int, default=list(DIMS), help="event sizes D (default: %(default)s)")
    p.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    p.add_argument("--peers", nargs="+", choices=PEERS, default=list(PEERS))
    p.add_argument("--batch", type=int, default=Arch("maf", 1).batch)
    p.add_argument("--rounds", type=int, default=15, help=f"interleaved rounds, ≥ {MIN_ROUNDS} (default: %(default)s)")
    p.add_argument("--min-time", type=float, default=0.02,
                   help="seconds of one measurement at least (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")


def _header(args: argparse.Namespace) -> dict[str, Any]:
    versions = {"torch": torch.__version__, "python": platform.python_version()}
    for name in ("flowspec", *PEERS):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"versions": versions, "hardware": timing.hardware(args.device),
            "threads": torch.get_num_threads(), "device": args.device,
            "rounds": args.rounds, "min_time_s": args.min_time, "batch": args.batch,
            "spread": f"{LOW_Q:.0%}-{HIGH_Q:.0%} percentiles of per-round ratios", "dtype": "float32"}


def run_command(args: argparse.Namespace) -> int:
    """``flowspec bench peers``: print the table (and write ``--json``); exit 2 on bad arguments."""
    if args.rounds < MIN_ROUNDS:
        print(f"flowspec bench peers: --rounds must be ≥ {MIN_ROUNDS}, got {args.rounds}")
        return 2
    timing.configure(args.device, args.threads)
    header = _header(args)
    print(f"flowspec bench peers: {', '.join(f'{k} {v}' for k, v in header['versions'].items())}; "
          f"{header['threads']} thread(s), {args.device}, float32, batch {args.batch}")
    print(f"hardware: {timing.describe_hardware(header['hardware'])}")
    print(f"{args.rounds} interleaved rounds; ratio = peer time / flowspec time (> 1: flowspec faster), median "
          f"[{header['spread']}]; verdict vs the faster peer: met if p10 ≥ 1, missed if p90 < 1, else unclear\n")
    rows: list[Row] = []
    for model in args.models:
        for dim in args.dims:
            arch = Arch(model, dim, batch=args.batch)
            rows += run_case(arch, args.phases, args.peers, args.rounds, args.min_time, args.device)
            print(f"  done: {arch.label}", flush=True)
    print("\n" + format_table(rows))
    print("totals: " + ", ".join(f"{k} {v}" for k, v in totals(rows).items()))
    breakdowns = format_breakdowns(rows)
    if breakdowns:
        print("\n" + breakdowns)
    timing.write_json(args.json, to_json(rows, header) if args.json else None)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python benchmarks/peers.py [options]``, the same as ``flowspec bench peers``."""
    return timing.script_main("peers", __doc__, add_arguments, run_command, argv)


if __name__ == "__main__":
    raise SystemExit(main())
