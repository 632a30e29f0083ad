"""Flow++'s conditioning network in autograd-NumPy: gated convolutions and multi-head self-attention.

Ho et al. 2019 ("Flow++"), Sec. 3.2.2: a stack of blocks, each two layers connected in a residual
fashion with layer normalization after each residual connection,

    Conv = Input → Nonlinearity → Conv₃ₓ₃ → Nonlinearity → Gate
    Attn = Input → Conv₁ₓ₁ → MultiHeadSelfAttention → Gate

where Gate is a 1×1 convolution that doubles the channels followed by a gated linear unit
(GLU(a, g) = a·σ(g), a the first half of the channels, g the second), and the attention is the
Transformer's softmax(q·kᵀ/√d)·v over the H·W positions, in ``heads`` heads of d = hidden/heads
channels each (head j holds channels j·d … (j + 1)·d − 1 of q, k and v; the 1×1 convolution's
3·hidden output channels are q, then k, then v). No positional encoding is added: the 3×3
convolutions (zero padded) and the input projection make the features position dependent.

**Layer normalization** is over the channel axis, separately at every position of every sample
(the Transformer's per-token norm, a position being a token): at position (i, j),
ĥ[c] = (h[c] − mean_c h)/√(var_c h + ε)·γ[c] + β[c] with the biased variance over the channels and
ε = :data:`NORM_EPS` (torch's default). It never mixes samples of a batch, nor positions.

The whole conditioner is: a 1×1 input projection to ``hidden`` channels, ``blocks`` blocks, a 1×1
output projection to the conditioner's outputs (the blocks' 3×3 convolutions and attention do the
spatial mixing; 1×1 projections keep the reference's autograd Jacobians cheap). These functions act
on one sample ``(C, H, W)``. Parameters, by the names of the accelerated ``torch.nn.Sequential`` (:data:`PREFIX` ``= "net."``),
block i = 1 … blocks:

* ``net.0.weight (hidden, n_in, 1, 1)``, ``net.0.bias``: input projection;
* ``net.{i}.gated_conv.conv.weight (hidden, hidden, 3, 3)``, ``….conv.bias``,
  ``net.{i}.gated_conv.gate.weight (2·hidden, hidden, 1, 1)``, ``….gate.bias``;
* ``net.{i}.conv_norm.weight (hidden,)``, ``….bias``: γ, β of the norm after the conv layer;
* ``net.{i}.attn.qkv.weight (3·hidden, hidden, 1, 1)`` (no bias: a key bias cancels in the softmax),
  ``net.{i}.attn.gate.weight (2·hidden, hidden, 1, 1)``, ``….gate.bias``;
* ``net.{i}.attn_norm.weight``, ``….bias``;
* ``net.{blocks + 1}.weight (n_out, hidden, 1, 1)``, ``….bias``: output projection (the last layer).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import autograd.numpy as anp
import numpy as np

from .conv import conv2d
from .lipschitz import sigmoid

NORM_EPS = 1e-5
PREFIX = "net."
KERNEL = 3

Activation = Callable[[Any], Any]


def glu(h: Any) -> Any:
    """Gated linear unit over the channel axis (axis 0): a·σ(g) with (a, g) the two halves."""
    n = anp.shape(h)[0] // 2
    return h[:n] * sigmoid(h[n:])


def layer_norm(h: Any, weight: Any, bias: Any) -> Any:
    """Layer normalization over the channels at each position of ``h`` ``(C, H, W)`` (module docstring)."""
    centred = h - anp.mean(h, axis=0, keepdims=True)
    variance = anp.mean(centred ** 2, axis=0, keepdims=True)
    return centred / anp.sqrt(variance + NORM_EPS) * anp.reshape(weight, (-1, 1, 1)) + anp.reshape(bias, (-1, 1, 1))


def softmax(logits: Any) -> Any:
    """Softmax over the last axis, shifted by its maximum."""
    e = anp.exp(logits - anp.max(logits, axis=-1, keepdims=True))
    return e / anp.sum(e, axis=-1, keepdims=True)


def self_attention(h: Any, qkv_weight: Any, heads: int) -> Any:
    """Multi-head self-attention over the H·W positions of ``h`` ``(C, H, W)``: q, k, v from one 1×1
    convolution, per head softmax(qᵀk/√d) over the keys, the heads' outputs stacked on the channels."""
    channels, height, width = anp.shape(h)
    d = channels // heads
    qkv = anp.reshape(conv2d(h, qkv_weight), (3, heads, d, height * width))
    q, k, v = qkv[0], qkv[1], qkv[2]
    weights = softmax(anp.einsum("ndq,ndk->nqk", q, k) / np.sqrt(d))
    return anp.reshape(anp.einsum("nqk,ndk->ndq", weights, v), (channels, height, width))


