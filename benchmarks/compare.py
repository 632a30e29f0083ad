"""Residual flows against QuAR flows of the same architecture, side by side (``flowspec bench compare``).

For each case (an MLP on vectors, a convolutional model on images) the command builds a residual
flow and a QuAR flow with the same layout — logit → (conv: 2×2 squeeze) → ActNorm → n_blocks ×
(block → ActNorm), blocks with two hidden layers of hidden_factor × the input's width (conv:
3×3, 1×1, 3×3 convolutions), ELU, Lipschitz coefficient 0.97 (QuAR's σ) — feeds both the same
uniformly dequantised batches in one process, and reports what the QuAR paper's Table 2 reports:
time per batch and memory for a training step and a test evaluation, residual vs QuAR, with their
ratios; then whether each target below is met, missed or unclear, and where the time goes.

What is run:

* **training step** (the operations of :func:`flowspec.accelerated.training.train_step`):
  zero_grad, forward with log-det and mean bits per dimension, backward, Adam step, Polyak update.
  Residual: 2 exact series terms plus the Russian-roulette tail (geometric p(N), q = 0.5), Neumann
  gradient series with backward-in-forward (Residual Flows, eq. 6, 8, 9); the roulette draw mode
  (N per sample or per batch) is the library's default and is printed. QuAR: exact log-det by
  diagonal propagation (QuAR Sec. 4.1), norm option (a) by default; on the conv case (by default;
  ``--quar-recompute``) its blocks keep their input only and run again in backward (the block
  setting ``recompute``), for the training-memory target. Residual layers run their
  power iteration in every training-mode forward, QuAR blocks at the first forward after a weight
  change; either way once per step, on the weights the last step moved. A training step changes
  the model, so every timed call is one more real training step.
* **test evaluation** (:func:`flowspec.accelerated.training.evaluate`, no gradients) of each
  model's Polyak average (decay 0.999, norms recomputed for the averaged weights): residual with
  20 exact terms plus the roulette tail (Residual Flows, Sec. 5); QuAR exact.
* **QuAR's overhead**: the QuAR flow's forward with log-det over the plain forward of the same
  masked network (no log-det), both in evaluation mode without gradients.

How it is measured:

* **Steady state.** Before anything is timed each model takes ``warmup_steps`` real training steps
  (default 20; 5 under ``--quick``). The warm-started power iteration needs few iterations while the
  weights are near their initialisation; as Adam moves them and the top singular values draw
  together its cost per step grows and then levels off. On the MLP at D = 64 the residual's power
  iteration took about 27 ms per step in steps 2–8 and 70–110 ms from about step 19 on (QuAR's
  refresh levelled off by step 8), so 20 steps reach the cost of a long run; timing the first steps
  would under-report the residual step. ``--quick`` (CI-sized) is not a steady-state measurement.
* **Rounds.** :func:`timing.interleaved` times the two contenders (or QuAR's full and plain
  forward) in ``rounds`` rounds (at least :data:`timing.MIN_ROUNDS`; fewer is refused), each round
  measuring every contender once in a rotating order; a measurement is the mean of a number of
  calls, the same for both, chosen so that it takes ``min_time``. Ratios are taken round by round
  (:func:`timing.round_ratios`) and reported as their median with the 10–90 % spread
  (:func:`timing.summarize`).
* **Verdicts** against each target's threshold: met only when the whole spread is on the target's
  side, missed only when it is all on the other side, unclear otherwise (:func:`timing.verdict`).
* **Breakdown**, measured inside the same timed calls: every segment bracketed by device
  synchronisations and timestamps, the segments contiguous, so that the parts add up to the call's
  own span (printed next to the whole call's time from the rounds, which also holds the timing
  overhead). Training: forward + log-det (the residual's backward-in-forward gradient included),
  the power iteration (timed where it runs, inside the forward: the residual layers' normalisers,
  the QuAR blocks' refresh), backward, optimiser step, Polyak update. Test: the prefix (logit,
  squeeze), each kind of child of the family's flow (ActNorm, the blocks with their log-det), and
  the rest (the base log-density and the bits per dimension). Parts are per-round means of the
  calls of that round, summarised like the times.
* **Memory**: the allocator's peak above the pre-step baseline and the bytes saved for backward
  (:mod:`flowspec.accelerated.memory`), for one training step and one evaluation after the timing.
  On CUDA the peak comes from the caching allocator's statistics; on the CPU from one
  ``torch.profiler`` recording of the step (run twice in that one profile, so that blocks the step
  frees are known), never a profile over many steps, so the profiler's own memory stays small.

Targets (issue 9), each judged on the cases named, with D = 64 reported as "floor" rows where the
target names larger inputs (per-op overhead bounds both models there):

* QuAR test-time log-likelihood ≥ 30× faster than the residual flow's evaluation (D = 256, conv);
* QuAR training step ≥ 2.5× faster than the residual flow's (D = 256, conv);
* QuAR forward + log-det ≤ 1.2× a plain forward of the same masked network (D ≥ 64, C ≥ 12: every
  table case; conv blocks see 12 channels after the squeeze);
* QuAR training memory (allocator peak) ≤ 1.0× the residual flow's (every table case).

``--json PATH`` writes the whole table: the header (hardware, threads, settings), every case's times
and parts with their spread, memory, ratios, and the targets with their verdicts.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from flowspec.accelerated import memory, training
from flowspec.accelerated.base import Flow
from flowspec.accelerated.elementwise import Logit
from flowspec.accelerated.sequential import Sequential
from flowspec.accelerated.squeeze import Squeeze
from flowspec.bench import load_benchmark
from flowspec.errors import ConfigError

timing = load_benchmark("timing")

ARCHS = ("mlp", "conv")
FAMILIES = ("residual", "quar")
POWER_ITERATION = "power iteration"
TRAIN_PARTS = ("forward + log-det", POWER_ITERATION, "backward", "optimizer", "Polyak update")
EVAL_REST = "base log-density + bpd"


# ----------------------------------------------------------------------------- configuration

@dataclass(frozen=True)
class Case:
    """One input size of one architecture, with its training and test batch sizes."""

    arch: str
    shape: tuple[int, ...]
    train_batch: int
    test_batch: int

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    @property
    def label(self) -> str:
        return f"{self.arch} {'×'.join(map(str, self.shape))}"


@dataclass(frozen=True)
class Settings:
    """Model and measurement settings shared by both families (module docstring)."""

    n_blocks: int = 4
    hidden_factor: int = 4
    coeff: float = 0.97
    quar_norm: str = "full"
    quar_recompute: tuple[str, ...] = ("conv",)
    train_terms: int = 2
    eval_terms: int = 20
    warmup_steps: int = 20
    rounds: int = 15
    min_time: float = 0.02
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    lr: float = 1e-3


# ----------------------------------------------------------------------------- the two families

class Sections:
    """Seconds spent inside named sections of a call, each bracketed by device synchronisations.

    Sections nest: a section entered while another is open is part of the outer one and is not
    counted again (a QuAR refresh that calls normalisers, say). :meth:`take` returns the totals
    since the last :meth:`take` and clears them.
    """

    def __init__(self, sync: Callable[[], None] = lambda: None):
        self.sync = sync
        self._totals: dict[str, float] = defaultdict(float)
        self._depth = 0
        self._start = 0.0

    def enter(self) -> None:
        if self._depth == 0:
            self.sync()
            self._start = time.perf_counter()
        self._depth += 1

    def exit(self, name: str) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.sync()
            self._totals[name] += time.perf_counter() - self._start

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` with its calls timed as section ``name``."""
        def timed(*args: Any, **kwargs: Any) -> Any:
            self.enter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.exit(name)
        return timed

    def hook(self, module: nn.Module, name: str) -> None:
        """Time every call of ``module`` as section ``name`` (forward pre- and post-hooks)."""
        module.register_forward_pre_hook(lambda *_: self.enter())
        module.register_forward_hook(lambda *_: self.exit(name))

    def take(self) -> dict[str, float]:
        totals, self._totals = dict(self._totals), defaultdict(float)
        return totals


