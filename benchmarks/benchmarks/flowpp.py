"""A Flow++-style model at a small size: a training step and an evaluation with variational
dequantization, on 3×8×8 images of 8-bit data.

The model (float32, one thread, input validation off, as in ``flows.py``): logit → 4 logistic-mixture
couplings (K = 4 components) with the self-attention conditioner (hidden 16, 1 block, 2 heads),
checkerboard then channel masks, alternating parity, each followed by an ActNorm. The dequantizer:
logit → context affine → 2 affine couplings with conv conditioners reading the image context (the
cell centres of k). ``time_train_step`` is a joint Adam step on the variational bits per dimension
(Flow++ eq. 12); ``time_evaluate`` the bound of a batch without gradients (one u per sample). A
commit without the kinds skips (``require_kind``).
"""
from __future__ import annotations

from typing import Any

import torch

from .common import one_thread, require, require_kind

N_BINS = 256
SHAPE = [3, 8, 8]
ATTENTION = {"conditioner": "attention", "hidden": 16, "blocks": 1, "heads": 2}


def _spec(kind: str, config: dict[str, Any], key: str) -> Any:
    from flowspec import reference
    from flowspec.conformance.seeding import rng

    return reference.init_spec(kind, config, rng("bench", "flowpp", key))


def _model() -> Any:
    from flowspec.reference.sequential import sequential_spec
    from flowspec.spec import FlowSpec

    layers = [FlowSpec("logit", {"shape": SHAPE, "alpha": 0.05})]
    for i, mask in enumerate(("checkerboard", "checkerboard", "channel", "channel")):
        config = {"shape": SHAPE, "mask": mask, "parity": i % 2, "components": 4, **ATTENTION}
        layers.append(_spec("logistic_mixture_coupling", config, f"coupling-{i}"))
        layers.append(_spec("actnorm", {"shape": SHAPE}, f"actnorm-{i}"))
    return sequential_spec(layers)


class FlowPlusPlus:
    """A joint training step and an evaluation of the Flow++-style model (module docstring)."""

    batch = 32
    timeout = 120

    def setup(self) -> None:
        from flowspec.accelerated import from_spec

        one_thread()
        for kind in ("logistic_mixture_coupling", "dequantizer"):
            require_kind(kind)
        self.training = require("flowspec.accelerated.training")
        self.model = from_spec(_model(), dtype=torch.float32)
        config = {"shape": SHAPE, "couplings": 2, "hidden": 16, "conditioner": "conv"}
        self.dequantizer = from_spec(_spec("dequantizer", config, "dequantizer"), dtype=torch.float32)
        for flow in (self.model, self.dequantizer):
            flow.validate_args = False
        self.generator = torch.Generator().manual_seed(0)
        self.k = torch.randint(0, N_BINS, (self.batch, *SHAPE), generator=self.generator)
        self.optimizer = self.training.adam(torch.nn.ModuleList([self.model, self.dequantizer]), lr=1e-4)

    def time_train_step(self) -> None:
        self.training.variational_train_step(self.model, self.dequantizer, self.optimizer, self.k, n_bins=N_BINS,
                                             generator=self.generator)

    def time_evaluate(self) -> None:
        self.training.variational_evaluate(self.model, self.dequantizer, self.k, n_bins=N_BINS,
                                           generator=self.generator)
