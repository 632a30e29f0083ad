"""The Glow model: forward + log-det and inverse of ``make_model`` on 3 × H × H images, over two sizes.

float32, one thread, input validation off, as in ``flows.py``. The model is Glow's small
configuration here: 3 levels of (squeeze, 4 steps of actnorm, LU 1×1 convolution, affine coupling
with 2 hidden 3×3 convolutions of 32 channels) with the learned-prior split after the first two;
its ActNorms are initialised on the benchmark's batch in setup (Glow's data-dependent start), so
that the timed calls run in evaluation mode. Batches are chosen so that one call takes about
10–50 ms on one core. A commit without the kind skips (``require_kind``).
"""
from __future__ import annotations

import torch

from .common import one_thread, require, require_kind
from .flows import _Family

MODEL = {"levels": 3, "steps": 4, "hidden": 32}


class Glow(_Family):
    """``make_model([3, H, H], levels=3, steps=4, hidden=32)``, affine couplings, ReLU."""

    kind = "glow"
    param_names = ["H"]
    params = [16, 32]
    batches = {16: 32, 32: 16}

    def setup(self, side: int) -> None:
        from flowspec.conformance.seeding import seed_for

        one_thread()
        require_kind(self.kind)
        glow = require("flowspec.accelerated.glow")
        torch.manual_seed(seed_for("bench", self.kind, side))
        self.flow = glow.make_model([3, side, side], **MODEL, validate_args=False)
        g = torch.Generator().manual_seed(seed_for("bench", self.kind, side, "x"))
        self.x = torch.randn((self.batches[side], 3, side, side), generator=g)
        with torch.no_grad():
            self.flow.train()
            self.flow(self.x)  # ActNorm's data-dependent initialisation
            self.flow.eval()
            self.z = self.flow(self.x)[0]
