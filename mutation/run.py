"""Mutation run of one ``accelerated/`` family with the conformance suite as the test.

cosmic-ray does the mutating and the running; this script only prepares a session and reads it::

    python mutation/run.py config FAMILY     # write mutation/config/FAMILY.toml
    python mutation/run.py run FAMILY        # clean run, init, sample, exec, report
    python mutation/run.py report FAMILY     # rewrite mutation/results/FAMILY.json from the session
    python mutation/run.py retest FAMILY     # the report's survivors against the current suite
    python mutation/run.py unit FAMILY       # the survivors left against tests/test_FAMILY.py
    python mutation/run.py table             # the README's score table from mutation/results/

``run`` checks that the unmutated code passes the family's test (exit 0) and times it, lets
``cosmic-ray init`` enumerate every mutant of ``accelerated/FAMILY.py``, keeps a sample of
:data:`SAMPLE_SIZE` of them drawn with :data:`SEED` (the others are recorded as skipped, so
``cosmic-ray exec`` runs only the sample), runs them one at a time, and writes the report.
Everything runs from the repository root with the virtual environment's interpreter.
"""
from __future__ import annotations

import argparse
import ast
import difflib
import json
import random
import re
import shlex
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from cosmic_ray.mutating import mutate_code
from cosmic_ray.plugins import get_operator
from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkItem, WorkResult

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "mutation"
SAMPLE_SIZE = 40
MAX_OCCURRENCES = 2000  # more than any operator occurs in one file of accelerated/
SEED = 20261203
PROPERTY_TIMEOUT_S = 120
# The whole test of one mutant may take this many times the clean run (at least MIN_TIMEOUT_S)
# before cosmic-ray kills it and records a timeout.
TIMEOUT_FACTOR = 4.0
MIN_TIMEOUT_S = 300.0
PYTHON = ".venv/bin/python"
SAMPLING = ("all mutants sorted by operator#occurrence, shuffled with random.Random(SEED); the first "
            "SAMPLE_SIZE that compile and change more than a type annotation")


@dataclass(frozen=True)
class Family:
    """One mutated file and the conformance selection that tests it.

    ``kinds`` empty means: the kinds whose class is defined in the file (see :func:`kinds_of`).
    ``dtypes`` / ``properties`` restrict the run when the full selection is too slow; the README's
    table says so for every family where they are set.
    """

    name: str
    kinds: tuple[str, ...] = ()
    dtypes: tuple[str, ...] = ()
    properties: tuple[str, ...] = ()


# Families in the brief's order of importance; every one runs its kinds in float64 only, because the
# clean runs took over 90 s on the shared 2-core machine (mutation/README.md).
FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family(name, dtypes=("float64",)) for name in (
        "coupling", "autoregressive", "residual", "quar", "spline", "planar", "sylvester", "radial",
        "glow", "actnorm", "conv1x1", "logistic_mixture", "naf", "sos", "umnn", "cnf",
    )
)}


