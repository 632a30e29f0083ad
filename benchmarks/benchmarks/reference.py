"""The reference's full Jacobian (autograd) and log|det| (slogdet of it) as D grows.

An affine coupling layer (MLP conditioner, width 2·D, one hidden layer) on a batch of three samples:
the Jacobian costs D reverse passes, the slogdet O(D³) (negligible at these sizes).
"""
from __future__ import annotations

from .common import one_thread, require_kind, skip_if_slow


class Reference:
    params = [32, 64, 128]
    param_names = ["D"]

    def setup(self, d: int) -> None:
        from flowspec import reference
        from flowspec.conformance.seeding import rng

        one_thread()
        skip_if_slow(d >= 128)
        require_kind("affine_coupling", layer="reference")
        r = rng("bench", "reference", d)
        self.spec = reference.init_spec("affine_coupling", {"shape": [d], "hidden": 2 * d, "depth": 1}, r)
        self.x = r.standard_normal((3, d))

    def time_jacobian(self, d: int) -> None:
        from flowspec import reference

        reference.jacobian(self.spec, self.x)

    def time_log_abs_det(self, d: int) -> None:
        from flowspec import reference

        reference.log_abs_det(self.spec, self.x)