@dataclass(frozen=True)
class Families:
    """The model builders being compared (the real ones by default; tests pass stand-ins).

    ``time_power_iteration(model, sections)`` makes the power iteration that ``model`` runs inside
    its training-mode forward a section named :data:`POWER_ITERATION` of ``sections``.
    """

    make_residual: Callable[..., Flow]
    configure_logdet: Callable[..., Any]
    make_quar: Callable[..., Flow]
    residual_plain_forward: Callable[[Flow, Tensor], Tensor]
    quar_plain_forward: Callable[[Flow, Tensor], Tensor]
    time_power_iteration: Callable[[nn.Module, Sections], None]


#: Both families use ELU (QuAR's blocks offer ELU, softplus and identity; LipSwish is residual-only),
#: so that the two models differ only in their masks and log-det computation.
ACTIVATION = "elu"


def _residual_plain_forward(model: Flow, x: Tensor) -> Tensor:
    """z of a residual model with every block computing x + g(x) and no log-det (the blocks' own g)."""
    from flowspec.accelerated.residual import ResidualBlock

    for child in model.flows:
        x = x + child._g(x, child._params()) if isinstance(child, ResidualBlock) else child(x)[0]
    return x


def _time_real_power_iteration(model: nn.Module, sections: Sections) -> None:
    """The residual layers' normalisers (which iterate in every training-mode call) and the QuAR
    blocks' ``refresh_norms`` (which their forward calls after a weight change) as sections."""
    from flowspec.accelerated.lipschitz import LipschitzNormalizer
    from flowspec.accelerated.quar import QuARConv, QuARMLP

    for module in model.modules():
        if isinstance(module, LipschitzNormalizer):
            sections.hook(module, POWER_ITERATION)
        elif isinstance(module, (QuARMLP, QuARConv)):
            module.refresh_norms = sections.wrap(POWER_ITERATION, module.refresh_norms)


