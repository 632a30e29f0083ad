"""The neural autoregressive flow ``naf`` (DSF): forward + log-det and inverse at two sizes.

float32, one thread, input validation off, as in ``flows.py``: the MADE conditioner of
``autoregressive.py`` (two hidden layers of width 4·D, ReLU, natural order) with K = 4 components
per layer and L = 2 stacked layers (3KL = 24 outputs per dimension). The forward is one MADE pass
and 2 log-space mixture evaluations; the inverse is D MADE passes, each followed by L batched
safeguarded Newton solves (about ten map evaluations each). A batch of 512 keeps every call within
about 5–150 ms on one core.
"""
from __future__ import annotations

from typing import Any

from .flows import _Family

DSF = {"components": 4, "layers": 2}


class NAF(_Family):
    """NAF-DSF, L = 2 layers of K = 4 sigmoids, on the MADE conditioner."""

    kind = "naf"
    params = [8, 16]
    batch = 512

    def config(self, d: int) -> dict[str, Any]:
        return {"dim": d, "hidden": [4 * d, 4 * d], "activation": "relu", **DSF}
