"""The normflows adapter (``flowspec.conformance.adapters.normflows``): its mapping, a small
conformance run whose failures must be exactly the documented findings, and one independent
verification per finding (autograd Jacobians in float64 of normflows's own modules, or direct
round trips), so that a finding stands without the suite (docs/guide/peer_normflows.rst).

Skipped, with the reason, where normflows is absent or fails to import.
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import replace
from typing import Any, Callable

import numpy as np
import pytest

try:
    import normflows as nf
except Exception as exc:  # noqa: BLE001 - any import failure means the peer is unusable here
    pytest.skip(f"normflows is not usable ({type(exc).__name__}: {exc}); "
                f'pip install -c constraints.txt -e ".[peers]"', allow_module_level=True)

import torch

from flowspec import conformance
from flowspec.conformance.tolerances import tolerance
from flowspec.conformance.adapter import Capabilities, Declined
from flowspec.conformance.adapters import normflows as mapping

ADAPTER = mapping.conformance_adapter()

#: The run's selection: a kind for each finding the suite reaches (glow_block's empty batch is
#: spline_coupling's; normflows:residual's float32 factor is checked by its test below only, its
#: parameter-gradient property alone taking 20 s), actnorm with its declared conventions, one kind
#: that has no finding (maf), and the properties that reach them plus a structural one.
KINDS = ("planar", "actnorm", "normflows:maf", "normflows:planar_leaky_relu", "normflows:masked_affine",
         "normflows:spline_coupling", "normflows:residual_exact", "normflows:normalizing_flow")
PROPERTIES = ("logdet_matches_fd_jacobian", "inverse_round_trip", "inverse_logdet_matches_fd_jacobian",
              "input_grad_matches_fd", "autoregressive_forbidden_entries_zero_fd", "empty_batch_shapes",
              "data_init_from_fresh", "actnorm_data_init", "data_init_skips_an_empty_batch")

#: The verified findings in that selection, (kind, property, dtype), each backed by a test below
#: (named in the comment).
FINDINGS = {
    ("planar", "input_grad_matches_fd", "float32"),                            # ..._gradient_is_nan_...
    ("normflows:planar_leaky_relu", "inverse_round_trip", "float64"),          # ..._float32_slope_...
    ("normflows:planar_leaky_relu", "inverse_logdet_matches_fd_jacobian", "float64"),
    ("normflows:masked_affine", "autoregressive_forbidden_entries_zero_fd", "float32"),  # ..._into_nan_...
    ("normflows:spline_coupling", "empty_batch_shapes", "float64"),            # ..._empty_batch_...
    ("normflows:spline_coupling", "empty_batch_shapes", "float32"),
    ("normflows:residual_exact", "inverse_round_trip", "float64"),             # ..._square_root_...
    ("normflows:residual_exact", "inverse_round_trip", "float32"),
    ("normflows:residual_exact", "inverse_logdet_matches_fd_jacobian", "float64"),
    ("normflows:normalizing_flow", "logdet_matches_fd_jacobian", "float64"),   # ..._in_float32
    ("normflows:normalizing_flow", "inverse_logdet_matches_fd_jacobian", "float64"),
    ("normflows:normalizing_flow", "input_grad_matches_fd", "float64"),
    ("actnorm", "data_init_skips_an_empty_batch", "float64"),                  # ..._empty_first_batch_...
    ("actnorm", "data_init_skips_an_empty_batch", "float32"),
}


def _build(kind: str, config: dict, dtype: str = "float64", seed: int = 0) -> Any:
    return ADAPTER.instantiate(kind, config, seed, dtype, "cpu")


def _jacobian(call: Callable[[torch.Tensor], Any], x: torch.Tensor) -> torch.Tensor:
    """Per-sample autograd Jacobians (B, D, D) of ``call`` (one sample in, one sample out)."""
    return torch.stack([torch.autograd.functional.jacobian(lambda v: call(v[None])[0], row) for row in x])


# ----------------------------------------------------------------------------- the run

@pytest.fixture(scope="module")
def results() -> list[conformance.Result]:
    return conformance.run(ADAPTER, kinds=KINDS, properties=PROPERTIES, profile="ci")


def test_failures_are_exactly_the_documented_findings(results):
    failed = {(r.kind, r.property, r.dtype) for r in results if r.status == "failed"}
    assert failed == FINDINGS, {"new failures": sorted(failed - FINDINGS), "gone": sorted(FINDINGS - failed)}


def test_the_run_checks_something_in_every_selected_kind(results):
    passed = {r.kind for r in results if r.status == "passed"}
    assert passed == set(KINDS)


#: ActNorm's declared conventions (normflows divides by the unbiased std plus 1e-6).
ACTNORM_CONVENTIONS = ("actnorm_std_epsilon", "actnorm_unbiased_std")
ACTNORM_INIT = ("data_init_from_fresh", "actnorm_data_init")


def test_actnorm_init_holds_by_its_declared_conventions_in_both_dtypes(results):
    """Both initialisation properties report ``convention`` (not ``passed``: the rule is not
    flowspec's) in float64 and float32, naming both declared conventions."""
    found = {(r.property, r.dtype): r for r in results if r.kind == "actnorm" and r.property in ACTNORM_INIT}
    assert set(found) == {(p, d) for p in ACTNORM_INIT for d in ("float64", "float32")}
    for result in found.values():
        assert result.status == "convention", (result.property, result.dtype, result.message)
        assert all(name in result.message for name in ACTNORM_CONVENTIONS), result.message


class _ActnormDeclaring(mapping.NormflowsAdapter):
    """The shipped adapter with only some of ActNorm's conventions declared."""

    def __init__(self, names: tuple[str, ...]) -> None:
        super().__init__()
        self._names = frozenset(names)

    def capabilities(self) -> Capabilities:
        caps = super().capabilities()
        return replace(caps, conventions={**caps.conventions, "actnorm": self._names})


@pytest.mark.parametrize("declared", [(name,) for name in ACTNORM_CONVENTIONS], ids=ACTNORM_CONVENTIONS)
def test_actnorm_init_needs_both_conventions(declared):
    """With either convention alone, both initialisation properties fail in both dtypes: each of the
    two rules (divisor n − 1, addend 10⁻⁶) is needed to describe normflows's ActNorm."""
    run = conformance.run(_ActnormDeclaring(declared), kinds=["actnorm"], properties=ACTNORM_INIT, profile="ci")
    assert len(run) == 4 and {r.status for r in run} == {"failed"}, [(r.property, r.dtype, r.status) for r in run]


# ----------------------------------------------------------------------------- the mapping

def test_forward_is_the_layers_inverse_and_inverse_its_forward():
    """flowspec's forward (x → z) is normflows's ``inverse``; the inverse direction is its own
    ``forward``, each with its own log-det (not a negated copy)."""
    config = {"dim": 3, "hidden": 5, "blocks": 2, "residual_blocks": False, "activation": "tanh"}
    flow = _build("normflows:maf", config)
    x = np.random.default_rng(0).normal(size=(4, 3))
    z, logdet = ADAPTER.forward(flow, x)
    with torch.no_grad():
        z_lib, logdet_lib = flow.inverse(torch.as_tensor(x))
    np.testing.assert_array_equal(z, z_lib.numpy())
    np.testing.assert_array_equal(logdet, logdet_lib.numpy())
    x_back, logdet_back = ADAPTER.inverse_with_logdet(flow, z)
    np.testing.assert_allclose(x_back, x, rtol=0, atol=tolerance("roundtrip", "float64", 3))
    np.testing.assert_allclose(logdet_back, -logdet, rtol=0, atol=tolerance("logdet", "float64", 3))


def test_forward_logdet_has_the_sign_of_log_det_dz_dx():
    flow = _build("normflows:maf", {"dim": 2, "hidden": 4, "blocks": 1, "residual_blocks": True,
                                    "activation": "relu"})
    x = torch.as_tensor(np.random.default_rng(1).normal(size=(3, 2)))
    jac = _jacobian(lambda v: flow.inverse(v)[0], x)
    np.testing.assert_allclose(ADAPTER.forward(flow, x.numpy())[1], torch.linalg.slogdet(jac)[1].numpy(),
                               rtol=0, atol=tolerance("logdet", "float64", 2))


def test_planar_forward_is_the_registered_planar_map():
    """normflows's Planar (tanh) computes flowspec's planar map f in its forward; it has no inverse,
    which the adapter declares instead of faking one."""
    from flowspec import reference
    from flowspec.spec import FlowSpec

    flow = _build("planar", {"shape": [3]})
    params = {"u": flow.u.detach().numpy()[0], "w": flow.w.detach().numpy()[0], "b": flow.b.detach().numpy()[0]}
    x = np.random.default_rng(2).normal(size=(4, 3))
    spec = FlowSpec("planar", {"shape": [3]}, params)
    z, logdet = ADAPTER.forward(flow, x)
    np.testing.assert_allclose(z, reference.forward(spec, x), rtol=0, atol=tolerance("forward", "float64", 3))
    np.testing.assert_allclose(logdet, reference.log_abs_det(spec, x), rtol=0, atol=tolerance("logdet", "float64", 3))
    caps = ADAPTER.capabilities().for_kind("planar")
    assert not caps.has("inverse") and not caps.has("inverse_logdet")


@pytest.mark.parametrize("kind, config, reason", [
    ("planar", {"shape": [2, 2, 2]}, "vectors only"),
    ("radial", {"shape": [3], "alpha": 1.0}, "no options ['alpha']"),
    ("actnorm", {"shape": [2], "scale": False}, "no options ['scale']"),
    ("normflows:nonexistent", {}, "no layer mapped"),
])
def test_configs_it_cannot_honour_are_declined_with_a_reason(kind, config, reason):
    with pytest.raises(Declined, match=reason.replace("[", r"\[").replace("]", r"\]")):
        _build(kind, config)


def test_actnorm_is_built_initialised_and_fresh_is_not():
    built = _build("actnorm", {"shape": [3]})
    fresh = ADAPTER.fresh("actnorm", {"shape": [3]}, 0, "float64", "cpu")
    assert float(built.data_dep_init_done) == 1.0 and float(fresh.data_dep_init_done) == 0.0


def test_absent_normflows_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "normflows", None)  # what an uninstalled package looks like to import
    monkeypatch.delitem(sys.modules, mapping.__name__)
    with pytest.raises(ImportError, match=r'pip install -c constraints.txt -e "\.\[peers\]"'):
        importlib.import_module(mapping.__name__)


