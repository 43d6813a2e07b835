"""Which backends exist, why the others don't, and which one an op call uses.

Backends:
  ``reference``  pure PyTorch (fastbayes.reference), any device; the oracle and the fallback.
  ``cpu``        the compiled C++/OpenMP extension ``fastbayes._C`` on CPU tensors.
  ``cuda``       the same extension built with CUDA, on CUDA tensors.
  ``triton``     Triton kernels (fastbayes.kernels) on CUDA tensors, or on CPU tensors when ``TRITON_INTERPRET=1``
                 was set before fastbayes was imported (that is how CI runs them).

Default order per device: CUDA tensors -> cuda, triton, reference; CPU tensors -> cpu, reference.  ``use(name)`` or
``FASTBAYES_BACKEND=name`` forces one backend; forcing one that cannot run the tensors at hand raises.

The op registry: each implementation registers itself where it is defined.  The reference modules and the Triton
launchers call ``register(backend)`` on their functions; the C++/CUDA kernels register with torch's dispatcher
(``TORCH_LIBRARY_IMPL(fastbayes_C, CPU|CUDA, ...)``) and are found there.  ``implementations(op)`` and
``ops_of(backend)`` read it; ``resolve(op, device)`` is what an op call uses (cached per op, device and forced
backend, so the hot path pays one dict lookup).
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import importlib.util
import os
from typing import Callable

import torch

NAMES = ("reference", "cpu", "triton", "cuda")
_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("fastbayes_backend", default=None)


@functools.lru_cache(None)
def _probe() -> dict[str, str | None]:
    """name -> None if usable, else the reason it is not."""
    why: dict[str, str | None] = {"reference": None}
    try:
        from . import _C  # noqa: F401
        why["cpu"] = None
        has_cuda = bool(_C.has_cuda())
    except Exception as e:  # ImportError, or an ABI mismatch surfacing as OSError
        why["cpu"] = f"compiled extension fastbayes._C not importable ({type(e).__name__}: {e}); " \
                     "build it with `pip install --no-build-isolation -e .`"
        has_cuda = False
    if not has_cuda:
        why["cuda"] = why["cpu"] or "fastbayes._C was built without CUDA (torch has no CUDA or nvcc was not found)"
    elif not torch.cuda.is_available():
        why["cuda"] = "built with CUDA, but no CUDA device is visible"
    else:
        why["cuda"] = None
    why["triton"] = _triton_why()
    return why


def triton_mode() -> str:
    """'gpu' | 'interpreter' | 'unavailable'."""
    if importlib.util.find_spec("triton") is None:
        return "unavailable"
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return "interpreter"
    if not torch.cuda.is_available():
        return "unavailable"
    try:
        from triton.runtime import driver
        driver.active.get_current_target()
        return "gpu"
    except Exception:
        return "unavailable"


def _triton_why() -> str | None:
    mode = triton_mode()
    if mode == "unavailable":
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed (pip install triton)"
        return "no GPU visible to Triton; set TRITON_INTERPRET=1 before importing fastbayes to run it on CPU"
    try:
        from . import kernels  # noqa: F401
    except Exception as e:
        return f"fastbayes.kernels failed to import ({type(e).__name__}: {e})"
    return None


def available() -> dict[str, bool]:
    """{"reference": True, "cpu": bool, "triton": bool, "cuda": bool}."""
    return {name: _probe()[name] is None for name in NAMES}


def why_not() -> dict[str, str]:
    """{name: reason} for each unavailable backend."""
    return {name: why for name, why in _probe().items() if why is not None}


def _check_name(name: str) -> str:
    if name not in NAMES:
        raise ValueError(f"backend must be one of {NAMES}, got {name!r}")
    return name


@contextlib.contextmanager
def use(name: str):
    """Force backend ``name`` for op calls inside the block (thread- and task-local)."""
    token = _forced.set(_check_name(name))
    try:
        yield
    finally:
        _forced.reset(token)


def forced() -> str | None:
    """The backend forced by ``use()`` or else by ``FASTBAYES_BACKEND``; None for automatic choice."""
    name = _forced.get()
    if name is None:
        env = os.environ.get("FASTBAYES_BACKEND")
        name = _check_name(env) if env else None
    return name


def supports(name: str, device: torch.device) -> bool:
    if not available()[name]:
        return False
    if name == "reference":
        return True
    if name == "cpu":
        return device.type == "cpu"
    if name == "cuda":
        return device.type == "cuda"
    return device.type == ("cuda" if triton_mode() == "gpu" else "cpu")


def select(device: torch.device, implemented=NAMES) -> str:
    """The backend an op with implementations ``implemented`` runs on for tensors on ``device``."""
    name = forced()
    if name is not None:
        if not available()[name]:
            raise RuntimeError(f"backend {name!r} was forced but is unavailable: {why_not()[name]}")
        if name not in implemented:
            raise RuntimeError(f"backend {name!r} does not implement this op (it has {tuple(implemented)})")
        if not supports(name, device):
            reason = why_not().get(name) or f"it cannot run {device.type} tensors"
            raise RuntimeError(f"backend {name!r} was forced but is unusable here: {reason}")
        return name
    order = ("cuda", "triton", "reference") if device.type == "cuda" else ("cpu", "reference")
    for cand in order:
        if cand in implemented and supports(cand, device):
            return cand
    return "reference"


def default(device: str | torch.device = "cpu") -> str:
    """The backend automatic dispatch would pick for ``device``."""
    return select(torch.device(device))


# ---------------------------------------------------------------------------------------------------------------
# op registry

_PY_IMPLS: dict[str, dict[str, Callable]] = {"reference": {}, "triton": {}}
# where the Python implementations live: importing a module runs its register() decorators
_PY_MODULES = {"reference": ("fastbayes.reference.bernoulli", "fastbayes.reference.gate_stats", "fastbayes.reference.special",
                             "fastbayes.reference.lognormal", "fastbayes.reference.svgd"),
               "triton": ("fastbayes.kernels",)}
_COMPILED_KEY = {"cpu": "CPU", "cuda": "CUDA"}


def register(backend: str, name: str | None = None):
    """Decorator: ``fn`` implements the op ``name`` (default ``fn.__name__``) for ``backend`` ("reference"/"triton")."""
    if backend not in _PY_IMPLS:
        raise ValueError(f"backend must be one of {tuple(_PY_IMPLS)}, got {backend!r} (C++ ops register with "
                         "TORCH_LIBRARY_IMPL)")

    def deco(fn):
        _PY_IMPLS[backend][name or fn.__name__] = fn
        return fn
    return deco


def _load(backend: str) -> None:
    for mod in _PY_MODULES.get(backend, ()):
        importlib.import_module(mod)


@functools.lru_cache(None)
def _compiled_ops(backend: str) -> dict[str, Callable]:
    """The ops that fastbayes._C registered a ``backend`` ("cpu"/"cuda") kernel for, from torch's dispatcher."""
    from . import _C  # noqa: F401  (loading the library registers its ops)
    key = _COMPILED_KEY[backend]
    # "_"-prefixed ops are test hooks into the C++ math (e.g. _ndtri_f32), not ops the library dispatches
    names = [n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names()
             if n.startswith("fastbayes_C::") and not n.startswith("fastbayes_C::_")]
    return {n: getattr(torch.ops.fastbayes_C, n) for n in sorted(names)
            if torch._C._dispatch_has_kernel_for_dispatch_key(f"fastbayes_C::{n}", key)}


