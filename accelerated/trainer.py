"""``flowspec train``: the :class:`Trainer` and the command line that only parses arguments for it.

``Trainer(Settings(model="realnvp", data="moons")).fit()`` trains a preset
(:mod:`flowspec.accelerated.presets`) on a data set (:mod:`flowspec.accelerated.data`) and writes a
run directory: ``metrics.jsonl`` (one JSON object per logged step and per evaluation),
``curves.png`` and ``samples.png`` (a grid of images, or a density heat map with samples for 2-D
data) at every evaluation, and ``checkpoints/ckpt-<step>.pt`` (:mod:`flowspec.accelerated.checkpoint`).

**Objective.** Continuous data: the mean negative log-likelihood in nats. Discrete data with L
levels: bits per dimension (:func:`~flowspec.accelerated.training.bits_per_dim`) of the dequantised
x = (k + u)/L, uniformly (u ~ U(0, 1)) or variationally (Flow++ eq. 12, ``flowpp``). A model whose
first layer is not a logit gets a logit with α = 0.05 in front for dequantised data (x ∈ (0, 1)).
Adam with a linear learning-rate warm-up over ``warmup`` steps, gradient clipping at ``clip``
(global 2-norm), Polyak averaging (``ema``) for evaluation, with the norms of the residual and QuAR
models refreshed on the averaged weights (:class:`~flowspec.accelerated.training.Polyak`). Test
metrics use the model in evaluation mode: for ``residual`` that is the README's evaluation estimator
(20 exact terms plus the roulette tail).

**Exact resume.** Everything a step reads is in the checkpoint: parameters and buffers (model, EMA,
dequantizer), optimizer and scheduler, the step, the global RNG states, and the data order, which is
a function of (seed, step) only: epoch e visits the training set in ``DistributedSampler``'s order
for seed and epoch e, batch b of the epoch being positions [b·B, (b + 1)·B) of it. The dequantization
noise of step t is drawn for the whole global batch from a generator seeded by (seed, t), row j for
global batch position j. Evaluations run inside ``torch.random.fork_rng`` with their own seed, so
they do not move the training stream. Hence N steps in one go and N/2 + resume + N/2 give identical
parameters (``tests/test_checkpoint.py``).

**torchrun.** Under ``torchrun --nproc-per-node K -m flowspec train ...`` (``WORLD_SIZE`` > 1) the
process group is initialised (gloo on CPU, NCCL on CUDA, one GPU per ``LOCAL_RANK``), the objective
is wrapped in ``DistributedDataParallel`` and rank r takes global batch positions r, r + K, … of
every batch (``DistributedSampler``'s sharding of the same permutation), so that the K local batches
of B/K samples are exactly the single-process batch of B and DDP's gradient average is its mean:
the global batch size is preserved. Dequantization noise is keyed by global position as above.
Non-parameter state: ActNorm's data-dependent initialisation all-reduces its statistics; buffers
(power-iteration vectors, initialisation flags) are broadcast from rank 0 at every forward by DDP;
caches (the normalised weights' estimates) are recomputed from identical weights, so they agree; the
residual blocks' roulette and probe noise comes from each process's torch generator, seeded alike, and
is therefore *not* keyed by global sample index (a K-process run draws other noise than one process;
use ``--set logdet=exact`` or the series estimator's fixed settings for process-count independence).
Only rank 0 evaluates and writes metrics, plots and checkpoints; a checkpoint holds rank 0's RNG
state, so a resumed multi-process run is exact only where no process draws from its own generator.

**Threads.** On the CPU, vector data trains with one torch thread unless ``threads`` says otherwise
(the tensors are too small for intra-op threads to pay, and oversubscribed threads slow small
operations down by an order of magnitude); image data keeps torch's default. The CPU allocator
keeps freed memory in the process (:func:`~.memory.retain_freed_memory`: glibc otherwise returns
each few-MiB activation to the kernel and faults it in again at the next allocation); the process
then holds on to the memory of its largest step.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from flowspec.errors import ConfigError, FlowError, NumericalError

from . import checkpoint, data as datasets, presets
from .memory import retain_freed_memory
from .training import Polyak, bits_per_dim, dequantize_with, uniform_log_q

DTYPES = {"float32": torch.float32, "float64": torch.float64}
RESUMABLE = ("steps", "epochs", "out", "progress", "plots", "eval_every", "checkpoint_every", "keep", "log_every",
             "device", "threads", "deterministic")
"""Settings that ``--resume`` may change; every other one is the checkpoint's."""
IDENTITY = ("model", "data", "model_options", "dtype", "discrete_levels", "seed")
"""Settings that identify a run: a checkpoint is refused for a run that differs in one of them."""