# ----------------------------------------------------------------------------- the findings, independently

def test_normalizing_flow_accumulates_a_float64_logdet_in_float32():
    """NormalizingFlow.inverse_and_log_det / forward_and_log_det start from torch.zeros(len(x))
    (float32) and add each layer's float64 log-det into it: the sum of the layers' own float64
    log-dets equals slogdet of the float64 autograd Jacobian to 1e-12, the model's total does not."""
    flow = _build("normflows:normalizing_flow", {"dim": 3, "hidden": 4})
    x = torch.as_tensor(np.random.default_rng(3).normal(size=(8, 3)))
    with torch.no_grad():
        z, total = flow.inverse_and_log_det(x)
        layers, h = torch.zeros(len(x), dtype=torch.float64), x
        for layer in reversed(flow.flows):
            h, ld = layer.inverse(h)
            layers += ld
    exact = torch.linalg.slogdet(_jacobian(lambda v: flow.inverse_and_log_det(v)[0], x))[1]
    assert total.dtype == torch.float32 and z.dtype == torch.float64
    assert float((layers - exact).abs().max()) < 1e-12
    assert float((total.double() - exact).abs().max()) > 1e-9
    assert flow.forward_and_log_det(z)[1].dtype == torch.float32


def test_residual_inverse_stops_at_the_square_root_of_its_tolerance():
    """iResBlock._inverse_fixed_point stops when (x_k − x_{k−1})² / (1e-5 + 1e-5·|y|) < 1, i.e. at a
    step of √(1e-5·(1 + |y|)) ≈ 1e-2 for |y| ≈ 10, not at 1e-5: the round trip misses x by far
    more than the tolerance, and 200 more steps of the same iteration reach x to 1e-12."""
    flow = _build("normflows:residual_exact", {"dim": 2, "hidden": [6], "lipschitz_const": 0.9})
    flow.eval()
    x = torch.as_tensor(10.0 * np.random.default_rng(4).normal(size=(16, 2)))
    with torch.no_grad():
        y = flow.inverse(x.clone())[0].detach()  # x + g(x); normflows sets requires_grad on its input
        x_hat = flow(y)[0].detach()            # normflows's fixed-point solve
        block = flow.iresblock
        refined = x_hat.clone()
        for _ in range(200):
            refined = y - block.nnet(refined)
    error = float((x_hat - x).abs().max())
    assert error > 1e-4, error
    assert float((refined - x).abs().max()) < 1e-12


