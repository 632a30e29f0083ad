"""flowspec's residual flow against normflows' residual flow at the same architecture (``flowspec bench residual``).

normflows' ``Residual`` flow (``normflows.flows.Residual`` over ``normflows.nets.lipschitz``) is the
installable port of the official Residual Flows code; this command holds flowspec's residual flow
(:mod:`flowspec.accelerated.residual`) to it at the same architecture, the same initial weights and
the same estimator settings, in one process, one thread (``--threads``), float32.

Cases (:data:`CASES`; every side: no ActNorm, no logit, a standard normal base, 4 blocks):

* ``mlp``: D = 64, each block LipSwish → Linear(64, 256) → LipSwish → Linear(256, 256) → LipSwish →
  Linear(256, 64), coefficient 0.98, batch 64. normflows: ``LipschitzMLP([64, 256, 256, 64])``, which
  puts its Swish (LipSwish: x·σ(softplus(β)x)/1.1, β₀ = 0.5) before *every* linear map, the first
  included; flowspec: ``ResidualMLP((64,), hidden=(256, 256), activation="lipswish")``, whose
  blocks are pre-activation too, stacked with ``accelerated.sequential.Sequential``.
* ``conv``: images 3×16×16, each block LipSwish → 3×3 conv (3→64) → LipSwish → 1×1 conv (64→64) →
  LipSwish → 3×3 conv (64→3), zero padding, coefficient 0.98, batch 64. The hidden width is given
  as channel counts, ``ResidualConv((3, 16, 16), hidden=(64, 64), kernels=(3, 1, 3))``, not through
  ``make_model``'s ``hidden_factor`` (a multiple of the input's 3 channels, so 63 or 66, never 64);
  normflows: ``LipschitzCNN([3, 64, 64, 3], [3, 1, 3])``.
* ``compare``: the convolutional blocks of ``flowspec bench compare``: 3×16×16 images squeezed 2×2
  to 12×8×8 (a permutation of the data with log-det 0, applied to the batch before both models),
  3×3 (12→48), 1×1 (48→48), 3×3 (48→12), ELU, coefficient 0.97, batch 96 for training and 256 for
  evaluation. normflows' ``LipschitzCNN`` has its Swish built in, so its side is the same
  ``nn.Sequential`` of torch's ``nn.ELU`` and normflows' own ``InducedNormConv2d`` layers that
  ``LipschitzCNN`` would build; the squeeze itself is outside both models.

Same initial weights: normflows builds its model from a seeded generator (its own initialisation,
the last layer of each block scaled by 1/1000 as ``init_zeros`` does), then its unnormalised
weights, biases and LipSwish β are copied into flowspec's raw parameters
(:func:`copy_weights`; normflows' block i from the data side is flowspec's block i). Each side
normalises W by max(1, σ̂/coeff) with its own estimate σ̂ of ‖W‖₂ (the same formula).

Estimator settings (both sides): training 2 exact terms + geometric(0.5) roulette, Neumann gradient
series, backward-in-forward (normflows: ``Residual(reduce_memory=True)``, which sets both
``neumann_grad`` and ``grad_in_forward``; ``n_exact_terms=2``, ``geom_p=0.5``, ``n_samples=1``);
evaluation (eval mode, under ``torch.no_grad``) 20 exact terms + the roulette tail (normflows switches
to ``n_power_series = N + 20`` with coefficients 1/P(N ≥ k − 20) whenever its block is not in training
mode; flowspec uses ``max(n_exact_terms, eval_exact_terms)`` = 20). The term weights agree term by
term: 1 up to the exact terms, then 1/P(N ≥ k − m) with P(N ≥ j) = (1 − q)^(j−1), N ≥ 1. normflows
draws one N per batch (numpy) and a Gaussian probe (torch); flowspec draws N per sample
(``draw="sample"``) or per batch (``draw="batch"``), both rows of the table.

Power iteration: normflows applies ``W / max(1, uᵀWv/coeff)`` with its stored vectors in every
forward and runs its iteration only in ``normflows.utils.update_lipschitz``; the training step
here calls it after every Adam step, as the official training loop does, with the official
stopping rule (``max_lipschitz_iter=None``, ``lipschitz_tolerance=1e-3``: stop when both vectors
change by less than 1e-3 per entry, at most 200 iterations). flowspec re-estimates σ̂ in every
training-mode forward (``accelerated/lipschitz.py`` states what its estimate guarantees).

Measured, in interleaved rounds (``timing.interleaved``, ≥ 10), after ``--warmup`` training steps
on every contender so that both power iterations are in their steady state:

* **train**: ``-log_prob(x).mean()``, backward, an Adam step (lr 1e-3) and, for normflows, its
  ``update_lipschitz``;
* **eval**: ``log_prob(x)`` in eval mode under ``torch.no_grad()``, on the models the training rounds
  left;
* **memory**: the allocator's peak above the pre-step baseline of one training step and one
  evaluation (CUDA: allocator statistics; CPU: ``accelerated/memory.py``'s profile of one step, run
  once more before it inside the same profile), ``--memory-repeats`` times each.

ratio = normflows time / flowspec time in the same round (> 1: flowspec faster), reported as the
median over rounds with the 10–90 % spread; memory ratio = flowspec peak / normflows peak per repeat.
Targets (issue 9): training ≥ 1.3, evaluation ≥ 1.0, memory ≤ 1.0; verdict met only when the whole
spread is on the target's side, missed only when it is all on the other side, unclear otherwise.

Draw modes, variance per unit time (:func:`draw_variance`): at fixed weights and batch, the
training-mode log-det estimate of the whole model (the batch mean of Σ_blocks log-det, with the
training estimator's gradient work in its forward) is repeated ``--variance-repeats`` times from
seeds 0, 1, …; its variance over the repeats times the mean seconds of one estimate is the cost of
a given accuracy (lower is better). Per-batch draws correlate the estimates of a batch's samples
(they share N), so the batch mean keeps the variance over N that per-sample draws average out;
per-sample draws make every batch pay for its largest N.

Where flowspec misses a target, cProfile of a few of its steps shows where its time goes.
When normflows is not installed or fails to import, the command says so, names
``pip install 'flowspec[peers]'`` and exits 2.
"""
from __future__ import annotations

