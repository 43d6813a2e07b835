"""``gate_stats``: KL against the log-uniform prior, E[θ] and SNR of every gate unit in one fused pass.

One launch covers a flat vector of units (``fastbayes.kl_loss`` concatenates every gate of a model), the statistics
are computed in float64 inside each backend and returned in the parameters' dtype, and the backward of the KL is a
second fused pass (METHODS.md §0.4).  ``mean`` and ``snr`` are decision statistics and carry no gradient.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .. import backends
from ._dispatch import check_bounds, check_float, check_same, eager, function_apply, run


@torch.library.custom_op("fastbayes::gate_stats", mutates_args=())
def _gate_stats(mu: Tensor, log_sigma: Tensor, a: float, b: float) -> tuple[Tensor, Tensor, Tensor]:
    kl, mean, snr = run("gate_stats", mu.device, mu.contiguous(), log_sigma.contiguous(), a, b)
    return kl, mean, snr


@_gate_stats.register_fake
def _(mu, log_sigma, a, b):
    return torch.empty_like(mu), torch.empty_like(mu), torch.empty_like(mu)


@torch.library.custom_op("fastbayes::gate_stats_backward", mutates_args=())
def _gate_stats_backward(grad_kl: Tensor, mu: Tensor, log_sigma: Tensor, a: float, b: float) -> tuple[Tensor, Tensor]:
    dmu, dls = run("gate_stats_backward", mu.device, grad_kl.contiguous(), mu.contiguous(), log_sigma.contiguous(), a, b)
    return dmu, dls


@_gate_stats_backward.register_fake
def _(grad_kl, mu, log_sigma, a, b):
    return torch.empty_like(mu), torch.empty_like(log_sigma)


def _setup_context(ctx, inputs, output):
    mu, log_sigma, a, b = inputs
    ctx.save_for_backward(mu, log_sigma)
    ctx.bounds = (a, b)
    ctx.mark_non_differentiable(output[1], output[2])


def _backward(ctx, grad_kl, grad_mean, grad_snr):
    mu, log_sigma = ctx.saved_tensors
    dmu, dls = _gate_stats_backward(grad_kl.to(mu.dtype), mu, log_sigma, *ctx.bounds)
    return dmu, dls, None, None


_gate_stats.register_autograd(_backward, setup_context=_setup_context)


class _GateStats(torch.autograd.Function):
    """Eager fast path (see ``fastbayes.ops.lognormal``)."""

    @staticmethod
    def forward(ctx, mu, log_sigma, a, b):
        kl, mean, snr = backends.resolve("gate_stats", mu.device)[1](mu, log_sigma, a, b)
        ctx.save_for_backward(mu, log_sigma)
        ctx.bounds = (a, b)
        ctx.mark_non_differentiable(mean, snr)
        return kl, mean, snr

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_kl, grad_mean, grad_snr):
        mu, log_sigma = ctx.saved_tensors
        bwd = backends.resolve("gate_stats_backward", mu.device)[1]
        dmu, dls = bwd(grad_kl.to(mu.dtype).contiguous(), mu, log_sigma, *ctx.bounds)
        return dmu, dls, None, None


_stats_apply = function_apply(_GateStats)


def stats(mu: Tensor, log_sigma: Tensor, a: float, b: float) -> tuple[Tensor, Tensor, Tensor]:
    """``gate_stats`` of flat, already checked vectors (``log_sigma`` in ``mu.dtype``)."""
    if eager(mu):
        return _stats_apply(mu.contiguous(), log_sigma.contiguous(), a, b)
    return _gate_stats(mu, log_sigma, a, b)


def gate_stats(mu: Tensor, log_sigma: Tensor, *, a: float = -20.0, b: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """(kl, mean, snr) per unit of truncated log-normal gates, in one fused pass.

    Args:
        mu, log_sigma: variational parameters of log θ ~ N(μ, σ²) truncated to [a, b]; same shape, floating point.
        a, b: log-space truncation bounds, a < b (defaults: θ ∈ [e⁻²⁰, 1]).

    Returns:
        ``kl`` = KL(q ‖ LogUniform[a, b]) per unit (differentiable in mu and log_sigma), ``mean`` = E[θ] and
        ``snr`` = E[θ]/std[θ] (no gradient).  Computed in float64 in log space, returned in ``mu.dtype``.
    """
    check_float("mu", mu)
    check_float("log_sigma", log_sigma)
    check_same("log_sigma", log_sigma, "mu", mu)
    a, b = check_bounds(a, b)
    shape = mu.shape
    kl, mean, snr = stats(mu.reshape(-1), log_sigma.to(mu.dtype).reshape(-1), a, b)
    return kl.reshape(shape), mean.reshape(shape), snr.reshape(shape)
