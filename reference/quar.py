"""Quasi-autoregressive residual blocks (QuAR flows, Gopal): ``f(x) = x + F(x)`` with triangular ``J_F``.

Ordering and triangle
    ``quar_mlp`` (event ``(D,)``): dimensions in index order ``0, …, D−1``; ``F_d`` depends on
    ``x_j`` for ``j ≤ d`` only, so ``J_F`` is LOWER triangular (every entry above the diagonal is
    exactly zero) with a generically non-zero diagonal (Definition 4.1).
    ``quar_conv`` (event ``(C, H, W)``): raster order over pixels (rows top to bottom, each row left
    to right), then channel within a pixel (PixelCNN, App. C): the autoregressive position of entry
    ``(c, r, s)`` is ``(r·W + s)·C + c``. ``J_F`` is lower triangular in that order;
    :func:`order` gives the permutation from the C-order flattening, :func:`forbidden` the entries
    that must vanish.

Network ``N`` (Sec. 4.1, App. A)
    MLP: ``L = len(hidden_factors) + 1`` masked linear layers ``D → k_1·D → … → D`` with the
    activation between them. Hidden layer ``i`` is split into ``D`` groups of ``k_i`` units,
    interleaved: unit ``u`` is in group ``u mod D`` (so the layer reshapes to ``(k_i, D)``, group
    last). A unit of group ``g1`` feeds a unit of group ``g2`` of the next layer iff ``g1 ≤ g2``, in
    every layer. MADE requires ``g1 < g2`` in the first layer; the quasi-autoregressive rule keeps
    ``g1 = g2`` there too, which is what makes the diagonal non-zero.
    Conv: ``act → conv_1 → act → … → conv_L`` (App. A: kernels 3, 1, 3); hidden channels are
    ``k_i·C`` in ``C`` groups, channel ``c`` in group ``c mod C``. Every kernel reads the rows above
    and the pixels to the left of the centre in full, and at the centre tap channel groups
    ``g_in ≤ g_out`` (one mask type, so that the diagonal is kept).

Lipschitz trick (Sec. 4.2)
    ``F(x) = f_{L+1}(N(x)) = σ · N(x) · (θ + Π_i Lip(f_i))⁻¹`` with ``θ = softplus(ρ) ≥ 0`` per
    dimension (per channel for ``quar_conv``) and ``σ`` in (0, 1) fixed by the config. Activations
    have ``|φ′| ≤ 1``. ``Lip(f_i)`` is the power-iteration estimate ``σ̂_i = u_iᵀ W_i v_i`` whose
    vectors ``u_i, v_i`` the spec carries, so the spec fixes the function exactly, as the
    implementation computes it, gradients through ``σ̂_i`` and ``θ`` included.

Norm options (``config["norm"]``)
    ``"full"`` (a): ``σ̂_i`` estimates ``‖M_i ⊙ W_i‖₂`` (conv: the operator norm at the input's
    spatial size). Then ``Lip(F) ≤ σ·Π‖W_i‖/(θ + Π σ̂_i) ≤ σ(1 + tol)``, ``tol`` the relative gap of
    the estimates (:func:`lipschitz_bound`).
    ``"diagonal"`` (b): ``σ̂_i`` estimates ``max_g ‖B_{i,g}‖₂`` over the diagonal blocks (conv: the
    group-diagonal blocks of the centre tap). ``∂F_d/∂x_d`` is a product of one entry path through
    those blocks and activation slopes, so ``|∂F_d/∂x_d| ≤ σ(1 + tol)``: the map stays invertible
    and ``log|det| ≥ D·log(1 − σ(1 + tol))``, but ``Lip(F)`` is NOT bounded. App. C claims that a
    block-triangular matrix has the spectral norm of its block diagonal; that holds for eigenvalues,
    not for norms (``‖[[2, 3], [0, 1]]‖₂ ≈ 3.70``).

Canonical parameters: ``weight_i`` (dense; the kind applies the mask, so a mask error shows),
``bias_i``, ``rho`` and the power-iteration vectors ``u_i``, ``v_i`` (shapes in :func:`param_shapes`).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import autograd.numpy as anp
import numpy as np

from flowspec.errors import ConfigError
from flowspec.registry import Kind, config_sequence, register
from flowspec.spec import FlowSpec

from .conv import conv2d
from .core import map_jacobian
from .lipschitz import activation, softplus
from .norms import conv_matrix, conv_operator_norm, spectral_norm

FAMILY = "quar"
NORMS = ("full", "diagonal")
INVERSES = ("fixed_point", "coordinatewise")
CONV_KERNELS = (3, 1, 3)


# ----------------------------------------------------------------------------- activations

ACTIVATIONS = ("elu", "identity")
"""Parameter-free activations with ``|φ′| ≤ 1`` (ELU as in App. A; the identity makes ``F`` affine,
which the conformance suite uses to build cases where the bounds are tight); :mod:`.lipschitz`
defines them."""


# ----------------------------------------------------------------------------- config

def _positive_int(config: Mapping[str, Any], key: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"config[{key!r}] must be a positive int, got {value!r}")
    return value


def _int_list(config: Mapping[str, Any], key: str, default: Sequence[int] | None = None) -> tuple[int, ...]:
    value = config_sequence(config, key, () if default is None else default)
    if not value or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
        raise ConfigError(f"config[{key!r}] must be a non-empty list of positive ints, got {value!r}")
    return value


def check_common(config: Mapping[str, Any]) -> None:
    """Validate the keys shared by both kinds: activation, sigma, norm, inverse."""
    if config.get("activation", "elu") not in ACTIVATIONS:
        raise ConfigError(f"config['activation'] must be one of {sorted(ACTIVATIONS)}, got {config.get('activation')!r}")
    sigma = config.get("sigma", 0.97)
    if not isinstance(sigma, (int, float)) or isinstance(sigma, bool) or not 0.0 < sigma < 1.0:
        raise ConfigError(f"config['sigma'] must lie in (0, 1) for a contractive residual branch, got {sigma!r}")
    if norm_of(config) not in NORMS:
        raise ConfigError(f"config['norm'] must be one of {NORMS}, got {config.get('norm')!r}")
    if config.get("inverse") is not None and config["inverse"] not in INVERSES:
        raise ConfigError(f"config['inverse'] must be one of {INVERSES} or None, got {config['inverse']!r}")


def norm_of(config: Mapping[str, Any]) -> str:
    return config.get("norm", "full")


def sigma_of(config: Mapping[str, Any]) -> float:
    return float(config.get("sigma", 0.97))


def activation_of(config: Mapping[str, Any]) -> Callable[[Any], Any]:
    name = config.get("activation", "elu")
    return lambda z: activation(name, z)


def mlp_factors(config: Mapping[str, Any]) -> tuple[int, ...]:
    """Group sizes of every layer of the MLP, input and output included: ``(1, k_1, …, k_{L−1}, 1)``."""
    return (1,) + _int_list(config, "hidden_factors") + (1,)


def conv_kernels(config: Mapping[str, Any]) -> tuple[int, ...]:
    kernels = _int_list(config, "kernels", CONV_KERNELS)
    if any(k % 2 == 0 for k in kernels):
        raise ConfigError(f"config['kernels'] must be odd sizes (centred taps), got {kernels!r}")
    return kernels


def conv_factors(config: Mapping[str, Any]) -> tuple[int, ...]:
    """Channel-group sizes of every layer of the conv network, input and output included."""
    factors = (1,) + _int_list(config, "hidden_factors") + (1,)
    if len(factors) != len(conv_kernels(config)) + 1:
        raise ConfigError(
            f"config['hidden_factors'] needs one entry per hidden layer ({len(conv_kernels(config)) - 1} for "
            f"kernels {conv_kernels(config)}), got {config.get('hidden_factors')!r}"
        )
    return factors


def conv_shape(config: Mapping[str, Any]) -> tuple[int, int, int]:
    shape = config_sequence(config, "shape")
    if len(shape) != 3 or not all(isinstance(n, int) and n > 0 for n in shape):
        raise ConfigError(f"config['shape'] of quar_conv must be [C, H, W] of positive ints, got {shape!r}")
    return shape  # type: ignore[return-value]


def _check_mlp(config: Mapping[str, Any]) -> None:
    _positive_int(config, "dim")
    mlp_factors(config)
    check_common(config)


def _check_conv(config: Mapping[str, Any]) -> None:
    conv_shape(config)
    conv_factors(config)
    check_common(config)


def is_conv(config: Mapping[str, Any]) -> bool:
    return "shape" in config


def groups_of(config: Mapping[str, Any]) -> int:
    """The number of autoregressive groups per position: D for the MLP, C for the conv kind."""
    return conv_shape(config)[0] if is_conv(config) else int(config["dim"])


def factors_of(config: Mapping[str, Any]) -> tuple[int, ...]:
    return conv_factors(config) if is_conv(config) else mlp_factors(config)


# ----------------------------------------------------------------------------- masks and order

def group_mask(groups: int, k_out: int, k_in: int) -> np.ndarray:
    """``(k_out·G, k_in·G)`` 0/1 matrix: unit ``o`` reads unit ``i`` iff ``i mod G ≤ o mod G``."""
    g_out = np.arange(k_out * groups) % groups
    g_in = np.arange(k_in * groups) % groups
    return (g_in[None, :] <= g_out[:, None]).astype(np.float64)


def kernel_mask(groups: int, k_out: int, k_in: int, size: int) -> np.ndarray:
    """``(k_out·G, k_in·G, size, size)`` PixelCNN mask: rows above the centre and taps left of it in
    full, and the channel-group rule :func:`group_mask` at the centre tap."""
    c = size // 2
    mask = np.zeros((k_out * groups, k_in * groups, size, size))
    mask[:, :, :c, :] = 1.0
    mask[:, :, c, :c] = 1.0
    mask[:, :, c, c] = group_mask(groups, k_out, k_in)
    return mask


def masks(config: Mapping[str, Any]) -> list[np.ndarray]:
    """The mask of every layer (matrices for the MLP, kernels for the conv kind)."""
    factors, groups = factors_of(config), groups_of(config)
    if is_conv(config):
        return [kernel_mask(groups, factors[i + 1], factors[i], k) for i, k in enumerate(conv_kernels(config))]
    return [group_mask(groups, factors[i + 1], factors[i]) for i in range(len(factors) - 1)]


def order(config: Mapping[str, Any]) -> np.ndarray:
    """C-order flat indices listed in autoregressive order (``x.ravel()[order]`` is in that order)."""
    if not is_conv(config):
        return np.arange(int(config["dim"]))
    c, h, w = conv_shape(config)
    position = np.arange(c * h * w).reshape(c, h, w)
    return position.transpose(1, 2, 0).ravel()


def forbidden(config: Mapping[str, Any]) -> np.ndarray:
    """Boolean ``(D, D)`` over C-order flat indices: True where ``∂F_i/∂x_j`` must be exactly zero."""
    rank = np.empty(len(order(config)), dtype=int)
    rank[order(config)] = np.arange(len(rank))
    return rank[None, :] > rank[:, None]


# ----------------------------------------------------------------------------- shapes and layers

def event_shape(config: Mapping[str, Any]) -> tuple[int, ...]:
    return conv_shape(config) if is_conv(config) else (_positive_int(config, "dim"),)


def param_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Canonical parameter names and shapes (see the module docstring)."""
    factors, groups, diagonal = factors_of(config), groups_of(config), norm_of(config) == "diagonal"
    shapes: dict[str, tuple[int, ...]] = {}
    spatial = conv_shape(config)[1:] if is_conv(config) else ()
    for i in range(len(factors) - 1):
        n_out, n_in = factors[i + 1] * groups, factors[i] * groups
        kernel = (conv_kernels(config)[i],) * 2 if is_conv(config) else ()
        shapes[f"weight_{i}"] = (n_out, n_in) + kernel
        shapes[f"bias_{i}"] = (n_out,)
        if diagonal:
            shapes[f"u_{i}"], shapes[f"v_{i}"] = (groups, factors[i + 1]), (groups, factors[i])
        else:
            shapes[f"u_{i}"], shapes[f"v_{i}"] = (n_out,) + spatial, (n_in,) + spatial
    shapes["rho"] = (groups,)
    return shapes


