"""Training pieces: dequantisation, bits per dimension against a hand computation, Polyak averaging."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from flowspec import ConfigError, FlowInputError
from flowspec.accelerated import training
from flowspec.accelerated.elementwise import ElementwiseAffine
from flowspec.conformance.seeding import rng, seed_for
from flowspec.conformance.tolerances import assert_close


def _generator(*keys: object) -> torch.Generator:
    return torch.Generator().manual_seed(seed_for("training", *keys))


def _affine_model(shape: tuple[int, ...], alpha: float) -> tuple[nn.Module, np.ndarray, np.ndarray]:
    r = rng("training", "affine", shape)
    shift, log_scale = r.normal(0.0, 0.5, shape), r.normal(0.0, 0.5, shape)
    flow = ElementwiseAffine(shape).double()
    with torch.no_grad():
        flow.shift.copy_(torch.from_numpy(shift))
        flow.log_scale.copy_(torch.from_numpy(log_scale))
    return training.with_logit(flow, alpha), shift, log_scale


def test_bpd_matches_a_hand_computation() -> None:
    shape, alpha, n_bins = (3, 2, 2), 0.05, 256
    model, shift, log_scale = _affine_model(shape, alpha)
    k = torch.from_numpy(rng("training", "k").integers(0, n_bins, (5, *shape)))
    x = training.dequantize(k, n_bins, dtype=torch.float64, generator=_generator("bpd"))

    xs = x.numpy().reshape(5, -1)
    y = alpha + (1 - 2 * alpha) * xs
    z = (np.log(y) - np.log1p(-y)) * np.exp(log_scale.ravel()) + shift.ravel()
    d = xs.shape[1]
    log_p = (
        -0.5 * (z ** 2).sum(1) - 0.5 * d * math.log(2 * math.pi)  # base density
        + log_scale.sum()  # affine
        + d * math.log(1 - 2 * alpha) - (np.log(y) + np.log1p(-y)).sum(1)  # logit with α
    )
    expected = -(log_p - d * math.log(n_bins)) / (d * math.log(2))

    got = training.evaluate(model, x, n_bins=n_bins)
    assert not got.requires_grad and not model.training
    assert_close(got.numpy(), expected, "logdet", "float64", d)


def test_bpd_sign_and_scale() -> None:
    # a model whose density on the unit cube is uniform (log p = 0) spends log2(256) = 8 bits per entry
    d = 12
    bpd = training.bits_per_dim(torch.zeros(4, dtype=torch.float64), training.uniform_log_q(d, 256), d)
    assert torch.equal(bpd, torch.full((4,), 8.0, dtype=torch.float64))
    # a higher likelihood gives fewer bits
    assert training.bits_per_dim(torch.tensor(1.0), 0.0, d) < training.bits_per_dim(torch.tensor(0.0), 0.0, d)


def test_dequantize_stays_in_its_cell_and_inside_the_unit_interval() -> None:
    n_bins = 256
    k = torch.from_numpy(rng("training", "cells").integers(0, n_bins, (64, 32)))
    k[0], k[1] = 0, n_bins - 1
    for dtype in (torch.float32, torch.float64):
        x = training.dequantize(k, n_bins, dtype=dtype, generator=_generator("cells", str(dtype)))
        assert x.dtype == dtype
        assert bool(((x > 0) & (x < 1)).all())
        cell = torch.floor(x.double() * n_bins)
        inside = cell == k.double()
        # only the clamped top entries may round onto the upper edge of their cell
        assert bool((inside | (k == n_bins - 1)).all())


def test_dequantize_rejects_bad_data() -> None:
    with pytest.raises(FlowInputError, match="integer-valued"):
        training.dequantize(torch.tensor([0.5]))
    with pytest.raises(FlowInputError, match=r"\[0, 4\)"):
        training.dequantize(torch.tensor([0, 4]), 4)
    with pytest.raises(FlowInputError, match=r"\[0, 4\)"):
        training.dequantize(torch.tensor([-1, 2]), 4)
    with pytest.raises(ConfigError, match="n_bins"):
        training.dequantize(torch.tensor([0]), 1)


class _Normalised(nn.Module):
    """A linear map W / σ̂ with σ̂ a buffer that only ``refresh`` recomputes (like power iteration)."""

    def __init__(self, n: int):
        super().__init__()
        self.weight = nn.Parameter(torch.eye(n, dtype=torch.float64))
        self.register_buffer("sigma", torch.ones((), dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ (self.weight / self.sigma).T


def _refresh(module: nn.Module) -> None:
    for layer in module.modules():
        if isinstance(layer, _Normalised):
            layer.sigma.copy_(torch.linalg.matrix_norm(layer.weight, 2))


def test_polyak_is_an_exponential_moving_average_with_copied_buffers() -> None:
    live = _Normalised(3)
    polyak = training.Polyak(live, decay=0.9, refresh=_refresh)
    values = [torch.full((3, 3), v, dtype=torch.float64) for v in (1.0, 3.0, -2.0)]
    expected = None
    for value in values:
        with torch.no_grad():
            live.weight.copy_(value)
            live.sigma.fill_(float(value.abs().sum()))
        polyak.update(live)
        expected = value if expected is None else 0.9 * expected + 0.1 * value
    assert polyak.updates == 3
    averaged = polyak.model()
    assert_close(averaged.weight.detach().numpy(), expected.numpy(), "forward", "float64", expected.numel())
    assert averaged.weight is not live.weight and not averaged.training
    # σ̂ is recomputed for the averaged weights, not copied from the live model
    assert_close(averaged.sigma.numpy(), torch.linalg.matrix_norm(expected, 2).numpy(), "forward", "float64",
                 expected.numel())
    assert float(live.sigma) == 18.0


def test_polyak_refreshes_once_per_update_and_never_evaluates_stale_norms() -> None:
    calls: list[int] = []
    live = _Normalised(2)
    polyak = training.Polyak(live, refresh=lambda m: (calls.append(1), _refresh(m)))
    polyak.update(live)
    polyak.model()
    polyak.model()
    assert len(calls) == 1
    with torch.no_grad():
        live.weight.mul_(4.0)
    polyak.update(live)
    averaged = polyak.model()
    assert len(calls) == 2
    assert_close(averaged.sigma.numpy(), torch.linalg.matrix_norm(averaged.weight, 2).detach().numpy(), "forward",
                 "float64", averaged.weight.numel())


def test_polyak_rejects_a_decay_outside_the_unit_interval() -> None:
    with pytest.raises(ConfigError, match="decay"):
        training.Polyak(nn.Linear(2, 2), decay=1.0, refresh=_refresh)


def test_train_step_returns_the_loss_before_the_update_and_learns() -> None:
    shape = (6,)
    model, _, _ = _affine_model(shape, 0.05)
    k = torch.from_numpy(rng("training", "learn").integers(100, 120, (128, *shape)))
    x = training.dequantize(k, dtype=torch.float64, generator=_generator("learn"))
    optimizer = training.adam(model, lr=0.05)
    polyak = training.Polyak(model, decay=0.5, refresh=_refresh)
    before = training.bpd_of(model, x).mean().detach()
    first = training.train_step(model, optimizer, x, polyak=polyak)
    assert_close(float(first), float(before), "logdet", "float64", shape[0])  # bits per dim: a sum of D log terms
    assert model.training
    losses = [float(training.train_step(model, optimizer, x, polyak=polyak)) for _ in range(30)]
    assert losses[-1] < float(first) - 1.0  # narrow data: fitting the scale gains over a bit per entry
    assert polyak.updates == 31
    assert float(training.evaluate(polyak.model(), x).mean()) < float(first)


def _trained_with_polyak(flow: nn.Module, shape: tuple[int, ...]) -> tuple[nn.Module, training.Polyak]:
    model = training.with_logit(flow.double())
    k = torch.from_numpy(rng("training", "polyak-real", shape).integers(0, 256, (32, *shape)))
    x = training.dequantize(k, dtype=torch.float64, generator=_generator("polyak-real", shape))
    optimizer = training.adam(model, lr=0.1)
    polyak = training.Polyak(model, decay=0.9)  # the average lags well behind the live weights
    for _ in range(3):
        training.train_step(model, optimizer, x, polyak=polyak)
    return model, polyak


def _check_residual_norms_are_fresh(model: nn.Module, averaged: nn.Module, *, detectable: bool) -> None:
    """Rerunning the iteration on the averaged weights moves no σ̂ by more than its own stop rule;
    with ``detectable``, the live model's vectors would have moved some σ̂ by more (the check has power)."""
    import copy

    from flowspec.accelerated import lipschitz

    again = copy.deepcopy(averaged)
    lipschitz.refresh_norms(again)
    live = dict(lipschitz.normalizers(model))
    stale_moves = []
    for (key, fresh), (_, rerun) in zip(lipschitz.normalizers(averaged), lipschitz.normalizers(again)):
        weight = averaged.get_submodule(key.rsplit(".", 1)[0]).unnormalized_weight().detach()
        sigma, sigma_again = float(fresh.sigma(weight)), float(rerun.sigma(weight))
        bound = fresh.atol + fresh.rtol * sigma_again
        assert abs(sigma - sigma_again) <= bound
        stale_moves.append(abs(float(live[key].sigma(weight)) - sigma_again) > bound)
    assert any(stale_moves) or not detectable


