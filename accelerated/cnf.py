"""Continuous normalizing flow ``cnf`` (FFJORD; see :mod:`flowspec.reference.cnf` for the map).

    dx/ds = T·v(x, s·T),  s ∈ [0, 1],  T = exp(log_T),  v an MLP on [x, t],
    log|det ∂z/∂x| = ∫₀¹ T·tr(∂v/∂x) ds                                      (FFJORD eq. 4)

solved with torchdiffeq's ``odeint`` (``method`` "dopri5" by default, "dopri8" or "bosh3"; the
augmented state (x, ℓ) carries the log-det), or with ``odeint_adjoint`` when ``adjoint`` is set and
gradients are recorded (memory constant in the number of steps; the adjoint solve uses the same
tolerances). ``rtol`` / ``atol`` are config; None gives √ε/64 of the dtype (2.3e-10 in float64, 5.4e-6 in
float32): local error control at that level, whose global effect the conformance row ``cnf`` states.

The trace term of the augmented dynamics:

* ``exact`` — tr(∂v/∂x) by autograd, one vector–Jacobian product per dimension (D of them per
  function evaluation: for small D). Used in evaluation mode always, in training when ``logdet`` is
  "exact", and by the inverse direction's log-det.
* ``hutchinson`` (training with ``logdet = "hutchinson"``) — εᵀ(∂v/∂x)ε with one probe ε per sample
  (Gaussian or Rademacher, ``probe``) drawn once per forward call from torch's generator and shared by
  every evaluation of the solve (FFJORD eq. 7): one vector–Jacobian product per evaluation, an unbiased
  estimate of the log-det. :meth:`CNF.logdet_estimate` takes the probe as an argument (the
  conformance hook).

:attr:`CNF.nfe` is the number of evaluations of the dynamics since the last call (forward, inverse or
estimate) began its solve; with the adjoint, a backward pass adds its backward solve's evaluations to
it. The inverse integrates from s = 1 back to s = 0.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from flowspec import registry
from flowspec.errors import ConvergenceError
from flowspec.reference.cnf import DEFAULTS

from .base import Flow, register, softplus

Trace = Callable[[Tensor, Tensor, bool], Tensor]


DEFAULT_TOLERANCE_FRACTION = 1.0 / 64.0
MAX_NUM_STEPS = 10000  # torchdiffeq's step cap; beyond it the solve raises ConvergenceError


def default_tolerance(dtype: torch.dtype) -> float:
    """√ε/64 of ``dtype`` (2.3e-10 in float64, 5.4e-6 in float32): the solver tolerance when the
    config leaves it None."""
    return DEFAULT_TOLERANCE_FRACTION * float(torch.finfo(dtype).eps) ** 0.5


def exact_trace(v: Tensor, x: Tensor, create_graph: bool) -> Tensor:
    """tr(∂v/∂x) per sample, one vector–Jacobian product per dimension."""
    total = torch.zeros_like(v[:, 0])
    for i in range(x.shape[1]):
        total = total + torch.autograd.grad(v[:, i].sum(), x, create_graph=create_graph, retain_graph=True)[0][:, i]
    return total


def probe_trace(probe: Tensor) -> Trace:
    """εᵀ(∂v/∂x)ε per sample for the fixed probe ε (one vector–Jacobian product)."""
    def trace(v: Tensor, x: Tensor, create_graph: bool) -> Tensor:
        vjp = torch.autograd.grad(v, x, probe, create_graph=create_graph, retain_graph=True)[0]
        return (vjp * probe).sum(dim=1)
    return trace


class Dynamics(nn.Module):
    """The augmented right-hand side (dx/ds, dℓ/ds) of a :class:`CNF` with a given trace term (or
    dx/ds alone without one). The flow is held outside the module tree (no parameters of its own: the
    adjoint is given the flow's)."""

    def __init__(self, flow: "CNF", trace: Trace | None):
        super().__init__()
        object.__setattr__(self, "flow", flow)
        self.trace = trace

    def forward(self, s: Tensor, state: Any) -> Any:
        flow = self.flow
        flow.nfe += 1
        x = state[0] if self.trace is not None else state
        T = torch.exp(flow.log_T)
        create_graph = torch.is_grad_enabled()
        if self.trace is None:
            return T * flow.velocity(x, s * T)
        with torch.enable_grad():
            # without a graph to extend (no_grad, or the adjoint's forward pass) a fresh leaf; x may then
            # be a view made under no_grad that autograd does not trace through
            xg = x if create_graph and x.requires_grad else x.detach().requires_grad_(True)
            v = T * flow.velocity(xg, s * T)
            tr = self.trace(v, xg, create_graph)
        return (v, tr) if create_graph else (v.detach(), tr.detach())


@register("cnf")
class CNF(Flow):
    """FFJORD continuous normalizing flow on vectors of size D (module docstring)."""

    conformance_hooks = ("logdet_estimate", "logdet_noise")

    def __init__(self, shape: Sequence[int], hidden: Sequence[int], activation: str = DEFAULTS["activation"],
                 logdet: str = DEFAULTS["logdet"], probe: str = DEFAULTS["probe"], method: str = DEFAULTS["method"],
                 rtol: float | None = DEFAULTS["rtol"], atol: float | None = DEFAULTS["atol"],
                 adjoint: bool = DEFAULTS["adjoint"], *, validate_args: bool | None = None):
        super().__init__(validate_args=validate_args)
        self._config = {"shape": list(shape) if isinstance(shape, (list, tuple)) else shape,
                        "hidden": list(hidden) if isinstance(hidden, (list, tuple)) else hidden,
                        "activation": activation, "logdet": logdet, "probe": probe, "method": method,
                        "rtol": rtol, "atol": atol, "adjoint": adjoint}
        registry.get(self.kind).validate_config(self._config)
        d = int(shape[0])
        self._shape = (d,)
        widths = [d + 1, *hidden, d]
        self.net = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        with torch.no_grad():
            self.net[-1].weight.mul_(0.5)
        self.log_T = nn.Parameter(torch.zeros(()))
        self.nfe = 0

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self._shape

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    # ------------------------------------------------------------------ the field
    def _act(self, a: Tensor) -> Tensor:
        return torch.tanh(a) if self._config["activation"] == "tanh" else softplus(a)

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        """v(x, t): the MLP on [x, t] (t a scalar, shared by the batch)."""
        h = torch.cat([x, t.expand(x.shape[0], 1)], dim=1)
        for i, layer in enumerate(self.net):
            h = layer(h if i == 0 else self._act(h))
        return h

    # ------------------------------------------------------------------ solves
    def _tolerances(self) -> tuple[float, float]:
        default = default_tolerance(self._dtype())
        rtol, atol = self._config["rtol"], self._config["atol"]
        return (default if rtol is None else float(rtol)), (default if atol is None else float(atol))

    def _solve(self, dynamics: Dynamics, state: Any, reverse: bool = False) -> Any:
        """The state at the end of s ∈ [0, 1] (``reverse``: at s = 0 from s = 1); counts :attr:`nfe`."""
        self.nfe = 0
        s = torch.tensor([1.0, 0.0] if reverse else [0.0, 1.0], dtype=self._dtype(), device=self._anchor.device)
        rtol, atol = self._tolerances()
        method = self._config["method"]
        from torchdiffeq import odeint, odeint_adjoint  # here: the rest of the package works without it

        options = {"max_num_steps": MAX_NUM_STEPS}
        try:
            if self._config["adjoint"] and torch.is_grad_enabled():
                out = odeint_adjoint(dynamics, state, s, rtol=rtol, atol=atol, method=method, options=options,
                                     adjoint_params=tuple(self.parameters()))
            else:
                out = odeint(dynamics, state, s, rtol=rtol, atol=atol, method=method, options=options)
        except AssertionError as exc:  # torchdiffeq's step cap
            if "max_num_steps" not in str(exc):
                raise
            raise ConvergenceError(f"cnf solve ({method}) did not finish in {MAX_NUM_STEPS} steps ({exc})",
                                   residual=float("inf"), iterations=MAX_NUM_STEPS, tolerance=rtol) from exc
        return tuple(o[-1] for o in out) if isinstance(out, tuple) else out[-1]

    def _draw_probe(self, x: Tensor) -> Tensor:
        if self._config["probe"] == "rademacher":
            return torch.randint(0, 2, x.shape, device=x.device).to(x.dtype) * 2.0 - 1.0
        return torch.randn(x.shape, dtype=x.dtype, device=x.device)

    def _trace_term(self, x: Tensor) -> Trace:
        """The exact trace, or (training with ``logdet = "hutchinson"``) a probe drawn for this call."""
        if self.training and self._config["logdet"] == "hutchinson":
            return probe_trace(self._draw_probe(x))
        return exact_trace

    def _integrate(self, x: Tensor, trace: Trace, reverse: bool = False) -> tuple[Tensor, Tensor]:
        return self._solve(Dynamics(self, trace), (x, x.new_zeros(x.shape[0])), reverse)

    def _forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._integrate(x, self._trace_term(x))

    def _inverse(self, z: Tensor, context: Tensor | None) -> Tensor:
        return self._solve(Dynamics(self, None), z, reverse=True)

    def _inverse_and_logdet(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """(x, log|det ∂x/∂z|): the augmented state from s = 1 back to 0 with the exact trace, ℓ(0) = −∫₀¹ T·tr ds."""
        return self._integrate(z, exact_trace, reverse=True)

    def logdet_noise(self, batch: int) -> Tensor:
        """The probes a training-mode forward with ``logdet = "hutchinson"`` on a batch of ``batch``
        draws first thing, from the same (global) generator: after the same ``torch.manual_seed``,
        exactly that forward's probes (the conformance hook)."""
        return self._draw_probe(torch.empty((batch, *self._shape), dtype=self.log_T.dtype, device=self.log_T.device))

    def logdet_estimate(self, x: Tensor, probe: Tensor) -> Tensor:
        """∫₀¹ T·εᵀ(∂v/∂x)ε ds per sample for the given probes ε (rows of ``probe``): the conformance hook."""
        self._check_call(x, self.event_shape, self.domain, "x", None)
        return self._integrate(x, probe_trace(probe))[1]
