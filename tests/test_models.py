"""The ready-made models (flowspec.accelerated.models): one line to build, three to train; every
builder builds, evaluates and samples; sample_and_log_prob agrees with log_prob; conditional models
use their context; the learnable base keeps the density's contract; save/load is bit-identical and
refuses files that are not the model's."""
from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest
import torch

from flowspec import registry
from flowspec.accelerated import models
from flowspec.accelerated.distribution import standard_normal_log_prob
from flowspec.accelerated.elementwise import ElementwiseAffine
from flowspec.accelerated.models import BUILDERS, FlowModel
from flowspec.accelerated.planar import Planar
from flowspec.conformance.seeding import seed_for
from flowspec.conformance.tolerances import assert_close, tolerance
from flowspec.errors import ConfigError, FlowInputError

# (builder, event shape, small options): every builder at every shape it takes, kept small.
CASES: list[tuple[str, Any, dict[str, Any]]] = [
    ("realnvp", 3, {"layers": 2, "hidden": 8}),
    ("realnvp", (1, 4, 4), {"layers": 1, "hidden": 4}),
    ("maf", 3, {"layers": 2, "hidden": 8}),
    ("nsf", 3, {"layers": 2, "hidden": 8, "bins": 4}),
    ("nsf", 3, {"layers": 2, "hidden": 8, "bins": 4, "autoregressive": True}),
    ("residual", 3, {"layers": 2, "hidden": 6, "logdet": "exact"}),
    ("residual", (1, 4, 4), {"layers": 1, "hidden": 2, "logdet": "exact"}),
    ("quar", 3, {"layers": 2, "hidden": 6}),
    ("quar", (1, 4, 4), {"layers": 1, "hidden": 2}),
    ("planar", 3, {"layers": 3}),
    ("radial", 3, {"layers": 3}),
    ("sylvester", 3, {"layers": 2}),
    ("naf", 3, {"layers": 2, "hidden": 8, "components": 3}),
    ("sos", 3, {"layers": 2, "hidden": 8}),
    ("umnn", 3, {"layers": 2, "hidden": 8, "nodes": 8}),
    ("glow", (1, 4, 4), {"layers": 1, "hidden": 4}),
]
CONDITIONAL = [("realnvp", {}), ("maf", {}), ("nsf", {}), ("nsf", {"autoregressive": True}), ("sylvester", {}),
               ("naf", {"components": 3}), ("sos", {}), ("umnn", {"nodes": 8})]
IDS = [f"{n}-{'x'.join(map(str, s)) if isinstance(s, tuple) else s}{'-ar' if o.get('autoregressive') else ''}"
       for n, s, o in CASES]


def _generator(*keys: object) -> torch.Generator:
    return torch.Generator().manual_seed(seed_for("models", *keys))


def _data(shape: tuple[int, ...], n: int, *keys: object) -> torch.Tensor:
    """Data in (0.05, 0.95): inside every model's domain (the image models start with a logit)."""
    return 0.05 + 0.9 * torch.rand((n, *shape), generator=_generator(*keys), dtype=torch.float64)


def _built(name: str, shape: Any, options: dict[str, Any], dtype: torch.dtype = torch.float64) -> FlowModel:
    torch.manual_seed(seed_for("models", "init", name, repr(shape), repr(sorted(options.items()))))
    model = models.build(name, shape, **options).to(dtype)
    model.log_prob(_data(model.event_shape, 8, "init").to(dtype), _context(model, 8))  # ActNorms initialise
    return model


def _in_domain(model: FlowModel, x: torch.Tensor) -> torch.Tensor:
    """Which samples lie in the model's (open) domain."""
    low, high = model.flow.domain
    flat = x.reshape(x.shape[0], -1)
    inside = torch.ones(x.shape[0], dtype=torch.bool)
    if low is not None:
        inside &= (flat > low).all(dim=1)
    if high is not None:
        inside &= (flat < high).all(dim=1)
    return inside


def _train(model: FlowModel, steps: int = 3, context: torch.Tensor | None = None) -> None:
    x = _data(model.event_shape, 16, "train").to(model.flow._anchor.dtype)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = -model.log_prob(x, context).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_a_2d_density_model_is_one_line_to_build_and_three_to_train() -> None:
    torch.manual_seed(seed_for("models", "quick start"))
    x = torch.randn(128, 2, generator=_generator("moons")) * torch.tensor([2.0, 0.5]) + 1.0
    model = models.realnvp(2)
    before = -model.log_prob(x).mean().item()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(10):
        loss = -model.log_prob(x).mean(); opt.zero_grad(); loss.backward(); opt.step()  # noqa: E702
    after = -model.log_prob(x).mean().item()
    entropy = 1.0 + np.log(2.0 * np.pi) + np.log(2.0 * 0.5)  # the data's Gaussian: the least NLL expected
    assert after < before - 0.5 and after > entropy - 0.2, (before, after, entropy)


