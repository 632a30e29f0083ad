"""Sylvester flows (survey eq. 31-33; van den Berg et al. 2018; slides "Determinant Identity – Sylvester Flows").

    f(x) = x + A·h(B·x + b),    A = Q·R,  B = R̃·Qᵀ,  h = tanh                          (eq. 31)

with Q a D×M matrix of orthonormal columns (M ≤ D), R and R̃ upper triangular M×M and b ∈ R^M. By
Sylvester's identity det(I_D + A·B) = det(I_M + B·A) (eq. 32) and the triangular structure,

    log|det ∂f/∂x| = Σ_i log(1 + r_ii·r̃_ii·h′(a_i)),    a = R̃·Qᵀx + b                   (eq. 33)

(this module's :func:`det_identity_log_det`; the reference's own log-det stays ``slogdet`` of the
autograd Jacobian, which checks it).

Config (every key but ``shape`` has a default):

* ``shape``: ``[D]``; ``m``: M with 1 ≤ M ≤ D (default D); ``context_dim``: C ≥ 0 (default 0);
* ``parameterization`` of Q (default ``"orthogonal"``), with the keys that only it takes:

  - ``"orthogonal"`` (O-SNF): Q is the orthonormalised raw D×M parameter ``q`` (Q̂) by the iteration
    Q ← Q·(I + ½(I − QᵀQ)), started from Q̂/‖Q̂‖_F (singular values in (0, 1], inside the basin
    (0, √3)); at each step ‖QᵀQ − I‖_F is computed, and the first step at which it is ≤ ``orth_tol``
    is the last one taken, so the Q used has ‖QᵀQ − I‖_F ≤ ¾·tol² + rounding (the error squares
    each step). ``orth_tol`` defaults to None, meaning √ε of the dtype (1.5e-8 here, 3.5e-4 in
    float32): Q is then orthonormal to rounding, which the det identity needs (the rounding floor of
    ‖QᵀQ − I‖_F stays far below √ε: 7.6·10⁻⁶ at D = M = 1024 in float32). ``orth_max_iter``
    (default 40) caps it: a singular value σ grows to σ(3 − σ²)/2, at most 1.5× per step, so a Q̂
    with σ_min/‖Q̂‖_F ≥ 10⁻⁵ converges within 34 steps, while the rounding noise of a
    rank-deficient Q̂ (a dependent column) needs ≥ 49 steps in float32 and ~100 in float64 to grow:
    such a Q̂ raises :class:`ConvergenceError` with its last ‖QᵀQ − I‖_F, in both dtypes, as does
    Q̂ = 0. Gradients flow through the iterations. The spec carries the raw Q̂, not Q;
  - ``"householder"`` (H-SNF): Q = the first M columns of H₁·H₂·…·H_K, H_k = I − 2·v_k·v_kᵀ/‖v_k‖²,
    K = ``reflections`` (default D) rows of the raw parameter ``v`` (K×D); a zero v_k raises
    :class:`NumericalError`;
  - ``"triangular"`` (T-SNF): Q = the first M columns of the identity, or with ``reverse=True``
    (default False) of the reversal permutation: columns e_D, e_{D−1}, …, e_{D−M+1}. A stack
    alternates ``reverse`` from layer to layer. No parameters.

  For M < D the layer acts inside span(Q) only (for the triangular kind: on the first M coordinates,
  or on the last M in reverse order); the component of x orthogonal to it passes unchanged.

Parameters: ``r`` and ``r_tilde`` (M×M; their strict lower triangles are ignored), ``b`` (M), and
``q`` (D×M) or ``v`` (K×D). **Amortized** (C > 0): every raw parameter θ has a companion
``θ_context`` of shape θ.shape + (C,) and the sample with context c uses θ + θ_context·c (a linear
map from the context to the raw parameters, as a VAE encoder's output); Q, R and R̃ are then built
per sample from these raw values, so the invertibility below holds for every context.

**Invertibility margin.** The diagonals are r_ii = diag(``r``)_i (free) and

    r̃_ii = S/(1 + S·softplus(−r_ii)/μ),    S = softplus(diag(``r_tilde``)_i),    μ = 1 − δ,

so r̃_ii ≥ 0, and for r_ii < 0, r_ii·r̃_ii = −μ·[|r_ii|/softplus(−r_ii)]·[u/(1 + u)] > −μ with
u = S·softplus(−r_ii)/μ; for r_ii ≥ 0 the product is ≥ 0. Hence every diagonal slope
1 + r_ii·r̃_ii·h′ with h′ ∈ [0, 1] is ≥ δ = :data:`MARGIN` = 0.01, for every raw value (van den
Berg et al.'s Theorem 2 asks r_ii·r̃_ii > −1/sup|h′|; r̃_ii > 0 loses nothing, since (R·D, D·R̃, D·b)
with D = diag(±1) is the same map for an odd h). In floating point the product is within a few ulps
of its exact value, so the slope is ≥ δ − 3ε (relative 300ε) in either dtype, and no raw value
saturates it to −1 as tanh-squashed diagonals do (tanh(x) rounds to ±1 from |x| ≈ 9 in float32).
Where S·softplus(−r_ii) overflows (raw values beyond ~10¹⁹ in float32) r̃_ii rounds to 0, slope 1.

**Inverse** (exact and structured): with y = Qᵀx, the component x − Q·y is unchanged, and inside
span(Q) the map is g(y) = y + R·h(R̃·y + b), upper triangular with diagonal 1 + r_ii·r̃_ii·h′ ≥ δ.
Back-substitution from i = M down to 1 solves one scalar equation per coordinate,

    y_i + r_ii·tanh(r̃_ii·y_i + c_i) = t_i,   c_i = b_i + Σ_{k>i} r̃_ik·y_k,   t_i = (Qᵀz)_i − Σ_{j>i} r_ij·h_j,

strictly increasing with its root within |r_ii| of t_i, here bisected to adjacent floats
(:func:`~flowspec.reference.solve.bisect_increasing`); then x = z − Q·R·h(a). Solving in y rather
than in w = R̃·y + b (where the diagonal is the same) needs no division by r̃_ii, so R̃ need not be
invertible: the map is a bijection whenever every slope is positive.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import autograd.numpy as anp
import numpy as np
from autograd.tracer import getval

from flowspec.errors import ConfigError, ConvergenceError, NumericalError
from flowspec.registry import Kind, register
from flowspec.spec import FlowSpec

from .lipschitz import softplus, tanh
from .solve import bisect_increasing

FAMILY = "sylvester"
PARAMETERIZATIONS = ("orthogonal", "householder", "triangular")
MARGIN = 0.01
"""δ: every diagonal slope 1 + r_ii·r̃_ii·h′ is at least this, for every raw value (module docstring)."""
MU = 1.0 - MARGIN
DEFAULT_ORTH_MAX_ITER = 40
KEYS = ("shape", "m", "parameterization", "reflections", "reverse", "orth_tol", "orth_max_iter", "context_dim")
OWNERS = {"reflections": "householder", "reverse": "triangular", "orth_tol": "orthogonal",
          "orth_max_iter": "orthogonal"}
"""The keys that only one parameterization takes."""
BASIS_PARAMS = {"orthogonal": ("q",), "householder": ("v",), "triangular": ()}
TRIANGLE_PARAMS = ("r", "r_tilde", "b")


@dataclass(frozen=True)
class SylvesterConfig:
    """A validated configuration (module docstring); keys of other parameterizations are None."""

    d: int
    m: int
    parameterization: str
    reflections: int | None
    reverse: bool | None
    orth_tol: float | None
    orth_max_iter: int | None
    context_dim: int

    def raw_names(self) -> tuple[str, ...]:
        """The raw parameters, each amortized by ``<name>_context`` when C > 0."""
        return BASIS_PARAMS[self.parameterization] + TRIANGLE_PARAMS

    def raw_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = {"q": (self.d, self.m), "v": (self.reflections or 0, self.d), "r": (self.m, self.m),
                  "r_tilde": (self.m, self.m), "b": (self.m,)}
        return {name: shapes[name] for name in self.raw_names()}

    def to_config(self) -> dict[str, Any]:
        """The full config, with every key this parameterization takes."""
        out: dict[str, Any] = {"shape": [self.d], "m": self.m, "parameterization": self.parameterization}
        out.update({key: getattr(self, key) for key, owner in OWNERS.items() if owner == self.parameterization})
        out["context_dim"] = self.context_dim
        return out


def _int_at_least(config: Mapping[str, Any], key: str, low: int, default: int) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"config[{key!r}] of a sylvester flow must be an int ≥ {low}, got {value!r}")
    return value


def _dimension(config: Mapping[str, Any]) -> int:
    shape = config.get("shape")
    if not isinstance(shape, (list, tuple)) or len(shape) != 1 or isinstance(shape[0], bool) \
            or not isinstance(shape[0], int) or shape[0] < 1:
        raise ConfigError(f"config['shape'] of a sylvester flow must be a vector shape [D], D ≥ 1, got {shape!r}")
    return shape[0]


def _orth_tol(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise ConfigError(f"config['orth_tol'] of a sylvester flow must be None (√ε of the dtype) or a number in "
                          f"(0, 1), got {value!r}")
    return float(value)


def parse_config(config: Mapping[str, Any]) -> SylvesterConfig:
    """Fill in the defaults and validate; raises :class:`ConfigError` naming the bad entry."""
    unknown = sorted(set(config) - set(KEYS))
    if unknown:
        raise ConfigError(f"unknown config keys {unknown} for a sylvester flow; known: {list(KEYS)}")
    d = _dimension(config)
    m = _int_at_least(config, "m", 1, d)
    if m > d:
        raise ConfigError(f"config['m'] of a sylvester flow must be ≤ D = {d}, got {m}")
    parameterization = config.get("parameterization", "orthogonal")
    if parameterization not in PARAMETERIZATIONS:
        raise ConfigError(f"config['parameterization'] of a sylvester flow must be one of {list(PARAMETERIZATIONS)}, "
                          f"got {parameterization!r}")
    for key, owner in OWNERS.items():
        if config.get(key) is not None and parameterization != owner:
            raise ConfigError(f"config[{key!r}] applies only to parameterization {owner!r}, not {parameterization!r}")
    reverse = config.get("reverse", False) if parameterization == "triangular" else None
    if reverse is not None and not isinstance(reverse, bool):
        raise ConfigError(f"config['reverse'] of a sylvester flow must be a bool, got {reverse!r}")
    orthogonal = parameterization == "orthogonal"
    return SylvesterConfig(
        d=d, m=m, parameterization=parameterization,
        reflections=_int_at_least(config, "reflections", 1, d) if parameterization == "householder" else None,
        reverse=reverse, orth_tol=_orth_tol(config.get("orth_tol")) if orthogonal else None,
        orth_max_iter=_int_at_least(config, "orth_max_iter", 1, DEFAULT_ORTH_MAX_ITER) if orthogonal else None,
        context_dim=_int_at_least(config, "context_dim", 0, 0),
    )


def event_shape(config: Mapping[str, Any]) -> tuple[int]:
    return (parse_config(config).d,)


def context_shape(config: Mapping[str, Any]) -> tuple[int] | None:
    dim = parse_config(config).context_dim
    return (dim,) if dim else None


# ----------------------------------------------------------------------------- the pieces

def raw_params(spec: FlowSpec, cfg: SylvesterConfig, context: Any = None) -> dict[str, Any]:
    """The raw parameters of one sample: θ, or θ + θ_context·c with a context (module docstring)."""
    p = spec.params
    if cfg.context_dim == 0:
        return {name: p[name] for name in cfg.raw_names()}
    return {name: p[name] + anp.dot(p[f"{name}_context"], context) for name in cfg.raw_names()}


def orthonormalize(q_hat: Any, tol: float, max_iter: int) -> Any:
    """Q from Q̂ by Q ← Q·(I + ½(I − QᵀQ)) from Q̂/‖Q̂‖_F, the step at which ‖QᵀQ − I‖_F ≤ tol being
    the last (module docstring); raises :class:`ConvergenceError` after ``max_iter`` steps."""
    eye = np.eye(q_hat.shape[1])
    norm_sq = anp.sum(q_hat ** 2)
    if getval(norm_sq) == 0.0:
        raise ConvergenceError("sylvester flow: Q̂ = 0 cannot be orthonormalised", residual=math.sqrt(len(eye)),
                               iterations=0, tolerance=tol)
    q = q_hat / anp.sqrt(norm_sq)
    residual = float("inf")
    for _ in range(max_iter):
        defect = eye - anp.dot(q.T, q)
        residual = float(np.linalg.norm(getval(defect)))
        q = q + 0.5 * anp.dot(q, defect)
        if residual <= tol:
            return q
    raise ConvergenceError("sylvester flow: the orthogonalisation of Q̂ did not converge (is Q̂ rank-deficient?)",
                           residual=residual, iterations=max_iter, tolerance=tol)


def householder_basis(v: Any, m: int) -> Any:
    """The first M columns of H₁·…·H_K, H_k = I − 2·v_k·v_kᵀ/‖v_k‖² (v: K×D)."""
    q = np.eye(v.shape[1])[:, :m]
    for k in reversed(range(v.shape[0])):
        vv = anp.dot(v[k], v[k])
        if getval(vv) == 0.0:
            raise NumericalError(f"sylvester flow: Householder vector v[{k}] is zero")
        q = q - anp.outer(v[k], 2.0 * anp.dot(v[k], q) / vv)
    return q


def triangular_basis(d: int, m: int, reverse: bool) -> np.ndarray:
    """The first M columns of the identity, or of the reversal permutation (e_D, e_{D−1}, …)."""
    eye = np.eye(d)
    return (eye[:, ::-1] if reverse else eye)[:, :m]


def basis_from_raw(cfg: SylvesterConfig, raw: Mapping[str, Any]) -> Any:
    """Q (D×M) of the configured parameterization."""
    if cfg.parameterization == "orthogonal":
        tol = float(np.sqrt(np.finfo(np.float64).eps)) if cfg.orth_tol is None else cfg.orth_tol
        return orthonormalize(raw["q"], tol, cfg.orth_max_iter)
    if cfg.parameterization == "householder":
        return householder_basis(raw["v"], cfg.m)
    return triangular_basis(cfg.d, cfg.m, cfg.reverse)


def constrained_diagonal(r_diag: Any, rt_raw_diag: Any) -> Any:
    """r̃_ii = S/(1 + S·softplus(−r_ii)/μ), S = softplus(raw), so r_ii·r̃_ii > −μ (module docstring)."""
    s = softplus(rt_raw_diag)
    return s / (1.0 + s * softplus(-r_diag) / MU)


def triangles(raw: Mapping[str, Any]) -> tuple[Any, Any]:
    """(R, R̃): the upper triangles of ``r`` and ``r_tilde``, R̃'s diagonal constrained."""
    r, rt = raw["r"], raw["r_tilde"]
    r_diag = anp.diag(r)
    return (anp.triu(r, 1) + anp.diag(r_diag),
            anp.triu(rt, 1) + anp.diag(constrained_diagonal(r_diag, anp.diag(rt))))


