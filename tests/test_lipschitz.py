"""Lipschitz-constrained layers and activations: documented behaviours the property suite does not reach."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import binom

from flowspec.accelerated.lipschitz import (
    ACTIVATIONS, PROBE_FAILURE, LipSwish, LipschitzConv2d, LipschitzLinear, LipschitzNormalizer, closed_form_norm,
    conv_norm_bound, conv_operator_matrix, general_power_method, norm_reports, refresh_norms,
)
from flowspec.accelerated.power_iteration import (
    PROBE_STEPS, certified_gap, exact_tolerance, exact_top_pair, probe, probe_failure_probability, probe_tolerance,
)
from flowspec.conformance.lipschitz import Claim, NormLedger, claims, exceedance_limit
from flowspec.conformance.property import PropertyFailure
from flowspec.conformance.seeding import rng
from flowspec.conformance.stats import per_example_alpha
from flowspec.conformance.tolerances import assert_close, tolerance
from flowspec.errors import ConfigError
from flowspec.reference import lipschitz as ref
from flowspec.reference.norms import conv_matrix, conv_operator_norm, induced_norm, induced_norm_bracket, spectral_norm

INF = math.inf


def _seed(key: str) -> None:
    torch.manual_seed(rng("lipschitz-test", key).integers(2**31))


def _scaled(layer, factor: float):
    with torch.no_grad():
        layer.raw_weight.mul_(factor)
    return layer


# ----------------------------------------------------------------------------- activations

@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_matches_reference_and_its_derivative(name: str) -> None:
    z = torch.linspace(-8.0, 8.0, 401, dtype=torch.float64, requires_grad=True)
    act = ACTIVATIONS[name]().double()
    beta = act.beta.detach().numpy() if isinstance(act, LipSwish) else None
    value = act(z)
    (autograd,) = torch.autograd.grad(value.sum(), z)
    # entrywise maps of scalar inputs: size 1; the derivative of an entrywise map is its Jacobian's diagonal
    assert_close(value.detach().numpy(), ref.activation(name, z.detach().numpy(), beta), "forward", "float64", 1)
    assert_close(act.derivative(z.detach()).detach().numpy(), autograd.numpy(), "diag", "float64", 1)
    assert_close(ref.activation_derivative(name, z.detach().numpy(), beta), autograd.numpy(), "diag", "float64", 1)


def test_lipswish_derivative_sup_is_below_one_for_every_beta() -> None:
    sup = ref.lipswish_derivative_sup()
    assert sup > 0.9998 and sup < 1.0  # 1.0998…/1.1: the 1/1.1 of eq. 10 is what brings it below one
    for beta_raw in (-6.0, -1.0, 0.0, 1.0, 6.0):
        beta = float(ref.softplus(beta_raw))
        u = np.linspace(-10.0, 10.0, 200001)
        largest = np.max(np.abs(ref.activation_derivative("lipswish", u / beta, np.array([beta_raw]))))
        assert largest - sup <= tolerance("diag", "float64", 1) * max(1.0, sup)


def test_unknown_activation_is_refused() -> None:
    with pytest.raises(ConfigError, match="relu"):
        ref.activation("relu", np.zeros(1))


# ----------------------------------------------------------------------------- norms

@pytest.mark.parametrize("p,q", [(1.0, 1.0), (1.0, 2.0), (1.0, INF), (2.0, INF), (INF, INF), (3.0, INF)])
def test_closed_forms_equal_the_reference(p: float, q: float) -> None:
    weight = rng("lipschitz-test", "closed", p, q).standard_normal((4, 6))
    got = float(closed_form_norm(torch.as_tensor(weight), p, q))
    assert_close(got, induced_norm(weight, p, q), "forward", "float64", weight.size)


def test_brackets_hold_the_norm_found_by_search() -> None:
    gen = rng("lipschitz-test", "bracket")
    weight = gen.standard_normal((3, 4))
    points = gen.standard_normal((100000, 4))
    for p, q in [(2.0, 1.0), (3.0, 1.5), (1.5, 3.0), (INF, 2.0)]:
        lower, upper = induced_norm_bracket(weight, p, q)
        search = np.max(np.linalg.norm(points @ weight.T, ord=q, axis=1) / np.linalg.norm(points, ord=p, axis=1))
        assert search - upper <= tolerance("forward", "float64", weight.size) * max(1.0, upper) and lower <= upper
        # the power method finds at least what random search finds
        assert search - lower <= tolerance("norm_bound", "float64", weight.size) * max(1.0, search)


def test_general_power_method_is_an_estimate_below_the_bracket() -> None:
    _seed("general")
    layer = _scaled(LipschitzLinear(5, 4, 0.9, in_order=3.0, out_order=1.5).double(), 10.0)
    weight = layer.effective_weight().detach().numpy()
    lower, upper = induced_norm_bracket(weight, 3.0, 1.5)
    assert not layer.normalizer.exact
    # the layer's estimate stops at its own rtol (default 1e-4), far above the table's norm_bound premise
    assert abs(lower - 0.9) <= layer.normalizer.rtol * 0.9 and upper >= lower


def test_linear_layer_is_normalised_softly() -> None:
    _seed("soft")
    layer = LipschitzLinear(6, 4, 0.9, rtol=1e-10).double()
    with torch.no_grad():
        layer.raw_weight.mul_(0.3 / spectral_norm(layer.raw_weight.numpy()))
    np.testing.assert_array_equal(layer.effective_weight().detach().numpy(), layer.raw_weight.detach().numpy())
    _scaled(layer, 10.0)
    assert_close(float(spectral_norm(layer.effective_weight().detach().numpy())), 0.9, "norm_bound", "float64",
                 layer.raw_weight.numel())


def test_conv_norm_is_the_operator_norm_at_the_input_size() -> None:
    _seed("conv")
    layer = _scaled(LipschitzConv2d(2, 3, 3, 0.9, rtol=1e-10, max_iter=20000).double(), 10.0)
    for size in [(2, 2), (6, 5), (3, 3)]:
        weight = layer.effective_weight(size).detach().numpy()
        assert_close(conv_operator_norm(weight, (2, *size)), 0.9, "norm_bound", "float64", weight.size)
    reshaped = spectral_norm(weight.reshape(3, -1))
    assert reshaped != pytest.approx(0.9, rel=1e-3)  # a different number


def test_conv_layer_forward_uses_the_input_size() -> None:
    layer = LipschitzConv2d(1, 2, 3, 0.5).double()
    layer(torch.zeros(1, 1, 4, 7, dtype=torch.float64))
    assert layer.normalizer._spatial == (4, 7)
    with pytest.raises(ConfigError, match="input size"):
        LipschitzConv2d(1, 2, 3, 0.5).normalizer.estimate(torch.zeros(2, 1, 3, 3))


def test_evaluation_never_uses_stale_vectors() -> None:
    _seed("stale")
    layer = _scaled(LipschitzLinear(5, 5, 0.9, rtol=1e-10).double(), 10.0).eval()
    layer.effective_weight()
    report = layer.normalizer.last_report
    layer.effective_weight()
    assert layer.normalizer.last_report is report  # unchanged weight: the estimate is reused
    layer.raw_weight.data.mul_(3.0)  # a write that bypasses the version counter
    weight = layer.effective_weight().detach().numpy()
    assert layer.normalizer.last_report is not report
    assert_close(float(spectral_norm(weight)), 0.9, "norm_bound", "float64", weight.size)


def test_hit_cap_is_recorded_and_refresh_reports() -> None:
    _seed("cap")
    layer = _scaled(LipschitzLinear(8, 8, 0.9, max_iter=1, rtol=1e-12, exact_max_dim=0).double(), 10.0)
    layer.effective_weight()
    assert layer.normalizer.hit_cap and layer.normalizer.last_report.method == "probe"
    model = torch.nn.Sequential(layer, LipschitzConv2d(2, 2, 3, 0.9).double())
    model[1](torch.zeros(1, 2, 3, 3, dtype=torch.float64))
    reports = refresh_norms(model)
    assert set(reports) == {"0.normalizer", "1.normalizer"}
    assert set(norm_reports(model)) == {"0.normalizer", "1.normalizer"}


def _near_degenerate(rows: int, cols: int, ratio: float, key: str) -> np.ndarray:
    """A matrix with σ₂/σ₁ = ``ratio`` and the rest of its spectrum in (0.2, 0.8)."""
    gen = rng("lipschitz-test", key)
    left = np.linalg.qr(gen.standard_normal((rows, rows)))[0]
    right = np.linalg.qr(gen.standard_normal((cols, cols)))[0]
    k = min(rows, cols)
    values = np.r_[1.0, ratio, np.sort(gen.uniform(0.2, 0.8, k - 2))[::-1]]
    return (left[:, :k] * values) @ right[:, :k].T


def _swapped(matrix: np.ndarray) -> np.ndarray:
    """The top pair's value moved to the second pair and the second raised 0.5 % above the first:
    the old top vectors become exact singular vectors of the second pair."""
    left, values, right = np.linalg.svd(matrix, full_matrices=False)
    values = values.copy()
    values[0], values[1] = values[1], values[0] * 1.005
    return (left * values) @ right


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(6, 9), (9, 6)])
def test_exact_path_follows_a_swapped_top_pair(dtype: torch.dtype, shape: tuple[int, int]) -> None:
    """σ₂/σ₁ = 0.999 and the estimate settled; then the top pair swaps in place. The old top vectors
    are now singular vectors of the second pair (a warm power iteration stays on them, its
    singular-pair residual small); the exact path finds the new top, within its deterministic
    tolerance, in training mode as in evaluation."""
    layer = LipschitzLinear(shape[1], shape[0], 0.9).to(dtype)
    weight = _near_degenerate(*shape, 0.999, f"swap{shape}")
    with torch.no_grad():
        layer.raw_weight.copy_(torch.as_tensor(2.0 * weight))
    layer.effective_weight()
    with torch.no_grad():
        layer.raw_weight.copy_(torch.as_tensor(2.0 * _swapped(weight)))
    applied = layer.effective_weight().detach().double().numpy()
    report = layer.normalizer.last_report
    assert report.method == "exact" and report.failure_probability == 0.0
    assert report.tolerance == exact_tolerance(*shape, dtype)
    assert float(spectral_norm(applied)) / 0.9 - 1.0 <= report.tolerance


def test_iterative_path_states_the_probe_guarantee() -> None:
    """Large operators (forced here: ``exact_max_dim=0``): the warm iteration stays on the old pair
    after a swap, the random-start probe finds the new top; the report states the
    Kuczyński–Woźniakowski tolerance at the failure probability :data:`PROBE_FAILURE`."""
    _seed("probe")
    layer = LipschitzLinear(40, 40, 0.9, exact_max_dim=0).double()
    weight = _near_degenerate(40, 40, 0.999, "probe")
    with torch.no_grad():
        layer.raw_weight.copy_(torch.as_tensor(2.0 * weight))
    layer.effective_weight()
    with torch.no_grad():
        layer.raw_weight.copy_(torch.as_tensor(2.0 * _swapped(weight)))
    applied = layer.effective_weight().detach().numpy()
    report = layer.normalizer.last_report
    assert report.method == "probe" and report.failure_probability == pytest.approx(PROBE_FAILURE)
    assert report.tolerance == pytest.approx(probe_tolerance(40, PROBE_STEPS, PROBE_FAILURE))
    assert float(spectral_norm(applied)) / 0.9 - 1.0 <= report.tolerance


def test_probe_bound_is_kuczynski_wozniakowski() -> None:
    """1.648·√n·exp(−√ε(2(q − 1) − 1)) with ε = 1 − (1 − t)², capped at 1; a Krylov space of the full
    dimension is exact; :func:`probe_tolerance` inverts it."""
    eps = 1.0 - 0.99 ** 2
    assert probe_failure_probability(768, 32, 0.01) == pytest.approx(1.648 * math.sqrt(768) * math.exp(-math.sqrt(eps) * 61))
    assert probe_failure_probability(50, 50, 1e-9) == 0.0 and probe_failure_probability(10 ** 6, 2, 1e-6) == 1.0
    for n, q, p in [(768, 32, 1e-3), (4096, 64, 1e-6)]:
        assert probe_failure_probability(n, q, probe_tolerance(n, q, p)) == pytest.approx(p)


@pytest.mark.parametrize("shape", [(8, 8), (4, 8), (8, 4), (12, 30)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_probe_whose_krylov_space_is_the_whole_space_is_exact(shape: tuple[int, int], dtype: torch.dtype) -> None:
    """With at least as many steps as the right side's dimension the Krylov space is the whole space,
    and the Rayleigh–Ritz step with a kept vector (then numerically inside that space) must not add a
    spurious direction: σ̂ = ‖W‖ to :func:`exact_tolerance`, which is also the probe's stated
    tolerance there; from below and from above (an estimate above the norm describes no vector)."""
    m, n = shape
    matrix = torch.as_tensor(_near_degenerate(m, n, 0.995, f"exhausted {shape}")).to(dtype)
    norm = float(spectral_norm(matrix.double().numpy()))
    matvec, rmatvec = (lambda v: matrix @ v), (lambda u: matrix.T @ u)
    rounding = exact_tolerance(m, n, dtype)
    assert probe_tolerance(n, PROBE_STEPS, PROBE_FAILURE, rounding) == rounding
    for keep in (None, torch.as_tensor(rng("lipschitz-test", "exhausted keep").standard_normal(n)).to(dtype)):
        _seed("exhausted")
        sigma, u, v, _ = probe(matvec, rmatvec, torch.zeros(n, dtype=dtype), steps=PROBE_STEPS, tolerance=rounding,
                               keep=keep)
        applied = float(u.double() @ matrix.double() @ v.double())
        assert abs(1.0 - applied / norm) <= rounding


def test_probe_tolerance_is_never_below_the_rounding() -> None:
    assert probe_tolerance(50, 50, 1e-3) == 0.0 and probe_tolerance(50, 50, 1e-3, 1e-12) == 1e-12
    assert probe_tolerance(4096, 32, 1e-3, 1e-12) == probe_tolerance(4096, 32, 1e-3) > 1e-12
    assert probe_tolerance(4096, 32, 1e-3, 0.5) == 0.5


def test_a_certified_gap_is_never_negative() -> None:
    """A frequency-domain bound that rounding put just below the estimate certifies the rounding, not
    a negative tolerance (an estimate above the bound would then fail its own claim)."""
    assert certified_gap(1.0 - 1e-16, 1.0, 1e-15) == 1e-15
    assert certified_gap(1.1, 1.0, 1e-15) == pytest.approx(0.1 + 1e-15)


def test_exact_tolerance_covers_the_rounding() -> None:
    """On random and near-degenerate matrices in both dtypes the exact path's gap is below its bound."""
    for key, ratio in [("random", None), ("degenerate", 0.9999), ("tied", 1.0), ("within the shift", 1.0 - 1e-9)]:
        matrix = (rng("lipschitz-test", key).standard_normal((30, 20)) if ratio is None
                  else _near_degenerate(30, 20, ratio, key))
        for dtype in (torch.float32, torch.float64):
            sigma, u, v, report = exact_top_pair(torch.as_tensor(matrix).to(dtype))
            applied = float((u.double() @ torch.as_tensor(matrix) @ v.double()))
            assert report.tolerance == exact_tolerance(30, 20, dtype)  # finite, and below the suite's cap:
            assert report.tolerance <= tolerance("norm_bound", str(dtype).removeprefix("torch."), 1)
            assert 1.0 - applied / float(spectral_norm(matrix)) <= report.tolerance


