"""Timing, statistics and the hardware header shared by the comparisons of ``benchmarks/``.

* :func:`interleaved` times several calls in rounds: in every round each call is measured once, in
  a rotating order, so that a change of load on a shared machine affects every contender alike.
  A measurement (:func:`measure`) is the mean of ``number`` calls with garbage collection off,
  bracketed by device synchronisations; ``number`` (:func:`calls_per_measurement`) is the same for
  every contender of a case, chosen so that one measurement of the fastest takes ``min_time``.
* :func:`round_ratios` divides two contenders' times round by round; :func:`summarize` reports
  the median ratio with its spread, the :data:`LOW_Q`–:data:`HIGH_Q` percentiles of the per-round
  ratios, and a :func:`verdict` against a target: **met** only when the whole spread is on the
  target's side, **missed** only when the whole spread is on the other side, **unclear** otherwise.
  Fewer than :data:`MIN_ROUNDS` rounds give no usable spread; the commands refuse them.
* :func:`hardware` is the header every comparison prints and writes with its table: CPU model,
  thread count, CUDA device, torch and Python versions.
* :func:`write_json` and :func:`script_main` are the scripts' shared ends: the ``--json`` file, and
  ``python benchmarks/<name>.py`` running the same options and command as ``flowspec bench``.

Scripts load this module by path: ``from flowspec.bench import load_benchmark;
timing = load_benchmark("timing")``.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

MIN_ROUNDS = 10
LOW_Q, HIGH_Q = 0.10, 0.90
VERDICTS = ("met", "missed", "unclear")


# ----------------------------------------------------------------------------- timing

def sync_for(device: str | torch.device) -> Callable[[], None]:
    """A call that waits for ``device``'s queued work: ``torch.cuda.synchronize`` on CUDA, nothing on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def measure(fn: Callable[[], None], number: int, sync: Callable[[], None]) -> float:
    """Mean seconds of ``number`` calls of ``fn`` (garbage collection off, as timeit does)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        sync()
        start = time.perf_counter()
        for _ in range(number):
            fn()
        sync()
        return (time.perf_counter() - start) / number
    finally:
        if enabled:
            gc.enable()


def calls_per_measurement(seconds: float, min_time: float, cap: int = 1000) -> int:
    """How many calls make one measurement of at least ``min_time`` for a call of ``seconds``."""
    return max(1, min(cap, math.ceil(min_time / max(seconds, 1e-9))))


def interleaved(calls: dict[str, Callable[[], None]], rounds: int, min_time: float,
                sync: Callable[[], None] = lambda: None, warmup: int = 2, *,
                on_round: Callable[[int], None] | None = None) -> dict[str, list[float]]:
    """Per-call seconds of every call in ``rounds`` rounds, each round timing every call once in a
    rotating order, after ``warmup`` untimed calls each and one calibrating call each.

    ``on_round(r)``, when given, runs before round ``r`` is timed (not inside a measurement), so
    that a call which records its own parts can file them under the round they belong to.
    """
    names = list(calls)
    for name in names:
        for _ in range(warmup):
            calls[name]()
    number = calls_per_measurement(min(measure(calls[n], 1, sync) for n in names), min_time)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        if on_round is not None:
            on_round(r)
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(measure(calls[name], number, sync))
    return times


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """File descriptor 2 to /dev/null: torch's profiler logs its start and stop there from C++."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# ----------------------------------------------------------------------------- statistics

@dataclass(frozen=True)
class Summary:
    """Median ratio over rounds, its 10th–90th percentile spread, and the verdict."""

    median: float
    low: float
    high: float
    verdict: str


def round_ratios(peer: Sequence[float], flowspec: Sequence[float]) -> list[float]:
    """peer time / flowspec time, round by round (> 1: flowspec faster)."""
    if len(peer) != len(flowspec):
        raise ValueError(f"{len(peer)} peer rounds against {len(flowspec)} flowspec rounds")
    return [p / f for p, f in zip(peer, flowspec)]