def kinds_json() -> list[dict]:
    """``flowspec kinds --json``: every kind with the dotted path of its accelerated class."""
    out = subprocess.run([PYTHON, "-m", "flowspec", "kinds", "--json"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def module_imports(path: Path) -> set[str]:
    """The sibling modules of ``accelerated/`` that ``path`` imports (anywhere in the file)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                names.add(node.module.split(".")[0])
            elif node.level == 1:
                names.update(a.name for a in node.names)
            elif node.module and node.module.startswith("flowspec.accelerated."):
                names.add(node.module.split(".")[2])
    return names


def importers(family: str) -> set[str]:
    """Modules of ``accelerated/`` that import ``family``, directly or through others."""
    graph = {p.stem: module_imports(p) for p in (ROOT / "accelerated").glob("*.py")}
    found: set[str] = set()
    frontier = {family}
    while frontier:
        new = {m for m, deps in graph.items() if deps & frontier} - found - {family}
        found |= new
        frontier = new
    return found


def kinds_of(family: Family) -> list[str]:
    """The kinds that test ``family``: its own, else those whose module imports the file."""
    if family.kinds:
        return list(family.kinds)
    entries = kinds_json()
    module = lambda e: e["accelerated"].split(".")[2]  # noqa: E731
    own = [e["name"] for e in entries if module(e) == family.name]
    if own:
        return own
    users = importers(family.name)
    found = [e["name"] for e in entries if module(e) in users]
    if not found:
        raise SystemExit(f"no kind uses accelerated/{family.name}.py; give its kinds in FAMILIES")
    return found


def test_command(family: Family) -> str:
    """The conformance selection for one mutant of ``family`` (exit 1 = killed, 0 = survived)."""
    words = [PYTHON, "-m", "flowspec", "conformance", "--kinds", *kinds_of(family)]
    if family.dtypes:
        words += ["--dtypes", *family.dtypes]
    if family.properties:
        words += ["--properties", *family.properties]
    words += ["--quiet", "--timeout", str(PROPERTY_TIMEOUT_S)]
    return shlex.join(words)


def config_path(name: str) -> Path:
    return HERE / "config" / f"{name}.toml"


def session_path(name: str) -> Path:
    return HERE / "sessions" / f"{name}.sqlite"


def result_path(name: str) -> Path:
    return HERE / "results" / f"{name}.json"


def write_config(family: Family, timeout_s: float) -> Path:
    """cosmic-ray's configuration for ``family``: the file, the test command, the time limit."""
    path = config_path(family.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "[cosmic-ray]\n"
        f'module-path = "accelerated/{family.name}.py"\n'
        f"timeout = {timeout_s:.1f}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(test_command(family))}\n\n"
        "[cosmic-ray.distributor]\n"
        'name = "local"\n'
    )
    return path


def configured_command(name: str) -> str:
    """The test command the family's session ran (read back from its config, so that a report
    never imports the code, which may be mutated while another family runs)."""
    return tomllib.loads(config_path(name).read_text())["cosmic-ray"]["test-command"]


def clean_run(family: Family) -> float:
    """Run the family's test on unmutated code; it must pass. Returns its duration in seconds."""
    start = time.monotonic()
    proc = subprocess.run(shlex.split(test_command(family)), cwd=ROOT, capture_output=True, text=True)
    duration = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"the clean run of {family.name} exited {proc.returncode}, not 0:\n{proc.stdout[-3000:]}"
                         f"\n{proc.stderr[-3000:]}")
    return duration


def mutant_key(item: WorkItem) -> str:
    """A name for a mutant that does not depend on cosmic-ray's random job ids."""
    m = item.mutations[0]
    return f"{m.operator_name}#{m.occurrence}"


def committed_source(path: Path | str) -> str:
    """The committed text of ``path`` (the file on disk may hold a mutant)."""
    return subprocess.run(["git", "show", f"HEAD:{path}"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout


def mutated_source(source: str, item: WorkItem) -> str:
    """``source`` with the item's mutation applied in memory, by cosmic-ray."""
    m = item.mutations[0]
    return mutate_code(source, get_operator(m.operator_name)(**m.operator_args), m.occurrence)


def without_annotations(tree: ast.AST) -> str:
    """The dump of ``tree`` with every annotation removed (parameters, returns, annotated names)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.arg):
            node.annotation = None
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            node.returns = None
        elif isinstance(node, ast.AnnAssign):
            node.annotation = ast.Constant(None)
    return ast.dump(tree)


def excluded(source: str, item: WorkItem, original: str | None = None) -> str | None:
    """Why a mutant is left out of the population sampled, or None.

    * ``"does not compile"``: cosmic-ray also rewrites ``**mapping`` unpacking and the bare ``*``
      of keyword-only parameters as binary operators;
    * ``"annotation only"``: the mutant differs from the source only in type annotations, which
      every module of ``accelerated/`` keeps as unevaluated strings (``from __future__ import
      annotations``), so it cannot change any output.

    ``original``, if given, is ``without_annotations(ast.parse(source))``, computed once per file.
    """
    try:
        tree = ast.parse(mutated_source(source, item))
    except SyntaxError:
        return "does not compile"
    if without_annotations(tree) == (original or without_annotations(ast.parse(source))):
        return "annotation only"
    return None


def sample(db: WorkDB, size: int, seed: int) -> tuple[list[str], dict[str, int]]:
    """Keep ``size`` work items and mark the rest as skipped.

    The items are sorted by key (so the draw is a function of the source and cosmic-ray's
    operators only, not of its random job ids) and shuffled with ``seed``; the first ``size`` that
    :func:`excluded` does not rule out are kept. Returns the keys kept and the count excluded by
    each reason over the whole population.
    """
    items = sorted(db.work_items, key=mutant_key)
    random.Random(seed).shuffle(items)
    sources: dict[str, tuple[str, str]] = {}
    reasons: dict[str, int] = {}
    chosen: list[WorkItem] = []
    for item in items:
        path = str(item.mutations[0].module_path)
        if path not in sources:
            source = committed_source(path)
            sources[path] = source, without_annotations(ast.parse(source))
        source, original = sources[path]
        why = excluded(source, item, original)
        if why:
            reasons[why] = reasons.get(why, 0) + 1
        elif len(chosen) < size:
            chosen.append(item)
    keep = {i.job_id for i in chosen}
    rest = [i.job_id for i in items if i.job_id not in keep]
    db.set_multiple_results(rest, WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output="not in the sample"))
    return sorted(mutant_key(i) for i in chosen), reasons


FAILED = re.compile(r"^\[failed\] (\S+) / (\S+) / (\S+) / (\S+):\n    (.*)$", re.MULTILINE)
SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed", re.MULTILINE)


def classify(result: WorkResult) -> tuple[str, list[str]]:
    """``killed``, ``survived``, ``timeout`` or ``crash`` for one result, and the failed checks.

    A timeout is cosmic-ray's limit on the whole test, or every failed property timing out; a
    crash is a test that ended non-zero without the suite's summary line (the mutated module
    did not import, a set-up error), a worker that died, or a mutation cosmic-ray could not run.
    """
    if result.worker_outcome != WorkerOutcome.NORMAL or result.test_outcome == TestOutcome.INCOMPETENT:
        return "crash", []
    if result.test_outcome == TestOutcome.SURVIVED:
        return "survived", []
    output = result.output or ""
    if output == "timeout":
        return "timeout", []
    failed = [(f"{k}/{p}/{d}/{dev}", msg) for k, p, d, dev, msg in FAILED.findall(output)]
    if not SUMMARY.search(output):
        return "crash", []
    names = [name for name, _ in failed]
    if failed and all(msg.startswith("timed out") for _, msg in failed):
        return "timeout", names
    if any("worker process died" in msg for _, msg in failed) and len(failed) == sum(
            "worker process died" in msg for _, msg in failed):
        return "crash", names
    return "killed", names


def compiles(item: WorkItem) -> bool:
    """Whether the mutant is valid Python (the sample leaves out those that are not; the first
    sample, in ``results/first-sample/``, did not)."""
    try:
        compile(mutated_source(committed_source(item.mutations[0].module_path), item), "<mutant>", "exec")
    except SyntaxError:
        return False
    return True


ANNOTATION_ONLY = ("changes only a type annotation, which stays an unevaluated string "
                   "(`from __future__ import annotations`)")


def load_equivalents(name: str) -> dict[str, str]:
    """The survivors judged equivalent, with the reason each cannot change any output."""
    path = HERE / "equivalent.json"
    return json.loads(path.read_text()).get(name, {}) if path.exists() else {}


def report(family: Family, clean_s: float | None = None, wall_s: float | None = None,
           left_out: dict[str, int] | None = None) -> dict:
    """Write ``results/FAMILY.json``: one record per sampled mutant, the counts and the score."""
    path = result_path(family.name)
    previous = json.loads(path.read_text()) if path.exists() else {}
    equivalents = load_equivalents(family.name)
    kept = {m["key"]: {k: m[k] for k in ("retest", "unit_tests") if k in m} for m in previous.get("mutants", [])}
    mutants = []
    with use_db(str(session_path(family.name)), WorkDB.Mode.open) as db:
        total = db.num_work_items
        for item, result in db.completed_work_items:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            outcome, failed = classify(result)
            key = mutant_key(item)
            if outcome == "survived" and key not in equivalents and excluded(
                    committed_source(item.mutations[0].module_path), item) == "annotation only":
                equivalents[key] = ANNOTATION_ONLY
            if outcome == "survived" and key in equivalents:
                outcome = "equivalent"
            m = item.mutations[0]
            mutants.append({"key": key, "line": m.start_pos[0], "definition": m.definition_name,
                            "outcome": outcome, "compiles": outcome != "crash" or compiles(item),
                            "failed": failed, "diff": result.diff, "equivalent_because": equivalents.get(key)})
            if clean_s is None:  # the same session reported again: keep its retest and unit-test results
                mutants[-1].update(kept.get(key, {}))
        pending = sum(1 for _ in db.pending_work_items)
    mutants.sort(key=lambda r: (r["line"], r["key"]))
    counts = {k: sum(r["outcome"] == k for r in mutants) for k in ("killed", "survived", "equivalent", "timeout", "crash")}
    denominator = len(mutants) - counts["equivalent"]
    detected = counts["killed"] + counts["timeout"] + counts["crash"]
    uncompilable = sum(not r["compiles"] for r in mutants)
    out = {
        "family": family.name, "commit": previous.get("commit") if clean_s is None else _commit(),
        "file": f"accelerated/{family.name}.py", "test_command": configured_command(family.name),
        "tool": "cosmic-ray " + _version("cosmic-ray"), "seed": SEED, "sample_size": SAMPLE_SIZE,
        "sampling": SAMPLING,
        "mutants_in_file": total, "left_out_of_population": left_out if left_out is not None
        else previous.get("left_out_of_population"),
        "sampled": len(mutants), "pending": pending, **counts,
        "uncompilable": uncompilable,
        "score": round(detected / denominator, 4) if denominator else None,
        "score_compiling": round((detected - uncompilable) / (denominator - uncompilable), 4)
        if denominator > uncompilable else None,
        "clean_run_s": round(clean_s, 1) if clean_s is not None else previous.get("clean_run_s"),
        "wall_s": round(wall_s, 1) if wall_s is not None else previous.get("wall_s"),
        "mutants": mutants,
    }
    if clean_s is None:
        out.update({k: previous[k] for k in ("retested_at", "killed_on_retest", "score_after_retest", "unit_tests_at",
                                              "killed_by_unit_tests") if k in previous})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    return out


def _version(dist: str) -> str:
    from importlib.metadata import version
    return version(dist)


def run(family: Family) -> dict:
    """Clean run, session, sample, one mutant at a time, report."""
    clean_s = clean_run(family)
    config = write_config(family, max(MIN_TIMEOUT_S, TIMEOUT_FACTOR * clean_s))
    session = session_path(family.name)
    session.parent.mkdir(parents=True, exist_ok=True)
    cosmic = str(Path(sys.executable).parent / "cosmic-ray")
    subprocess.run([cosmic, "init", str(config), str(session), "--force"], cwd=ROOT, check=True)
    with use_db(str(session), WorkDB.Mode.open) as db:
        chosen, reasons = sample(db, SAMPLE_SIZE, SEED)
    print(f"{family.name}: clean run {clean_s:.1f} s, {len(chosen)} mutants sampled, left out: {reasons}", flush=True)
    start = time.monotonic()
    subprocess.run([cosmic, "exec", str(config), str(session)], cwd=ROOT, check=True)
    return report(family, clean_s, time.monotonic() - start, reasons)


def _changed_lines(diff: str) -> list[str]:
    return [line for line in diff.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))]


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout.strip()


def _apply_equivalents(out: dict, equivalents: dict[str, str]) -> dict:
    """``out`` (a report) with the survivors judged equivalent since it was written marked so and its
    counts and score recomputed: what ``report`` would give, without the session it reads."""
    for m in out["mutants"]:
        if m["outcome"] == "survived" and m["key"] in equivalents:
            m["outcome"], m["equivalent_because"] = "equivalent", equivalents[m["key"]]
    for k in ("survived", "equivalent"):
        out[k] = sum(m["outcome"] == k for m in out["mutants"])
    detected = out["killed"] + out["timeout"] + out["crash"]
    denominator = out["sampled"] - out["equivalent"]
    out["score"] = round(detected / denominator, 4) if denominator else None
    compiling = denominator - out["uncompilable"]
    out["score_compiling"] = round((detected - out["uncompilable"]) / compiling, 4) if compiling > 0 else None
    return out


def _mutate_and_test(file: str, m: dict, command: str, commit: str, judge=None) -> dict:
    """``cosmic-ray mutate-and-test`` of the recorded mutant ``m`` of ``file`` with ``command``: its
    outcome and failed checks (:func:`classify`, or ``judge``). Where other edits of the file moved
    the mutant to another occurrence of its operator, that occurrence is found by its diff
    (:func:`_occurrence_of`, recorded as ``occurrence``); ``"source changed"`` (not tested) where
    no occurrence gives the recorded diff any more."""
    operator, occurrence = m["key"].rsplit("#", 1)
    now = _occurrence_of(file, operator, _changed_lines(m["diff"]), int(occurrence))
    if now is None:
        return {"commit": commit, "outcome": "source changed", "failed": []}
    cosmic = str(Path(sys.executable).parent / "cosmic-ray")
    proc = subprocess.run([cosmic, "mutate-and-test", file, operator, str(now), command], cwd=ROOT,
                          capture_output=True, text=True)
    result = WorkResult(**{k: v for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()
                           if k in ("worker_outcome", "output", "test_outcome", "diff")})
    outcome, failed = (judge or classify)(result)
    return {"commit": commit, "outcome": outcome, "failed": failed,
            **({"occurrence": now} if now != int(occurrence) else {})}


def _occurrence_of(file: str, operator: str, changed: list[str], recorded: int) -> int | None:
    """The occurrence of ``operator`` in the committed ``file`` whose mutation changes exactly the
    lines ``changed`` (the recorded one first), or None."""
    source = committed_source(file)
    mutate = get_operator(operator)()
    for occurrence in [recorded, *range(MAX_OCCURRENCES)]:
        mutated = mutate_code(source, mutate, occurrence)
        if mutated is None:
            if occurrence == recorded:
                continue
            return None
        diff = difflib.unified_diff(source.splitlines(), mutated.splitlines(), lineterm="")
        if _changed_lines("\n".join(diff)) == changed:
            return occurrence
    return None


def _still_surviving(m: dict) -> bool:
    return m["outcome"] == "survived" and m.get("retest", {}).get("outcome", "survived") == "survived"


def retest(family: Family) -> dict:
    """Test every survivor of ``results/FAMILY.json`` again with the family's test command on the
    current suite (``cosmic-ray mutate-and-test`` applies the mutant to the file, tests, restores it).
    A survivor whose mutation moved to another occurrence of its operator (other edits of the file)
    is found by its diff; one that no occurrence gives any more is recorded as ``"source changed"``,
    not tested. Each result goes into the mutant's ``retest``
    entry with the commit; ``score_after_retest`` counts the survivors killed since."""
    path = result_path(family.name)
    out = _apply_equivalents(json.loads(path.read_text()), load_equivalents(family.name))
    commit, command = _commit(), configured_command(family.name)
    for m in out["mutants"]:
        if m["outcome"] != "survived":
            continue
        m["retest"] = _mutate_and_test(out["file"], m, command, commit)
        print(f"{family.name} {m['key']}: {m['retest']['outcome']} {m['retest']['failed']}", flush=True)
    retested = [m for m in out["mutants"] if m["outcome"] == "survived" and m.get("retest")]
    killed = sum(m["retest"]["outcome"] in ("killed", "timeout", "crash") for m in retested)
    denominator = out["sampled"] - out["equivalent"]
    out["retested_at"] = commit
    out["killed_on_retest"] = killed
    out["score_after_retest"] = round((out["killed"] + out["timeout"] + out["crash"] + killed) / denominator, 4)
    path.write_text(json.dumps(out, indent=1) + "\n")
    return out


UNIT_TESTS_OF_EVERY_FAMILY = ("tests/test_reload.py::test_checkpoint_layout_is_the_recorded_one",)
"""Unit tests that hold every family at once: the recorded ``state_dict`` layout of every kind."""


def unit_command(family: Family) -> str:
    """The project's own unit tests of ``accelerated/FAMILY.py`` (``tests/test_FAMILY.py``) and
    :data:`UNIT_TESTS_OF_EVERY_FAMILY`."""
    return shlex.join([PYTHON, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", f"tests/test_{family.name}.py",
                       *UNIT_TESTS_OF_EVERY_FAMILY])


def _judge_pytest(result: WorkResult) -> tuple[str, list[str]]:
    """``killed`` for a pytest run that failed (exit code non-zero: a failed or erroring test),
    ``survived`` for one that passed, ``crash`` where the worker itself failed; the failed tests."""
    if result.worker_outcome != WorkerOutcome.NORMAL:
        return "crash", []
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", result.output or "", re.MULTILINE)
    return ("survived", []) if result.test_outcome == TestOutcome.SURVIVED else ("killed", failed)


def unit(family: Family) -> dict:
    """Run the project's unit tests of the family (:func:`unit_command`) on every mutant the
    conformance suite still lets survive (after any retest): the survivors that the unit tests kill
    are invisible to the suite (an iteration path, a speed-only branch, a message) but not untested.
    Each result goes into the mutant's ``unit_tests`` entry (:func:`_judge_pytest`);
    ``killed_by_unit_tests`` counts them."""
    path = result_path(family.name)
    out = _apply_equivalents(json.loads(path.read_text()), load_equivalents(family.name))
    commit, command = _commit(), unit_command(family)
    for m in out["mutants"]:
        if not _still_surviving(m):
            m.pop("unit_tests", None)
            continue
        m["unit_tests"] = _mutate_and_test(out["file"], m, command, commit, judge=_judge_pytest)
        print(f"{family.name} {m['key']} (unit tests): {m['unit_tests']['outcome']}", flush=True)
    out["unit_tests_at"] = commit
    out["killed_by_unit_tests"] = sum(m.get("unit_tests", {}).get("outcome") in ("killed", "timeout", "crash")
                                      for m in out["mutants"])
    path.write_text(json.dumps(out, indent=1) + "\n")
    return out


def table(folder: Path = HERE / "results") -> str:
    """One markdown row per family with a report in ``folder``: the counts and the score."""
    rows = ["| family | commit | kinds (float64) | mutants | left out: annotation only / not compiling | sampled | "
            "killed | survived | equivalent | timeouts | crashes | score | survivors killed on retest (commit) | "
            "score after retest | survivors left, killed by the unit tests |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in FAMILIES:
        path = folder / f"{name}.json"
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        kinds = r["test_command"].split(" --kinds ", 1)[1].split(" --", 1)[0]
        out = r.get("left_out_of_population") or {}
        left = f"{out.get('annotation only', 0)} / {out.get('does not compile', 0)}" if out else "none"
        score = "n/a" if r["score"] is None else f"{r['score']:.3f}"
        pending = f" ({r['pending']} not run)" if r["pending"] else ""
        retest = (f"{r['killed_on_retest']} of {r['survived']} ({r['retested_at']}) | {r['score_after_retest']:.3f}"
                  if "retested_at" in r else "— | —")
        left_over = sum(_still_surviving(m) for m in r["mutants"])
        unit_killed = f"{r['killed_by_unit_tests']} of {left_over}" if "unit_tests_at" in r else "—"
        rows.append(f"| {name} | {r.get('commit', '—')} | {kinds} | {r['mutants_in_file']} | {left} | "
                    f"{r['sampled']}{pending} | {r['killed']} | {r['survived']} | {r['equivalent']} | {r['timeout']} | "
                    f"{r['crash']} | {score} | {retest} | {unit_killed} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("config", "run", "report", "retest", "unit", "table"))
    parser.add_argument("family", nargs="?", choices=sorted(FAMILIES))
    args = parser.parse_args(argv)
    if args.action == "table":
        print(table())
        print()
        print(table(HERE / "results" / "first-sample"))
        return 0
    if args.family is None:
        parser.error(f"{args.action} needs a family")
    family = FAMILIES[args.family]
    if args.action == "config":
        print(write_config(family, MIN_TIMEOUT_S))
        return 0
    out = {"run": run, "report": report, "retest": retest, "unit": unit}[args.action](family)
    print(json.dumps({k: v for k, v in out.items() if k != "mutants"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
