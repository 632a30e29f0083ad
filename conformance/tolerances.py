"""The one tolerance table.

Every comparison in the suite is ``error ≤ tolerance(quantity, dtype, size)`` where ``error`` is
the norm-wise relative error of :func:`relative_error` (the largest absolute difference divided by
``max(1, largest |expected|)``, so values near zero are compared absolutely) and

    tolerance = multiplier[quantity] · ε(dtype) · size ** exponent[quantity]

``ε`` is the dtype's machine epsilon and ``size`` the number of entries of one sample (D). The
multipliers cover the rounding of a few dozen floating-point operations per output; the exponent
says how errors accumulate with D: forward values are computed entry by entry (√D covers the
reductions inside conditioners), log-determinants and gradients are sums over D terms (D¹).
Inverses and round trips get larger multipliers because solving amplifies rounding by the
condition number of the Jacobian. Finite-difference Jacobians (black-box mode) are accurate to
``ε^(4/5)`` with a two-level Richardson extrapolation at step ``ε^(1/5)`` (truncation ``h⁴`` balanced
against rounding ``ε/h``), so their tolerance is built on ``ε^(4/5)`` instead of ``ε``. Norm bounds
that rest on a power-iteration estimate stopped at a relative change of order ``√ε`` are built on
``√ε`` (base ``"sqrt"``); central differences of a map that runs such an iteration in every
forward carry its error divided by the step, ``√ε/ε^(1/5) = ε^(3/10)`` (base ``"fd_iterative"``).

**Conditioning.** Rows marked ``conditioned`` (inverses, round trips, log-determinants) are also
multiplied by the 2-norm condition number κ of the Jacobian at the drawn point (the reference's in
white-box mode, the finite-difference one in black-box mode), passed by the property: solving
``f(x) = z`` amplifies a relative rounding error of z by up to κ, and ``log|det J|`` computed from
rounded entries of J is off by up to about κ·ε·D (for a nearly singular 1×1 convolution, or a planar
flow with wᵀû near −1, whose ``log(1 + ψ)`` takes the log of a small difference). The strategies
draw such points on purpose (parameters across their meaningful range), so the rows must know κ;
no row is loosened globally. κ is capped at :data:`MAX_CONDITION` per dtype (10² in float32, 10⁶
in float64): a drawn point beyond the cap is not compared at all (:meth:`CheckContext.condition`
rejects it and hypothesis draws another), since an answer there carries too few digits to judge, and
the strategies keep their regimes below it. For an elementwise map (the rational-quadratic spline)
the inverse's conditioning is 1 / its smallest slope, which the spline properties pass as κ: a bin
whose slope is 10⁻³ amplifies a rounding of z by 10³ in x.

Statistical checks do not use this table: they state a false-alarm rate (see the roulette properties).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPS = {"float64": float(np.finfo(np.float64).eps), "float32": float(np.finfo(np.float32).eps)}


@dataclass(frozen=True)
class Rule:
    multiplier: float
    exponent: float
    base: str = "eps"  # "eps", "fd" (ε^(4/5), finite differences), "sqrt" (ε^(1/2), power iteration) or
    # "fd_iterative" (ε^(3/10): finite differences of a map that runs a power iteration, √ε / ε^(1/5))
    why: str = ""
    conditioned: bool = False  # multiplied by the Jacobian's condition number (module docstring)


TABLE: dict[str, Rule] = {
    "forward": Rule(64.0, 0.5, why="entrywise maps; conditioner reductions grow like √D"),
    "logdet": Rule(64.0, 1.0, why="a sum of D log terms, each of a quantity rounded relative to κ", conditioned=True),
    "inverse": Rule(1024.0, 1.0, why="solves amplify rounding by the Jacobian's condition number", conditioned=True),
    "roundtrip": Rule(1024.0, 1.0, why="forward then inverse: two rounding paths and a solve", conditioned=True),
    "grad": Rule(256.0, 1.0, why="reverse-mode sums over D outputs and through the log-det"),
    "init_forward": Rule(64.0, 0.5, why="z of a flow whose parameters come from a data-dependent initialisation "
                         "(per-channel mean and standard deviation of a batch), computed independently by the "
                         "implementation and the reference: the standard deviation of values around a mean m "
                         "rounds relative to (|m| + s)/s, the condition number passed here, and its log enters "
                         "z as a relative error", conditioned=True),
    "diag": Rule(64.0, 1.0, why="diagonal of the Jacobian, chain rule through depth"),
    "fd_logdet": Rule(256.0, 1.0, base="fd", why="slogdet of a Richardson central-difference Jacobian",
                      conditioned=True),
    "fd_jacobian": Rule(64.0, 0.5, base="fd", why="entries of a Richardson central-difference Jacobian"),
    "norm_bound": Rule(8.0, 0.0, base="sqrt", why="relative gap between a norm and its power-iteration estimate "
                       "stopped at a change of √ε/16 (the gap is about change/(1 − r²), r the singular-value ratio, "
                       "≈ 3√ε at r = 0.99); also the cap on the tolerance an estimate may claim (conformance.lipschitz): "
                       "looser claims are checked at this row"),
    "estimate": Rule(256.0, 1.0, why="a stochastic log-det estimate or its gradient for a given probe and "
                     "draw: a series of probe–Jacobian products, each a sum over D, weighted by 1/P(N ≥ k); "
                     "estimates are compared relative to the size of their weighted terms, which heavy draws of "
                     "N make large and cancellation can hide"),
    "fixed_point": Rule(64.0, 0.5, why="a fixed-point solve's rounding error relative to max(‖y‖, 1): each step's "
                        "rounding (as a forward value's) accumulated over the iterations, amplified by "
                        "1/(1 − L), which the condition number bound (1 + L)/(1 − L) of I + J_g covers",
                        conditioned=True),
    "fd_grad": Rule(256.0, 1.0, base="fd", why="a gradient against finite differences: an N(0, 1)-weighted sum "
                    "over the D outputs and the log-det of Richardson central-difference derivatives (each "
                    "within the fd_jacobian row), or one such derivative of a loss along a unit direction; "
                    "the log-det being differenced is itself rounded relative to κ", conditioned=True),
    "fd_grad_iterative": Rule(1.0, 1.0, base="fd_iterative", why="as fd_grad, for a map whose every forward "
                              "normalises by a power-iteration estimate stopped at a relative change of order √ε: "
                              "the loss carries that error, which central differences at step ε^(1/5) divide by "
                              "the step", conditioned=True),
    "inverse_grad": Rule(1024.0, 1.0, why="a gradient through an inverse: J⁻ᵀw solves with the Jacobian, "
                         "which amplifies rounding by its condition number", conditioned=True),
    "quadrature": Rule(1.0, 0.0, base="sqrt", why="an identity between Gauss–Legendre, Gauss–Hermite and "
                       "tanh-sinh integrals of smooth, fast-decaying integrands in D = 1 (the variational "
                       "dequantization gap): at the node counts used each rule agrees with twice as many nodes to "
                       "rounding (≤ 1e-14); √ε (1.5e-8) leaves six orders of margin for slower-converging "
                       "problems, while a wrong term of the identity (a log n_bins, a Jacobian term: ≥ 1e-3) "
                       "misses it by five"),
    "orthonormal": Rule(8.0, 1.0, why="‖QᵀQ − I‖_F of a D×M basis orthonormal to rounding, size D·(M + K): "
                        "M² Gram entries of D-term dot products (≤ D·M·ε in all), plus O(ε) per entry of Q from "
                        "each of K Householder reflections (K = 0 otherwise); measured ≤ 1.4·ε·D·(M + K)"),
    "umnn": Rule(16.0, 0.5, why="a UMNN value against the exact integral, size N + 1 (the rule's nodes), relative "
                 "to max(1, |∫g|): the rounding of an (N + 1)-term sum of positive terms (no cancellation; each "
                 "w_k·g(t_k) a few ε, accumulated like a reduction, √(N + 1)); conformance.umnn adds it to the "
                 "forward row and adds the N-node Clenshaw–Curtis rule's own error E_N = |Q_N − ∫g| at the drawn "
                 "point, computed by the reference (for an analytic g, E_N ≤ 64M/(15(ρ² − 1)ρ^N) on the Bernstein "
                 "ellipse E_ρ where |g| ≤ M: no fixed multiple of ε covers it; an exact N-node rule is off the "
                 "integral by E_N plus rounding)"),
    "cnf": Rule(32.0, 1.0, base="sqrt", why="the solve error of a cnf value (z, log|det|, inverse, gradients), "
                "added to the quantity's own row for kind cnf: torchdiffeq's dopri5 at its default local "
                "tolerance τ = rtol = atol = √ε/64 per step (error relative to atol + rtol·|y|, as the table's "
                "max(1, |y|)); local error control is not global: over N steps the global error is ≤ "
                "Σ local errors · e^{LT} ≤ N·τ·e^{LT}, N ≤ 32 and e^{LT} ≤ 4 on the strategies' fields "
                "(D ≤ 3, one hidden layer ≤ 8, T ≤ 1, gentle weights) → 128τ, twice for the two solves a "
                "comparison meets (forward and inverse, or the adjoint's backward solve, or two batches' step "
                "sequences) → 256τ = 4√ε, times D for sums over D (trace, gradients); ×8 for central "
                "differences at step h = ε^(1/5) of an adaptive solve, whose step sequence can change between "
                "x ± h (a step rejected on one side): a jump of ~τ divided by h, τ/h = √ε·ε^(−1/5)/64 ≈ 21√ε "
                "in float64, 0.9√ε in float32 (measured: 1.8 × the 4√ε·D value on one example of 16). "
                "Measured ≤ 0.4 of the row elsewhere in float64; float32 errors (≤ 1e-5) are far below it"),
    "cnf_reference": Rule(8192.0, 0.5, why="the cnf reference's DOP853 solves at rtol = atol = 1e-12 ≈ 4500ε: "
                          "global error of z and of the integrated trace against solves at 1e-15, measured ≤ "
                          "1.5e-13 on D ≤ 3 fields with T ≤ 1; the row (1.8e-12·√D) leaves a factor ≥ 10"),
}


def fd_step(dtype: str) -> float:
    """Base step of the central differences: ε^(1/5) balances h⁴ truncation against ε/h rounding."""
    return EPS[dtype] ** 0.2


# The largest condition number a conditioned row accepts (module docstring).
MAX_CONDITION = {"float64": 1e6, "float32": 1e2}


def tolerance(quantity: str, dtype: str, size: int, condition: float = 1.0) -> float:
    """The tolerance for ``quantity`` at ``dtype`` for samples of ``size`` entries, at a Jacobian of
    condition number ``condition`` for the conditioned rows (module docstring)."""
    rule = TABLE[quantity]
    eps = EPS[dtype] ** {"eps": 1.0, "fd": 0.8, "sqrt": 0.5, "fd_iterative": 0.3}[rule.base]
    scale = min(max(float(condition), 1.0), MAX_CONDITION[dtype]) if rule.conditioned else 1.0
    return rule.multiplier * eps * max(int(size), 1) ** rule.exponent * scale


def condition_number(jacobians: np.ndarray) -> float:
    """The largest 2-norm condition number among a batch of square Jacobians ``(B, D, D)`` (inf if singular)."""
    jacobians = np.asarray(jacobians, dtype=np.float64)
    if jacobians.size == 0:
        return 1.0
    singular = np.linalg.svd(jacobians.reshape((-1,) + jacobians.shape[-2:]), compute_uv=False)
    smallest = singular[:, -1]
    return float(np.max(np.where(smallest > 0, singular[:, 0] / np.where(smallest > 0, smallest, 1.0), np.inf)))


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """``max|actual − expected| / max(1, max|expected|)``; ``inf`` on a shape mismatch or non-finite value."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape or not np.all(np.isfinite(actual)):
        return float("inf")
    if actual.size == 0:
        return 0.0
    return float(np.max(np.abs(actual - expected)) / max(1.0, float(np.max(np.abs(expected)))))


def assert_close(actual: np.ndarray, expected: np.ndarray, quantity: str, dtype: str, size: int, what: str = "") -> float:
    """Assert ``relative_error(actual, expected) ≤ tolerance(quantity, dtype, size)``; return the error.

    For tests and users' own checks, so that every comparison draws on this one table.
    """
    if np.shape(actual) != np.shape(expected):
        raise AssertionError(f"{what or quantity}: shape mismatch: got {np.shape(actual)}, expected {np.shape(expected)}")
    err, tol = relative_error(actual, expected), tolerance(quantity, dtype, size)
    if not err <= tol:
        raise AssertionError(f"{what or quantity}: relative error {err:.3e} > tolerance {tol:.1e} "
                             f"({quantity}, {dtype}, size {size})")
    return err