def real_families() -> Families:
    """:mod:`flowspec.accelerated.residual` and :mod:`flowspec.accelerated.quar`: conv models
    single-scale and without their own logit (:func:`build_model` puts the logit and the squeeze in front)."""
    from flowspec.accelerated import quar, residual

    def single_scale(make: Callable[..., Flow]) -> Callable[..., Flow]:
        def build(arch: str, shape: tuple[int, ...], **kw: Any) -> Flow:
            extra = {"n_scales": 1, "logit": False} if arch == "conv" else {}
            return make(arch, shape, activation=ACTIVATION, **extra, **kw)
        return build

    return Families(
        make_residual=single_scale(residual.make_model),
        configure_logdet=residual.configure_logdet,
        make_quar=single_scale(quar.make_model),
        residual_plain_forward=_residual_plain_forward,
        quar_plain_forward=quar.plain_forward,
        time_power_iteration=_time_real_power_iteration,
    )


def configure_residual(model: nn.Module, families: Families, n_exact_terms: int) -> None:
    """Roulette estimator with ``n_exact_terms`` exact terms, geometric(0.5) tail, Neumann gradients
    with backward-in-forward; every other setting (the draw mode among them) is the library's default."""
    families.configure_logdet(
        model, estimator="roulette", n_exact_terms=n_exact_terms, n_samples=1, dist="geometric",
        dist_param=0.5, neumann_grad=True, grad_in_forward=True,
    )


def draw_mode(model: nn.Module) -> str | None:
    """The roulette draw mode in the ``config()`` of the first block of ``model`` with a log-det
    estimator setting (``set_logdet``), if that config reports one."""
    for module in model.modules():
        if isinstance(module, Flow) and callable(getattr(module, "set_logdet", None)):
            draw = module.config().get("draw")
            return None if draw is None else str(draw)
    return None


def build_model(family: str, case: Case, settings: Settings, families: Families) -> Flow:
    """The ``"residual"`` or ``"quar"`` model of ``case``: logit → (conv: 2×2 squeeze) → the family's flow.

    Both families get the same number of blocks, hidden width and coefficient (QuAR's σ); conv
    blocks see the squeezed image (4C channels). Input validation is off (the hot-path setting).
    """
    common = dict(n_blocks=settings.n_blocks, hidden_factor=settings.hidden_factor)
    prefix: list[Flow] = [Logit(case.shape, 0.05)]
    if case.arch == "conv":
        prefix.append(Squeeze(*case.shape))
    shape = tuple(prefix[-1].latent_shape)
    if family == "residual":
        flow = families.make_residual(case.arch, shape, coeff=settings.coeff, **common)
    elif family == "quar":
        flow = families.make_quar(case.arch, shape, sigma=settings.coeff, norm=settings.quar_norm,
                                  recompute=case.arch in settings.quar_recompute, **common)
    else:
        raise ConfigError(f"family must be 'residual' or 'quar', got {family!r}")
    if tuple(flow.event_shape) != shape or tuple(flow.domain) != (None, None):
        raise ConfigError(f"the {family} model must take unconstrained inputs of shape {shape} (the logit and the "
                          f"squeeze come first), got shape {tuple(flow.event_shape)} and domain {flow.domain}")
    model = Sequential([*prefix, flow]).to(dtype=settings.dtype, device=settings.device)
    for module in model.modules():
        if isinstance(module, Flow):
            module.validate_args = False
    return model


def initialize(model: Flow, x: Tensor) -> None:
    """Data-dependent initialisation (ActNorm) from ``x``: one training-mode forward without gradients."""
    model.train()
    with torch.no_grad():
        model(x)


def block_input(model: Flow, x: Tensor) -> Tensor:
    """What the family's flow of :func:`build_model` receives for data ``x`` (logit, squeeze)."""
    with torch.no_grad():
        for child in model.flows[:-1]:
            x = child(x)[0]
    return x


def batch(case: Case, settings: Settings, size: int, key: str) -> Tensor:
    """A uniformly dequantised batch of random 8-bit data of ``case``'s shape."""
    from flowspec.conformance.seeding import seed_for

    g = torch.Generator().manual_seed(seed_for("bench", case.label, size, key))
    k = torch.randint(0, 256, (size, *case.shape), generator=g)
    return training.dequantize(k, dtype=settings.dtype, generator=g).to(settings.device)


def seed_torch(*keys: object) -> None:
    """Seed torch's global generators (the roulette draws N and the probes from them)."""
    from flowspec.conformance.seeding import seed_for

    torch.manual_seed(seed_for("bench", *keys))


# ----------------------------------------------------------------------------- timed calls

