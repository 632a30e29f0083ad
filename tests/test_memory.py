"""The memory measures: each catches a deliberately memory-hungry step, to the byte."""
from __future__ import annotations

import pytest
import torch

from flowspec.accelerated import memory
from flowspec.conformance.seeding import seed_for

HOG = 1 << 20  # bytes the hungry steps add


def _weights() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed_for("memory"))
    w = torch.randn(64, 64, dtype=torch.float64, generator=g).requires_grad_()
    x = torch.randn(32, 64, dtype=torch.float64, generator=g)
    return w, x


def _lean(w: torch.Tensor, x: torch.Tensor) -> None:
    torch.tanh(x @ w).sum().backward()


def _holds_extra(w: torch.Tensor, x: torch.Tensor) -> None:
    """The lean step with HOG bytes held across it (not saved for backward)."""
    hog = torch.empty(HOG, dtype=torch.uint8, device=x.device)
    _lean(w, x)
    del hog


def _saves_extra(w: torch.Tensor, x: torch.Tensor) -> None:
    """The lean step plus a branch that saves HOG bytes for backward."""
    a = torch.ones(HOG // 8, dtype=torch.float64, requires_grad=True)
    (torch.tanh(x @ w).sum() + torch.sin(a).sum()).backward()


def test_peak_catches_memory_held_during_the_step() -> None:
    w, x = _weights()
    lean = memory.peak_bytes(lambda: _lean(w, x))
    hungry = memory.peak_bytes(lambda: _holds_extra(w, x))
    assert lean > 0
    assert hungry - lean == HOG


def test_peak_credits_state_that_the_step_frees_and_replaces() -> None:
    # gradients, optimiser state and stored estimates are replaced every step: freeing the old copy
    # before allocating the new one costs nothing above the baseline, allocating first costs HOG
    state = {"t": torch.empty(HOG, dtype=torch.uint8)}

    def free_then_allocate() -> None:
        del state["t"]
        state["t"] = torch.empty(HOG, dtype=torch.uint8)

    def allocate_then_free() -> None:
        state["t"] = torch.empty(HOG, dtype=torch.uint8)

    assert memory.peak_bytes(free_then_allocate) == 0
    assert memory.peak_bytes(allocate_then_free) == HOG


def test_saved_bytes_catch_memory_saved_for_backward() -> None:
    w, x = _weights()
    lean = memory.saved_tensor_bytes(lambda: _lean(w, x), resident=[w])
    hungry = memory.saved_tensor_bytes(lambda: _saves_extra(w, x), resident=[w])
    held = memory.saved_tensor_bytes(lambda: _holds_extra(w, x), resident=[w])
    # x (the matmul's input) and tanh's output are saved: 2 · 32 · 64 float64 entries.
    assert lean == 2 * 32 * 64 * 8
    assert hungry - lean == HOG
    assert held == lean  # memory that is only held, not saved, is the peak's business


def test_saved_bytes_count_each_storage_once_and_skip_resident_tensors() -> None:
    w, _ = _weights()
    step = lambda: (w * w).sum().backward()  # noqa: E731  (w is saved twice by the product)
    assert memory.saved_tensor_bytes(step) == w.nbytes
    assert memory.saved_tensor_bytes(step, resident=[w]) == 0


def test_measure_reports_both_and_the_device() -> None:
    w, x = _weights()
    report = memory.measure(lambda: _saves_extra(w, x), "cpu", resident=memory.model_tensors(torch.nn.Linear(2, 2)))
    assert report.device == "cpu"
    assert report.saved_bytes == memory.saved_tensor_bytes(lambda: _saves_extra(w, x))
    assert report.peak_bytes >= HOG


def test_a_step_without_allocations_cannot_be_measured() -> None:
    with pytest.raises(RuntimeError, match="no CPU allocation events"):
        memory.peak_bytes(lambda: None)
    with pytest.raises(ValueError, match="cpu or cuda"):
        memory.peak_bytes(lambda: None, "meta")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_peak_catches_memory_held_during_the_step() -> None:
    w, x = (t.detach().cuda().requires_grad_(t.requires_grad) for t in _weights())
    lean = memory.peak_bytes(lambda: _lean(w, x), "cuda")
    hungry = memory.peak_bytes(lambda: _holds_extra(w, x), "cuda")
    assert hungry - lean == HOG


def test_freed_memory_is_retained_on_glibc_and_the_header_says_so() -> None:
    """``retain_freed_memory`` takes effect with glibc (mallopt accepts both settings) and the
    comparison header reports it; elsewhere it reports that nothing changed."""
    import platform

    from flowspec.bench import load_benchmark

    done = memory.retain_freed_memory()
    assert done == (platform.libc_ver()[0] == "glibc") and memory.freed_memory_retained() == done
    header = load_benchmark("timing").hardware("cpu")
    assert header["cpu_allocator"] == ("keeps freed memory" if done else "C library default")
