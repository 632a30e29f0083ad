"""Statistics for the suite's stochastic checks, each with a stated false-alarm rate.

Every statistical property has a false-alarm rate of at most :data:`TEST_ALPHA` (1e-6) per test,
split evenly over the hypothesis examples it can run (:func:`per_example_alpha`: the largest
``max_examples`` of the suite's profiles), so that a correct implementation fails a test with
probability at most 1e-6 whatever the profile.

* :func:`subgamma_halfwidth` / :func:`subgamma_samples`: a confidence interval for the mean of n
  independent variables that are sub-gamma with variance factor v and scale c on both tails
  (log E e^{λ(X−μ)} ≤ λ²v / (2(1 − c|λ|))): the mean strays from μ by more than
  h = √(2v·t/n) + c·t/n, t = log(2/α), with probability at most α (Bernstein's inequality in the form
  of Boucheron, Lugosi and Massart, *Concentration Inequalities*, Thm 2.3 with a union over the two
  tails). A bounded variable, |X − μ| ≤ b, with variance σ² is sub-gamma with v = σ² and c = b/3,
  so h is within a few per cent of the normal approximation's once n ≫ (b/σ)²; the sample size is
  fixed before sampling (:func:`subgamma_samples`), never adapted to what was seen.
* :func:`mom_plan` / :func:`median_of_means`: a confidence interval for a mean from independent
  groups, valid for any distribution with a finite variance (no normality, no boundedness: the
  roulette estimator is skewed and unbounded). A group mean strays by more than h = √(Var/p) with
  probability at most p (Chebyshev); the median of K groups strays only if at least (K + 1)/2 of them
  do, which has probability P(Bin(K, p) ≥ (K + 1)/2) ≤ α by the choice of K.
* :func:`discrete_fit_failures`: goodness of fit of integer draws to a known pmf, exact: every draw
  must lie in the support, and each bin's count (the last bin takes the upper tail) is compared to
  its exact Binomial(n, p_bin) law with a two-sided tail probability; the bins share α (Bonferroni).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import stats

from . import profiles

TEST_ALPHA = 1e-6
CHEBYSHEV_LEVELS = (0.05, 0.1, 0.15, 0.2, 0.25)


def per_example_alpha(total: float = TEST_ALPHA) -> float:
    """The false-alarm rate of one hypothesis example: ``total`` over the most examples a profile runs."""
    return total / max(p.max_examples for p in profiles.PROFILES.values())


def subgamma_halfwidth(variance_factor: float, scale: float, n: int, alpha: float) -> float:
    """h with P(|X̄_n − μ| > h) ≤ alpha for the mean of n independent sub-gamma(v, c) variables
    (module docstring): √(2v·t/n) + c·t/n with t = log(2/alpha)."""
    t = float(np.log(2.0 / alpha))
    return float(np.sqrt(2.0 * variance_factor * t / n) + scale * t / n)


def subgamma_samples(variance_factor: float, scale: float, alpha: float, target: float, step: int, cap: int) -> int:
    """The smallest multiple of ``step`` (at most ``cap``, itself a multiple of it) whose
    :func:`subgamma_halfwidth` is ≤ ``target``: a sample size fixed before any sample is seen."""
    for n in range(step, cap + 1, step):
        if subgamma_halfwidth(variance_factor, scale, n, alpha) <= target:
            return n
    return cap


def median_groups(p: float, alpha: float) -> int:
    """The smallest odd K with P(Bin(K, p) ≥ (K + 1)/2) ≤ alpha."""
    k = 1
    while stats.binom.sf((k + 1) // 2 - 1, k, p) > alpha:
        k += 2
    return k


@dataclass(frozen=True)
class MoMPlan:
    """K groups of ``group_size`` values; the median of the group means is within ``halfwidth`` of the
    mean except with probability ≤ alpha (module docstring)."""

    groups: int
    group_size: int
    halfwidth: float
    alpha: float


def mom_plan(group_variance: Callable[[int], float], budget: int, alpha: float) -> MoMPlan:
    """The plan with the narrowest interval within ``budget`` values in all, given an upper bound
    ``group_variance(b)`` of the variance of the mean of a group of b values."""
    best = None
    for p in CHEBYSHEV_LEVELS:
        groups = median_groups(p, alpha)
        size = budget // groups
        if size < 1:
            continue
        plan = MoMPlan(groups, size, float(np.sqrt(group_variance(size) / p)), alpha)
        if best is None or plan.halfwidth < best.halfwidth:
            best = plan
    if best is None:
        raise ValueError(f"a budget of {budget} values is too small for a median-of-means test at α = {alpha}")
    return best


def median_of_means(group_means: np.ndarray) -> float:
    """The median of the group means (an odd number of them)."""
    group_means = np.asarray(group_means, dtype=np.float64)
    if group_means.size % 2 != 1:
        raise ValueError(f"the median of means needs an odd number of groups, got {group_means.size}")
    return float(np.median(group_means))


def discrete_fit_failures(draws: np.ndarray, pmf: Callable[[int], float], support_min: int,
                          alpha: float, min_expected: float = 5.0) -> list[str]:
    """Why ``draws`` do not fit ``pmf`` (an empty list when they do; see the module docstring)."""
    draws = np.asarray(draws)
    count = draws.size
    problems = []
    if not np.all(draws == np.round(draws)):
        problems.append("draws are not integers")
    below = draws < support_min
    if below.any():
        problems.append(f"{int(below.sum())} of {count} draws are below the support's minimum {support_min} "
                        f"(smallest {int(draws.min())})")
    top = support_min
    while count * (1.0 - sum(pmf(n) for n in range(support_min, top + 1))) >= min_expected:
        top += 1
    bins = list(range(support_min, top))
    probs = [pmf(n) for n in bins] + [1.0 - sum(pmf(n) for n in bins)]
    observed = [int(np.sum(draws == n)) for n in bins] + [int(np.sum(draws >= top))]
    share = alpha / len(probs)
    for label, p, k in zip([str(n) for n in bins] + [f"≥ {top}"], probs, observed):
        tail = min(stats.binom.cdf(k, count, p), stats.binom.sf(k - 1, count, p))
        if 2.0 * tail < share:
            problems.append(f"N = {label}: {k} draws of {count}, expected {count * p:.1f} "
                            f"(two-sided tail {2.0 * tail:.2e} < {share:.1e})")
    return problems
