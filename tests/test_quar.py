"""QuAR blocks and models beyond the conformance suite: configuration errors, masks and order, what
the two norm options guarantee, when the power iteration runs, both inverses, make_model and
plain_forward."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from flowspec import reference
from flowspec.accelerated import from_spec
from flowspec.accelerated.quar import QuARConv, QuARMLP, group_mask, kernel_mask, make_model, plain_forward
from flowspec.accelerated.sequential import Sequential
from flowspec.conformance.seeding import rng
from flowspec.conformance.tolerances import assert_close, tolerance
from flowspec.errors import ConfigError, ConvergenceError
from flowspec.reference import quar as rq
from flowspec.spec import FlowSpec

MLP = {"dim": 5, "hidden_factors": [2, 3], "activation": "elu", "sigma": 0.9, "norm": "full"}
CONV = {"shape": [2, 3, 4], "hidden_factors": [2, 2], "kernels": [3, 1, 3], "activation": "elu", "sigma": 0.9,
        "norm": "full"}


def _spec(kind: str, config: dict, key: str):
    return reference.init_spec(kind, config, rng("test_quar", key))


def _slack(layers: int, dtype: str = "float64") -> float:
    return (1.0 + tolerance("norm_bound", dtype, 1)) ** layers - 1.0


# ----------------------------------------------------------------------------- configuration

@pytest.mark.parametrize("kwargs, needle", [
    ({"dim": 0, "hidden_factors": [2]}, "dim"),
    ({"dim": True, "hidden_factors": [2]}, "dim"),
    ({"dim": 3, "hidden_factors": []}, "hidden_factors"),
    ({"dim": 3, "hidden_factors": [0]}, "hidden_factors"),
    ({"dim": 3, "hidden_factors": [2], "sigma": 1.0}, "sigma"),
    ({"dim": 3, "hidden_factors": [2], "sigma": 0.0}, "sigma"),
    ({"dim": 3, "hidden_factors": [2], "norm": "spectral"}, "norm"),
    ({"dim": 3, "hidden_factors": [2], "activation": "tanh"}, "activation"),
    ({"dim": 3, "hidden_factors": [2], "inverse": "newton"}, "inverse"),
    ({"dim": 3, "hidden_factors": [2], "recompute": 1}, "recompute"),
])
def test_mlp_rejects_bad_configs(kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        QuARMLP(**kwargs)
    with pytest.raises(ConfigError, match=needle):
        reference.init_spec("quar_mlp", kwargs, rng("test_quar", "bad"))


@pytest.mark.parametrize("kwargs, needle", [
    ({"shape": [3, 4], "hidden_factors": [2, 2]}, "shape"),
    ({"shape": [3, 4, 4], "hidden_factors": [2, 2], "kernels": [3, 2, 3]}, "odd"),
    ({"shape": [3, 4, 4], "hidden_factors": [2], "kernels": [3, 1, 3]}, "hidden_factors"),
])
def test_conv_rejects_bad_configs(kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        QuARConv(**kwargs)
    with pytest.raises(ConfigError, match=needle):
        reference.init_spec("quar_conv", kwargs, rng("test_quar", "bad"))


# ----------------------------------------------------------------------------- masks and order

@pytest.mark.parametrize("groups, k_out, k_in", [(1, 1, 1), (4, 1, 3), (3, 2, 2), (5, 3, 1)])
def test_masks_are_the_reference_masks_and_keep_the_diagonal(groups: int, k_out: int, k_in: int) -> None:
    mask = group_mask(groups, k_out, k_in).numpy()
    np.testing.assert_array_equal(mask, rq.group_mask(groups, k_out, k_in))
    np.testing.assert_array_equal(kernel_mask(groups, k_out, k_in, 3).numpy(), rq.kernel_mask(groups, k_out, k_in, 3))
    g_out, g_in = np.arange(k_out * groups) % groups, np.arange(k_in * groups) % groups
    assert mask[g_out[:, None] == g_in[None, :]].all(), "the quasi-autoregressive rule keeps every diagonal block"
    assert not mask[g_out[:, None] < g_in[None, :]].any(), "no unit reads a later group"


def test_conv_order_is_raster_then_channel() -> None:
    flow = QuARConv((2, 2, 3), [1, 1])
    order = flow.autoregressive_order().numpy()
    np.testing.assert_array_equal(order, rq.order({"shape": [2, 2, 3]}))
    c, r, s = np.unravel_index(order, (2, 2, 3))
    assert list(zip(r, s, c))[:4] == [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1)]
    assert list(zip(r, s, c)) == sorted(zip(r, s, c))


def test_jacobian_is_lower_triangular_with_a_nonzero_diagonal() -> None:
    for kind, config in (("quar_mlp", MLP), ("quar_conv", CONV)):
        spec = _spec(kind, config, "triangular")
        x = rng("test_quar", "x").standard_normal((1,) + rq.event_shape(config))
        jac = from_spec(spec).jacobian(torch.tensor(x))[0].numpy()
        perm = rq.order(config)
        in_order = jac[np.ix_(perm, perm)]
        assert np.array_equal(np.triu(in_order, 1), np.zeros_like(in_order))
        assert np.abs(np.diag(in_order) - 1.0).min() > 0.0


# ----------------------------------------------------------------------------- norm options

def test_block_triangular_norm_is_not_the_block_diagonal_norm() -> None:
    """App. C's claim, refuted on its own example: ‖[[2, 3], [0, 1]]‖₂ ≈ 3.70, the diagonal gives 2."""
    weight = np.array([[2.0, 0.0], [3.0, 1.0]])  # lower triangular in this project's order
    full = float(np.linalg.norm(weight, 2))
    blocks = np.asarray(rq.diagonal_blocks(weight, 2, 1, 1))
    assert_close(full, math.sqrt(7.0 + 3.0 * math.sqrt(5.0)), "forward", "float64", 4)  # ≈ 3.7025
    assert float(np.max(np.abs(blocks))) == 2.0


