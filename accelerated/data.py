"""Data sets for ``flowspec train``: 2-D toy densities, scikit-learn's digits, MNIST, CIFAR-10 and
the user's own ``.npy`` / ``.npz`` arrays.

Every data set is a :class:`DataSet`: a train and a test tensor of shape ``(N, *event_shape)`` and
``n_bins`` — ``None`` for continuous data (the objective is then in nats), or the number of levels
``L`` of discrete data ``k ∈ {0, …, L − 1}`` (the objective is then bits per dimension of the
dequantised ``x = (k + u)/L``, :mod:`flowspec.accelerated.training`). Nothing is ever downloaded.

* Toys (continuous, event ``(2,)``), drawn from a seeded ``torch.Generator`` (train seed ``seed``,
  test seed ``seed + 1``): ``moons``, ``8gaussians``, ``checkerboard``, ``pinwheel``, ``rings``
  (the formulas are in the functions' docstrings).
* ``digits``: scikit-learn's ``load_digits`` (1,797 images, 1 × 8 × 8, 17 levels 0 … 16, shipped
  inside scikit-learn); the fixed split is scikit-learn's order, the first 1,500 images for
  training and the last 297 for testing; ``n_bins = 17``.
* ``mnist``: the IDX files ``train-images-idx3-ubyte`` and ``t10k-images-idx3-ubyte`` (optionally
  ``.gz``) in ``data_dir``; 1 × 28 × 28, 256 levels.
* ``cifar10``: the python pickle batches ``data_batch_1`` … ``data_batch_5`` and ``test_batch`` in
  ``data_dir`` or in its ``cifar-10-batches-py`` folder; 3 × 32 × 32, 256 levels.
* A path ending in ``.npy`` or ``.npz``: the user's array (``npz``: arrays ``train`` and ``test``
  when both are present, else its only array). Without a split the last 10 % is the test split.
  Continuous or discrete: ``discrete_levels = L`` declares discrete data in ``[0, L)``; without it
  an integer dtype is discrete with ``L = 256`` (values must lie in [0, 256)), and a floating
  dtype is continuous.
"""
from __future__ import annotations

import gzip
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from flowspec.errors import ConfigError

TOY_SIZE = (20_000, 2_000)
"""Train and test sizes of the toy data sets."""

DIGITS_TRAIN = 1500
"""The first 1,500 of scikit-learn's 1,797 digits are the training split, the rest the test split."""


@dataclass(frozen=True)
class DataSet:
    """A train and a test split of shape ``(N, *event_shape)`` (float64) and the number of levels of
    discrete data (``None``: continuous)."""

    name: str
    train: Tensor
    test: Tensor
    n_bins: int | None

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])

    @property
    def discrete(self) -> bool:
        return self.n_bins is not None

    @property
    def is_image(self) -> bool:
        return len(self.event_shape) == 3

    @property
    def dim(self) -> int:
        return math.prod(self.event_shape)


# ----------------------------------------------------------------------------- 2-D toys

def _normal(n: int, g: torch.Generator, *shape: int) -> Tensor:
    return torch.randn((n, *shape), generator=g, dtype=torch.float64)


def _uniform(n: int, g: torch.Generator, *shape: int) -> Tensor:
    return torch.rand((n, *shape), generator=g, dtype=torch.float64)


def moons(n: int, g: torch.Generator) -> Tensor:
    """Two interleaved half circles: t ~ U(0, π), upper (cos t, sin t), lower (1 − cos t, ½ − sin t),
    plus N(0, 0.1²) noise, centred at (½, ¼) and scaled by 2."""
    t = math.pi * _uniform(n, g, 1)
    upper = torch.cat([torch.cos(t), torch.sin(t)], 1)
    lower = torch.cat([1.0 - torch.cos(t), 0.5 - torch.sin(t)], 1)
    pick = _uniform(n, g, 1) < 0.5
    x = torch.where(pick, upper, lower) + 0.1 * _normal(n, g, 2)
    return 2.0 * (x - torch.tensor([0.5, 0.25], dtype=torch.float64))


