"""Checking another library: foreign kinds, per-kind capabilities, declined configs, validation as a
claim, conventions and the small frictions (scalar log-dets, parameterless layers, global
generators). Each declaration is shown to be honoured by a correct module *and* to catch a module
that breaks what it declares, written as an implementer would get it wrong."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from flowspec.cli import main
from flowspec.conformance import PROPERTIES, ForeignKind, TorchFlowAdapter, run, run_one
from flowspec.conformance.adapter import Capabilities, Declined
from flowspec.conformance.runner import SelectionError, applicable
from flowspec.errors import FlowInputError

D = 3


def _check(t: torch.Tensor, dtype: torch.dtype | None) -> None:
    """What each toy module validates: a finite (batch, D) tensor of its own dtype."""
    if t.dim() != 2 or t.shape[1] != D or not t.is_floating_point() or not torch.isfinite(t).all() \
            or (dtype is not None and t.dtype != dtype):
        raise FlowInputError(f"expected finite {dtype} input of shape (batch, {D}), got {t.dtype} {tuple(t.shape)}")


class Shift(torch.nn.Module):
    """z = x + b: volume preserving; returns its log-det as a Python 0 (a scalar, broadcast by the suite)."""

    def __init__(self, b: torch.Tensor | None = None):
        super().__init__()
        self.b = torch.nn.Parameter(torch.randn(D) if b is None else b)

    def forward(self, x, context=None):
        _check(x, self.b.dtype)
        return x + self.b, 0.0

    def inverse(self, z, context=None):
        _check(z, self.b.dtype)
        return z - self.b


class ScaledShift(Shift):
    """Declared volume preserving, but scales by 1.5 (and says log-det 0): a forgotten log-det term."""

    def forward(self, x, context=None):
        _check(x, self.b.dtype)
        return 1.5 * x + self.b, 0.0

    def inverse(self, z, context=None):
        _check(z, self.b.dtype)
        return (z - self.b) / 1.5


class LowerLinear(torch.nn.Module):
    """z = L x with L lower triangular (positive diagonal): autoregressive in the identity order.
    ``leak`` keeps one entry above the diagonal: a mask built with ``tril(…, 1)`` instead of ``tril``."""

    def __init__(self, leak: bool = False):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(D, D) * 0.3)
        self.log_diag = torch.nn.Parameter(torch.randn(D) * 0.3)
        self.leak = leak

    def matrix(self) -> torch.Tensor:
        strict = torch.tril(self.weight, diagonal=1 if self.leak else 0) - torch.diag(torch.diagonal(self.weight))
        return strict + torch.diag(self.log_diag.exp())

    def forward(self, x, context=None):
        _check(x, self.weight.dtype)
        m = self.matrix()
        return x @ m.T, torch.linalg.slogdet(m)[1].expand(x.shape[0])

    def inverse(self, z, context=None):
        _check(z, self.weight.dtype)
        return torch.linalg.solve(self.matrix(), z.T).T


class Contractive(torch.nn.Module):
    """z = x + coefficient·tanh(W x)/‖W‖₂ (Lip(g) ≤ coefficient); the inverse is a fixed-point solve.
    ``unnormalised`` forgets the division by ‖W‖₂ (a spectral normalisation that never ran)."""

    def __init__(self, coefficient: float = 0.5, unnormalised: bool = False):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(D, D) * 2.0)
        self.coefficient, self.unnormalised = coefficient, unnormalised

    def g(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight if self.unnormalised else self.weight / torch.linalg.matrix_norm(self.weight, ord=2)
        return self.coefficient * torch.tanh(x @ w.T)

    def forward(self, x, context=None):
        _check(x, self.weight.dtype)
        jac = torch.func.vmap(torch.func.jacrev(lambda v: v + self.g(v[None])[0]))(x)
        return x + self.g(x), torch.linalg.slogdet(jac)[1]

    def inverse(self, z, context=None):
        _check(z, self.weight.dtype)
        x = z.clone()
        for _ in range(200):
            x = z - self.g(x)
        return x


FOREIGN = (
    ForeignKind("shift", lambda config: (D,), volume_preserving=True, summary="z = x + b"),
    ForeignKind("lower", lambda config: (D,), autoregressive_order=lambda config: range(D), dense=True),
    ForeignKind("contractive", lambda config: (D,), configs=({"coefficient": 0.5}, {"coefficient": 0.9}),
                residual_lipschitz=0.9),
)


class ToyLibrary(TorchFlowAdapter):
    """An adapter for a toy library whose modules are built by ``factories[local name](config)``."""

    def __init__(self, factories: dict, *, name: str = "toy", **declarations):
        self._factories, self._declarations = factories, declarations
        super().__init__(name=name, kinds=set(), instantiator=self._build, white_box=False,
                         input_errors=(FlowInputError,))

    def _build(self, kind: str, config, seed: int) -> torch.nn.Module:
        local = kind.split(":", 1)[1]
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return self._factories[local](config)

    def capabilities(self) -> Capabilities:
        from dataclasses import replace

        declared = {"foreign": tuple(k for k in FOREIGN if k.name in self._factories), **self._declarations}
        return replace(super().capabilities(), **declared)


GOOD = {"shift": lambda config: Shift(), "lower": lambda config: LowerLinear(),
        "contractive": lambda config: Contractive(config["coefficient"])}


def _statuses(adapter, kinds, properties=None, dtypes=("float64",)) -> dict[tuple[str, str], str]:
    return {(r.kind, r.property): r.status for r in run(adapter, kinds=kinds, properties=properties, dtypes=dtypes)}


# ----------------------------------------------------------------------------- foreign kinds

def test_foreign_kinds_get_the_generic_and_their_structural_properties():
    adapter = ToyLibrary(GOOD)
    names = {kind for kind, _ in applicable(None, None, adapter) if ":" in kind}
    assert names == {"toy:shift", "toy:lower", "toy:contractive"}
    props = {p.name for kind, p in applicable(["toy:lower"], None, adapter)}
    assert {"logdet_matches_fd_jacobian", "inverse_round_trip", "autoregressive_forbidden_entries_zero_fd",
            "autoregressive_no_dead_connections", "batch_independence"} <= props
    assert not any(PROPERTIES[p].requires & {"white_box"} for p in props), "no reference for a foreign kind"
    assert "invalid_config_rejected" not in props
    statuses = _statuses(adapter, ["toy:shift", "toy:lower", "toy:contractive"])
    assert statuses and all(s in ("passed", "not_supported") for s in statuses.values()), statuses
    assert statuses[("toy:shift", "volume_preserving_logdet_zero")] == "passed"
    assert statuses[("toy:contractive", "residual_lipschitz_bound")] == "passed"


@pytest.mark.parametrize("local, module, caught_by", [
    ("shift", lambda config: ScaledShift(), "volume_preserving_logdet_zero"),
    ("lower", lambda config: LowerLinear(leak=True), "autoregressive_forbidden_entries_zero_fd"),
    ("contractive", lambda config: Contractive(config["coefficient"], unnormalised=True), "residual_lipschitz_bound"),
])
def test_a_broken_declaration_is_caught(local, module, caught_by):
    adapter = ToyLibrary({local: module})
    assert _statuses(adapter, [f"toy:{local}"], [caught_by])[(f"toy:{local}", caught_by)] == "failed"


def test_a_foreign_kind_never_shadows_a_registered_one():
    from flowspec import registry
    from flowspec.errors import ConfigError

    with pytest.raises(ValueError, match="without ':'"):
        ForeignKind("zuko:maf", lambda config: (D,))
    with pytest.raises(ConfigError, match="without ':'"):
        registry.register(registry.get("planar").__class__(**{**registry.get("planar").__dict__, "name": "a:b"}))


def test_unknown_kind_is_a_one_line_usage_error(capsys, monkeypatch):
    import sys
    import types

    module = types.ModuleType("toy_library_adapter")
    module.conformance_adapter = ToyLibrary(GOOD)
    monkeypatch.setitem(sys.modules, "toy_library_adapter", module)
    assert main(["conformance", "--impl", "toy_library_adapter", "--kinds", "toy:nothing", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "toy:nothing" in err and "toy:shift" in err and "Traceback" not in err
    with pytest.raises(SelectionError, match="declared by toy"):
        applicable(["toy:nothing"], None, ToyLibrary(GOOD))


# ----------------------------------------------------------------------------- per-kind capabilities, declines

def test_a_kind_without_an_inverse_loses_only_its_inverse_properties():
    adapter = ToyLibrary(GOOD, without={"toy:shift": frozenset({"inverse"})})
    statuses = _statuses(adapter, ["toy:shift", "toy:lower"], ["inverse_round_trip", "logdet_matches_fd_jacobian"])
    assert statuses[("toy:shift", "inverse_round_trip")] == "not_supported"
    assert statuses[("toy:shift", "logdet_matches_fd_jacobian")] == "passed"
    assert statuses[("toy:lower", "inverse_round_trip")] == "passed"


def test_declined_configs_are_counted_with_their_reason():
    def contractive(config):
        if config["coefficient"] > 0.6:
            raise Declined("the toy library caps the coefficient at 0.6")
        return Contractive(config["coefficient"])

    result = run(ToyLibrary({"contractive": contractive}), kinds=["toy:contractive"],
                 properties=["logdet_matches_fd_jacobian"], dtypes=("float64",))[0]
    assert result.status == "passed" and set(result.declined) == {"the toy library caps the coefficient at 0.6"}
    assert 0 < sum(result.declined.values()) < result.examples
    everything = run(ToyLibrary({"shift": lambda config: (_ for _ in ()).throw(Declined("no shifts today"))}),
                     kinds=["toy:shift"], properties=["batch_independence"], dtypes=("float64",))[0]
    assert everything.status == "not_supported" and "no shifts today" in everything.message


def test_declarations_for_unknown_kinds_or_conventions_are_refused():
    with pytest.raises(SelectionError, match="does not implement"):
        applicable(None, None, ToyLibrary(GOOD, without={"toy:other": frozenset({"inverse"})}))
    with pytest.raises(SelectionError, match="unknown conventions"):
        applicable(None, None, ToyLibrary(GOOD, conventions={"toy:shift": frozenset({"made_up"})}))


# ----------------------------------------------------------------------------- validation as a claim

class Unvalidated(Shift):
    """Validates nothing: NaN passes through."""

    def forward(self, x, context=None):
        return x + self.b, 0.0


class DtypeOnly(Shift):
    """Checks dtype and shape but not finiteness. While raw bad inputs travelled as float64, its float32
    checks "rejected" NaN and inf only because of their dtype."""

    def forward(self, x, context=None):
        if x.dtype != self.b.dtype or x.dim() != 2 or x.shape[1] != D:
            raise FlowInputError(f"expected {self.b.dtype} (batch, {D}), got {x.dtype} {tuple(x.shape)}")
        return x + self.b, 0.0


def test_unclaimed_validation_is_not_claimed_and_lists_what_passed():
    result = run(ToyLibrary({"shift": lambda config: Unvalidated()}, validates_input=False), kinds=["toy:shift"],
                 properties=["bad_input_rejected"], dtypes=("float64",))[0]
    assert result.status == "not_claimed" and "NaN entry passed through silently" in result.message
    claimed = run(ToyLibrary({"shift": lambda config: Unvalidated()}), kinds=["toy:shift"],
                  properties=["bad_input_rejected"], dtypes=("float64",))[0]
    assert claimed.status == "failed"


def test_bad_inputs_arrive_in_the_dtype_under_test():
    result = run(ToyLibrary({"shift": lambda config: DtypeOnly()}), kinds=["toy:shift"],
                 properties=["bad_input_rejected"], dtypes=("float32",))[0]
    assert result.status == "failed" and "NaN entry" in result.message


# ----------------------------------------------------------------------------- conventions

class UnbiasedActNorm(torch.nn.Module):
    """ActNorm on (batch, C) initialised from its first training batch with the unbiased standard
    deviation (``torch.std``'s default): the convention two libraries share."""

    def __init__(self, channels: int, unbiased: bool = True):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(channels))
        self.log_scale = torch.nn.Parameter(torch.zeros(channels))
        self.unbiased, self.initialised = unbiased, False

    def forward(self, x, context=None):
        if self.training and not self.initialised:
            with torch.no_grad():
                std = x.std(0, unbiased=self.unbiased)
                constant = (x.max(0).values == x.min(0).values)
                self.bias.copy_(torch.where(constant, -x[0], -x.mean(0)))
                self.log_scale.copy_(torch.where(constant, 0.0, -torch.log(std)))
            self.initialised = True
        return (x + self.bias) * self.log_scale.exp(), self.log_scale.sum().expand(x.shape[0])

    def inverse(self, z, context=None):
        return z * torch.exp(-self.log_scale) - self.bias