def test_option_b_bounds_the_diagonal_but_not_the_lipschitz_constant() -> None:
    spec = rq.triangular_linear_spec(30, 0.9, rng("test_quar", "option-b"))
    x = rng("test_quar", "option-b-x").standard_normal((2, 30))
    assert rq.lipschitz_bound(spec) == pytest.approx(0.9)
    assert np.abs(rq.residual_diagonal(spec, x)).max() <= 0.9 * (1 + tolerance("diag", "float64", 30))
    assert rq.residual_spectral_norm(spec, x).min() > 5.0
    assert reference.log_abs_det(spec, x).min() >= 30 * math.log(1 - 0.9)


def test_option_a_bounds_lipschitz_and_the_condition_number() -> None:
    for kind, config in (("quar_mlp", MLP), ("quar_conv", CONV)):
        spec = _spec(kind, config, "option-a")
        flow = from_spec(spec)
        sigma = config["sigma"] * (1 + _slack(3))
        x = 3.0 * rng("test_quar", "option-a-x").standard_normal((3,) + rq.event_shape(config))
        for jac in flow.jacobian(torch.tensor(x)).numpy():
            singular = np.linalg.svd(jac, compute_uv=False)
            assert np.linalg.norm(jac - np.eye(len(jac)), 2) <= sigma
            assert singular[0] / singular[-1] <= (1 + sigma) / (1 - sigma)


def test_option_b_log_det_is_bounded_below() -> None:
    config = {**MLP, "norm": "diagonal", "sigma": 0.97}
    flow = from_spec(_spec("quar_mlp", config, "option-b-logdet"))
    x = torch.tensor(100.0 * rng("test_quar", "big").standard_normal((16, 5)))
    with torch.no_grad():
        logdet = flow(x)[1]
    assert float(logdet.min()) >= 5 * math.log(1 - 0.97 * (1 + _slack(3)))


# ----------------------------------------------------------------------------- power iteration

def test_loading_a_spec_keeps_its_power_iteration_vectors() -> None:
    spec = _spec("quar_mlp", MLP, "load")
    flow = from_spec(spec)
    assert not flow.is_stale()
    assert_close(flow.power_iteration_state().numpy(), rq.estimated_layer_norms(spec), "forward", "float64", 5)
    flow.to(torch.float32)
    assert not flow.is_stale(), "a dtype conversion is not a weight update"


@pytest.mark.parametrize("kind, config", [("quar_mlp", MLP), ("quar_conv", CONV),
                                          ("quar_mlp", {**MLP, "norm": "diagonal"})])
