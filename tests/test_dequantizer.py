"""Variational dequantization (Flow++ Sec. 3.1): the dequantizer's map against hand formulas, specs,
errors, the objective's units and its uniform special case, the bound's gap identity by quadrature,
and training."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flowspec import ConfigError, DomainError, FlowInputError, FlowSpec, reference
from flowspec.accelerated import FlowDistribution, from_spec, training
from flowspec.accelerated.coupling import AffineCoupling
from flowspec.accelerated.dequantizer import Dequantizer, features
from flowspec.accelerated.elementwise import ElementwiseAffine, Logit
from flowspec.accelerated.sequential import Sequential
from flowspec.conformance.seeding import rng, seed_for
from flowspec.conformance.tolerances import assert_close
from flowspec.reference import dequantizer as R
from flowspec.reference.sequential import sequential_spec

CONFIGS = [
    {"shape": [1], "couplings": 0, "hidden": 3, "activation": "elu"},
    {"shape": [3], "couplings": 2, "mask": "checkerboard", "hidden": 4, "depth": 2},
    {"shape": [2, 2, 2], "couplings": 1, "conditioner": "conv", "mask": "checkerboard", "scale_factor": 0.5},
    {"shape": [2, 1, 3], "couplings": 2, "mask": "channel", "activation": "relu"},
]
DTYPES = {"float64": torch.float64, "float32": torch.float32}


def _spec(config: dict, key: str) -> FlowSpec:
    return reference.init_spec("dequantizer", config, rng("dequantizer-test", key))


def _model_spec(shape: list[int], key: str) -> FlowSpec:
    gen = rng("dequantizer-test", "model", key)
    return sequential_spec([FlowSpec("logit", {"shape": shape, "alpha": 0.05}),
                            reference.init_spec("elementwise_affine", {"shape": shape}, gen)])


def _points(shape: tuple[int, ...], key: str, n: int = 4) -> tuple[np.ndarray, np.ndarray]:
    gen = rng("dequantizer-test", "points", key)
    return gen.uniform(0.02, 0.98, (n, *shape)), gen.uniform(-1.0, 1.0, (n, *shape))


# ----------------------------------------------------------------------------- the map

def test_features_are_cell_centres_on_the_symmetric_interval() -> None:
    k = torch.tensor([[0], [1], [3]])
    np.testing.assert_array_equal(features(k, 4, torch.float64).numpy().ravel(), [-0.75, -0.25, 0.75])
    np.testing.assert_array_equal(R.features(k.numpy(), 4).ravel(), [-0.75, -0.25, 0.75])


def test_one_entry_is_a_logit_normal_with_context_location_and_scale() -> None:
    """D = 1: ε = logit(u)·e^s + t with (s_raw, t) = net(c), s = scale_factor·tanh(s_raw), so
    log q(u | k) = log N(ε) + s − log u − log(1 − u) (eq. 12)."""
    config = CONFIGS[0]
    spec = _spec(config, "hand")
    u, c = _points((1,), "hand")
    hidden = spec.params["net.0.weight"] @ c.T + spec.params["net.0.bias"][:, None]
    h = spec.params["net.2.weight"] @ np.where(hidden > 0, hidden, np.expm1(np.minimum(hidden, 0.0))) \
        + spec.params["net.2.bias"][:, None]
    s, t = 1.0 * np.tanh(h[0]), h[1]
    eps = (np.log(u[:, 0]) - np.log1p(-u[:, 0])) * np.exp(s) + t
    log_q = -0.5 * eps ** 2 - 0.5 * math.log(2 * math.pi) + s - np.log(u[:, 0]) - np.log1p(-u[:, 0])
    assert_close(reference.forward(spec, u, c)[:, 0], eps, "forward", "float64", 1)
    assert_close(reference.log_prob(spec, u, c), log_q, "logdet", "float64", 1)
    flow = from_spec(spec)
    with torch.no_grad():
        got = FlowDistribution(flow, torch.from_numpy(c)).log_prob(torch.from_numpy(u))
    assert_close(got.numpy(), log_q, "logdet", "float64", 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: str(c["shape"]))
def test_accelerated_matches_reference_in_both_directions(config: dict, dtype: str) -> None:
    spec = _spec(config, str(config))
    u, c = _points(tuple(config["shape"]), str(config))
    z, logdet = reference.forward(spec, u, c), reference.log_abs_det(spec, u, c)
    flow = from_spec(spec, dtype=DTYPES[dtype])
    ut, ct = (torch.tensor(a, dtype=DTYPES[dtype]) for a in (u, c))
    size = int(np.prod(config["shape"]))
    with torch.no_grad():
        zt, ld = flow(ut, ct)
        back, ld_inverse = flow.inverse_and_logdet(torch.tensor(z, dtype=DTYPES[dtype]), ct)
    assert_close(zt.numpy(), z, "forward", dtype, size)
    assert_close(ld.numpy(), logdet, "logdet", dtype, size)
    assert_close(back.numpy(), u, "inverse", dtype, size)
    assert_close(ld_inverse.numpy(), -logdet, "logdet", dtype, size)
    assert_close(reference.inverse(spec, z, c), u, "inverse", "float64", size)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: str(c["shape"]))
def test_spec_round_trip(config: dict) -> None:
    spec = _spec(config, "round trip")
    again = FlowSpec.from_json(from_spec(spec, dtype=torch.float32).double().to_spec().to_json())
    assert again.kind == "dequantizer" and dict(again.config) == {**R.DEFAULTS, **spec.config}
    assert [name for name, _ in again.children()] == [str(i) for i in range(config["couplings"])]
    rounded = {k: np.asarray(v, dtype=np.float32).astype(np.float64) for k, v in spec.flat_params().items()}
    assert set(again.flat_params()) == set(rounded)
    for name, value in again.flat_params().items():
        np.testing.assert_array_equal(value, rounded[name])


def test_couplings_may_be_other_conditional_kinds() -> None:
    """The nested couplings are used as given: an additive coupling reading the context works in
    both layers."""
    spec = _spec({"shape": [4], "couplings": 1}, "other kind")
    additive = reference.init_spec("additive_coupling", {"shape": [4], "parity": 1, "context_dim": 4},
                                   rng("dequantizer-test", "additive"))
    spec = FlowSpec("dequantizer", spec.config, {**spec.params, "0": additive})
    u, c = _points((4,), "other kind")
    with torch.no_grad():
        z, logdet = from_spec(spec)(torch.from_numpy(u), torch.from_numpy(c))
    assert_close(z.numpy(), reference.forward(spec, u, c), "forward", "float64", 4)
    assert_close(logdet.numpy(), reference.log_abs_det(spec, u, c), "logdet", "float64", 4)


@pytest.mark.parametrize("config, key", [
    ({"shape": [1], "couplings": 1}, "couplings"),
    ({"shape": [3], "conditioner": "conv"}, "conditioner"),
    ({"shape": [1, 1, 1], "couplings": 1, "mask": "checkerboard"}, "couplings"),
    ({"shape": [2], "couplings": -1}, "couplings"),
    ({"shape": [2], "scale_factor": 0.0}, "scale_factor"),
    ({"shape": [2], "context_dim": 2}, "context_dim"),
    ({"shape": [], "couplings": 0}, "shape"),
])
def test_bad_configs_are_refused_naming_the_key(config: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        reference.init_spec("dequantizer", config, rng("dequantizer-test", "bad"))
    with pytest.raises(ConfigError, match=key):
        Dequantizer(**config)


def test_nested_couplings_are_checked() -> None:
    spec = _spec({"shape": [3], "couplings": 1}, "nested")
    u, c = _points((3,), "nested")
    blind = reference.init_spec("affine_coupling", {"shape": [3]}, rng("dequantizer-test", "blind"))
    for params, message in (({k: v for k, v in spec.params.items() if k != "0"}, "couplings"),
                            ({**spec.params, "0": blind}, "context")):
        broken = FlowSpec("dequantizer", spec.config, params)
        with pytest.raises(ConfigError, match=message):
            reference.forward(broken, u, c)
        with pytest.raises(ConfigError, match=message):
            from_spec(broken)


def test_inputs_outside_the_unit_interval_and_missing_contexts_are_refused() -> None:
    spec = _spec(CONFIGS[1], "domain")
    u, c = _points((3,), "domain")
    flow = from_spec(spec)
    for value in (0.0, 1.0, 1.5, -0.2):
        bad = u.copy()
        bad[1, 2] = value
        with pytest.raises(DomainError, match=r"\(0"):
            reference.forward(spec, bad, c)
        with pytest.raises(DomainError, match=r"\(0\.0, 1\.0\)"):
            flow(torch.from_numpy(bad), torch.from_numpy(c))
    with pytest.raises(FlowInputError, match="context"):
        flow(torch.from_numpy(u))
    with pytest.raises(FlowInputError, match="context"):
        reference.forward(spec, u)


# ----------------------------------------------------------------------------- the objective

def _torch_model(shape: tuple[int, ...], key: str) -> Sequential:
    model_spec = _model_spec(list(shape), key)
    return from_spec(model_spec)


def test_dequantize_gives_data_units_and_the_conditional_density() -> None:
    """x = (k + u)/n_bins with u the inverse of ε at the features, and log q(x | k) = log q(u | k) +
    D·log n_bins, log q(u | k) being FlowDistribution's log-density of the conditional flow; the
    sampled u are the existing conditional sampling's."""
    spec, n_bins = _spec(CONFIGS[1], "units"), 5
    flow = from_spec(spec)
    k = torch.from_numpy(rng("dequantizer-test", "k").integers(0, n_bins, (6, 3)))
    eps = torch.from_numpy(rng("dequantizer-test", "eps").standard_normal((6, 3)))
    with torch.no_grad():
        x, log_q = flow.dequantize(k, n_bins, eps=eps)
        context = features(k, n_bins, torch.float64)
        u = flow.inverse(eps, context)
        log_q_u = FlowDistribution(flow, context).log_prob(u)
        generator = torch.Generator().manual_seed(seed_for("dequantizer-test", "sample"))
        sampled = FlowDistribution(flow, context).sample(generator=generator)
        x_sampled, _ = flow.dequantize(k, n_bins, generator=torch.Generator().manual_seed(
            seed_for("dequantizer-test", "sample")))
    assert_close(x.numpy(), ((k + u) / n_bins).numpy(), "inverse", "float64", 3)
    assert_close(log_q.numpy(), (log_q_u + 3 * math.log(n_bins)).numpy(), "logdet", "float64", 3)
    assert_close(x_sampled.numpy(), ((k + sampled) / n_bins).numpy(), "inverse", "float64", 3)
    assert bool(((x > k / n_bins) & (x < (k + 1) / n_bins)).all())
    model = _torch_model((3,), "units")
    x_ref, log_p_ref, log_q_ref = R.bound_terms(spec, _model_spec([3], "units"), k.numpy(), eps.numpy(), n_bins)
    with torch.no_grad():
        bpd = training.variational_bpd(model, flow, k, n_bins, eps=eps)
    assert_close(bpd.numpy(), -(log_p_ref - log_q_ref) / (3 * math.log(2.0)), "logdet", "float64", 3)


