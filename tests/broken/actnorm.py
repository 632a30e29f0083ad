"""Broken actnorm."""
from __future__ import annotations

import torch

from flowspec.accelerated.actnorm import ActNorm

from . import BrokenCase


class ActNormNoSpatialFactor(ActNorm):
    """A Jacobian term dropped: Σ log_scale once instead of once per spatial position (H·W times)."""

    def _forward(self, x, context):
        z, _ = super()._forward(x, context)
        return z, self.log_scale.sum().expand(x.shape[0])


class ActNormSampleStdInit(ActNorm):
    """Initialises with the n − 1 standard deviation: the output variance is (n − 1)/n, not 1."""

    @torch.no_grad()
    def initialize(self, x):
        super().initialize(x)
        n = x.numel() // self._shape[0]
        self.log_scale.sub_(0.5 * torch.log(torch.tensor(n / (n - 1.0), dtype=self.log_scale.dtype)))


class ActNormFlagNotPersisted(ActNorm):
    """The ``initialized`` flag is registered as a non-persistent buffer (it "is not a weight"): it is
    left out of ``state_dict``, so a module built fresh and loaded from a checkpoint re-initialises
    on its first training forward, overwriting the loaded bias and scale with its batch statistics."""

    def __init__(self, shape, *, validate_args=None):
        super().__init__(shape, validate_args=validate_args)
        self.register_buffer("initialized", torch.tensor(False), persistent=False)


class ActNormLogOfZeroStd(ActNorm):
    """Initialisation takes −log of every channel's standard deviation, also of a constant channel's
    (a batch of one vector, a channel with no spread): log_scale = +inf, and the first forward
    returns 0·inf = NaN instead of centring the channel."""

    @torch.no_grad()
    def initialize(self, x):
        values = x.detach().transpose(0, 1).reshape(self._shape[0], -1).to(torch.float64)
        self.bias.copy_(-values.mean(dim=1))
        self.log_scale.copy_(-torch.log(values.std(dim=1, correction=0)))
        self.initialized.fill_(True)
        self._ready = True


class ActNormFusedEvalPath(ActNorm):
    """Evaluation mode folds the map into one affine step x·s + t, with t = bias instead of
    bias·s: (x + b)·s = x·s + b·s. Training mode, which the suite used to run alone, is right."""

    def _forward(self, x, context):
        if self.training:
            return super()._forward(x, context)
        self._require_initialized("a forward in evaluation mode")
        scale = torch.exp(self._per_channel(self.log_scale))
        z = x * scale + self._per_channel(self.bias)
        return z, (self._positions * self.log_scale.sum()).expand(x.shape[0])


class ActNormFlagOnlyInMemory(ActNorm):
    """The data-dependent initialisation is remembered in a Python attribute only and the
    ``initialized`` buffer is left as it was: the checkpoint of a module initialised by its first
    batch says "not initialised", and a module loaded from it initialises again from its own first
    training batch. A module loaded from a spec (flag 1) is right, so ``state_round_trip`` passes."""

    @torch.no_grad()
    def initialize(self, x):
        super().initialize(x)
        self.initialized.fill_(False)


class ActNormBroadcastForVectorsAndImages(ActNorm):
    """The per-channel broadcast written for the two layouts in common use, vectors ``(D,)`` and
    images ``(C, H, W)``: a sequence event ``(C, W)`` gets the bias and scale along its last axis
    (an error where C ≠ W; a silently wrong map, with the right log-det, where C = W)."""

    def _per_channel(self, t):
        return t.reshape(-1, 1, 1) if len(self._shape) == 3 else t


class ActNormReadyFlagKeptOnLoad(ActNorm):
    """The cached "initialised" flag is not reset when a state dict is loaded: a checkpoint saved
    before initialisation, loaded into a module that has initialised, leaves it "initialised" with
    the checkpoint's construction values, and its next training batch does not initialise."""

    def _load_from_state_dict(self, *args, **kwargs):
        ready = self._ready
        super()._load_from_state_dict(*args, **kwargs)
        self._ready = ready


class ActNormInitialisesFromAnEmptyBatch(ActNorm):
    """The first training forward initialises before looking at the batch size: an empty batch gives
    NaN statistics (a mean over no values), marked initialised, and every later output is NaN."""

    def forward(self, x, context=None):
        if self.training and not self.is_initialized() and x.shape[0] == 0:
            with torch.no_grad():
                self.bias.fill_(float("nan"))
                self.log_scale.fill_(float("nan"))
                self.initialized.fill_(True)
                self._ready = True
        return super().forward(x, context)


CASES = [
    BrokenCase("actnorm broadcast written for vectors and images only", "actnorm",
               ActNormBroadcastForVectorsAndImages, white_box=("forward_matches_reference",)),
    BrokenCase("actnorm ready flag kept when a state dict is loaded", "actnorm", ActNormReadyFlagKeptOnLoad,
               white_box=("data_init_checkpointed",), black_box=("data_init_checkpointed",)),
    BrokenCase("actnorm initialises from an empty first batch", "actnorm", ActNormInitialisesFromAnEmptyBatch,
               white_box=("data_init_skips_an_empty_batch",), black_box=("data_init_skips_an_empty_batch",)),
    BrokenCase("actnorm initialized flag not in the state_dict", "actnorm", ActNormFlagNotPersisted,
               white_box=("state_round_trip",), black_box=("state_round_trip",)),
    BrokenCase("actnorm initialisation remembered in memory only", "actnorm", ActNormFlagOnlyInMemory,
               white_box=("data_init_checkpointed",), black_box=("data_init_checkpointed",)),
    BrokenCase("actnorm initialisation takes log of a zero std", "actnorm", ActNormLogOfZeroStd,
               white_box=("data_init_from_fresh",), black_box=("data_init_from_fresh",)),
    BrokenCase("actnorm fused evaluation path forgets to scale the bias", "actnorm", ActNormFusedEvalPath,
               white_box=("train_eval_agree", "data_init_from_fresh"),
               black_box=("train_eval_agree", "data_init_from_fresh")),
    BrokenCase("actnorm log-det without the H·W factor", "actnorm", ActNormNoSpatialFactor,
               white_box=("logdet_matches_reference", "grad_matches_reference"),
               black_box=("logdet_matches_fd_jacobian",)),
    BrokenCase("actnorm initialised with the n-1 standard deviation", "actnorm", ActNormSampleStdInit,
               white_box=("actnorm_data_init",), black_box=("actnorm_data_init",)),
]
