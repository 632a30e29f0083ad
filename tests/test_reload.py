"""Trained models reload exactly: a few optimiser steps, then ``state_dict`` → ``load_state_dict``
(bit-identical in training and evaluation mode) and ``to_spec`` → JSON → ``from_spec`` (bit-identical
in evaluation mode), for every family's typical model, residual and QuAR models at their constraints
included, in float64; float32 specs of constrained models load (within the rounding allowance); and
every kind's checkpoint layout (``state_dict`` keys, shapes and dtypes) is the recorded one, so that a
checkpoint written by one release loads strictly into the next."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from flowspec import FlowSpec, reference
from flowspec.accelerated import FlowDistribution, from_spec, quar, residual
from flowspec.accelerated.lipschitz import _LipschitzLayer
from flowspec.conformance.seeding import rng, seed_for
from flowspec.errors import ConfigError
from reference_checks import checked_kinds, spec_of

Builder = Callable[[], torch.nn.Module]


def _kind(kind: str, config: dict) -> Builder:
    return lambda: from_spec(reference.init_spec(kind, config, rng("reload", kind)))


MODELS: dict[str, tuple[Builder, tuple[int, ...], bool]] = {
    # name: (builder, event shape, data in (0, 1))
    "residual_mlp": (lambda: residual.make_model("mlp", (6,), n_blocks=2, coeff=0.9), (6,), False),
    "residual_conv": (lambda: residual.make_model("conv", (2, 4, 4), n_blocks=1, coeff=0.9), (2, 4, 4), True),
    "quar_mlp": (lambda: quar.make_model("mlp", (6,), n_blocks=2), (6,), False),
    "quar_conv": (lambda: quar.make_model("conv", (2, 4, 4), n_blocks=1), (2, 4, 4), True),
    "affine_coupling": (_kind("affine_coupling", {"shape": [6], "hidden": 16}), (6,), False),
    "maf": (_kind("maf", {"dim": 5, "hidden": [12]}), (5,), False),
    "spline_coupling": (_kind("spline_coupling", {"shape": [6], "bins": 4}), (6,), False),
    "conv1x1_lu": (_kind("conv1x1_lu", {"channels": 3, "height": 2, "width": 2}), (3, 2, 2), False),
}


def _data(shape: tuple[int, ...], unit: bool, n: int, key: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed_for("reload", key))
    if unit:
        return torch.rand((n,) + shape, generator=g, dtype=torch.float64) * 0.98 + 0.01
    return 2.0 * torch.randn((n,) + shape, generator=g, dtype=torch.float64)


def _train(model: torch.nn.Module, shape: tuple[int, ...], unit: bool, steps: int = 12) -> None:
    """Adam at a large rate, so that constrained layers end at their constraint."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    dist = FlowDistribution(model)
    dtype = next(model.parameters()).dtype
    for step in range(steps):
        torch.manual_seed(step)
        loss = -dist.log_prob(_data(shape, unit, 32, f"train-{step}").to(dtype)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def _outputs(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(7)  # the residual estimators' draws
    with torch.no_grad():
        return model(x)


def _assert_identical(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...], what: str) -> None:
    for left, right in zip(a, b):
        assert torch.equal(left, right), f"{what}: max difference {float((left - right).abs().max()):.3e}"


def _at_constraint(model: torch.nn.Module) -> bool:
    """Whether some constrained layer's normalisation binds (its raw weight was scaled down)."""
    with torch.no_grad():
        return any(not torch.equal(layer.spec_weight(layer.normalizer._spatial), layer.unnormalized_weight())
                   for layer in model.modules() if isinstance(layer, _LipschitzLayer))


@pytest.fixture(scope="module", params=sorted(MODELS))
def trained(request: pytest.FixtureRequest) -> tuple[str, torch.nn.Module, torch.Tensor]:
    name = request.param
    build, shape, unit = MODELS[name]
    torch.manual_seed(0)
    model = build().to(torch.float64)
    _train(model, shape, unit)
    return name, model, _data(shape, unit, 16, "x")


def test_state_dict_reload_is_bit_identical_in_both_modes(trained) -> None:
    name, model, x = trained
    build = MODELS[name][0]
    for mode in (True, False):
        torch.manual_seed(1)
        copy = build().to(torch.float64)
        copy.load_state_dict(model.state_dict())
        model.train(mode)
        copy.train(mode)
        _assert_identical(_outputs(model, x), _outputs(copy, x), f"{name} state_dict, training={mode}")
    model.train()


def test_spec_and_json_reload_is_bit_identical_in_evaluation_mode(trained) -> None:
    name, model, x = trained
    model.eval()
    loaded = from_spec(FlowSpec.from_json(model.to_spec().to_json())).eval()
    _assert_identical(_outputs(model, x), _outputs(loaded, x), f"{name} to_spec → JSON → from_spec")
    model.train()


def test_trained_residual_models_sit_at_their_constraint() -> None:
    """The reload tests above exercise the loader's rounding allowance: the constraint binds."""
    for name in ("residual_mlp", "residual_conv"):
        build, shape, unit = MODELS[name]
        torch.manual_seed(0)
        model = build().to(torch.float64)
        _train(model, shape, unit)
        assert _at_constraint(model), name


def test_a_float32_constrained_model_reloads_from_its_spec() -> None:
    build, shape, unit = MODELS["residual_mlp"]
    torch.manual_seed(0)
    model = build().to(torch.float32)
    _train(model, shape, unit)
    model.eval()
    x = _data(shape, unit, 16, "x32").to(torch.float32)
    loaded = from_spec(model.to_spec(), dtype=torch.float32).eval()
    _assert_identical(_outputs(model, x), _outputs(loaded, x), "float32 residual to_spec → from_spec")


def test_a_weight_beyond_the_rounding_allowance_is_refused() -> None:
    spec = reference.init_spec("residual_mlp", {"shape": [4], "hidden": [8], "coeff": 0.9}, rng("reload", "refuse"))
    weight = spec.params["weight0"]
    at_constraint = 0.9 * weight / np.linalg.norm(weight, 2)
    from_spec(FlowSpec(spec.kind, spec.config, {**spec.params, "weight0": at_constraint}))
    beyond = FlowSpec(spec.kind, spec.config, {**spec.params, "weight0": at_constraint * (1.0 + 1e-3)})
    with pytest.raises(ConfigError, match=r"param 'weight0': the loaded weight has estimated norm 0.9009.* > coeff 0.9"):
        from_spec(beyond)


# ----------------------------------------------------------------------------- checkpoint layouts

LAYOUTS = Path(__file__).parent / "data" / "checkpoint_layouts.json"
WRITE_LAYOUTS = "FLOWSPEC_WRITE_LAYOUTS"  # set to 1 to record the current layouts (a deliberate format change)


def _entry(value: Any) -> Any:
    """A ``state_dict`` entry as recorded: a tensor's shape and dtype, an extra state's keys."""
    if isinstance(value, torch.Tensor):
        return [list(value.shape), str(value.dtype)]
    return sorted(value) if isinstance(value, dict) else type(value).__name__


def _layout(kind: str) -> dict[str, Any]:
    """The config of the kind's first drawn spec and the ``state_dict`` layout of its flow."""
    spec = spec_of(kind)
    return {"config": spec.to_dict()["config"],
            "state_dict": {k: _entry(v) for k, v in from_spec(spec).state_dict().items()}}


def test_checkpoint_layouts_are_recorded_for_every_kind() -> None:
    if os.environ.get(WRITE_LAYOUTS) == "1":
        LAYOUTS.parent.mkdir(exist_ok=True)
        LAYOUTS.write_text(json.dumps({k: _layout(k) for k in checked_kinds()}, indent=1, sort_keys=True) + "\n")
    assert sorted(json.loads(LAYOUTS.read_text())) == checked_kinds(), f"rewrite {LAYOUTS.name} with {WRITE_LAYOUTS}=1"


@pytest.mark.parametrize("kind", checked_kinds())
def test_checkpoint_layout_is_the_recorded_one(kind: str) -> None:
    """A key added (a buffer made persistent), removed, renamed or reshaped means a checkpoint of this
    build does not load strictly into the previous one, or the other way round."""
    recorded = json.loads(LAYOUTS.read_text())[kind]
    now = _layout(kind)
    assert now["config"] == recorded["config"], (
        f"{kind}: the first drawn spec changed, so the layouts must be rewritten ({WRITE_LAYOUTS}=1)")
    mine, theirs = now["state_dict"], recorded["state_dict"]
    changed = sorted(k for k in set(mine) & set(theirs) if mine[k] != theirs[k])
    assert mine == theirs, (f"{kind}: checkpoint layout changed: added {sorted(set(mine) - set(theirs))}, "
                            f"removed {sorted(set(theirs) - set(mine))}, changed {changed}")
