"""Data sets of ``flowspec train``: toys, digits, MNIST/CIFAR-10 files, user arrays, clear refusals."""
from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from flowspec import ConfigError
from flowspec.accelerated import data
from flowspec.conformance.seeding import rng


@pytest.mark.parametrize("name", list(data.TOYS))
def test_toys_are_seeded_2d_and_finite(name: str) -> None:
    a, b, c = data.toy(name, 3, (500, 100)), data.toy(name, 3, (500, 100)), data.toy(name, 4, (500, 100))
    assert a.train.shape == (500, 2) and a.test.shape == (100, 2) and a.n_bins is None
    assert torch.equal(a.train, b.train) and not torch.equal(a.train, c.train)
    assert not torch.equal(a.train[:100], a.test)  # the test split has its own seed
    assert bool(torch.isfinite(a.train).all())


def test_toy_shapes_follow_their_formulas() -> None:
    board = data.checkerboard(4000, torch.Generator().manual_seed(0))
    assert bool(((torch.floor(board[:, 0]) + torch.floor(board[:, 1])) % 2 == 0).all())  # black squares only
    assert bool((board.abs() <= 2).all())
    radius = data.rings(4000, torch.Generator().manual_seed(0)).norm(dim=1)
    nearest = torch.round(radius / 0.8).clamp(1, 4)
    assert float((radius - 0.8 * nearest).abs().max()) < 0.4 and set(nearest.tolist()) == {1.0, 2.0, 3.0, 4.0}
    centres = data.eight_gaussians(4000, torch.Generator().manual_seed(0))
    angle = torch.remainder(torch.atan2(centres[:, 1], centres[:, 0]) / (2 * torch.pi / 8), 1.0)
    assert float(centres.norm(dim=1).mean()) == pytest.approx(2.0, abs=0.05)
    assert float(torch.minimum(angle, 1 - angle).mean()) < 0.15  # clustered on the eight directions (uniform: 0.25)
    moons = data.moons(4000, torch.Generator().manual_seed(0))
    assert float(moons.mean(0).abs().max()) < 0.1  # centred


def test_digits_split_and_levels() -> None:
    d = data.load("digits")
    assert d.train.shape == (1500, 1, 8, 8) and d.test.shape == (297, 1, 8, 8)
    assert d.n_bins == 17 and d.is_image and d.dim == 64
    both = torch.cat([d.train, d.test])
    assert bool((both == torch.round(both)).all()) and float(both.min()) == 0 and float(both.max()) == 16


def _idx(path: Path, images: np.ndarray, compress: bool) -> None:
    raw = b"\0\0\x08\x03" + b"".join(int(n).to_bytes(4, "big") for n in images.shape) + images.tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)


def test_mnist_reads_idx_files_and_names_what_is_missing(tmp_path: Path) -> None:
    images = rng("data", "mnist").integers(0, 256, (5, 28, 28)).astype(np.uint8)
    with pytest.raises(ConfigError, match="train-images-idx3-ubyte .*never downloads"):
        data.load("mnist", data_dir=tmp_path)
    _idx(tmp_path / "train-images-idx3-ubyte", images[:3], compress=False)
    with pytest.raises(ConfigError, match="t10k-images-idx3-ubyte"):
        data.load("mnist", data_dir=tmp_path)
    _idx(tmp_path / "t10k-images-idx3-ubyte", images[3:], compress=True)
    d = data.load("mnist", data_dir=tmp_path)
    assert d.train.shape == (3, 1, 28, 28) and d.n_bins == 256
    assert np.array_equal(d.test.numpy()[:, 0], images[3:])
    (tmp_path / "train-images-idx3-ubyte").write_bytes((tmp_path / "train-images-idx3-ubyte").read_bytes()[:-10])
    with pytest.raises(ConfigError, match="truncated"):
        data.load("mnist", data_dir=tmp_path)


def test_cifar10_reads_pickle_batches(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    r = rng("data", "cifar")
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": r.integers(0, 256, (2, 3072)).astype(np.uint8)}, f)
    with pytest.raises(ConfigError, match="test_batch missing"):
        data.load("cifar10", data_dir=tmp_path)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": r.integers(0, 256, (3, 3072)).astype(np.uint8)}, f)
    d = data.load("cifar10", data_dir=tmp_path)
    assert d.train.shape == (10, 3, 32, 32) and d.test.shape == (3, 3, 32, 32) and d.n_bins == 256


def test_user_arrays_continuous_or_discrete(tmp_path: Path) -> None:
    r = rng("data", "arrays")
    np.save(tmp_path / "float.npy", r.normal(size=(50, 3)))
    np.save(tmp_path / "ints.npy", r.integers(0, 256, (50, 1, 4, 4)))
    np.save(tmp_path / "levels.npy", r.integers(0, 5, (50, 3)).astype(np.float32))
    np.savez(tmp_path / "split.npz", train=r.normal(size=(8, 2)), test=r.normal(size=(4, 2)))
    continuous = data.load(str(tmp_path / "float.npy"))
    assert continuous.n_bins is None and continuous.train.shape == (45, 3) and continuous.test.shape == (5, 3)
    assert data.load(str(tmp_path / "ints.npy")).n_bins == 256  # integer dtype: discrete, 256 levels
    assert data.load(str(tmp_path / "levels.npy"), discrete_levels=5).n_bins == 5
    assert data.load(str(tmp_path / "levels.npy")).n_bins is None  # float dtype without --discrete-levels
    split = data.load(str(tmp_path / "split.npz"))
    assert split.train.shape == (8, 2) and split.test.shape == (4, 2)
    with pytest.raises(ConfigError, match=r"integers in \[0, 3\)"):
        data.load(str(tmp_path / "levels.npy"), discrete_levels=3)
    with pytest.raises(ConfigError, match="does not exist"):
        data.load(str(tmp_path / "nope.npz"))
    with pytest.raises(ConfigError, match="applies to .npy/.npz files only"):
        data.load("moons", discrete_levels=4)
