"""Forward + log-det and inverse of each flow family with a closed-form log-det, over sizes.

float32, one thread, input validation off (the hot-path setting). Sizes are chosen so that one
call takes 10–100 ms on one core of the CI machine; the residual and QuAR families are in
``training.py``.
"""
from __future__ import annotations

from typing import Any

import torch

from .common import one_thread, require_kind, skip_if_slow


class _Family:
    """Setup shared by the families: ``kind``, a config per size, a batch size, a data domain."""

    kind = ""
    param_names = ["D"]
    batch = 1024
    slow_sizes: tuple[int, ...] = ()
    unit_interval = False

    def config(self, d: int) -> dict[str, Any]:
        return {"shape": [d]}

    def spec(self, d: int) -> Any:
        from flowspec import reference
        from flowspec.conformance.seeding import rng

        return reference.init_spec(self.kind, self.config(d), rng("bench", self.kind, d))

    def setup(self, d: int) -> None:
        from flowspec.accelerated import from_spec
        from flowspec.conformance.seeding import seed_for

        one_thread()
        skip_if_slow(d in self.slow_sizes)
        require_kind(self.kind)
        self.flow = from_spec(self.spec(d), dtype=torch.float32)
        self.flow.validate_args = False
        g = torch.Generator().manual_seed(seed_for("bench", self.kind, d, "x"))
        shape = (self.batch, *self.flow.event_shape)
        self.x = torch.rand(shape, generator=g) * 0.98 + 0.01 if self.unit_interval else torch.randn(shape, generator=g)
        with torch.no_grad():
            self.z = self.flow(self.x)[0]

    def time_forward_logdet(self, d: int) -> None:
        with torch.no_grad():
            self.flow(self.x)

    def time_inverse(self, d: int) -> None:
        with torch.no_grad():
            self.flow.inverse(self.z)

    def track_forward_peak_bytes(self, d: int) -> int:
        from flowspec.accelerated.memory import peak_bytes

        with torch.no_grad():
            return peak_bytes(lambda: self.flow(self.x))

    track_forward_peak_bytes.unit = "bytes"


class ElementwiseAffine(_Family):
    kind = "elementwise_affine"
    params = [8192, 12288]


class Sequential(_Family):
    """logit → elementwise affine → sigmoid, composed by the ``sequential`` kind."""

    kind = "sequential"
    params = [1024, 2048]
    unit_interval = True

    def spec(self, d: int) -> Any:
        from flowspec import FlowSpec, reference
        from flowspec.conformance.seeding import rng
        from flowspec.reference.sequential import sequential_spec

        return sequential_spec([
            FlowSpec("logit", {"shape": [d], "alpha": 0.05}),
            reference.init_spec("elementwise_affine", {"shape": [d]}, rng("bench", self.kind, d)),
            FlowSpec("sigmoid", {"shape": [d]}),
        ])


class AffineCoupling(_Family):
    """RealNVP affine coupling with an MLP conditioner of width 4·D and two hidden layers."""

    kind = "affine_coupling"
    params = [64, 128]
    batch = 2048

    def config(self, d: int) -> dict[str, Any]:
        return {"shape": [d], "conditioner": "mlp", "hidden": 4 * d, "depth": 2, "activation": "tanh"}