def eight_gaussians(n: int, g: torch.Generator) -> Tensor:
    """An equal mixture of N(2·(cos 2πk/8, sin 2πk/8), 0.2²·I), k = 0 … 7."""
    k = torch.randint(0, 8, (n, 1), generator=g).to(torch.float64)
    angle = 2.0 * math.pi * k / 8.0
    return 2.0 * torch.cat([torch.cos(angle), torch.sin(angle)], 1) + 0.2 * _normal(n, g, 2)


def checkerboard(n: int, g: torch.Generator) -> Tensor:
    """Uniform on the black squares of a 4 × 4 board on [−2, 2]²: x₁ ~ U(−2, 2),
    x₂ = U(0, 1) − 2·B + (⌊x₁⌋ mod 2), B ~ Bernoulli(½)."""
    x1 = 4.0 * _uniform(n, g, 1) - 2.0
    b = torch.randint(0, 2, (n, 1), generator=g).to(torch.float64)
    x2 = _uniform(n, g, 1) - 2.0 * b + torch.remainder(torch.floor(x1), 2.0)
    return torch.cat([x1, x2], 1)


def pinwheel(n: int, g: torch.Generator) -> Tensor:
    """Five spiral arms: (r, t) = (1 + N(0, 0.3²), N(0, 0.05²)), rotated by the angle
    2πa/5 + 0.25·exp(r) for arm a ~ U{0 … 4}, scaled by 1.5."""
    a = torch.randint(0, 5, (n,), generator=g).to(torch.float64)
    r = 1.0 + 0.3 * _normal(n, g)
    t = 0.05 * _normal(n, g)
    angle = 2.0 * math.pi * a / 5.0 + 0.25 * torch.exp(r)
    c, s = torch.cos(angle), torch.sin(angle)
    return 1.5 * torch.stack([c * r - s * t, s * r + c * t], 1)


def rings(n: int, g: torch.Generator) -> Tensor:
    """Four concentric circles of radii 0.8, 1.6, 2.4, 3.2 (chosen uniformly), uniform angle,
    radial noise N(0, 0.08²)."""
    radius = 0.8 * (1.0 + torch.randint(0, 4, (n,), generator=g).to(torch.float64)) + 0.08 * _normal(n, g)
    angle = 2.0 * math.pi * _uniform(n, g)
    return torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], 1)


TOYS: dict[str, Callable[[int, torch.Generator], Tensor]] = {
    "moons": moons, "8gaussians": eight_gaussians, "checkerboard": checkerboard, "pinwheel": pinwheel,
    "rings": rings,
}


def toy(name: str, seed: int = 0, sizes: tuple[int, int] = TOY_SIZE) -> DataSet:
    """The toy ``name`` with ``sizes`` (train, test) points drawn from generators seeded ``seed`` and ``seed + 1``."""
    draw = TOYS[name]
    train = draw(sizes[0], torch.Generator().manual_seed(seed))
    test = draw(sizes[1], torch.Generator().manual_seed(seed + 1))
    return DataSet(name, train, test, None)


# ----------------------------------------------------------------------------- images

def digits() -> DataSet:
    """scikit-learn's 8 × 8 digits, 17 levels, split at :data:`DIGITS_TRAIN` (module docstring)."""
    from sklearn.datasets import load_digits

    images = torch.from_numpy(load_digits().images.astype(np.float64)).reshape(-1, 1, 8, 8)
    return DataSet("digits", images[:DIGITS_TRAIN], images[DIGITS_TRAIN:], 17)


def _need(path: Path, what: str) -> Path:
    for candidate in (path, path.with_name(path.name + ".gz")):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"{what}: {path} (or {path.name}.gz) is missing; flowspec never downloads data — "
                      f"put the file there or pass --data-dir")


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise ConfigError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != math.prod(dims):
        raise ConfigError(f"{path}: header says {dims} entries, the file holds {body.size} (truncated?)")
    return body.reshape(dims)


