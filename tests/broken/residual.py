"""Broken residual blocks: each fault of the residual-flow issue, and the properties that catch it."""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from flowspec.accelerated.lipschitz import LipSwish, LipschitzNormalizer
from flowspec.errors import ConvergenceError
from flowspec.accelerated.power_iteration import PowerIterationReport
from flowspec.accelerated.residual import (RouletteDistribution, ResidualConv, ResidualMLP, _ImplicitInverse,
                                           _LogDetInForward, save_in_forward)

from . import BrokenCase
from .lipschitz import with_normalizer


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


class BatchDrawPerSample(ResidualMLP):
    """``draw="batch"`` accepted, but the forward still draws N per sample (the option's path never taken)."""

    def _draw_n(self, batch, generator):
        return self.sample_n(self.n_samples * batch, generator)


class BatchDrawOfLargest(ResidualMLP):
    """``draw="batch"`` shares the largest of per-sample draws — what a per-sample batch costs — rather
    than one draw of p(N): every sample's estimate then weights its tail terms wrongly."""

    def _draw_n(self, batch, generator):
        if self.draw != "batch":
            return super()._draw_n(batch, generator)
        draws = self.sample_n(self.n_samples * batch, generator).reshape(self.n_samples, batch)
        return draws.max(1).values.repeat_interleave(batch)


class MissingAlternatingSign(ResidualMLP):
    """Σ c_k vᵀJ^k v / k: the (−1)^{k+1} of eq. 6 dropped."""

    def _coefficients(self, n, like):
        value, grad, columns = super()._coefficients(n, like)
        return value.abs(), grad, columns


class _SharedScalar(_LogDetInForward):
    @staticmethod
    @once_differentiable
    def backward(ctx, grad_g, grad_logdet):
        shared = torch.full_like(grad_logdet, float(grad_logdet[0]))  # the first sample's weight for all
        return _LogDetInForward.backward(ctx, grad_g, shared)


class SharedScalarBackward(ResidualMLP):
    """Backward-in-forward that multiplies every sample's gradient by one shared upstream scalar."""

    in_forward_function = _SharedScalar


