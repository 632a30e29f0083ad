"""flowspec.reference: the exact, slow, float64 executable specification (NumPy + autograd).

Every kind is defined here once, in its family module (``elementwise``, ``coupling``, ...), which
registers it in :mod:`flowspec.registry`. The generic machinery (:mod:`.core`, :mod:`.solve`)
gives every kind its full Jacobian, ``log|det|`` by ``slogdet``, inverse, gradients, log-density
and sampling. No torch here.
"""
import importlib
import pkgutil

from .core import (
    event_shape,
    forward,
    forward_and_log_abs_det,
    init_spec,
    jacobian,
    log_abs_det,
    log_prob,
    param_names,
    sample,
    standard_normal_log_prob,
    vjp,
)
from .solve import inverse, newton_solve

# Every public submodule is a family module (or shared machinery) and registers its kinds on import.
for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "event_shape",
    "forward",
    "forward_and_log_abs_det",
    "init_spec",
    "inverse",
    "jacobian",
    "log_abs_det",
    "log_prob",
    "newton_solve",
    "param_names",
    "sample",
    "standard_normal_log_prob",
    "vjp",
]
