"""Generic reference machinery, written once for every kind.

Everything here is float64 and exact up to rounding: the full Jacobian comes from autograd,
``log|det|`` from ``slogdet`` of that Jacobian, gradients from autograd (through ``slogdet`` for
log-determinants). Batched functions take ``x`` of shape ``(batch, *event_shape)`` and treat each
sample independently; single-sample functions end in ``_one``.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import autograd.numpy as anp
import numpy as np
from autograd import grad, jacobian as ag_jacobian
from autograd.tracer import getval

from flowspec import registry
from flowspec.errors import ConfigError, FlowInputError, NumericalError
from flowspec.spec import FlowSpec

Array = np.ndarray


# ----------------------------------------------------------------------------- validation

def check_input(spec: FlowSpec, x: Any, what: str = "x", *, latent: bool = False) -> Array:
    """Return a batch ``x`` as float64 after checking shape, finiteness and domain.

    With ``latent=True`` the array is checked against the latent shape and the codomain instead.
    """
    kind = registry.get(spec.kind)
    event = kind.output_shape(spec.config) if latent else tuple(kind.event_shape(spec.config))
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        raise FlowInputError(f"{what} must be a real array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    expected = ("batch",) + event
    if arr.ndim != len(expected) or tuple(arr.shape[1:]) != event:
        raise FlowInputError(f"{what} for kind {spec.kind!r} must have shape {expected}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise FlowInputError(f"{what} holds {int((~np.isfinite(arr)).sum())} NaN or infinite entries")
    (kind.codomain_of(spec.config) if latent else kind.domain).check(arr, what)
    return arr


def check_context(spec: FlowSpec, context: Any, batch: int | None) -> Array | None:
    shape = registry.get(spec.kind).context_of(spec.config)
    if shape is None:
        if context is not None:
            raise FlowInputError(f"kind {spec.kind!r} takes no context, but one was given")
        return None
    arr = np.asarray(context, dtype=np.float64) if context is not None else None
    expected = shape if batch is None else (batch,) + shape
    if arr is None or arr.shape != expected:
        got = None if arr is None else arr.shape
        raise FlowInputError(f"context for kind {spec.kind!r} must have shape {expected}, got {got}")
    return arr


# ----------------------------------------------------------------------------- single sample

def forward_one(spec: FlowSpec, x: Any, context: Any = None) -> Any:
    """The kind's forward map on one sample (autograd-differentiable in ``x`` and in params)."""
    return registry.get(spec.kind).forward(spec, x, context)


def flat_forward_one(spec: FlowSpec, context: Any = None) -> Callable[[Any], Any]:
    """``x_flat -> z_flat`` for one sample, for Jacobians and solvers."""
    shape = tuple(registry.get(spec.kind).event_shape(spec.config))
    return lambda x_flat: anp.reshape(forward_one(spec, anp.reshape(x_flat, shape), context), (-1,))


def map_jacobian(fn: Callable[[Any], Any], x: Any) -> Any:
    """Autograd Jacobian of a single-sample map ``fn`` at ``x``, flattened to ``(D_out, D)``
    (row: output, column: input, C-order); shared by every reference Jacobian."""
    shape = anp.shape(x)
    return ag_jacobian(lambda xf: anp.reshape(fn(anp.reshape(xf, shape)), (-1,)))(anp.reshape(x, (-1,)))


def jacobian_one(spec: FlowSpec, x: Array, context: Any = None) -> Any:
    """Full Jacobian ``∂z/∂x`` of one sample, flattened to ``(D, D)`` (row: output, column: input)."""
    return map_jacobian(lambda xs: forward_one(spec, xs, context), x)


def log_abs_det_one(spec: FlowSpec, x: Any, context: Any = None) -> Any:
    """``log|det ∂z/∂x|`` of one sample by ``slogdet`` of the full Jacobian."""
    sign, logdet = anp.linalg.slogdet(jacobian_one(spec, x, context))
    if getval(sign) == 0:
        raise NumericalError(f"the Jacobian of kind {spec.kind!r} is singular at this input")
    return logdet


# ----------------------------------------------------------------------------- batched API

def stack_samples(values: list[Any], shape: tuple[int, ...]) -> Array:
    """The per-sample results stacked on a batch axis; an empty batch gives the empty array of
    ``(0, *shape)`` (``shape``: one result's)."""
    return np.stack([np.asarray(v) for v in values]) if values else np.zeros((0,) + tuple(shape))


def _per_sample(fn: Callable[..., Any], spec: FlowSpec, x: Any, context: Any, shape: tuple[int, ...]) -> Array:
    x = check_input(spec, x)
    ctx = check_context(spec, context, x.shape[0])
    return stack_samples([fn(spec, x[i], None if ctx is None else ctx[i]) for i in range(x.shape[0])], shape)


