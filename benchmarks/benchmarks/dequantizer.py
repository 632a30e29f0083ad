"""Flow++'s variational dequantizer: forward + log-det (the density of u), inverse (sampling u) and
the variational objective, over two sizes.

float32, one thread, input validation off, as in ``flows.py``. The dequantizer has two affine
couplings with MLP conditioners of width 64 reading the context (D features of k) besides the
context affine; data k are 8-bit (n_bins = 256). ``time_variational_bpd`` is the objective of a
batch without gradients (sampling u, log q, the model's log p: a logit and an affine coupling of the
same width), ``time_variational_train_step`` a joint Adam step over model and dequantizer. A commit
without the kind skips (``require_kind``).
"""
from __future__ import annotations

from typing import Any

import torch

from .common import one_thread, require, require_kind

N_BINS = 256
HIDDEN = 64


class Dequantizer:
    param_names = ["D"]
    params = [64, 256]
    batch = 1024

    def _spec(self, kind: str, config: dict[str, Any], d: int) -> Any:
        from flowspec import reference
        from flowspec.conformance.seeding import rng

        return reference.init_spec(kind, config, rng("bench", "dequantizer", kind, d))

    def setup(self, d: int) -> None:
        from flowspec.accelerated import from_spec
        from flowspec.conformance.seeding import seed_for
        from flowspec.reference.sequential import sequential_spec
        from flowspec.spec import FlowSpec

        one_thread()
        require_kind("dequantizer")
        self.training = require("flowspec.accelerated.training")
        dequantizer = require("flowspec.accelerated.dequantizer")
        self.flow = from_spec(self._spec("dequantizer", {"shape": [d], "couplings": 2, "hidden": HIDDEN}, d),
                              dtype=torch.float32)
        model = sequential_spec([FlowSpec("logit", {"shape": [d], "alpha": 0.05}),
                                 self._spec("affine_coupling", {"shape": [d], "hidden": HIDDEN}, d)])
        self.model = from_spec(model, dtype=torch.float32)
        for flow in (self.flow, self.model):
            flow.validate_args = False
        self.generator = torch.Generator().manual_seed(seed_for("bench", "dequantizer", d, "x"))
        self.k = torch.randint(0, N_BINS, (self.batch, d), generator=self.generator)
        self.context = dequantizer.features(self.k, N_BINS, torch.float32)
        self.u = torch.rand((self.batch, d), generator=self.generator) * 0.98 + 0.01
        with torch.no_grad():
            self.eps = self.flow(self.u, self.context)[0]
        self.optimizer = self.training.adam(torch.nn.ModuleList([self.model, self.flow]), lr=1e-4)

    def time_forward_logdet(self, d: int) -> None:
        with torch.no_grad():
            self.flow(self.u, self.context)

    def time_inverse(self, d: int) -> None:
        with torch.no_grad():
            self.flow.inverse(self.eps, self.context)

    def time_variational_bpd(self, d: int) -> None:
        with torch.no_grad():
            self.training.variational_bpd(self.model, self.flow, self.k, N_BINS, generator=self.generator)

    def time_variational_train_step(self, d: int) -> None:
        self.training.variational_train_step(self.model, self.flow, self.optimizer, self.k, n_bins=N_BINS,
                                             generator=self.generator)