def mnist(data_dir: str | os.PathLike | None) -> DataSet:
    """MNIST from its IDX image files in ``data_dir`` (module docstring)."""
    root = Path(data_dir or ".")
    split = [_read_idx(_need(root / f"{p}-images-idx3-ubyte", "mnist")) for p in ("train", "t10k")]
    train, test = (torch.from_numpy(a.astype(np.float64)).unsqueeze(1) for a in split)
    return DataSet("mnist", train, test, 256)


def _cifar_batch(path: Path) -> np.ndarray:
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")  # noqa: S301 - the user's own CIFAR-10 files
    return np.asarray(batch[b"data"], dtype=np.float64).reshape(-1, 3, 32, 32)


def cifar10(data_dir: str | os.PathLike | None) -> DataSet:
    """CIFAR-10 from its python pickle batches (module docstring)."""
    root = Path(data_dir or ".")
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise ConfigError(f"cifar10: {', '.join(missing)} missing in {root}; flowspec never downloads data — "
                          f"pass --data-dir with the python pickle batches")
    train = np.concatenate([_cifar_batch(root / n) for n in names[:5]])
    return DataSet("cifar10", torch.from_numpy(train), torch.from_numpy(_cifar_batch(root / "test_batch")), 256)


# ----------------------------------------------------------------------------- user arrays

def _split(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n_test = max(1, len(a) // 10)
    if len(a) < 2:
        raise ConfigError(f"an array file needs at least 2 samples for a train and a test split, got {len(a)}")
    return a[:-n_test], a[-n_test:]


def _arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise ConfigError(f"array file {path} does not exist")
    if path.suffix == ".npy":
        return _split(np.load(path, allow_pickle=False))
    with np.load(path, allow_pickle=False) as z:
        if "train" in z.files and "test" in z.files:
            return z["train"], z["test"]
        if len(z.files) != 1:
            raise ConfigError(f"{path}: an .npz needs arrays 'train' and 'test' or exactly one array, has {z.files}")
        return _split(z[z.files[0]])


def array_file(path: str | os.PathLike, discrete_levels: int | None = None) -> DataSet:
    """The user's ``.npy`` / ``.npz`` data (module docstring says how continuous and discrete are told apart)."""
    path = Path(path)
    train, test = _arrays(path)
    if train.ndim < 2 or train.shape[1:] != test.shape[1:]:
        raise ConfigError(f"{path}: need arrays (N, *event_shape) with equal event shapes, got {train.shape}, {test.shape}")
    levels = discrete_levels if discrete_levels is not None else (256 if np.issubdtype(train.dtype, np.integer) else None)
    train_t, test_t = torch.from_numpy(train.astype(np.float64)), torch.from_numpy(test.astype(np.float64))
    for t in (train_t, test_t):
        if not bool(torch.isfinite(t).all()):
            raise ConfigError(f"{path} holds NaN or inf")
        if levels is not None and (bool((t != torch.round(t)).any()) or t.min() < 0 or t.max() >= levels):
            raise ConfigError(f"{path}: discrete data must be integers in [0, {levels}) "
                              f"(got values in [{t.min().item():g}, {t.max().item():g}]); set --discrete-levels")
    return DataSet(path.stem, train_t, test_t, levels)


# ----------------------------------------------------------------------------- by name

IMAGES = ("digits", "mnist", "cifar10")
NAMES = tuple(TOYS) + IMAGES


def load(name: str, *, seed: int = 0, data_dir: str | os.PathLike | None = None,
         discrete_levels: int | None = None) -> DataSet:
    """The data set called ``name`` (one of :data:`NAMES`, or a ``.npy`` / ``.npz`` path)."""
    if name.endswith((".npy", ".npz")):
        return array_file(name, discrete_levels)
    if discrete_levels is not None:
        raise ConfigError(f"--discrete-levels applies to .npy/.npz files only, not to {name!r}")
    if name in TOYS:
        return toy(name, seed)
    if name == "digits":
        return digits()
    if name == "mnist":
        return mnist(data_dir)
    if name == "cifar10":
        return cifar10(data_dir)
    raise ConfigError(f"unknown data {name!r}; valid: {', '.join(NAMES)}, or a path ending in .npy or .npz")
