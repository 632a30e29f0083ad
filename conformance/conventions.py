"""Named conventions: documented choices of other libraries that differ from flowspec's.

An adapter declares, per kind, the conventions its implementation follows
(``Capabilities.conventions``); only names listed here may be declared. A property that a
convention affects checks the implementation against the convention's rule instead of flowspec's
(:meth:`~.property.CheckContext.convention` tells it whether to) and, when it then holds, reports
``convention`` rather than ``passed``: the result says the implementation is right *by its own
documented rule*, which is not flowspec's. An undeclared difference still fails.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np


@dataclass(frozen=True)
class Convention:
    """A named convention, the rule it states and the properties it affects."""

    name: str
    rule: str
    properties: frozenset[str]


CONVENTIONS: dict[str, Convention] = {c.name: c for c in (
    Convention(
        "actnorm_unbiased_std",
        "ActNorm's data-dependent initialisation divides by the unbiased standard deviation (divisor "
        "n − 1 over the batch and positions) instead of flowspec's divisor n (Glow, Sec. 3.1, states "
        "no divisor); for a channel of one value the rule is undefined and is not compared.",
        frozenset({"data_init_from_fresh", "actnorm_data_init"}),
    ),
    Convention(
        "actnorm_std_epsilon",
        "ActNorm's data-dependent initialisation divides by the standard deviation plus 10⁻⁶ "
        "(s = −log(std + 10⁻⁶)), as Glow's reference code does; a channel constant over the batch is "
        "then scaled by 10⁶ rather than only centred.",
        frozenset({"data_init_from_fresh", "actnorm_data_init"}),
    ),
    Convention(
        "training_logdet_surrogate",
        "In training mode the returned log-det is a gradient surrogate (its gradient estimates the "
        "log-det's gradient; its value is not an estimate of log|det|), as the residual-flow code of "
        "Chen et al. (2019) returns; evaluation mode returns the log-det itself. The training-mode "
        "log-det value is then not compared; the evaluation-mode one is.",
        frozenset({"train_eval_agree", "forward_with_grad_matches_fd_jacobian", "estimate_unbiased_statistical",
                   "logdet_gradient_per_sample"}),
    ),
)}


def check_declared(declared: Mapping[str, frozenset[str]]) -> None:
    """Raise ``ValueError`` naming a declared convention that is not in :data:`CONVENTIONS`."""
    unknown = sorted({name for names in declared.values() for name in names} - set(CONVENTIONS))
    if unknown:
        raise ValueError(f"unknown conventions {unknown}; known: {', '.join(sorted(CONVENTIONS))}")


ACTNORM_EPSILON = 1e-6
"""The ``actnorm_std_epsilon`` convention's addend to the standard deviation."""


def actnorm_initialised(ctx: Any, init: Callable[..., dict[str, Any]], x: Any,
                        config: Mapping[str, Any]) -> dict[str, Any]:
    """``init(x, config, ddof=, epsilon=)`` (:func:`flowspec.reference.actnorm.actnorm_init`) by the
    ActNorm conventions the adapter declares for ``ctx``'s kind (none: flowspec's divisor n, no
    addend). With divisor n − 1 a channel of one value is not compared (hypothesis draws another),
    nor, with the addend, a scale beyond the dtype's condition cap: the addend of a constant
    channel's std amplifies the rounding of its centring by 1/epsilon."""
    from hypothesis import assume

    from .tolerances import MAX_CONDITION

    ddof = 1 if ctx.convention("actnorm_unbiased_std") else 0
    epsilon = ACTNORM_EPSILON if ctx.convention("actnorm_std_epsilon") else 0.0
    assume(x.size // x.shape[1] > ddof)
    params = init(x, config, ddof=ddof, epsilon=epsilon)
    if epsilon:
        assume(float(np.max(np.exp(params["log_scale"]))) <= MAX_CONDITION[ctx.dtype])
    return params
