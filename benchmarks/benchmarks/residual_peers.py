"""flowspec's residual flow against normflows' residual flow (the rows of ``flowspec bench residual``).

The MLP setting of ``benchmarks/peers_residual.py`` (D = 64, 4 blocks of LipSwish → 64→256 →
LipSwish → 256→256 → LipSwish → 256→64, coefficient 0.98, standard normal base, no ActNorm; training
2 exact terms + geometric(0.5) roulette, Neumann gradient, backward-in-forward; evaluation 20 exact
terms + the tail) at batch :data:`BATCH`, from the same initial weights (normflows' initialisation
copied into flowspec). Steady state: :data:`WARMUP` training steps in setup, so that both power
iterations have settled before anything is timed.

* ``time_train_step`` / ``time_eval``: one training step (−mean log p, backward, Adam; normflows also
  its ``update_lipschitz``) and one evaluation (eval mode, no_grad), for normflows and for flowspec
  with each roulette draw mode.
* ``track_*_cost``: flowspec's time over normflows' (median of :data:`ROUNDS` interleaved rounds of
  ``timing.interleaved``), so that, as asv reads every number, a rise is a regression; the issue's
  targets are ≤ 1/1.3 for training and ≤ 1 for evaluation.

Skipped (``NotImplementedError`` in setup) when normflows is not installed or fails to import, and
when this commit has no ``benchmarks/peers_residual.py``.
"""
from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Any

import numpy as np

from .common import one_thread, require

BATCH = 32
WARMUP = 5
ROUNDS = 10
MIN_TIME = 0.02
FLOWSPEC = ["flowspec draw=sample", "flowspec draw=batch"]


def _comparison() -> ModuleType:
    """``benchmarks/peers_residual.py`` with normflows importable, else skip."""
    require("flowspec.accelerated.residual")
    bench = require("flowspec.bench")
    from flowspec.errors import ConfigError

    try:
        module = bench.load_benchmark("peers_residual")
    except ConfigError as exc:
        raise NotImplementedError(str(exc)) from exc
    try:
        module.import_normflows()
    except module.NormflowsUnavailable as exc:
        raise NotImplementedError(f"normflows skipped: {exc}") from exc
    return module


def _contenders(pr: ModuleType, names: list[str]) -> tuple[dict[str, Any], Any]:
    """The named contenders of the MLP case after :data:`WARMUP` training steps, and the batch."""
    case = dataclasses.replace(pr.CASES["mlp"], train_batch=BATCH, eval_batch=BATCH)
    draws = tuple(n.split("=")[-1] for n in names if n != "normflows")
    everyone = pr.contenders(case, draws, seed=0, device="cpu")
    x = pr.batch(case, BATCH, seed=0, device="cpu")
    chosen = {n: everyone[n] for n in names}
    for c in chosen.values():
        for _ in range(WARMUP):
            pr.train_step(c, x)
    return chosen, x


class PeerSteps:
    """Steady-state training step and evaluation of each implementation."""

    params = [["normflows", *FLOWSPEC]]
    param_names = ["implementation"]
    timeout = 300

    def setup(self, implementation: str) -> None:
        one_thread()
        self.pr = _comparison()
        contenders, self.x = _contenders(self.pr, [implementation])
        self.contender = contenders[implementation]
        self.pr.eval_step(self.contender, self.x)  # flowspec estimates the trained weights' norms once

    def time_train_step(self, implementation: str) -> None:
        self.pr.train_step(self.contender, self.x)

    def time_eval(self, implementation: str) -> None:
        self.pr.eval_step(self.contender, self.x)


class PeerCost:
    """flowspec time / normflows time, interleaved (a rise is a regression)."""

    params = [FLOWSPEC]
    param_names = ["flowspec"]
    unit = "ratio"
    timeout = 600

    def setup(self, flowspec: str) -> None:
        one_thread()
        self.pr = _comparison()
        self.contenders, self.x = _contenders(self.pr, ["normflows", flowspec])
        self.timing = require("flowspec.bench").load_benchmark("timing")

    def _cost(self, step_name: str, flowspec: str) -> float:
        step = getattr(self.pr, step_name)
        calls = {n: (lambda c=c: step(c, self.x)) for n, c in self.contenders.items()}
        times = self.timing.interleaved(calls, ROUNDS, MIN_TIME)
        return float(np.median(self.timing.round_ratios(times[flowspec], times["normflows"])))

    def track_train_cost(self, flowspec: str) -> float:
        return self._cost("train_step", flowspec)

    def track_eval_cost(self, flowspec: str) -> float:
        return self._cost("eval_step", flowspec)
