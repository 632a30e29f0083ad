"""Broken coupling layers."""
from __future__ import annotations

import torch

from flowspec.accelerated.coupling import AdditiveCoupling, AffineCoupling, unchanged_mask

from . import BrokenCase


class LeakyMaskAffine(AffineCoupling):
    """The conditioner also reads the first transformed entry: forward still runs, but ∂z_t/∂x_t is
    no longer diagonal, so Σ s is not the log-determinant."""

    def _conditioner_input(self, x, context):
        inputs = super()._conditioner_input(x, context)
        first = self._trans_idx[0]
        leaked = x.reshape(x.shape[0], -1)[:, first]
        if self.conditioner != "mlp":
            flat = inputs.reshape(x.shape[0], -1).clone()
            flat[:, first] = leaked
            return flat.reshape(inputs.shape)
        return torch.cat([inputs[:, :1] + leaked[:, None], inputs[:, 1:]], dim=1)


class CheckerboardOffByOne(AdditiveCoupling):
    """The checkerboard is built from (h + w + 1) mod 2: the parity is shifted by one."""

    @staticmethod
    def _build_mask(shape, mask, parity):
        return unchanged_mask(shape, mask, 1 - parity if mask == "checkerboard" else parity)


class ConvCheckerboardFromFlatIndex(AffineCoupling):
    """The conv conditioner's path masks with its own checkerboard plane, built from the parity of
    the flat pixel index h·W + w. That is the parity of h + w only when W is odd (or H = 1): on an
    even-width image it gives column stripes, so the conv path couples the wrong entries (the MLP
    path, which gathers entries through the shared mask, is right)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.conditioner == "conv" and self._config["mask"] == "checkerboard":
            _, height, width = self._shape
            plane = (torch.arange(height * width).reshape(height, width) % 2 == 1) != bool(self._config["parity"])
            self._keep = plane.expand(*self._shape).clone()


class AffineLogdetSign(AffineCoupling):
    """Sign error: returns −Σ s."""

    def _forward(self, x, context):
        z, logdet = super()._forward(x, context)
        return z, -logdet


class EmptyBatchReshape(AffineCoupling):
    """Its own ``forward`` (as a library's module would have) without the empty-batch path: an empty
    batch reaches ``reshape(batch, -1)``, which cannot infer −1 from 0 entries."""

    def forward(self, x, context=None):
        self._check_call(x, self.event_shape, self.domain, "x", context)
        return self._forward(x, context)


CASES = [
    BrokenCase("affine coupling with a leaky mask", "affine_coupling", LeakyMaskAffine,
               white_box=("logdet_matches_reference",),
               black_box=("logdet_matches_fd_jacobian", "coupling_jacobian_structure")),
    BrokenCase("checkerboard mask off by one", "additive_coupling", CheckerboardOffByOne,
               white_box=("forward_matches_reference",), black_box=("coupling_jacobian_structure",)),
    BrokenCase("affine coupling log-det sign", "affine_coupling", AffineLogdetSign,
               white_box=("logdet_matches_reference", "grad_matches_reference"),
               black_box=("logdet_matches_fd_jacobian",)),
    BrokenCase("conv conditioner's checkerboard from the flat pixel index", "affine_coupling",
               ConvCheckerboardFromFlatIndex, white_box=("forward_matches_reference", "coupling_jacobian_structure"),
               black_box=("coupling_jacobian_structure",)),
    BrokenCase("affine coupling whose empty batch hits reshape(batch, -1)", "affine_coupling", EmptyBatchReshape,
               white_box=("empty_batch_shapes",), black_box=("empty_batch_shapes",)),
]
