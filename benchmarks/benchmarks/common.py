"""What the benchmark modules share: one thread, skippable slow cases, and modules a commit may lack.

* One thread (``OMP_NUM_THREADS=1`` before torch is imported, ``torch.set_num_threads(1)`` in every
  setup) so that a 2-core machine gives stable figures, and the CPU allocator keeping freed memory
  (:func:`one_thread`).
* ``FLOWSPEC_BENCH_SKIP_SLOW=1`` skips the cases marked slow (asv reports them as skipped, ``n/a``).
* A benchmark whose flow family is missing from the commit under test (``asv continuous`` against
  an older commit) is skipped, unless ``FLOWSPEC_BENCH_STRICT=1``, which the smoke check sets so
  that a missing family at HEAD is an error.
* The comparison scripts of ``benchmarks/`` (``compare.py``, ``timing.py``) are loaded through
  :func:`flowspec.bench.load_benchmark` (:func:`require_benchmark`) from the folder above this
  suite (``FLOWSPEC_BENCHMARKS``): asv installs each commit's flowspec from a wheel, which has no
  checkout around it. A commit without ``flowspec.bench``, or without a module the script imports,
  skips the benchmark (an error in strict mode).
"""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("FLOWSPEC_BENCHMARKS", str(Path(__file__).resolve().parents[1]))

import importlib  # noqa: E402  (after the thread setting, before torch)
from types import ModuleType  # noqa: E402

import torch  # noqa: E402


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def one_thread() -> None:
    """One thread, and the CPU allocator keeping freed memory where this commit's flowspec can
    (``flowspec.accelerated.memory.retain_freed_memory``, as the comparison commands run)."""
    torch.set_num_threads(1)
    try:
        from flowspec.accelerated.memory import retain_freed_memory
    except ImportError:
        return
    retain_freed_memory()


def skip_if_slow(slow: bool) -> None:
    """Skip (asv: ``NotImplementedError`` in setup) when ``slow`` and slow cases are switched off."""
    if slow and _flag("FLOWSPEC_BENCH_SKIP_SLOW"):
        raise NotImplementedError("slow case skipped (FLOWSPEC_BENCH_SKIP_SLOW is set)")


def require(module: str) -> ModuleType:
    """Import ``module``; skip the benchmark if this commit lacks it (an error in strict mode)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if _flag("FLOWSPEC_BENCH_STRICT") or not module.startswith(exc.name or "\0"):
            raise
        raise NotImplementedError(f"{module} does not exist in this commit") from exc


def require_benchmark(name: str) -> ModuleType:
    """The script ``benchmarks/<name>.py`` through ``flowspec.bench.load_benchmark``; skip the
    benchmark if this commit lacks ``flowspec.bench`` or a flowspec module the script imports (an
    error in strict mode)."""
    bench = require("flowspec.bench")
    try:
        return bench.load_benchmark(name)
    except ModuleNotFoundError as exc:
        if _flag("FLOWSPEC_BENCH_STRICT") or not (exc.name or "").startswith("flowspec"):
            raise
        raise NotImplementedError(f"benchmarks/{name}.py needs {exc.name}, which this commit lacks") from exc


def require_kind(kind: str, *, layer: str = "accelerated") -> None:
    """Skip the benchmark if this commit lacks ``kind`` in ``layer`` (an error in strict mode)."""
    if layer == "accelerated":
        from flowspec.accelerated import MODULES as known
    else:
        from flowspec import registry

        known = registry.names()
    if kind not in known:
        if _flag("FLOWSPEC_BENCH_STRICT"):
            raise LookupError(f"flowspec {layer} has no kind {kind!r}")
        raise NotImplementedError(f"kind {kind!r} is not in this commit's {layer} layer")
