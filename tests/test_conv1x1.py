"""Invertible 1×1 convolutions: negative determinants, the LU constants, singular weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from flowspec import reference
from flowspec.accelerated import from_spec
from flowspec.accelerated.conv1x1 import Conv1x1, Conv1x1LU
from flowspec.conformance.seeding import rng
from flowspec.conformance.tolerances import assert_close
from flowspec.errors import ConfigError, NumericalError
from flowspec.reference.conv1x1 import lu_weight
from flowspec.spec import FlowSpec

CONFIG = {"channels": 3, "height": 2, "width": 3}
D = 3 * 2 * 3  # entries of one sample
DTYPE_NAME = {torch.float64: "float64", torch.float32: "float32"}


def _x(key: str, n: int = 2) -> np.ndarray:
    return rng("conv1x1-test", key).standard_normal((n, 3, 2, 3))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_negative_determinant_gives_the_finite_log_modulus(dtype: torch.dtype) -> None:
    weight = np.array([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0], [0.5, 0.0, 3.0]])  # det = −6
    spec = FlowSpec("conv1x1", CONFIG, {"weight": weight})
    x = _x("negative")
    _, logdet = from_spec(spec, dtype=dtype)(torch.as_tensor(x, dtype=dtype))
    expected = 6 * np.log(6.0)
    assert_close(logdet.detach().double().numpy(), np.array([expected, expected]), "logdet", DTYPE_NAME[dtype], D)
    assert_close(reference.log_abs_det(spec, x), np.array([expected, expected]), "logdet", "float64", D)


def test_reference_init_has_a_negative_determinant() -> None:
    for key in range(5):
        spec = reference.init_spec("conv1x1", CONFIG, rng("conv1x1-test", "init", key))
        assert np.linalg.det(spec.params["weight"]) < 0


def test_lu_weight_and_log_det_match_the_reference() -> None:
    spec = reference.init_spec("conv1x1_lu", CONFIG, rng("conv1x1-test", "lu"))
    flow = from_spec(spec)
    # W = P·L·(U + diag(s)): each entry sums over the channels
    assert_close(flow.weight_matrix().detach().numpy(), lu_weight(spec.params), "forward", "float64",
                 CONFIG["channels"])
    _, logdet = flow(torch.as_tensor(_x("lu")))
    assert_close(logdet.detach().numpy(), np.full(logdet.shape, 6 * spec.params["log_s"].sum()), "logdet",
                 "float64", D)


@pytest.mark.parametrize("cls", [Conv1x1, Conv1x1LU])
def test_fresh_flows_start_from_a_rotation(cls: type) -> None:
    torch.manual_seed(0)
    w = cls(**CONFIG).double().weight_matrix().detach()
    # the rotation is drawn in float64 but stored as a float32 parameter, so it is orthogonal to float32 rounding
    assert_close((w @ w.T).numpy(), np.eye(3), "forward", "float32", CONFIG["channels"])


@pytest.mark.parametrize("name, value, match", [
    ("P", np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), "permutation matrix"),
    ("P", np.eye(3) * 0.5, "permutation matrix"),
    ("sign_s", np.array([1.0, 0.0, -1.0]), "only −1 and \\+1"),
])
def test_bad_lu_constants_are_rejected_by_both_layers(name: str, value: np.ndarray, match: str) -> None:
    spec = reference.init_spec("conv1x1_lu", CONFIG, rng("conv1x1-test", "constants"))
    bad = FlowSpec("conv1x1_lu", CONFIG, {**spec.params, name: value})
    with pytest.raises(ConfigError, match=match):
        from_spec(bad)
    with pytest.raises(ConfigError, match=match):
        reference.forward(bad, _x("constants"))


def test_singular_weight_raises_a_numerical_error() -> None:
    weight = np.array([[1.0, 2.0, 0.0], [2.0, 4.0, 0.0], [0.0, 0.0, 1.0]])
    flow = from_spec(FlowSpec("conv1x1", CONFIG, {"weight": weight}))
    x = torch.as_tensor(_x("singular"))
    with pytest.raises(NumericalError, match="singular: log\\|det W\\| = -inf"):
        flow(x)
    with pytest.raises(NumericalError, match="singular"):
        flow.inverse(x)


@pytest.mark.parametrize(
    "config", [{"channels": 0, "height": 2, "width": 2}, {"channels": 2, "height": True, "width": 2}]
)
def test_bad_image_config(config: dict) -> None:
    for kind, cls in (("conv1x1", Conv1x1), ("conv1x1_lu", Conv1x1LU)):
        with pytest.raises(ConfigError, match="positive ints"):
            reference.init_spec(kind, config, rng("conv1x1-test", "config"))
        with pytest.raises(ConfigError, match="positive ints"):
            cls(**config)


@pytest.mark.parametrize("kind", ["conv1x1", "conv1x1_lu"])
def test_inverse_direction_log_det_is_minus_hw_log_det_w(kind: str) -> None:
    spec = reference.init_spec(kind, CONFIG, rng("conv1x1-test", "inverse-logdet", kind))
    flow = from_spec(spec)
    z = torch.as_tensor(_x("inverse-logdet-z"))
    x, logdet = flow.inverse_and_logdet(z)
    torch.testing.assert_close(x, flow.inverse(z), rtol=0, atol=0)
    assert_close(logdet.detach().numpy(), -reference.log_abs_det(spec, x.detach().numpy()), "logdet", "float64", D)