def test_uniform_dequantization_is_the_special_case() -> None:
    """With the uniform q (the existing dequantize and uniform_log_q) the variational bpd is bpd_of."""
    model = _torch_model((2,), "uniform")
    k = torch.from_numpy(rng("dequantizer-test", "uniform k").integers(0, 256, (8, 2)))
    key = seed_for("dequantizer-test", "uniform")
    with torch.no_grad():
        variational = training.variational_bpd(model, training.UniformDequantization(torch.float64), k,
                                               generator=torch.Generator().manual_seed(key))
        x = training.dequantize(k, dtype=torch.float64, generator=torch.Generator().manual_seed(key))
        uniform = training.bpd_of(model, x)
    np.testing.assert_array_equal(variational.numpy(), uniform.numpy())
    with pytest.raises(ConfigError, match="eps"):
        training.UniformDequantization().dequantize(k, eps=torch.zeros(8, 2))


def test_bad_discrete_data_are_refused() -> None:
    flow = from_spec(_spec(CONFIGS[1], "bad data"))
    good = torch.zeros(2, 3, dtype=torch.int64)
    cases = ((good + 0.5, 4, FlowInputError, "integer"), (good + 4, 4, FlowInputError, r"\[0, 4\)"),
             (good - 1, 4, FlowInputError, r"\[0, 4\)"), (good[:, :2], 4, FlowInputError, "shape"),
             (good, 1, ConfigError, "n_bins"))
    for k, n_bins, error, message in cases:
        with pytest.raises(error, match=message):
            flow.dequantize(k, n_bins)
        with pytest.raises(error, match=message):
            R.check_discrete(k.numpy(), n_bins, (3,))