@dataclass
class Settings:
    """What ``flowspec train`` takes; ``None`` means the preset's value (:data:`presets.TRAINING`)."""

    model: str
    data: str = "moons"
    steps: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    warmup: int | None = None
    clip: float | None = None
    ema: float | None = None
    eval_every: int | None = None
    eval_size: int | None = None
    dequantization: str | None = None
    checkpoint_every: int | None = None
    keep: int = 3
    log_every: int = 10
    out: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    data_dir: str | None = None
    discrete_levels: int | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    progress: bool | None = None
    plots: bool = True
    threads: int | None = None
    deterministic: bool = False

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Settings":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown settings {unknown}; valid: {sorted(names)}")
        return cls(**values)


# ----------------------------------------------------------------------------- processes

@dataclass(frozen=True)
class Processes:
    """This process's rank, the number of processes, and whether ``torchrun`` launched it."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    started_here: bool = False
    launched: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def processes(device: str) -> Processes:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` set; gloo on CPU, NCCL on
    CUDA); a plain process is a group of one without ``torch.distributed``."""
    if "WORLD_SIZE" not in os.environ:
        return Processes()
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    started = not dist.is_initialized()
    if started:
        if device.startswith("cuda"):
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return Processes(dist.get_rank(), dist.get_world_size(), local, started, True)


def _all_mean(value: Tensor, procs: Processes) -> Tensor:
    if procs.world == 1:
        return value
    import torch.distributed as dist

    value = value.clone()
    dist.all_reduce(value)
    return value / procs.world


# ----------------------------------------------------------------------------- the objective

def _log_prob(model: nn.Module, x: Tensor) -> Tensor:
    if hasattr(model, "log_prob"):
        return model.log_prob(x)
    from .distribution import FlowDistribution

    return FlowDistribution(model).log_prob(x)


def _flow_of(model: nn.Module) -> nn.Module:
    return getattr(model, "flow", model)


class Objective(nn.Module):
    """Per-sample loss of a batch: nats (continuous) or bits per dimension (discrete; module docstring)."""

    def __init__(self, model: nn.Module, dequantizer: nn.Module | None, n_bins: int | None, event_shape: Sequence[int]):
        super().__init__()
        from .elementwise import Logit

        self.model, self.dequantizer, self.n_bins = model, dequantizer, n_bins
        self.dim = math.prod(event_shape)
        needs_logit = n_bins is not None and tuple(getattr(_flow_of(model), "domain", (None, None))) != (0.0, 1.0)
        self.logit = Logit(list(event_shape), alpha=0.05, validate_args=False) if needs_logit else None
        if self.logit is not None:
            anchor = next(model.parameters())
            self.logit.to(dtype=anchor.dtype, device=anchor.device)

    def log_density(self, model: nn.Module, x: Tensor) -> Tensor:
        """log p(x) of data in the model's space (through the added logit, if any)."""
        if self.logit is None:
            return _log_prob(model, x)
        y, logdet = self.logit(x)
        return _log_prob(model, y) + logdet

    def loss(self, model: nn.Module, x: Tensor, noise: Tensor | None) -> Tensor:
        """The per-sample loss of ``x`` under ``model`` with the dequantization ``noise`` (u or ε)."""
        if self.n_bins is None:
            return -self.log_density(model, x)
        if self.dequantizer is None:
            return bits_per_dim(self.log_density(model, dequantize_with(x, noise, self.n_bins)),
                                uniform_log_q(self.dim, self.n_bins), self.dim)
        xq, log_q = self.dequantizer.dequantize(x, self.n_bins, eps=noise)
        return bits_per_dim(self.log_density(model, xq), log_q, self.dim)

    def forward(self, x: Tensor, noise: Tensor | None) -> Tensor:  # type: ignore[override]
        return self.loss(self.model, x, noise).mean()

    def sample(self, model: nn.Module, n: int, generator: torch.Generator) -> Tensor:
        """``n`` samples in data space ((0, 1) for dequantised data)."""
        if hasattr(model, "sample"):
            z = model.sample(n, generator=generator)
        else:
            from .distribution import FlowDistribution

            z = FlowDistribution(model).sample((n,), generator=generator)
        return z if self.logit is None else self.logit.inverse(z)