@pytest.mark.parametrize("name, shape, options", CASES, ids=IDS)
def test_every_builder_evaluates_samples_and_agrees_with_itself(name: str, shape: Any, options: dict) -> None:
    model = _built(name, shape, options).eval()
    event = model.event_shape
    assert event == ((shape,) if isinstance(shape, int) else shape)
    log_p = model.log_prob(_data(event, 5, "x"))
    assert log_p.shape == (5,) and bool(torch.isfinite(log_p).all())
    assert model.sample(4, generator=_generator("s")).shape == (4, *event)
    x, log_q = model.sample_and_log_prob(6, generator=_generator("sl"))
    assert x.shape == (6, *event) and log_q.shape == (6,)
    # A logit model (data in (0, 1), α > 0) puts some mass outside (0, 1): compare where x is data.
    inside = _in_domain(model, x)
    assert int(inside.sum()) >= 3, "most samples of a fresh model are data"
    assert_close(log_q[inside].numpy(), model.log_prob(x[inside]).detach().numpy(), "roundtrip", "float64",
                 int(np.prod(event)), f"{name}: sample_and_log_prob against log_prob of its samples")
    torch.manual_seed(0)
    same = model.sample(6, generator=_generator("sl"))
    assert torch.equal(same, x), "sample_and_log_prob draws the samples sample draws"


def test_sample_and_log_prob_is_one_pass_and_rsample_is_differentiable() -> None:
    model = _built("maf", 3, {"layers": 1, "hidden": 8})
    calls = []
    model.flow.flows[0].register_forward_hook(lambda *a: calls.append(1))
    model.rsample_and_log_prob(4)[1].sum().backward()
    assert not calls, "sample_and_log_prob ran a forward pass of the flow"
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters())
    assert not model.sample(3).requires_grad and not model.sample_and_log_prob(3)[1].requires_grad


def test_the_distribution_samples_with_log_probs_in_its_sample_shape() -> None:
    model = _built("nsf", 3, {"layers": 1, "hidden": 8, "bins": 4})
    x, log_q = model.distribution().sample_and_log_prob((2, 3), generator=_generator("dist"))
    assert x.shape == (2, 3, 3) and log_q.shape == (2, 3)
    assert torch.equal(x, model.distribution().sample((2, 3), generator=_generator("dist")))
    assert_close(log_q.reshape(-1).numpy(), model.log_prob(x.reshape(6, 3)).detach().numpy(), "roundtrip",
                 "float64", 3, "FlowDistribution.sample_and_log_prob against log_prob")


@pytest.mark.parametrize("name, options", CONDITIONAL,
                         ids=[n + ("-ar" if o.get("autoregressive") else "") for n, o in CONDITIONAL])
def test_conditional_models_use_their_context(name: str, options: dict) -> None:
    torch.manual_seed(seed_for("models", "conditional", name))
    sizes = {} if name == "sylvester" else {"hidden": 8}
    model = models.build(name, 3, layers=2, context_dim=2, **sizes, **options).double()
    assert model.context_shape == (2,)
    kinds = models.describe(name)["kinds"]
    assert any(registry.get(k).context_shape is not None for k in kinds), "the registry's kinds are conditional"
    _train(model, steps=1, context=torch.randn(16, 2, generator=_generator("train c"), dtype=torch.float64))
    x = _data((3,), 4, "cx")  # (a trained model: sylvester's context weights start at 0)
    c = torch.randn(4, 2, generator=_generator("c"), dtype=torch.float64).requires_grad_()
    log_p = model.log_prob(x, c)
    other = model.log_prob(x, c.detach() + 1.0)
    assert bool((log_p - other).abs().min() > tolerance("logdet", "float64", 3) * 1e3), "the context changes log p"
    log_p.sum().backward()
    assert c.grad is not None and bool(c.grad.abs().sum() > 0), "log_prob's gradient reaches the context"
    c.grad = None
    samples = model.rsample(4, c, generator=_generator("cs"))
    assert samples.shape == (4, 3)
    samples.sum().backward()
    assert bool(c.grad.abs().sum() > 0), "rsample's gradient reaches the context"
    one = model.sample(5, c[0].detach(), generator=_generator("one"))
    rows = model.sample(5, c[0].detach().expand(5, 2), generator=_generator("one"))
    assert one.shape == (5, 3) and torch.equal(one, rows), "a single context is used for every sample"
    with pytest.raises(FlowInputError, match=r"conditional"):
        model.log_prob(x)
    with pytest.raises(FlowInputError, match=r"context must have shape \(3, \*\(2,\)\)"):
        model.sample(3, c.detach())


