"""Module state and modes: properties that run a flow the way a user's program does.

The value properties of :mod:`.generic` build a flow and evaluate it once, in training mode, under
``no_grad``. A user's program also switches to evaluation mode, trains with gradients enabled,
saves and loads checkpoints (into a module that already ran), builds a flow that initialises itself
from its first batch, and converts it with ``.to(dtype)``. Each is a property here:

* ``train_eval_agree`` (black-box, ``train_eval``): training and evaluation mode give the same z,
  log|det| and inverse, in the order train → eval → train;
* ``forward_with_grad_matches_reference`` (white-box) and ``forward_with_grad_matches_fd_jacobian``
  (black-box), requirement ``grad``: a forward with autograd enabled (input requiring gradients,
  training mode: the value a user sees as the training loss) gives the reference's z and log|det|,
  or, black-box, the no_grad forward's z and ``slogdet`` of a finite-difference Jacobian;
* ``state_round_trip`` (black-box, ``state``): a checkpoint loaded into a module built from other
  parameters, both one never evaluated and one evaluated before loading, reproduces the original's
  forward, log|det| and inverse (and, where the adapter is white-box, the original's z and log|det|
  are the reference's), and its parameters stay the checkpoint's after a training forward (no
  re-initialisation);
* ``data_init_from_fresh`` (black-box, ``fresh`` and ``train_eval``; kinds whose reference declares
  a data-dependent initialisation, ``extras["init"]``): a fresh module's first training forward
  initialises by the reference's rule, also from a batch of one and with a constant channel, and
  later forwards (training and evaluation) do not initialise again;
* ``data_init_checkpointed`` (also ``state``): the checkpoint of a module so initialised, loaded
  into another fresh module, is an initialised state (its first training forward does not
  initialise again), and the checkpoint of a fresh module, loaded into an initialised one, is an
  uninitialised state (its next training forward initialises), as is, white-box, a spec whose
  ``initialized`` flag is 0;
* ``data_init_skips_an_empty_batch``: a fresh module's first training forward on an empty batch
  gives empty results and initialises nothing (the next batch initialises);
* ``spec_export_round_trip`` (white-box, hook ``to_spec``): the spec a loaded flow exports describes
  the same map (the reference's z and log|det| at it are those at the loaded spec);
* ``convert_dtype`` (black-box, ``convert`` and ``state``): a flow built and evaluated in the other
  dtype, then converted with ``.to``, gives the same values as the same state loaded into a flow
  built in this dtype (and, white-box, the reference's z and log|det| at the converted parameters).

Outputs that come from one module in two states are compared at κ = 1 first; the condition number
(finite differences of the implementation, or the reference's Jacobian) is computed only where that
comparison fails (:func:`compare`).

**Stochastic log-dets.** A configuration whose log-det is a random estimate (the residual kinds'
``logdet`` other than ``"exact"``: :func:`stochastic_logdet`) is not compared here: evaluation
mode deliberately changes the estimator (more exact terms), and a forward with gradients may draw
differently from one without. These properties reject such draws (hypothesis draws another); the
estimators are held to the reference by the residual family's properties.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np
from hypothesis import assume

from flowspec import reference, registry
from flowspec.reference.residual import setting
from flowspec.spec import FlowSpec

from . import namespace, strategies
from .conventions import actnorm_initialised
from .covering import axis, declare_axes
from .finite_diff import ROUND
from .generic import check_empty_batch
from .property import CheckContext, PropertyFailure, deterministic_training, prop
from .seeding import rng, seed_for
from .strategies import event_size
from .tolerances import relative_error

BATCH = 2  # samples per evaluation: enough for a batch, few for the finite differences of a failure


# ----------------------------------------------------------------------------- shared machinery

def stochastic_logdet(spec: FlowSpec) -> bool:
    """Whether ``spec``'s forward log-det is a random estimate: a kind with a stochastic estimator
    (the reference declares ``extras["logdet_estimate"]``) configured with ``logdet`` other than
    ``"exact"``, in ``spec`` or any child spec."""
    children = [c for c in spec.params.values() if isinstance(c, FlowSpec)]
    if any(stochastic_logdet(c) for c in children):
        return True
    return "logdet_estimate" in namespace.kind(spec.kind).extras and setting(spec.config, "logdet") != "exact"


def draw_deterministic(ctx: CheckContext, batch: int = BATCH):
    """A spec with a deterministic log-det (module docstring), an input batch and its context."""
    spec = ctx.draw_spec()
    assume(not stochastic_logdet(spec))
    return spec, ctx.draw_input(spec, batch=batch), ctx.draw_context(spec, batch)


def redrawn(spec: FlowSpec, gen: np.random.Generator) -> FlowSpec:
    """A spec of the same structure and configs as ``spec`` with every leaf's parameters drawn again."""
    if namespace.kind(spec.kind).composite:
        params = {k: redrawn(v, gen) if isinstance(v, FlowSpec) else v for k, v in spec.params.items()}
        return FlowSpec(spec.kind, spec.config, params)
    return reference.init_spec(spec.kind, spec.config, gen)


