"""Memory of one step (a training step, an evaluation pass), measured so that a regression shows.

Two measures, both relative to the state before the step, so that neither is swamped by what
importing torch or holding the model costs (the process's resident set size is):

* **saved for backward** — the bytes of every distinct storage that autograd saves for the
  backward pass during the step (``torch.autograd.graph.saved_tensors_hooks``), leaving out
  storages the caller names as resident (the model's parameters and buffers). Tensors a custom
  ``autograd.Function`` keeps as plain attributes of its context are not seen by these hooks; the
  allocator peak below covers them.
* **allocator peak** — the largest amount of memory held at any moment of the step above what was
  held when it started: on CUDA from the caching allocator's statistics
  (``torch.cuda.max_memory_allocated``), on the CPU from the allocation and free events that
  ``torch.profiler`` records with ``profile_memory=True``, summed in time order (the step runs
  twice in one profile and the second run is measured; see :func:`_cpu_peak_bytes`).

:func:`measure` runs the step separately for each measure (the saved-tensor count keeps the
storages it counts alive, which must not inflate the peak).

**The CPU allocator** (:func:`retain_freed_memory`): torch's CPU tensors come from the C library's
``malloc``. glibc serves blocks above its mmap threshold (128 KiB at first, raised dynamically to at
most 32 MiB) with fresh pages from the kernel and, by default, returns freed memory at the top of
its heap to the kernel beyond 128 KiB, so a step that allocates and frees tensors of a few MiB each
(a batch of hidden activations) pays page faults on every allocation: on a QuAR conv block at
batch 256 the masked network took 10.6 ms with the defaults and 4.0 ms with freed memory kept (1
thread). ``flowspec train`` and the ``flowspec bench`` commands keep it (both contenders of a
comparison run in that one process); the process then holds on to the memory of its largest step
rather than returning it between steps. The allocator peaks measured here do not depend on it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

Step = Callable[[], Any]


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's largest mmap threshold on 64-bit systems
TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes an int
_retained = False  # whether retain_freed_memory took effect in this process


def retain_freed_memory() -> bool:
    """Keep memory that torch frees on the CPU in the process for the next allocation rather than
    return it to the kernel (glibc: ``mallopt`` with the mmap threshold at its 32 MiB maximum and the
    trim threshold at 2 GiB; module docstring). Returns whether it took effect: False where the C
    library is not glibc (nothing is changed there; other allocators keep their own policy)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        libc = None
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    global _retained
    _retained = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _retained


def freed_memory_retained() -> bool:
    """Whether :func:`retain_freed_memory` took effect in this process."""
    return _retained


@dataclass(frozen=True)
class MemoryReport:
    """Bytes saved for backward and allocator peak above the pre-step baseline, for one step."""

    saved_bytes: int
    peak_bytes: int
    device: str


def _storage_key(t: Tensor) -> tuple[str, int]:
    return str(t.device), t.untyped_storage().data_ptr()


def saved_tensor_bytes(step: Step, *, resident: Iterable[Tensor] = ()) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``step()`` runs.

    Storages of ``resident`` tensors (parameters, buffers: memory the step does not add) are not
    counted. Each storage is counted once however many saved tensors view it; the storages are kept
    alive until the count is done, so that a freed address reused by a new tensor is not mistaken
    for the old one.
    """
    excluded = {_storage_key(t) for t in resident}
    seen: dict[tuple[str, int], Any] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        key = (str(t.device), storage.data_ptr())
        if key not in excluded and key not in seen:
            seen[key] = storage
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(storage.nbytes() for storage in seen.values())


_MARK = "flowspec.memory.measured_step"


def _cpu_peak_bytes(step: Step) -> int:
    """Peak of the CPU allocation events of the second of two runs of ``step`` in one profile.

    The profiler drops the free of a block allocated before profiling started, so a step that
    replaces state from the previous step (gradients, optimiser state, stored estimates) would be
    charged for the new copy without being credited for freeing the old one. Running the step once
    before the measured run, inside the same profile, makes those blocks known.
    """
    from torch.profiler import ProfilerActivity, profile, record_function

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
        with record_function(_MARK):
            step()
    events = prof.profiler.kineto_results.events()
    window = next(e for e in events if e.name() == _MARK)
    allocations = sorted((e for e in events if e.name() == "[memory]"), key=lambda e: e.start_ns())
    held = sum(int(e.nbytes()) for e in allocations if e.start_ns() < window.start_ns())
    inside = [int(e.nbytes()) for e in allocations if window.start_ns() <= e.start_ns() <= window.end_ns()]
    if not inside:
        raise RuntimeError(
            "torch.profiler recorded no CPU allocation events for this step, so its memory cannot be "
            "measured (a step that allocates nothing is not a benchmark)"
        )
    baseline = peak = held
    for nbytes in inside:
        held += nbytes
        peak = max(peak, held)
    return peak - baseline


def _cuda_peak_bytes(step: Step, device: torch.device) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    baseline = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - baseline


def peak_bytes(step: Step, device: torch.device | str = "cpu") -> int:
    """The allocator's peak above the pre-step baseline while ``step()`` runs on ``device``
    (on the CPU the step runs twice: once to make the blocks it frees known, once measured)."""
    device = torch.device(device)
    if device.type == "cuda":
        return _cuda_peak_bytes(step, device)
    if device.type == "cpu":
        return _cpu_peak_bytes(step)
    raise ValueError(f"memory can be measured on cpu or cuda devices, not {device}")


def measure(step: Step, device: torch.device | str = "cpu", *, resident: Iterable[Tensor] = ()) -> MemoryReport:
    """Both measures of the module docstring for ``step`` (which runs three times on the CPU, twice on CUDA)."""
    saved = saved_tensor_bytes(step, resident=resident)
    return MemoryReport(saved_bytes=saved, peak_bytes=peak_bytes(step, device), device=str(torch.device(device)))


def model_tensors(module: torch.nn.Module) -> list[Tensor]:
    """A module's parameters and buffers: the resident tensors of :func:`saved_tensor_bytes`."""
    return list(module.parameters()) + list(module.buffers())