import argparse
import cProfile
import importlib
import importlib.metadata
import io
import math
import pstats
import resource
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

INSTALL_HINT = "pip install 'flowspec[peers]'"
EXIT_UNAVAILABLE = 2
DRAWS = ("sample", "batch")
TARGETS = {"train": 1.3, "eval": 1.0, "memory": 1.0}
"""Issue 9's targets: normflows/flowspec time ≥ target; flowspec/normflows memory ≤ target."""
TRAIN_TERMS, EVAL_TERMS = 2, 20
GEOMETRIC_Q = 0.5
NORMFLOWS_TOLERANCE = 1e-3  # the official stopping rule of the power iteration (``--sn-tol``)
LR = 1e-3
PROFILE_STEPS = 3
PROFILE_TOP = 8


def _timing() -> ModuleType:
    """``benchmarks/timing.py`` (interleaved rounds, summaries, verdicts, the hardware header)."""
    from flowspec.bench import load_benchmark

    return load_benchmark("timing")


# ----------------------------------------------------------------------------- cases

@dataclass(frozen=True)
class Case:
    """One architecture, built alike on both sides (module docstring)."""

    name: str
    shape: tuple[int, ...]
    hidden: tuple[int, ...]
    activation: str
    coeff: float
    kernels: tuple[int, ...] | None = None
    n_blocks: int = 4
    train_batch: int = 64
    eval_batch: int = 64

    @property
    def conv(self) -> bool:
        return self.kernels is not None

    @property
    def widths(self) -> list[int]:
        """Input width, hidden widths, output width of g (channels for convolutions)."""
        outer = self.shape[0]
        return [outer, *self.hidden, outer]

    @property
    def label(self) -> str:
        layers = "-".join(map(str, self.widths))
        kernels = f" k{''.join(map(str, self.kernels))}" if self.conv else ""
        return f"{self.name} {'×'.join(map(str, self.shape))} [{layers}{kernels}] {self.activation}"


