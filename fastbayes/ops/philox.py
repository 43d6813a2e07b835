"""``philox_uniform``: the exact float32 uniforms every backend draws for a (seed, offset) pair."""
from __future__ import annotations

import math

import torch

from ..reference.philox import philox_uniform as _ref

_U64 = 2 ** 64


def philox_uniform(seed: int, offset: int, shape, *, device=None) -> torch.Tensor:
    """Uniforms in [0, 1) that ``tl.rand(seed, offset + i)`` (and the C++/CUDA backends) draw for element i.

    ``seed`` and ``offset`` are integers in [0, 2**64) and [0, 2**63); ``shape`` an int or a tuple.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < _U64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < 2 ** 63:
        raise ValueError(f"offset must be an integer in [0, 2**63), got {offset!r}")
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    if any((not isinstance(d, int)) or d < 0 for d in dims):
        raise ValueError(f"shape must be non-negative integers, got {shape!r}")
    if offset + math.prod(dims) > 2 ** 63:
        raise ValueError("offset + numel must stay below 2**63")
    # the reference folds the 64-bit seed into two 32-bit key words; keep it a Python int
    return _ref(seed, offset, dims, device=device)
