"""Continuous normalizing flow (FFJORD, kind ``cnf``): forward + log-det and inverse over two sizes,
the number of function evaluations, and the exact trace against Hutchinson's estimator as D grows.

float32, one thread, input validation off, as in ``flows.py``; dopri5 at the float32 default
tolerance (√ε/64 ≈ 5.4e-6), one hidden layer of width 4·D (at least 16), tanh, T = exp(log_T) from
the reference's initialisation. The forward in evaluation mode takes the exact trace (D
vector–Jacobian products per evaluation); ``Trace`` times one training-mode forward with each
estimator at D = 2, 8, 32 and tracks the ratio exact / Hutchinson measured in the same setup.
"""
from __future__ import annotations

import time
from typing import Any

import torch

from .common import one_thread, require_kind, skip_if_slow
from .flows import _Family

HIDDEN_MIN = 16


def cnf_config(d: int, logdet: str = "exact") -> dict[str, Any]:
    return {"shape": [d], "hidden": [max(HIDDEN_MIN, 4 * d)], "activation": "tanh", "logdet": logdet}


class CNF(_Family):
    """Forward + exact log-det (evaluation mode) and inverse; ``track_nfe`` the evaluations of a forward."""

    kind = "cnf"
    params = [2, 16]
    slow_sizes = (16,)
    batch = 256

    def config(self, d: int) -> dict[str, Any]:
        return cnf_config(d)

    def setup(self, d: int) -> None:
        super().setup(d)
        self.flow.eval()

    def track_nfe(self, d: int) -> int:
        with torch.no_grad():
            self.flow(self.x)
        return self.flow.nfe

    track_nfe.unit = "evaluations"

    def track_inverse_nfe(self, d: int) -> int:
        with torch.no_grad():
            self.flow.inverse(self.z)
        return self.flow.nfe

    track_inverse_nfe.unit = "evaluations"


class Trace:
    """One training-mode forward with the exact trace and with Hutchinson's estimator, D = 2, 8, 32."""

    param_names = ["D"]
    params = [2, 8, 32]
    batch = 128
    rounds = 3

    def setup(self, d: int) -> None:
        from flowspec import reference
        from flowspec.accelerated import from_spec
        from flowspec.conformance.seeding import rng, seed_for

        one_thread()
        skip_if_slow(d == 32)
        require_kind("cnf")
        self.flows = {}
        for logdet in ("exact", "hutchinson"):
            flow = from_spec(reference.init_spec("cnf", cnf_config(d, logdet), rng("bench", "cnf", d)),
                             dtype=torch.float32)
            flow.validate_args = False
            self.flows[logdet] = flow.train()
        g = torch.Generator().manual_seed(seed_for("bench", "cnf", d, "x"))
        self.x = torch.randn((self.batch, d), generator=g)

    def _run(self, logdet: str) -> None:
        with torch.no_grad():
            self.flows[logdet](self.x)

    def time_exact(self, d: int) -> None:
        self._run("exact")

    def time_hutchinson(self, d: int) -> None:
        self._run("hutchinson")

    def track_exact_over_hutchinson(self, d: int) -> float:
        """The median over interleaved rounds of time(exact) / time(Hutchinson)."""
        ratios = []
        for _ in range(self.rounds):
            times = {}
            for logdet in ("exact", "hutchinson"):
                start = time.perf_counter()
                self._run(logdet)
                times[logdet] = time.perf_counter() - start
            ratios.append(times["exact"] / times["hutchinson"])
        return sorted(ratios)[len(ratios) // 2]

    track_exact_over_hutchinson.unit = "ratio"
