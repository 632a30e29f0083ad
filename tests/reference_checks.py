"""Comparisons of an accelerated flow with the reference that several test modules share."""
from __future__ import annotations

import functools

import numpy as np
import torch
from hypothesis import HealthCheck, Phase, find, settings

from flowspec import reference, registry
from flowspec.conformance import load_families, strategies
from flowspec.accelerated import from_spec
from flowspec.conformance.strategies import event_size
from flowspec.conformance.tolerances import assert_close
from flowspec.spec import FlowSpec


def checked_kinds() -> list[str]:
    """Every registered kind with conformance strategies, sorted (new kinds join automatically)."""
    load_families()
    return sorted(k for k in registry.names() if strategies.has_specs(k))


@functools.lru_cache(maxsize=None)
def spec_of(kind: str) -> FlowSpec:
    """The first spec the kind's strategy draws (derandomized, not shrunk)."""
    return find(strategies.specs(kind), lambda s: True,
                settings=settings(database=None, derandomize=True, phases=(Phase.generate,),
                                  suppress_health_check=list(HealthCheck)))


def assert_vjp_matches_reference(spec: FlowSpec, x: np.ndarray, z_weight: np.ndarray, logdet_weight: np.ndarray) -> None:
    """Gradients of Σ z_weight·z + Σ logdet_weight·log|det| w.r.t. x and every parameter of the
    float64 accelerated flow equal the reference's autograd ones."""
    r_params, r_x = reference.vjp(spec, x, z_weight, logdet_weight)
    flow = from_spec(spec)
    xt = torch.tensor(x, requires_grad=True)
    z, logdet = flow(xt)
    ((z * torch.as_tensor(z_weight)).sum() + (logdet * torch.as_tensor(logdet_weight)).sum()).backward()
    size = event_size(spec)
    assert_close(xt.grad.numpy(), r_x, "grad", "float64", size)
    for name, param in flow.named_parameters():
        assert_close(param.grad.numpy(), r_params[name], "grad", "float64", size, name)