def test_polyak_recomputes_the_norms_of_a_residual_model() -> None:
    from flowspec.accelerated import residual

    torch.manual_seed(seed_for("training", "polyak-residual"))
    flow = residual.make_model("mlp", (6,), n_blocks=2, hidden_factor=2, rtol=1e-3)
    model, polyak = _trained_with_polyak(flow, (6,))
    _check_residual_norms_are_fresh(model, polyak.model(), detectable=True)


def test_polyak_refreshes_conv_vectors_and_quar_blocks() -> None:
    from flowspec.accelerated import quar, residual

    torch.manual_seed(seed_for("training", "polyak-conv-quar"))
    conv = dict(n_blocks=1, hidden_factor=1, n_scales=1, logit=False)  # with_logit puts the logit in front
    # conv power-iteration vectors have the input's spatial size: the averaged copy must adopt it
    flow = residual.make_model("conv", (2, 4, 4), rtol=1e-2, **conv)
    model, polyak = _trained_with_polyak(flow, (2, 4, 4))
    _check_residual_norms_are_fresh(model, polyak.model(), detectable=False)
    for flow, shape in ((quar.make_model("mlp", (6,), n_blocks=2, hidden_factor=2), (6,)),
                        (quar.make_model("conv", (2, 4, 4), **conv), (2, 4, 4))):
        model, polyak = _trained_with_polyak(flow, shape)
        blocks = [m for m in polyak._average.modules() if isinstance(m, (quar.QuARMLP, quar.QuARConv))]
        assert blocks and all(b.is_stale() for b in blocks)  # averaging moved the weights under the estimates
        polyak.model()
        assert not any(b.is_stale() for b in blocks)