def gated_conv(params: Mapping[str, Any], prefix: str, h: Any, act: Activation) -> Any:
    """Flow++'s Conv layer: nonlinearity → 3×3 conv → nonlinearity → Gate."""
    inner = act(conv2d(act(h), params[prefix + "conv.weight"], params[prefix + "conv.bias"]))
    return glu(conv2d(inner, params[prefix + "gate.weight"], params[prefix + "gate.bias"]))


def gated_attention(params: Mapping[str, Any], prefix: str, h: Any, heads: int) -> Any:
    """Flow++'s Attn layer: 1×1 conv → multi-head self-attention → Gate."""
    attended = self_attention(h, params[prefix + "qkv.weight"], heads)
    return glu(conv2d(attended, params[prefix + "gate.weight"], params[prefix + "gate.bias"]))


def block(params: Mapping[str, Any], prefix: str, h: Any, act: Activation, heads: int) -> Any:
    """One block: h ← LN(h + Conv(h)), then h ← LN(h + Attn(h))."""
    h = layer_norm(h + gated_conv(params, prefix + "gated_conv.", h, act),
                   params[prefix + "conv_norm.weight"], params[prefix + "conv_norm.bias"])
    return layer_norm(h + gated_attention(params, prefix + "attn.", h, heads),
                      params[prefix + "attn_norm.weight"], params[prefix + "attn_norm.bias"])


def attention_net(params: Mapping[str, Any], h: Any, blocks: int, heads: int, act: Activation) -> Any:
    """The conditioner on one sample ``h`` ``(n_in, H, W)``: input projection, ``blocks`` blocks,
    output projection (module docstring)."""
    h = conv2d(h, params[f"{PREFIX}0.weight"], params[f"{PREFIX}0.bias"])
    for i in range(1, blocks + 1):
        h = block(params, f"{PREFIX}{i}.", h, act, heads)
    last = f"{PREFIX}{blocks + 1}."
    return conv2d(h, params[last + "weight"], params[last + "bias"])


def param_shapes(n_in: int, n_out: int, hidden: int, blocks: int) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape (module docstring), in the accelerated module's order."""
    shapes: dict[str, tuple[int, ...]] = {f"{PREFIX}0.weight": (hidden, n_in, 1, 1), f"{PREFIX}0.bias": (hidden,)}
    for i in range(1, blocks + 1):
        p = f"{PREFIX}{i}."
        shapes.update({
            p + "gated_conv.conv.weight": (hidden, hidden, KERNEL, KERNEL), p + "gated_conv.conv.bias": (hidden,),
            p + "gated_conv.gate.weight": (2 * hidden, hidden, 1, 1), p + "gated_conv.gate.bias": (2 * hidden,),
            p + "conv_norm.weight": (hidden,), p + "conv_norm.bias": (hidden,),
            p + "attn.qkv.weight": (3 * hidden, hidden, 1, 1),
            p + "attn.gate.weight": (2 * hidden, hidden, 1, 1), p + "attn.gate.bias": (2 * hidden,),
            p + "attn_norm.weight": (hidden,), p + "attn_norm.bias": (hidden,),
        })
    shapes.update({f"{PREFIX}{blocks + 1}.weight": (n_out, hidden, 1, 1), f"{PREFIX}{blocks + 1}.bias": (n_out,)})
    return shapes


def init_params(rng: np.random.Generator, n_in: int, n_out: int, hidden: int, blocks: int) -> dict[str, np.ndarray]:
    """Generic random parameters: convolution weights N(0, 1/fan_in), biases N(0, 0.5²), the norms'
    gains N(1, 0.5²) and shifts N(0, 0.5²)."""
    params = {}
    for name, shape in param_shapes(n_in, n_out, hidden, blocks).items():
        if name.endswith("norm.weight"):
            params[name] = rng.normal(1.0, 0.5, shape)
        elif len(shape) == 4:
            params[name] = rng.normal(0.0, 1.0 / np.sqrt(np.prod(shape[1:])), shape)
        else:
            params[name] = rng.normal(0.0, 0.5, shape)
    return params
