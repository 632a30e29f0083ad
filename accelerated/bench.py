"""Residual flows against QuAR flows of the same architecture, side by side (``flowspec bench compare``).

For each case (an MLP on vectors, a convolutional model on images) the command builds a residual
flow and a QuAR flow with the same layout — logit → (conv: 2×2 squeeze) → ActNorm → n_blocks ×
(block → ActNorm), blocks with two hidden layers of hidden_factor × the input's width (conv:
3×3, 1×1, 3×3 convolutions), ELU, Lipschitz coefficient 0.97 (QuAR's σ) — feeds both the same
uniformly dequantised batches in one process, and reports what the QuAR paper's Table 2 reports:
time per batch and memory, for a training step and for a test evaluation, residual vs QuAR with
their ratios; then where the time goes, and whether the targets below are met.

What is measured:

* **training step** (:func:`flowspec.accelerated.training.train_step`): forward with log-det, mean
  bits per dimension, backward, Adam step, Polyak update. Residual: 2 exact series terms plus the Russian-roulette
  tail (geometric p(N), q = 0.5; N is drawn per sample and a batch costs its largest N), Neumann
  gradient series with backward-in-forward (Residual Flows, eq. 6, 8, 9). QuAR: exact log-det by
  diagonal propagation (QuAR Sec. 4.1), norm option (a) by default. Residual layers run their
  power iteration in every training-mode forward, QuAR blocks at the first forward after a weight
  change; either way once per step, after the weights moved.
* **test evaluation** (:func:`flowspec.accelerated.training.evaluate`, no gradients) of each
  model's Polyak average (decay 0.999, norms recomputed for the averaged weights): residual with
  20 exact terms plus the roulette tail (Residual Flows, Sec. 5); QuAR exact.
* **time**: median wall-clock seconds of interleaved calls after warm-up calls, synchronising CUDA.
* **memory** (:mod:`flowspec.accelerated.memory`): the allocator's peak above the pre-step baseline
  and the bytes saved for backward.
* **cost breakdown**: training — forward + log-det (graph recorded), backward, Adam step, Polyak
  update, and the power iteration on the moved weights as the rest of the step (see
  :func:`train_breakdown`); test — the plain forward of the same network without
  log-det, and the rest of the evaluation (the log-det).

Targets (benchmarks issue): QuAR's test evaluation ≥ 20× faster than the residual flow's; QuAR's
training step ≥ 2× faster; QuAR forward + log-det ≤ 1.3× a plain forward of the same masked
network under no_grad; QuAR training memory ≤ 1.0× the residual flow's; the residual flow's
training-step memory flat within 5 % from 2 to 20 exact terms.
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from flowspec.errors import ConfigError

from . import memory, training
from .base import Flow
from .elementwise import Logit
from .sequential import Sequential
from .squeeze import Squeeze

ARCHS = ("mlp", "conv")


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
    """Model and measurement settings shared by both families."""

    n_blocks: int = 4
    hidden_factor: int = 4
    coeff: float = 0.97
    quar_norm: str = "full"
    train_terms: int = 2
    eval_terms: int = 20
    flat_terms: tuple[int, int] = (2, 20)
    repeats: int = 5
    warmup: int = 2
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    lr: float = 1e-3


# ----------------------------------------------------------------------------- the two families

@dataclass(frozen=True)
class Families:
    """The model builders being compared (the real ones by default; tests pass stand-ins).

    ``power_iteration(model)`` runs the warm-started power iteration of every constrained layer to
    its tolerance; ``residual_pi_in_forward`` says that the residual layers run it in every
    training-mode forward (QuAR blocks run it at the first forward after a weight change).
    """

    make_residual: Callable[..., Flow]
    configure_logdet: Callable[..., Any]
    make_quar: Callable[..., Flow]
    residual_plain_forward: Callable[[Flow, Tensor], Tensor]
    quar_plain_forward: Callable[[Flow, Tensor], Tensor]
    power_iteration: Callable[[nn.Module], Any]
    residual_pi_in_forward: bool = True


#: Both families use ELU (QuAR's blocks offer ELU, softplus and identity; LipSwish is residual-only),
#: so that the two models differ only in their masks and log-det computation.
ACTIVATION = "elu"


def _residual_plain_forward(model: Flow, x: Tensor) -> Tensor:
    """z of a residual model with every block computing x + g(x) and no log-det (the blocks' own g)."""
    from .residual import ResidualBlock

    for child in model.flows:
        x = x + child._g(x, child._params()) if isinstance(child, ResidualBlock) else child(x)[0]
    return x


def real_families() -> Families:
    """:mod:`.residual` and :mod:`.quar`: conv models single-scale and without their own logit
    (:func:`build_model` puts the logit and the squeeze in front)."""
    from . import quar, residual

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
        power_iteration=training.default_refresh,
    )


