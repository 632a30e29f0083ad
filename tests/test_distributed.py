"""Data-parallel training under torchrun: 2 CPU processes (gloo, loopback) match one process with the
same global batch, for realnvp and for residual (with ActNorm, whose initialisation all-reduces)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from flowspec.accelerated import checkpoint
from flowspec.accelerated.trainer import Settings, Trainer
from flowspec.conformance.seeding import rng
from flowspec.conformance.tolerances import assert_close

BATCH, STEPS = 16, 4
RUNS = {
    "realnvp": ["--set", "layers=2", "--set", "hidden=8"],
    # exact log-det: the roulette noise is drawn per process (trainer docstring), ActNorm on
    "residual": ["--set", "layers=1", "--set", "hidden_factor=2", "--set", "actnorm=true", "--set", "logdet=\"exact\""],
}
SCRIPT = """
import sys
import torch.distributed as dist
from flowspec.accelerated.trainer import main

dist.init_process_group("gloo")
for argv in {argvs!r}:
    assert main(argv) == 0
dist.destroy_process_group()
"""


def _argv(model: str, data: str, out: Path) -> list[str]:
    return ["train", "--model", model, "--data", data, "--steps", str(STEPS), "--batch-size", str(BATCH),
            "--eval-every", str(STEPS), "--eval-size", "16", "--dtype", "float64", "--out", str(out), "--no-plots",
            "--no-progress", "--threads", "1", *RUNS[model]]


def test_two_processes_match_one(tmp_path: Path) -> None:
    x = rng("distributed", "data").normal(0.0, 1.0, (80, 2))
    data = tmp_path / "points.npz"
    np.savez(data, train=x[:64], test=x[64:])  # 64 = 4 global batches of 16
    argvs = [_argv(model, str(data), tmp_path / f"ddp-{model}") for model in RUNS]
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(argvs=argvs))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script)], capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("flowspec train:") == len(RUNS)  # rank 0 alone reports
    for model, argv in zip(RUNS, argvs):
        ddp = checkpoint.read(checkpoint.latest(tmp_path / f"ddp-{model}"))
        assert ddp["step"] == STEPS
        options = dict(o.split("=", 1) for o in argv[argv.index("--set") + 1::2])
        single = Trainer(Settings(model=model, data=str(data), steps=STEPS, batch_size=BATCH, eval_every=STEPS,
                                  eval_size=16, dtype="float64", out=str(tmp_path / f"one-{model}"), plots=False,
                                  progress=False, threads=1,
                                  model_options={k: _value(v) for k, v in options.items()}))
        single.fit()
        mine = single.objective.state_dict()
        assert set(ddp["objective"]) == set(mine)
        for name, value in mine.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                theirs = ddp["objective"][name]
                assert_close(theirs.numpy(), value.numpy(), "grad", "float64", BATCH, f"{model} {name}")
        tests = [[r["test_nats"] for r in h] for h in (ddp["history"], single.history)]
        assert_close(np.array(tests[0]), np.array(tests[1]), "grad", "float64", BATCH, f"{model} test nats")
        assert tests[1][0] != tests[1][-1]  # the model moved, so the comparison is not vacuous


def _value(text: str):
    import json

    return json.loads(text)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (NCCL)")
def test_one_nccl_process_matches_a_plain_cuda_run(tmp_path: Path) -> None:
    x = rng("distributed", "cuda").normal(0.0, 1.0, (80, 2))
    data = tmp_path / "points.npz"
    np.savez(data, train=x[:64], test=x[64:])
    argv = [*_argv("realnvp", str(data), tmp_path / "nccl"), "--device", "cuda"]
    script = tmp_path / "run.py"
    script.write_text("import sys\nfrom flowspec.accelerated.trainer import main\nsys.exit(main(sys.argv[1:]))\n")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
                           str(script), *argv], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    nccl = checkpoint.read(checkpoint.latest(tmp_path / "nccl"))
    single = Trainer(Settings(model="realnvp", data=str(data), steps=STEPS, batch_size=BATCH, eval_every=STEPS,
                              eval_size=16, dtype="float64", device="cuda", out=str(tmp_path / "one"), plots=False,
                              progress=False, model_options={"layers": 2, "hidden": 8}))
    single.fit()
    for name, value in single.objective.state_dict().items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            assert_close(nccl["objective"][name].numpy(), value.cpu().numpy(), "grad", "float64", BATCH, name)
