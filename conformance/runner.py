"""Runs properties against an adapter and collects one :class:`Result` per (kind, property, dtype, device)."""
from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

from hypothesis import given, seed, settings, strategies as st
from hypothesis.errors import Flaky, Unsatisfiable, UnsatisfiedAssumption

from . import covering, namespace, profiles, strategies
from .adapter import Adapter, Capabilities, Declined, NotSupported
from .conventions import check_declared
from .property import PROPERTIES, CheckContext, Inconclusive, Property, PropertyFailure, declared
from .seeding import global_generators, seed_for
from .view import KindView

STATUSES = ("passed", "failed", "convention", "not_claimed", "inconclusive", "not_supported", "skipped")
"""Verdicts: ``convention`` — holds by a convention the adapter declares (:mod:`.conventions`), not
by flowspec's rule; ``not_claimed`` — a bad-input property failed for an implementation that does not
claim to validate input (its message lists what passed through, as information)."""


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
    declined: dict[str, int] = field(default_factory=dict)
    conventions: list[str] = field(default_factory=list)
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
    """Run ``prop`` for one kind, dtype and device under the hypothesis ``profile``; the adapter is
    seen through its :class:`~.view.KindView` for ``kind``, and the global generators of numpy and
    Python's ``random`` are seeded for the run (an implementation drawing from them repeats)."""
    adapter = KindView(adapter, kind)
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
    conventions: set[str] = set()

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
        ctx = CheckContext(adapter, kind, dtype, device, data, errors, conventions=conventions)
        try:
            prop.check(ctx)
        except Declined as exc:
            result.declined[str(exc)] = result.declined.get(str(exc), 0) + 1
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
        seed_value = seed_for(kind, prop.name, dtype, device)
        with adapter.checking(seed_value), global_generators(seed_value), covering.active(plan):
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
    except Unsatisfiable as exc:
        result.status = "failed"
        result.message = (f"no example could be compared: every drawn point was rejected (a condition number "
                          f"beyond the dtype's cap, a singular or non-smooth finite-difference Jacobian); "
                          f"{_message(exc)}")
    except PropertyFailure as exc:
        result.status, result.message = "failed", _message(exc)
        errors.append((exc.error, exc.tol if exc.tol is not None else 0.0))
    except Exception as exc:  # noqa: BLE001 - an implementation crash is a failure, reported with its message
        result.status, result.message = "failed", _message(exc)
    else:
        if inconclusive:
            result.status, result.message = "inconclusive", inconclusive[0]
    _settle(result, prop, caps, sorted(conventions))
    result.coverage = plan.coverage
    result.seconds = time.perf_counter() - start
    result.max_error, result.tolerance = _worst(errors)
    return result


def _settle(result: Result, prop: Property, caps: Capabilities, conventions: list[str]) -> None:
    """The final verdict from what the examples declined, claims and the conventions they used."""
    declined = sum(result.declined.values())
    if result.status == "passed" and declined and declined >= result.examples:
        reasons = "; ".join(f"{why} ({n}×)" for why, n in result.declined.items())
        result.status, result.message = "not_supported", f"every example was declined: {reasons}"
    elif result.status == "failed" and prop.claim == "validation" and not caps.validates_input:
        result.status = "not_claimed"
        result.message = f"the implementation does not claim to validate input; for information: {result.message}"
    elif result.status == "passed" and conventions:
        result.status, result.conventions = "convention", conventions
        result.message = f"holds by the declared convention{'s' if len(conventions) > 1 else ''} {', '.join(conventions)}"


def applicable(kinds: Iterable[str] | None, properties: Iterable[str] | None,
               adapter: Adapter | None = None) -> list[tuple[str, Property]]:
    """(kind, property) pairs to run: kinds with strategies (registered ones and, with ``adapter``,
    the foreign kinds it declares), properties that apply to them. An unknown kind, property or
    convention, or a per-kind declaration for a kind the adapter does not have, is a
    :class:`SelectionError`."""
    from . import load_families

    load_families()
    known = namespace.names(adapter)
    if adapter is not None:
        _check_declarations(adapter)
    unknown = sorted(set(kinds or ()) - set(known))
    if unknown:
        extra = "" if adapter is None else f" (registered, or declared by {adapter.name})"
        raise SelectionError(f"unknown kinds {unknown}{extra}; known: {', '.join(known)}")
    missing = sorted(set(properties or ()) - set(PROPERTIES))
    if missing:
        raise SelectionError(f"unknown properties {missing}; known: {', '.join(sorted(PROPERTIES))}")
    kind_names = [k for k in (kinds or known) if strategies.has_specs(k)]
    props = [PROPERTIES[p] for p in properties] if properties else list(PROPERTIES.values())
    return [(k, p) for k in kind_names for p in props if p.applies(k) and not _needs_reference(k, p)]


def _needs_reference(kind: str, prop: Property) -> bool:
    """A white-box property of a foreign kind, which has no reference: never applicable."""
    return namespace.is_foreign(kind) and "white_box" in prop.requires


def _check_declarations(adapter: Adapter) -> None:
    caps = adapter.capabilities()
    try:
        check_declared(caps.conventions)
    except ValueError as exc:
        raise SelectionError(f"{adapter.name}: {exc}") from None
    stray = sorted((set(caps.without) | set(caps.conventions)) - namespace.kinds_of(adapter))
    if stray:
        raise SelectionError(f"{adapter.name} declares capabilities or conventions for kinds it does not implement: "
                             f"{stray}")


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

    tasks = [(kind, prop.name, dtype, device, profile) for kind, prop in applicable(kinds, properties, adapter)
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