@pytest.mark.parametrize("config, k, n_bins", [
    ({"shape": [1], "couplings": 0, "hidden": 3, "scale_factor": 0.5}, [2], 5),
    ({"shape": [1], "couplings": 0, "hidden": 2, "activation": "relu"}, [0], 3),
])
def test_gap_is_the_kl_to_the_posterior(config: dict, k: list[int], n_bins: int) -> None:
    """log P(k) − E_q[log p(x) − log q(x | k)] = KL(q(·|k) ‖ p̃/P(k)) (Flow++ after eq. 12), the
    three terms by three different rules (Gauss–Legendre in u; Gauss–Hermite in ε through the
    inverse; tanh-sinh in u through the forward density); and the uniform bound (Jensen, eqs. 4–6)
    lies below log P(k) too."""
    spec, model = _spec(config, str(k)), _model_spec([1], str(k))
    log_p = R.log_marginal(model, k, n_bins, 32)
    moments = R.bound_moments(spec, model, k, n_bins, 64)
    kl = R.posterior_kl(spec, model, k, n_bins, 1.0 / 16)
    assert kl > 0.0 and moments.variance > 0.0
    assert_close(np.array([log_p - moments.mean]), np.array([kl]), "quadrature", "float64", 1)
    u, w = R.legendre_rule(32, (1,))
    uniform_bound = float(w @ (reference.log_prob(model, (np.array(k) + u) / n_bins) - math.log(n_bins)))
    assert uniform_bound < log_p


