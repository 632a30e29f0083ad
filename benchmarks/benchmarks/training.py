"""Residual flow vs QuAR flow of the same architecture: training step, evaluation, forward and inverse.

The models and phases are those of ``flowspec bench compare`` (``benchmarks/compare.py``, loaded
through :func:`.common.require_benchmark`):
logit → (conv: 2×2 squeeze, so 3×H×W images reach the blocks as 12 channels) → 4 blocks with
hidden width 4× the input's, ELU, coefficient 0.97, QuAR norm option (a) (the full masked weight,
so Lip(F) ≤ σ). Training step: forward, bpd, backward, Adam, Polyak update, with the power
iteration on the new weights. Residual training: 2 exact terms + roulette (geometric, q = 0.5),
Neumann gradients with backward-in-forward; residual evaluation: 20 exact terms + roulette tail;
QuAR: exact log-det by diagonal propagation. Sizes: MLP D ∈ MLP_DIMS, conv 3×H×H with H ∈ CONV_SIDES.
``*Training`` time a step after one initialising step; ``*SteadyTraining`` time it in its steady
state, after the comparison's warm-up steps (``Settings.warmup_steps``), when the power iteration's
cost per step has settled: each timed call is one more real step.
Memory is tracked as the allocator's peak above the pre-step baseline and the bytes saved for
backward (asv ``track_*``, unit bytes); ``peakmem_*`` (process RSS, dominated by importing torch)
is kept as a coarse guard only.
"""
from __future__ import annotations

from typing import Any

import torch

from .common import one_thread, require, require_benchmark, skip_if_slow

MODELS = ["residual", "quar"]
MLP_DIMS = [32, 64]
CONV_SIDES = [8, 16]


#: Batch sizes, chosen so that one call takes 10–100 ms on one core (``flowspec bench compare`` uses
#: the QuAR paper's 96 and 256 for both families). A QuAR evaluation costs about a twentieth of a
#: residual one, so its evaluation batches are 8× larger.
TRAIN_BATCH = {"mlp": 64, "conv": 16}
TEST_BATCH = {"mlp": 64, "conv": 8}
QUAR_TEST_SCALE = 8


def _case(arch: str, size: int, family: str) -> Any:
    bench = require_benchmark("compare")
    shape = (size,) if arch == "mlp" else (3, size, size)
    test = TEST_BATCH[arch] * (QUAR_TEST_SCALE if family == "quar" else 1)
    return bench.Case(arch, shape, TRAIN_BATCH[arch], test)


class _Phase:
    """Builds one model of ``arch`` at ``size``, with its batches, in the phase's estimator setting."""

    arch = ""
    slow: tuple[tuple[str, int], ...] = ()

    def setup(self, family: str, size: int) -> None:
        one_thread()
        skip_if_slow((family, size) in self.slow)
        for module in ("residual", "quar", "lipschitz"):
            require(f"flowspec.accelerated.{module}")
        bench = require_benchmark("compare")
        self.bench = bench
        self.families = bench.real_families()
        self.settings = bench.Settings()
        self.case = _case(self.arch, size, family)
        bench.seed_torch(self.case.label, family, "asv")
        self.model = bench.build_model(family, self.case, self.settings, self.families)
        self.family = family
        self.prepare()

    def prepare(self) -> None:
        raise NotImplementedError

    def data(self, size: int, key: str) -> torch.Tensor:
        return self.bench.batch(self.case, self.settings, size, key)


class _Trained(_Phase):
    """A trainer of the model on a training batch, after :meth:`steps_before` training steps."""

    param_names = ["model", "size"]

    def steps_before(self) -> int:
        """One step: the data-dependent initialisation, and Adam's state."""
        return 1

    def prepare(self) -> None:
        if self.family == "residual":
            self.bench.configure_residual(self.model, self.families, self.settings.train_terms)
        self.trainer = self.bench.Trainer(self.model, self.settings.lr)
        self.x = self.data(self.case.train_batch, "train")
        for _ in range(self.steps_before()):
            self.trainer.step(self.x)