class Trainer:
    """A model with its Adam optimiser and Polyak average (decay 0.999, QuAR App. A.1).

    ``step(x)`` is one :func:`training.train_step`; ``timed_step(x)`` runs the same operations
    with each part bracketed by device synchronisations and returns the parts' seconds
    (:data:`TRAIN_PARTS`, adding up to the step's own span). The test evaluation uses
    ``polyak.model()``, copied before the power iteration is made a section of the trained model.
    """

    def __init__(self, model: Flow, lr: float, decay: float = 0.999):
        self.model = model
        self.optimizer = training.adam(model, lr=lr)
        self.polyak = training.Polyak(model, decay)
        self.sections: Sections | None = None

    def step(self, x: Tensor) -> Tensor:
        return training.train_step(self.model, self.optimizer, x, polyak=self.polyak)

    def time_sections(self, families: Families, sync: Callable[[], None]) -> None:
        """Make the model's power iteration a section of :meth:`timed_step` (once)."""
        if self.sections is None:
            self.sections = Sections(sync)
            families.time_power_iteration(self.model, self.sections)

    def timed_step(self, x: Tensor) -> dict[str, float]:
        if self.sections is None:
            raise RuntimeError("timed_step needs time_sections() first")
        sync, model, optimizer = self.sections.sync, self.model, self.optimizer
        model.train()
        self.sections.take()
        sync()
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = training.bpd_of(model, x).mean()
        sync()
        t1 = time.perf_counter()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        optimizer.step()
        sync()
        t3 = time.perf_counter()
        self.polyak.update(model)
        sync()
        t4 = time.perf_counter()
        power = self.sections.take().get(POWER_ITERATION, 0.0)
        return {"forward + log-det": t1 - t0 - power, POWER_ITERATION: power, "backward": t2 - t1,
                "optimizer": t3 - t2, "Polyak update": t4 - t3}

    def resident(self) -> list[Tensor]:
        """Parameters, buffers and optimiser state: memory that a step does not add."""
        state = [t for s in self.optimizer.state.values() for t in s.values() if isinstance(t, Tensor)]
        return memory.model_tensors(self.model) + state


class Evaluator:
    """The test evaluation of a (Polyak-averaged) model, ``timed_call`` returning its parts: the
    prefix and each kind of child of the family's flow as sections, the rest (the base
    log-density and bits per dimension) as what remains of the call's own span."""

    def __init__(self, model: Flow, x: Tensor, sync: Callable[[], None]):
        self.model, self.x = model, x
        self.sections = Sections(sync)
        family_flow = model.flows[-1]
        for child in [*model.flows[:-1], *getattr(family_flow, "flows", [family_flow])]:
            self.sections.hook(child, type(child).__name__)

    def call(self) -> Tensor:
        return training.evaluate(self.model, self.x)

    def timed_call(self) -> dict[str, float]:
        sync = self.sections.sync
        self.sections.take()
        sync()
        start = time.perf_counter()
        self.call()
        sync()
        total = time.perf_counter() - start
        parts = self.sections.take()
        parts[EVAL_REST] = total - sum(parts.values())
        return parts


class PartsLog:
    """The parts that timed calls return, summed per round (:func:`timing.interleaved`'s
    ``on_round``); calls before the first round (warm-up, calibration) are not kept."""

    def __init__(self) -> None:
        self.rounds: list[dict[str, float]] = []
        self.calls: list[int] = []

    def start_round(self, r: int) -> None:
        self.rounds.append(defaultdict(float))
        self.calls.append(0)

    def record(self, call: Callable[[], dict[str, float]]) -> Callable[[], None]:
        def recorded() -> None:
            parts = call()
            if self.rounds:
                for name, seconds in parts.items():
                    self.rounds[-1][name] += seconds
                self.calls[-1] += 1
        return recorded

    def per_call(self) -> list[dict[str, float]]:
        """Each round's mean seconds per call of every part."""
        return [{k: v / n for k, v in parts.items()} for parts, n in zip(self.rounds, self.calls)]


# ----------------------------------------------------------------------------- results

@dataclass(frozen=True)
class Spread:
    """Median and 10–90 % spread of a time over rounds (seconds)."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> "Spread":
        low, median, high = timing.spread(values)
        return cls(median, low, high)


@dataclass(frozen=True)
class Phase:
    """One model's training step or test evaluation: time over rounds, its parts, their sum, memory."""

    seconds: Spread
    parts: dict[str, Spread]
    parts_sum: Spread
    peak_bytes: int
    saved_bytes: int


def _phase(times: Sequence[float], log: PartsLog, peak: int, saved: int) -> Phase:
    rounds = log.per_call()
    names = list(dict.fromkeys(k for r in rounds for k in r))
    parts = {k: Spread.of([r.get(k, 0.0) for r in rounds]) for k in names}
    return Phase(Spread.of(times), parts, Spread.of([sum(r.values()) for r in rounds]), peak, saved)


@dataclass(frozen=True)
class CaseResult:
    """Both models on one case: the phases and the per-round ratios' summaries."""

    case: Case
    train: dict[str, Phase]
    test: dict[str, Phase]
    ratios: dict[str, timing.Summary]
    warmup_steps: int
    draw: str | None = None


@dataclass(frozen=True)
class Target:
    """A threshold on one of a case's ratios; ``scope`` says on which cases it is a target or a floor."""

    name: str
    ratio: str
    threshold: float
    at_most: bool
    scope: Callable[[Case], str | None]


