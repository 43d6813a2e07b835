"""``lognormal_noise``: y = x · θ with θ ~ LogN[a,b](μ, σ²) per unit along ``dim``, drawn and multiplied in one pass.

The draws come from Philox (seed, offset) and are regenerated in the backward instead of being stored; the
counter layout and the per-element math are specified in ``fastbayes/reference/lognormal.py``.

Three paths over the same backend functions: the ``torch.library`` custom op (what ``torch.compile`` traces and
``opcheck`` tests); in eager mode on the compiled backends, the ``fastbayes_C`` op itself, whose autograd kernel is
registered in C++ (csrc/autograd.cpp); and in eager mode on the reference and Triton backends, a thin
``torch.autograd.Function`` that calls the backend that ``backends.resolve`` cached for (op, device, forced backend).
Measured on (128, 150) float32: the custom op's Python wrapper costs ~15 µs per forward+backward (its
``fill_defaults``, dispatcher redispatch and autograd shim run on every call), the Python Function ~40 µs per gate in
a training step (mostly its backward node's trip through Python), the C++ autograd kernel a few µs.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .. import backends
from ..reference.gate_stats import LOG_SIGMA_MAX, LOG_SIGMA_MIN
from ..reference.lognormal import GRANULARITIES, draws
from ._dispatch import check_bounds, check_float, check_same, cpp_autograd, eager, function_apply, run

SEED_BOUND = 2 ** 63


@torch.library.custom_op("fastbayes::lognormal_noise", mutates_args=())
def _lognormal_noise(x: Tensor, mu: Tensor, log_sigma: Tensor, mask: Optional[Tensor], a: float, b: float, dim: int,
                     granularity: str, seed: Tensor, offset: int) -> Tensor:
    # the seed travels as a CPU int64 tensor so that a compiled graph draws a fresh one every call
    return run("lognormal_noise", x.device, x, mu, log_sigma, mask, a, b, dim, granularity, int(seed), offset)


@_lognormal_noise.register_fake
def _(x, mu, log_sigma, mask, a, b, dim, granularity, seed, offset):
    return torch.empty_like(x)


@torch.library.custom_op("fastbayes::lognormal_noise_backward", mutates_args=())
def _lognormal_noise_backward(grad_y: Tensor, x: Tensor, mu: Tensor, log_sigma: Tensor, mask: Optional[Tensor], a: float,
                              b: float, dim: int, granularity: str, seed: Tensor, offset: int
                              ) -> tuple[Tensor, Tensor, Tensor]:
    dx, dmu, dls = run("lognormal_noise_backward", x.device, grad_y.contiguous(), x, mu, log_sigma, mask, a, b, dim,
                       granularity, int(seed), offset)
    return dx, dmu, dls


@_lognormal_noise_backward.register_fake
def _(grad_y, x, mu, log_sigma, mask, a, b, dim, granularity, seed, offset):
    return torch.empty_like(x), torch.empty_like(mu), torch.empty_like(log_sigma)


def _setup_context(ctx, inputs, output):
    x, mu, log_sigma, mask, a, b, dim, granularity, seed, offset = inputs
    ctx.save_for_backward(x, mu, log_sigma, mask, seed)
    ctx.rest = (a, b, dim, granularity)
    ctx.offset = offset


def _backward(ctx, grad_y):
    x, mu, log_sigma, mask, seed = ctx.saved_tensors
    dx, dmu, dls = _lognormal_noise_backward(grad_y, x, mu, log_sigma, mask, *ctx.rest, seed, ctx.offset)
    return dx, dmu, dls, None, None, None, None, None, None, None


_lognormal_noise.register_autograd(_backward, setup_context=_setup_context)


class _LognormalNoise(torch.autograd.Function):
    """Eager fast path: the resolved backend's forward and backward, nothing else on the hot path."""

    @staticmethod
    def forward(ctx, x, mu, log_sigma, mask, a, b, dim, granularity, seed, offset):
        fwd = backends.resolve("lognormal_noise", x.device)[1]
        ctx.save_for_backward(x, mu, log_sigma, mask)
        ctx.rest = (a, b, dim, granularity, seed, offset)
        return fwd(x, mu, log_sigma, mask, a, b, dim, granularity, seed, offset)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        x, mu, log_sigma, mask = ctx.saved_tensors
        bwd = backends.resolve("lognormal_noise_backward", x.device)[1]
        dx, dmu, dls = bwd(grad_y.contiguous(), x, mu, log_sigma, mask, *ctx.rest)
        return dx, dmu, dls, None, None, None, None, None, None, None


_lognormal_apply = function_apply(_LognormalNoise)


def normalize_dim(dim: int, ndim: int) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int) or not -ndim <= dim < ndim:
        raise ValueError(f"dim must be an integer in [{-ndim}, {ndim}) for a {ndim}-d input, got {dim!r}")
    return dim % ndim


def fresh_seed_int() -> int:
    """``fresh_seed()`` as a Python int (same draw from torch's default generator)."""
    return int(torch.randint(0, 2 ** 62, (), dtype=torch.int64))


def fresh_seed() -> Tensor:
    """A seed from torch's default generator, so ``torch.manual_seed`` makes runs reproducible (a CPU tensor: no
    host sync, and a compiled graph draws a new one every call)."""
    return torch.randint(0, 2 ** 62, (), dtype=torch.int64)