CASES = {
    "mlp": Case("mlp", (64,), (256, 256), "lipswish", 0.98),
    "conv": Case("conv", (3, 16, 16), (64, 64), "lipswish", 0.98, kernels=(3, 1, 3)),
    "compare": Case("compare", (12, 8, 8), (48, 48), "elu", 0.97, kernels=(3, 1, 3), train_batch=96, eval_batch=256),
}


def quick_case(case: Case) -> Case:
    """``--quick``: the same architecture at a smaller batch (32 for training and evaluation)."""
    return replace(case, train_batch=min(case.train_batch, 32), eval_batch=min(case.eval_batch, 32))


# ----------------------------------------------------------------------------- normflows

class NormflowsUnavailable(Exception):
    """normflows cannot be used here; the message says why and how to install it."""


def import_normflows() -> ModuleType:
    """``normflows`` with the submodules the builders use, or :class:`NormflowsUnavailable`."""
    try:
        module = importlib.import_module("normflows")
        for sub in ("normflows.flows.residual", "normflows.nets.lipschitz", "normflows.utils.optim",
                    "normflows.distributions"):
            importlib.import_module(sub)
    except ModuleNotFoundError as exc:
        raise NormflowsUnavailable(f"normflows is not installed ({INSTALL_HINT})") from exc
    except Exception as exc:  # noqa: BLE001 - a broken install may fail to import in many ways
        raise NormflowsUnavailable(
            f"importing normflows failed: {type(exc).__name__}: {exc} ({INSTALL_HINT})") from exc
    return module


