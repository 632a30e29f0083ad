"""The adapter as the suite sees it while it checks one kind (:class:`KindView`).

One place applies what an adapter declares per kind, so no property has to: the capabilities are
those of :meth:`~.adapter.Capabilities.for_kind` (a requirement the kind lacks is missing for every
property of that kind, white-box mode is missing for a foreign kind), the kinds include the
adapter's foreign ones by full name, and a log-det the implementation returns as a scalar (a 0-d
tensor, a Python 0: what a volume-preserving layer often returns) is broadcast to one value per
sample. Every other attribute is the adapter's own.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from .adapter import Adapter, Array, Capabilities
from .namespace import kinds_of


class KindView:
    """``adapter`` while checking ``kind`` (module docstring)."""

    def __init__(self, adapter: Adapter, kind: str):
        self._adapter = adapter
        self.kind = kind
        self._caps = replace(adapter.capabilities().for_kind(kind), kinds=kinds_of(adapter))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._adapter, name)

    def capabilities(self) -> Capabilities:
        return self._caps

    def forward(self, flow: Any, x: Array, context: Array | None = None, *, raw: bool = False,
                grad: bool = False) -> tuple[Array, Array]:
        z, logdet = self._adapter.forward(flow, x, context, raw=raw, grad=grad)
        return z, per_sample(logdet, z)

    def inverse_with_logdet(self, flow: Any, z: Array, context: Array | None = None) -> tuple[Array, Array]:
        x, logdet = self._adapter.inverse_with_logdet(flow, z, context)
        return x, per_sample(logdet, x)


def per_sample(logdet: Any, out: Any) -> Array:
    """``logdet`` as a float64 array; a scalar broadcast to one entry per sample of ``out``."""
    value = np.asarray(logdet, dtype=np.float64)
    if value.ndim == 0 and np.ndim(out) > 0:
        return np.full(np.shape(out)[0], float(value))
    return value