def test_residual_accepts_a_noncontractive_coefficient_and_inverts_silently_wrong():
    """LipschitzMLP(lipschitz_const=10) builds without an error; with its layers at that norm the
    residual block's inverse returns an x with ‖x + g(x) − y‖ of order 1e5 and no error."""
    torch.manual_seed(0)
    net = nf.nets.LipschitzMLP([2, 8, 2], lipschitz_const=10.0, init_zeros=False)
    with torch.no_grad():
        for layer in net.net:
            if isinstance(layer, nf.nets.lipschitz.InducedNormLinear):
                layer.weight.mul_(50.0)
                layer.compute_weight(True, n_iterations=200)
    flow = nf.flows.Residual(net).double().eval()
    y = torch.as_tensor(3.0 * np.random.default_rng(1).normal(size=(200, 2)))
    with torch.no_grad():
        x = flow(y)[0]
        backward_error = (flow.inverse(x)[0] - y).norm(dim=1).max()
    assert float(backward_error) > 1.0


def test_lipschitz_layer_divides_a_float64_weight_by_a_float32_factor():
    """InducedNormLinear normalises by torch.max(torch.ones(1), σ/coeff): the 1-d float32 tensor
    wins type promotion over the 0-d float64 quotient, so a float64 layer's weight is divided by
    σ/coeff rounded to float32 (the map then moves in steps as the weight does, and its
    finite-difference parameter gradient is not smooth)."""
    flow = _build("normflows:residual", mapping.RESIDUAL_CONFIGS[1])
    layer = flow.iresblock.nnet.net[1]
    weight = layer.weight.detach()
    with torch.no_grad():
        sigma = torch.dot(layer.u, torch.mv(weight, layer.v))
        applied = layer.compute_weight(update=False)
    assert float(sigma / layer.coeff) > 1.0
    factor32 = (sigma / layer.coeff).float().double()
    assert torch.equal(applied, weight / factor32)
    assert float((applied - weight * layer.coeff / sigma).abs().max()) > 1e-12


