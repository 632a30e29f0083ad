"""flowspec: verification-first normalizing flows.

``flowspec.reference`` is the exact NumPy/autograd specification, ``flowspec.accelerated`` the
PyTorch implementation users train with, ``flowspec.conformance`` the property suite that holds an
implementation to the reference. This top-level package holds what they share: the neutral flow
description :class:`FlowSpec`, the registry of kinds and the exceptions.

Direction convention: ``forward`` maps data x to latent z (normalizing direction) and returns
``log|det ∂z/∂x|``.
"""
from .errors import ConfigError, ConvergenceError, DomainError, FlowError, FlowInputError, NumericalError
from .spec import FlowSpec

__version__ = "0.1.0"
__all__ = [
    "FlowSpec",
    "FlowError",
    "FlowInputError",
    "DomainError",
    "ConfigError",
    "NumericalError",
    "ConvergenceError",
    "__version__",
]