class _SurrogateInForward(_LogDetInForward):
    @staticmethod
    def forward(ctx, block, noise, x, *params):
        batch, v, n = x.shape[0], noise.v, noise.n
        with torch.enable_grad():
            x_leaf = x.detach().requires_grad_(True)
            leaves = [p.detach().requires_grad_(p.requires_grad) for p in params]
            x_rep, gx = block._tiled_g(x_leaf, leaves, v.shape[0] // batch)
            value, surrogate = block._series(gx, x_rep, v, n, create_graph=not block.neumann_grad)
            trainable = [p for p in leaves if p.requires_grad]
            grads = torch.autograd.grad(block._per_sample(surrogate, batch).sum(), [x_leaf] + trainable,
                                        retain_graph=True, allow_unused=True)
        save_in_forward(ctx, block, noise, (gx, x_rep, x_leaf), leaves, grads)
        return gx[:batch].detach(), block._per_sample(surrogate, batch).detach()  # the surrogate, not the value


class SurrogateAsValue(ResidualMLP):
    """Backward-in-forward returns the quantity it differentiated — the Neumann surrogate wᵀJ_g v,
    whose mean is tr((I + J_g)⁻¹J_g) — as the log-det of a forward with gradients (the training loss)."""

    in_forward_function = _SurrogateInForward


class SampleMajorAverage(ResidualMLP):
    """n_samples probes are averaged as if rows were sample-major (row i·n_samples + s), while the
    probes and the tiled input are probe-major (row s·batch + i): a sample's average mixes samples."""

    @staticmethod
    def _per_sample(values, batch):
        return values.reshape(batch, -1).mean(1)


class EvalWithoutExactTerms(ResidualMLP):
    """Evaluation mode keeps the training estimator: eval_exact_terms is never used."""

    def _exact_terms(self):
        return self.n_exact_terms


class ThreeExactTermsByDefault(ResidualMLP):
    """The constructor's default number of exact series terms raised from the paper's 2 to 3 (lower
    variance): every value stays unbiased and every spec, which writes the key, is right; only a
    flow constructed without it runs another estimator than the reference's default."""

    def __init__(self, shape, hidden=(), *, n_exact_terms=3, **options):
        super().__init__(shape, hidden, n_exact_terms=n_exact_terms, **options)


class EvalWeightsOfTraining(ResidualMLP):
    """Evaluation mode takes max(m, eval_exact_terms) terms exactly but keeps the training estimator's
    roulette weights c_k = 1/P(N ≥ k − n_exact_terms)."""

    def _coefficients(self, n, like):
        coefficient, training_terms = self.roulette.coefficient, self.n_exact_terms
        self.roulette.coefficient = lambda k, m: coefficient(k, training_terms)  # not m
        try:
            return super()._coefficients(n, like)
        finally:
            del self.roulette.coefficient


class SeriesOneTermShort(ResidualMLP):
    """The i-ResNet series sums k = 1 … m − 1 (the gradient's j < m mask reused for the value terms)."""

    def _coefficients(self, n, like):
        value, grad, columns = super()._coefficients(n, like)
        if self.estimator == "series":
            value[self._exact_terms():] = 0.0
        return value, grad, columns


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



class _FirstOrderAdjoint(_ImplicitInverse):
    @staticmethod
    @once_differentiable
    def backward(ctx, grad_x):
        x, *params = ctx.saved_tensors
        with torch.enable_grad():
            x_leaf = x.detach().requires_grad_(True)
            leaves = [p.detach().requires_grad_(p.requires_grad) for p in params]
            gx = ctx.block._g(x_leaf, leaves)
            lam = grad_x - torch.autograd.grad(gx, x_leaf, grad_x, retain_graph=True)[0]  # (I − J_g)ᵀ x̄ ≈ (I + J_g)⁻ᵀ x̄
            trainable = [p for p in leaves if p.requires_grad]
            grads = iter(torch.autograd.grad(gx, trainable, -lam, allow_unused=True)) if trainable else iter(())
        return (None, lam, *[next(grads) if p.requires_grad else None for p in leaves])


class ImplicitAdjointFirstOrder(ResidualMLP):
    """Gradients through the inverse with the adjoint (I + J_g)⁻ᵀx̄ replaced by its first-order
    Neumann approximation x̄ − J_gᵀx̄."""

    def _inverse(self, z, context):
        params = self._params()
        if torch.is_grad_enabled() and (z.requires_grad or any(p.requires_grad for p in params)):
            return _FirstOrderAdjoint.apply(self, z, *params)
        return self._fixed_point(z, [p.detach() for p in params])


class InverseStopOnResidual(ResidualMLP):
    """The fixed point stops when its step ‖x_{k+1} − x_k‖ (the residual) is below rtol·max(‖y‖, 1),
    forgetting that the residual understates the error by up to 1/(1 − L)."""

    def _solve(self, step, start, target, *, floor, what):
        rtol = self._inverse_tolerance(target.dtype)
        threshold = rtol * target.flatten(1).norm(dim=1).clamp_min(floor)  # no (1 − L)
        t = start
        for _ in range(self.inverse_max_iter):
            new = step(t)
            change = (new - t).flatten(1).norm(dim=1)
            t = new
            if bool((change <= threshold).all()):
                return t
        raise ConvergenceError(f"fixed-point {what} did not converge", residual=float(change.max()),
                               iterations=self.inverse_max_iter, tolerance=rtol)


CASES = [
    BrokenCase("residual roulette coefficient 1/P(N > k)", "residual_mlp", _with_distribution(_StrictTail),
               white_box=("roulette_estimate_exact",), black_box=("estimate_unbiased_statistical",)),
    BrokenCase("residual roulette draw of N off by one (torch's geometric)", "residual_mlp",
               _with_distribution(_TorchGeometric),
               white_box=("roulette_sampler_fits",), black_box=("roulette_sampler_fits", "estimate_unbiased_statistical")),
    BrokenCase("residual per-batch draw ignored (N still per sample)", "residual_mlp", BatchDrawPerSample,
               white_box=("logdet_forward_exact",)),
    BrokenCase("residual per-batch draw shares the batch's largest N", "residual_mlp", BatchDrawOfLargest,
               white_box=("roulette_sampler_fits",), black_box=("roulette_sampler_fits",)),
    BrokenCase("residual roulette without (-1)^(k+1)", "residual_mlp", MissingAlternatingSign,
               white_box=("roulette_estimate_exact",)),
    BrokenCase("residual backward-in-forward with a shared scalar", "residual_mlp", SharedScalarBackward,
               white_box=("backward_in_forward_matches", "neumann_gradient_exact"),
               black_box=("logdet_gradient_per_sample",)),
    BrokenCase("residual Neumann surrogate returned as the training-mode value", "residual_mlp", SurrogateAsValue,
               white_box=("logdet_forward_exact",), black_box=("estimate_unbiased_statistical",)),
    BrokenCase("residual n_samples averaged sample-major over probe-major rows", "residual_mlp", SampleMajorAverage,
               white_box=("logdet_forward_exact", "backward_in_forward_matches"),
               black_box=("logdet_gradient_per_sample",)),
    BrokenCase("residual evaluation mode ignores eval_exact_terms", "residual_mlp", EvalWithoutExactTerms,
               white_box=("roulette_estimate_exact", "logdet_forward_exact")),
    BrokenCase("residual default of 3 exact series terms", "residual_mlp", ThreeExactTermsByDefault,
               white_box=("config_defaults_constructed",), black_box=("config_defaults_constructed",)),
    BrokenCase("residual evaluation mode with the training roulette weights", "residual_mlp", EvalWeightsOfTraining,
               white_box=("roulette_estimate_exact", "logdet_forward_exact")),
    BrokenCase("residual series estimator one term short", "residual_mlp", SeriesOneTermShort,
               white_box=("logdet_forward_exact",), black_box=("estimate_unbiased_statistical",)),
    BrokenCase("residual power iteration: one iteration, no tolerance", "residual_mlp",
               with_normalizer(ResidualMLP, _FixedIterations),
               white_box=("norm_bound_after_updates",), black_box=("norm_bound_after_updates",)),
    BrokenCase("residual LipSwish without the 1/1.1", "residual_mlp", LipSwishWithoutScale,
               white_box=("forward_matches_reference", "activation_derivative_bound"),
               black_box=("activation_derivative_bound",)),
    BrokenCase("residual conv spectral norm frozen at the first input size", "residual_conv",
               with_normalizer(ResidualConv, _FrozenSize),
               white_box=("norm_bound_after_updates",), black_box=("norm_bound_after_updates",)),
    BrokenCase("residual conv norm of the reshaped kernel", "residual_conv", with_normalizer(ResidualConv, _ReshapedKernel),
               white_box=("norm_bound_after_updates", "norm_estimates_current", "norm_bound_under_training"),
               black_box=("norm_bound_after_updates", "norm_estimates_current", "norm_bound_under_training")),
    BrokenCase("residual coeff >= 1 accepted", "residual_mlp", CoeffUnchecked, white_box=("noncontractive_config_rejected",)),
    BrokenCase("residual inverse without a convergence check", "residual_mlp", InverseWithoutCheck,
               white_box=("inverse_nonconvergence_reported", "inverse_matches_reference"),
               black_box=("inverse_nonconvergence_reported", "inverse_round_trip")),
    BrokenCase("residual inverse stops on the residual without the 1 − L factor", "residual_mlp", InverseStopOnResidual,
               white_box=("inverse_error_bound",), black_box=("inverse_error_bound",)),
    BrokenCase("residual implicit gradient of the inverse to first order", "residual_mlp", ImplicitAdjointFirstOrder,
               white_box=("inverse_grad_matches_reference",), black_box=("inverse_grad_matches_fd",)),
]