def configure_residual(model: nn.Module, families: Families, n_exact_terms: int) -> None:
    """Roulette estimator with ``n_exact_terms`` exact terms, geometric(0.5) tail, Neumann + backward-in-forward."""
    families.configure_logdet(
        model, estimator="roulette", n_exact_terms=n_exact_terms, n_samples=1, dist="geometric",
        dist_param=0.5, neumann_grad=True, grad_in_forward=True,
    )


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
        flow = families.make_quar(case.arch, shape, sigma=settings.coeff, norm=settings.quar_norm, **common)
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


# ----------------------------------------------------------------------------- measuring

FAMILIES = ("residual", "quar")


def synchronize(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fns: Sequence[Callable[[], Any]], device: str | torch.device, *, repeats: int,
               warmup: int) -> list[float]:
    """Median wall-clock seconds of each function over ``repeats`` calls, after ``warmup`` calls.

    The calls are interleaved (f₁, f₂, …, f₁, f₂, …) so that a change of load on a shared machine
    affects every function alike and their ratios stay meaningful.
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times):
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            out.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def _times(settings: Settings, *fns: Callable[[], Any]) -> list[float]:
    return time_calls(fns, settings.device, repeats=settings.repeats, warmup=settings.warmup)


@dataclass(frozen=True)
class Measurement:
    """Time per batch (seconds) and memory (bytes) of one phase."""

    seconds: float
    peak_bytes: int
    saved_bytes: int


def _measurement(seconds: float, fn: Callable[[], Any], settings: Settings,
                 resident: Sequence[Tensor] = ()) -> Measurement:
    report = memory.measure(fn, settings.device, resident=resident)
    return Measurement(seconds, report.peak_bytes, report.saved_bytes)


class Trainer:
    """A model with its Adam optimiser and Polyak average (decay 0.999, QuAR App. A.1):
    ``step(x)`` is one :func:`training.train_step`; the test evaluation uses ``polyak.model()``."""

    def __init__(self, model: Flow, lr: float, decay: float = 0.999):
        self.model = model
        self.optimizer = training.adam(model, lr=lr)
        self.polyak = training.Polyak(model, decay)

    def step(self, x: Tensor) -> Tensor:
        return training.train_step(self.model, self.optimizer, x, polyak=self.polyak)

    def resident(self) -> list[Tensor]:
        """Parameters, buffers and optimiser state: memory that a step does not add."""
        state = [t for s in self.optimizer.state.values() for t in s.values() if isinstance(t, Tensor)]
        return memory.model_tensors(self.model) + state


def train_breakdown(trainer: Trainer, x: Tensor, settings: Settings, step_seconds: float,
                    power_iteration: Callable[[], Any], pi_in_forward: bool) -> dict[str, float]:
    """Additive parts of a training step that took ``step_seconds``: forward + log-det (graph
    recorded, power iteration excluded), backward, Adam step, Polyak update, and the power
    iteration on the moved weights as the rest of the step.

    Repeated forwards do not move the weights, so the power iteration that a residual layer runs in
    each training-mode forward is then the cheap unchanged-weights one; that is taken out of its
    forward. After a real step the iteration needs more rounds (how many depends on how far Adam
    moved the weights), which no separate call reproduces: it is what remains of the step.
    """
    model, optimizer = trainer.model, trainer.optimizer

    def forward() -> Tensor:
        model.train()
        return training.bpd_of(model, x).mean()

    def forward_backward() -> None:
        optimizer.zero_grad(set_to_none=True)
        forward().backward()

    t_forward, t_forward_backward = _times(settings, forward, forward_backward)
    t_unchanged = _times(settings, power_iteration)[0] if pi_in_forward else 0.0
    t_optimizer, t_polyak = _times(settings, optimizer.step, lambda: trainer.polyak.update(model))
    parts = {
        "forward + log-det": max(t_forward - t_unchanged, 0.0),
        "backward": max(t_forward_backward - t_forward, 0.0),
        "optimizer": t_optimizer,
        "Polyak update": t_polyak,
    }
    parts["power iteration"] = max(step_seconds - sum(parts.values()), 0.0)
    return parts


def evaluation_breakdown(model: Flow, plain: Callable[[], Any], x: Tensor, settings: Settings) -> dict[str, float]:
    """The plain forward of the network (no_grad) and the rest of a test evaluation (the log-det)."""
    model.eval()

    def plain_no_grad() -> None:
        with torch.no_grad():
            plain()

    t_plain, t_eval = _times(settings, plain_no_grad, lambda: training.evaluate(model, x))
    return {"forward": t_plain, "log-det": max(t_eval - t_plain, 0.0)}


# ----------------------------------------------------------------------------- one case

@dataclass(frozen=True)
class ModelResult:
    """Training step and test evaluation of one model, and where the time goes (seconds)."""

    train: Measurement
    test: Measurement
    train_breakdown: dict[str, float]
    test_breakdown: dict[str, float]


@dataclass(frozen=True)
class CaseResult:
    """Both models on one case, QuAR's forward + log-det over its plain forward, and the residual
    training step's peak memory by number of exact terms."""

    case: Case
    residual: ModelResult
    quar: ModelResult
    quar_fwd_logdet_over_plain: float
    residual_train_peak_by_terms: dict[int, int] = field(default_factory=dict)


