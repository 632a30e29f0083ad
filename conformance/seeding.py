"""The one place randomness is seeded.

Every random draw in the suite and the project's tests derives from :func:`base_seed` (``FLOWSPEC_SEED``) and a tuple
of keys (kind, property, example, ...), so a run is reproducible and two checks never share a
stream by accident. Set ``FLOWSPEC_SEED`` in the environment to explore other streams.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import random
from typing import Iterator

import numpy as np

DEFAULT_SEED = 20261122


def base_seed() -> int:
    """``FLOWSPEC_SEED`` from the environment (default :data:`DEFAULT_SEED`), read at each call so
    that a bad value is reported where a seed is first needed, as a clear error."""
    text = os.environ.get("FLOWSPEC_SEED", str(DEFAULT_SEED))
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"FLOWSPEC_SEED must be an integer, got {text!r}") from None


def seed_for(*keys: object) -> int:
    """A 63-bit seed derived from :func:`base_seed` and ``keys`` (stable across runs and platforms)."""
    digest = hashlib.sha256(repr((base_seed(),) + keys).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def rng(*keys: object) -> np.random.Generator:
    """A NumPy generator for ``keys`` (see :func:`seed_for`)."""
    return np.random.default_rng(seed_for(*keys))


@contextlib.contextmanager
def global_generators(seed: int) -> Iterator[None]:
    """NumPy's and Python's global generators seeded from ``seed`` for the duration (an implementation
    that draws from them, rather than from a generator the suite passes, then repeats), their
    previous states restored after."""
    saved_numpy, saved_python = np.random.get_state(), random.getstate()
    np.random.seed(seed % 2**32)
    random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(saved_numpy)
        random.setstate(saved_python)
