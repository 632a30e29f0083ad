"""Train on digits with the ``flowspec train`` command: scikit-learn's 8 × 8 digits (17 levels),
uniformly dequantised, a logit in front, scored in bits per dimension — all chosen by the
:class:`~flowspec.accelerated.trainer.Trainer` from the data set. The command is run in-process
here (``cli.main``); in a shell it is the same arguments after ``flowspec``."""
import json
import tempfile
from pathlib import Path

from flowspec import cli
from flowspec.accelerated import data

digits = data.load("digits")
print(digits.event_shape, digits.n_bins)     # (1, 8, 8) 17

with tempfile.TemporaryDirectory() as out:
    code = cli.main(["train", "--model", "realnvp", "--data", "digits", "--steps", "40", "--eval-every", "40",
                     "--set", "layers=2", "--set", "hidden=16", "--no-plots", "--no-progress", "--out", out])
    records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    checkpoints = sorted(p.name for p in (Path(out) / "checkpoints").iterdir())

assert code == 0
evaluations = [r["test_bpd"] for r in records if r["evaluation"]]
print(f"test bits/dim {evaluations[0]:.2f} -> {evaluations[-1]:.2f}; checkpoints {checkpoints}")
assert evaluations[-1] < evaluations[0]