def _actnorm_adapter(unbiased: bool, conventions: dict) -> TorchFlowAdapter:
    """The registered kind actnorm on vectors, fresh modules only (only data_init_from_fresh runs)."""
    class Adapter(TorchFlowAdapter):
        def capabilities(self):
            from dataclasses import replace

            return replace(super().capabilities(), conventions=conventions)

    def build(kind, config, seed):
        if len(config["shape"]) != 1:
            raise Declined("the toy ActNorm takes vectors only")
        return UnbiasedActNorm(config["shape"][0], unbiased)

    return Adapter(name="toy actnorm", kinds={"actnorm"}, instantiator=build, fresh=build, white_box=False)


def _data_init(adapter) -> dict[str, str]:
    results = run(adapter, kinds=["actnorm"], properties=["data_init_from_fresh"], dtypes=("float64",))
    return {r.dtype: r.status for r in results}


def test_a_declared_convention_is_reported_as_such_and_still_checked():
    convention = {"actnorm": frozenset({"actnorm_unbiased_std"})}
    assert _data_init(_actnorm_adapter(True, {})) == {"float64": "failed"}
    assert _data_init(_actnorm_adapter(True, convention)) == {"float64": "convention"}
    assert _data_init(_actnorm_adapter(False, convention)) == {"float64": "failed"}  # it does not follow it