def _peaks_by_terms(trainer: Trainer, x: Tensor, settings: Settings, families: Families, label: str) -> dict[int, int]:
    """The residual training step's allocator peak for each number of exact terms of the settings."""
    peaks = {}
    for n in settings.flat_terms:
        configure_residual(trainer.model, families, n)
        trainer.step(x)
        seed_torch(label, "terms")
        peaks[n] = memory.peak_bytes(lambda: trainer.step(x), settings.device)
    return peaks


def _quar_overhead(model: Flow, x: Tensor, settings: Settings, families: Families) -> float:
    """time(QuAR flow forward + log-det) / time(the same masked network's plain forward), no_grad."""
    flow, z = model.flows[-1], block_input(model, x)
    flow.eval()
    with torch.no_grad():
        t_full, t_plain = _times(settings, lambda: flow(z), lambda: families.quar_plain_forward(flow, z))
    return t_full / t_plain


def run_case(case: Case, settings: Settings, families: Families) -> CaseResult:
    """Build both models of ``case`` and measure them on the same batches (module docstring).

    The training phase trains each model for a few steps (warm-up and timed calls); the test phase
    evaluates each model's Polyak average, with its norms recomputed, as training would.
    """
    seed_torch(case.label, "build")
    models = {f: build_model(f, case, settings, families) for f in FAMILIES}
    x_train = batch(case, settings, case.train_batch, "train")
    x_test = batch(case, settings, case.test_batch, "test")
    trainers = {f: Trainer(m, settings.lr) for f, m in models.items()}
    steps = {f: (lambda t=t: t.step(x_train)) for f, t in trainers.items()}

    configure_residual(models["residual"], families, settings.train_terms)
    seed_torch(case.label, "train")
    train_s = dict(zip(FAMILIES, _times(settings, *steps.values())))
    train = {f: _measurement(train_s[f], steps[f], settings, trainers[f].resident()) for f in FAMILIES}
    breakdown = {
        f: train_breakdown(trainers[f], x_train, settings, train_s[f],
                           lambda f=f: families.power_iteration(models[f]),
                           f == "residual" and families.residual_pi_in_forward)
        for f in FAMILIES
    }
    peaks = _peaks_by_terms(trainers["residual"], x_train, settings, families, case.label)

    averaged = {f: t.polyak.model() for f, t in trainers.items()}
    configure_residual(averaged["residual"], families, settings.eval_terms)
    evals = {f: (lambda m=m: training.evaluate(m, x_test)) for f, m in averaged.items()}
    seed_torch(case.label, "test")
    test_s = dict(zip(FAMILIES, _times(settings, *evals.values())))
    test = {f: _measurement(test_s[f], evals[f], settings) for f in FAMILIES}
    plains = {"residual": families.residual_plain_forward, "quar": families.quar_plain_forward}
    z = {f: block_input(m, x_test) for f, m in averaged.items()}
    test_parts = {
        f: evaluation_breakdown(averaged[f], lambda f=f: plains[f](averaged[f].flows[-1], z[f]), x_test, settings)
        for f in FAMILIES
    }
    results = {f: ModelResult(train[f], test[f], breakdown[f], test_parts[f]) for f in FAMILIES}
    overhead = _quar_overhead(averaged["quar"], x_test, settings, families)
    return CaseResult(case, results["residual"], results["quar"], overhead, peaks)


