"""Sylvester flows (survey eq. 31-33): forward + log-det (the det identity) and the structured inverse
(M back-substituted scalar solves), over two sizes, one class per parameterization of Q.

float32, one thread, input validation off, batch 1024, as in ``flows.py``. M = D; the orthogonal
parameterization runs its orthogonalisation in every call (about ten steps from a well-conditioned
Q̂), the Householder one D reflections, the triangular one none. The inverse's cost is M sequential
batched solves of a few Newton steps each, so it grows with D faster than the forward's; the larger
size of each is marked slow (on one core: forward 1–15 ms, inverse 15–250 ms).
"""
from __future__ import annotations

from typing import Any

from .flows import _Family


class _Sylvester(_Family):
    kind = "sylvester"
    params = [32, 128]
    slow_sizes = (128,)
    parameterization = ""

    def config(self, d: int) -> dict[str, Any]:
        return {"shape": [d], "m": d, "parameterization": self.parameterization}


class SylvesterOrthogonal(_Sylvester):
    parameterization = "orthogonal"


class SylvesterHouseholder(_Sylvester):
    parameterization = "householder"


class SylvesterTriangular(_Sylvester):
    parameterization = "triangular"