# ----------------------------------------------------------------------------- training

def test_training_steps_reduce_the_variational_bpd() -> None:
    """A few joint steps over model and dequantizer (the existing Adam and Polyak pieces) lower the
    variational bpd of a tiny correlated discrete data set; both receive gradients."""
    torch.manual_seed(seed_for("dequantizer-test", "training"))
    n_bins, shape = 4, (2,)
    gen = rng("dequantizer-test", "training data")
    first = gen.integers(0, n_bins, 128)
    k = torch.from_numpy(np.stack([first, np.minimum(first + gen.integers(0, 2, 128), n_bins - 1)], axis=1))
    model = Sequential([Logit(shape, 0.05), ElementwiseAffine(shape), AffineCoupling(shape, hidden=4)]).double()
    dequantizer = Dequantizer(shape, couplings=1, hidden=4).double()
    optimizer = training.adam(torch.nn.ModuleList([model, dequantizer]), lr=0.03)
    polyak = training.Polyak(model, decay=0.5)
    generator = torch.Generator().manual_seed(seed_for("dequantizer-test", "training noise"))
    evaluation = lambda m: float(training.variational_evaluate(  # noqa: E731
        m, dequantizer, k, n_bins=n_bins, generator=torch.Generator().manual_seed(1)).mean())
    before = evaluation(model)
    losses = [float(training.variational_train_step(model, dequantizer, optimizer, k, n_bins=n_bins, polyak=polyak,
                                                    generator=generator)) for _ in range(20)]
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in dequantizer.parameters())
    assert np.mean(losses[-5:]) < losses[0] - 0.3  # about 0.7 bits per entry are gained
    assert evaluation(model) < before - 0.3 and evaluation(polyak.model()) < before
    assert polyak.updates == 20 and not model.training and not dequantizer.training