def test_exact_top_pair_of_a_zero_matrix() -> None:
    sigma, u, v, report = exact_top_pair(torch.zeros(5, 3, dtype=torch.float64))
    assert float(sigma) == 0.0 and report.method == "exact" and torch.isfinite(u).all() and torch.isfinite(v).all()


def test_probe_keeps_the_warm_vector() -> None:
    """The probe with ``keep``: Rayleigh–Ritz on its Krylov space plus the warm vector is at least the
    plain probe from the same random start and at least ‖W·keep‖; kept exact top vectors give the
    norm to rounding, even with a 3-step Krylov space that alone falls short (σ₂/σ₁ = 0.999). The
    stated failure probability stays that of the 3 random Krylov steps: the kept vector is not random."""
    matrix = torch.as_tensor(_near_degenerate(60, 50, 0.999, "keep"))
    norm = float(spectral_norm(matrix.numpy()))
    matvec, rmatvec = (lambda v: matrix @ v), (lambda u: matrix.T @ u)
    warm = torch.as_tensor(rng("lipschitz-test", "keep-start").standard_normal(50))
    top = torch.as_tensor(np.linalg.svd(matrix.numpy())[2][0])
    for keep in (warm, top):
        _seed("keep")
        plain = float(probe(matvec, rmatvec, warm, steps=3, tolerance=0.5)[0])
        _seed("keep")
        sigma, u, v, report = probe(matvec, rmatvec, warm, steps=3, tolerance=0.5, keep=keep)
        assert float(sigma) >= max(plain, float((matrix @ keep).norm() / keep.norm())) * (1.0 - 1e-12)
        assert float(u @ matrix @ v) == pytest.approx(float(sigma), rel=1e-12) and report.iterations == 4
        assert report.failure_probability == probe_failure_probability(50, 3, 0.5)  # the random space's alone
    assert plain < norm * (1.0 - 1e-6) and float(sigma) == pytest.approx(norm, rel=1e-12)