@pytest.mark.parametrize("name", ["residual", "quar", "planar", "radial", "glow"])
def test_unconditional_builders_refuse_a_context(name: str) -> None:
    assert not models.describe(name)["conditional"]
    shape = (1, 4, 4) if name == "glow" else 3
    with pytest.raises(ConfigError, match=f"{name} models are not conditional"):
        models.build(name, shape, context_dim=2)
    with pytest.raises(FlowInputError, match="unconditional"):
        models.build(name, shape, layers=1).log_prob(torch.rand(2, *(shape if name == "glow" else (3,))),
                                                     torch.zeros(2, 2))


def test_the_learnable_base_is_an_elementwise_affine_layer_in_front_of_the_normal() -> None:
    plain = _built("realnvp", 3, {"layers": 2, "hidden": 8})
    learned = models.realnvp(3, layers=2, hidden=8, learn_base=True).double()
    inner, base = learned.flow.flows
    assert isinstance(base, ElementwiseAffine) and base.event_shape == (3,)
    inner.load_state_dict(plain.flow.state_dict())
    x = _data((3,), 6, "base")
    assert torch.equal(learned.log_prob(x), plain.log_prob(x)), "a fresh learnable base is the standard normal"
    with torch.no_grad():
        base.shift.copy_(torch.tensor([0.5, -1.0, 2.0]))
        base.log_scale.copy_(torch.tensor([0.3, -0.2, 0.1]))
    u, logdet = inner(x)
    z = u * torch.exp(base.log_scale) + base.shift
    expected = standard_normal_log_prob(z) + logdet + base.log_scale.sum()
    assert_close(learned.log_prob(x).detach().numpy(), expected.detach().numpy(), "logdet", "float64", 3,
                 "log p with a learned diagonal Gaussian base")
    _train(learned, steps=1)
    assert not torch.equal(base.shift, torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)), "the base trains"


def test_shapes_names_and_options_are_checked() -> None:
    for name, shapes in (("planar", "vector"), ("maf", "vector"), ("glow", "image")):
        wrong = (1, 4, 4) if shapes == "vector" else 4
        with pytest.raises(ConfigError, match=f"{name} takes event shapes {shapes}"):
            models.build(name, wrong)
    with pytest.raises(ConfigError, match=r"unknown model builder 'real_nvp'; builders: glow, maf, naf, nsf"):
        models.build("real_nvp", 2)
    with pytest.raises(ConfigError, match=r"unknown options \['widht'\]"):
        models.realnvp(2, widht=3)
    with pytest.raises(ConfigError, match=r"event_shape must be a vector \(D,\) or an image"):
        models.realnvp((2, 3))
    with pytest.raises(ConfigError, match="D ≥ 2"):
        models.realnvp(1)
    with pytest.raises(ConfigError, match="layers must be a positive int"):
        models.maf(2, layers=0)


def test_describe_gives_every_builders_defaults_shapes_and_kinds() -> None:
    assert set(BUILDERS) >= {"realnvp", "maf", "nsf", "residual", "quar", "planar", "radial", "glow", "sylvester",
                             "naf", "sos", "umnn"}
    for name in BUILDERS:
        about = models.describe(name)
        assert about["summary"] and about["shapes"] and set(about["kinds"]) <= set(registry.names()), name
        assert about["defaults"]["context_dim"] == 0 and about["defaults"]["learn_base"] is False
    assert models.describe("realnvp")["defaults"]["layers"] == 4
    assert models.describe("glow")["shapes"] == [models.IMAGE]
    with pytest.raises(ConfigError, match="unknown model builder"):
        models.describe("nope")


# ---------------------------------------------------------------------------------------- files

SAVED = [("realnvp", 3, {"layers": 2, "hidden": 8, "context_dim": 2, "learn_base": True}),
         ("nsf", 3, {"layers": 2, "hidden": 8, "bins": 4, "autoregressive": True}),
         ("residual", 3, {"layers": 2, "hidden": 6, "coeff": 0.9}),
         ("quar", (1, 4, 4), {"layers": 1, "hidden": 2}),
         ("glow", (1, 4, 4), {"layers": 1, "hidden": 4}),
         ("planar", 3, {"layers": 2})]


def _context(model: FlowModel, n: int) -> torch.Tensor | None:
    shape = model.context_shape
    return None if shape is None else torch.randn(n, *shape, generator=_generator("ctx", n), dtype=torch.float64)


