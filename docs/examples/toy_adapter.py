"""Check your own implementation: a NumPy implementation of the ``elementwise_affine`` kind
(z = x·exp(log_scale) + shift), connected to the conformance suite by an adapter.

The first version forgets two checks a careful implementation makes; the suite finds both.
"""
import numpy as np

from flowspec import reference, registry
from flowspec.conformance import Adapter, Capabilities, load_families, report, run


class ToyAffine:
    """The implementation under test: its own parameter storage and its own maps."""

    def __init__(self, log_scale: np.ndarray, shift: np.ndarray):
        self.log_scale, self.shift = log_scale, shift

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if x.shape[1:] != self.shift.shape or not np.isfinite(x).all():
            raise ValueError(f"expected finite inputs of shape (batch, {self.shift.shape}), got {x.shape}")
        z = x * np.exp(self.log_scale) + self.shift
        return z, np.full(x.shape[0], self.log_scale.sum())

    def inverse(self, z: np.ndarray) -> np.ndarray:
        return (z - self.shift) * np.exp(-self.log_scale)


class ToyAdapter(Adapter):
    """White-box (``load`` a FlowSpec) and black-box (``instantiate`` from a config and a seed)."""

    name = "toy"

    def capabilities(self) -> Capabilities:
        return Capabilities(kinds=frozenset({"elementwise_affine"}), dtypes=frozenset({"float64"}),
                            hooks=frozenset({"inverse"}), input_errors=(ValueError,))

    def load(self, spec, dtype, device):
        return ToyAffine(np.array(spec.params["log_scale"]), np.array(spec.params["shift"]))

    def instantiate(self, kind, config, seed, dtype, device):
        return self.load(reference.init_spec(kind, config, seed), dtype, device)

    def forward(self, flow, x, context=None, *, raw=False, grad=False):
        return flow.forward(x)

    def inverse(self, flow, z, context=None, *, raw=False):
        return flow.inverse(z)


class CheckedToyAffine(ToyAffine):
    """The fix: both directions refuse inputs of another dtype, shape, or with NaN or inf entries."""

    def _check(self, a: np.ndarray) -> None:
        if a.dtype != np.float64 or a.shape[1:] != self.shift.shape or not np.isfinite(a).all():
            raise ValueError(f"expected finite float64 arrays of shape (batch, {self.shift.shape}), "
                             f"got {a.dtype} {a.shape}")

    def forward(self, x):
        self._check(x)
        return super().forward(x)

    def inverse(self, z):
        self._check(z)
        return super().inverse(z)


class CheckedToyAdapter(ToyAdapter):
    """...and refuse a config the kind does not accept, by the registry's own check."""

    def load(self, spec, dtype, device):
        registry.get(spec.kind).validate_config(spec.config)
        return CheckedToyAffine(np.array(spec.params["log_scale"]), np.array(spec.params["shift"]))

    def instantiate(self, kind, config, seed, dtype, device):
        registry.get(kind).validate_config(config)
        return super().instantiate(kind, config, seed, dtype, device)


def main() -> None:
    """Run the suite on both versions: the first fails two properties, the fixed one none."""
    load_families()
    results = run(ToyAdapter(), kinds=["elementwise_affine"], dtypes=["float64"])
    print(report.summary(results))
    failed = sorted(r.property for r in results if r.status == "failed")
    print(failed)
    assert failed == ["bad_input_rejected", "invalid_config_rejected"]

    results = run(CheckedToyAdapter(), kinds=["elementwise_affine"], dtypes=["float64"])
    print(report.summary(results))
    assert not [r for r in results if r.status == "failed"]


if __name__ == "__main__":
    main()