def _sizes(spec: FlowSpec) -> tuple[tuple[int, ...], int]:
    """(latent shape, D) of one sample of ``spec``."""
    kind = registry.get(spec.kind)
    return tuple(kind.output_shape(spec.config)), int(np.prod(kind.event_shape(spec.config)))


def forward(spec: FlowSpec, x: Any, context: Any = None) -> Array:
    """``z = f(x)`` for a batch."""
    z = _per_sample(forward_one, spec, x, context, _sizes(spec)[0])
    if not np.all(np.isfinite(z)):
        raise NumericalError(f"forward of kind {spec.kind!r} produced non-finite values")
    return z


def jacobian(spec: FlowSpec, x: Any, context: Any = None) -> Array:
    """Full per-sample Jacobians, shape ``(batch, D, D)``."""
    d = _sizes(spec)[1]
    return _per_sample(jacobian_one, spec, x, context, (d, d))


def log_abs_det(spec: FlowSpec, x: Any, context: Any = None) -> Array:
    """``log|det ∂z/∂x|`` per sample, shape ``(batch,)``, by ``slogdet`` of the full Jacobian."""
    return _per_sample(log_abs_det_one, spec, x, context, ())


def forward_and_log_abs_det(spec: FlowSpec, x: Any, context: Any = None) -> tuple[Array, Array]:
    return forward(spec, x, context), log_abs_det(spec, x, context)


def standard_normal_log_prob(z: Any) -> Any:
    """Log-density of a standard normal, summed over all but the first axis."""
    flat = anp.reshape(z, (anp.shape(z)[0], -1))
    return -0.5 * anp.sum(flat ** 2, axis=1) - 0.5 * flat.shape[1] * np.log(2.0 * np.pi)


def log_prob(spec: FlowSpec, x: Any, context: Any = None) -> Array:
    """``log p(x) = log N(f(x); 0, I) + log|det ∂f/∂x|``."""
    z, logdet = forward_and_log_abs_det(spec, x, context)
    return standard_normal_log_prob(z) + logdet


def sample(spec: FlowSpec, n: int, rng: np.random.Generator, context: Any = None) -> Array:
    """Draw ``n`` samples: ``z ~ N(0, I)``, ``x = f⁻¹(z)``."""
    from .solve import inverse

    shape = registry.get(spec.kind).output_shape(spec.config)
    return inverse(spec, rng.standard_normal((n,) + shape), context)


# ----------------------------------------------------------------------------- gradients

def vjp(
    spec: FlowSpec,
    x: Any,
    z_weight: Any,
    logdet_weight: Any,
    context: Any = None,
) -> tuple[dict[str, Array], Array]:
    """Gradients of ``L = Σ z_weight·f(x) + Σ logdet_weight·log|det ∂f/∂x|``.

    Returns ``(dL/dparams, dL/dx)``: the first keyed by the dotted names of
    :meth:`FlowSpec.flat_params`, the second shaped like ``x``. Exact: autograd through the
    forward map and through ``slogdet`` of the autograd Jacobian.
    """
    x = check_input(spec, x)
    ctx = check_context(spec, context, x.shape[0])
    z_weight = np.asarray(z_weight, dtype=np.float64)
    logdet_weight = np.asarray(logdet_weight, dtype=np.float64)
    flat = spec.flat_params()
    names = list(flat)

    def loss(params_list: list[Any], xs: Any) -> Any:
        s = spec.with_flat_params(dict(zip(names, params_list)))
        total = 0.0
        for i in range(x.shape[0]):
            ci = None if ctx is None else ctx[i]
            total = total + anp.sum(z_weight[i] * forward_one(s, xs[i], ci))
            if logdet_weight[i] != 0.0:
                total = total + logdet_weight[i] * log_abs_det_one(s, xs[i], ci)
        return total

    params = [flat[n] for n in names]
    g_params = grad(loss, 0)(params, x) if names else []
    g_x = grad(loss, 1)(params, x)
    return {n: np.asarray(g) for n, g in zip(names, g_params)}, np.asarray(g_x)


def param_names(spec: FlowSpec) -> list[str]:
    return list(spec.flat_params())


def event_shape(spec: FlowSpec) -> tuple[int, ...]:
    return tuple(registry.get(spec.kind).event_shape(spec.config))


def init_spec(kind_name: str, config: Mapping[str, Any], rng: np.random.Generator | int) -> FlowSpec:
    """A spec of ``kind_name`` with the kind's generic random parameters, drawn from ``rng`` (a
    ``numpy.random.Generator``, or an int seed for ``numpy.random.default_rng``)."""
    kind = registry.get(kind_name)
    kind.validate_config(config)
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        rng = np.random.default_rng(int(rng))
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(f"init_spec needs rng, a numpy.random.Generator or an int seed, got {type(rng).__name__}")
    return FlowSpec(kind_name, config, kind.init_params(config, rng))
