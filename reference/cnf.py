"""Continuous normalizing flow ``cnf`` (FFJORD, Grathwohl et al. 2019; the lecture's "continuous
version" of the change of variables, slides "Architectural Taxonomy").

    dx/dt = v(x, t),  t ∈ [0, T],  x(0) = data,  z = x(T),
    log p(x) = log N(z; 0, I) + ∫₀ᵀ tr(∂v/∂x(x(t), t)) dt                          (FFJORD eq. 4)

so the forward log|det ∂z/∂x| is ∫₀ᵀ tr(∂v/∂x) dt (the instantaneous change of variables: d log|det
∂x(t)/∂x(0)|/dt = tr(∂v/∂x), Liouville's formula). The velocity v is an MLP whose input is x with t
*concatenated* as a last entry, ``[x, t]`` (size D + 1), hidden layers of the widths ``hidden``
(none: v is affine in (x, t), a linear ODE) with ``activation`` ``tanh`` or ``softplus`` (smooth, so
that the integrator's order holds), and a linear output of size D.

The end time is a parameter, ``log_T`` (T = exp(log_T) > 0), so that T is learnable. The solve runs
in normalised time s = t/T ∈ [0, 1]: dx/ds = T·v(x, s·T). The integrator's step sequence in s then
does not depend on T's value through the time grid, and T's gradient flows through the dynamics.

**Integrator.** The reference solves with Dormand and Prince's explicit embedded 8(5,3) pair (DOP853,
Hairer, Nørsett and Wanner, *Solving ODEs I*, §II.10; the tableau's numbers are scipy's published
``dop853_coefficients``) written in autograd-NumPy: every stage is traced, while the step sizes are
chosen on unboxed values (:func:`autograd.tracer.getval`), so autograd differentiates the fixed
sequence of steps actually taken (derivatives of the discrete map, which approximate those of the
exact flow to the solve's accuracy). Error control per step: the scaled error estimate of the 5th-
and 3rd-order embedded solutions (Hairer's DOP853 norm) must be ≤ 1 with scale atol + rtol·max(|y|,
|y_new|), at ``REFERENCE_RTOL = REFERENCE_ATOL = 1e-12``; this is *local* error control. Steps are
also capped at ``MAX_STEP`` = 1/8 of the interval: differentiating the numerical solution applies the
same Runge–Kutta scheme to the variational equation at the same steps, whose error the control does
not see (with the 3 or 4 steps a gentle field allows, slogdet of the autograd Jacobian was off by 3e-11;
with ≥ 8 steps it agrees with the integrated trace to 1e-14). Measured on
the conformance strategies' configurations (D ≤ 3, one hidden layer ≤ 8, T ≤ 1) against solves at
1e-14, the global error of z and of the integrated trace is below 1e-13 (see ``tests/test_cnf.py``).
More than ``MAX_STEPS`` steps (or a step size below 1e-13 of the interval) raises
:class:`~flowspec.errors.ConvergenceError` with the last error estimate. The inverse integrates
the same ODE from s = 1 back to s = 0.

The generic machinery's log|det| (``slogdet`` of the autograd Jacobian of the forward map) is what
conformance compares against; :func:`integrated_trace` gives the exact trace integrated along the
trajectory (augmented state [x, ∫tr]) and ``tests/test_cnf.py`` shows that the two agree.

**Estimator.** In training the accelerated kind estimates the trace with Hutchinson probes ε (one
per sample, shared by the whole solve): ∫₀ᵀ εᵀ(∂v/∂x)ε dt, unbiased for ∫ tr. The registry entry
declares it in ``extras["logdet_estimate"]`` (:func:`logdet_estimate`, per probe, exact) as the
residual kinds do; ``extras["jacobian_integral"]`` (:func:`jacobian_integral`, M = ∫₀ᵀ ∂v/∂x dt)
gives the estimator's exact variance (εᵀMε for a fixed trajectory).

Config: ``shape`` [D], ``hidden`` (list of widths), ``activation``, and the accelerated kind's
``logdet`` ("hutchinson" default, "exact"), ``probe`` ("gaussian", "rademacher"), ``method``
(torchdiffeq's adaptive "dopri5" default, "dopri8", "bosh3"), ``rtol``/``atol`` (None: √ε/64 of the
dtype; else a number in (0, 1)), ``adjoint`` (bool) — validated here, not used by the reference's map.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import autograd.numpy as anp
import numpy as np
from autograd.tracer import getval
from scipy.integrate._ivp import dop853_coefficients as dop

from flowspec.errors import ConfigError, ConvergenceError, NumericalError
from flowspec.registry import Kind, config_sequence, one_of, register
from flowspec.spec import FlowSpec

from .elementwise import shape_of
from .lipschitz import sigmoid, softplus, tanh

FAMILY = "cnf"
ACTIVATIONS = ("tanh", "softplus")
LOGDETS = ("hutchinson", "exact")
PROBES = ("gaussian", "rademacher")
METHODS = ("dopri5", "dopri8", "bosh3")
DEFAULTS: dict[str, Any] = {"activation": "tanh", "logdet": "hutchinson", "probe": "gaussian", "method": "dopri5",
                            "rtol": None, "atol": None, "adjoint": False}
CONFIG_KEYS = frozenset({"shape", "hidden", *DEFAULTS})
REFERENCE_RTOL = 1e-12
REFERENCE_ATOL = 1e-12
MAX_STEPS = 5000
MAX_STEP = 0.125  # of the interval: the Jacobian of the discrete map is accurate too (module docstring)

# DOP853: 12 stages, the 13th evaluation f(s + h, y_new) enters the error estimate (and is the next
# step's first stage).
_STAGES = dop.N_STAGES
_A, _B, _C = dop.A[:_STAGES, :_STAGES], dop.B, dop.C[:_STAGES]
_E3, _E5 = dop.E3, dop.E5
_ORDER_EXPONENT = -1.0 / 8.0  # step factor exponent: the error estimate is of order 7 (h⁸ locally)

Dynamics = Callable[[float, Any], Any]


# ----------------------------------------------------------------------------- configuration

def setting(config: Mapping[str, Any], key: str) -> Any:
    """``config[key]`` or its default (:data:`DEFAULTS`)."""
    return config.get(key, DEFAULTS[key])


def hidden_of(config: Mapping[str, Any]) -> tuple[int, ...]:
    hidden = config_sequence(config, "hidden")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in hidden):
        raise ConfigError(f"config['hidden'] of a cnf must be a list of positive ints (hidden widths), got {hidden!r}")
    return hidden


def solver_tolerance(config: Mapping[str, Any], key: str) -> float | None:
    """``config[key]`` (``rtol`` or ``atol``): None (the dtype's default) or a number in (0, 1)."""
    value = setting(config, key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise ConfigError(f"config[{key!r}] of a cnf must be None or a number in (0, 1), got {value!r}")
    return float(value)


def check_config(config: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` naming the key for an invalid cnf config (module docstring)."""
    if "shape" not in config or "hidden" not in config:
        raise ConfigError(f"a cnf config needs 'shape' and 'hidden', got keys {sorted(config)}")
    (d,) = vector_shape(config)
    hidden_of(config)
    full = {**DEFAULTS, **config}
    for key, options in (("activation", ACTIVATIONS), ("logdet", LOGDETS), ("probe", PROBES), ("method", METHODS)):
        one_of(full, key, options, "a cnf")
    solver_tolerance(config, "rtol")
    solver_tolerance(config, "atol")
    if not isinstance(setting(config, "adjoint"), bool):
        raise ConfigError(f"config['adjoint'] of a cnf must be a bool, got {setting(config, 'adjoint')!r}")


def vector_shape(config: Mapping[str, Any]) -> tuple[int]:
    shape = config.get("shape")
    if not isinstance(shape, (list, tuple)) or len(shape) != 1:
        raise ConfigError(f"config['shape'] of a cnf must be a vector shape [D], got {shape!r}")
    return shape_of(config)


def n_layers(params: Mapping[str, Any]) -> int:
    """The number of linear layers of the velocity MLP (``net.{i}.weight``)."""
    return sum(1 for name in params if name.startswith("net.") and name.endswith(".weight"))


# ----------------------------------------------------------------------------- the velocity field

def _activation(name: str, a: Any) -> tuple[Any, Any]:
    """(σ(a), σ'(a)) for ``tanh`` or ``softplus``."""
    if name == "tanh":
        s = tanh(a)
        return s, 1.0 - s * s
    return softplus(a), sigmoid(a)


def velocity(spec: FlowSpec, x: Any, t: Any, with_jacobian: bool = False) -> tuple[Any, Any]:
    """(v(x, t), ∂v/∂x or None): the MLP on [x, t] and, on request, its Jacobian in x by the chain rule
    J = W_L·diag(σ'(a_{L−1}))·…·diag(σ'(a_0))·W_0[:, :D]."""
    p, name = spec.params, setting(spec.config, "activation")
    d = anp.shape(x)[0]
    w0 = p["net.0.weight"]
    a = anp.dot(w0, anp.concatenate([x, anp.reshape(t, (1,))])) + p["net.0.bias"]
    jac = w0[:, :d] if with_jacobian else None
    for i in range(1, n_layers(p)):
        s, ds = _activation(name, a)
        w = p[f"net.{i}.weight"]
        if with_jacobian:
            jac = anp.dot(w, ds[:, None] * jac)
        a = anp.dot(w, s) + p[f"net.{i}.bias"]
    return a, jac


def end_time(spec: FlowSpec) -> Any:
    """T = exp(log_T)."""
    return anp.exp(spec.params["log_T"])


# ----------------------------------------------------------------------------- the integrator

def _rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(values * values))) if values.size else 0.0


def _initial_step(fun: Dynamics, s0: float, y0: np.ndarray, f0: np.ndarray, direction: float,
                  rtol: float, atol: float) -> float:
    """Hairer's starting step (*Solving ODEs I*, §II.4): h₀ from |y|/|f|, refined by one Euler step's
    change of f, for a method whose error is of order 8; on unboxed values."""
    scale = atol + rtol * np.abs(y0)
    d0, d1 = _rms(y0 / scale), _rms(f0 / scale)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    f1 = np.asarray(getval(fun(s0 + direction * h0, y0 + direction * h0 * f0)))
    d2 = _rms((f1 - f0) / scale) / h0
    h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** (1.0 / 8.0)
    return min(100.0 * h0, h1, 1.0)


def _error_norm(k: np.ndarray, h: float, scale: np.ndarray) -> float:
    """DOP853's scaled error estimate from the 13 stage derivatives ``k`` (rows), as Hairer's code
    combines the 5th- and 3rd-order embedded errors."""
    err5, err3 = (k.T @ _E5) / scale, (k.T @ _E3) / scale
    n5, n3 = float(np.sum(err5 * err5)), float(np.sum(err3 * err3))
    if n5 == 0.0 and n3 == 0.0:
        return 0.0
    return abs(h) * n5 / np.sqrt((n5 + 0.01 * n3) * scale.size)


def dop853(fun: Dynamics, y0: Any, s0: float, s1: float, rtol: float = REFERENCE_RTOL, atol: float = REFERENCE_ATOL,
           max_steps: int = MAX_STEPS) -> Any:
    """y(s1) for dy/ds = fun(s, y), y(s0) = y0, by DOP853 with adaptive steps chosen on unboxed values
    (module docstring); ``y0`` and ``fun`` may carry autograd boxes. Raises
    :class:`ConvergenceError` after ``max_steps`` steps or when the step size underflows."""
    direction = 1.0 if s1 >= s0 else -1.0
    length = abs(s1 - s0)
    s, y = s0, y0
    f = fun(s, y)
    h = _initial_step(fun, s, np.asarray(getval(y), dtype=np.float64), np.asarray(getval(f)), direction, rtol, atol)
    err, steps = np.inf, 0
    while direction * (s1 - s) > 0.0:
        if steps >= max_steps:
            raise ConvergenceError(f"cnf reference solve (DOP853) did not reach s = {s1} in {max_steps} steps "
                                   f"(at s = {s:.6g}, last scaled error estimate {err:.3e})",
                                   residual=float(err * rtol), iterations=steps, tolerance=rtol)
        if h < 1e-13 * length:
            raise ConvergenceError(f"cnf reference solve (DOP853): step size {h:.3e} underflowed at s = {s:.6g} "
                                   f"(last scaled error estimate {err:.3e}); the field is too stiff",
                                   residual=float(err * rtol), iterations=steps, tolerance=rtol)
        h = min(h, MAX_STEP * length, direction * (s1 - s))
        hs = direction * h
        stages = [f]
        for i in range(1, _STAGES):
            stages.append(fun(s + _C[i] * hs, y + hs * anp.dot(_A[i, :i], anp.stack(stages))))
        y_new = y + hs * anp.dot(_B, anp.stack(stages))
        f_new = fun(s + hs, y_new)
        k = np.stack([np.asarray(getval(g)) for g in stages + [f_new]])
        if not np.all(np.isfinite(k)):
            raise NumericalError(f"cnf reference solve: the velocity field is not finite at s = {s:.6g}")
        y_val, y_new_val = np.asarray(getval(y)), np.asarray(getval(y_new))
        err = _error_norm(k, hs, atol + rtol * np.maximum(np.abs(y_val), np.abs(y_new_val)))
        steps += 1
        factor = 10.0 if err == 0.0 else min(10.0, max(0.2, 0.9 * err ** _ORDER_EXPONENT))
        if err <= 1.0:
            s = s1 if h == direction * (s1 - s) else s + hs
            y, f = y_new, f_new
        else:
            factor = min(factor, 1.0)
        h = h * factor
    return y


# ----------------------------------------------------------------------------- the flow

def _state_dynamics(spec: FlowSpec, extra: Callable[[Any, Any], Any] | None = None) -> Dynamics:
    """dy/ds for y = [x, q] in normalised time: dx/ds = T·v(x, sT), dq/ds = T·extra(v, J) (q absent
    without ``extra``)."""
    (d,) = vector_shape(spec.config)
    T = end_time(spec)

    def fun(s: float, y: Any) -> Any:
        x = y[:d]
        v, jac = velocity(spec, x, s * T, with_jacobian=extra is not None)
        if extra is None:
            return T * v
        return T * anp.concatenate([v, anp.reshape(extra(x, jac), (-1,))])
    return fun


def cnf_forward(spec: FlowSpec, x: Any, context: Any = None) -> Any:
    """z = x(T) from x(0) = x (module docstring)."""
    return dop853(_state_dynamics(spec), x, 0.0, 1.0)


def cnf_inverse(spec: FlowSpec, z: Any, context: Any = None) -> Any:
    """x = x(0) from x(T) = z: the same ODE integrated from s = 1 back to s = 0."""
    return dop853(_state_dynamics(spec), z, 1.0, 0.0)


def _augmented(spec: FlowSpec, x: Any, extra: Callable[[Any, Any], Any]) -> tuple[Any, Any]:
    (d,) = vector_shape(spec.config)
    size = np.size(getval(extra(x, velocity(spec, x, 0.0, True)[1])))
    y = dop853(_state_dynamics(spec, extra), anp.concatenate([x, anp.zeros(size)]), 0.0, 1.0)
    return y[:d], y[d:]


def integrated_trace(spec: FlowSpec, x: Any) -> tuple[Any, Any]:
    """(z, ∫₀ᵀ tr(∂v/∂x) dt): the exact log|det ∂z/∂x| integrated along the trajectory (augmented state)."""
    z, q = _augmented(spec, x, lambda _x, jac: anp.trace(jac))
    return z, q[0]


def logdet_estimate(spec: FlowSpec, x: Any, probe: Any) -> Any:
    """The Hutchinson estimate for the probe ε, ∫₀ᵀ εᵀ(∂v/∂x)ε dt (FFJORD eq. 7), exact per probe."""
    eps = np.asarray(probe, dtype=np.float64).reshape(-1)
    return _augmented(spec, x, lambda _x, jac: anp.dot(eps, anp.dot(jac, eps)))[1][0]


def jacobian_integral(spec: FlowSpec, x: Any) -> np.ndarray:
    """M = ∫₀ᵀ ∂v/∂x(x(t), t) dt along the trajectory from x: the estimate for ε is εᵀMε."""
    (d,) = vector_shape(spec.config)
    return np.asarray(_augmented(spec, x, lambda _x, jac: anp.reshape(jac, (-1,)))[1]).reshape(d, d)


def cnf_init(config: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Layer i: weight ~ N(0, 1/fan_in), bias ~ N(0, 0.1²); the output layer at half that scale (a gentle
    field, as FFJORD's trained fields are); log_T = log U(0.2, 1)."""
    (d,) = vector_shape(config)
    widths = [d + 1, *hidden_of(config), d]
    params: dict[str, np.ndarray] = {}
    last = len(widths) - 2
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        gain = 0.5 if i == last else 1.0
        params[f"net.{i}.weight"] = rng.normal(0.0, gain / np.sqrt(n_in), (n_out, n_in))
        params[f"net.{i}.bias"] = rng.normal(0.0, 0.1, n_out)
    params["log_T"] = np.asarray(np.log(rng.uniform(0.2, 1.0)))
    return params


# The suite's examples per property under the ci profile: each needs traced reference solves (a few
# seconds), and 4 exceed the values of every cnf axis (at most 3), so every run still covers them.
CI_EXAMPLES = 4


register(Kind(
    name="cnf", family=FAMILY, forward=cnf_forward, inverse=cnf_inverse, event_shape=vector_shape,
    init_params=cnf_init, check_config=check_config, config_keys=CONFIG_KEYS,
    summary="dx/dt = v(x, t) on [0, T] (FFJORD), v an MLP on [x, t], log|det| = ∫ tr ∂v/∂x dt",
    extras={"logdet_estimate": logdet_estimate, "integrated_trace": integrated_trace,
            "jacobian_integral": jacobian_integral, "solver_row": "cnf", "ci_examples": CI_EXAMPLES},
    defaults=DEFAULTS,
))