# ----------------------------------------------------------------------------- reporting

def _mb(n: float) -> str:
    return f"{n / 2**20:9.2f} MB"


def _ms(s: float) -> str:
    return f"{s * 1e3:9.1f} ms"


def _ratio(quar: float, residual: float) -> str:
    return f"{quar / residual:8.2f}" if residual > 0 else "       –"


def format_case(result: CaseResult) -> str:
    """Table 2 of the QuAR paper in shape, for one case, followed by the cost breakdown."""
    case, r, q = result.case, result.residual, result.quar
    lines = [
        f"{case.label} (D = {case.dim}): training batch {case.train_batch}, test batch {case.test_batch}",
        f"{'':24}{'residual':>12}{'QuAR':>12}{'QuAR/residual':>15}",
    ]
    for phase, rm, qm in (("TRAIN", r.train, q.train), ("TEST", r.test, q.test)):
        rows = (
            ("memory (peak)", _mb(rm.peak_bytes), _mb(qm.peak_bytes), _ratio(qm.peak_bytes, rm.peak_bytes)),
            ("saved for backward", _mb(rm.saved_bytes), _mb(qm.saved_bytes), _ratio(qm.saved_bytes, rm.saved_bytes)),
            ("time per batch", _ms(rm.seconds), _ms(qm.seconds), _ratio(qm.seconds, rm.seconds)),
        )
        for i, (name, a, b, c) in enumerate(rows):
            lines.append(f"{phase if i == 0 else '':7}{name:17}{a:>12}{b:>12}{c:>15}")
    lines.append("cost breakdown (time per batch)")
    phases = (("train", r.train_breakdown, q.train_breakdown), ("test", r.test_breakdown, q.test_breakdown))
    for phase, rb, qb in phases:
        for i, name in enumerate(rb):
            lines.append(f"{phase if i == 0 else '':7}{name:17}{_ms(rb[name]):>12}{_ms(qb[name]):>12}")
    terms = result.residual_train_peak_by_terms
    if terms:
        lines.append("residual training-step peak memory by exact terms: "
                     + ", ".join(f"{n}: {_mb(b).strip()}" for n, b in sorted(terms.items())))
    return "\n".join(lines)


@dataclass(frozen=True)
class Target:
    name: str
    case: str
    value: float
    text: str
    met: bool


def targets(results: Sequence[CaseResult]) -> list[Target]:
    """The QuAR-issue targets, evaluated on each case."""
    out = []
    for res in results:
        r, q, label = res.residual, res.quar, res.case.label
        test_speedup = r.test.seconds / q.test.seconds
        train_speedup = r.train.seconds / q.train.seconds
        mem_ratio = q.train.peak_bytes / r.train.peak_bytes
        out += [
            Target("QuAR test evaluation ≥ 20× faster than residual (20 terms + tail)", label, test_speedup,
                   f"{test_speedup:.1f}×", test_speedup >= 20.0),
            Target("QuAR training step ≥ 2× faster than residual", label, train_speedup,
                   f"{train_speedup:.2f}×", train_speedup >= 2.0),
            Target("QuAR forward + log-det ≤ 1.3× plain forward (no_grad)", label, res.quar_fwd_logdet_over_plain,
                   f"{res.quar_fwd_logdet_over_plain:.2f}×", res.quar_fwd_logdet_over_plain <= 1.3),
            Target("QuAR training memory ≤ 1.0× residual (peak)", label, mem_ratio, f"{mem_ratio:.2f}×",
                   mem_ratio <= 1.0),
        ]
        peaks = res.residual_train_peak_by_terms
        if len(peaks) >= 2:
            lo, hi = min(peaks), max(peaks)
            spread = peaks[hi] / peaks[lo]
            out.append(Target(f"residual training memory flat within 5 % from {lo} to {hi} terms", label, spread,
                              f"{spread:.3f}×", 0.95 <= spread <= 1.05))
    return out


