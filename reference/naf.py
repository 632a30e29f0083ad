"""Neural autoregressive flow with deep sigmoidal layers: the kind ``naf`` (Huang et al. 2018, "Neural
Autoregressive Flows", Sec. 3.1, the DSF transformer, eq. (8)).

**The map.** For each dimension d, in the MADE's order, L stacked DSF layers act on the scalar x_d
with parameters θ_d(x_<d, context) from one MADE pass (k = 3KL outputs per dimension):

    y⁽⁰⁾ = x_d,   y⁽ˡ⁺¹⁾ = σ⁻¹( Σ_j w_{lj}·σ(a_{lj}·y⁽ˡ⁾ + b_{lj}) ),   z_d = y⁽ᴸ⁾,

with a_{lj} = min_slope + softplus(raw a_{lj}) > 0 and w_l = softmax(logits_l) on the simplex.
Each layer is the logit of a logistic-mixture CDF (Flow++ eqs. 17–18) with log π = log w,
μ_j = −b_j/a_j and log-scale s_j = −log a_j (then u_j = (y − μ_j)e^{−s_j} = a_j y + b_j), so the
map, its log-derivative in log space and its bracketed inverse are those of
:mod:`flowspec.reference.logistic_mixture` (:func:`mixture_logit_and_log_derivative`,
:func:`mixture_logit_inverse`), not written again here.

**Why it is a bijection of ℝ.** With every a_j > 0 and w on the simplex, F(y) = Σ w_j σ(a_j y + b_j)
is continuous, strictly increasing, and tends to 0 and 1 as y → ∓∞, so F maps ℝ onto (0, 1) and
σ⁻¹ maps (0, 1) onto ℝ: each layer is a strictly increasing bijection of ℝ, hence so is the stack
(the output of a layer is a logit, a real number, which is what the next layer takes).

**Log-determinant.** The Jacobian is triangular in the order, so
log|det ∂z/∂x| = Σ_d Σ_l log ℓ′_l(y⁽ˡ⁾_d), each term by the mixture's log-space formula (finite in
float32 where σ(u) rounds to 0 or 1). The reference's own log-det is the generic slogdet of the full
autograd Jacobian; :func:`dsf_stack` returns the per-entry sum for the conformance properties.

**Inverse.** D sequential passes in the order (:func:`flowspec.reference.autoregressive.autoregressive_inverse`);
each entry inverts the L layers last to first with :func:`mixture_logit_inverse` (float64,
safeguarded Newton in the exact bracket, :class:`~flowspec.errors.ConvergenceError` at its cap).

**Parameters and layout.** The spec carries *raw* values: the MADE's dense weights (``net.{2i}.weight``,
``net.{2i}.bias``, as :mod:`flowspec.reference.autoregressive`); its output row ``j·D + d`` is
parameter j of dimension d, and parameter j = 3K·l + r of a dimension is, for layer l,
``r ∈ [0, K)``: raw a, ``r ∈ [K, 2K)``: b, ``r ∈ [2K, 3K)``: the logits of w. Since a is
min_slope + softplus(raw), every raw value is valid; the only slope constraint a config can break
is ``min_slope`` ≤ 0 (rejected).

Config: the MADE keys (:func:`flowspec.reference.autoregressive.parse_made`) and :data:`NAF_DEFAULTS`:
``components`` (K ≥ 1, default 4), ``layers`` (L ≥ 1, default 1: Huang's single DSF layer) and
``min_slope`` (> 0, default 1e-3).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import autograd.numpy as anp
import numpy as np

from flowspec.errors import ConfigError
from flowspec.registry import Kind, positive_number, register
from flowspec.spec import FlowSpec

from . import autoregressive
from .logistic_mixture import mixture_logit_and_log_derivative, mixture_logit_inverse

FAMILY = "naf"
_WHAT = "a neural autoregressive flow (naf)"
NAF_DEFAULTS: dict[str, Any] = {"components": 4, "layers": 1, "min_slope": 1e-3}


@dataclass(frozen=True)
class DsfConfig:
    """The validated DSF keys of a config (module docstring)."""

    components: int
    layers: int
    min_slope: float

    @property
    def outputs_per_dim(self) -> int:
        """k = 3KL MADE outputs per dimension."""
        return 3 * self.components * self.layers


def _count(config: Mapping[str, Any], key: str) -> int:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"config[{key!r}] of {_WHAT} must be an int ≥ 1, got {value!r}")
    return int(value)


def parse_dsf(config: Mapping[str, Any]) -> DsfConfig:
    """The DSF keys of ``config`` with :data:`NAF_DEFAULTS` filled in; raises :class:`ConfigError`
    naming the key (layers < 1, components < 1, min_slope ≤ 0 or not finite)."""
    full = {**NAF_DEFAULTS, **{k: v for k, v in config.items() if k in NAF_DEFAULTS}}
    return DsfConfig(components=_count(full, "components"), layers=_count(full, "layers"),
                     min_slope=positive_number(full, "min_slope", _WHAT))


def parse_naf(config: Mapping[str, Any]) -> tuple[autoregressive.MadeConfig, DsfConfig]:
    """The MADE keys and the DSF keys of a ``naf`` config."""
    return autoregressive.parse_made(config, tuple(NAF_DEFAULTS), _WHAT), parse_dsf(config)


# ----------------------------------------------------------------------------- the DSF stack

def dsf_layer_parameters(h: Any, layer: int, dsf: DsfConfig) -> tuple[Any, Any, Any]:
    """(log π, μ, s) of layer ``layer`` from the raw outputs ``h`` (…, 3KL): a = min_slope +
    softplus(raw a), log π = log-softmax(logits), μ = −b/a, s = −log a (module docstring)."""
    k = dsf.components
    block = h[..., 3 * k * layer:3 * k * (layer + 1)]
    slope = dsf.min_slope + anp.logaddexp(0.0, block[..., :k])
    logits = block[..., 2 * k:]
    top = anp.max(logits, axis=-1, keepdims=True)
    log_pi = logits - top - anp.log(anp.sum(anp.exp(logits - top), axis=-1, keepdims=True))
    return log_pi, -block[..., k:2 * k] / slope, -anp.log(slope)


def dsf_stack(x: Any, h: Any, dsf: DsfConfig) -> tuple[Any, Any]:
    """(z, Σ_l log ℓ′_l) elementwise: the L layers applied in turn (eq. (8) per layer), ``h`` of
    shape ``x.shape + (3KL,)``."""
    y, log_d = x, 0.0
    for layer in range(dsf.layers):
        y, log_l = mixture_logit_and_log_derivative(y, *dsf_layer_parameters(h, layer, dsf))
        log_d = log_d + log_l
    return y, log_d


def dsf_stack_inverse(z: np.ndarray, h: np.ndarray, dsf: DsfConfig) -> np.ndarray:
    """x with :func:`dsf_stack` (x) = z elementwise: the layers inverted last to first by the shared
    :func:`mixture_logit_inverse` (float64, plain NumPy)."""
    y = np.asarray(z, np.float64)
    for layer in reversed(range(dsf.layers)):
        y = mixture_logit_inverse(y, *dsf_layer_parameters(np.asarray(h, np.float64), layer, dsf))
    return y


# ----------------------------------------------------------------------------- the kind

def _made(spec: FlowSpec, context: Any) -> tuple[Any, DsfConfig, autoregressive.MadeConfig]:
    cfg, dsf = parse_naf(spec.config)
    masks = cfg.masks(dsf.outputs_per_dim)
    return (lambda v: autoregressive.made_net(spec.params, masks, cfg.activation, v, context)), dsf, cfg


def naf_forward(spec: FlowSpec, x: Any, context: Any = None) -> Any:
    """z_d = DSF stack(x_d; θ_d(x_<d)) for every d, in one MADE pass."""
    net, dsf, _ = _made(spec, context)
    return dsf_stack(x, anp.transpose(net(x)), dsf)[0]


def naf_inverse(spec: FlowSpec, z: Any, context: Any = None) -> Any:
    """x by D sequential passes in the order, each entry's stack inverted last layer first."""
    net, dsf, cfg = _made(spec, context)

    def invert(z_d: Any, h_d: Any) -> Any:
        return dsf_stack_inverse(np.reshape(z_d, (1,)), np.reshape(h_d, (1, -1)), dsf)[0]

    return autoregressive.autoregressive_inverse(net, invert, z, cfg.order)


def naf_init(config: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The MADE's generic weights (:func:`flowspec.reference.autoregressive.init_made_params`)."""
    cfg, dsf = parse_naf(config)
    return autoregressive.init_made_params(cfg.layer_sizes(dsf.outputs_per_dim), rng)


register(Kind(
    name="naf", family=FAMILY,
    forward=naf_forward, inverse=naf_inverse,
    init_params=naf_init, **autoregressive.made_law_fields(parse_naf),
    extras=autoregressive.made_extras(lambda config: parse_naf(config)[0]),
    summary="NAF (DSF): z_d = L stacked σ⁻¹(Σ_j w_j σ(a_j x + b_j)) with a MADE conditioner (3KL outputs per dimension)",
))
