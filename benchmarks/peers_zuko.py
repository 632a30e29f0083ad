"""flowspec's monotone autoregressive transforms (``naf``, ``sos``, ``umnn``) and continuous-time
flow (``cnf``) against zuko's ``NAF``, ``SOSPF``, ``UNAF`` and ``CNF`` at the nearest architecture,
side by side.

    python benchmarks/peers_zuko.py [--models naf sos umnn cnf] [--rounds 10] [--min-time 0.05] [--dims 8 16] [--threads 1]

Timing and statistics come from :mod:`peers` (imported from this directory):
:func:`peers.interleaved` (each contender timed once per round, rotating order, after warm-up),
:func:`peers.round_ratios` and :func:`peers.summarize` (median of zuko time / flowspec time per round,
10th–90th percentile spread, verdict met / missed / unclear against ratio ≥ 1.0), and the phases of
:func:`peers.phase_call` (train: −log p(x).mean(), backward, an Adam step; density: log p(x) without
gradients; sample: base noise, then the inverse). Each phase runs on freshly built contenders.

Architecture, both sides: 3 autoregressive transforms (natural, reversed, natural order), a MADE
D → 64 → 64 → k·D with ReLU, torch's default ``nn.Linear`` initialisation, float32, batch 256;
flowspec puts a ``reverse_permutation`` between transforms, zuko alternates the orders and puts a
soft clip (bound 11) between them. What differs is the univariate transformer, by design of each
library (the parameter counts of both sides are printed):

* ``naf`` — flowspec: the deep sigmoidal flow (Huang et al. 2018, eq. 8), one layer of K = 5
  sigmoids, k = 3K = 15 outputs per dimension, inverse by a safeguarded Newton solve in the exact
  bracket to 16ε relative. zuko ``NAF(signal=16)``: a monotonic MLP with positive weights
  (17 → 64 → 64 → 1 per feature) modulated by 16 signal outputs, inverse by bisection on [−10, 10].
  The rows compare the two libraries' NAF as shipped at the same conditioner, not the same arithmetic.
* ``sos`` — flowspec: K = 3 squares of degree r = 4, k = 2 + K(r + 1) = 17 outputs (c, a, raw ε),
  z = c + ∫₀ˣ Σ_k s_k² + ε² in closed form (Horner), inverse by bracket expansion and safeguarded
  Newton. zuko ``SOSPF(degree=4, polynomials=3)``: k = K(r + 1) + 1 = 16 outputs, the integrand
  mean_k (1 + s_k(x/B))² + slope integrated by (r + 1)-node Gauss–Legendre, inverse by bisection.
  The data are N(0, 0.5²) here: three stacked degree-9 polynomials at torch's default
  initialisation grow like |x|^{9³}, and at N(0, 1) a quarter to a third of flowspec's
  log-densities overflow float32 (zuko rescales by B and soft-clips between transforms; flowspec's
  ``sos`` is the plain polynomial, so a deep stack wants a normalisation between transforms).
* ``umnn`` — flowspec: one integrand network 1 + 16 → 64 → 64 → 1 shared by the D dimensions (as
  in the paper), g = softplus(net) + 10⁻³ with tanh inside, Clenshaw–Curtis with N = 32 (33 points),
  gradients by autograd through the quadrature, inverse by safeguarded Newton with slope g. zuko
  ``UNAF(signal=16)``: one integrand network per dimension (about 3× the parameters at D = 8),
  32-point Gauss–Legendre with the paper's memory-saving backward, inverse by bisection.
* ``cnf`` — one continuous-time transform on both sides, dx/dt = v(x, t) with v an MLP
  (· → 64 → 64 → D, tanh), dopri5 at rtol = 10⁻⁵, atol = 10⁻⁶, the exact trace (training too), on
  t ∈ [0, 1]. flowspec ``cnf``: v reads [x, t], T = exp(log_T) learnable (here 1), adjoint
  gradients (``odeint_adjoint`` of torchdiffeq). zuko ``CNF``: v reads [x, cos/sin of 3 time
  frequencies], its own adaptive checkpointed adjoint. The orders (natural, reversed) do not apply.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import peers  # noqa: E402  (benchmarks/peers.py, by path)

TRANSFORMS, HIDDEN, BATCH = 3, (64, 64), 256


@dataclass(frozen=True)
class Model:
    """One row group: the flowspec kind with its config (beyond dim, hidden, activation) and zuko's
    flow class with its keyword arguments (beyond features, transforms, hidden_features, activation)."""

    kind: str
    config: dict[str, Any]
    zuko_class: str
    zuko_options: Callable[[], dict[str, Any]]
    data_scale: float = 1.0
    autoregressive: bool = True


MODELS = {
    "naf": Model("naf", {"components": 5, "layers": 1}, "NAF", lambda: {"signal": 16}),
    "sos": Model("sos", {"degree": 4, "squares": 3}, "SOSPF", lambda: {"degree": 4, "polynomials": 3}, 0.5),
    "umnn": Model("umnn", {"embedding": 16, "integrand_hidden": [64, 64], "nodes": 32}, "UNAF",
                  lambda: {"signal": 16, "network": {"hidden_features": [64, 64]}}),
    "cnf": Model("cnf", {"activation": "tanh", "logdet": "exact", "adjoint": True, "rtol": 1e-5, "atol": 1e-6},
                 "CNF", lambda: {"activation": nn.Tanh, "rtol": 1e-5, "atol": 1e-6, "exact": True},
                 autoregressive=False),
}


def build_flowspec(model: Model, dim: int) -> peers.Contender:
    """``sequential`` of the kind and ``reverse_permutation`` (one ``cnf``), validation off."""
    from flowspec import reference
    from flowspec.accelerated import from_spec
    from flowspec.conformance.seeding import rng
    from flowspec.reference.sequential import sequential_spec

    if not model.autoregressive:
        spec = reference.init_spec(model.kind, {"shape": [dim], "hidden": list(HIDDEN), **model.config},
                                   rng("peers", model.kind, dim))
        spec.params["log_T"] = np.zeros(())
        return _contender(from_spec(spec, dtype=torch.float32))
    config = {"dim": dim, "hidden": list(HIDDEN), "activation": "relu", **model.config}
    children: list[Any] = []
    for i in range(TRANSFORMS):
        if i:
            children.append(reference.init_spec("reverse_permutation", {"shape": [dim]},
                                                rng("peers", model.kind, dim, i)))
        children.append(reference.init_spec(model.kind, config, rng("peers", model.kind, dim, i)))
    return _contender(from_spec(sequential_spec(children), dtype=torch.float32))


def _contender(flow: Any) -> peers.Contender:
    """flowspec's side from its flow: torch's default initialisation, validation off."""
    from flowspec.accelerated import FlowDistribution

    peers.reset_linear_layers(flow)
    flow.validate_args = False
    dist = FlowDistribution(flow)
    return peers.Contender("flowspec", flow, dist.log_prob, lambda n: dist.sample((n,)))


def build_zuko(model: Model, dim: int) -> peers.Contender:
    zuko = peers.import_peer("zuko")
    layout = {"transforms": TRANSFORMS, "activation": nn.ReLU} if model.autoregressive else {}
    flow = getattr(zuko.flows, model.zuko_class)(dim, hidden_features=list(HIDDEN),
                                                 **{**layout, **model.zuko_options()})
    return peers.Contender("zuko", flow, lambda x: flow().log_prob(x), lambda n: flow().sample((n,)))


Row = tuple[str, int, str, float, float, peers.Summary]


def run(names: list[str], dims: list[int], phases: list[str], rounds: int, min_time: float) -> list[Row]:
    """One row per model, size and phase, each phase on freshly built contenders."""
    rows: list[Row] = []
    for name in names:
        model = MODELS[name]
        for dim in dims:
            x = model.data_scale * torch.randn(BATCH, dim, generator=torch.Generator().manual_seed(dim))
            for phase in phases:
                torch.manual_seed(dim)
                contenders = {c.name: c for c in (build_flowspec(model, dim), build_zuko(model, dim))}
                times = peers.interleaved({n: peers.phase_call(c, phase, x) for n, c in contenders.items()},
                                          rounds, min_time)
                summary = peers.summarize(peers.round_ratios(times["zuko"], times["flowspec"]))
                median = {n: 1e3 * float(torch.tensor(t).median()) for n, t in times.items()}
                rows.append((name, dim, phase, median["flowspec"], median["zuko"], summary))
                print(line(rows[-1]), flush=True)
    return rows


def line(row: Row) -> str:
    name, dim, phase, ours, theirs, s = row
    return (f"| {name} | {dim} | {phase} | {ours:.2f} | {theirs:.2f} | {s.median:.2f} "
            f"[{s.low:.2f}, {s.high:.2f}] | {s.verdict} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--phases", nargs="+", choices=list(peers.PHASES), default=list(peers.PHASES))
    p.add_argument("--rounds", type=int, default=peers.MIN_ROUNDS)
    p.add_argument("--min-time", type=float, default=0.05)
    p.add_argument("--dims", type=int, nargs="+", default=list(peers.DIMS))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.rounds < peers.MIN_ROUNDS:
        p.error(f"--rounds must be ≥ {peers.MIN_ROUNDS}")
    try:
        peers.import_peer("zuko")
    except peers.Unavailable as exc:
        print(f"skipped: {exc}")
        return 0
    peers.timing.configure("cpu", args.threads)
    for name in args.models:
        for dim in args.dims:
            counts = [peers.parameter_count(build(MODELS[name], dim).module) for build in (build_flowspec, build_zuko)]
            print(f"{name} D={dim}: parameters flowspec {counts[0]}, zuko {counts[1]}")
    print("| model | D | phase | flowspec ms | zuko ms | ratio zuko/flowspec [p10, p90] | verdict |")
    print("|---|---|---|---|---|---|---|")
    run(args.models, args.dims, args.phases, args.rounds, args.min_time)
    return 0


if __name__ == "__main__":
    sys.exit(main())