@pytest.mark.parametrize("kernel", [1, 3])
def test_conv_operator_matrix_is_the_reference_operator(kernel: int) -> None:
    weight = rng("lipschitz-test", "operator", kernel).standard_normal((3, 2, kernel, kernel))
    got = conv_operator_matrix(torch.as_tensor(weight), (4, 5), kernel // 2, 10 ** 6)
    np.testing.assert_array_equal(got.numpy(), conv_matrix(weight, (2, 4, 5)))  # entries are copies of weights
    assert conv_operator_matrix(torch.as_tensor(weight), (4, 5), kernel // 2, 39) is None


def test_one_by_one_convolutions_are_exact_at_any_size() -> None:
    """A 1×1 kernel's operator is its C_out × C_in matrix at every pixel: estimated exactly from the
    matrix at a size whose operator would be far too large to form."""
    layer = _scaled(LipschitzConv2d(4, 3, 1, 0.9).double(), 10.0)
    weight = layer.effective_weight((64, 64)).detach().numpy()
    assert layer.normalizer.last_report.method == "exact"
    assert_close(float(spectral_norm(weight[:, :, 0, 0])), 0.9, "norm_bound", "float64", weight.size)


def test_general_orders_keep_the_best_start() -> None:
    """Learned-order ranges (p, q ∈ (1.5, 2.5)): the multi-start general power method reaches the
    reference's lower bracket (columns and random starts); it states no guarantee."""
    for key in range(6):
        gen = rng("lipschitz-test", "general", key)
        weight = gen.standard_normal((5, 4))
        p, q = gen.uniform(1.5, 2.5, 2)
        sigma, _, report = general_power_method(torch.as_tensor(weight), torch.as_tensor(gen.standard_normal(4)),
                                                float(p), float(q), atol=0.0, rtol=1e-12, max_iter=5000)
        lower, upper = induced_norm_bracket(weight, p, q)
        assert report.method == "power" and report.failure_probability == 1.0
        assert float(sigma) >= lower * (1.0 - tolerance("norm_bound", "float64", 1)) and float(sigma) <= upper


def test_conv_vectors_survive_a_state_dict_at_another_size() -> None:
    source = LipschitzConv2d(2, 2, 3, 0.9).double()
    source(torch.zeros(1, 2, 5, 4, dtype=torch.float64))
    target = LipschitzConv2d(2, 2, 3, 0.9).double()
    target(torch.zeros(1, 2, 2, 2, dtype=torch.float64))
    target.load_state_dict(source.state_dict())
    assert target.normalizer._v.shape == (1, 2, 5, 4) and target.normalizer._spatial == (5, 4)


def test_mask_and_loading_effective_weights() -> None:
    mask = torch.tril(torch.ones(4, 4))
    layer = LipschitzLinear(4, 4, 0.9, mask=mask).double()
    weight = torch.tril(torch.full((4, 4), 0.1, dtype=torch.float64))
    layer.load_weight(weight)
    np.testing.assert_array_equal(layer.effective_weight().detach().numpy(), weight.numpy())
    with pytest.raises(ConfigError, match="mask"):
        layer.load_weight(torch.full((4, 4), 0.1, dtype=torch.float64))
    with pytest.raises(ConfigError, match="coeff"):
        layer.load_weight(torch.eye(4, dtype=torch.float64))


def test_learnable_orders_receive_gradients_and_stay_in_range() -> None:
    _seed("orders")
    layer = _scaled(LipschitzLinear(5, 4, 0.9, learn_orders=True).double(), 10.0)
    layer(torch.ones(2, 5, dtype=torch.float64)).sum().backward()
    p, q = (t.detach() for t in layer.normalizer.orders())
    assert p.item() > 1.5 and p.item() < 2.5 and q.item() > 1.5 and q.item() < 2.5
    assert layer.normalizer._orders.logits.grad is not None


@pytest.mark.parametrize("kwargs", [
    {"operator": "conv", "in_order": 1.0}, {"in_order": 0.5}, {"rtol": 0.0}, {"max_iter": 0}, {"operator": "other"},
])
def test_bad_normaliser_settings_are_refused(kwargs: dict) -> None:
    shape = (2, 2, 3, 3) if kwargs.get("operator") == "conv" else (2, 2)
    with pytest.raises(ConfigError):
        LipschitzNormalizer(shape, 0.9, **kwargs)


# ----------------------------------------------------------------------------- the suite's verdicts on claims

class _Recorder:
    """The part of a CheckContext that :class:`NormLedger` uses."""

    def __init__(self):
        self.errors = []

    def record(self, error: float, tol: float) -> float:
        self.errors.append((error, tol))
        return error


def test_exceedance_limit_holds_the_false_alarm_rate() -> None:
    for trials, p in [(100, 1e-3), (720, 0.01), (50, 0.2), (24, 0.5)]:
        k = exceedance_limit(trials, p, 1e-6)
        assert binom.sf(k - 1, trials, p) <= 1e-6 < binom.sf(k - 2, trials, p)


def test_ledger_fails_capped_and_deterministic_excesses_at_once() -> None:
    ledger, ctx = NormLedger(), _Recorder()
    ledger.check(ctx, Claim(1e-6), 5e-7, "within")
    with pytest.raises(PropertyFailure, match="beyond the bound"):
        ledger.check(ctx, Claim(1e-6), 2e-6, "beyond")
    with pytest.raises(PropertyFailure, match="iteration cap"):
        ledger.check(ctx, Claim(1e-6, hit_cap=True), 0.0, "capped")


def test_a_capped_warm_iteration_fails_only_claims_that_rest_on_it() -> None:
    """``hit_cap`` with a power-iteration claim is non-convergence; with a probe's or a certificate's
    claim (whose guarantee does not rest on the warm iteration) only the claim itself is checked."""
    class _Reporting:
        def capabilities(self):
            return type("Caps", (), {"has": staticmethod(lambda hook: hook == "norm_guarantees")})()

        def call_hook(self, flow, hook):
            return {f"w{i}": {"method": method, "hit_cap": True, "tolerance": 1e-9, "failure_probability": p}
                    for i, (method, p) in enumerate([("power", 1e-3), ("probe", 1e-3), ("certified", 0.0)])}

    ctx = type("Ctx", (), {"adapter": _Reporting()})()
    out = claims(ctx, None, ["w0", "w1", "w2"], 1e-7)
    assert [out[name].hit_cap for name in ("w0", "w1", "w2")] == [True, False, False]


def test_ledger_judges_probabilistic_claims_by_their_binomial_tail() -> None:
    """A claim of p = 0.01 per estimate over 200 estimates: a few exceedances are allowed, a rate of
    15 % (a warm start stuck after swaps shows more) is not; the power to see a rate q is
    P(Binomial(200, q) ≥ limit)."""
    limit = exceedance_limit(200, 0.01, per_example_alpha())
    assert binom.sf(limit - 1, 200, 0.15) > 0.99  # a 15 % failure rate is caught almost surely
    for exceeded, fails in [(limit - 1, False), (limit, True)]:
        ledger, ctx = NormLedger(), _Recorder()
        for i in range(200):
            ledger.check(ctx, Claim(1e-3, probabilistic=True, failure_probability=0.01), 1.0 if i < exceeded else 0.0,
                         f"estimate {i}")
        if fails:
            with pytest.raises(PropertyFailure, match="probabilistic"):
                ledger.verdict()
        else:
            ledger.verdict()


@pytest.mark.parametrize("shape, spatial", [((3, 2, 3, 3), (4, 5)), ((2, 3, 5, 5), (3, 3)), ((1, 1, 3, 3), (1, 1)),
                                            ((4, 4, 1, 1), (3, 2)), ((6, 2, 3, 3), (16, 16))])
def test_conv_norm_bound_is_an_upper_bound(shape: tuple[int, ...], spatial: tuple[int, int]) -> None:
    """The circular convolution on the (H + p) × (W + p) grid contains the zero-padded operator: its
    frequency-domain norm bounds the operator norm from above (and is near it on large images)."""
    weight = rng("lipschitz-test", "fft bound", shape).standard_normal(shape)
    exact = conv_operator_norm(weight, (shape[1], *spatial))
    bound = conv_norm_bound(torch.as_tensor(weight), spatial, shape[-1] // 2)
    assert bound >= exact * (1.0 - 1e-12)
    if spatial == (16, 16):
        assert bound <= 1.05 * exact


def test_large_convolutions_are_certified_by_the_frequency_bound() -> None:
    """A convolution too large for the explicit matrix (forced: ``exact_max_dim=16``) is certified by
    :func:`conv_norm_bound`: the report's deterministic tolerance holds for the exact operator norm."""
    _seed("fft certificate")
    layer = _scaled(LipschitzConv2d(2, 6, 3, 0.9, exact_max_dim=16, rtol=1e-10, max_iter=5000).double(), 10.0)
    weight = layer.effective_weight((20, 20)).detach().numpy()
    report = layer.normalizer.last_report
    assert report.method == "certified" and report.failure_probability == 0.0 and report.tolerance < 0.05
    assert conv_operator_norm(weight, (2, 20, 20)) / 0.9 - 1.0 <= report.tolerance