def test_planar_logdet_gradient_is_nan_in_float32_beyond_cosh_overflow():
    """Planar's log-det uses h'(a) = 1/cosh(a)²; in float32 cosh overflows for |a| > 89, and the
    gradient of the log-det is inf/inf = NaN there (float64, the same module: finite)."""
    flow = _build("planar", {"shape": [3]}, dtype="float32")
    w = flow.w.detach()[0]
    x = (120.0 * w / (w @ w))[None].clone().requires_grad_(True)  # wᵀx = 120
    logdet = flow(x)[1].sum()
    assert torch.isnan(torch.autograd.grad(logdet, x)[0]).all()
    x64 = x.detach().double().requires_grad_(True)
    assert torch.isfinite(torch.autograd.grad(flow.double()(x64)[1].sum(), x64)[0]).all()


def test_planar_leaky_relu_uses_a_float32_slope_in_float64():
    """Planar(act="leaky_relu") builds its slope factor as (lin < 0)·(0.2 − 1) + 1, a bool tensor
    times Python floats: float32 (0.19999999) in a float64 module. The forward's log-det then
    differs from slogdet of the float64 autograd Jacobian of its own map by ~1e-8, and the inverse
    (which uses the rounded slope) round-trips to ~1e-8 instead of 1e-15."""
    flow = _build("normflows:planar_leaky_relu", {"dim": 3})
    x = torch.as_tensor(10.0 * np.random.default_rng(7).normal(size=(6, 3)))
    with torch.no_grad():
        z = flow.inverse(x)[0]
        x_back, logdet = flow(z)
    exact = torch.linalg.slogdet(_jacobian(lambda v: flow(v)[0], z))[1]
    lin = (flow.w * z).sum(1) + flow.b
    assert ((lin < 0) * (flow.h.negative_slope - 1.0) + 1.0).dtype == torch.float32
    assert float((logdet - exact).abs().max()) > 1e-10
    assert float((x_back - x).abs().max()) > 1e-11


