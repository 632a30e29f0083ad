"""Train every preset that takes images on scikit-learn's digits for a fixed budget and print a table
of test bits per dimension and time per step (a training benchmark, not a test).

    python benchmarks/train_digits.py [--steps 300] [--models realnvp glow ...] [--out DIR] [--json PATH]

Each preset runs with its own sizes and settings (:mod:`flowspec.accelerated.presets`), float32 on
the CPU, seed 0, ``--steps`` steps (default 300) of batch 64, one torch thread, and is evaluated at
the end on the 297 test digits (17 levels, uniform dequantisation; variational for ``flowpp``) with
its Polyak-averaged weights. ``maf`` and ``nsf`` see the digits flattened to 64-vectors; ``planar``
and ``radial`` are 2-D density models and are listed as refused. The script is outside the CI smoke
run (it is not an asv benchmark) and exits at once when ``FLOWSPEC_BENCH_SKIP_SLOW`` is set.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time


def _row(model: str, steps: int, out: str) -> dict:
    from flowspec.errors import ConfigError
    from flowspec.accelerated.trainer import Settings, Trainer

    try:
        trainer = Trainer(Settings(model=model, data="digits", steps=steps, batch_size=64, eval_every=steps,
                                   out=os.path.join(out, model), progress=False, threads=1, seed=0))
    except ConfigError as exc:
        return {"model": model, "refused": str(exc).split(";")[0]}
    start = time.perf_counter()
    final = trainer.fit()
    return {"model": model, "steps": steps, "test_bpd": final["test_bpd"],
            "ms_per_step": 1000 * final["seconds_per_step"], "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    if os.environ.get("FLOWSPEC_BENCH_SKIP_SLOW", "") not in ("", "0"):
        print("train_digits: skipped (FLOWSPEC_BENCH_SKIP_SLOW is set)")
        return 0
    from flowspec.accelerated import presets

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--models", nargs="+", default=list(presets.PRESETS))
    parser.add_argument("--out", help="run directories (default: a temporary folder)")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    out = args.out or tempfile.mkdtemp(prefix="flowspec-train-digits-")
    rows = []
    print("| model | steps | test bpd (EMA) | ms / step |\n|---|---|---|---|", flush=True)
    for model in args.models:
        row = _row(model, args.steps, out)
        rows.append(row)
        if "refused" in row:
            print(f"| {model} | — | refused: {row['refused']} | — |", flush=True)
        else:
            print(f"| {model} | {row['steps']} | {row['test_bpd']:.3f} | {row['ms_per_step']:.1f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    print(f"run directories under {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