# ----------------------------------------------------------------------------- small frictions

class Permute(torch.nn.Module):
    """A parameterless layer whose permutation comes from NumPy's global generator."""

    def __init__(self):
        super().__init__()
        self.order = np.random.permutation(D)
        self.seen: list[torch.dtype] = []

    def forward(self, x, context=None):
        _check(x, None)
        self.seen.append(x.dtype)
        return x[:, self.order], torch.zeros(x.shape[0], dtype=x.dtype)

    def inverse(self, z, context=None):
        _check(z, None)
        return z[:, np.argsort(self.order)]


def test_parameterless_layers_get_the_dtype_under_test_and_global_generators_are_seeded():
    built: list[Permute] = []

    def permute(config):
        built.append(Permute())
        return built[-1]

    adapter = ToyLibrary({"shift": permute})
    applicable(["toy:shift"], ["logdet_matches_fd_jacobian"], adapter)  # loads the properties, activates the kind
    first = run_one(adapter, PROPERTIES["logdet_matches_fd_jacobian"], "toy:shift", "float32", "cpu")
    assert first.status == "passed" and built and all(d == torch.float32 for m in built for d in m.seen)
    orders = [tuple(m.order) for m in built]
    built.clear()
    run_one(adapter, PROPERTIES["logdet_matches_fd_jacobian"], "toy:shift", "float32", "cpu")
    assert [tuple(m.order) for m in built] == orders, "NumPy's global generator is not seeded per check"