def lognormal_noise(x: Tensor, mu: Tensor, log_sigma: Tensor, *, a: float = -20.0, b: float = 0.0, dim: int = 1,
                    granularity: str = "sample", mask: Optional[Tensor] = None, seed: Optional[int] = None,
                    offset: int = 0, training: bool = True) -> Tensor:
    """Multiply ``x`` by truncated log-normal noise θ, one unit per index of ``x.shape[dim]``.

    Args:
        x: activations, float32/float16/bfloat16/float64; the noise math runs in float32 (float64 for float64 x).
        mu, log_sigma: [units] variational parameters of log θ ~ N(μ, σ²) on [a, b].
        dim: the unit axis (1 for NCHW, -1 for [B, T, C]).
        granularity: "batch" (one θ per unit per call, SBP's code), "sample" (per example and unit) or "element"
            (per element, BMRS's code).  "sample" needs ``dim != 0``.
        mask: optional bool [units]; a pruned unit outputs 0 and its μ, log σ get no gradient from this op.
        seed, offset: Philox stream; ``seed=None`` takes a seed from torch's default generator.  One call consumes
            ``fastbayes.reference.lognormal.draws(granularity, x.shape, dim)`` counters from ``offset``.
        training: False gives y = x · E[θ] · mask with no random draws (and no gradient to mu, log_sigma).
    """
    check_float("x", x)
    check_float("mu", mu)
    check_float("log_sigma", log_sigma)
    if x.dim() < 1:
        raise ValueError("x must have at least one dimension")
    dim = normalize_dim(dim, x.dim())
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if granularity == "sample" and dim == 0:
        raise ValueError("granularity='sample' draws one θ per example and unit, so dim must not be 0")
    if mu.dim() != 1 or mu.numel() != x.shape[dim]:
        raise ValueError(f"mu must be 1-d with x.shape[{dim}] = {x.shape[dim]} entries, got shape {tuple(mu.shape)}")
    check_same("log_sigma", log_sigma, "mu", mu)
    if mu.device != x.device:
        raise ValueError(f"mu is on {mu.device} but x is on {x.device}")
    if mask is not None:
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor, got dtype {mask.dtype}")
        check_same("mask", mask, "mu", mu)
    a, b = check_bounds(a, b)
    if not training:
        from .gate_stats import gate_stats
        mean = gate_stats(mu.detach(), log_sigma.detach(), a=a, b=b)[1]
        scale = mean if mask is None else mean * mask
        shape = [1] * x.dim()
        shape[dim] = -1
        return x * scale.to(x.dtype).reshape(shape)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_BOUND):
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0 \
            or offset + draws(granularity, x.shape, dim) >= SEED_BOUND:
        raise ValueError(f"offset must be a non-negative integer with offset + draws < 2**63, got {offset!r}")
    return noise(x, mu, log_sigma, mask, a, b, dim, granularity, seed, offset)


def noise(x: Tensor, mu: Tensor, log_sigma: Tensor, mask: Optional[Tensor], a: float, b: float, dim: int,
          granularity: str, seed: Optional[int], offset: int) -> Tensor:
    """Training-mode ``lognormal_noise`` on arguments that are already checked (``dim`` non-negative); the gate
    modules call this after validating their options once."""
    if log_sigma.dtype != mu.dtype:
        log_sigma = log_sigma.to(mu.dtype)
    fwd = cpp_autograd("lognormal_noise", x)
    if fwd is not None:
        return fwd(x.contiguous(), mu.contiguous(), log_sigma.contiguous(), None if mask is None else mask.contiguous(),
                   a, b, dim, granularity, fresh_seed_int() if seed is None else seed, offset)
    if eager(x):
        return _lognormal_apply(x.contiguous(), mu.contiguous(), log_sigma.contiguous(),
                                     None if mask is None else mask.contiguous(), a, b, dim, granularity,
                                     fresh_seed_int() if seed is None else seed, offset)
    seed_t = fresh_seed() if seed is None else torch.tensor(seed, dtype=torch.int64)
    return _lognormal_noise(x.contiguous(), mu.contiguous(), log_sigma.contiguous(),
                            None if mask is None else mask.contiguous(), a, b, dim, granularity, seed_t, offset)


def gate(x: Tensor, mu: Tensor, log_sigma: Tensor, mask: Optional[Tensor], a: float, b: float, dim: int,
         granularity: str, seed: Optional[int], offset: int) -> Tensor:
    """``LogNormalGate``'s training forward: ``log_sigma`` clamped into [LOG_SIGMA_MIN, LOG_SIGMA_MAX] (both official
    codes' forward clamp), then ``noise``.  On the compiled backends one C++ autograd node does both
    (``fastbayes_C::lognormal_gate``, csrc/autograd.cpp): the same kernels and bits, one graph node fewer."""
    if log_sigma.dtype != mu.dtype:
        log_sigma = log_sigma.to(mu.dtype)
    if cpp_autograd("lognormal_noise", x) is not None:
        # the C++ node makes its inputs contiguous, and with seed -1 draws the seed as fresh_seed_int would
        return torch.ops.fastbayes_C.lognormal_gate(x, mu, log_sigma, mask, a, b, dim, granularity,
                                                    -1 if seed is None else seed, offset, LOG_SIGMA_MIN, LOG_SIGMA_MAX)
    return noise(x, mu, log_sigma.clamp(LOG_SIGMA_MIN, LOG_SIGMA_MAX), mask, a, b, dim, granularity, seed, offset)