def _large(case: Case) -> str:
    return "target" if case.arch == "conv" or case.dim >= 256 else "floor"


TARGETS = (
    Target("QuAR test-time log-likelihood ≥ 30× faster than the residual flow's evaluation", "test_speedup",
           30.0, False, _large),
    Target("QuAR training step ≥ 2.5× faster than the residual flow's", "train_speedup", 2.5, False, _large),
    Target("QuAR forward + log-det ≤ 1.2× the plain forward of the same masked network", "quar_overhead",
           1.2, True, lambda case: "target"),
    Target("QuAR training memory (allocator peak) ≤ 1.0× the residual flow's", "train_memory", 1.0, True,
           lambda case: "target"),
)


@dataclass(frozen=True)
class Verdict:
    """One target on one case: the figure with its spread and the verdict."""

    target: str
    case: str
    scope: str
    threshold: float
    at_most: bool
    median: float
    low: float
    high: float
    verdict: str


def verdicts(results: Sequence[CaseResult]) -> list[Verdict]:
    """Every target on every case in its scope, judged by :func:`timing.verdict` on the spread."""
    out = []
    for target in TARGETS:
        for res in results:
            scope = target.scope(res.case)
            if scope is None:
                continue
            s = res.ratios[target.ratio]
            out.append(Verdict(target.name, res.case.label, scope, target.threshold, target.at_most, s.median, s.low,
                               s.high, timing.verdict(s.low, s.high, target.threshold, at_most=target.at_most)))
    return out


def ratio_summaries(train: dict[str, list[float]], test: dict[str, list[float]], overhead: dict[str, list[float]],
                    peaks: dict[str, int]) -> dict[str, timing.Summary]:
    """Per-round ratios: residual / QuAR time (training, test), QuAR full / plain forward, and the
    memory ratio QuAR / residual (one measurement: its spread is the value itself)."""
    by = {t.ratio: t for t in TARGETS}

    def summary(key: str, values: Sequence[float]) -> timing.Summary:
        return timing.summarize(values, by[key].threshold, at_most=by[key].at_most)

    memory_ratio = peaks["quar"] / peaks["residual"] if peaks["residual"] > 0 else math.inf
    return {
        "train_speedup": summary("train_speedup", timing.round_ratios(train["residual"], train["quar"])),
        "test_speedup": summary("test_speedup", timing.round_ratios(test["residual"], test["quar"])),
        "quar_overhead": summary("quar_overhead", timing.round_ratios(overhead["full"], overhead["plain"])),
        "train_memory": summary("train_memory", [memory_ratio]),
    }


# ----------------------------------------------------------------------------- one case

def _timed_rounds(calls: dict[str, Callable[[], dict[str, float]]], settings: Settings,
                  sync: Callable[[], None]) -> tuple[dict[str, list[float]], dict[str, PartsLog]]:
    """:func:`timing.interleaved` over calls that return their parts; the times and the parts per round."""
    logs = {name: PartsLog() for name in calls}

    def on_round(r: int) -> None:
        for log in logs.values():
            log.start_round(r)

    recorded = {name: logs[name].record(call) for name, call in calls.items()}
    times = timing.interleaved(recorded, settings.rounds, settings.min_time, sync, on_round=on_round)
    return times, logs


def _overhead_rounds(model: Flow, x: Tensor, settings: Settings, families: Families,
                     sync: Callable[[], None]) -> dict[str, list[float]]:
    """QuAR flow's forward + log-det and the same masked network's plain forward, no_grad, in rounds."""
    flow, z = model.flows[-1], block_input(model, x)
    flow.eval()

    def full() -> None:
        with torch.no_grad():
            flow(z)

    def plain() -> None:
        with torch.no_grad():
            families.quar_plain_forward(flow, z)

    return timing.interleaved({"full": full, "plain": plain}, settings.rounds, settings.min_time, sync)


def _memory(step: Callable[[], Any], device: str, resident: Sequence[Tensor] = ()) -> memory.MemoryReport:
    """:func:`memory.measure` of one step, with the profiler's start and stop lines kept off stderr."""
    with timing.quiet_stderr():
        return memory.measure(step, device, resident=resident)


def _real_step(trainer: Trainer, x: Tensor) -> Callable[[], dict[str, float]]:
    """One more real training step of ``trainer`` on ``x``, returning its parts."""
    return lambda: trainer.timed_step(x)