def test_masked_affine_turns_a_kept_entry_into_nan_when_its_unused_scale_overflows():
    """MaskedAffineFlow.inverse computes b⊙x + (1 − b)⊙(x − t)·exp(−s) on every entry: where the
    scale net's (discarded) output s at a kept position is below −88.7, exp(−s) is inf in float32
    and 0·inf makes the kept entry NaN, though its value is x itself (float64: x exactly)."""
    config = {"dim": 5, "hidden": 6, "parity": 0}
    flow = _build("normflows:masked_affine", config, dtype="float32", seed=3)
    kept = flow.b[0].bool()
    for trial in range(200):
        x = torch.as_tensor(200.0 * np.random.default_rng(trial).normal(size=(1, 5)), dtype=torch.float32)
        with torch.no_grad():
            scale = flow.s(flow.b * x)
            if bool((scale[0, kept] < -89.0).any()):
                break
    else:
        pytest.fail("no input drove a kept position's scale below -89")
    with torch.no_grad():
        z = flow.inverse(x)[0]
        z64 = flow.double().inverse(x.double())[0]
    overflowing = kept & (scale[0] < -89.0)
    assert torch.isnan(z[0, overflowing]).all()
    assert torch.equal(z64[0, kept], x.double()[0, kept])


def test_residual_training_logdet_is_the_declared_gradient_surrogate():
    """The declared convention training_logdet_surrogate holds for normflows:residual with
    reduce_memory: in training mode the returned value averages to the Neumann surrogate
    tr((I + J)⁻¹J), not to log|det(I + J)|; in evaluation mode it is the log-det itself."""
    flow = _build("normflows:residual", mapping.RESIDUAL_CONFIGS[0])
    x = torch.as_tensor(np.random.default_rng(0).normal(size=(1, 2)))
    jac = torch.autograd.functional.jacobian(lambda v: flow.iresblock.nnet(v[None])[0], x[0])
    eye = torch.eye(2, dtype=torch.float64)
    exact = float(torch.linalg.slogdet(eye + jac)[1])
    surrogate = float(torch.trace(torch.linalg.solve(eye + jac, jac)))
    flow.train()
    saved = np.random.get_state()  # normflows draws the roulette's N from NumPy's global generator
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            np.random.seed(0)
            values = torch.cat([flow.inverse(x.repeat(2000, 1))[1].detach() for _ in range(40)])
    finally:
        np.random.set_state(saved)
    mean, error = float(values.mean()), float(values.std()) / len(values) ** 0.5
    assert abs(mean - surrogate) < 4 * error < abs(mean - exact)
    flow.eval()
    assert abs(float(flow.inverse(x.clone())[1].detach()) - exact) < 1e-12