def test_training_keeps_theta_non_negative_and_the_bound(kind: str, config: dict) -> None:
    """Adam steps that maximise log|det| (which pushes θ down) and move the weights: every forward
    sees fresh estimates, θ ≥ 0, and the certified bound σ(1 + tol) holds after each step."""
    torch.manual_seed(0)
    flow = from_spec(_spec(kind, config, "train"))
    optimizer = torch.optim.Adam(flow.parameters(), lr=0.05)
    x = torch.tensor(rng("test_quar", "train-x").standard_normal((8,) + rq.event_shape(config)))
    for _ in range(15):
        optimizer.zero_grad()
        (-flow(x)[1].sum()).backward()
        optimizer.step()
        assert flow.is_stale()
        with torch.no_grad():
            flow(x)
        assert not flow.is_stale()
        assert float(flow.theta().detach().min()) >= 0.0
        spec = flow.to_spec()
        exact = rq.exact_layer_norms(spec)
        for estimate, norm in zip(flow.power_iteration_state().numpy(), exact):  # each gap relative to its norm
            assert_close(estimate / norm, 1.0, "norm_bound", "float64", 1)
        bound = float(flow.lipschitz_scale().max()) * float(np.prod(exact))
        assert bound <= config["sigma"] * (1 + _slack(len(exact)))


def test_evaluation_after_a_weight_update_refreshes() -> None:
    flow = from_spec(_spec("quar_mlp", MLP, "eval")).eval()
    flow.assign_parameters(weight_1=2.0 * flow.weight_1.detach())
    assert flow.is_stale()
    with torch.no_grad():
        flow(torch.zeros(1, 5, dtype=torch.float64))
    for estimate, norm in zip(flow.power_iteration_state().numpy(), rq.exact_layer_norms(flow.to_spec())):
        assert_close(estimate / norm, 1.0, "norm_bound", "float64", 1)  # each gap relative to its norm


def test_a_capped_power_iteration_warns_and_reports() -> None:
    flow = QuARMLP(6, [3]).double()
    flow.exact_max_dim = 0  # the iterative path of large layers
    flow.pi_max_iter = flow.krylov_steps = 2
    flow.assign_parameters(weight_0=torch.randn(18, 6, dtype=torch.float64))
    with pytest.warns(RuntimeWarning, match="cap"):
        flow.refresh_norms()
    assert any(report.hit_cap for report in flow.last_power_iteration)
    assert all(report.method == "probe" for report in flow.last_power_iteration)