def n_layers(config: Mapping[str, Any]) -> int:
    return len(factors_of(config)) - 1


def masked_weights(spec: FlowSpec) -> list[Any]:
    """``M_i ⊙ W_i`` for every layer (autograd-differentiable in the weights)."""
    return [spec.params[f"weight_{i}"] * m for i, m in enumerate(masks(spec.config))]


def diagonal_blocks(weight: Any, groups: int, k_out: int, k_in: int) -> Any:
    """The ``(G, k_out, k_in)`` stack of diagonal blocks of a ``(k_out·G, k_in·G)`` matrix, or of a
    kernel's centre tap."""
    if np.ndim(weight) == 4:
        c = np.shape(weight)[-1] // 2
        weight = weight[:, :, c, c]
    blocks = anp.reshape(weight, (k_out, groups, k_in, groups))
    return anp.einsum("ogkh,gh->gok", blocks, np.eye(groups))


def estimated_norms(spec: FlowSpec, weights: Sequence[Any]) -> list[Any]:
    """``σ̂_i = u_iᵀ W_i v_i`` (option (a)) or ``max_g u_{i,g}ᵀ B_{i,g} v_{i,g}`` (option (b))."""
    config = spec.config
    factors, groups = factors_of(config), groups_of(config)
    out = []
    for i, w in enumerate(weights):
        u, v = spec.params[f"u_{i}"], spec.params[f"v_{i}"]
        if norm_of(config) == "diagonal":
            blocks = diagonal_blocks(w, groups, factors[i + 1], factors[i])
            out.append(anp.max(anp.einsum("go,gok,gk->g", u, blocks, v)))
        elif is_conv(config):
            out.append(anp.sum(u * conv2d(v, w)))
        else:
            out.append(anp.dot(u, anp.dot(w, v)))
    return out