def compiled(backend: str) -> bool:
    """Whether ``backend`` is the compiled extension, whose ops carry their own autograd kernels in C++
    (csrc/autograd.cpp): the eager hot path calls them through ``torch.ops`` with no Python Function around them."""
    return backend in _COMPILED_KEY


def ops_of(backend: str) -> dict[str, Callable]:
    """{op name: implementation} that ``backend`` provides (empty when the backend is unavailable)."""
    _check_name(backend)
    if not available()[backend]:
        return {}
    if backend in _COMPILED_KEY:
        return dict(_compiled_ops(backend))
    _load(backend)
    return dict(_PY_IMPLS[backend])


def implementations(op: str) -> dict[str, Callable]:
    """{backend: implementation} of ``op`` over the available backends, in NAMES order."""
    out = {}
    for name in NAMES:
        fn = ops_of(name).get(op)
        if fn is not None:
            out[name] = fn
    return out


@functools.lru_cache(None)
def _resolve(op: str, device_type: str, forced_name: str | None) -> tuple[str, Callable]:
    impls = implementations(op)
    if not impls:
        raise RuntimeError(f"no backend implements the op {op!r}")
    token = _forced.set(forced_name)
    try:
        name = select(torch.device(device_type), tuple(impls))
    finally:
        _forced.reset(token)
    return name, impls[name]


def resolve(op: str, device: torch.device) -> tuple[str, Callable]:
    """(backend, implementation) that a call of ``op`` on ``device`` tensors runs now (see ``select``)."""
    name = _forced.get()
    if name is None:
        name = _env_backend()
    return _resolve(op, device.type, name)


def _env_backend() -> str | None:
    # os.environ.get encodes the key and decodes the value on every call (~1 µs); the raw bytes mapping that
    # os.environ keeps in sync is a plain dict lookup, read on every op call
    raw = getattr(os.environ, "_data", None)
    if isinstance(raw, dict):
        v = raw.get(b"FASTBAYES_BACKEND")
        return v.decode() if v else None
    return os.environ.get("FASTBAYES_BACKEND") or None