def parts(spec: FlowSpec, context: Any = None) -> tuple[Any, Any, Any, Any]:
    """(Q, R, R̃, b) of one sample."""
    cfg = parse_config(spec.config)
    raw = raw_params(spec, cfg, context)
    r, rt = triangles(raw)
    return basis_from_raw(cfg, raw), r, rt, raw["b"]


def sech2(a: Any) -> Any:
    """h′ = 1 − tanh²(a) = 4e/(1 + e)², e = exp(−2|a|): accurate to rounding for every a."""
    e = anp.exp(-2.0 * anp.abs(a))
    return 4.0 * e / (1.0 + e) ** 2


# ----------------------------------------------------------------------------- the map

def sylvester_forward(spec: FlowSpec, x: Any, context: Any = None) -> Any:
    """f(x) = x + Q·R·h(R̃·Qᵀx + b) (eq. 31)."""
    q, r, rt, b = parts(spec, context)
    return x + anp.dot(q, anp.dot(r, tanh(anp.dot(rt, anp.dot(q.T, x)) + b)))


def diagonal_slopes(spec: FlowSpec, x: Any, context: Any = None) -> np.ndarray:
    """1 + r_ii·r̃_ii·h′(a_i) of one sample, a = R̃·Qᵀx + b: the diagonal of the triangular map in span(Q)."""
    q, r, rt, b = (np.asarray(getval(t)) for t in parts(spec, context))
    a = rt @ (q.T @ np.asarray(x)) + b
    return 1.0 + np.diag(r) * np.diag(rt) * sech2(a)