def _normflows_layer(lip: ModuleType, case: Case, i: int, n_in: int, n_out: int) -> nn.Module:
    """normflows' constrained linear map i of g, with the official stopping rule (module docstring)."""
    options = {"coeff": case.coeff, "domain": 2, "codomain": 2, "n_iterations": None,
               "atol": NORMFLOWS_TOLERANCE, "rtol": NORMFLOWS_TOLERANCE, "zero_init": i == len(case.hidden)}
    if case.conv:
        k = case.kernels[i]
        return lip.InducedNormConv2d(n_in, n_out, kernel_size=k, stride=1, padding=k // 2, bias=True, **options)
    return lip.InducedNormLinear(n_in, n_out, bias=True, **options)


def normflows_net(nf: ModuleType, case: Case) -> nn.Module:
    """g of one normflows block: its own ``LipschitzMLP``/``LipschitzCNN`` for LipSwish; for ELU the
    ``nn.Sequential`` those classes build, with torch's ``nn.ELU`` in place of their Swish."""
    lip = nf.nets.lipschitz
    widths = case.widths
    if case.activation == "lipswish":
        common = {"lipschitz_const": case.coeff, "max_lipschitz_iter": None,
                  "lipschitz_tolerance": NORMFLOWS_TOLERANCE, "init_zeros": True}
        if case.conv:
            return lip.LipschitzCNN(widths, list(case.kernels), **common)
        return lip.LipschitzMLP(widths, **common)
    if case.activation != "elu":
        raise ValueError(f"normflows' side offers the activations lipswish and elu, not {case.activation!r}")
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers += [nn.ELU(), _normflows_layer(lip, case, i, n_in, n_out)]
    return nn.Sequential(*layers)


def build_normflows(nf: ModuleType, case: Case, seed: int, device: str) -> nn.Module:
    """normflows' ``NormalizingFlow`` of ``case`` (standard normal base), initialised from ``seed``;
    convolutional layers have seen one batch (normflows fixes their spatial size at the first forward)."""
    torch.manual_seed(seed)
    flows = [nf.flows.Residual(normflows_net(nf, case), reverse=True, reduce_memory=True, geom_p=GEOMETRIC_Q,
                               n_samples=1, n_exact_terms=TRAIN_TERMS, n_dist="geometric")
             for _ in range(case.n_blocks)]
    model = nf.NormalizingFlow(q0=nf.distributions.DiagGaussian(case.shape, trainable=False), flows=flows)
    model = model.to(device)
    if case.conv:
        with torch.no_grad():
            for flow in flows:
                flow.iresblock.nnet(torch.zeros(1, *case.shape, device=device))
    return model


def normflows_blocks(model: nn.Module) -> list[nn.Module]:
    """normflows' ``iResBlock`` modules in the data → latent order (``log_prob`` runs the flows last to first)."""
    return [flow.iresblock for flow in reversed(list(model.flows))]


def normflows_layers(nf: ModuleType, block: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(activation, constrained linear map) pairs of a normflows block's g, in order."""
    lip = nf.nets.lipschitz
    kinds = (lip.Swish, nn.ELU, lip.InducedNormLinear, lip.InducedNormConv2d)
    modules = [m for m in block.nnet.modules() if isinstance(m, kinds)]
    pairs = list(zip(modules[::2], modules[1::2]))
    for act, linear in pairs:
        if not isinstance(act, (lip.Swish, nn.ELU)) or not isinstance(linear, (lip.InducedNormLinear, lip.InducedNormConv2d)):
            raise ValueError(f"a normflows block's g is not activation → linear map pairs: {type(act).__name__}, "
                             f"{type(linear).__name__}")
    return pairs


def normflows_settings(model: nn.Module) -> list[dict[str, Any]]:
    """The estimator settings every normflows block holds (what the tests check against the docstring)."""
    out = []
    for block in normflows_blocks(model):
        out.append({"n_exact_terms": block.n_exact_terms, "n_samples": block.n_samples, "n_dist": block.n_dist,
                    "geom_p": float(torch.sigmoid(block.geom_p.detach())), "n_power_series": block.n_power_series,
                    "neumann_grad": block.neumann_grad, "grad_in_forward": block.grad_in_forward,
                    "exact_trace": block.exact_trace, "brute_force": block.brute_force})
    return out


# ----------------------------------------------------------------------------- flowspec

def build_flowspec(case: Case, draw: str, device: str) -> nn.Module:
    """flowspec's ``Sequential`` of ``case.n_blocks`` residual blocks (input validation off, the hot path)."""
    from flowspec.accelerated.residual import ResidualConv, ResidualMLP
    from flowspec.accelerated.sequential import Sequential

    block_cls = ResidualConv if case.conv else ResidualMLP
    layout = {"kernels": list(case.kernels)} if case.conv else {}
    blocks = [block_cls(list(case.shape), list(case.hidden), activation=case.activation, coeff=case.coeff,
                        logdet="roulette", n_exact_terms=TRAIN_TERMS, eval_exact_terms=EVAL_TERMS, n_samples=1,
                        draw=draw, dist="geometric", dist_param=GEOMETRIC_Q, neumann_grad=True,
                        grad_in_forward=True, validate_args=False, **layout)
              for _ in range(case.n_blocks)]
    return Sequential(blocks, validate_args=False).to(device)


def copy_weights(nf: ModuleType, theirs: nn.Module, ours: nn.Module) -> None:
    """normflows' unnormalised weights, biases and LipSwish β into flowspec's raw parameters, block by
    block in the data → latent order; raises ``ValueError`` if the layouts differ."""
    their_blocks, our_blocks = normflows_blocks(theirs), list(ours.flows)
    if len(their_blocks) != len(our_blocks):
        raise ValueError(f"normflows has {len(their_blocks)} blocks, flowspec {len(our_blocks)}")
    for b, (their_block, our_block) in enumerate(zip(their_blocks, our_blocks)):
        pairs = normflows_layers(nf, their_block)
        if len(pairs) != len(our_block.layers):
            raise ValueError(f"block {b}: normflows has {len(pairs)} layers, flowspec {len(our_block.layers)}")
        for layer, act, (their_act, their_linear) in zip(our_block.layers, our_block.activations, pairs):
            _copy_layer(nf, layer, act, their_act, their_linear, b)


def _copy_layer(nf: ModuleType, layer: nn.Module, act: nn.Module, their_act: nn.Module, their_linear: nn.Module,
                block: int) -> None:
    if tuple(layer.raw_weight.shape) != tuple(their_linear.weight.shape):
        raise ValueError(f"block {block}: weight shapes differ: flowspec {tuple(layer.raw_weight.shape)}, "
                         f"normflows {tuple(their_linear.weight.shape)}")
    has_beta = isinstance(their_act, nf.nets.lipschitz.Swish)
    if has_beta != hasattr(act, "beta"):
        raise ValueError(f"block {block}: activations differ: flowspec {type(act).__name__}, "
                         f"normflows {type(their_act).__name__}")
    with torch.no_grad():
        layer.raw_weight.copy_(their_linear.weight)
        layer.bias.copy_(their_linear.bias)
        if has_beta:
            act.beta.copy_(their_act.beta)
        if not torch.equal(layer.unnormalized_weight(), their_linear.weight):
            raise ValueError(f"block {block}: flowspec's layer does not apply the copied weight unnormalised")


# ----------------------------------------------------------------------------- contenders and steps

@dataclass
class Contender:
    """One model with its log-density, optimiser and what its training step does after Adam."""

    name: str
    module: nn.Module
    log_prob: Callable[[Tensor], Tensor]
    after_step: Callable[[], None] = lambda: None
    optimizer: torch.optim.Optimizer = field(init=False)

    def __post_init__(self) -> None:
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=LR)


def train_step(c: Contender, x: Tensor) -> None:
    """-log_prob(x).mean(), backward, Adam step, then the contender's own post-step work."""
    c.module.train()
    c.optimizer.zero_grad(set_to_none=True)
    loss = -c.log_prob(x).mean()
    loss.backward()
    c.optimizer.step()
    c.after_step()


def eval_step(c: Contender, x: Tensor) -> None:
    """log_prob(x) in eval mode under no_grad. normflows' evaluation sets ``requires_grad`` on its
    input in place, so each call gets a fresh view: the shared batch stays a plain tensor."""
    c.module.eval()
    with torch.no_grad():
        c.log_prob(x.detach())


def contenders(case: Case, draws: Sequence[str], seed: int, device: str) -> dict[str, Contender]:
    """normflows and flowspec (one per draw mode) from the same initial weights."""
    nf = import_normflows()
    from flowspec.accelerated import FlowDistribution

    theirs = build_normflows(nf, case, seed, device)
    out = {"normflows": Contender("normflows", theirs, theirs.log_prob,
                                  lambda: nf.utils.update_lipschitz(theirs, None))}
    for draw in draws:
        ours = build_flowspec(case, draw, device)
        copy_weights(nf, theirs, ours)
        out[f"flowspec draw={draw}"] = Contender(f"flowspec draw={draw}", ours, FlowDistribution(ours).log_prob)
    return out


def batch(case: Case, size: int, seed: int, device: str) -> Tensor:
    """A standard normal batch of ``size`` events (the same for every contender)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(size, *case.shape, generator=g).to(device)


# ----------------------------------------------------------------------------- rows

@dataclass
class Row:
    """One (case, phase, draw) line: flowspec's and normflows' medians, the ratio and its verdict."""

    case: str
    phase: str
    draw: str
    unit: str
    flowspec: float
    normflows: float
    ratio: dict[str, float]
    target: str
    verdict: str


def _time_row(case: Case, phase: str, name: str, times: dict[str, list[float]]) -> Row:
    timing = _timing()
    s = timing.summarize(timing.round_ratios(times["normflows"], times[name]), TARGETS[phase])
    return Row(case.name, phase, name.split("=")[-1], "ms", 1e3 * float(np.median(times[name])),
               1e3 * float(np.median(times["normflows"])), {"median": s.median, "low": s.low, "high": s.high},
               f"normflows/flowspec ≥ {TARGETS[phase]}", s.verdict)


def memory_rows(case: Case, cs: dict[str, Contender], xs: dict[str, Tensor], repeats: int, device: str) -> list[Row]:
    """Peak memory of one training step and one evaluation per contender, ``repeats`` times each
    (seeded alike; the draws of N differ between repeats)."""
    from flowspec.accelerated import memory

    timing = _timing()
    rows = []
    for phase, step in (("train", train_step), ("eval", eval_step)):
        peaks: dict[str, list[float]] = {name: [] for name in cs}
        for r in range(repeats):
            for name, c in cs.items():
                torch.manual_seed(r)
                np.random.seed(r)
                with timing.quiet_stderr():
                    peaks[name].append(memory.peak_bytes(lambda: step(c, xs[phase]), device) / 2**20)
        for name in cs:
            if name == "normflows":
                continue
            s = timing.summarize([f / max(p, 1e-9) for f, p in zip(peaks[name], peaks["normflows"])],
                                 TARGETS["memory"], at_most=True)
            rows.append(Row(case.name, f"{phase} memory", name.split("=")[-1], "MiB", float(np.median(peaks[name])),
                            float(np.median(peaks["normflows"])), {"median": s.median, "low": s.low, "high": s.high},
                            f"flowspec/normflows ≤ {TARGETS['memory']}", s.verdict))
    return rows


# ----------------------------------------------------------------------------- draw modes

@dataclass
class DrawVariance:
    """The batch-mean log-det estimate's variance over seeded repeats and the seconds of one estimate."""

    case: str
    draw: str
    repeats: int
    variance: float
    seconds: float

    @property
    def variance_time(self) -> float:
        return self.variance * self.seconds

    @property
    def relative_error(self) -> float:
        """Standard error of the sample variance relative to it, √(2/(R − 1)) for R repeats
        (exact for Gaussian estimates; the batch mean of many terms is close to one)."""
        return math.sqrt(2.0 / (self.repeats - 1))


def better_draw(results: Sequence[DrawVariance]) -> str | None:
    """The draw mode with the lowest variance × time when the others' are higher beyond two standard
    errors of both variance estimates; None when the estimates cannot tell them apart."""
    best = min(results, key=lambda r: r.variance_time)
    for other in results:
        if other is not best and (other.variance_time * (1 - 2 * other.relative_error)
                                  <= best.variance_time * (1 + 2 * best.relative_error)):
            return None
    return best.draw


def draw_variance(case: Case, model: nn.Module, draw: str, x: Tensor, repeats: int,
                  sync: Callable[[], None]) -> DrawVariance:
    """Repeat flowspec's training-mode log-det estimate of ``x`` (gradients on, as in a training
    step; weights fixed) from seeds 0 … repeats − 1: variance of the batch mean and mean seconds."""
    model.train()
    means, elapsed = [], 0.0
    for r in range(repeats):
        torch.manual_seed(r)
        sync()
        start = time.perf_counter()
        _, logdet = model(x)
        sync()
        elapsed += time.perf_counter() - start
        means.append(float(logdet.detach().mean()))
    return DrawVariance(case.name, draw, repeats, float(np.var(means, ddof=1)), elapsed / repeats)


# ----------------------------------------------------------------------------- profiles

def profile_steps(step: Callable[[], None], steps: int = PROFILE_STEPS, top: int = PROFILE_TOP) -> list[dict[str, Any]]:
    """cProfile of ``steps`` calls, after one untimed call (which absorbs a re-estimate of the norms
    after weights moved): the ``top`` functions by own time with their share of the total."""
    step()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        step()
    profiler.disable()
    stats = pstats.Stats(profiler, stream=io.StringIO())
    total = sum(entry[2] for entry in stats.stats.values()) or 1.0
    ranked = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)[:top]
    return [{"function": f"{Path(file).name}:{line}({name})", "own_s": own / steps, "share": own / total,
             "cumulative_s": cum / steps}
            for (file, line, name), (_, _, own, cum, _) in ranked]


