"""Checkpoints of ``flowspec train``: bit-identical resume, atomic writes, refusal of bad files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from flowspec import ConfigError, NumericalError
from flowspec.accelerated import checkpoint
from flowspec.accelerated.trainer import Objective, Settings, Trainer
from flowspec.conformance.seeding import rng

SMALL = {"realnvp": {"layers": 2, "hidden": 8}, "residual": {"layers": 1, "hidden_factor": 2}}


def _array(tmp_path: Path, discrete: bool) -> str:
    """64 training and 16 test points in 2-D (integers in [0, 256) when ``discrete``), as an .npz."""
    r = rng("checkpoint", "data", discrete)
    x = r.integers(0, 256, (80, 2)) if discrete else r.normal(0.0, 1.0, (80, 2))
    path = tmp_path / f"points-{int(discrete)}.npz"
    np.savez(path, train=x[:64], test=x[64:])
    return str(path)


def _settings(data: str, out: Path, model: str, steps: int, **kw) -> Settings:
    return Settings(model=model, data=data, steps=steps, batch_size=16, eval_every=3, eval_size=16, warmup=4,
                    lr=3e-3, ema=0.9, dtype="float64", out=str(out), progress=False, plots=False,
                    model_options=dict(SMALL[model]), **kw)


def _parameters(trainer: Trainer) -> list[torch.Tensor]:
    modules = (trainer.objective, trainer.polyak._average)
    return [t.detach().clone() for m in modules for t in (*m.parameters(), *m.buffers())]


@pytest.mark.parametrize("model, discrete", [("residual", False), ("realnvp", True)])
def test_resume_is_bit_identical(tmp_path: Path, model: str, discrete: bool) -> None:
    # 8 steps of batch 16 on 64 points cross an epoch boundary at step 4 and the resume point at 4;
    # residual draws roulette noise from torch's global generator, realnvp dequantises (keyed noise)
    data = _array(tmp_path, discrete)
    whole = Trainer(_settings(data, tmp_path / "whole", model, 8))
    whole.fit()
    half = Trainer(_settings(data, tmp_path / "half", model, 4))
    half.fit()
    torch.manual_seed(12345)  # a resumed run must not depend on the state of the process
    resumed = Trainer.resume(tmp_path / "half", steps=8)
    assert resumed.step == 4
    resumed.fit()
    assert resumed.step == whole.step == 8
    for a, b in zip(_parameters(whole), _parameters(resumed), strict=True):
        assert torch.equal(a, b)
    tests = [{r["step"]: r["test_" + whole.unit] for r in t.history} for t in (whole, resumed)]
    assert sorted(tests[0]) == [0, 3, 6, 8] and sorted(tests[1]) == [0, 3, 4, 6, 8]  # the half run ended at 4
    assert all(tests[0][step] == tests[1][step] for step in tests[0])
    assert [p.name for p in checkpoint.checkpoints(tmp_path / "half" / "checkpoints")] == \
        ["ckpt-00000004.pt", "ckpt-00000006.pt", "ckpt-00000008.pt"]  # keep = 3 of 3, 4, 6, 8


def _trained(tmp_path: Path, steps: int = 2) -> Trainer:
    trainer = Trainer(_settings(_array(tmp_path, False), tmp_path / "run", "realnvp", steps, checkpoint_every=1))
    trainer.fit()
    return trainer


def test_crash_mid_write_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = _trained(tmp_path)
    folder = tmp_path / "run" / "checkpoints"
    before = checkpoint.latest(folder)

    def crash(handle, data: bytes) -> None:
        handle.write(data[: len(data) // 2])
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(checkpoint, "_write_bytes", crash)
    trainer.step += 1
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint()
    assert checkpoint.latest(folder) == before
    assert sorted(p.name for p in folder.iterdir()) == ["ckpt-00000001.pt", "ckpt-00000002.pt"]  # no temp file
    monkeypatch.undo()
    assert checkpoint.read(before)["step"] == 2
    assert Trainer.resume(tmp_path / "run").step == 2


def test_corrupted_truncated_and_foreign_checkpoints_are_refused(tmp_path: Path) -> None:
    _trained(tmp_path)
    path = checkpoint.latest(tmp_path / "run")
    raw = path.read_bytes()
    cases = {
        "truncated": raw[: len(raw) - 100],
        "corrupted": raw[:-50] + bytes([raw[-50] ^ 0xFF]) + raw[-49:],
        "not a flowspec checkpoint": b"PK\x03\x04" + raw[4:],
        "format 99": checkpoint._encode({"format": 99}),
    }
    for why, content in cases.items():
        bad = tmp_path / f"bad-{why[:5]}.pt"
        bad.write_bytes(content)
        with pytest.raises(ConfigError, match=why.split()[0] if why != "format 99" else "format 99"):
            Trainer.resume(bad)
    with pytest.raises(ConfigError, match="model: checkpoint 'realnvp', requested 'residual'"):
        Trainer.resume(path, model="residual")
    with pytest.raises(ConfigError, match="cannot change"):
        Trainer.resume(path, lr=1.0)


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(_array(tmp_path, False), tmp_path / "run", "realnvp", 6, checkpoint_every=2)
    trainer = Trainer(settings)
    real = Objective.forward

    def poisoned(self, x, noise):
        loss = real(self, x, noise)
        return loss * float("nan") if trainer.step == 3 else loss

    monkeypatch.setattr(Objective, "forward", poisoned)
    with pytest.raises(NumericalError, match=r"step 4: the loss is nan .*learning rate"):
        trainer.fit()
    assert trainer.step == 3
    assert checkpoint.latest(tmp_path / "run").name == "ckpt-00000002.pt"
    assert checkpoint.read(checkpoint.latest(tmp_path / "run"))["step"] == 2


def test_rng_state_round_trip() -> None:
    import random

    state = checkpoint.rng_state()
    draws = (torch.rand(3), np.random.rand(3), random.random())
    checkpoint.set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1]) and draws[2] == again[2]