def det_identity_log_det(spec: FlowSpec, x: Any, context: Any = None) -> np.ndarray:
    """log|det ∂f/∂x| per sample by the determinant identity, Σ_i log(1 + r_ii·r̃_ii·h′(a_i)) (eq. 33)."""
    x = np.asarray(x, dtype=np.float64)
    return np.array([np.sum(np.log(diagonal_slopes(spec, x[i], None if context is None else context[i])))
                     for i in range(x.shape[0])])


def sylvester_inverse(spec: FlowSpec, z: Any, context: Any = None) -> np.ndarray:
    """x = f⁻¹(z) by back-substitution of M scalar solves inside span(Q) (module docstring)."""
    q, r, rt, b = (np.asarray(getval(t), dtype=np.float64) for t in parts(spec, context))
    z = np.asarray(z, dtype=np.float64)
    w = q.T @ z
    m = len(b)
    y, h = np.zeros(m), np.zeros(m)
    for i in reversed(range(m)):
        c = float(b[i] + rt[i, i + 1:] @ y[i + 1:])
        target = float(w[i] - r[i, i + 1:] @ h[i + 1:])
        rho, s = float(r[i, i]), float(rt[i, i])
        reach = abs(rho) + 1.0  # the root lies within |r_ii| of the target; the margin absorbs rounding
        y[i] = bisect_increasing(lambda a: a + rho * np.tanh(s * a + c), target, target - reach, target + reach)
        h[i] = np.tanh(s * y[i] + c)
    return z - q @ (r @ h)


