"""flowspec.accelerated: the fast PyTorch implementation (CPU and CUDA, float32 and float64).

One module per flow family, with the same names as in :mod:`flowspec.reference`; every flow is a
:class:`Flow` (``forward(x) -> (z, logabsdet)``, ``inverse(z)``, ``to_spec()``, ``from_spec()``).
:func:`from_spec` builds any registered kind; :class:`FlowDistribution` gives ``log_prob``,
``sample`` and ``rsample``. ``conformance_adapter`` connects this package to the conformance suite.
"""
import importlib
import pkgutil

from .base import MODULES, Flow, from_spec, register
from .distribution import FlowDistribution

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name != "adapter":
        importlib.import_module(f"{__name__}.{_module.name}")

from .adapter import conformance_adapter  # noqa: E402  (after the families have registered)

__all__ = ["Flow", "FlowDistribution", "MODULES", "conformance_adapter", "from_spec", "register"]
