"""The sum-of-squares polynomial flow (``sos``): forward + log-det, inverse and sampling, over two sizes.

float32, one thread, input validation off, as in ``autoregressive.py``: the MADE conditioner of the
MAF benchmarks (two hidden layers of width 4·D, ReLU) with K = 2 squares of degree r = 3 (Jaini et
al.'s usual setting: a degree-7 polynomial per dimension). The inverse is D sequential passes, each
a bracketed safeguarded-Newton solve per entry, so its batch is smaller and the larger size is
marked slow. A commit without the kind skips (``require_kind``).
"""
from __future__ import annotations

from typing import Any

from .autoregressive import _MADE

SOS = {"degree": 3, "squares": 2}


class SOSPolynomial(_MADE):
    """SOS: z_d = c + ∫₀^{x_d} Σ_k s_k(t)² + ε² dt, r = 3, K = 2, MADE conditioner."""

    kind = "sos"
    batch = 128

    def config(self, d: int) -> dict[str, Any]:
        return {**super().config(d), **SOS}