def basis(spec: FlowSpec, context: Any = None) -> np.ndarray:
    """Q (D×M) of ``spec``, or (B, D, M) for a batch of contexts (registry extra ``orthonormal_basis``)."""
    if context is None:
        return np.asarray(parts(spec)[0], dtype=np.float64)
    return np.stack([np.asarray(parts(spec, c)[0], dtype=np.float64) for c in np.asarray(context)])


# ----------------------------------------------------------------------------- parameters

def _spread_columns(d: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """U·diag(s)·Vᵀ with U, V random orthonormal and s = e^{uniform(−1, 1)}: κ(Q̂) ≤ e²."""
    u = np.linalg.qr(rng.standard_normal((d, m)))[0]
    v = np.linalg.qr(rng.standard_normal((m, m)))[0]
    return u @ np.diag(np.exp(rng.uniform(-1.0, 1.0, m))) @ v.T


def sylvester_init(config: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Q̂ well conditioned (:func:`_spread_columns`) or unit vectors v_k of uniform direction (the
    gradient w.r.t. v scales as 1/‖v‖, and at D = 1, where Q = (−1)^K and the exact gradient is 0, its
    rounding does not cancel); diagonals of r and r_tilde
    N(0, 1), their strict upper triangles N(0, 1/(4M)), lower triangles zero; b ~ N(0, ¼); context
    weights N(0, 0.1/C)."""
    cfg = parse_config(config)
    m = cfg.m
    params: dict[str, np.ndarray] = {}
    if cfg.parameterization == "orthogonal":
        params["q"] = _spread_columns(cfg.d, m, rng)
    elif cfg.parameterization == "householder":
        v = rng.standard_normal((cfg.reflections, cfg.d))
        params["v"] = v / np.linalg.norm(v, axis=1, keepdims=True)
    for name in ("r", "r_tilde"):
        params[name] = np.diag(rng.standard_normal(m)) + np.triu(rng.normal(0.0, 0.5 / np.sqrt(m), (m, m)), 1)
    params["b"] = rng.normal(0.0, 0.5, m)
    if cfg.context_dim:
        scale = np.sqrt(0.1 / cfg.context_dim)
        for name, shape in cfg.raw_shapes().items():
            params[f"{name}_context"] = rng.normal(0.0, scale, shape + (cfg.context_dim,))
    return params


register(Kind(
    name="sylvester", family=FAMILY, forward=sylvester_forward, inverse=sylvester_inverse, event_shape=event_shape,
    init_params=sylvester_init, check_config=parse_config, context_shape=context_shape,
    summary="f(x) = x + Q·R·tanh(R̃·Qᵀx + b), Q orthonormal (iterated, Householder or permutation), "
            "diagonal slopes ≥ 0.01",
    extras={"invertibility_margin": lambda config: MARGIN, "orthonormal_basis": basis},
))