def _swap_top_pair(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``weight`` (a two-path matrix on ``mask``) with its two large entries exchanged, the smaller
    raised by 0.5 %: the top singular pair swaps, the old top vectors stay singular vectors."""
    w = weight.clone() * mask
    flat = w.abs().flatten().argsort(descending=True)
    first, second = flat[0], flat[1]
    a, b = w.flatten()[first].clone(), w.flatten()[second].clone()
    w.view(-1)[first], w.view(-1)[second] = b, a * 1.005
    return w


@pytest.mark.parametrize("norm", ["full", "diagonal"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_estimates_follow_a_swapped_top_pair(norm: str, dtype: torch.dtype) -> None:
    """The warm-start trap: σ₂/σ₁ = 0.995, the estimates settled, then the top pair swaps in place. A
    warm start cannot see it (the old vector is a singular vector of the second pair); the exact
    path's certificate fails and the eigendecomposition finds the new top: the gap stays within the
    report's deterministic tolerance."""
    flow = QuARMLP(4, [2], norm=norm).to(dtype)
    gen = rng("test_quar", "swap", norm)
    with torch.no_grad():
        for i, mask in enumerate((flow._mask_0, flow._mask_1)):
            w = torch.zeros_like(mask)
            allowed = torch.nonzero(mask * (torch.kron(torch.ones(2, 1 if i == 0 else 2), torch.eye(4))[:mask.shape[0], :mask.shape[1]]
                                            if norm == "diagonal" else mask))
            rows_used, cols_used, placed = set(), set(), 0
            for r, c in allowed[torch.as_tensor(gen.permutation(len(allowed)))].tolist():
                if r not in rows_used and c not in cols_used and placed < 2:
                    w[r, c] = 1.0 if placed == 0 else 0.995
                    rows_used.add(r), cols_used.add(c)
                    placed += 1
            getattr(flow, f"weight_{i}").copy_(w + 1e-4 * torch.randn_like(w) * mask)
    flow.refresh_norms()
    swapped = {f"weight_{i}": _swap_top_pair(getattr(flow, f"weight_{i}").detach(), getattr(flow, f"_mask_{i}"))
               for i in range(2)}
    flow.assign_parameters(**swapped)
    with torch.no_grad():
        flow(torch.zeros(1, 4, dtype=dtype))
    exact = rq.exact_layer_norms(flow.to_spec())
    for estimate, norm_value, report in zip(flow.power_iteration_state().double().numpy(), exact,
                                            flow.last_power_iteration):
        assert report.failure_probability == 0.0 and report.method in ("exact", "certified")
        assert report.tolerance <= tolerance("norm_bound", str(dtype).removeprefix("torch."), 1)  # the suite's cap
        assert 1.0 - estimate / norm_value <= report.tolerance
        assert estimate / norm_value - 1.0 <= report.tolerance


@pytest.mark.parametrize("kind, config", [("quar_mlp", MLP), ("quar_conv", CONV),
                                          ("quar_mlp", {**MLP, "norm": "diagonal"})])
def test_a_checkpoint_reloads_exactly(kind: str, config: dict) -> None:
    """The estimates are part of the state: a checkpoint of trained weights loaded into a fresh module
    gives bit-identical log-densities without re-estimating; one saved after an optimiser step and
    before any evaluation (its vectors describe the weights before the step) is re-estimated."""
    torch.manual_seed(1)
    flow = from_spec(_spec(kind, config, "reload")).float()
    optimizer = torch.optim.Adam(flow.parameters(), lr=0.02)
    x = torch.tensor(rng("test_quar", "reload-x").standard_normal((4,) + rq.event_shape(config)), dtype=torch.float32)
    for _ in range(3):
        optimizer.zero_grad()
        (-flow(x)[1].sum()).backward()
        optimizer.step()
    with torch.no_grad():
        expected = flow(x)
    fresh = from_spec(_spec(kind, config, "other")).float()
    fresh.load_state_dict(flow.state_dict())
    assert not fresh.is_stale()
    with torch.no_grad():
        got = fresh(x)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    optimizer.zero_grad()
    (-flow(x)[1].sum()).backward()
    optimizer.step()  # the stored vectors now describe the weights before this step
    target = from_spec(_spec(kind, config, "target")).float()
    target.load_state_dict(flow.state_dict())
    assert target.is_stale()
    with torch.no_grad():
        target(x)
    for estimate, norm in zip(target.power_iteration_state().double().numpy(), rq.exact_layer_norms(target.to_spec())):
        assert_close(estimate / norm, 1.0, "norm_bound", "float32", 1)


@pytest.mark.parametrize("kind, config", [("quar_mlp", MLP), ("quar_conv", CONV),
                                          ("quar_conv", {**CONV, "norm": "diagonal"})])
def test_recompute_keeps_values_and_gradients_and_saves_less(kind: str, config: dict) -> None:
    """``recompute=True`` (the block run again in backward): the same z, log-det and gradients w.r.t.
    the parameters and the input as the plain forward, bit for bit, in training steps that move the
    weights (each step's norms estimated once, before its forward), with less saved for backward."""
    from flowspec.accelerated import memory

    spec = _spec(kind, config, "recompute")
    plain, again = from_spec(spec), from_spec(spec)
    again.recompute = True
    x = torch.as_tensor(rng("test_quar", "recompute-x").standard_normal((3,) + rq.event_shape(config)))
    optimizers = [torch.optim.Adam(f.parameters(), lr=0.05) for f in (plain, again)]
    for _ in range(3):
        grads = []
        for flow, optimizer in zip((plain, again), optimizers):
            flow.train()
            optimizer.zero_grad()
            x_leaf = x.clone().requires_grad_(True)
            z, logdet = flow(x_leaf)
            loss = (z ** 2).sum() - (logdet * torch.tensor([1.0, -2.0, 0.5], dtype=x.dtype)).sum()
            grads.append([t.detach().clone() for t in torch.autograd.grad(loss, [x_leaf, *flow.parameters()])]
                         + [z.detach(), logdet.detach()])
            for p, g in zip(flow.parameters(), grads[-1][1:]):
                p.grad = g.clone()
            optimizer.step()
        for a, b in zip(*grads):
            assert torch.equal(a, b)
    saved = [memory.saved_tensor_bytes(lambda: f(x.clone().requires_grad_(True))[1].sum().backward()) for f in (plain, again)]
    assert saved[1] < saved[0]


# ----------------------------------------------------------------------------- inverses

def test_fixed_point_inverse_reports_its_residual_under_option_b() -> None:
    spec = rq.triangular_linear_spec(30, 0.9, rng("test_quar", "fixed-point"))
    flow = from_spec(spec)
    y = torch.tensor(reference.forward(spec, rng("test_quar", "fp-x").standard_normal((2, 30))))
    with pytest.raises(ConvergenceError) as info:
        flow.fixed_point_inverse(y, max_iter=400)  # the transient peaks near iteration 300
    assert info.value.iterations == 400 and info.value.residual > 1.0


def test_fixed_point_overflows_in_float32_at_dimension_60_and_says_so() -> None:
    spec = rq.triangular_linear_spec(60, 0.9, rng("test_quar", "overflow"))
    flow = from_spec(spec, dtype=torch.float32)
    x = rng("test_quar", "overflow-x").standard_normal((2, 60))
    y = torch.tensor(reference.forward(spec, x), dtype=torch.float32)
    with pytest.raises(ConvergenceError, match="non-finite") as info:
        flow.fixed_point_inverse(y)
    assert math.isinf(info.value.residual)
    x_hat = flow.coordinatewise_inverse(y).double().numpy()
    assert_close(reference.forward(spec, x_hat), y.double().numpy(), "roundtrip", "float32", 60)


def test_coordinatewise_inverse_cost() -> None:
    """Documented cost: weakly coupled coordinates converge together, never more than about two
    evaluations per coordinate here."""
    config = {"dim": 16, "hidden_factors": [3, 3], "activation": "elu", "sigma": 0.97, "norm": "diagonal"}
    spec = _spec("quar_mlp", config, "cost")
    flow = from_spec(spec)
    calls = []
    network = flow._network
    flow._network = lambda *args: calls.append(1) or network(*args)
    x = rng("test_quar", "cost-x").standard_normal((4, 16))
    y = reference.forward(spec, x)
    x_hat = flow.coordinatewise_inverse(torch.tensor(y)).numpy()
    assert_close(x_hat, x, "inverse", "float64", 16)
    assert len(calls) <= 2 * 16 + 2


def test_inverse_default_follows_the_norm_option() -> None:
    assert QuARMLP(3, [2]).inverse_method == "fixed_point"
    assert QuARMLP(3, [2], norm="diagonal").inverse_method == "coordinatewise"
    assert QuARMLP(3, [2], norm="diagonal", inverse="fixed_point").config()["inverse"] == "fixed_point"


def test_default_inverse_hands_over_when_the_fixed_point_stalls() -> None:
    """A linear 1-D block with F′ = −0.99 in float32: the fixed point contracts at 0.99 but its residual
    floor (rounding of x ≈ 100·y) lies above its tolerance of 32ε, so it stalls and raises; the
    configured inverse then hands over to the coordinate-wise one, which is right to the map's
    conditioning (100)."""
    config = {"dim": 1, "hidden_factors": [1], "activation": "identity", "sigma": 0.999, "norm": "full"}
    theta = 0.999 / 0.99 - 1.0  # F′ = −σ/(θ + 1) = −0.99
    params = {"weight_0": np.ones((1, 1)), "bias_0": np.zeros(1), "weight_1": -np.ones((1, 1)), "bias_1": np.zeros(1),
              "u_0": np.ones(1), "v_0": np.ones(1), "u_1": -np.ones(1), "v_1": np.ones(1),
              "rho": np.array([np.log(np.expm1(theta))])}
    spec = FlowSpec("quar_mlp", config, params)
    flow = from_spec(spec).float()
    y = torch.tensor(rng("test_quar", "stall-y").standard_normal((4, 1)) * 3.0, dtype=torch.float32)
    with pytest.raises(ConvergenceError, match="stalled") as info:
        flow.fixed_point_inverse(y)
    assert info.value.residual > info.value.tolerance
    exact = reference.inverse(spec, y.double().numpy())
    with torch.no_grad():
        x = flow.inverse(y).double().numpy()
    assert np.max(np.abs(x - exact)) <= 1024 * 100 * torch.finfo(torch.float32).eps * np.max(np.abs(exact))


@pytest.mark.parametrize("kind, config", [("quar_mlp", MLP), ("quar_mlp", {**MLP, "norm": "diagonal"}),
                                          ("quar_conv", CONV)])
def test_gradients_through_the_inverse_are_implicit(kind: str, config: dict) -> None:
    """rsample is differentiable: the gradient of Σ w·f⁻¹(y) w.r.t. y is (I + J_F)⁻ᵀw at x = f⁻¹(y)
    (autograd of the forward's Jacobian), and w.r.t. a weight entry it matches central differences."""
    flow = from_spec(_spec(kind, config, "implicit"))
    gen = rng("test_quar", "implicit-y")
    y = torch.tensor(gen.standard_normal((2,) + rq.event_shape(config)), requires_grad=True)
    w = torch.tensor(gen.standard_normal(y.shape))
    x = flow.inverse(y)
    grad_y, grad_w = torch.autograd.grad((w * x).sum(), [y, flow.weight_1])
    size = math.prod(rq.event_shape(config))
    for b in range(2):
        jac = torch.eye(size, dtype=torch.float64) + torch.tensor(rq.residual_jacobian(flow.to_spec(), x[b].detach().numpy()))
        expected = torch.linalg.solve(jac.T, w[b].reshape(-1))
        assert_close(grad_y[b].reshape(-1).numpy(), expected.numpy(), "inverse", "float64", size)
    index = tuple(torch.nonzero(flow._mask_1)[0].tolist())
    original, h, values = flow.weight_1.detach().clone(), 1e-6, []
    for sign in (1.0, -1.0):
        moved = original.clone()
        moved[index] += sign * h
        flow.assign_parameters(weight_1=moved)
        with torch.no_grad():
            values.append(float((w * flow.inverse(y.detach())).sum()))
    flow.assign_parameters(weight_1=original)
    fd = (values[0] - values[1]) / (2 * h)
    assert abs(float(grad_w[index]) - fd) <= 1e-6 * max(1.0, abs(fd))


# ----------------------------------------------------------------------------- models

def _round_trip(model, x: torch.Tensor) -> None:
    model.train()
    with torch.no_grad():
        model(x)  # initialises ActNorm
    model.eval()
    size = math.prod(x.shape[1:])
    with torch.no_grad():
        z, logdet = model(x)
        np.testing.assert_array_equal(plain_forward(model, x).numpy(), z.numpy())
        np.testing.assert_array_equal(model(x)[1].numpy(), logdet.numpy())  # plain_forward left no trace
        assert_close(model.inverse(z).numpy(), x.numpy(), "roundtrip", "float64", size)
    assert_close(logdet.numpy(), reference.log_abs_det(model.to_spec(), x.numpy()), "logdet", "float64", size)


def test_make_model_mlp() -> None:
    torch.manual_seed(1)
    model = make_model("mlp", (4,), n_blocks=2, hidden_factor=2, norm="diagonal").double()
    assert isinstance(model, Sequential) and len(model.flows) == 5
    assert sum(isinstance(f, QuARMLP) for f in model.flows) == 2
    _round_trip(model, torch.randn(6, 4, dtype=torch.float64))


def test_make_model_conv_has_the_residual_models_architecture() -> None:
    torch.manual_seed(2)
    model = make_model("conv", (1, 4, 4), n_blocks=1, hidden_factor=2).double()
    kinds = [f.kind for f in model.flows]
    assert kinds == ["logit", "actnorm", "quar_conv", "actnorm", "squeeze", "actnorm", "quar_conv", "actnorm"]
    assert model.flows[6].event_shape == (4, 2, 2)
    _round_trip(model, torch.rand(3, 1, 4, 4, dtype=torch.float64) * 0.9 + 0.05)


@pytest.mark.parametrize("args, kwargs, needle", [
    (("rnn", (4,)), {}, "arch"),
    (("mlp", (4,)), {"n_blocks": 0}, "n_blocks"),
    (("mlp", (4,)), {"width": 3}, "width"),
    (("mlp", (2, 2, 2)), {}, "event shape"),
    (("mlp", (4,)), {"n_scales": 2}, "single scale"),
    (("conv", (3, 6, 6)), {"n_scales": 3}, "even"),
])
def test_make_model_rejects_bad_options(args: tuple, kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        make_model(*args, **kwargs)


def test_plain_forward_resets_the_flag_after_an_error() -> None:
    block = QuARMLP(3, [2])
    with pytest.raises(Exception):
        plain_forward(block, torch.zeros(2, 4))
    assert not block._plain
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert float(block(torch.ones(2, 3))[1].detach().abs().sum()) > 0.0