# ----------------------------------------------------------------------------- one case

@dataclass
class Settings:
    """What one run measures and how long (``--quick`` lowers the warm-up and repeats)."""

    draws: tuple[str, ...] = DRAWS
    rounds: int = 10
    warmup: int = 20
    min_time: float = 0.05
    memory_repeats: int = 1
    variance_repeats: int = 100
    device: str = "cpu"
    seed: int = 0


@dataclass
class CaseResult:
    rows: list[Row]
    variance: list[DrawVariance]
    profiles: dict[str, list[dict[str, Any]]]


def run_case(case: Case, settings: Settings) -> CaseResult:
    """All rows of ``case``: warm-up, interleaved training then evaluation rounds, memory, the draw
    modes' variance per unit time, and profiles of the missed rows."""
    timing = _timing()
    sync = timing.sync_for(settings.device)
    cs = contenders(case, settings.draws, settings.seed, settings.device)
    xs = {"train": batch(case, case.train_batch, settings.seed, settings.device),
          "eval": batch(case, case.eval_batch, settings.seed + 1, settings.device)}
    for c in cs.values():
        for _ in range(settings.warmup):
            train_step(c, xs["train"])
    rows: list[Row] = []
    for phase, step in (("train", train_step), ("eval", eval_step)):
        calls = {name: (lambda c=c, step=step: step(c, xs[phase])) for name, c in cs.items()}
        times = timing.interleaved(calls, settings.rounds, settings.min_time, sync)
        rows += [_time_row(case, phase, name, times) for name in cs if name != "normflows"]
    rows += memory_rows(case, cs, xs, settings.memory_repeats, settings.device)
    variance = [draw_variance(case, cs[f"flowspec draw={d}"].module, d, xs["train"], settings.variance_repeats, sync)
                for d in settings.draws]
    profiles = {}
    for row in rows:
        if row.verdict == "missed" and row.unit == "ms":
            name, step = f"flowspec draw={row.draw}", train_step if row.phase == "train" else eval_step
            for who in (name, "normflows"):
                key = f"{case.name} {row.phase} {who}"
                if key not in profiles:
                    profiles[key] = profile_steps(lambda c=cs[who], step=step: step(c, xs[row.phase]))
    return CaseResult(rows, variance, profiles)


