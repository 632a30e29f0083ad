"""MADE connectivity: orders, degrees and masks (Germain et al. 2015, "MADE", Sec. 4 and eq. (12)-(13)).

Pure NumPy, shared by every layer and by every autoregressive family (MAF, IAF, the spline
autoregressive flow, ...).

An *order* is a permutation of the D flat dimensions: ``order[i]`` is the dimension at position
i, so dimension ``order[0]`` comes first; ``rank[d]`` is the position of dimension d (the inverse
permutation). MADE gives every unit a *degree*:

* input d has degree ``1 + rank[d]`` (1 … D); a context input has degree 0;
* a hidden unit of degree m reads the units of the layer below whose degree is ≤ m (eq. (12));
* output d (every one of its ``k`` parameters) has the degree of input d and reads the hidden units
  of the last layer whose degree is *strictly* smaller (eq. (13)), so it depends only on the inputs
  earlier in the order (and on the context).

Hidden degrees cycle through 1 … D − 1 (the degrees that can reach some output; eq. (12)'s
``m(k) ∈ {1, …, D − 1}``), then 0 when there is a context, so that the first dimension can depend
on it; with D = 1 and no context there is nothing to depend on and every hidden unit has degree 0
(it reads only its bias). The cycle is deterministic, takes any width (also widths below D − 1 and
widths not divisible by D) and, for a width ≥ D − 1, meets every degree 1 … D − 1 in every layer, so
that output d then connects to every earlier input (:func:`required`).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .errors import ConfigError

ORDERS = ("natural", "reversed")
# Activations without a zero-slope region: a live connection gives a non-zero change (required()).
STRICTLY_MONOTONE_ACTIVATIONS = ("tanh", "elu")


def parse_order(value: Any, dim: int) -> np.ndarray:
    """The order as an int array, ``order[i]`` = the dimension at position i.

    ``value`` is ``"natural"`` (0, 1, …, D − 1), ``"reversed"`` (D − 1, …, 0) or a list of ints that
    is a permutation of ``range(dim)``; anything else raises :class:`ConfigError` naming the key.
    """
    if isinstance(value, str):
        if value not in ORDERS:
            raise ConfigError(f"config['order'] must be one of {list(ORDERS)} or a permutation of "
                              f"range({dim}) as a list of ints, got {value!r}")
        natural = np.arange(dim)
        return natural if value == "natural" else natural[::-1].copy()
    entries = list(value) if isinstance(value, (list, tuple, np.ndarray)) else None
    if entries is None or not all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
                                  for v in entries):
        raise ConfigError(f"config['order'] must be one of {list(ORDERS)} or a list of ints, got {value!r}")
    order = np.array([int(v) for v in entries], dtype=np.int64)
    if len(order) != dim or sorted(order.tolist()) != list(range(dim)):
        raise ConfigError(f"config['order'] must be a permutation of range({dim}) (dim = {dim}), "
                          f"got {[int(v) for v in entries]}")
    return order


def random_order(dim: int, rng: np.random.Generator) -> list[int]:
    """A permutation of ``range(dim)`` drawn from ``rng``, as plain ints (ready to put in a config)."""
    return [int(v) for v in rng.permutation(dim)]


def ranks(order: Sequence[int] | np.ndarray) -> np.ndarray:
    """``rank[d]``: the position of dimension d in ``order`` (the inverse permutation)."""
    order = np.asarray(order, dtype=np.int64)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank


def input_degrees(order: Sequence[int] | np.ndarray) -> np.ndarray:
    """Degree ``1 + rank[d]`` of input (and output) dimension d."""
    return 1 + ranks(order)


def hidden_degrees(width: int, dim: int, context: bool) -> np.ndarray:
    """Degrees of a hidden layer of ``width`` units: 1, 2, …, D − 1 cycled, then 0 with a context
    (see the module docstring); all 0 where D = 1 without a context."""
    cycle = list(range(1, dim)) + ([0] if context else [])
    if not cycle:
        cycle = [0]
    return np.asarray(cycle, dtype=np.int64)[np.arange(width) % len(cycle)]


def hidden_mask(degrees_out: np.ndarray, degrees_in: np.ndarray) -> np.ndarray:
    """``(out, in)`` mask of a layer into hidden units: unit of degree m reads degrees ≤ m (eq. (12))."""
    return (degrees_out[:, None] >= degrees_in[None, :]).astype(np.float64)


def output_mask(degrees_out: np.ndarray, degrees_in: np.ndarray, outputs_per_dim: int) -> np.ndarray:
    """``(k·D, in)`` mask of the output layer: output d reads degrees strictly below its own
    (eq. (13)); rows in k blocks of D (row j·D + d is parameter j of dimension d)."""
    block = (degrees_out[:, None] > degrees_in[None, :]).astype(np.float64)
    return np.tile(block, (outputs_per_dim, 1))


def layer_degrees(order: Sequence[int] | np.ndarray, hidden: Sequence[int], context_dim: int) -> list[np.ndarray]:
    """Degrees of the network's input layer (the D entries in flat order, then the context at 0)
    and of each hidden layer."""
    dim = len(order)
    first = np.concatenate([input_degrees(order), np.zeros(context_dim, dtype=np.int64)])
    return [first] + [hidden_degrees(width, dim, context_dim > 0) for width in hidden]


def masks(
    order: Sequence[int] | np.ndarray, hidden: Sequence[int], outputs_per_dim: int, context_dim: int = 0
) -> list[np.ndarray]:
    """One 0/1 float64 mask per dense layer, shape ``(out, in)``: the hidden layers', then the output
    layer's (``k·D`` rows in k blocks of D). The first layer's inputs are the D entries in flat order
    followed by the ``context_dim`` context entries (degree 0, read by every hidden unit)."""
    degrees = layer_degrees(order, hidden, context_dim)
    layers = [hidden_mask(out, inp) for inp, out in zip(degrees[:-1], degrees[1:])]
    return layers + [output_mask(input_degrees(order), degrees[-1], outputs_per_dim)]


def forbidden(order: Sequence[int] | np.ndarray) -> np.ndarray:
    """``(D, D)`` bool, ``[i, j]`` True where ∂z_i/∂x_j must be exactly 0: ``rank[j] > rank[i]``."""
    rank = ranks(order)
    return rank[None, :] > rank[:, None]


def required(order: Sequence[int] | np.ndarray, hidden: Sequence[int], activation: str) -> np.ndarray | None:
    """``(D, D)`` bool of the entries that must be non-zero: ``rank[j] < rank[i]`` and the diagonal,
    where every hidden width is ≥ D − 1 (every degree 1 … D − 1 is present in every layer) and the
    activation has no zero-slope region; None otherwise (the config promises only the diagonal)."""
    dim = len(order)
    if activation not in STRICTLY_MONOTONE_ACTIVATIONS or any(width < dim - 1 for width in hidden):
        return None
    rank = ranks(order)
    return (rank[None, :] < rank[:, None]) | np.eye(dim, dtype=bool)
