"""Broken residual blocks: each fault of the residual-flow issue, and the properties that catch it."""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from flowspec.accelerated.lipschitz import LipSwish, LipschitzNormalizer
from flowspec.accelerated.power_iteration import PowerIterationReport
from flowspec.accelerated.residual import RouletteDistribution, ResidualConv, ResidualMLP, _LogDetInForward

from . import BrokenCase


# ----------------------------------------------------------------------------- roulette estimator

class _StrictTail(RouletteDistribution):
    def coefficient(self, k, n_exact_terms):
        return 1.0 if k <= n_exact_terms else 1.0 / self.tail(k - n_exact_terms + 1)  # 1/P(N > k − m)


class _TorchGeometric(RouletteDistribution):
    def sample(self, count, generator, device):
        draws = super().sample(count, generator, device)
        return draws - 1 if self.dist == "geometric" else draws  # torch counts failures from 0


def _with_distribution(distribution: type) -> type:
    class Block(ResidualMLP):
        def set_logdet(self, **settings):
            super().set_logdet(**settings)
            self.roulette = distribution(self.roulette.dist, self.roulette.param)
    return Block


class MissingAlternatingSign(ResidualMLP):
    """Σ c_k vᵀJ^k v / k: the (−1)^{k+1} of eq. 6 dropped."""

    def _coefficients(self, n, like):
        value, grad = super()._coefficients(n, like)
        return value.abs(), grad


class _SharedScalar(_LogDetInForward):
    @staticmethod
    @once_differentiable
    def backward(ctx, grad_g, grad_logdet):
        shared = torch.full_like(grad_logdet, float(grad_logdet[0]))  # the first sample's weight for all
        return _LogDetInForward.backward(ctx, grad_g, shared)


class SharedScalarBackward(ResidualMLP):
    """Backward-in-forward that multiplies every sample's gradient by one shared upstream scalar."""

    in_forward_function = _SharedScalar


# ----------------------------------------------------------------------------- norms and activations

class _FixedIterations(LipschitzNormalizer):
    def _spectral_estimate(self, w):  # one iteration from the warm start, no tolerance, no cap reported
        matvec, rmatvec = self._matvec(w), self._rmatvec(w)
        with torch.no_grad():
            v = self._unit(rmatvec(self._unit(matvec(self._v.to(w)))))
            self._u, self._v = self._unit(matvec(v)), v
        return PowerIterationReport(1, False, 0.0)


class _FrozenSize(LipschitzNormalizer):
    def _vectors_for(self, spatial, like):  # the first input size is kept for ever
        super()._vectors_for(self._spatial or spatial, like)


class _ReshapedKernel(LipschitzNormalizer):
    def _spectral_estimate(self, w):
        return PowerIterationReport(0, False, 0.0)

    def sigma(self, weight):  # ‖reshape(W, (out, in·k·k))‖₂ instead of the operator norm
        return torch.linalg.matrix_norm(weight.reshape(weight.shape[0], -1), 2)


def _with_normalizer(base: type, normalizer: type) -> type:
    class Block(base):
        def _build_layers(self, **layout):
            layers = super()._build_layers(**layout)
            for layer in layers:
                layer.normalizer.__class__ = normalizer
            return layers
    return Block


class _UnscaledLipSwish(LipSwish):
    def functional(self, x, *tensors):
        return x * torch.sigmoid(torch.nn.functional.softplus(tensors[0]) * x)  # no 1/1.1

    def derivative(self, x):
        return super().derivative(x) * 1.1


class LipSwishWithoutScale(ResidualMLP):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for act in self.activations:
            if isinstance(act, LipSwish):
                act.__class__ = _UnscaledLipSwish


# ----------------------------------------------------------------------------- configuration and inverse

class CoeffUnchecked(ResidualMLP):
    """Builds a block for coeff ≥ 1 without an error."""

    def __init__(self, *args, coeff=0.97, **kwargs):
        super().__init__(*args, coeff=min(coeff, 0.99), **kwargs)
        self.coeff = coeff


class InverseWithoutCheck(ResidualMLP):
    """The fixed point run for a fixed number of iterations, returned whether or not it converged."""

    def _solve(self, step, start, target, *, floor, what):
        t = start
        for _ in range(min(self.inverse_max_iter, 3)):
            t = step(t)
        return t


CASES = [
    BrokenCase("roulette coefficient 1/P(N > k)", "residual_mlp", _with_distribution(_StrictTail),
               white_box=("roulette_estimate_exact",), black_box=("roulette_unbiased_statistical",)),
    BrokenCase("roulette draw of N off by one (torch's geometric)", "residual_mlp",
               _with_distribution(_TorchGeometric),
               white_box=("roulette_sampler_fits",), black_box=("roulette_sampler_fits", "roulette_unbiased_statistical")),
    BrokenCase("roulette without (-1)^(k+1)", "residual_mlp", MissingAlternatingSign,
               white_box=("roulette_estimate_exact",)),
    BrokenCase("backward-in-forward with a shared scalar", "residual_mlp", SharedScalarBackward,
               white_box=("backward_in_forward_matches", "neumann_gradient_exact")),
    BrokenCase("power iteration: one iteration, no tolerance", "residual_mlp",
               _with_normalizer(ResidualMLP, _FixedIterations),
               white_box=("norm_bound_after_updates",), black_box=("norm_bound_after_updates",)),
    BrokenCase("LipSwish without the 1/1.1", "residual_mlp", LipSwishWithoutScale,
               white_box=("forward_matches_reference", "activation_derivative_bound"),
               black_box=("activation_derivative_bound",)),
    BrokenCase("conv spectral norm frozen at the first input size", "residual_conv",
               _with_normalizer(ResidualConv, _FrozenSize),
               white_box=("norm_bound_after_updates",), black_box=("norm_bound_after_updates",)),
    BrokenCase("conv norm of the reshaped kernel", "residual_conv", _with_normalizer(ResidualConv, _ReshapedKernel),
               white_box=("norm_bound_after_updates",), black_box=("norm_bound_after_updates",)),
    BrokenCase("coeff >= 1 accepted", "residual_mlp", CoeffUnchecked, white_box=("noncontractive_config_rejected",)),
    BrokenCase("inverse without a convergence check", "residual_mlp", InverseWithoutCheck,
               white_box=("inverse_nonconvergence_reported", "inverse_matches_reference"),
               black_box=("inverse_nonconvergence_reported", "inverse_round_trip")),
]
