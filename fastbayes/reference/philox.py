"""Philox4x32-10 in plain torch, bit-identical to Triton's ``tl.rand(seed, offset + i)``.

Counter layout: element i of a draw uses the 64-bit counter ``offset + i`` split into (lo, hi) as the first
two words, 0 for the other two, and the 64-bit ``seed`` as the key.  The first output word is mapped to a
float32 uniform in [0, 1) exactly as ``triton.language.random.uint_to_uniform_float`` does.  The C++ and
CUDA backends (``csrc/include/fastbayes/philox.h``) use the same layout.
"""
from __future__ import annotations

import math

import torch

_M32 = 0xFFFFFFFF
_A, _B = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
UNIFORM_SCALE = 4.6566127342e-10   # float32(2**-31) as Triton writes it


def philox4x32(seed: int, counters: torch.Tensor, rounds: int = 10):
    """The four output words (as int64 holding uint32) for 64-bit counters (int64 tensor)."""
    off = counters.to(torch.int64)
    c0, c1 = off & _M32, (off >> 32) & _M32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    k0 = seed & _M32
    k1 = (seed >> 32) & _M32
    for _ in range(rounds):
        pa, pb = _A * c0, _B * c2   # < 2**64 as unsigned; int64 wrap-around keeps the bit pattern
        n0 = ((pb >> 32) & _M32) ^ c1 ^ k0
        n2 = ((pa >> 32) & _M32) ^ c3 ^ k1
        c1, c3, c0, c2 = pb & _M32, pa & _M32, n0, n2
        k0 = (k0 + _W0) & _M32
        k1 = (k1 + _W1) & _M32
    return c0, c1, c2, c3


def uint_to_uniform(x: torch.Tensor) -> torch.Tensor:
    """uint32 (held in int64) -> float32 in [0, 1), as Triton: reinterpret as int32, fold the sign, scale."""
    x = torch.where(x >= 2 ** 31, x - 2 ** 32, x)
    x = torch.where(x < 0, -x - 1, x)
    return x.to(torch.float32) * torch.tensor(UNIFORM_SCALE, dtype=torch.float32)


def philox_uniform(seed: int, offset: int, shape, device=None) -> torch.Tensor:
    """float32 uniforms for counters ``offset .. offset + numel - 1``, reshaped to ``shape``."""
    shape = tuple(shape) if not isinstance(shape, int) else (shape,)
    n = math.prod(shape)
    counters = torch.arange(n, dtype=torch.int64, device=device) + int(offset)
    return uint_to_uniform(philox4x32(int(seed), counters)[0]).reshape(shape)