def rounded(spec: FlowSpec, dtype: str) -> FlowSpec:
    """``spec`` with every parameter rounded to ``dtype`` (what a flow built in ``dtype`` holds)."""
    params = {k: rounded(v, dtype) if isinstance(v, FlowSpec) else np.asarray(v).astype(ROUND[dtype]).astype(np.float64)
              for k, v in spec.params.items()}
    return FlowSpec(spec.kind, spec.config, params)


def build(ctx: CheckContext, spec: FlowSpec, dtype: str | None = None) -> Any:
    """The implementation's flow for ``spec`` in ``dtype`` (default: the context's): loaded where the
    adapter is white-box, else instantiated from the spec's kind, config and a seed derived from it."""
    dtype = dtype or ctx.dtype
    if ctx.white_box:
        return ctx.adapter.load(spec, dtype, ctx.device)
    return ctx.deterministic(ctx.adapter.instantiate(spec.kind, spec.config, seed_for(spec.to_json()), dtype,
                                                     ctx.device))


def other_flow(ctx: CheckContext, spec: FlowSpec, label: str) -> Any:
    """A flow of ``spec``'s kind and config with different parameters."""
    if ctx.white_box:
        return ctx.adapter.load(redrawn(spec, rng("other parameters", label, spec.to_json())), ctx.dtype, ctx.device)
    return ctx.deterministic(ctx.adapter.instantiate(
        spec.kind, spec.config, seed_for("other parameters", label, spec.to_json()), ctx.dtype, ctx.device))


def training_mode(ctx: CheckContext, flow: Any) -> None:
    """Put ``flow`` in training mode where the adapter can switch modes (flows start in it otherwise),
    except for a kind declaring a stochastic training-mode log-det: it stays in the evaluation mode
    :meth:`~.property.CheckContext.deterministic` put it in."""
    if ctx.adapter.capabilities().has("train_eval") and deterministic_training(ctx.kind):
        ctx.adapter.set_training(flow, True)


def reseed(ctx: CheckContext, key: Any) -> None:
    """Reseed the implementation's generator (where the adapter can) so that evaluations repeat."""
    if ctx.adapter.capabilities().has("reseed"):
        ctx.adapter.reseed(seed_for("evaluation", key))


