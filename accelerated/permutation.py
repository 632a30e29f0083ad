"""Fixed channel permutations (see the reference): z[:, k] = x[:, perm[k]] along the channel axis,
``reverse_permutation`` with perm = (C−1, …, 0); log|det| = 0."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from flowspec.errors import ConfigError

from .base import int_list, register
from .elementwise import _Elementwise


class _ChannelPermutation(_Elementwise):
    """Gathers whole channels (axis 1 of the batch) by a fixed index; the inverse gathers by argsort."""

    def __init__(self, shape: Sequence[int], perm: Sequence[int], *, validate_args: bool | None = None):
        super().__init__(shape, validate_args=validate_args)
        channels = self._shape[0]
        if not _is_permutation(perm, channels):
            raise ConfigError(
                f"perm must be a permutation of 0..{channels - 1} (the {channels} channels of shape "
                f"{self._shape}), got {perm!r}"
            )
        entries = [int(i) for i in perm]
        index = torch.tensor(entries, dtype=torch.long)
        self.register_buffer("_perm", index, persistent=False)
        self.register_buffer("_inverse_perm", torch.argsort(index), persistent=False)

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return x.index_select(1, self._perm), x.new_zeros(x.shape[0])

    def _inverse(self, z: Tensor, context: Tensor | None) -> Tensor:
        return z.index_select(1, self._inverse_perm)

    def _inverse_and_logdet(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._inverse(z, context), z.new_zeros(z.shape[0])


@register("reverse_permutation")
class ReversePermutation(_ChannelPermutation):
    """Reverses the channel order; its own inverse."""

    def __init__(self, shape: Sequence[int], *, validate_args: bool | None = None):
        shape = int_list(shape, "shape")
        channels = shape[0] if shape else 0
        super().__init__(shape, list(reversed(range(channels))), validate_args=validate_args)


@register("permutation")
class Permutation(_ChannelPermutation):
    """z[:, k] = x[:, perm[k]] with ``perm`` from the config."""

    def config(self) -> dict[str, Any]:
        return {**super().config(), "perm": self._perm.tolist()}


def _is_permutation(perm: Any, channels: int) -> bool:
    """Whether ``perm`` is a list or tuple of ints (bools excluded) holding each of 0..channels-1 once."""
    return (isinstance(perm, (list, tuple))
            and all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in perm)
            and sorted(int(i) for i in perm) == list(range(channels)))
