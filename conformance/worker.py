"""Properties with a time limit: each runs in a worker process that is killed and replaced on timeout.

A hang inside native code (a kernel that never returns, a solver stuck in C) cannot be interrupted
in-process, so :class:`Worker` forks a child process that runs properties one at a time through
:func:`~.runner.run_one` and sends each :class:`~.runner.Result` back over a pipe. When a result
does not arrive within the limit, the child is killed, the property is reported ``failed`` with
"timed out", and a fresh child is forked for the next property.

The child is forked from the parent (POSIX ``fork``), so it inherits the adapter object as it is —
nothing needs to be picklable but the results. The parent itself never evaluates a flow while a
worker is in use, so a device runtime (CUDA) is first initialised in a child, never before a
fork. Cost: one fork per worker (copy-on-write, milliseconds) and one more after each timeout.
"""
from __future__ import annotations

import multiprocessing
from multiprocessing.connection import Connection
from typing import Any

from .adapter import Adapter
from .property import PROPERTIES
from .runner import Result, run_one

Task = tuple[str, str, str, str, str]  # kind, property, dtype, device, profile


def _serve(adapter: Adapter, conn: Connection) -> None:
    """The child's loop: run each task received, send its result, stop on ``None``."""
    while True:
        task = conn.recv()
        if task is None:
            return
        kind, name, dtype, device, profile = task
        conn.send(run_one(adapter, PROPERTIES[name], kind, dtype, device, profile))


class Worker:
    """A forked child that runs properties, each within ``timeout`` seconds (module docstring)."""

    def __init__(self, adapter: Adapter, timeout: float):
        if not timeout > 0:
            raise ValueError(f"the time limit per property must be > 0 seconds, got {timeout!r}")
        self.adapter, self.timeout = adapter, float(timeout)
        self._context = multiprocessing.get_context("fork")
        self._process: Any = None
        self._conn: Connection | None = None

    def _start(self) -> None:
        parent, child = self._context.Pipe()
        self._process = self._context.Process(target=_serve, args=(self.adapter, child), daemon=True)
        self._process.start()
        child.close()
        self._conn = parent

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.join()
        if self._conn is not None:
            self._conn.close()
        self._process = self._conn = None

    def run(self, task: Task) -> Result:
        """The result of ``task``; ``failed`` with "timed out" (or "worker process died") otherwise."""
        if self._process is None or not self._process.is_alive():
            self._kill()
            self._start()
        kind, name, dtype, device, _ = task
        self._conn.send(task)
        try:
            if self._conn.poll(self.timeout):
                return self._conn.recv()
            message = f"timed out after {self.timeout:g} s (the worker process was killed; the run continues)"
        except EOFError:
            self._process.join(timeout=5)
            message = f"the worker process died (exit code {self._process.exitcode}) while checking the property"
        self._kill()
        return Result(kind, name, dtype, device, "failed", message=message, seconds=self.timeout)

    def close(self) -> None:
        """Stop the child (it ends its loop on ``None``; killed if it does not)."""
        if self._process is not None and self._process.is_alive():
            try:
                self._conn.send(None)
                self._process.join(timeout=5)
            except (BrokenPipeError, OSError):
                pass
        self._kill()

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