def run_case(case: Case, settings: Settings, families: Families) -> CaseResult:
    """Build both models of ``case``, train each ``warmup_steps`` real steps, then measure (module docstring)."""
    sync = timing.sync_for(settings.device)
    seed_torch(case.label, "build")
    models = {f: build_model(f, case, settings, families) for f in FAMILIES}
    x_train = batch(case, settings, case.train_batch, "train")
    x_test = batch(case, settings, case.test_batch, "test")
    configure_residual(models["residual"], families, settings.train_terms)
    trainers = {f: Trainer(m, settings.lr) for f, m in models.items()}
    seed_torch(case.label, "train")
    for _ in range(settings.warmup_steps):
        for trainer in trainers.values():
            trainer.step(x_train)
    for trainer in trainers.values():
        trainer.time_sections(families, sync)
    train_s, train_logs = _timed_rounds({f: _real_step(t, x_train) for f, t in trainers.items()}, settings, sync)
    train_mem = {f: _memory(lambda t=t: t.step(x_train), settings.device, t.resident()) for f, t in trainers.items()}

    averaged = {f: t.polyak.model() for f, t in trainers.items()}
    configure_residual(averaged["residual"], families, settings.eval_terms)
    overhead = _overhead_rounds(averaged["quar"], x_test, settings, families, sync)  # before the sections' hooks
    evaluators = {f: Evaluator(m, x_test, sync) for f, m in averaged.items()}
    seed_torch(case.label, "test")
    test_s, test_logs = _timed_rounds({f: e.timed_call for f, e in evaluators.items()}, settings, sync)
    test_mem = {f: _memory(e.call, settings.device) for f, e in evaluators.items()}

    peaks = {f: train_mem[f].peak_bytes for f in FAMILIES}
    train = {f: _phase(train_s[f], train_logs[f], train_mem[f].peak_bytes, train_mem[f].saved_bytes) for f in FAMILIES}
    test = {f: _phase(test_s[f], test_logs[f], test_mem[f].peak_bytes, test_mem[f].saved_bytes) for f in FAMILIES}
    return CaseResult(case, train, test, ratio_summaries(train_s, test_s, overhead, peaks), settings.warmup_steps,
                      draw_mode(models["residual"]))


# ----------------------------------------------------------------------------- reporting

def _mb(n: float) -> str:
    return f"{n / 2**20:.2f} MB"


def _ms(s: Spread) -> str:
    return f"{s.median * 1e3:.2f} [{s.low * 1e3:.2f}, {s.high * 1e3:.2f}]"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0 else "–"


def _summary(s: timing.Summary) -> str:
    return f"{s.median:.2f} [{s.low:.2f}, {s.high:.2f}]"