@pytest.mark.parametrize("kind, config, event", [
    ("normflows:spline_coupling", {"dim": 2, "hidden": 4, "blocks": 1, "bins": 4, "tail_bound": 3.0,
                                   "reverse_mask": False}, (2,)),
    ("normflows:glow_block", {"shape": [3, 2, 2], "hidden": 3, "scale_map": "exp", "split_mode": "checkerboard",
                              "use_lu": False}, (3, 2, 2)),
])
def test_an_empty_batch_crashes_the_spline_coupling_and_the_checkerboard_glow_block(kind, config, event):
    """A batch of 0 samples: CoupledRationalQuadraticSpline and GlowBlock's checkerboard Split
    reshape to (0, n, -1), which torch refuses as ambiguous, in both directions (MAF, for one,
    returns empty results of the right shapes)."""
    flow = _build(kind, config)
    empty = torch.zeros((0,) + event, dtype=torch.float64)
    for call in (flow.inverse, flow):
        with pytest.raises(RuntimeError, match="cannot reshape tensor of 0 elements"):
            call(empty)
    maf = _build("normflows:maf", {"dim": 2, "hidden": 4, "blocks": 1, "residual_blocks": True,
                                   "activation": "relu"})
    z, logdet = maf.inverse(torch.zeros(0, 2, dtype=torch.float64))
    assert tuple(z.shape) == (0, 2) and tuple(logdet.shape) == (0,)


def _actnorm_initialised_on(x: torch.Tensor):
    flow = ADAPTER.fresh("actnorm", {"shape": [x.shape[1]]}, 0, "float64", "cpu")
    ADAPTER.call_hook(flow, "initialize", x.numpy())
    return flow


def test_actnorm_init_divides_by_the_unbiased_std_plus_1e6():
    """normflows's ActNorm initialises on its first normalizing call with s = log(std + 1e-6),
    std the unbiased (n − 1) one: z = (x − mean)/(std_{n−1} + 1e-6) exactly, whose per-channel
    variance with divisor n is (n − 1)/n (1/3 off for n = 3), and not (x − mean)/std_{n−1}."""
    x = torch.as_tensor(np.random.default_rng(5).normal(0.0, 0.01, size=(3, 4)))
    z = torch.as_tensor(ADAPTER.forward(_actnorm_initialised_on(x), x.numpy())[0])
    centred = x - x.mean(0)
    std = x.std(0)  # unbiased
    assert float((z - centred / (std + 1e-6)).abs().max()) < 1e-12
    assert float((z - centred / std).abs().max() / z.abs().max()) > 1e-5
    np.testing.assert_allclose(z.var(0, unbiased=False).numpy(), 2.0 / 3.0, rtol=1e-3)


def test_actnorm_init_scales_a_constant_channel_by_1e6():
    """A channel constant over the batch has std 0: normflows's ActNorm divides it by 1e-6, adding
    log(1e6) ≈ 13.8 to log|det| (flowspec's rule only centres it, log-scale 0)."""
    x = torch.as_tensor(np.random.default_rng(6).normal(size=(3, 2)))
    x[:, 0] = 0.7
    flow = _actnorm_initialised_on(x)
    logdet = ADAPTER.forward(flow, x.numpy())[1]
    expected = -np.log(float(x[:, 1].std()) + 1e-6) + np.log(1e6)
    np.testing.assert_allclose(logdet, expected, rtol=1e-9)


def test_actnorm_initialises_from_an_empty_first_batch_into_nan() -> None:
    """A fresh ActNorm's first training forward on a (0, D) batch takes the statistics of no data
    (NaN), marks itself initialised, and every later output is NaN (the module alone, float64)."""
    flow = nf.flows.ActNorm((3,)).double()
    flow.train()
    z, _ = flow(torch.zeros(0, 3, dtype=torch.float64))
    assert z.shape == (0, 3) and bool(flow.data_dep_init_done)
    assert bool(torch.isnan(flow.s).all()) and bool(torch.isnan(flow.t).all())
    assert bool(torch.isnan(flow(torch.randn(2, 3, dtype=torch.float64))[0]).all())
