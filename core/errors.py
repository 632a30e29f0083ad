"""Exceptions shared by every layer.

Each names what was wrong, so that bad input never turns into a silent NaN further down.
"""
from __future__ import annotations


class FlowError(Exception):
    """Base class of every error flowspec raises on purpose."""


class FlowInputError(FlowError, ValueError):
    """An input has the wrong type, dtype or shape, or holds NaN or inf."""


class DomainError(FlowInputError):
    """An input lies outside the domain of the flow (for example logit outside (0, 1))."""


class ConfigError(FlowError, ValueError):
    """A flow configuration or parameter set is invalid (for example a non-contractive coefficient)."""


class NumericalError(FlowError, ArithmeticError):
    """A computation on valid input produced a non-finite value or a singular Jacobian."""


class ConvergenceError(FlowError, RuntimeError):
    """An iterative solve stopped without meeting its tolerance.

    ``residual`` is the final residual norm relative to the size of the target, ``iterations`` the
    number of iterations spent, and ``tolerance`` the relative tolerance that was asked for.
    """

    def __init__(self, message: str, *, residual: float, iterations: int, tolerance: float):
        super().__init__(
            f"{message} (relative residual {residual:.3e} after {iterations} iterations, "
            f"tolerance {tolerance:.1e})"
        )
        self.residual = residual
        self.iterations = iterations
        self.tolerance = tolerance