# ----------------------------------------------------------------------------- report

def _ratio(r: dict[str, float]) -> str:
    return f"{r['median']:.2f} [{r['low']:.2f}, {r['high']:.2f}]"


HEADER = ("case", "phase", "draw", "flowspec", "normflows", "ratio [p10, p90]", "target", "verdict")


def format_table(rows: Sequence[Row]) -> str:
    cells = [HEADER] + [(r.case, r.phase, r.draw, f"{r.flowspec:.2f} {r.unit}", f"{r.normflows:.2f} {r.unit}",
                         _ratio(r.ratio), r.target, r.verdict) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_variance(results: Sequence[DrawVariance]) -> str:
    """Both draw modes per case and which costs less for a given accuracy (variance × seconds)."""
    lines = ["draw modes: variance of the batch-mean training log-det estimate over seeded repeats × seconds "
             "of one estimate (lower is better)"]
    for case in dict.fromkeys(r.case for r in results):
        mine = [r for r in results if r.case == case]
        for r in mine:
            lines.append(f"  {case:8} draw={r.draw:6} variance {r.variance:.4g} (±{r.relative_error:.0%})  "
                         f"time {1e3 * r.seconds:.2f} ms  variance×time {r.variance_time:.4g}  ({r.repeats} repeats)")
        if len(mine) > 1:
            best = better_draw(mine)
            lines.append(f"  {case:8} " + (f"better: draw={best}" if best else
                                            "better: unclear (within two standard errors of the variances)"))
    lines.append("  note: per-batch draws share N across a batch, so its samples' estimates are correlated and "
                 "the batch mean keeps the variance over N; per-sample draws pay for the batch's largest N")
    return "\n".join(lines)


def format_profiles(profiles: dict[str, list[dict[str, Any]]]) -> str:
    lines = []
    for name, entries in profiles.items():
        lines.append(f"profile of {name} ({PROFILE_STEPS} steps; own time per step, share of the total):")
        lines += [f"    {e['share']:6.1%}  {1e3 * e['own_s']:8.2f} ms  {e['function']}" for e in entries]
    return "\n".join(lines)


def totals(rows: Sequence[Row]) -> dict[str, int]:
    return {v: sum(r.verdict == v for r in rows) for v in ("met", "missed", "unclear")}


def to_json(header: dict[str, Any], rows: Sequence[Row], variance: Sequence[DrawVariance],
            profiles: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return {"header": header, "totals": totals(rows), "rows": [asdict(r) for r in rows],
            "variance": [{**asdict(v), "variance_time": v.variance_time, "relative_error": v.relative_error}
                         for v in variance],
            "better_draw": {case: better_draw([v for v in variance if v.case == case])
                            for case in dict.fromkeys(v.case for v in variance)},
            "profiles": profiles}


# ----------------------------------------------------------------------------- command line

def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``flowspec bench residual``."""
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    p.add_argument("--draws", nargs="+", choices=DRAWS, default=list(DRAWS),
                   help="flowspec's roulette draw modes to time (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds, ≥ 10 (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=None, help="training steps before timing (default: 20, --quick 5)")
    p.add_argument("--min-time", type=float, default=0.05, help="seconds of one measurement at least (default: %(default)s)")
    p.add_argument("--memory-repeats", type=int, default=1,
                   help="memory measurements per step; on the CPU each is a profile of two steps (default: %(default)s)")
    p.add_argument("--variance-repeats", type=int, default=None,
                   help="seeded repeats of the log-det estimate per draw mode (default: 100, --quick 20)")
    p.add_argument("--quick", action="store_true", help="5 warm-up steps, batch ≤ 32, fewer repeats; still ≥ 10 rounds")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.add_argument("--json", metavar="PATH", help="also write the table as JSON")


def settings_from(args: argparse.Namespace) -> Settings:
    """The run's :class:`Settings`; ``ValueError`` naming a bad option."""
    timing = _timing()
    if args.rounds < timing.MIN_ROUNDS:
        raise ValueError(f"--rounds must be ≥ {timing.MIN_ROUNDS}, got {args.rounds}")
    warmup = args.warmup if args.warmup is not None else (5 if args.quick else 20)
    repeats = args.variance_repeats if args.variance_repeats is not None else (20 if args.quick else 100)
    if warmup < 0 or repeats < 2 or args.memory_repeats < 1:
        raise ValueError(f"need --warmup ≥ 0, --variance-repeats ≥ 2 and --memory-repeats ≥ 1, got "
                         f"{warmup}, {repeats}, {args.memory_repeats}")
    return Settings(draws=tuple(dict.fromkeys(args.draws)), rounds=args.rounds, warmup=warmup,
                    min_time=args.min_time / (4 if args.quick else 1), memory_repeats=args.memory_repeats,
                    variance_repeats=repeats, device=args.device)


def peak_rss_mib() -> float:
    """The process's peak resident set size so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"numpy": np.__version__}
    for name in ("flowspec", "normflows"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def run_command(args: argparse.Namespace) -> int:
    """``flowspec bench residual``: print the table (and write ``--json``); exit 2 when normflows is
    unavailable or an option is bad."""
    try:
        import_normflows()
    except NormflowsUnavailable as exc:
        print(f"flowspec bench residual: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    try:
        settings = settings_from(args)
    except ValueError as exc:
        print(f"flowspec bench residual: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    timing = _timing()
    timing.configure(args.device, args.threads)
    cases = [quick_case(CASES[n]) if args.quick else CASES[n] for n in dict.fromkeys(args.cases)]
    header = {**timing.hardware(args.device), **_versions(), "dtype": "float32", "rounds": settings.rounds,
              "warmup_steps": settings.warmup, "memory_repeats": settings.memory_repeats,
              "variance_repeats": settings.variance_repeats, "quick": bool(args.quick),
              "cases": {c.name: c.label for c in cases},
              "batches": {c.name: {"train": c.train_batch, "eval": c.eval_batch} for c in cases},
              "spread": f"{timing.LOW_Q:.0%}-{timing.HIGH_Q:.0%} percentiles of per-round ratios"}
    print(f"flowspec bench residual: {timing.describe_hardware(header)}; normflows {header['normflows']}, "
          f"float32; {settings.warmup} warm-up steps, {settings.rounds} interleaved rounds")
    rows, variance, profiles = [], [], {}
    for case in cases:
        result = run_case(case, settings)
        rows += result.rows
        variance += result.variance
        profiles.update(result.profiles)
        print(f"  done: {case.label}, batch {case.train_batch} (train) / {case.eval_batch} (eval)", flush=True)
    print("\n" + format_table(rows))
    print("totals: " + ", ".join(f"{k} {v}" for k, v in totals(rows).items()))
    print("\n" + format_variance(variance))
    if profiles:
        print("\n" + format_profiles(profiles))
    header["peak_rss_mib"] = peak_rss_mib()
    print(f"\npeak resident memory of this run: {header['peak_rss_mib']:.0f} MiB")
    timing.write_json(args.json, to_json(header, rows, variance, profiles) if args.json else None)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python benchmarks/peers_residual.py [options]``, the same as ``flowspec bench residual``."""
    return _timing().script_main("peers_residual", __doc__, add_arguments, run_command, argv)


if __name__ == "__main__":
    raise SystemExit(main())
