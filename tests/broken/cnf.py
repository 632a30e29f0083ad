"""Broken continuous normalizing flows."""
from __future__ import annotations

import torch

from flowspec.accelerated.cnf import CNF, Dynamics, probe_trace

from . import BrokenCase


SEGMENTS = 8


class _RefreshedProbe(Dynamics):
    """Hutchinson's εᵀJε with a new probe (of the same law) for each of :data:`SEGMENTS` equal steps of
    s, the first one the probe drawn or given: the "step" of a fixed grid, applied inside an adaptive
    solve (a probe redrawn at every adaptive step makes dopri5's first-same-as-last stage inconsistent
    and the solve stalls; this one only makes dℓ/ds jump at the segment ends)."""

    def __init__(self, flow, probe):
        super().__init__(flow, self._trace)
        draws = [probe]
        for _ in range(SEGMENTS - 1):
            if bool(((probe == 1.0) | (probe == -1.0)).all()):
                draws.append(torch.randint(0, 2, probe.shape, device=probe.device).to(probe.dtype) * 2 - 1)
            else:
                draws.append(torch.randn_like(probe))
        self.probes = draws
        self.s = None

    def forward(self, s, state):
        self.s = s
        return super().forward(s, state)

    def _trace(self, v, xg, create_graph):
        segment = min(int(float(self.s.detach()) * SEGMENTS), SEGMENTS - 1)
        return probe_trace(self.probes[segment])(v, xg, create_graph)


class CNFProbePerStep(CNF):
    """A new probe at every solver step instead of one shared by the whole solve: each step's
    εᵀJε is still unbiased for tr J, so the mean is right, but the estimate is no longer ∫ εᵀJε dt for
    any one ε."""

    def _solve_with(self, x, probe):
        return self._solve(_RefreshedProbe(self, probe), (x, x.new_zeros(x.shape[0])))

    def _forward(self, x, context):
        if self.training and self._config["logdet"] == "hutchinson":
            return self._solve_with(x, self._draw_probe(x))
        return super()._forward(x, context)

    def logdet_estimate(self, x, probe):
        return self._solve_with(x, probe)[1]


class CNFInverseForwardAgain(CNF):
    """The inverse integrates the ODE forward again, from s = 0 to 1, with the field negated in the
    wrong place (none): f⁻¹(z) = f(z)."""

    def _inverse(self, z, context):
        return self._solve(Dynamics(self, None), z, reverse=False)


class _DetachedTrace(Dynamics):
    """The trace term computed without a graph whenever the adjoint is on ("its forward pass runs
    under no_grad anyway"), so the adjoint's backward solve, which differentiates the dynamics, sees no
    dependence of dℓ/ds on the parameters or the state."""

    def forward(self, s, state):
        out = super().forward(s, state)
        if self.trace is None or not self.flow._config["adjoint"]:
            return out
        return out[0], out[1].detach()


class CNFAdjointDropsLogdet(CNF):
    """Adjoint gradients without the log-det state's contribution (see :class:`_DetachedTrace`)."""

    def _integrate(self, x, trace, reverse=False):
        return self._solve(_DetachedTrace(self, trace), (x, x.new_zeros(x.shape[0])), reverse)


class CNFAlwaysRademacher(CNF):
    """Rademacher probes whatever ``probe`` says (FFJORD's code defaults to them): the estimate stays
    unbiased, so only the probes themselves show that the config was ignored."""

    def _draw_probe(self, x):
        return torch.randint(0, 2, x.shape, device=x.device).to(x.dtype) * 2.0 - 1.0


CASES = [
    BrokenCase("cnf probe config ignored (always Rademacher)", "cnf", CNFAlwaysRademacher,
               white_box=("cnf_forward_probes",)),
    BrokenCase("cnf_probe_per_step", "cnf", CNFProbePerStep, white_box=("cnf_estimate_exact",)),
    BrokenCase("cnf_inverse_forward_again", "cnf", CNFInverseForwardAgain,
               white_box=("inverse_matches_reference",), black_box=("inverse_round_trip",)),
    BrokenCase("cnf_adjoint_drops_logdet", "cnf", CNFAdjointDropsLogdet,
               white_box=("cnf_adjoint_matches_backprop",), black_box=("cnf_adjoint_matches_backprop",)),
]