def verdict(low: float, high: float, target: float = 1.0, *, at_most: bool = False) -> str:
    """The verdict of a spread [``low``, ``high``] against ``target``.

    A target to reach (``at_most`` false: ratio ≥ target): met when low ≥ target, missed when
    high < target. A target not to exceed (``at_most``: ratio ≤ target): met when high ≤ target,
    missed when low > target. Unclear whenever the spread straddles the target.
    """
    if low > high:
        raise ValueError(f"the spread's low end {low} lies above its high end {high}")
    if at_most:
        return "met" if high <= target else "missed" if low > target else "unclear"
    return "met" if low >= target else "missed" if high < target else "unclear"


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(:data:`LOW_Q` percentile, median, :data:`HIGH_Q` percentile) of ``values``."""
    if not len(values):
        raise ValueError("no rounds to summarise")
    low, median, high = np.percentile(np.asarray(values, dtype=float), [100 * LOW_Q, 50, 100 * HIGH_Q])
    return float(low), float(median), float(high)


def summarize(ratios: Sequence[float], target: float = 1.0, *, at_most: bool = False) -> Summary:
    """The median of the per-round ratios, their 10th and 90th percentiles, and the verdict
    against ``target`` (:func:`verdict`)."""
    low, median, high = spread(ratios)
    return Summary(median, low, high, verdict(low, high, target, at_most=at_most))


# ----------------------------------------------------------------------------- hardware

def _cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` where there is one, else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def configure(device: str | torch.device, threads: int) -> None:
    """The process settings every comparison runs under: ``threads`` CPU threads (on the CPU) and the
    CPU allocator keeping freed memory (:func:`flowspec.accelerated.memory.retain_freed_memory`:
    both contenders run in this process under it)."""
    from flowspec.accelerated.memory import retain_freed_memory

    if torch.device(device).type == "cpu":
        torch.set_num_threads(threads)
    retain_freed_memory()


def hardware(device: str | torch.device) -> dict[str, Any]:
    """What a timing depends on: CPU model, torch's CPU threads, whether the CPU allocator keeps freed
    memory (:func:`configure`), the CUDA device (name and CUDA version) when ``device`` is one, and the
    torch and Python versions."""
    from flowspec.accelerated.memory import freed_memory_retained

    device = torch.device(device)
    header: dict[str, Any] = {
        "device": str(device),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cpu_allocator": "keeps freed memory" if freed_memory_retained() else "C library default",
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        header["cuda_device"] = torch.cuda.get_device_name(device)
        header["cuda"] = torch.version.cuda
    return header


def describe_hardware(header: dict[str, Any]) -> str:
    """One line of :func:`hardware`'s header, for the top of a printed table."""
    gpu = f", {header['cuda_device']} (CUDA {header['cuda']})" if "cuda_device" in header else ""
    return (f"{header['cpu']}, {header['threads']} thread(s){gpu}; device {header['device']}; "
            f"CPU allocator: {header.get('cpu_allocator', 'C library default')}; "
            f"torch {header['torch']}, Python {header['python']}")


# ----------------------------------------------------------------------------- the scripts' ends

def write_json(path: str | None, payload: Any) -> None:
    """Write ``payload`` to ``path`` as indented JSON and say so; nothing without a path."""
    if path:
        with open(path, "w") as f:
            json.dump(payload, f, indent=1)
        print(f"wrote {path}")


def script_main(prog: str, doc: str, add_arguments: Callable[[argparse.ArgumentParser], None],
                run_command: Callable[[argparse.Namespace], int], argv: Sequence[str] | None) -> int:
    """``python benchmarks/<prog>.py [options]``: the parser of ``flowspec bench``'s subcommand
    (``add_arguments``, described by the first paragraph of ``doc``), then ``run_command``."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    add_arguments(parser)
    return run_command(parser.parse_args(argv))
