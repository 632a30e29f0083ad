"""Broken masked autoregressive flows (MAF, IAF)."""
from __future__ import annotations

import numpy as np
import torch

from flowspec import made
from flowspec.accelerated.autoregressive import IAF, MADE, MAF, autoregressive_inverse

from . import BrokenCase


class OutputMaskLessEqualMADE(MADE):
    """The output layer uses the hidden layers' rule (degree ≤ instead of <): output d also reads
    the hidden units of degree d, which read x_d itself, so z_d depends on x_d through μ and α: no
    later input leaks (the forbidden entries stay zero), but the diagonal is no longer e^{−α}, so the
    log-det and the sequential inverse are wrong."""

    def masks(self):
        masks = super().masks()
        degrees = self.degrees()
        block = (made.input_degrees(self.order)[:, None] >= degrees[-1][None, :]).astype(np.float64)
        return masks[:-1] + [torch.as_tensor(np.tile(block, (self.outputs_per_dim, 1)), dtype=masks[-1].dtype)]


class DegreesModDMADE(MADE):
    """Hidden degrees cycled over 1 … D (``1 + k mod D`` instead of ``mod D − 1``) and then reduced
    mod D on the output side, so a unit of degree D (it reads every input) counts as degree 0 there
    and feeds every output: later inputs leak into earlier outputs."""

    def hidden_degrees(self, width):
        return 1 + np.arange(width) % self.dim

    def masks(self):
        degrees = self.degrees()
        hidden = [made.hidden_mask(out, inp) for inp, out in zip(degrees[:-1], degrees[1:])]
        last = made.output_mask(made.input_degrees(self.order), degrees[-1] % self.dim, self.outputs_per_dim)
        return [torch.as_tensor(m, dtype=torch.get_default_dtype()) for m in hidden + [last]]


class DegreesFromTwoMADE(MADE):
    """Hidden degrees start at 2 (``2 + k mod (D − 1)``): no unit has degree 1, so output 2 in the
    order reads no hidden unit and x_{o_1} never reaches z_{o_2} (the Jacobian stays triangular
    and the log-det right)."""

    def hidden_degrees(self, width):
        return 2 + np.arange(width) % max(self.dim - 1, 1)


class OutputMaskLessEqual(MAF):
    made_class = OutputMaskLessEqualMADE


class DegreesModD(MAF):
    made_class = DegreesModDMADE


class DegreesFromTwo(IAF):
    made_class = DegreesFromTwoMADE


class InverseStopsEarly(MAF):
    """The sequential inverse loops over positions 0 … D − 2: the last coordinate in the order is
    never filled in (it stays 0)."""

    def _sequential(self, v, context):
        u, h = autoregressive_inverse(lambda w: self.net(w, context), self._invert_entries, v, self._order[:-1])
        h = self.net(u, context)
        return u, h[:, 1].sum(dim=1)


class IAFLogdetOfMAF(IAF):
    """IAF's log-det taken with MAF's sign: −Σα (it is +Σα in the normalizing direction)."""

    def _forward(self, x, context):
        z, logdet = super()._forward(x, context)
        return z, -logdet


class HiddenSevenByDefault(MAF):
    """The default hidden widths are (7,), not the reference's [8]: a config that leaves ``hidden``
    out builds a network of another size, which refuses the reference's parameters."""

    def __init__(self, dim, order="natural", hidden=(7,), **rest):
        super().__init__(dim, order, hidden, **rest)


CASES = [
    BrokenCase("MADE output mask with ≤ instead of <", "maf", OutputMaskLessEqual,
               white_box=("forward_matches_reference", "autoregressive_forbidden_entries_zero"),
               black_box=("logdet_matches_fd_jacobian", "inverse_round_trip")),
    BrokenCase("MADE hidden degrees taken mod D", "maf", DegreesModD,
               white_box=("forward_matches_reference", "autoregressive_forbidden_entries_zero"),
               black_box=("autoregressive_forbidden_entries_zero_fd",)),
    BrokenCase("MADE hidden degrees starting at 2", "iaf", DegreesFromTwo,
               white_box=("forward_matches_reference",), black_box=("autoregressive_no_dead_connections",)),
    BrokenCase("MAF inverse stopping one coordinate early", "maf", InverseStopsEarly,
               white_box=("inverse_matches_reference",), black_box=("inverse_round_trip",)),
    BrokenCase("IAF log-det with MAF's sign", "iaf", IAFLogdetOfMAF,
               white_box=("logdet_matches_reference",),
               black_box=("logdet_matches_fd_jacobian", "maf_iaf_duality")),
    BrokenCase("MAF default hidden widths (7,) instead of the reference's [8]", "maf", HiddenSevenByDefault,
               white_box=("config_defaults_match_reference",)),
]