def _seed(*keys: int) -> int:
    value = 0x9E3779B97F4A7C15
    for k in keys:
        value = (value * 6364136223846793005 + int(k) + 1442695040888963407) % (1 << 63)
    return value


# ----------------------------------------------------------------------------- the trainer

class Trainer:
    """Train a preset on a data set (module docstring); :meth:`fit` runs to the end."""

    def __init__(self, settings: Settings | dict[str, Any], *, dataset: datasets.DataSet | None = None):
        self.settings = settings if isinstance(settings, Settings) else Settings.from_dict(settings)
        s = self.settings
        if s.dtype not in DTYPES:
            raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {s.dtype!r}")
        self.preset = presets.get(s.model)
        self.data = dataset or datasets.load(s.data, seed=s.seed, data_dir=s.data_dir,
                                             discrete_levels=s.discrete_levels)
        self.kind = self.preset.kind_of(self.data.event_shape)
        self.hp = self._hyperparameters()
        self.procs = processes(s.device)
        self.device = torch.device(f"cuda:{self.procs.local_rank}" if s.device == "cuda" and self.procs.launched
                                   else s.device)
        self.dtype = DTYPES[s.dtype]
        self._determinism()
        self.shape = (self.data.dim,) if self.kind == "flat" else self.data.event_shape
        torch.manual_seed(s.seed)
        model, dequantizer = presets.build(self.preset, self.data.event_shape, dict(s.model_options),
                                           dtype=self.dtype, device=self.device)
        self.objective = Objective(model, dequantizer, self.data.n_bins, self.shape)
        self.engine = self._wrap(self.objective)
        self.optimizer = torch.optim.Adam([p for p in self.objective.parameters() if p.requires_grad], lr=self.hp["lr"])
        warmup = max(int(self.hp["warmup"]), 1)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda t: min(1.0, (t + 1) / warmup))
        self.polyak = Polyak(model, decay=self.hp["ema"]) if self.hp["ema"] is not None else None
        self.step = 0
        self.out = Path(s.out or f"runs/{s.model}-{Path(s.data).stem}-{time.strftime('%Y%m%d-%H%M%S')}")
        self.history: list[dict[str, Any]] = []
        self._initialized = False
        self._order: tuple[int, Tensor] = (-1, torch.empty(0))
        self._train = self.data.train.to(self.dtype)
        self._test = self.data.test[: self.hp["eval_size"]].to(self.dtype)

    # ------------------------------------------------------------------ set-up
    def _hyperparameters(self) -> dict[str, Any]:
        s, hp = self.settings, self.preset.training("vector" if self.kind in ("vector",) else "image")
        for name in presets.TRAINING:
            if getattr(s, name) is not None:
                hp[name] = getattr(s, name)
        if self.data.n_bins is None:
            hp["dequantization"] = None
        elif hp["dequantization"] == "variational" and self.preset.builder != "flowpp":
            raise ConfigError(f"variational dequantization needs the flowpp model, not {s.model!r}")
        if hp["ema"] is not None and not 0.0 <= hp["ema"] < 1.0:
            raise ConfigError(f"--ema must lie in [0, 1), got {hp['ema']}")
        for name in ("batch_size", "steps", "eval_every", "eval_size"):
            if int(hp[name]) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {hp[name]!r}")
        if hp["batch_size"] > len(self.data.train):
            raise ConfigError(f"batch size {hp['batch_size']} exceeds the {len(self.data.train)} training samples")
        per_epoch = len(self.data.train) // hp["batch_size"]
        if s.epochs is not None and s.steps is not None:
            raise ConfigError("give steps or epochs, not both")
        if s.epochs is not None:
            hp["steps"] = int(s.epochs) * per_epoch
        hp["batches_per_epoch"] = per_epoch
        hp["checkpoint_every"] = s.checkpoint_every or hp["eval_every"]
        return hp

    def _determinism(self) -> None:
        s = self.settings
        threads = s.threads if s.threads is not None else (1 if self.kind == "vector" and s.device == "cpu" else None)
        if threads is not None:  # vectors: the tensors are too small for intra-op threads to pay
            torch.set_num_threads(int(threads))
        if s.device == "cpu":  # page faults on every few-MiB activation otherwise (memory.py)
            retain_freed_memory()
        if s.deterministic:
            torch.use_deterministic_algorithms(True)

    def _wrap(self, objective: Objective) -> nn.Module:
        if not self.procs.launched:
            return objective
        if self.hp["batch_size"] % self.procs.world:
            raise ConfigError(f"the global batch size {self.hp['batch_size']} must be a multiple of the "
                              f"{self.procs.world} processes")
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(objective, device_ids=ids)

    # ------------------------------------------------------------------ data order and noise
    def _indices(self, step: int) -> Tensor:
        """This process's training indices for ``step``: its shard of epoch ``step // batches_per_epoch``
        (``DistributedSampler`` for this rank, seed and epoch), batch ``step % batches_per_epoch``
        of ``batch_size / world`` samples, i.e. global batch positions rank, rank + world, …"""
        from torch.utils.data import DistributedSampler

        epoch, b = divmod(step, self.hp["batches_per_epoch"])
        if self._order[0] != epoch:
            sampler = DistributedSampler(range(len(self._train)), num_replicas=self.procs.world, rank=self.procs.rank,
                                         shuffle=True, seed=self.settings.seed, drop_last=True)
            sampler.set_epoch(epoch)
            self._order = (epoch, torch.tensor(list(iter(sampler))))
        local = self.hp["batch_size"] // self.procs.world
        return self._order[1][b * local:(b + 1) * local]

    def _noise(self, key: int, n: int, rows: slice) -> Tensor | None:
        """Dequantization noise for ``n`` global positions (u ~ U(0, 1) or ε ~ N(0, I)); this process's ``rows``."""
        if self.data.n_bins is None:
            return None
        g = torch.Generator().manual_seed(_seed(self.settings.seed, key))
        shape = (n, *self.shape)
        draw = torch.randn if self.hp["dequantization"] == "variational" else torch.rand
        return draw(shape, generator=g, dtype=self.dtype)[rows].to(self.device)

    def _batch(self, step: int) -> tuple[Tensor, Tensor | None]:
        idx = self._indices(step)
        x = self._train[idx].reshape(len(idx), *self.shape).to(self.device)
        rows = slice(self.procs.rank, None, self.procs.world)
        return x, self._noise(step, self.hp["batch_size"], rows)

    # ------------------------------------------------------------------ steps
    def initialize(self) -> None:
        """Data-dependent initialisation (ActNorm) by a training-mode forward on the first batch
        without gradients; run once before the first step (and before a step-0 evaluation)."""
        if self._initialized or self.step:
            self._initialized = True
            return
        x, noise = self._batch(0)
        self.objective.train()
        with torch.no_grad():
            self.objective(x, noise)
        self._initialized = True

    def train_step(self) -> float:
        """One optimiser step on the next batch; returns the global batch's mean loss.

        A non-finite loss or gradient raises :class:`NumericalError` naming the step and the likely
        cause, before the optimiser changes anything."""
        self.initialize()
        x, noise = self._batch(self.step)
        self.engine.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.engine(x, noise)
        mean = _all_mean(loss.detach(), self.procs)
        if not bool(torch.isfinite(mean)):
            raise NumericalError(self._nan_message("loss", float(mean)))
        loss.backward()
        params = [p for p in self.objective.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.hp["clip"] if self.hp["clip"] else float("inf"))
        if not bool(torch.isfinite(norm)):
            raise NumericalError(self._nan_message("gradient norm", float(norm)))
        self.optimizer.step()
        self.scheduler.step()
        if self.polyak is not None:
            self.polyak.update(self.objective.model)
        self.step += 1
        return float(mean)

    def _nan_message(self, what: str, value: float) -> str:
        cause = (f"the learning rate (lr = {self.hp['lr']:g}) is likely too high; lower --lr, raise --warmup "
                 f"or set --clip")
        if self.preset.builder in ("residual", "quar"):
            cause += "; or the blocks are too close to non-contractive (lower --set coeff= / sigma=)"
        return (f"step {self.step + 1}: the {what} is {value} — training stopped; {cause}. The last good "
                f"checkpoint is kept in {self.out / 'checkpoints'}")

    # ------------------------------------------------------------------ evaluation
    def eval_model(self) -> nn.Module:
        """The model evaluated: the Polyak average with fresh norms, or the model itself in eval mode."""
        if self.polyak is not None and self.polyak.updates:
            return self.polyak.model()
        return self.objective.model.eval()

    def evaluate(self, *, ema: bool = True) -> float:
        """The mean test loss (nats or bits per dimension) on the first ``eval_size`` test samples,
        with fixed noise, in evaluation mode; ``ema=False`` evaluates the current weights."""
        self.initialize()
        model = self.eval_model() if ema else self.objective.model.eval()
        if self.objective.dequantizer is not None:
            self.objective.dequantizer.eval()
        test, batch = self._test, self.hp["batch_size"]
        total = 0.0
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(_seed(self.settings.seed, -1))
            for start in range(0, len(test), batch):
                x = test[start:start + batch].reshape(-1, *self.shape).to(self.device)
                noise = self._noise(-2 - start, len(x), slice(None))
                total += float(self.objective.loss(model, x, noise).sum())
        return total / len(test)

    @property
    def unit(self) -> str:
        return "nats" if self.data.n_bins is None else "bpd"

    # ------------------------------------------------------------------ checkpoints
    def identity(self) -> dict[str, Any]:
        s = self.settings
        return {"model": s.model, "data": s.data, "model_options": dict(s.model_options), "dtype": s.dtype,
                "discrete_levels": s.discrete_levels, "seed": s.seed, "flowspec": _version()}

    def state(self) -> dict[str, Any]:
        """Everything a resumed run needs (module docstring)."""
        s = self.settings
        return {
            "identity": self.identity(),
            "settings": _jsonable(dataclasses.asdict(s)),
            "step": self.step,
            "objective": self.objective.state_dict(),
            "ema": None if self.polyak is None else {"state": self.polyak._average.state_dict(),
                                                     "updates": self.polyak.updates},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": checkpoint.rng_state(),
            "data_order": {"sampler": "DistributedSampler(shuffle=True, drop_last=True)", "seed": s.seed,
                           "epoch": self.step // self.hp["batches_per_epoch"],
                           "batch": self.step % self.hp["batches_per_epoch"],
                           "batches_per_epoch": self.hp["batches_per_epoch"], "batch_size": self.hp["batch_size"]},
            "determinism": {"threads": torch.get_num_threads(),
                            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled()},
            "history": self.history,
        }

    def save_checkpoint(self) -> Path | None:
        """Write the checkpoint of the current step (rank 0 only); keeps the last ``keep``."""
        if not self.procs.main:
            return None
        return checkpoint.save(self.out / "checkpoints", self.step, self.state(), keep=self.settings.keep)

    def load_state(self, state: dict[str, Any]) -> None:
        """Load a checkpoint's state (call on a fresh trainer; :meth:`resume` does)."""
        self.objective.load_state_dict(state["objective"])
        if (state["ema"] is None) != (self.polyak is None):
            raise ConfigError("the checkpoint and the settings disagree on Polyak averaging (--ema)")
        if self.polyak is not None:
            self.polyak._average.load_state_dict(state["ema"]["state"])
            self.polyak.updates = int(state["ema"]["updates"])
            self.polyak._stale = True
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        det = state["determinism"]
        if self.settings.threads is None:
            torch.set_num_threads(int(det["threads"]))
        torch.use_deterministic_algorithms(bool(det["deterministic_algorithms"]) or self.settings.deterministic)
        checkpoint.set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.history = list(state["history"])
        self._initialized = True

    @classmethod
    def resume(cls, path: str | os.PathLike, **overrides: Any) -> "Trainer":
        """A trainer continuing the checkpoint ``path`` (a file or a run directory's newest).

        ``overrides`` may change :data:`RESUMABLE` settings; the identity settings (:data:`IDENTITY`),
        if given, must equal the checkpoint's, else :class:`ConfigError` says which differ. The state
        is loaded into a new trainer, so a failure leaves no half-loaded model behind."""
        file = checkpoint.latest(path)
        state = checkpoint.read(file)
        saved = state["settings"]
        wrong = [k for k, v in overrides.items() if k not in RESUMABLE and k not in IDENTITY and v is not None]
        if wrong:
            raise ConfigError(f"--resume takes the settings of its checkpoint; cannot change {wrong} "
                              f"(changeable: {', '.join(RESUMABLE)})")
        asked = {k: overrides[k] for k in IDENTITY if overrides.get(k) is not None}
        checkpoint.check_identity(file, state["identity"], {**asked, "flowspec": _version()})
        values = {**saved, **{k: v for k, v in overrides.items() if k in RESUMABLE and v is not None}}
        for one, other in (("steps", "epochs"), ("epochs", "steps")):
            if overrides.get(one) is not None:
                values[other] = None
        if overrides.get("out") is None:
            values["out"] = str(file.parent.parent) if file.parent.name == "checkpoints" else str(file.parent)
        trainer = cls(Settings.from_dict(values))
        trainer.load_state(state)
        return trainer

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, Any]:
        """Train to ``steps`` with evaluations, plots and checkpoints at the intervals; returns the
        final record (step, train loss, test metric, seconds per step)."""
        steps, every = int(self.hp["steps"]), int(self.hp["eval_every"])
        if self.procs.main:
            self.out.mkdir(parents=True, exist_ok=True)
        bar = self._progress(steps)
        start, first = time.perf_counter(), self.step
        loss: float | None = None
        self.initialize()  # on every rank: ActNorm's initialisation all-reduces
        if self.step == 0:
            self._evaluate_and_record(loss)
        try:
            while self.step < steps:
                loss = self.train_step()
                bar.update(1)
                if self.step % self.settings.log_every == 0:
                    bar.set_postfix({"loss": f"{loss:.4f}", "unit": self.unit})
                    self._record({"step": self.step, "train": loss, "lr": self.scheduler.get_last_lr()[0]})
                if self.step % every == 0 or self.step == steps:
                    self._evaluate_and_record(loss)
                if self.step % self.hp["checkpoint_every"] == 0 or self.step == steps:
                    self.save_checkpoint()
        finally:
            bar.close()
        seconds = (time.perf_counter() - start) / max(self.step - first, 1)
        final = {**self.history[-1], "seconds_per_step": seconds} if self.history else {}
        return final

    def _evaluate_and_record(self, loss: float | None) -> None:
        if not self.procs.main:
            return
        test = self.evaluate()
        self._record({"step": self.step, "train": loss, f"test_{self.unit}": test}, evaluation=True)
        if self.settings.plots:
            write_plots(self, self.out)

    def _record(self, record: dict[str, Any], evaluation: bool = False) -> None:
        if not self.procs.main:
            return
        record = {**record, "time": time.time(), "evaluation": evaluation}
        if evaluation:
            self.history.append(record)
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def _progress(self, steps: int):
        from tqdm.auto import tqdm

        show = self.settings.progress
        if show is None:
            show = sys.stderr.isatty()
        return tqdm(total=steps, initial=self.step, disable=not (show and self.procs.main), unit="step",
                    desc=f"{self.settings.model} on {self.data.name}", dynamic_ncols=True)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("flowspec")
    except PackageNotFoundError:
        return "unknown"


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(values))