def _columns(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def format_case(result: CaseResult) -> str:
    """Table 2 of the QuAR paper in shape, for one case: time (median [p10, p90] ms) and memory,
    residual, QuAR and their ratio, then the ratios over rounds."""
    case, tr, te = result.case, result.train, result.test
    rows = [("", "", "residual", "QuAR", "QuAR/residual")]
    for phase, ph in (("TRAIN", tr), ("TEST", te)):
        r, q = ph["residual"], ph["quar"]
        rows += [
            (phase, "memory (peak)", _mb(r.peak_bytes), _mb(q.peak_bytes), _ratio(q.peak_bytes, r.peak_bytes)),
            ("", "saved for backward", _mb(r.saved_bytes), _mb(q.saved_bytes), _ratio(q.saved_bytes, r.saved_bytes)),
            ("", "time per batch (ms)", _ms(r.seconds), _ms(q.seconds), _ratio(q.seconds.median, r.seconds.median)),
        ]
    ratios = result.ratios
    lines = [f"{case.label} (D = {case.dim}): training batch {case.train_batch}, test batch {case.test_batch}, "
             f"after {result.warmup_steps} warm-up steps", *_columns(rows),
             f"per-round ratios, median [p10, p90]: residual/QuAR training {_summary(ratios['train_speedup'])}, "
             f"test {_summary(ratios['test_speedup'])}; QuAR full/plain forward {_summary(ratios['quar_overhead'])}"]
    return "\n".join(lines)


def format_breakdown(result: CaseResult) -> str:
    """Where the time of each phase goes: parts (median [p10, p90] ms per call), their sum and the whole call."""
    lines = [f"breakdown, {result.case.label} (ms per call, median [p10, p90] over rounds)"]
    for label, phase in (("training step", result.train), ("test evaluation", result.test)):
        for family in FAMILIES:
            ph = phase[family]
            lines.append(f"  {label}, {family}: " + "; ".join(f"{k} {_ms(v)}" for k, v in ph.parts.items()))
            lines.append(f"    sum of parts {_ms(ph.parts_sum)}; whole call {_ms(ph.seconds)}")
    return "\n".join(lines)


def format_verdicts(found: Sequence[Verdict]) -> str:
    lines = ["targets (median [p10, p90]; met/missed only when the whole spread allows):"]
    for name in dict.fromkeys(v.target for v in found):
        lines.append(f"  {name}")
        for v in (v for v in found if v.target == name):
            kind = "" if v.scope == "target" else " (floor)"
            lines.append(f"    {v.case}{kind}: {v.median:.2f}× [{v.low:.2f}, {v.high:.2f}] → {v.verdict}")
    return "\n".join(lines)


def totals(found: Sequence[Verdict]) -> dict[str, int]:
    return {k: sum(v.verdict == k for v in found if v.scope == "target") for k in timing.VERDICTS}


def to_json(results: Sequence[CaseResult], header: dict[str, Any]) -> dict[str, Any]:
    """The whole table as plain data: header, cases (times, parts, memory, ratios), targets, totals."""
    found = verdicts(results)
    cases = []
    for res in results:
        entry = asdict(res)
        entry["case"] = {**asdict(res.case), "label": res.case.label, "dim": res.case.dim}
        cases.append(entry)
    return {"header": header, "cases": cases, "targets": [asdict(v) for v in found], "totals": totals(found)}


def plot(sweep: Sequence[CaseResult], path: str) -> None:
    """Time (median) and peak memory against input size D, for both models, training and test, per architecture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, FuncFormatter, NullFormatter

    def minor_label(value: float, _: int) -> str:  # label 2·10^k and 5·10^k only, so labels never crowd
        return f"{value:g}" if value > 0 and round(value / 10 ** math.floor(math.log10(value))) in (2, 5) else ""

    archs = [a for a in ARCHS if any(r.case.arch == a for r in sweep)]
    fig, axes = plt.subplots(2, len(archs), figsize=(6.0 * len(archs), 8.0), squeeze=False)
    styles = {"residual": ("tab:red", "o"), "quar": ("tab:blue", "s")}
    for col, arch in enumerate(archs):
        rows = sorted((r for r in sweep if r.case.arch == arch), key=lambda r: r.case.dim)
        dims = [r.case.dim for r in rows]
        for family, (color, marker) in styles.items():
            for phase, line in (("train", "-"), ("test", "--")):
                label = f"{'QuAR' if family == 'quar' else family} {'training step' if phase == 'train' else 'test evaluation'}"
                phases = [getattr(r, phase)[family] for r in rows]
                axes[0, col].plot(dims, [p.seconds.median * 1e3 for p in phases], line, color=color, marker=marker,
                                  label=label)
                axes[1, col].plot(dims, [p.peak_bytes / 2**20 for p in phases], line, color=color, marker=marker,
                                  label=label)
        axes[0, col].set_title(f"{arch}: inputs {', '.join(_shape(r.case.shape) for r in rows)}")
        axes[0, col].set_ylabel("time per batch (ms, median over rounds)")
        axes[1, col].set_ylabel("allocator peak above baseline (MB)")
        for ax in axes[:, col]:
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks(dims, [str(d) for d in dims])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(FuncFormatter(minor_label))
            ax.set_xlabel("input size D (entries per sample)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8, loc="best")
    fig.suptitle("residual flow vs QuAR flow: training step and test evaluation")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- command line

BASE_SETTINGS = Settings()
QUICK_WARMUP_STEPS = 5

#: The table's cases (targets are judged on these; batch sizes as in the QuAR paper's Table 2) and the
#: input sizes swept for the plot (with the batch sizes of the architecture's first case).
DEFAULT_CASES = (Case("mlp", (64,), 96, 256), Case("mlp", (256,), 96, 256), Case("conv", (3, 16, 16), 96, 256))
SWEEP = {"mlp": ((64,), (128,), (256,)), "conv": ((3, 8, 8), (3, 16, 16), (3, 24, 24))}
QUICK_SWEEP = {"mlp": ((64,), (256,)), "conv": ((3, 8, 8), (3, 16, 16))}


def _sweep_cases(arch: str, shapes: Sequence[tuple[int, ...]]) -> list[Case]:
    base = next(c for c in DEFAULT_CASES if c.arch == arch)
    return [replace(base, shape=tuple(shape)) for shape in shapes]


def _shape(shape: Sequence[int]) -> str:
    return "×".join(map(str, shape))


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``flowspec bench compare``."""
    s = BASE_SETTINGS
    p.add_argument("--quick", action="store_true",
                   help=f"CI-sized run: {QUICK_WARMUP_STEPS} warm-up steps (not a steady state), "
                        f"{timing.MIN_ROUNDS} rounds, a shorter sweep")
    p.add_argument("--archs", nargs="+", choices=ARCHS, default=list(ARCHS), help="architectures (default: both)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default: %(default)s, for stable figures)")
    p.add_argument("--rounds", type=int, default=None,
                   help=f"interleaved rounds, ≥ {timing.MIN_ROUNDS} (default {s.rounds}; --quick {timing.MIN_ROUNDS})")
    p.add_argument("--warmup-steps", type=int, default=None,
                   help=f"real training steps before timing (default {s.warmup_steps}; --quick {QUICK_WARMUP_STEPS})")
    p.add_argument("--min-time", type=float, default=s.min_time,
                   help="seconds of one measurement at least (default: %(default)s)")
    p.add_argument("--quar-norm", choices=["full", "diagonal"], default=s.quar_norm,
                   help="QuAR norm option: full = (a) full masked weight, Lip(F) ≤ σ; diagonal = (b) diagonal "
                        "blocks only (default: %(default)s)")
    p.add_argument("--quar-recompute", nargs="*", choices=ARCHS, default=list(s.quar_recompute),
                   help="architectures whose QuAR blocks run again in backward rather than keep their graph "
                        "(the block setting recompute; default: %(default)s)")
    p.add_argument("--plot", default="bench-compare.png", help="PNG of time and memory against input size")
    p.add_argument("--json", metavar="PATH", help="also write the whole table as JSON")


def settings_from(args: argparse.Namespace) -> Settings:
    """The run's :class:`Settings`; ``ConfigError`` for too few rounds, negative warm-up or a missing GPU."""
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but torch sees no CUDA device")
    rounds = args.rounds if args.rounds is not None else (timing.MIN_ROUNDS if args.quick else BASE_SETTINGS.rounds)
    if rounds < timing.MIN_ROUNDS:
        raise ConfigError(f"--rounds must be ≥ {timing.MIN_ROUNDS} (a 10–90 % spread needs them), got {rounds}")
    warmup = args.warmup_steps if args.warmup_steps is not None else (
        QUICK_WARMUP_STEPS if args.quick else BASE_SETTINGS.warmup_steps)
    if warmup < 0:
        raise ConfigError(f"--warmup-steps must be ≥ 0, got {warmup}")
    return replace(BASE_SETTINGS, quar_norm=args.quar_norm, quar_recompute=tuple(args.quar_recompute), rounds=rounds, warmup_steps=warmup,
                   min_time=args.min_time, device=device)


def header(settings: Settings) -> dict[str, Any]:
    """What the figures depend on: hardware and threads, and the measurement and model settings."""
    values = {k: (str(v) if isinstance(v, torch.dtype) else v) for k, v in asdict(settings).items()}
    return {"hardware": timing.hardware(settings.device), "settings": values,
            "spread": f"{timing.LOW_Q:.0%}-{timing.HIGH_Q:.0%} percentiles of per-round values"}


def _print_header(settings: Settings, head: dict[str, Any]) -> None:
    option = "(a) full masked weight, Lip(F) ≤ σ" if settings.quar_norm == "full" else "(b) diagonal blocks"
    print(f"flowspec bench compare: {timing.describe_hardware(head['hardware'])}; {settings.dtype}")
    print(f"models: logit → [conv: 2×2 squeeze] → ActNorm → {settings.n_blocks} × (block → ActNorm); blocks "
          f"with 2 hidden layers of {settings.hidden_factor}× the input's width (conv: 3×3, 1×1, 3×3), "
          f"{ACTIVATION.upper()}, coefficient {settings.coeff} (QuAR: σ); QuAR norm option {option}; QuAR blocks "
          f"recomputed in backward: {', '.join(settings.quar_recompute) or 'none'}")
    print(f"residual: training {settings.train_terms} exact terms + roulette (geometric, q = 0.5), Neumann "
          f"gradients with backward-in-forward; test {settings.eval_terms} exact terms + roulette tail; "
          f"QuAR: exact log-det by diagonal propagation")
    print(f"time: {settings.warmup_steps} warm-up training steps, then {settings.rounds} interleaved rounds "
          f"(measurements ≥ {settings.min_time:g} s); ratios per round, median [p10, p90]; memory: allocator "
          f"peak above the pre-step baseline and bytes saved for backward, one step\n")


def run_command(args: argparse.Namespace, families: Families | None = None) -> int:
    """``flowspec bench compare``: the table, targets and breakdowns; ``--json`` and the plot. Exit 2
    on bad settings."""
    try:
        settings = settings_from(args)
        for option, path in (("--json", args.json), ("--plot", args.plot)):
            if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
                raise ConfigError(f"{option} {path}: the folder {os.path.dirname(os.path.abspath(path))} does not exist")
    except ConfigError as exc:
        print(f"flowspec bench compare: {exc}", file=sys.stderr)
        return 2
    timing.configure(settings.device, args.threads)
    families = families or real_families()
    head = header(settings)
    _print_header(settings, head)
    results = {}
    for case in (c for c in DEFAULT_CASES if c.arch in args.archs):
        results[case] = run_case(case, settings, families)
        res = results[case]
        print(f"{format_case(res)}\nresidual roulette draw: {res.draw or 'not reported'}\n", flush=True)
    table = list(results.values())
    found = verdicts(table)
    print(format_verdicts(found))
    print("totals (target rows): " + ", ".join(f"{k} {v}" for k, v in totals(found).items()) + "\n")
    missed = dict.fromkeys(v.case for v in found if v.verdict != "met")
    for res in table:
        if res.case.label in missed:
            print(format_breakdown(res) + "\n")
    sweep_shapes = QUICK_SWEEP if args.quick else SWEEP
    sweep = [results.get(case) or run_case(case, settings, families)
             for arch in args.archs for case in _sweep_cases(arch, sweep_shapes[arch])]
    plot(sweep, args.plot)
    print(f"wrote {args.plot}: time and memory against input size (" + "; ".join(r.case.label for r in sweep) + ")")
    timing.write_json(args.json, to_json(table, head) if args.json else None)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python benchmarks/compare.py [options]``, the same as ``flowspec bench compare``."""
    return timing.script_main("compare", __doc__, add_arguments, run_command, argv)


if __name__ == "__main__":
    raise SystemExit(main())