def evaluate(ctx: CheckContext, flow: Any, x: np.ndarray, c: np.ndarray | None,
             z_for_inverse: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """z and log|det| at ``x`` and, where the adapter inverts, f⁻¹ at ``z_for_inverse`` (default: that
    z), each after the same reseed."""
    reseed(ctx, "forward")
    z, logdet = ctx.adapter.forward(flow, x, c)
    out = {"z": z, "log|det|": logdet}
    if ctx.adapter.capabilities().has("inverse"):
        reseed(ctx, "inverse")
        out["f⁻¹(z)"] = ctx.adapter.inverse(flow, z if z_for_inverse is None else z_for_inverse, c)
    return out


QUANTITIES = {"z": "forward", "log|det|": "logdet", "f⁻¹(z)": "inverse"}


def compare(ctx: CheckContext, actual: dict[str, np.ndarray], expected: dict[str, np.ndarray], size: int,
            what: str, condition: Callable[[], float]) -> None:
    """Compare the outputs of :func:`evaluate` entry by entry with the table's rows. ``condition()``
    (the Jacobian's condition number, for the conditioned rows) is computed only for a comparison
    that fails at κ = 1: most outputs compared here come from the same computation and agree to
    the last digit, and finite-difference Jacobians are the costly part of these properties."""
    for name, value in expected.items():
        quantity = QUANTITIES[name]
        kappa = 1.0 if relative_error(actual[name], value) <= ctx.tol(quantity, size) else condition()
        ctx.assert_close(actual[name], value, quantity, size, f"{name} {what}", kappa)


def fd_condition(ctx: CheckContext, flow: Any, spec: FlowSpec, x: np.ndarray,
                 c: np.ndarray | None) -> Callable[[], float]:
    """The condition number of the implementation's finite-difference Jacobians at ``x``, on demand."""
    from .generic import fd_jacobians

    return lambda: ctx.condition(spec, x, c, fd_jacobians(ctx, flow, spec, x, c))


def against_reference(ctx: CheckContext, actual: dict[str, np.ndarray], spec: FlowSpec, x: np.ndarray,
                      c: np.ndarray | None, what: str) -> None:
    """z and log|det| of :func:`evaluate` against the reference's (slogdet of its Jacobian, which also
    gives the condition number). The inverse is left to ``inverse_matches_reference``: these
    properties compare it between modules, and the reference's solves are the costly part."""
    jacobians = reference.jacobian(spec, x, c)
    expected = {"z": reference.forward(spec, x, c), "log|det|": np.linalg.slogdet(jacobians)[1]}
    compare(ctx, {k: actual[k] for k in expected}, expected, event_size(spec), what,
            lambda: ctx.condition(spec, x, c, jacobians))


# ----------------------------------------------------------------------------- modes

@prop("train_eval_agree", requires=["black_box", "train_eval"], kinds=deterministic_training)
def train_eval_agree(ctx: CheckContext) -> None:
    """z, log|det| and f⁻¹ are the same in training and in evaluation mode, switching train → eval →
    train on one flow (a kind's evaluation path, such as cached or fused weights, is exercised)."""
    spec, x, c = draw_deterministic(ctx)
    flow = ctx.instantiate(spec)
    size = event_size(spec)
    ctx.adapter.set_training(flow, True)
    trained = evaluate(ctx, flow, x, c)
    if ctx.convention("training_logdet_surrogate"):  # the training-mode value is no log-det (conventions)
        del trained["log|det|"]
    kappa = fd_condition(ctx, flow, spec, x, c)
    ctx.adapter.set_training(flow, False)
    compare(ctx, evaluate(ctx, flow, x, c, trained["z"]), trained, size, "in evaluation mode vs training mode", kappa)
    ctx.adapter.set_training(flow, True)
    compare(ctx, evaluate(ctx, flow, x, c, trained["z"]), trained, size, "in training mode again", kappa)


@prop("forward_with_grad_matches_reference", requires=["white_box", "grad"])
def forward_with_grad_matches_reference(ctx: CheckContext) -> None:
    """With autograd enabled (input requiring gradients, training mode), z and log|det| equal the
    reference's: the values a training loop computes its loss from."""
    spec, x, c = draw_deterministic(ctx)
    flow = ctx.load(spec)
    training_mode(ctx, flow)
    z, logdet = ctx.adapter.forward(flow, x, c, grad=True)
    size = event_size(spec)
    ctx.assert_close(z, reference.forward(spec, x, c), "forward", size, "z with gradients enabled")
    jacobians = reference.jacobian(spec, x, c)  # the reference's log|det| is slogdet of its Jacobian
    kappa = ctx.condition(spec, x, c, jacobians)
    ctx.assert_close(logdet, np.linalg.slogdet(jacobians)[1], "logdet", size, "log|det| with gradients enabled",
                     kappa)


@prop("forward_with_grad_matches_fd_jacobian", requires=["black_box", "grad"], kinds=deterministic_training)
def forward_with_grad_matches_fd_jacobian(ctx: CheckContext) -> None:
    """With autograd enabled, z equals the no_grad forward's and log|det| equals slogdet of a
    Richardson central-difference Jacobian of the implementation's forward."""
    spec, x, c = draw_deterministic(ctx, batch=2)
    flow = ctx.instantiate(spec)
    training_mode(ctx, flow)
    z, logdet = ctx.adapter.forward(flow, x, c, grad=True)
    size = event_size(spec)
    ctx.assert_close(z, ctx.adapter.forward(flow, x, c)[0], "forward", size, "z with gradients vs under no_grad")
    from .generic import fd_jacobians, fd_logdet_condition

    if ctx.convention("training_logdet_surrogate"):  # the training-mode value is no log-det (conventions)
        return
    jacobians = fd_jacobians(ctx, flow, spec, x, c)
    kappa = fd_logdet_condition(ctx, spec, x, c, jacobians)
    sign, expected = np.linalg.slogdet(jacobians)
    ctx.require(bool(np.all(sign != 0)), "finite-difference Jacobian is singular")
    ctx.assert_close(logdet, expected, "fd_logdet", size, "log|det| with gradients vs finite differences", kappa)


# ----------------------------------------------------------------------------- exported specs

@prop("spec_export_round_trip", requires=["white_box", "to_spec"])
def spec_export_round_trip(ctx: CheckContext) -> None:
    """The spec a loaded flow exports (hook ``to_spec``: what a user saves to rebuild the model
    elsewhere) is of the same kind, its config is one the reference accepts, and the reference's z
    and log|det| at it are those at the loaded spec with its parameters rounded to the dtype under
    test: a config key exported wrong (a list cut short, a default written in its place) changes
    the exported model even where the loaded flow itself is right."""
    spec, x, c = draw_deterministic(ctx)
    exported = ctx.adapter.call_hook(ctx.load(spec), "to_spec")
    ctx.require(isinstance(exported, FlowSpec) and exported.kind == spec.kind,
                f"to_spec returned {exported!r}, not a spec of kind {spec.kind!r}")
    try:
        z, logdet = reference.forward_and_log_abs_det(exported, x, c)
    except Exception as exc:  # noqa: BLE001 - the reference refuses the export: the failure reported
        raise PropertyFailure(f"the reference refuses the exported spec: {type(exc).__name__}: {exc}") from exc
    expected = rounded(spec, ctx.dtype)
    size = event_size(spec)
    ctx.assert_close(z, reference.forward(expected, x, c), "forward", size, "z of the exported spec")
    ctx.assert_close(logdet, reference.log_abs_det(expected, x, c), "logdet", size, "log|det| of the exported spec")


# ----------------------------------------------------------------------------- checkpoints

@prop("state_round_trip", requires=["black_box", "state"])
def state_round_trip(ctx: CheckContext) -> None:
    """A checkpoint of a flow loaded into another module of the same kind and config built from other
    parameters — one never evaluated (a fresh module where the adapter builds them) and one evaluated
    once before loading, as a user who builds, runs, then loads — gives the original's z, log|det|
    and f⁻¹ (and, white-box, the reference's z and log|det|), and a training forward keeps the checkpoint's
    parameters (no re-initialisation)."""
    spec, x, c = draw_deterministic(ctx)
    caps = ctx.adapter.capabilities()
    original = ctx.instantiate(spec)
    state = ctx.adapter.save_state(original)
    expected = evaluate(ctx, original, x, c)
    size = event_size(spec)
    kappa = fd_condition(ctx, original, spec, x, c)
    if "white_box" in caps.modes:
        against_reference(ctx, expected, spec, x, c, "of the original vs the reference")
    for label, target in _targets(ctx, spec, x, c).items():
        ctx.adapter.load_state(target, state)
        compare(ctx, evaluate(ctx, target, x, c, expected.get("z")), expected, size,
                f"after loading the checkpoint into {label}", kappa)
        if caps.has("parameters"):
            _same_parameters(ctx, target, original, size, label)


def _targets(ctx: CheckContext, spec: FlowSpec, x: np.ndarray, c: np.ndarray | None) -> dict[str, Any]:
    """The modules a checkpoint is loaded into (see :func:`state_round_trip`)."""
    caps = ctx.adapter.capabilities()
    if caps.has("fresh") and not namespace.kind(spec.kind).composite:
        unused = ctx.deterministic(
            ctx.adapter.fresh(spec.kind, spec.config, seed_for("fresh", spec.to_json()), ctx.dtype, ctx.device))
    else:
        unused = other_flow(ctx, spec, "never evaluated")
    used = other_flow(ctx, spec, "evaluated")
    other_x = strategies.sample_array(spec, seed_for("other input", spec.to_json()), 1.0, x.shape[0])
    evaluate(ctx, used, other_x, c)
    return {"a module never evaluated": unused, "a module evaluated once before": used}


def _same_parameters(ctx: CheckContext, target: Any, original: Any, size: int, label: str) -> None:
    mine, theirs = ctx.adapter.parameters(target), ctx.adapter.parameters(original)
    ctx.require(set(mine) == set(theirs), f"parameters after loading into {label}: {sorted(mine)} vs {sorted(theirs)}")
    for name in sorted(theirs):
        ctx.assert_close(mine[name], theirs[name], "forward", size,
                         f"parameter {name} after loading into {label} and a training forward")


# ----------------------------------------------------------------------------- data-dependent initialisation

INIT_BATCHES = ("several samples", "one sample", "constant channel")


def _has_data_init(kind: str) -> bool:
    return "init" in namespace.kind(kind).extras


def _init_batch(ctx: CheckContext, spec: FlowSpec) -> np.ndarray:
    """A batch for the initialisation: several samples, one sample, or several with channel 0
    constant over the batch and the positions (values rounded to the dtype: what the flow sees)."""
    case = ctx.draw(axis("init batch", INIT_BATCHES), "init batch")
    x = ctx.draw_input(spec, batch=1 if case == "one sample" else strategies.BATCH)
    if case == "constant channel":
        x[:, 0] = x.flat[0]
    return x.astype(ROUND[ctx.dtype]).astype(np.float64)


declare_axes([kind for kind in registry.names() if _has_data_init(kind)], **{"init batch": INIT_BATCHES})


@prop("data_init_from_fresh", requires=["black_box", "fresh", "train_eval"], kinds=_has_data_init)
def data_init_from_fresh(ctx: CheckContext) -> None:
    """A fresh module's first training forward initialises from its batch by the reference's rule
    (``extras["init"]``; actnorm: README "ActNorm initialisation", including a batch of one and a
    constant channel, which are only centred), so z and log|det| equal the reference's at those
    parameters; a second batch, in training and in evaluation mode, sees the same parameters."""
    spec = ctx.draw_spec()
    x = _init_batch(ctx, spec)
    flow = _fresh(ctx, spec)
    initialised = _initialised(ctx, spec, x)
    batches = {"the initialising batch": x, "a later batch": ctx.draw_input(spec)}
    for mode, training in (("training", True), ("evaluation", False)):
        ctx.adapter.set_training(flow, training)
        for name, batch in batches.items():
            _check_initialised(ctx, flow, initialised, batch, f"on {name} in {mode} mode after initialisation", x)


@prop("data_init_checkpointed", requires=["black_box", "fresh", "train_eval", "state"], kinds=_has_data_init)
def data_init_checkpointed(ctx: CheckContext) -> None:
    """The checkpoint of a module initialised by its first training forward, loaded into another
    fresh module, is an initialised state: that module's first training forward, on another batch,
    keeps the loaded parameters (z and log|det| are the reference's at the first batch's
    initialisation) instead of initialising from its own batch. Conversely the checkpoint of a fresh
    module (:func:`_check_uninitialised_checkpoint`) and, white-box, a spec whose ``initialized``
    flag is 0 are uninitialised states: the next training forward initialises from its batch."""
    spec = ctx.draw_spec()
    x = _init_batch(ctx, spec)
    initialised = _initialised(ctx, spec, x)
    source = _fresh(ctx, spec)
    ctx.adapter.set_training(source, True)
    _check_initialised(ctx, source, initialised, x, "on the initialising batch", x)
    target = _fresh(ctx, spec)
    ctx.adapter.load_state(target, ctx.adapter.save_state(source))
    ctx.adapter.set_training(target, True)
    _check_initialised(ctx, target, initialised, ctx.draw_input(spec),
                       "on another batch, in training mode, after loading the initialised checkpoint", x)
    _check_uninitialised_checkpoint(ctx, spec, x, initialised)
    if "white_box" in ctx.adapter.capabilities().modes and "initialized" in spec.params:
        loaded = ctx.load(FlowSpec(spec.kind, spec.config, {**spec.params, "initialized": np.array(0.0)}))
        ctx.adapter.set_training(loaded, True)
        _check_initialised(ctx, loaded, initialised, x, "on its first training batch after loading a spec whose "
                           "'initialized' flag is 0", x)


def _check_uninitialised_checkpoint(ctx: CheckContext, spec: FlowSpec, x: np.ndarray, initialised: FlowSpec) -> None:
    """The checkpoint of a fresh module saved before any forward, loaded into a module that has
    initialised (from another batch), is an uninitialised state: the next training forward, on
    ``x``, initialises from ``x``."""
    other = _fresh(ctx, spec)
    ctx.adapter.set_training(other, True)
    _forward_quietly(ctx, other, ctx.draw_input(spec))
    ctx.adapter.load_state(other, ctx.adapter.save_state(_fresh(ctx, spec)))
    ctx.adapter.set_training(other, True)
    _check_initialised(ctx, other, initialised, x,
                       "on its first training batch after loading a checkpoint saved before initialisation", x)


@prop("data_init_skips_an_empty_batch", requires=["black_box", "fresh", "train_eval"], kinds=_has_data_init)
def data_init_skips_an_empty_batch(ctx: CheckContext) -> None:
    """A fresh module's first training forward on an empty batch gives empty results of the right
    shapes (an empty batch is valid input, README "Empty batches") and initialises nothing — there
    is nothing to initialise from (the reference's rule refuses zero samples), and statistics of no
    data are NaN — so the next training batch initialises by the rule."""
    spec = ctx.draw_spec()
    x = _init_batch(ctx, spec)
    flow = _fresh(ctx, spec)
    ctx.adapter.set_training(flow, True)
    check_empty_batch(ctx, flow, spec, x, None, inverse=False)
    initialised = _initialised(ctx, spec, x)
    _check_initialised(ctx, flow, initialised, x, "on the first non-empty training batch after an empty one", x)


def _initialised(ctx: CheckContext, spec: FlowSpec, x: np.ndarray) -> FlowSpec:
    """``spec`` with the parameters the kind's rule (``extras["init"]``, by any declared convention)
    initialises from the batch ``x``."""
    return FlowSpec(spec.kind, spec.config,
                    actnorm_initialised(ctx, namespace.kind(spec.kind).extras["init"], x, spec.config))


def _forward_quietly(ctx: CheckContext, flow: Any, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The forward of ``batch``, without the documented notice of a constant channel (a UserWarning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return ctx.adapter.forward(flow, batch)


def _fresh(ctx: CheckContext, spec: FlowSpec) -> Any:
    return ctx.adapter.fresh(spec.kind, spec.config, seed_for("fresh", spec.to_json()), ctx.dtype, ctx.device)


def _check_initialised(ctx: CheckContext, flow: Any, initialised: FlowSpec, batch: np.ndarray, what: str,
                       init_batch: np.ndarray) -> None:
    """z and log|det| of ``flow`` on ``batch`` are the reference's at the spec initialised from
    ``init_batch`` (at the statistics' conditioning, :func:`init_condition`)."""
    z, logdet = _forward_quietly(ctx, flow, batch)
    size, kappa = event_size(initialised), init_condition(init_batch)
    ctx.assert_close(z, reference.forward(initialised, batch), "init_forward", size, f"z {what}", kappa)
    ctx.assert_close(logdet, reference.log_abs_det(initialised, batch), "logdet", size, f"log|det| {what}", kappa)


def init_condition(x: np.ndarray) -> float:
    """max over the channels with spread of (|mean| + std)/std of ``x``'s per-channel values (axis 1
    is the channel): how much rounding of the values the standard deviation, and so the initialised
    log-scale, amplifies (the ``init_forward`` row); 1 where no channel has spread."""
    values = np.moveaxis(np.asarray(x, np.float64), 1, 0).reshape(x.shape[1], -1)
    std, mean = values.std(axis=1), np.abs(values.mean(axis=1))
    spread = std > 0
    return float(np.max((mean[spread] + std[spread]) / std[spread])) if bool(spread.any()) else 1.0


# ----------------------------------------------------------------------------- dtype conversion

OTHER_DTYPE = {"float64": "float32", "float32": "float64"}


@prop("convert_dtype", requires=["black_box", "convert", "state"])
def convert_dtype(ctx: CheckContext) -> None:
    """A flow built in the other dtype and evaluated once there, then converted with ``.to`` to this
    dtype, gives the same z, log|det| and f⁻¹ as its checkpoint loaded into a flow built in this
    dtype (so no tensor was left behind in the other dtype) and, white-box, the reference's at its
    parameters (rounded to the dtype it was built in)."""
    spec, x, c = draw_deterministic(ctx)
    other = OTHER_DTYPE[ctx.dtype]
    source = build(ctx, spec, other)
    evaluate(ctx, source, x, c)
    converted = ctx.adapter.convert(source, ctx.dtype)
    direct = build(ctx, spec)
    ctx.adapter.load_state(direct, ctx.adapter.save_state(converted))
    expected = evaluate(ctx, direct, x, c)
    size = event_size(spec)
    kappa = fd_condition(ctx, direct, spec, x, c)
    compare(ctx, evaluate(ctx, converted, x, c, expected.get("z")), expected, size,
            f"of a flow converted from {other} vs one built in {ctx.dtype}", kappa)
    if "white_box" in ctx.adapter.capabilities().modes:
        against_reference(ctx, expected, rounded(spec, other), x, c,
                          f"of a flow converted from {other} vs the reference")