# ----------------------------------------------------------------------------- plots

def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def _metrics(out: Path) -> list[dict[str, Any]]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def plot_curves(records: list[dict[str, Any]], unit: str, path: Path) -> None:
    """Training loss and test metric against the step."""
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    train = [(r["step"], r["train"]) for r in records if not r["evaluation"]]
    test = [(r["step"], r[f"test_{unit}"]) for r in records if r["evaluation"]]
    if train:
        ax.plot(*zip(*train), label=f"train ({unit})", lw=1)
    if test:
        ax.plot(*zip(*test), "o-", label=f"test, EMA ({unit})")
    ax.set_xlabel("step")
    ax.set_ylabel(unit)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def plot_images(x: Tensor, path: Path, title: str) -> None:
    """A square grid of images (N, C, H, W) with values in [0, 1]."""
    n = int(math.isqrt(len(x)))
    x = x[: n * n].clamp(0, 1).cpu().double()
    c, h, w = x.shape[1:]
    grid = x.reshape(n, n, c, h, w).permute(0, 3, 1, 4, 2).reshape(n * h, n * w, c).numpy()
    fig = _figure(5, 5.3)
    ax = fig.add_subplot()
    ax.imshow(grid[..., 0] if c == 1 else grid, cmap="gray" if c == 1 else None, vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_title(title)
    ax.axis("off")
    fig.savefig(path)


def plot_density(trainer: "Trainer", model: nn.Module, samples: Tensor | None, path: Path) -> None:
    """The model's density on a grid over the test data's range, and samples over the data."""
    test = trainer._test.cpu().double()
    lo, hi = test.quantile(0.005, dim=0) - 0.5, test.quantile(0.995, dim=0) + 0.5
    n = 120
    xs, ys = (torch.linspace(float(lo[i]), float(hi[i]), n, dtype=trainer.dtype) for i in range(2))
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2).to(trainer.device)
    with torch.no_grad():
        density = torch.cat([trainer.objective.log_density(model, g).exp() for g in grid.split(4096)])
    fig = _figure(10, 4.6)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    extent = (float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1]))
    left.imshow(density.reshape(n, n).cpu().numpy(), origin="lower", extent=extent, cmap="magma", aspect="auto")
    left.set_title(f"model density, step {trainer.step}")
    right.scatter(test[:, 0].numpy(), test[:, 1].numpy(), s=2, c="lightgrey", label="test data")
    if samples is not None:
        s = samples.cpu().double()
        right.scatter(s[:, 0].numpy(), s[:, 1].numpy(), s=2, c="tab:blue", label="samples")
    right.set_xlim(extent[:2])
    right.set_ylim(extent[2:])
    right.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path)


