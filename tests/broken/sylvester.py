"""Broken Sylvester flows."""
from __future__ import annotations

import torch

from flowspec.accelerated.base import softplus
from flowspec.accelerated.sylvester import Sylvester, _diag
from flowspec.reference.sylvester import MU

from . import BrokenCase


class SylvesterOrthonormalisedOnce(Sylvester):
    """Q̂ is orthonormalised once, when the parameters are loaded, and then used as Q itself: the
    implementer reasons that Q stays orthonormal, but an optimiser step (an in-place update) moves
    it off the orthonormal matrices and nothing re-orthogonalises it (and an amortized Q̂ + W·c
    never was orthonormal)."""

    def load_spec_params(self, spec):
        super().load_spec_params(spec)
        if self.cfg.parameterization == "orthogonal":
            with torch.no_grad():
                self.q.copy_(self._orthonormalize(self.q.unsqueeze(0))[0])

    def _basis(self, context):
        if self.cfg.parameterization == "orthogonal":
            return self._raw("q", context)
        return super()._basis(context)


class SylvesterConstraintOnRAlone(Sylvester):
    """The diagonal constraint is put on r_ii alone, as the planar flow's wᵀû > −1: r_ii =
    −μ + softplus(raw) > −μ, with r̃_ii = softplus(raw) > 0 unconstrained above, so the product
    r_ii·r̃_ii falls below −1 once r̃_ii > 1/μ and the map folds."""

    def _parts(self, context):
        q, _, _, b = super()._parts(context)
        r, rt = self._raw("r", context), self._raw("r_tilde", context)
        upper_r = torch.triu(r, 1) + torch.diag_embed(softplus(_diag(r)) - MU)
        upper_rt = torch.triu(rt, 1) + torch.diag_embed(softplus(_diag(rt)))
        return q, upper_r, upper_rt, b


class SylvesterTanhDiagonals(Sylvester):
    """Both diagonals squashed by tanh, r_ii = tanh(raw), r̃_ii = tanh(raw) (van den Berg et al.'s
    choice): |r_ii·r̃_ii| < 1 in exact arithmetic, but tanh rounds to ±1 from |raw| ≈ 9 in float32
    (≈ 19 in float64), the product reaches −1 exactly, and a slope 1 + r_ii·r̃_ii·h′ becomes 0 at h′ = 1."""

    def _parts(self, context):
        q, _, _, b = super()._parts(context)
        r, rt = self._raw("r", context), self._raw("r_tilde", context)
        upper_r = torch.triu(r, 1) + torch.diag_embed(torch.tanh(_diag(r)))
        upper_rt = torch.triu(rt, 1) + torch.diag_embed(torch.tanh(_diag(rt)))
        return q, upper_r, upper_rt, b


class SylvesterHouseholderReversed(Sylvester):
    """The reflections are applied in the other order, Q = H_K·…·H₁·E_M instead of H₁·…·H_K·E_M: still
    orthonormal, invertible and with the right log-det, but not the specified map."""

    def _householder(self, v):
        vv = (v * v).sum(-1)
        q = torch.eye(self.cfg.d, dtype=v.dtype)[:, :self.cfg.m].expand(v.shape[0], -1, -1)
        for k in range(v.shape[1]):
            vk = v[:, k, :]
            q = q - (2.0 / vv[:, k])[:, None, None] * vk.unsqueeze(-1) * (vk.unsqueeze(-2) @ q)
        return q


class SylvesterInverseWrongOrder(Sylvester):
    """The back-substitution runs from the first coordinate to the last, as for a lower-triangular
    map, with the coordinates not yet solved at their starting value Qᵀz: exact only when R and R̃
    are diagonal."""

    def _inverse(self, z, context):
        q, r, rt, b = self._parts(context)
        batch, m = z.shape[0], self.cfg.m
        r, rt, b = r.expand(batch, m, m), rt.expand(batch, m, m), b.expand(batch, m)
        y = (z.unsqueeze(-2) @ q).squeeze(-2).clone()
        h = torch.tanh((rt @ y.unsqueeze(-1)).squeeze(-1) + b)
        for i in range(m):
            c = b[:, i] + (rt[:, i, i + 1:] * y[:, i + 1:]).sum(-1)
            target = (z.unsqueeze(-2) @ q).squeeze(-2)[:, i] - (r[:, i, i + 1:] * h[:, i + 1:]).sum(-1)
            y[:, i] = self._solve(target, r[:, i, i], rt[:, i, i], c)
            h[:, i] = torch.tanh(rt[:, i, i] * y[:, i] + c)
        return z - (q @ (r @ h.unsqueeze(-1))).squeeze(-1)


class SylvesterFixedIterations(Sylvester):
    """Six orthogonalisation steps and no check of ‖QᵀQ − I‖ ("the iteration converges quadratically"):
    from Q̂/‖Q̂‖_F, whose singular values are about 1/√M, that is not enough for M ≳ 3 or a spread Q̂."""

    def _orthonormalize(self, q_hat):
        q = q_hat / torch.linalg.matrix_norm(q_hat, keepdim=True)
        eye = torch.eye(q.shape[-1], dtype=q.dtype)
        for _ in range(6):
            q = q + 0.5 * (q @ (eye - q.mT @ q))
        return q


class SylvesterDetachedBasis(Sylvester):
    """Q is computed without gradients (the orthogonalisation treated as a constraint projection
    outside the graph), so training never updates Q̂ or v."""

    def _basis(self, context):
        with torch.no_grad():
            return super()._basis(context)


CASES = [
    BrokenCase("Sylvester with Q not re-orthogonalized", "sylvester", SylvesterOrthonormalisedOnce,
               white_box=("sylvester_q_orthonormal", "grad_matches_reference"),
               black_box=("logdet_matches_fd_jacobian",)),
    BrokenCase("Sylvester diagonal constraint applied to r_ii alone", "sylvester", SylvesterConstraintOnRAlone,
               white_box=("forward_matches_reference", "sylvester_invertibility_margin"),
               black_box=("sylvester_invertibility_margin", "inverse_round_trip"), dtypes=("float64", "float32")),
    BrokenCase("Sylvester diagonals squashed by tanh", "sylvester", SylvesterTanhDiagonals,
               white_box=("sylvester_invertibility_margin",), black_box=("sylvester_invertibility_margin",),
               dtypes=("float64", "float32")),
    BrokenCase("Sylvester Householder reflections in the reverse order", "sylvester", SylvesterHouseholderReversed,
               white_box=("forward_matches_reference", "sylvester_q_orthonormal")),
    BrokenCase("Sylvester inverse back-substitution in the wrong order", "sylvester", SylvesterInverseWrongOrder,
               white_box=("inverse_matches_reference",), black_box=("inverse_round_trip",)),
    BrokenCase("Sylvester orthogonalisation with a fixed step count", "sylvester", SylvesterFixedIterations,
               white_box=("sylvester_q_orthonormal", "forward_matches_reference"),
               black_box=("sylvester_q_orthonormal",)),
    BrokenCase("Sylvester Q without gradients", "sylvester", SylvesterDetachedBasis,
               white_box=("grad_matches_reference",), black_box=("param_grad_matches_fd",)),
]
