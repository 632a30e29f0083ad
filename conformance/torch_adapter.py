"""An adapter for implementations whose flows are ``torch.nn.Module`` objects.

``TorchFlowAdapter(builder=..., kinds=...)`` works for any module that follows the accelerated
layer's calling convention (``module(x, context) -> (z, logabsdet)``, ``module.inverse(z, context)``);
white-box mode needs ``builder(spec) -> module`` whose named parameters carry the canonical names,
black-box mode ``instantiator(kind, config, seed) -> module``. Hooks are methods of the module with
the hook's name, called with tensors converted from the suite's arrays.

The protocol's state and mode operations (:mod:`.adapter`) are those of any ``nn.Module``:
``forward(grad=True)`` runs with autograd enabled and an input that requires gradients;
``set_training`` is ``module.train()`` / ``module.eval()``; ``save_state`` / ``load_state`` are a
``torch.save`` of ``state_dict()`` into bytes and ``load_state_dict`` (strict); ``convert`` is
``module.to(dtype)``; ``parameters`` / ``set_parameters`` read and overwrite the tensors of
``module.spec_parameters()`` (else its trainable named parameters) in place under ``no_grad`` with
``copy_``, as an optimiser step does; ``reseed`` is ``torch.manual_seed``; ``inverse_vjp`` is
autograd through ``module.inverse``. Three are optional: ``fresh`` needs a ``fresh(kind, config,
seed) -> module`` callable (a module before its data-dependent initialisation), ``construct`` a
``constructor(kind, config) -> module`` callable (the library's own constructor), and
``inverse_logdet`` a module method ``inverse_and_logdet(z, context) -> (x, log|det ∂x/∂z|)``, named
in ``hooks``.

Every call reaches the module through three methods, :meth:`~TorchFlowAdapter.call_forward`,
:meth:`~TorchFlowAdapter.call_inverse` and :meth:`~TorchFlowAdapter.call_inverse_with_logdet`: an
adapter for a library with another calling convention or direction overrides only those (see
:mod:`flowspec.conformance.adapters`). The dtype a module was placed in is remembered, so a module
with no floating parameters or buffers (a fixed permutation, a parameterless layer) still receives
its inputs in the dtype under test.

While the suite checks, :meth:`checking` pins deterministic convolution algorithms and turns TF32
off (on CUDA, TF32 matmuls would otherwise hide or fake small errors).
"""
from __future__ import annotations

import contextlib
import io
import weakref
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from flowspec.spec import FlowSpec

from .adapter import Adapter, Array, Capabilities, NotSupported

# The requirements every torch module meets through this adapter (module docstring).
MODULE_REQUIREMENTS = frozenset({"inverse", "grad", "inverse_grad", "train_eval", "state", "convert", "parameters",
                                 "reseed"})


@contextlib.contextmanager
def deterministic_torch(seed: int | None = None) -> Iterator[None]:
    """Deterministic cuDNN convolutions, no TF32, one CPU thread and, with ``seed``, torch's global
    random number generators seeded, for the duration; the previous state (random state included)
    is restored.

    The suite's problems are tiny (D ≤ ~50): intra-op threading only adds synchronisation there
    (on a loaded 2-core machine a small float64 convolution ran about 100× slower with two threads).
    """
    import torch

    saved = (
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
    )
    threads = torch.get_num_threads()
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else []):
            if seed is not None:
                torch.manual_seed(seed)
            yield
    finally:
        (
            torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark,
            torch.backends.cudnn.allow_tf32,
            torch.backends.cuda.matmul.allow_tf32,
        ) = saved
        torch.set_num_threads(threads)


