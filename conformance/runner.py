"""Runs properties against an adapter and collects one :class:`Result` per (kind, property, dtype, device)."""
from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

from hypothesis import given, seed, settings, strategies as st
from hypothesis.errors import Flaky, UnsatisfiedAssumption

from flowspec import registry

from . import covering, profiles, strategies
from .adapter import Adapter, NotSupported
from .property import PROPERTIES, CheckContext, Inconclusive, Property, PropertyFailure, declared
from .seeding import seed_for

STATUSES = ("passed", "failed", "inconclusive", "not_supported", "skipped")


class SelectionError(ValueError):
    """``kinds`` or ``properties`` name something the suite does not know."""


class _RunFailed(Exception):
    """Raised by every example after the first failure of a covering run (see :func:`run_one`)."""


@dataclass
class Result:
    """The verdict on one property for one kind, dtype and device."""

    kind: str
    property: str
    dtype: str
    device: str
    status: str
    max_error: float | None = None
    tolerance: float | None = None
    message: str = ""
    seconds: float = 0.0
    examples: int = 0
    coverage: covering.Coverage = field(default_factory=covering.Coverage, repr=False)

    def to_json(self) -> dict:
        record = asdict(self)
        record["coverage"] = self.coverage.to_json()
        return record


def _message(exc: BaseException) -> str:
    notes = [n for n in getattr(exc, "__notes__", []) if n.strip()]
    text = f"{type(exc).__name__}: {exc}"
    return "\n".join([text] + notes)


def _worst(errors: list[tuple[float, float]]) -> tuple[float | None, float | None]:
    if not errors:
        return None, None
    ratio = lambda et: et[0] / et[1] if et[1] > 0 else (0.0 if et[0] == 0 else float("inf"))  # noqa: E731
    return max(errors, key=ratio)


def _examples(kind: str, profile: str) -> int:
    """The profile's example count, or under a covering profile the smaller count a costly kind
    declares (``extras["ci_examples"]``, at least as many as its largest axis has values, so every
    run still covers every axis drawn once per example; ``tests/test_coverage.py`` checks it)."""
    count = profiles.get(profile).max_examples
    own = declared(kind, "ci_examples") if profiles.covering(profile) else None
    return count if own is None else min(count, int(own))


def run_one(adapter: Adapter, prop: Property, kind: str, dtype: str, device: str, profile: str = "ci") -> Result:
    """Run ``prop`` for one kind, dtype and device under the hypothesis ``profile``."""
    caps = adapter.capabilities()
    result = Result(kind, prop.name, dtype, device, "passed")
    why_not = (
        f"adapter does not implement kind {kind!r}" if kind not in caps.kinds
        else f"adapter does not support dtype {dtype}" if dtype not in caps.dtypes
        else f"missing capabilities: {', '.join(prop.missing(adapter))}" if prop.missing(adapter)
        else None
    )
    if why_not:
        result.status, result.message = "not_supported", why_not
        return result
    if device not in caps.devices:
        result.status, result.message = "skipped", f"device {device} is not available"
        return result
    errors: list[tuple[float, float]] = []
    inconclusive: list[str] = []
    plan = covering.Plan(kind, (kind, prop.name, dtype, device), pinned=profiles.covering(profile))
    caught: list[BaseException] = []

    @settings(profiles.get(profile), max_examples=_examples(kind, profile))
    @seed(seed_for("examples", kind, prop.name, dtype, device))
    @given(st.data())
    def body(data) -> None:
        covering.begin_example(data)
        if caught:
            # The run has failed. Ending it with an exception that this example raises right after its
            # first draw keeps hypothesis' replay of it consistent; the failure is re-raised below.
            raise _RunFailed()
        result.examples += 1
        ctx = CheckContext(adapter, kind, dtype, device, data, errors)
        try:
            prop.check(ctx)
        except Inconclusive as exc:
            inconclusive.append(str(exc))
        except UnsatisfiedAssumption:
            raise
        except Exception as exc:  # noqa: BLE001 - re-raised below, outside hypothesis
            exc.add_note(f"example {result.examples}: {ctx.describe()}")
            if not plan.pinned:
                raise  # hypothesis replays and shrinks it (the thorough profile)
            caught.append(exc)  # pinned draws are not hypothesis' own: a replay would draw others

    start = time.perf_counter()
    try:
        with adapter.checking(seed_for(kind, prop.name, dtype, device)), covering.active(plan):
            try:
                body()
            except _RunFailed:
                pass
            except Flaky:  # a later example re-drew an earlier draw after a caught failure: report the failure
                if not caught:
                    raise
            if caught:
                raise caught[0]
    except NotSupported as exc:
        result.status, result.message = "not_supported", str(exc)
    except PropertyFailure as exc:
        result.status, result.message = "failed", _message(exc)
        errors.append((exc.error, exc.tol if exc.tol is not None else 0.0))
    except Exception as exc:  # noqa: BLE001 - an implementation crash is a failure, reported with its message
        result.status, result.message = "failed", _message(exc)
    else:
        if inconclusive:
            result.status, result.message = "inconclusive", inconclusive[0]
    result.coverage = plan.coverage
    result.seconds = time.perf_counter() - start
    result.max_error, result.tolerance = _worst(errors)
    return result


def applicable(kinds: Iterable[str] | None, properties: Iterable[str] | None) -> list[tuple[str, Property]]:
    """(kind, property) pairs to run: registered kinds with strategies, properties that apply to them."""
    from . import load_families

    load_families()
    unknown = sorted(set(kinds or ()) - set(registry.names()))
    if unknown:
        raise SelectionError(f"unknown kinds {unknown}; known: {', '.join(registry.names())}")
    missing = sorted(set(properties or ()) - set(PROPERTIES))
    if missing:
        raise SelectionError(f"unknown properties {missing}; known: {', '.join(sorted(PROPERTIES))}")
    kind_names = [k for k in (kinds or registry.names()) if strategies.has_specs(k)]
    props = [PROPERTIES[p] for p in properties] if properties else list(PROPERTIES.values())
    return [(k, p) for k in kind_names for p in props if p.applies(k)]


def run(
    adapter: Adapter,
    *,
    kinds: Iterable[str] | None = None,
    properties: Iterable[str] | None = None,
    dtypes: Iterable[str] = ("float64", "float32"),
    devices: Iterable[str] = ("cpu",),
    profile: str = "ci",
    progress: Callable[[Result], None] | None = None,
    timeout: float | None = None,
) -> list[Result]:
    """Run the suite; ``progress`` is called with each result as it is produced. With a ``timeout``
    (seconds per property) every property runs in a worker process that is killed and replaced
    when it overruns (:mod:`.worker`); the property is then ``failed`` with "timed out"."""
    from .worker import Worker

    tasks = [(kind, prop.name, dtype, device, profile) for kind, prop in applicable(kinds, properties)
             for dtype in dtypes for device in devices]
    results = []
    with contextlib.ExitStack() as stack:
        worker = None if timeout is None else stack.enter_context(Worker(adapter, timeout))
        for task in tasks:
            kind, name, dtype, device, _ = task
            result = run_one(adapter, PROPERTIES[name], kind, dtype, device, profile) if worker is None \
                else worker.run(task)
            results.append(result)
            if progress:
                progress(result)
    return results