@pytest.mark.parametrize("name, shape, options", SAVED, ids=[s[0] for s in SAVED])
def test_a_trained_model_reloads_bit_identically(tmp_path, name: str, shape: Any, options: dict) -> None:
    model = _built(name, shape, options)
    _train(model, context=_context(model, 16))
    path = tmp_path / "model.pt"
    model.save(path)
    loaded = FlowModel.load(path)
    x, c = _data(model.event_shape, 8, "reload"), _context(model, 8)
    for mode in (True, False):
        model.train(mode)
        loaded.train(mode)
        torch.manual_seed(7)  # the residual estimators' draws
        expected = model.log_prob(x, c)
        torch.manual_seed(7)
        assert torch.equal(loaded.log_prob(x, c), expected), f"{name}: log_prob after reload, training={mode}"
    assert torch.equal(loaded.sample(3, c[:3] if c is not None else None, generator=_generator("r")),
                       model.sample(3, c[:3] if c is not None else None, generator=_generator("r")))
    assert loaded.arguments == model.arguments and loaded.builder == name


def test_the_dtype_and_the_callers_rng_survive_a_reload(tmp_path) -> None:
    model = models.maf(2, layers=1, hidden=4)
    model.save(tmp_path / "m.pt")
    torch.manual_seed(3)
    expected = torch.rand(2)
    torch.manual_seed(3)
    loaded = FlowModel.load(tmp_path / "m.pt")
    assert torch.equal(torch.rand(2), expected), "loading leaves the global RNG alone"
    assert loaded.flow._anchor.dtype == torch.float32
    assert FlowModel.load(tmp_path / "m.pt", map_location="cpu").flow._anchor.device.type == "cpu"


def _record(model: FlowModel) -> dict:
    return model._record()


def _refused(tmp_path, payload: Any, *needles: str, raw: bytes | None = None) -> None:
    path = tmp_path / "bad.pt"
    if raw is not None:
        path.write_bytes(raw)
    else:
        torch.save(payload, path)
    with pytest.raises(ConfigError) as info:
        FlowModel.load(path)
    for needle in needles:
        assert needle in str(info.value), str(info.value)


def test_files_that_are_not_the_model_are_refused(tmp_path) -> None:
    model = models.realnvp(3, layers=2, hidden=8)
    good = _record(model)
    _refused(tmp_path, model.state_dict(), "is not a flowspec model file")
    _refused(tmp_path, {**good, "format_version": 2}, "format version 2", "reads version 1")
    _refused(tmp_path, {**good, "builder": "flowpp"}, "built by 'flowpp'", "builders: glow")
    other = models.realnvp(3, layers=3, hidden=8)
    _refused(tmp_path, {**good, "spec": other.flow.to_spec().to_json()}, "the saved spec is not the model realnvp(")
    _refused(tmp_path, {**good, "state_dict": models.realnvp(3, layers=2, hidden=9).state_dict()},
             "the weights do not fit realnvp(")
    tampered = {k: v.clone() for k, v in good["state_dict"].items()}
    next(iter(tampered.values())).add_(1.0)
    _refused(tmp_path, {**good, "state_dict": tampered}, "the weights and the saved spec disagree")
    del good["dtype"]
    _refused(tmp_path, good, "lacks the entries ['dtype']")


def test_truncated_corrupted_and_foreign_files_are_refused(tmp_path) -> None:
    model = models.planar(2, layers=2)
    model.save(tmp_path / "m.pt")
    data = (tmp_path / "m.pt").read_bytes()
    _refused(tmp_path, None, "not a readable flowspec model file", raw=data[: len(data) // 2])
    noise = np.random.default_rng(seed_for("models", "noise")).integers(0, 256, 300, dtype=np.uint8).tobytes()
    _refused(tmp_path, None, "not a readable flowspec model file", raw=data[:64] + noise + data[364:])
    _refused(tmp_path, None, "not a readable flowspec model file", raw=pickle.dumps(print))
    with pytest.raises(ConfigError, match="cannot read the model file"):
        FlowModel.load(tmp_path / "absent.pt")


def test_a_hand_made_model_works_but_cannot_be_saved(tmp_path) -> None:
    model = FlowModel(Planar([2]))
    assert model.log_prob(torch.zeros(3, 2)).shape == (3,)
    with pytest.raises(ConfigError, match="only a model made by a builder"):
        model.save(tmp_path / "m.pt")
    with pytest.raises(ConfigError, match="needs a flowspec Flow"):
        FlowModel(torch.nn.Linear(2, 2))
