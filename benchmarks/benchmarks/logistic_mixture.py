"""The Flow++ logistic-mixture coupling: forward + log-det and inverse at two sizes, and its forward
time per entry against the affine coupling's, as a ratio.

float32, one thread, input validation off, as in ``flows.py``: channel mask, MLP conditioner of
width 4·D with two hidden layers (tanh), K = 4 components. The inverse is the batched safeguarded
Newton solve (about ten passes of the map over all entries); the batch of 512 keeps every call within
10–300 ms on one core.

``track_forward_ratio_to_affine`` reports t(mixture forward + log-det) / t(affine forward +
log-det) for the same D, batch and conditioner, both timed in interleaved rounds
(``benchmarks/timing.py``: the median of the per-round ratios) so that load on a shared machine
affects both alike. Both layers transform D/2 entries, so it is also the ratio per transformed entry; it
includes the conditioner's wider last layer (3K + 2 = 14 outputs per entry against 2).
"""
from __future__ import annotations

from typing import Any

import torch

from .common import require_benchmark
from .flows import _Family

MIXTURE = {"components": 4}
RATIO_ROUNDS, RATIO_WARMUP = 15, 3


class LogisticMixtureCoupling(_Family):
    kind = "logistic_mixture_coupling"
    params = [64, 128]
    batch = 512

    def config(self, d: int) -> dict[str, Any]:
        return {"shape": [d], "conditioner": "mlp", "hidden": 4 * d, "depth": 2, "activation": "tanh", **MIXTURE}

    def _affine(self, d: int) -> Any:
        from flowspec import reference
        from flowspec.accelerated import from_spec
        from flowspec.conformance.seeding import rng

        config = {k: v for k, v in self.config(d).items() if k not in MIXTURE}
        flow = from_spec(reference.init_spec("affine_coupling", config, rng("bench", "affine", d)),
                         dtype=torch.float32)
        flow.validate_args = False
        return flow

    def track_forward_ratio_to_affine(self, d: int) -> float:
        timing = require_benchmark("timing")
        affine = self._affine(d)
        with torch.no_grad():
            times = timing.interleaved({"mixture": lambda: self.flow(self.x), "affine": lambda: affine(self.x)},
                                       RATIO_ROUNDS, 0.0, warmup=RATIO_WARMUP)
        return timing.summarize(timing.round_ratios(times["mixture"], times["affine"])).median

    track_forward_ratio_to_affine.unit = "ratio"