def lipschitz_scale(spec: FlowSpec, norms: Sequence[Any]) -> Any:
    """Per-dimension factor of the Lipschitz trick, ``σ / (θ + Π_i σ̂_i)`` with ``θ = softplus(ρ)``
    (Sec. 4.2); shaped to broadcast over one sample."""
    product = 1.0
    for n in norms:
        product = product * n
    scale = sigma_of(spec.config) / (softplus(spec.params["rho"]) + product)
    return anp.reshape(scale, (-1, 1, 1)) if is_conv(spec.config) else scale


def network(spec: FlowSpec, x: Any) -> Any:
    """The unscaled masked network ``N(x)`` of one sample."""
    act = activation_of(spec.config)
    weights = masked_weights(spec)
    h = x
    for i, w in enumerate(weights):
        b = spec.params[f"bias_{i}"]
        if is_conv(spec.config):
            h = conv2d(act(h), w, b)
        else:
            h = anp.dot(w, h) + b
            h = act(h) if i < len(weights) - 1 else h
    return h


def residual(spec: FlowSpec, x: Any) -> Any:
    """``F(x) = σ·N(x)/(θ + Π σ̂_i)`` for one sample."""
    return lipschitz_scale(spec, estimated_norms(spec, masked_weights(spec))) * network(spec, x)