class TorchFlowAdapter(Adapter):
    """Adapter for torch modules (see the module docstring)."""

    def __init__(
        self,
        *,
        name: str,
        kinds: Callable[[], set[str]] | set[str],
        builder: Callable[[FlowSpec], Any] | None = None,
        instantiator: Callable[[str, Mapping[str, Any], int], Any] | None = None,
        fresh: Callable[[str, Mapping[str, Any], int], Any] | None = None,
        constructor: Callable[[str, Mapping[str, Any]], Any] | None = None,
        hooks: set[str] = frozenset(),
        input_errors: tuple[type[BaseException], ...] = (Exception,),
        white_box: bool = True,
        native_direction: str = "forward",
    ):
        self.name = name
        self._kinds = kinds
        self._builder = builder
        self._instantiator = instantiator
        self._fresh = fresh
        self._constructor = constructor
        self._hooks = frozenset(MODULE_REQUIREMENTS | set(hooks) | ({"fresh"} if fresh is not None else set())
                                | ({"construct"} if constructor is not None else set()))
        self._input_errors = input_errors
        self._white_box = white_box and builder is not None
        self._native_direction = native_direction
        self._placed: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def capabilities(self) -> Capabilities:
        import torch

        kinds = self._kinds() if callable(self._kinds) else self._kinds
        modes = {"white_box"} if self._white_box else set()
        if self._builder is not None or self._instantiator is not None:
            modes.add("black_box")
        devices = {"cpu", "cuda"} if torch.cuda.is_available() else {"cpu"}
        return Capabilities(
            kinds=frozenset(kinds), devices=frozenset(devices), modes=frozenset(modes),
            hooks=self._hooks, input_errors=self._input_errors, native_direction=self._native_direction,
        )

    # ------------------------------------------------------------------ building
    def _place(self, module: Any, dtype: str, device: str) -> Any:
        import torch

        module = module.to(dtype=getattr(torch, dtype), device=device)
        self._placed[module] = (getattr(torch, dtype), torch.device(device))
        return module

    def load(self, spec: FlowSpec, dtype: str, device: str) -> Any:
        if not self._white_box:
            raise NotSupported(f"{self.name} cannot load a FlowSpec")
        return self._place(self._builder(spec), dtype, device)

    def instantiate(self, kind: str, config: Mapping[str, Any], seed: int, dtype: str, device: str) -> Any:
        if self._instantiator is None:
            raise NotSupported(f"{self.name} cannot instantiate flows without a FlowSpec")
        return self._place(self._instantiator(kind, config, seed), dtype, device)

    def fresh(self, kind: str, config: Mapping[str, Any], seed: int, dtype: str, device: str) -> Any:
        if self._fresh is None:
            return super().fresh(kind, config, seed, dtype, device)
        return self._place(self._fresh(kind, config, seed), dtype, device)

    def construct(self, kind: str, config: Mapping[str, Any], dtype: str, device: str) -> Any:
        if self._constructor is None:
            return super().construct(kind, config, dtype, device)
        return self._place(self._constructor(kind, config), dtype, device)

    # ------------------------------------------------------------------ conversion
    def _ref(self, module: Any):
        """The module's dtype and device: those of its floating tensors, else those it was placed in."""
        import torch

        for t in list(module.parameters()) + list(module.buffers()):
            if t.is_floating_point():
                return t.dtype, t.device
        return self._placed.get(module, (torch.float64, torch.device("cpu")))

    def tensor(self, module: Any, array: Any, *, raw: bool = False, requires_grad: bool = False):
        """``array`` as a tensor on the module's device, cast to its dtype unless ``raw``."""
        import torch

        dtype, device = self._ref(module)
        t = torch.as_tensor(np.asarray(array)).to(device)
        if not raw:
            t = t.to(dtype)
        return t.requires_grad_(requires_grad) if requires_grad else t

    @staticmethod
    def array(t: Any) -> Array:
        """A tensor (or a Python number: a scalar log-det) as a float64 array."""
        import torch

        if not isinstance(t, torch.Tensor):
            return np.asarray(t, dtype=np.float64)
        return t.detach().to("cpu").double().numpy()

    def _context(self, module: Any, context: Array | None, raw: bool):
        return None if context is None else self.tensor(module, context, raw=raw)

    # ------------------------------------------------------------------ calls
    def forward(self, flow: Any, x: Array, context: Array | None = None, *, raw: bool = False,
                grad: bool = False) -> tuple[Array, Array]:
        import torch

        with torch.enable_grad() if grad else torch.no_grad():
            xt = self.tensor(flow, x, raw=raw, requires_grad=grad and not raw)
            z, logdet = self.call_forward(flow, xt, self._context(flow, context, raw))
        return self.array(z), self.array(logdet)

    def inverse(self, flow: Any, z: Array, context: Array | None = None, *, raw: bool = False) -> Array:
        import torch

        with torch.no_grad():
            return self.array(self.call_inverse(flow, self.tensor(flow, z, raw=raw), self._context(flow, context, raw)))

    def inverse_with_logdet(self, flow: Any, z: Array, context: Array | None = None) -> tuple[Array, Array]:
        import torch

        if "inverse_logdet" not in self._hooks:
            return super().inverse_with_logdet(flow, z, context)
        with torch.no_grad():
            x, logdet = self.call_inverse_with_logdet(flow, self.tensor(flow, z), self._context(flow, context, False))
        return self.array(x), self.array(logdet)

    # ------------------------------------------------------------------ the module's calling convention
    def call_forward(self, module: Any, x: Any, context: Any) -> tuple[Any, Any]:
        """``(z, log|det ∂z/∂x|)`` as tensors: ``module(x, context)``."""
        return module(x, context)

    def call_inverse(self, module: Any, z: Any, context: Any) -> Any:
        """``x = f⁻¹(z)`` as a tensor: ``module.inverse(z, context)``."""
        return module.inverse(z, context)

    def call_inverse_with_logdet(self, module: Any, z: Any, context: Any) -> tuple[Any, Any]:
        """``(x, log|det ∂x/∂z|)`` from the module's own inverse direction:
        ``module.inverse_and_logdet(z, context)`` (requirement ``"inverse_logdet"``)."""
        if not hasattr(module, "inverse_and_logdet"):
            raise NotSupported(f"{type(module).__name__} has no inverse_and_logdet")
        return module.inverse_and_logdet(z, context)

    def vjp(self, flow, x, z_weight, logdet_weight, context=None):
        import torch

        params = self.spec_parameters(flow)
        xt = self.tensor(flow, x, requires_grad=True)
        with torch.enable_grad():
            z, logdet = self.call_forward(flow, xt, self._context(flow, context, False))
            loss = (z * self.tensor(flow, z_weight)).sum() + (logdet * self.tensor(flow, logdet_weight)).sum()
        return self._grads(loss, params, xt)

    def inverse_vjp(self, flow, z, x_weight, context=None):
        import torch

        params = self.spec_parameters(flow)
        zt = self.tensor(flow, z, requires_grad=True)
        with torch.enable_grad():
            loss = (self.call_inverse(flow, zt, self._context(flow, context, False)) * self.tensor(flow, x_weight)).sum()
        return self._grads(loss, params, zt)

    def _grads(self, loss: Any, params: dict[str, Any], wrt: Any) -> tuple[dict[str, Array], Array]:
        """Gradients of ``loss`` w.r.t. ``params`` (zeros for those it does not depend on) and ``wrt``."""
        import torch

        names = list(params)
        grads = torch.autograd.grad(loss, [params[n] for n in names] + [wrt], allow_unused=True)
        out = {n: (np.zeros(tuple(params[n].shape)) if g is None else self.array(g)) for n, g in zip(names, grads)}
        return out, (np.zeros(tuple(wrt.shape)) if grads[-1] is None else self.array(grads[-1]))

    def spec_parameters(self, flow: Any) -> dict[str, Any]:
        """Tensors w.r.t. which gradients are compared, by canonical dotted name.

        Uses ``flow.spec_parameters()`` where the module defines it, else its trainable parameters.
        """
        if hasattr(flow, "spec_parameters"):
            return dict(flow.spec_parameters())
        return {n: p for n, p in flow.named_parameters() if p.requires_grad}

    def call_hook(self, flow: Any, hook: str, *args: Any, **kwargs: Any) -> Any:
        """Call the module's method ``hook``: NumPy array arguments become tensors on the module's
        device (floating arrays in its dtype, integer arrays as int64), tensors in the result (also
        inside tuples, lists and dicts) become float64 arrays; other values pass unchanged."""
        if hook not in self._hooks or not hasattr(flow, hook):
            raise NotSupported(f"{self.name} has no hook {hook!r} for {type(flow).__name__}")

        def convert(a: Any) -> Any:
            if not isinstance(a, np.ndarray):
                return a
            return self.tensor(flow, a.astype(np.int64), raw=True) if a.dtype.kind in "iu" else self.tensor(flow, a)

        result = getattr(flow, hook)(*map(convert, args), **{k: convert(v) for k, v in kwargs.items()})
        return self._arrays(result)

    def _arrays(self, result: Any) -> Any:
        import torch

        if isinstance(result, torch.Tensor):
            return self.array(result)
        if isinstance(result, (tuple, list)):
            return type(result)(self._arrays(r) for r in result)
        if isinstance(result, dict):
            return {k: self._arrays(v) for k, v in result.items()}
        return result

    # ------------------------------------------------------------------ state and modes
    def set_training(self, flow: Any, training: bool) -> None:
        flow.train(bool(training))

    def save_state(self, flow: Any) -> bytes:
        import torch

        buffer = io.BytesIO()
        torch.save(flow.state_dict(), buffer)
        return buffer.getvalue()

    def load_state(self, flow: Any, state: bytes) -> None:
        import torch

        dtype, device = self._ref(flow)
        flow.load_state_dict(torch.load(io.BytesIO(state), map_location=device, weights_only=True))

    def convert(self, flow: Any, dtype: str) -> Any:
        _, device = self._ref(flow)
        return self._place(flow, dtype, str(device))

    def parameters(self, flow: Any) -> dict[str, Array]:
        return {name: self.array(t).copy() for name, t in self.spec_parameters(flow).items()}

    def set_parameters(self, flow: Any, values: Mapping[str, Array]) -> None:
        import torch

        params = self.spec_parameters(flow)
        unknown = sorted(set(values) - set(params))
        if unknown:
            raise KeyError(f"{type(flow).__name__} has no parameters {unknown}; it has {sorted(params)}")
        with torch.no_grad():
            for name, value in values.items():
                target = params[name]
                value = np.asarray(value)
                if tuple(value.shape) != tuple(target.shape):
                    raise ValueError(f"parameter {name!r} has shape {tuple(target.shape)}, got {value.shape}")
                target.copy_(torch.as_tensor(value, dtype=target.dtype, device=target.device))

    def reseed(self, seed: int) -> None:
        import torch

        torch.manual_seed(int(seed))

    def checking(self, seed: int | None = None):
        return deterministic_torch(seed)
