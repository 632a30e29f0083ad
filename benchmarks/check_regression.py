"""Run the asv suite and fail loudly: a smoke check that every benchmark runs, and a regression check.

    python benchmarks/check_regression.py smoke [--bench REGEX]
    python benchmarks/check_regression.py continuous [--base main] [--head HEAD] [--factor 1.3] [--bench REGEX]

``smoke`` runs ``asv run --python=same --quick`` in the current environment with
``FLOWSPEC_BENCH_STRICT=1`` (a flow family missing at HEAD is an error, not a skip), stores the
results under HEAD's hash, and then reads them back: it exits 1 when asv's exit code is non-zero,
when a benchmark has no result (it raised, or timed out), or when the results hold fewer benchmarks
than asv discovered. Slow cases skipped with ``FLOWSPEC_BENCH_SKIP_SLOW=1`` are allowed.

``continuous`` runs ``asv continuous --factor F --interleave-rounds BASE HEAD``: asv builds both
commits in its own virtualenvs (dependencies pinned in ``asv.conf.json``, installed by pip from
the machine's offline wheel store), runs the benchmarks in interleaved rounds and prints the
benchmarks whose ratio HEAD/BASE passed the factor. The check exits 1 on a slowdown (or memory
growth) beyond the factor and 2 when a benchmark failed; 0 otherwise.

asv's own exit code is easily lost (``asv … | tee log`` returns tee's); this script returns it,
checked, whatever the caller pipes.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "asv.conf.json"
RESULTS = HERE / "results"


def _asv(*args: str, env: dict[str, str] | None = None) -> int:
    command = [sys.executable, "-m", "asv", *args]
    print("$ " + " ".join(command[2:]), flush=True)
    return subprocess.run(command, env=env).returncode


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=HERE.parent, check=True, capture_output=True, text=True).stdout.strip()


def _ensure_machine() -> None:
    """asv asks about the machine interactively the first time; answer with the defaults."""
    if not (Path.home() / ".asv-machine.json").exists():
        _asv("machine", "--yes", "--config", str(CONFIG))


def _entries(value: object) -> list[object]:
    return value if isinstance(value, list) else [value]


def _problems(result_file: Path, discovered: dict[str, dict]) -> list[str]:
    """Benchmarks without a value in ``result_file`` (None: failed; NaN: skipped, allowed)."""
    data = json.loads(result_file.read_text())
    columns = data["result_columns"]
    results = data["results"]
    problems = [f"{name}: no result recorded" for name in sorted(set(discovered) - set(results))]
    for name, row in sorted(results.items()):
        value = dict(zip(columns, row))["result"]
        if value is None:
            problems.append(f"{name}: failed")
            continue
        failed = [i for i, v in enumerate(_entries(value)) if v is None]
        if failed:
            problems.append(f"{name}: failed for parameter combinations {failed}")
    return problems


def _skipped(result_file: Path) -> list[str]:
    data = json.loads(result_file.read_text())
    out = []
    for name, row in sorted(data["results"].items()):
        value = dict(zip(data["result_columns"], row))["result"]
        if any(isinstance(v, float) and math.isnan(v) for v in _entries(value)):
            out.append(name)
    return out


def smoke(bench: str | None) -> int:
    _ensure_machine()
    commit = _git("rev-parse", "HEAD")
    stale = list(RESULTS.glob(f"*/{commit[:8]}-existing-*.json"))
    for path in stale:
        path.unlink()
    env = {**os.environ, "FLOWSPEC_BENCH_STRICT": "1", "OMP_NUM_THREADS": "1"}
    args = ["run", "--config", str(CONFIG), "--python=same", "--quick", "--show-stderr", "--set-commit-hash", commit]
    if bench:
        args += ["--bench", bench]
    code = _asv(*args, env=env)
    files = list(RESULTS.glob(f"*/{commit[:8]}-existing-*.json"))
    if len(files) != 1:
        print(f"smoke check: expected one result file for {commit[:8]}, found {len(files)}", file=sys.stderr)
        return 1
    discovered = json.loads((RESULTS / "benchmarks.json").read_text())
    discovered = {k: v for k, v in discovered.items() if k != "version" and (bench is None or _matches(bench, k))}
    problems = _problems(files[0], discovered)
    skipped = _skipped(files[0])
    print(f"\nsmoke check: {len(discovered)} benchmarks, {len(problems)} failing, {len(skipped)} with skipped cases"
          f" ({', '.join(skipped) or 'none'}); asv exit code {code}")
    for line in problems:
        print(f"  FAILED {line}")
    return 1 if code != 0 or problems or not discovered else 0


def _matches(pattern: str, name: str) -> bool:
    import re

    return re.search(pattern, name) is not None


def continuous(base: str, head: str, factor: float, bench: str | None, quick: bool) -> int:
    _ensure_machine()
    args = ["continuous", "--config", str(CONFIG), "--factor", str(factor), "--show-stderr"]
    args += ["--quick"] if quick else ["--interleave-rounds"]
    if bench:
        args += ["--bench", bench]
    code = _asv(*args, base, head)
    verdict = {0: "no regression beyond the factor", 1: "REGRESSION: a benchmark got worse beyond the factor",
               2: "FAILED: a benchmark raised or timed out"}.get(code, f"asv exited with code {code}")
    print(f"\nregression check {base} → {head} (factor {factor}): {verdict}")
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("smoke", help="every benchmark runs once in the current environment")
    s.add_argument("--bench", help="only benchmarks matching this regular expression")
    c = sub.add_parser("continuous", help="compare HEAD against a base commit in fresh environments")
    c.add_argument("--base", default="main", help="base commit or branch (default: %(default)s)")
    c.add_argument("--head", default="HEAD", help="commit or branch under test (default: %(default)s)")
    c.add_argument("--factor", type=float, default=1.3, help="ratio that counts as a regression (default: %(default)s)")
    c.add_argument("--bench", help="only benchmarks matching this regular expression")
    c.add_argument("--quick", action="store_true", help="one sample per benchmark (no interleaved rounds; noisy)")
    args = parser.parse_args(argv)
    if args.mode == "smoke":
        return smoke(args.bench)
    return continuous(args.base, args.head, args.factor, args.bench, args.quick)


if __name__ == "__main__":
    sys.exit(main())
