"""Shared plumbing of the ops: argument checks and the call into the backend that ``backends.select`` picks.

Every op lives in one file of ``fastbayes.ops`` as a ``torch.library`` custom op whose body calls
``run(op_name, ...)``.  Backends expose the op under the same name: ``fastbayes.reference.<module>.<op>``,
``torch.ops.fastbayes_C.<op>`` (cpu and cuda) and ``fastbayes.kernels.<op>`` (triton).
"""
from __future__ import annotations

import functools
import importlib
import math

import torch

from .. import backends

_REFERENCE_MODULE = {
    "bernoulli_gate": "bernoulli",
    "bernoulli_gate_backward": "bernoulli",
    "gate_stats": "gate_stats",
    "gate_stats_backward": "gate_stats",
    "lognormal_noise": "lognormal",
    "lognormal_noise_backward": "lognormal",
    "svgd_kernel_matrix": "svgd", "svgd_apply": "svgd",
    "scale_mixture_prior": "bernoulli",
    "scale_mixture_prior_backward": "bernoulli",
}


def backend_fn(op: str, backend: str):
    if backend == "reference":
        mod = importlib.import_module(f"fastbayes.reference.{_REFERENCE_MODULE[op]}")
        return getattr(mod, op)
    if backend in ("cpu", "cuda"):
        from .. import _C  # noqa: F401  (loads the library that registers torch.ops.fastbayes_C)
        return getattr(torch.ops.fastbayes_C, op)
    from .. import kernels
    return getattr(kernels, op)


@functools.lru_cache(None)
def has_op(op: str, backend: str) -> bool:
    """Whether ``backend`` implements ``op`` (a partial build, or an older extension, may lack some)."""
    if not backends.available()[backend]:
        return False
    try:
        backend_fn(op, backend)
        return True
    except (AttributeError, RuntimeError, ImportError):
        return False


def run(op: str, device: torch.device, *args):
    implemented = tuple(b for b in backends.NAMES if has_op(op, b))
    return backend_fn(op, backends.select(device, implemented))(*args)


def check_float(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    return t


def check_bounds(a, b) -> tuple[float, float]:
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