def write_plots(trainer: "Trainer", out: Path) -> None:
    """``curves.png`` and, for images and 2-D data, ``samples.png`` in ``out`` (Agg canvas, no pyplot)."""
    plot_curves(_metrics(out), trainer.unit, out / "curves.png")
    image, planar = trainer.data.is_image, trainer.data.event_shape == (2,)
    if not (image or planar):
        return
    model = trainer.eval_model()
    samples = None
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        try:
            samples = trainer.objective.sample(model, 64 if image else 1000,
                                               torch.Generator(trainer.device).manual_seed(trainer.settings.seed))
        except FlowError as exc:
            warnings.warn(f"no samples at step {trainer.step}: {exc}", RuntimeWarning, stacklevel=2)
    if image and samples is not None:
        plot_images(samples.reshape(-1, *trainer.data.event_shape), out / "samples.png",
                    f"{trainer.settings.model} samples, step {trainer.step}")
    elif planar:
        plot_density(trainer, model, samples, out / "samples.png")


# ----------------------------------------------------------------------------- the command line

def _config_file(path: str) -> dict[str, Any]:
    """Settings from a TOML or JSON file: top-level keys are settings (``-`` or ``_``), a ``model``
    table holds model options."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--config {path}: no such file")
    text = file.read_bytes()
    if file.suffix == ".json":
        values = json.loads(text)
    else:
        import tomllib

        values = tomllib.loads(text.decode())
    values = {k.replace("-", "_"): v for k, v in values.items()}
    if "model" in values and isinstance(values["model"], dict):
        values["model_options"] = values.pop("model")
    return values


def _option(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as JSON where it parses (numbers, true/false, lists), else a string."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


_CLI = ("model", "data", "steps", "epochs", "batch_size", "lr", "warmup", "clip", "ema", "eval_every", "eval_size",
        "checkpoint_every", "keep", "out", "device", "dtype", "seed", "data_dir", "discrete_levels", "threads")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``train`` subcommand (module docstring)."""
    p = sub.add_parser("train", help="train a model preset on a data set")
    p.add_argument("--model", help=f"preset: {', '.join(presets.PRESETS)}")
    p.add_argument("--data", help=f"data: {', '.join(datasets.NAMES)} or a .npy/.npz file (default: moons)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimiser steps (default: the preset's)")
    length.add_argument("--epochs", type=int, help="epochs instead of steps")
    p.add_argument("--batch-size", type=int, help="global batch size (all processes together)")
    p.add_argument("--lr", type=float, help="Adam's learning rate after warm-up")
    p.add_argument("--warmup", type=int, help="steps of linear learning-rate warm-up")
    p.add_argument("--clip", type=float, help="gradient clipping at this global 2-norm (0: none)")
    p.add_argument("--ema", type=float, help="Polyak decay for evaluation")
    p.add_argument("--eval-every", type=int, help="steps between test evaluations (and plots)")
    p.add_argument("--eval-size", type=int, help="number of test samples per evaluation")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default: --eval-every)")
    p.add_argument("--keep", type=int, help="checkpoints kept (default 3)")
    p.add_argument("--out", help="run directory (default runs/<model>-<data>-<time>)")
    p.add_argument("--resume", metavar="DIR|PATH", help="continue a run directory or a checkpoint file")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default cpu")
    p.add_argument("--dtype", choices=list(DTYPES), help="default float32")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--data-dir", help="folder with MNIST IDX files or CIFAR-10 pickle batches")
    p.add_argument("--discrete-levels", type=int, help="declare .npy/.npz data discrete with this many levels")
    p.add_argument("--config", help="TOML or JSON file of settings (a [model] table for model options)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model option (repeatable)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms(True)")
    p.add_argument("--no-plots", action="store_true", help="no PNG files")
    progress = p.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None, help="always show the bar")
    progress.add_argument("--no-progress", dest="progress", action="store_false", help="never show the bar")
    p.add_argument("--list", action="store_true", help="list the presets and their sizes, then exit")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    p.set_defaults(func=run_command)


def settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the command line and its config file give (``None`` for absent options)."""
    values = _config_file(args.config) if args.config else {}
    for name in _CLI:
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    options = dict(values.get("model_options", {}))
    options.update(_option(text) for text in args.set)
    if options:
        values["model_options"] = options
    if args.progress is not None:
        values["progress"] = args.progress
    if args.no_plots:
        values["plots"] = False
    if args.deterministic:
        values["deterministic"] = True
    return values


def run_command(args: argparse.Namespace) -> int:
    """``flowspec train``: 0 on success, 1 when training stopped on a non-finite loss, 2 on bad input."""
    if args.list:
        print(presets.describe())
        return 0
    trainer: Trainer | None = None
    try:
        values = settings_from_args(args)
        if args.resume:
            trainer = Trainer.resume(args.resume, **values)
        else:
            if "model" not in values:
                raise ConfigError(f"--model is required; valid: {', '.join(presets.PRESETS)}")
            trainer = Trainer(Settings.from_dict(values))
        final = trainer.fit()
    except NumericalError as exc:
        print(f"flowspec train: {exc}", file=sys.stderr)
        return 1
    except (FlowError, OSError) as exc:
        if args.debug:
            raise
        print(f"flowspec train: error: {exc}", file=sys.stderr)
        return 2
    finally:
        _finish(trainer)
    if trainer.procs.main:
        s = trainer.settings
        metric = f"test_{trainer.unit}"
        print(f"flowspec train: {s.model} on {trainer.data.name}, {trainer.step} steps, "
              f"{metric} {final.get(metric, float('nan')):.4f} (EMA weights), "
              f"{1000 * final['seconds_per_step']:.1f} ms/step; run directory {trainer.out}")
    return 0


def _finish(trainer: Trainer | None) -> None:
    if trainer is not None and trainer.procs.started_here:
        import torch.distributed as dist

        dist.destroy_process_group()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flowspec.accelerated.trainer train ...`` (the ``train`` subcommand alone)."""
    parser = argparse.ArgumentParser(prog="flowspec")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    warnings.simplefilter("default")
    sys.exit(main())
