"""Write an adapter for another library: ``torch.distributions.AffineTransform`` checked as the
``elementwise_affine`` kind through :class:`flowspec.conformance.TorchFlowAdapter`.

``TorchFlowAdapter`` expects modules with flowspec's calling convention, ``module(x, context) ->
(z, log|det ∂z/∂x|)`` and ``module.inverse(z, context)``; a thin wrapper gives the other library's
transform that shape. For white-box checks the wrapper's parameters carry the kind's canonical
names (``log_scale``, ``shift``), so the suite can load a FlowSpec into it.
"""
import numpy as np
import torch
from torch.distributions.transforms import AffineTransform

from flowspec import reference, registry
from flowspec.conformance import TorchFlowAdapter, load_families, report, run


class AffineTransformFlow(torch.nn.Module):
    """z = AffineTransform(loc=shift, scale=exp(log_scale))(x), one event of shape ``shift.shape``."""

    def __init__(self, log_scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        self.log_scale = torch.nn.Parameter(log_scale)
        self.shift = torch.nn.Parameter(shift)

    def _transform(self) -> AffineTransform:
        return AffineTransform(loc=self.shift, scale=self.log_scale.exp(), event_dim=self.shift.dim())

    def _check(self, t: torch.Tensor) -> None:
        if t.dtype != self.shift.dtype or t.shape[1:] != self.shift.shape or not torch.isfinite(t).all():
            raise ValueError(f"expected finite {self.shift.dtype} tensors of shape (batch, "
                             f"{tuple(self.shift.shape)}), got {t.dtype} {tuple(t.shape)}")

    def forward(self, x: torch.Tensor, context=None) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(x)
        transform = self._transform()
        z = transform(x)
        return z, transform.log_abs_det_jacobian(x, z).expand(x.shape[0])

    def inverse(self, z: torch.Tensor, context=None) -> torch.Tensor:
        self._check(z)
        return self._transform().inv(z)


def build(spec) -> AffineTransformFlow:
    """White-box: exactly the spec's parameters (float64; the adapter converts to the dtype checked).
    A config the kind does not accept is refused by the registry's own check, naming the key."""
    registry.get(spec.kind).validate_config(spec.config)
    return AffineTransformFlow(torch.tensor(spec.params["log_scale"]), torch.tensor(spec.params["shift"]))


def instantiate(kind, config, seed) -> AffineTransformFlow:
    """Black-box: some flow of the kind, its parameters drawn from the seed."""
    return build(reference.init_spec(kind, config, np.random.default_rng(seed)))


adapter = TorchFlowAdapter(name="torch.distributions", kinds={"elementwise_affine"}, builder=build,
                           instantiator=instantiate, input_errors=(ValueError,))
load_families()
results = run(adapter, kinds=["elementwise_affine"], dtypes=["float64", "float32"])
print(report.summary(results))
assert not [r for r in results if r.status == "failed"]
print(sorted({r.property for r in results if r.status == "not_supported"}))
