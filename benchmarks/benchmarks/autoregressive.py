"""Autoregressive and spline flows: forward + log-det, inverse and sampling, over two sizes.

float32, one thread, input validation off, as in ``flows.py``. Sampling is the generative direction
(``FlowDistribution.sample``: base noise, then the inverse): for the autoregressive kinds of the
MAF type (``maf``, ``spline_autoregressive``, the convolutional kinds) it is the slow direction of
sequential passes (D, H·W·C or T network passes), for ``iaf`` the one-pass direction (its forward is
the sequential one). Batches are smaller than in ``flows.py`` for the kinds with a sequential
direction, so that every call stays within about 10–300 ms on one core; the larger size of each
sequential kind is marked slow. A kind missing from the commit skips (``require_kind``).
"""
from __future__ import annotations

from typing import Any

import torch

from .flows import _Family

SPLINE = {"bins": 8, "bound": 3.0}


class _Sampled(_Family):
    """A family with a sampling benchmark: ``batch`` draws from the flow's distribution."""

    def setup(self, size: int) -> None:
        from flowspec.accelerated import FlowDistribution

        super().setup(size)
        self.dist = FlowDistribution(self.flow)
        self.generator = torch.Generator().manual_seed(size)

    def time_sample(self, size: int) -> None:
        self.dist.sample((self.batch,), generator=self.generator)


class _MADE(_Sampled):
    """MADE conditioner with two hidden layers of width 4·D, ReLU, in the natural order."""

    param_names = ["D"]
    params = [16, 32]
    slow_sizes = (32,)
    batch = 256

    def config(self, d: int) -> dict[str, Any]:
        return {"dim": d, "hidden": [4 * d, 4 * d], "activation": "relu"}


class MAF(_MADE):
    kind = "maf"


class IAF(_MADE):
    kind = "iaf"


class SplineAutoregressive(_MADE):
    """NSF-AR: the MADE conditioner with a K = 8 rational-quadratic spline on [−3, 3]."""

    kind = "spline_autoregressive"

    def config(self, d: int) -> dict[str, Any]:
        return {**super().config(d), **SPLINE}


class Spline(_Sampled):
    """The elementwise spline, K = 8 bins on [−3, 3], its own parameters per entry."""

    kind = "spline"
    params = [64, 256]
    slow_sizes = (256,)

    def config(self, d: int) -> dict[str, Any]:
        return {"shape": [d], **SPLINE}


class SplineCoupling(_Sampled):
    """NSF-C: channel mask, MLP conditioner of width 4·D and two hidden layers, K = 8 on [−3, 3]."""

    kind = "spline_coupling"
    params = [64, 128]
    slow_sizes = (128,)
    batch = 1024

    def config(self, d: int) -> dict[str, Any]:
        return {"shape": [d], "conditioner": "mlp", "hidden": 4 * d, "depth": 2, "activation": "relu", **SPLINE}


class PixelCNNAutoregressive(_Sampled):
    """PixelCNN masks on 3 × H × H images, 8 channels per colour group, two hidden layers;
    the inverse is 3·H² network passes."""

    kind = "pixelcnn_autoregressive"
    param_names = ["H"]
    params = [4, 6]
    slow_sizes = (6,)
    batch = 64

    def config(self, h: int) -> dict[str, Any]:
        return {"shape": [3, h, h], "hidden_channels": 8, "depth": 2, "activation": "relu"}


class CausalAutoregressive(_Sampled):
    """WaveNet-style causal dilated convolutions on 4 × T sequences, 16 hidden channels, three
    hidden layers; the inverse is T network passes."""

    kind = "causal_autoregressive"
    param_names = ["T"]
    params = [32, 64]
    slow_sizes = (64,)
    batch = 64

    def config(self, t: int) -> dict[str, Any]:
        return {"shape": [4, t], "hidden_channels": 16, "depth": 3, "activation": "relu"}