def format_targets(found: Sequence[Target]) -> str:
    lines = ["targets:"]
    for name in dict.fromkeys(t.name for t in found):
        rows = [t for t in found if t.name == name]
        status = "met" if all(t.met for t in rows) else "MISSED"
        detail = "; ".join(f"{t.case}: {t.text} ({'met' if t.met else 'missed'})" for t in rows)
        lines.append(f"  [{status:6}] {name}: {detail}")
    return "\n".join(lines)


def plot(sweep: Sequence[CaseResult], path: str) -> None:
    """Time and peak memory against input size D, for both models, training and test, per architecture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, FuncFormatter, NullFormatter

    def minor_label(value: float, _: int) -> str:  # label 2·10^k and 5·10^k only, so labels never crowd
        return f"{value:g}" if value > 0 and round(value / 10 ** math.floor(math.log10(value))) in (2, 5) else ""

    archs = [a for a in ARCHS if any(r.case.arch == a for r in sweep)]
    fig, axes = plt.subplots(2, len(archs), figsize=(6.0 * len(archs), 8.0), squeeze=False)
    styles = {"residual": ("tab:red", "o"), "QuAR": ("tab:blue", "s")}
    for col, arch in enumerate(archs):
        rows = sorted((r for r in sweep if r.case.arch == arch), key=lambda r: r.case.dim)
        dims = [r.case.dim for r in rows]
        for name, (color, marker) in styles.items():
            results = [r.residual if name == "residual" else r.quar for r in rows]
            for phase, line in (("train", "-"), ("test", "--")):
                label = f"{name} {'training step' if phase == 'train' else 'test evaluation'}"
                axes[0, col].plot(dims, [getattr(m, phase).seconds * 1e3 for m in results], line,
                                  color=color, marker=marker, label=label)
                axes[1, col].plot(dims, [getattr(m, phase).peak_bytes / 2**20 for m in results], line,
                                  color=color, marker=marker, label=label)
        axes[0, col].set_title(f"{arch}: inputs {', '.join(_shape(r.case.shape) for r in rows)}")
        axes[0, col].set_ylabel("time per batch (ms)")
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


def _describe_sizes() -> str:
    lines = [f"  table: {c.label} (training batch {c.train_batch}, test batch {c.test_batch})" for c in DEFAULT_CASES]
    for arch in ARCHS:
        lines.append(f"  plot, {arch}: inputs {', '.join(map(_shape, SWEEP[arch]))} "
                     f"(--quick: {', '.join(map(_shape, QUICK_SWEEP[arch]))})")
    lines.append("  conv inputs (C, H, W) are squeezed 2×2 before the blocks, which see 4C channels at H/2 × W/2")
    return "\n".join(lines)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench compare`` and ``bench peers`` (:func:`load_peers`) to the ``flowspec`` command."""
    bench = subparsers.add_parser("bench", help="benchmarks of the accelerated flows")
    sub = bench.add_subparsers(dest="bench_command", required=True)
    p = sub.add_parser(
        "compare",
        help="residual flow vs QuAR flow of the same architecture: time and memory, training and test",
        description="Residual flow vs QuAR flow of the same architecture, in one process on the same "
                    "batches:\ntime per batch and memory for a training step and a test evaluation "
                    "(the shape of the QuAR paper's Table 2),\na cost breakdown, the targets met or "
                    "missed, and a plot against input size.\n\nSizes:\n" + _describe_sizes()
        + f"\n\nModels: {BASE_SETTINGS.n_blocks} blocks, hidden width {BASE_SETTINGS.hidden_factor}× the "
          f"input's, Lipschitz coefficient {BASE_SETTINGS.coeff} (QuAR σ the same).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="CI-sized run: fewer repeats and a shorter sweep")
    p.add_argument("--archs", nargs="+", choices=ARCHS, default=list(ARCHS), help="architectures (default: both)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default: %(default)s, for stable figures)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (default 5; --quick 2)")
    p.add_argument("--quar-norm", choices=["full", "diagonal"], default="full",
                   help="QuAR norm option: full = (a) full masked weight, Lip(F) ≤ σ; diagonal = (b) diagonal "
                        "blocks only (default: %(default)s)")
    p.add_argument("--plot", default="bench-compare.png", help="PNG of time and memory against input size")
    p.set_defaults(func=run_compare_command)
    _add_peers_parser(sub)


#: ``flowspec bench peers`` runs the comparison of the source checkout's ``benchmarks/peers.py``
#: (``benchmarks/`` is not an installed package), found next to the folder of this package.
PEERS_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "peers.py"
PEERS_MODULE = "flowspec_benchmarks_peers"


def load_peers(path: Path | None = None) -> ModuleType:
    """The module ``benchmarks/peers.py`` (default :data:`PEERS_SCRIPT`) loaded by path, once;
    ``ConfigError`` when flowspec is installed without its source tree."""
    if PEERS_MODULE in sys.modules:
        return sys.modules[PEERS_MODULE]
    path = path or PEERS_SCRIPT
    if not path.is_file():
        raise ConfigError(f"flowspec bench peers needs the source checkout's {path.parent.name}/{path.name}, "
                          f"which is not at {path} (an installed flowspec has no benchmarks/ folder)")
    spec = importlib.util.spec_from_file_location(PEERS_MODULE, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[PEERS_MODULE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[PEERS_MODULE]
        raise
    return module


def _add_peers_parser(sub: argparse._SubParsersAction) -> None:
    """``bench peers``: its options and its run come from :func:`load_peers`; without the script the
    command says why and exits 2."""
    try:
        peers = load_peers()
    except Exception as exc:  # noqa: BLE001 - a missing or broken script must not break the other commands
        p = sub.add_parser("peers", help="flowspec against zuko and nflows (unavailable here)", description=str(exc))
        p.set_defaults(func=lambda args, exc=exc: _peers_unavailable(exc))
        return
    p = sub.add_parser("peers", help="MAF and neural spline flows against zuko and nflows, the same architecture",
                       description=peers.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    peers.add_arguments(p)
    p.set_defaults(func=peers.run_command)


def _peers_unavailable(exc: Exception) -> int:
    print(f"flowspec bench peers: {type(exc).__name__}: {exc}", file=sys.stderr)
    return 2


def _settings(args: argparse.Namespace) -> Settings:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but torch sees no CUDA device")
    repeats = args.repeats or (2 if args.quick else BASE_SETTINGS.repeats)
    warmup = 1 if args.quick else BASE_SETTINGS.warmup
    return replace(BASE_SETTINGS, quar_norm=args.quar_norm, repeats=repeats, warmup=warmup, device=device)


def _hardware(settings: Settings) -> str:
    import platform

    if torch.device(settings.device).type == "cuda":
        return f"{torch.cuda.get_device_name(settings.device)} (CUDA {torch.version.cuda})"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s)"


def run_compare_command(args: argparse.Namespace, families: Families | None = None) -> int:
    settings = _settings(args)
    if torch.device(settings.device).type == "cpu":
        torch.set_num_threads(args.threads)
    families = families or real_families()
    option = "(a) full masked weight, Lip(F) ≤ σ" if settings.quar_norm == "full" else "(b) diagonal blocks"
    print(f"flowspec bench compare: {_hardware(settings)}, torch {torch.__version__}, {settings.dtype}")
    print(f"models: logit → [conv: 2×2 squeeze] → ActNorm → {settings.n_blocks} × (block → ActNorm); blocks "
          f"with 2 hidden layers of {settings.hidden_factor}× the input's width (conv: 3×3, 1×1, 3×3), "
          f"{ACTIVATION.upper()}, "
          f"coefficient {settings.coeff} (QuAR: σ); QuAR norm option {option}")
    print(f"residual: training {settings.train_terms} exact terms + roulette (geometric, q = 0.5), Neumann "
          f"gradients with backward-in-forward; test {settings.eval_terms} exact terms + roulette tail; "
          f"QuAR: exact log-det by diagonal propagation")
    print(f"time: median of {settings.repeats} interleaved calls after {settings.warmup} warm-up calls; memory: "
          f"allocator peak above the pre-step baseline, and bytes saved for backward\n")
    table = [c for c in DEFAULT_CASES if c.arch in args.archs]
    results = {}
    for case in table:
        results[case] = run_case(case, settings, families)
        print(format_case(results[case]) + "\n", flush=True)
    print(format_targets(targets([results[c] for c in table])) + "\n")
    sweep_shapes = QUICK_SWEEP if args.quick else SWEEP
    sweep = []
    for arch in args.archs:
        for case in _sweep_cases(arch, sweep_shapes[arch]):
            sweep.append(results.get(case) or run_case(case, settings, families))
    plot(sweep, args.plot)
    print(f"wrote {args.plot}: time and memory against input size ("
          + "; ".join(f"{r.case.label}" for r in sweep) + ")")
    return 0