class _Training(_Trained):
    """A training step after the first: time, peak and saved-tensor memory."""

    def time_train_step(self, family: str, size: int) -> None:
        self.trainer.step(self.x)

    def track_train_peak_bytes(self, family: str, size: int) -> int:
        from flowspec.accelerated.memory import peak_bytes

        return peak_bytes(lambda: self.trainer.step(self.x))

    track_train_peak_bytes.unit = "bytes"

    def track_train_saved_bytes(self, family: str, size: int) -> int:
        from flowspec.accelerated.memory import saved_tensor_bytes

        return saved_tensor_bytes(lambda: self.trainer.step(self.x), resident=self.trainer.resident())

    track_train_saved_bytes.unit = "bytes"

    def peakmem_train_step(self, family: str, size: int) -> None:
        self.trainer.step(self.x)


class _SteadyTraining(_Trained):
    """One more real training step after the warm-up steps of ``flowspec bench compare``."""

    def steps_before(self) -> int:
        return self.settings.warmup_steps

    def time_steady_train_step(self, family: str, size: int) -> None:
        self.trainer.step(self.x)


class _Evaluation(_Phase):
    param_names = ["model", "size"]

    def prepare(self) -> None:
        from flowspec.accelerated import training

        if self.family == "residual":
            self.bench.configure_residual(self.model, self.families, self.settings.eval_terms)
        self.x = self.data(self.case.test_batch, "test")
        self.bench.initialize(self.model, self.x)
        self.evaluate = lambda: training.evaluate(self.model, self.x)
        self.evaluate()

    def time_evaluate(self, family: str, size: int) -> None:
        self.evaluate()

    def track_evaluate_peak_bytes(self, family: str, size: int) -> int:
        from flowspec.accelerated.memory import peak_bytes

        return peak_bytes(self.evaluate)

    track_evaluate_peak_bytes.unit = "bytes"


class _ForwardInverse(_Phase):
    """The family's flow alone (after the logit and squeeze): forward + log-det with the evaluation
    estimator, and the inverse (fixed-point iteration for both under QuAR norm option (a))."""

    param_names = ["model", "size"]

    def prepare(self) -> None:
        if self.family == "residual":
            self.bench.configure_residual(self.model, self.families, self.settings.eval_terms)
        data = self.data(self.case.test_batch, "test")
        self.bench.initialize(self.model, data)
        self.model.eval()
        self.flow = self.model.flows[-1]
        self.x = self.bench.block_input(self.model, data)
        with torch.no_grad():
            self.z = self.flow(self.x)[0]

    def time_forward_logdet(self, family: str, size: int) -> None:
        with torch.no_grad():
            self.flow(self.x)

    def time_inverse(self, family: str, size: int) -> None:
        with torch.no_grad():
            self.flow.inverse(self.z)


class MLPTraining(_Training):
    arch = "mlp"
    params = (MODELS, MLP_DIMS)


class ConvTraining(_Training):
    arch = "conv"
    params = (MODELS, CONV_SIDES)
    slow = (("residual", 16),)


class MLPSteadyTraining(_SteadyTraining):
    arch = "mlp"
    params = (MODELS, MLP_DIMS)


class ConvSteadyTraining(_SteadyTraining):
    arch = "conv"
    params = (MODELS, CONV_SIDES)
    slow = (("residual", 16),)


class MLPEvaluation(_Evaluation):
    arch = "mlp"
    params = (MODELS, MLP_DIMS)


class ConvEvaluation(_Evaluation):
    arch = "conv"
    params = (MODELS, CONV_SIDES)
    slow = (("residual", 16),)


class MLPForwardInverse(_ForwardInverse):
    arch = "mlp"
    params = (MODELS, MLP_DIMS)


class ConvForwardInverse(_ForwardInverse):
    arch = "conv"
    params = (MODELS, CONV_SIDES)
    slow = (("residual", 16), ("quar", 16))


class ResidualTermsMemory:
    """The residual flow's training-step memory against the number of exact series terms (flat)."""

    params = ([2, 5, 20],)
    param_names = ["exact_terms"]

    def setup(self, terms: int) -> None:
        one_thread()
        phase = MLPTraining()
        phase.setup("residual", 64)
        phase.bench.configure_residual(phase.model, phase.families, terms)
        phase.trainer.step(phase.x)
        self.phase = phase

    def track_train_peak_bytes(self, terms: int) -> int:
        self.phase.bench.seed_torch("terms-memory")
        return self.phase.track_train_peak_bytes("residual", 64)

    track_train_peak_bytes.unit = "bytes"

    def track_train_saved_bytes(self, terms: int) -> int:
        self.phase.bench.seed_torch("terms-memory")
        return self.phase.track_train_saved_bytes("residual", 64)

    track_train_saved_bytes.unit = "bytes"
