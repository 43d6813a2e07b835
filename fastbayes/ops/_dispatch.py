"""Shared plumbing of the ops: argument checks and the call into the backend that ``backends.resolve`` picks.

Every op lives in one file of ``fastbayes.ops`` as a ``torch.library`` custom op (the schema, fake kernel and
autograd formula that ``torch.compile`` and ``opcheck`` see) plus an eager fast path that calls the resolved backend
directly.  Backends register their implementations where they are defined (see ``fastbayes.backends``).
"""
from __future__ import annotations

import math
import numbers

import torch

from .. import backends


def backend_fn(op: str, backend: str):
    """``backend``'s implementation of ``op``; raises KeyError when it has none."""
    return backends.ops_of(backend)[op]


def has_op(op: str, backend: str) -> bool:
    """Whether ``backend`` implements ``op`` (a partial build, or an older extension, may lack some)."""
    return op in backends.ops_of(backend)


def eager(x: torch.Tensor) -> bool:
    """Whether a call on ``x`` may take the eager fast path (not while torch.compile traces, not on meta/fake)."""
    return x.device.type in ("cpu", "cuda") and not torch.compiler.is_compiling()


def cpp_autograd(op: str, x: torch.Tensor):
    """The compiled implementation of ``op`` when an eager call on ``x`` resolves to a compiled backend, whose ops
    carry their autograd in C++ (csrc/autograd.cpp) and are called through ``torch.ops`` with no Python Function
    around them; None otherwise (the reference and Triton backends, and torch.compile tracing)."""
    if not eager(x):
        return None
    name, fn = backends.resolve(op, x.device)
    return fn if backends.compiled(name) else None


def function_apply(cls):
    """``cls.apply`` without ``torch.autograd.Function.apply``'s Python prologue (default-argument binding and
    functorch's dead-wrapper scan over every argument: ~3 µs per call), unless a functorch transform is active."""
    raw = getattr(torch._C._FunctionBase, "__dict__", {}).get("apply")
    if raw is None or not hasattr(torch._C, "_are_functorch_transforms_active"):
        return cls.apply
    direct = raw.__get__(None, cls)
    active = torch._C._are_functorch_transforms_active

    def apply(*args):
        return cls.apply(*args) if active() else direct(*args)
    return apply


def run(op: str, device: torch.device, *args):
    return backends.resolve(op, device)[1](*args)


def check_float(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    return t


def check_bounds(a, b) -> tuple[float, float]:
    for name, v in (("a", a), ("b", b)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"bound {name} must be a real number (log-space truncation bound), got {v!r}")
    a, b = float(a), float(b)
    if not (math.isfinite(a) and math.isfinite(b)):
        raise ValueError(f"bounds a and b must be finite, got a={a}, b={b}")
    if not a < b:
        raise ValueError(f"bound a must be smaller than bound b, got a={a}, b={b}")
    return a, b


def check_same(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if t.shape != ref.shape:
        raise ValueError(f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(t.shape)}")
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")
