"""``bernoulli_gate`` (y = x · ξ, ξ ~ Bern(θ) per example and unit) and ``scale_mixture_prior`` (the per-unit
spike-and-slab prior cost of every Bernoulli gate in one fused pass), after Guenter & Sideris (METHODS.md §3.2).

The draws come from Philox (seed, offset) and are regenerated in the backward instead of being stored; counters, the
straight-through θ gradient and its bias, and the prior's formulas are specified in
``fastbayes/reference/bernoulli.py``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .. import backends
from ..reference.bernoulli import draws
from ._dispatch import check_float, check_same, cpp_autograd, eager, function_apply, run
from .lognormal import SEED_BOUND, fresh_seed, fresh_seed_int, normalize_dim

ESTIMATORS = ("straight_through",)


@torch.library.custom_op("fastbayes::bernoulli_gate", mutates_args=())
def _bernoulli_gate(x: Tensor, theta: Tensor, mask: Optional[Tensor], dim: int, seed: Tensor, offset: int) -> Tensor:
    # the seed travels as a CPU int64 tensor so that a compiled graph draws a fresh one every call
    return run("bernoulli_gate", x.device, x, theta, mask, dim, int(seed), offset)


@_bernoulli_gate.register_fake
def _(x, theta, mask, dim, seed, offset):
    return torch.empty_like(x)


@torch.library.custom_op("fastbayes::bernoulli_gate_backward", mutates_args=())
def _bernoulli_gate_backward(grad_y: Tensor, x: Tensor, theta: Tensor, mask: Optional[Tensor], dim: int, seed: Tensor,
                             offset: int) -> tuple[Tensor, Tensor]:
    dx, dtheta = run("bernoulli_gate_backward", x.device, grad_y.contiguous(), x, theta, mask, dim, int(seed), offset)
    return dx, dtheta


@_bernoulli_gate_backward.register_fake
def _(grad_y, x, theta, mask, dim, seed, offset):
    return torch.empty_like(x), torch.empty_like(theta)


def _gate_setup_context(ctx, inputs, output):
    x, theta, mask, dim, seed, offset = inputs
    ctx.save_for_backward(x, theta, mask, seed)
    ctx.dim, ctx.offset = dim, offset


def _gate_backward(ctx, grad_y):
    x, theta, mask, seed = ctx.saved_tensors
    dx, dtheta = _bernoulli_gate_backward(grad_y, x, theta, mask, ctx.dim, seed, ctx.offset)
    return dx, dtheta, None, None, None, None


_bernoulli_gate.register_autograd(_gate_backward, setup_context=_gate_setup_context)


class _BernoulliGate(torch.autograd.Function):
    """Eager fast path (see ``fastbayes.ops.lognormal``): the resolved backend, nothing else on the hot path."""

    @staticmethod
    def forward(ctx, x, theta, mask, dim, seed, offset):
        fwd = backends.resolve("bernoulli_gate", x.device)[1]
        ctx.save_for_backward(x, theta, mask)
        ctx.rest = (dim, seed, offset)
        return fwd(x, theta, mask, dim, seed, offset)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        x, theta, mask = ctx.saved_tensors
        bwd = backends.resolve("bernoulli_gate_backward", x.device)[1]
        dx, dtheta = bwd(grad_y.contiguous(), x, theta, mask, *ctx.rest)
        return dx, dtheta, None, None, None, None


_bernoulli_apply = function_apply(_BernoulliGate)


def bernoulli_gate(x: Tensor, theta: Tensor, *, dim: int = 1, seed: Optional[int] = None, offset: int = 0,
                   training: bool = True, mask: Optional[Tensor] = None,
                   estimator: str = "straight_through") -> Tensor:
    """Multiply ``x`` by Bernoulli gates ξ ~ Bern(θ), one per example (``x.shape[0]``) and unit (``x.shape[dim]``).

    Args:
        x: activations with at least two dims, float32/float16/bfloat16/float64; y is x itself where ξ = 1 and an
            exact 0 where ξ = 0, so no rounding happens in any dtype.
        theta: [units] keep probabilities, expected in [0, 1] (``BernoulliGate.project_()`` clips them); used as
            float32 (a float64 θ is rounded for the draw; its gradient is returned in θ's dtype).
        dim: the unit axis (1 for NCHW, -1 for [B, T, C]); not 0, which is the example axis.
        seed, offset: Philox stream; ``seed=None`` takes a seed from torch's default generator.  One call consumes
            ``fastbayes.reference.bernoulli.draws(x.shape, dim)`` = N·C counters from ``offset``.
        training: False gives the deterministic gate ξ = 1[θ ≥ ½]·mask, draws nothing and passes no θ gradient.
        mask: optional bool [units]; a pruned unit has ξ = 0 and its θ gets no gradient from this op.
        estimator: the θ gradient; "straight_through" (the only fused one): dθ_c = Σ g·x over the unit's elements,
            the first-order estimate of E[ℓ(ξ_c=1) − ℓ(ξ_c=0)], biased by (θ_c − ½)·∂²ℓ/∂ξ_c² (see
            ``fastbayes/reference/bernoulli.py``).  For the exact two-pass difference of a few units use
            ``fastbayes.nn.bernoulli.exact_theta_grad``.
    """
    check_float("x", x)
    check_float("theta", theta)
    if x.dim() < 2:
        raise ValueError(f"x must have at least two dimensions (examples and units), got shape {tuple(x.shape)}")
    dim = normalize_dim(dim, x.dim())
    if dim == 0:
        raise ValueError("dim must not be 0: ξ is drawn per example (x.shape[0]) and unit (x.shape[dim])")
    if theta.dim() != 1 or theta.numel() != x.shape[dim]:
        raise ValueError(f"theta must be 1-d with x.shape[{dim}] = {x.shape[dim]} entries, "
                         f"got shape {tuple(theta.shape)}")
    if theta.device != x.device:
        raise ValueError(f"theta is on {theta.device} but x is on {x.device}")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
        check_same("mask", mask, "theta", theta)
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS} (the exact two-pass difference is "
                         f"fastbayes.nn.bernoulli.exact_theta_grad), got {estimator!r}")
    if not training:
        keep = theta.detach() >= 0.5
        if mask is not None:
            keep = keep & mask
        shape = [1] * x.dim()
        shape[dim] = -1
        return torch.where(keep.reshape(shape), x, torch.zeros((), dtype=x.dtype, device=x.device))
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_BOUND):
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0 \
            or offset + draws(x.shape, dim) >= SEED_BOUND:
        raise ValueError(f"offset must be a non-negative integer with offset + draws < 2**63, got {offset!r}")
    return gate(x, theta, mask, dim, seed, offset)


def gate(x: Tensor, theta: Tensor, mask: Optional[Tensor], dim: int, seed: Optional[int], offset: int) -> Tensor:
    """Training-mode ``bernoulli_gate`` on arguments that are already checked (``dim`` positive); the gate modules
    call this after validating their options once."""
    th = theta if theta.dtype == torch.float32 else theta.to(torch.float32)
    mk = None if mask is None else mask.contiguous()
    fwd = cpp_autograd("bernoulli_gate", x)
    if fwd is not None:
        return fwd(x.contiguous(), th.contiguous(), mk, dim, fresh_seed_int() if seed is None else seed, offset)
    if eager(x):
        return _bernoulli_apply(x.contiguous(), th.contiguous(), mk, dim,
                                fresh_seed_int() if seed is None else seed, offset)
    seed_t = fresh_seed() if seed is None else torch.tensor(seed, dtype=torch.int64)
    return _bernoulli_gate(x.contiguous(), th.contiguous(), mk, dim, seed_t, offset)


# ---------------------------------------------------------------------------------------------------------------
# scale_mixture_prior

@torch.library.custom_op("fastbayes::scale_mixture_prior", mutates_args=())
def _scale_mixture_prior(theta: Tensor, sq_norm: Tensor, k: Tensor, log_var0: Tensor, log_var1: Tensor) -> Tensor:
    return run("scale_mixture_prior", theta.device, theta, sq_norm, k, log_var0, log_var1)


@_scale_mixture_prior.register_fake
def _(theta, sq_norm, k, log_var0, log_var1):
    return torch.empty_like(theta)


@torch.library.custom_op("fastbayes::scale_mixture_prior_backward", mutates_args=())
def _scale_mixture_prior_backward(grad: Tensor, theta: Tensor, sq_norm: Tensor, k: Tensor, log_var0: Tensor,
                                  log_var1: Tensor) -> tuple[Tensor, Tensor]:
    dtheta, dsq = run("scale_mixture_prior_backward", theta.device, grad.contiguous(), theta, sq_norm, k, log_var0,
                      log_var1)
    return dtheta, dsq


@_scale_mixture_prior_backward.register_fake
def _(grad, theta, sq_norm, k, log_var0, log_var1):
    return torch.empty_like(theta), torch.empty_like(sq_norm)


def _prior_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _prior_backward(ctx, grad):
    theta, sq_norm, k, lv0, lv1 = ctx.saved_tensors
    dtheta, dsq = _scale_mixture_prior_backward(grad.to(theta.dtype), theta, sq_norm, k, lv0, lv1)
    return dtheta, dsq, None, None, None


_scale_mixture_prior.register_autograd(_prior_backward, setup_context=_prior_setup_context)


def scale_mixture_prior(theta: Tensor, sq_norm: Tensor, k: Tensor, log_var0: Tensor, log_var1: Tensor) -> Tensor:
    """Per-unit spike-and-slab prior cost θ·c1 + (1 − θ)·c0, c_s = ‖w‖²/(2σ_s²) + (k/2)·log(2πσ_s²), in one pass.

    All five inputs hold one value per unit (flat vectors concatenated over every gate, as ``gate_stats``):
    ``theta`` the keep probabilities, ``sq_norm`` = ‖w‖² of the weights feeding the unit, ``k`` their number,
    ``log_var0``/``log_var1`` = log σ0² (spike) and log σ1² (slab).  Differentiable in ``theta`` (c1 − c0) and in
    ``sq_norm`` (θ/(2σ1²) + (1 − θ)/(2σ0²); the weights' gradient then flows through ‖w‖² by autograd).  ``k`` and
    the variances are fixed hyper-parameters: passing ones that require grad is refused.  Computed in float64 in
    every backend; returned in ``theta.dtype`` (float32 math inputs for anything but float64).
    """
    names = ("theta", "sq_norm", "k", "log_var0", "log_var1")
    ts = (theta, sq_norm, k, log_var0, log_var1)
    for name, t in zip(names, ts):
        check_float(name, t)
    if theta.dim() != 1:
        raise ValueError(f"theta must be 1-d (one value per unit), got shape {tuple(theta.shape)}")
    for name, t in zip(names[1:], ts[1:]):
        check_same(name, t, "theta", theta)
    for name, t in zip(names[2:], ts[2:]):
        if t.requires_grad:
            raise ValueError(f"{name} must not require grad: it is a fixed hyper-parameter of the prior")
    dt = torch.float64 if theta.dtype == torch.float64 else torch.float32
    cost = _scale_mixture_prior(*(t.to(dt).contiguous() for t in ts))
    return cost.to(theta.dtype)