def forward(spec: FlowSpec, x: Any, context: Any = None) -> Any:
    """``z = x + F(x)`` (one sample)."""
    return x + residual(spec, x)


# ----------------------------------------------------------------------------- init

def _generic_weight(mask: np.ndarray, groups: int, k_out: int, k_in: int, rng: np.random.Generator) -> np.ndarray:
    """N(0, 1) entries scaled by the number of unmasked inputs of each output, with the diagonal
    blocks (centre-tap blocks for kernels) tripled so that the diagonal of ``J_F`` is sizeable."""
    fan_in = np.maximum(mask.reshape(mask.shape[0], -1).sum(axis=1), 1.0)
    weight = rng.standard_normal(mask.shape) * (1.5 / np.sqrt(fan_in)).reshape((-1,) + (1,) * (mask.ndim - 1))
    diag = np.kron(np.ones((k_out, k_in)), np.eye(groups)).astype(bool)
    centre = weight[:, :, mask.shape[-1] // 2, mask.shape[-1] // 2] if mask.ndim == 4 else weight
    centre[diag] *= 3.0
    return weight


def converged_vectors(config: Mapping[str, Any], index: int, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top singular vectors (by SVD) of layer ``index`` in the layout of ``u_i``, ``v_i``: of the
    masked matrix or conv operator (option (a)), or of each diagonal block (option (b))."""
    factors, groups = factors_of(config), groups_of(config)
    masked = weight * masks(config)[index]
    if norm_of(config) == "diagonal":
        blocks = np.asarray(diagonal_blocks(masked, groups, factors[index + 1], factors[index]))
        left, _, right = np.linalg.svd(blocks)
        return left[:, :, 0], right[:, 0, :]
    if is_conv(config):
        _, h, w = conv_shape(config)
        left, _, right = np.linalg.svd(conv_matrix(masked, (masked.shape[1], h, w)))
        return left[:, 0].reshape(-1, h, w), right[0].reshape(-1, h, w)
    left, _, right = np.linalg.svd(masked)
    return left[:, 0], right[0]


def init_params(config: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Generic dense weights (layer norms of a few units, not near identity), N(0, 0.5²) biases,
    ``ρ ~ N(−1, 1)`` and the exact top singular vectors as power-iteration state."""
    factors, groups = factors_of(config), groups_of(config)
    params: dict[str, np.ndarray] = {}
    for i, mask in enumerate(masks(config)):
        weight = _generic_weight(mask, groups, factors[i + 1], factors[i], rng)
        params[f"weight_{i}"] = weight
        params[f"bias_{i}"] = rng.normal(0.0, 0.5, mask.shape[0])
        params[f"u_{i}"], params[f"v_{i}"] = converged_vectors(config, i, weight)
    params["rho"] = rng.normal(-1.0, 1.0, groups)
    return params


# ----------------------------------------------------------------------------- exact quantities

def exact_layer_norms(spec: FlowSpec, norm: str | None = None) -> np.ndarray:
    """By SVD, per layer: ``‖M_i ⊙ W_i‖₂`` or the conv operator norm at the input size
    (``norm="full"``), or ``max_g ‖B_{i,g}‖₂`` over the diagonal blocks (``"diagonal"``); by default
    what the spec's own ``σ̂_i`` estimate."""
    config = spec.config
    factors, groups = factors_of(config), groups_of(config)
    out = []
    for i, w in enumerate(masked_weights(spec)):
        w = np.asarray(w)
        if (norm or norm_of(config)) == "diagonal":
            out.append(float(np.max(spectral_norm(np.asarray(diagonal_blocks(w, groups, factors[i + 1], factors[i]))))))
        elif is_conv(config):
            out.append(conv_operator_norm(w, (w.shape[1],) + conv_shape(config)[1:]))
        else:
            out.append(float(spectral_norm(w)))
    return np.array(out)


def estimated_layer_norms(spec: FlowSpec) -> np.ndarray:
    """The ``σ̂_i`` the spec's power-iteration vectors give."""
    return np.array([float(n) for n in estimated_norms(spec, masked_weights(spec))])


def lipschitz_bound(spec: FlowSpec) -> float:
    """``max_d scale_d · Π_i (exact norm of layer i)``: a certified upper bound of ``Lip(F)`` under
    option (a), of ``max_d sup_x |∂F_d/∂x_d|`` under option (b) (``|φ′| ≤ 1``)."""
    scale = np.asarray(lipschitz_scale(spec, estimated_layer_norms(spec)))
    return float(np.max(scale) * np.prod(exact_layer_norms(spec)))


def residual_jacobian(spec: FlowSpec, x: np.ndarray) -> np.ndarray:
    """``J_F`` of one sample over C-order flat indices, by autograd through ``F``."""
    return np.asarray(map_jacobian(lambda xs: residual(spec, xs), x))


def residual_diagonal(spec: FlowSpec, x: np.ndarray) -> np.ndarray:
    """``∂F_d/∂x_d`` for a batch, shaped like ``x`` (the diagonal of the full Jacobian)."""
    return np.stack([np.diag(residual_jacobian(spec, xi)).reshape(np.shape(xi)) for xi in x])


def residual_spectral_norm(spec: FlowSpec, x: np.ndarray) -> np.ndarray:
    """``σ_max(J_F(x))`` per sample of a batch."""
    return np.array([float(spectral_norm(residual_jacobian(spec, xi))) for xi in x])


_EXTRAS = {
    "order": order,
    "forbidden": forbidden,
    "masks": masks,
    "exact_layer_norms": exact_layer_norms,
    "estimated_layer_norms": estimated_layer_norms,
    "lipschitz_bound": lipschitz_bound,
    "residual_jacobian": residual_jacobian,
    "residual_diagonal": residual_diagonal,
    "residual_spectral_norm": residual_spectral_norm,
}

register(Kind(
    name="quar_mlp", family=FAMILY, forward=forward, event_shape=event_shape, init_params=init_params,
    check_config=_check_mlp, extras=_EXTRAS,
    config_keys=frozenset({"dim", "hidden_factors", "activation", "sigma", "norm", "inverse"}),
    summary="QuAR residual block x + F(x), F a masked MLP with triangular Jacobian (Lipschitz trick)",
))

register(Kind(
    name="quar_conv", family=FAMILY, forward=forward, event_shape=event_shape, init_params=init_params,
    check_config=_check_conv, extras=_EXTRAS,
    config_keys=frozenset({"shape", "hidden_factors", "kernels", "activation", "sigma", "norm", "inverse"}),
    summary="QuAR residual block x + F(x), F a PixelCNN-masked conv net (raster, channel groups)",
))


# ----------------------------------------------------------------------------- constructed cases

def triangular_linear_spec(dim: int, diagonal: float, rng: np.random.Generator) -> FlowSpec:
    """An option-(b) ``quar_mlp`` whose residual branch is linear, ``F(x) = J x + c`` with ``J`` lower
    triangular, ``diagonal`` on its diagonal and N(0, 1) entries below it (identity activation,
    one hidden layer with k = 1, ``W_0 = I``, ``θ`` ≈ 4·10⁻¹⁸, block estimates exactly 1).

    ``|∂F_d/∂x_d| = diagonal ≤ σ`` holds while ``σ_max(J)`` grows like √D: the case where option (b)
    bounds the diagonal but not ``Lip(F)``, the fixed-point inverse meets transient growth (about
    1e21 at D = 30 for ``diagonal = 0.9``) and the coordinate-wise inverse is needed.
    """
    config = {"dim": dim, "hidden_factors": [1], "activation": "identity", "sigma": diagonal, "norm": "diagonal"}
    below = np.tril(rng.standard_normal((dim, dim)), -1) / diagonal
    upper = np.triu(rng.standard_normal((dim, dim)), 1)  # masked out: present so that a mask leak would show
    ones = np.ones((dim, 1))
    params = {
        "weight_0": np.eye(dim) + upper, "bias_0": rng.normal(0.0, 0.5, dim),
        "weight_1": np.eye(dim) + below + upper, "bias_1": rng.normal(0.0, 0.5, dim),
        "u_0": ones, "v_0": ones, "u_1": ones, "v_1": ones, "rho": np.full(dim, -40.0),
    }
    return FlowSpec("quar_mlp", config, params)
