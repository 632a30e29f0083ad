"""UMNN (``umnn``): forward + log-det and inverse at two sizes, and both against the node count N.

float32, one thread, input validation off, as in ``flows.py``. The MADE has two hidden layers of
width 4·D (ReLU), embedding E = 4, one integrand network of width 16; the forward evaluates it on
batch × D × (N + 1) points, the inverse takes D sequential passes, each a bracketed safeguarded
Newton solve whose every iteration evaluates the N-node rule again. A kind missing from the commit
skips (``require_kind``).
"""
from __future__ import annotations

from typing import Any

from .flows import _Family


class UMNN(_Family):
    """D = 8 and 16 at the default N = 128 nodes."""

    kind = "umnn"
    params = [8, 16]
    slow_sizes = (16,)
    batch = 128

    def config(self, d: int) -> dict[str, Any]:
        return {"dim": d, "hidden": [4 * d, 4 * d], "activation": "relu", "embedding": 4, "integrand_hidden": [16]}


class UMNNNodes(UMNN):
    """D = 8 against the node count N: the forward's cost grows like N + 1, the inverse's too."""

    param_names = ["N"]
    params = [16, 32, 64, 128]
    slow_sizes = ()

    def config(self, n: int) -> dict[str, Any]:
        return {**super().config(8), "nodes": n}
