"""``flowspec train``: every preset learns, refusals before training, the command line and config files."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import flowspec.cli
from flowspec import ConfigError
from flowspec.accelerated import presets
from flowspec.accelerated.trainer import Settings, Trainer

TINY = {
    ("realnvp", "moons"): {"layers": 2, "hidden": 16},
    ("maf", "moons"): {"layers": 2, "hidden": 16},
    ("nsf", "moons"): {"layers": 2, "hidden": 16},
    ("residual", "moons"): {"layers": 1, "hidden_factor": 4},
    ("quar", "moons"): {"layers": 1, "hidden_factor": 4},
    ("planar", "moons"): {"layers": 4},
    ("radial", "moons"): {"layers": 4},
    ("realnvp", "digits"): {"layers": 1, "hidden": 8, "scales": 1},
    ("glow", "digits"): {"levels": 1, "layers": 1, "hidden": 8},
    ("flowpp", "digits"): {"couplings": 1, "hidden": 8, "dequantizer_couplings": 1, "dequantizer_hidden": 4},
    ("residual", "digits"): {"layers": 1, "hidden_factor": 2, "n_scales": 1},
    ("quar", "digits"): {"layers": 1, "hidden_factor": 2, "n_scales": 1},
    ("maf", "digits"): {"layers": 1, "hidden": 32},
}


def _settings(model: str, data: str, tmp_path: Path, **kw) -> Settings:
    values = dict(model=model, data=data, steps=20, batch_size=64, lr=1e-2, warmup=1, ema=None, eval_size=64,
                  eval_every=100, out=str(tmp_path / "run"), progress=False, plots=False, threads=1,
                  model_options=TINY.get((model, data), {}))
    return Settings(**{**values, **kw})


def test_every_preset_is_covered() -> None:
    assert {model for model, _ in TINY} == set(presets.PRESETS)


@pytest.mark.parametrize("model, data", list(TINY), ids=[f"{m}-{d}" for m, d in TINY])
def test_preset_lowers_the_held_out_nll(tmp_path: Path, model: str, data: str) -> None:
    # the test metric on the fixed held-out batch (fixed dequantisation noise; residual: the 20-term
    # evaluation estimator with fixed noise) after 20 steps is below its value at step 0
    trainer = Trainer(_settings(model, data, tmp_path))
    trainer.initialize()
    before = trainer.evaluate(ema=False)
    for _ in range(20):
        trainer.train_step()
    after = trainer.evaluate(ema=False)
    assert trainer.unit == ("nats" if data == "moons" else "bpd")
    assert after < before, (before, after)


@pytest.mark.parametrize("model, data, why", [
    ("glow", "moons", "takes image data only"),
    ("flowpp", "8gaussians", "takes image data only"),
    ("planar", "digits", "takes vector data only"),
    ("radial", "digits", "takes vector data only"),
])
def test_wrong_kind_of_data_is_refused_before_training(tmp_path: Path, model: str, data: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        Trainer(_settings(model, data, tmp_path))
    assert not (tmp_path / "run").exists()


def test_unknown_names_list_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown model 'nvp'; valid: realnvp, glow, maf, nsf, residual"):
        Trainer(_settings("nvp", "moons", tmp_path))
    with pytest.raises(ConfigError, match="unknown data 'moon'; valid: moons, 8gaussians, checkerboard"):
        Trainer(_settings("realnvp", "moon", tmp_path))
    with pytest.raises(ConfigError, match="realnvp got unknown options"):
        Trainer(_settings("realnvp", "moons", tmp_path, model_options={"widht": 3}))


@pytest.fixture
def cli():
    """``flowspec.cli.main``, whose EXTENSIONS add the train subcommand."""
    return flowspec.cli.main


def test_command_trains_plots_checkpoints_and_resumes(tmp_path: Path, cli, capsys) -> None:
    out = tmp_path / "run"
    base = ["train", "--model", "realnvp", "--data", "moons", "--batch-size", "64", "--eval-every", "3",
            "--eval-size", "200", "--out", str(out), "--no-progress", "--set", "layers=2", "--set", "hidden=8"]
    assert cli([*base, "--steps", "4"]) == 0
    printed = capsys.readouterr().out
    assert "flowspec train: realnvp on moons, 4 steps, test_nats" in printed
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["evaluation"]] == [0, 3, 4]
    assert all(r["test_nats"] > 0 for r in records if r["evaluation"])
    assert (out / "curves.png").stat().st_size > 1000 and (out / "samples.png").stat().st_size > 1000
    assert cli(["train", "--resume", str(out), "--steps", "6", "--no-progress"]) == 0
    assert "6 steps" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "ckpt-00000003.pt", "ckpt-00000004.pt", "ckpt-00000006.pt"]
    assert cli(["train", "--resume", str(out), "--model", "maf", "--no-progress"]) == 2
    assert "model: checkpoint 'realnvp', requested 'maf'" in capsys.readouterr().err


def test_command_refuses_bad_input_with_exit_code_2(tmp_path: Path, cli, capsys) -> None:
    assert cli(["train", "--model", "glow", "--data", "moons", "--out", str(tmp_path / "x")]) == 2
    assert "takes image data only" in capsys.readouterr().err
    assert cli(["train", "--data", "moons"]) == 2
    assert "--model is required; valid: realnvp" in capsys.readouterr().err
    assert cli(["train", "--model", "realnvp", "--data", "mnist", "--data-dir", str(tmp_path)]) == 2
    assert "train-images-idx3-ubyte" in capsys.readouterr().err
    assert cli(["train", "--list"]) == 0
    assert "flowpp" in capsys.readouterr().out


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_config_file_sets_settings_and_model_options(tmp_path: Path, cli, suffix: str) -> None:
    config = tmp_path / f"run{suffix}"
    if suffix == ".toml":
        config.write_text('steps = 2\nbatch-size = 32\neval_every = 2\n[model]\nlayers = 1\nhidden = 4\n')
    else:
        config.write_text(json.dumps({"steps": 2, "batch_size": 32, "eval_every": 2, "model": {"layers": 1, "hidden": 4}}))
    out = tmp_path / "run"
    assert cli(["train", "--model", "maf", "--data", "rings", "--config", str(config), "--steps", "3",
                "--out", str(out), "--no-plots", "--no-progress"]) == 0  # the command line wins over the file
    trainer = Trainer.resume(out)
    assert trainer.step == 3 and trainer.hp["batch_size"] == 32
    assert trainer.settings.model_options == {"layers": 1, "hidden": 4}
    assert len(trainer.objective.model.flow.flows) == 1


def test_python_m_flowspec_train() -> None:
    done = subprocess.run([sys.executable, "-m", "flowspec", "train", "--list"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "residual" in done.stdout
