"""Triton kernels of ``bernoulli_gate`` (y = x · ξ, ξ ~ Bern(θ) per example and unit) and ``scale_mixture_prior``.

Semantics (Philox counters n·C + c, ξ = 1[u < θ], the exact-zero select, the straight-through θ gradient and the
prior's formulas) are those of ``fastbayes/reference/bernoulli.py``; read its docstring first.  Only ``tl.*``
primitives are used, so every kernel also runs in the Triton interpreter.

x is viewed as a matrix [M, K] = [N·P, C·S] (rows: example and the dims before the unit axis; columns: unit and the
dims after it), tiled [BLOCK_M, BLOCK_K] on a 1-D grid.  When the N·C draws cover x one to one (P = S = 1, e.g.
[B, C]) the tiles draw inline (counter = element index); otherwise a small kernel draws the ξ table [N·C] once and
the tiles gather it.  A mask is folded into θ (θ = 0 never keeps a unit: u ≥ 0).  The backward writes dx and
per-(row block, column) float64 partial sums of g·x, summed in a fixed order with torch (no atomics).
"""
from __future__ import annotations

import contextlib
import math
import os

import torch
import triton
import triton.language as tl
from ..backends import register


@triton.jit
def _draw_kernel(theta_ptr, xi_ptr, T, C, seed, offset, BLOCK: tl.constexpr):
    """ξ[t] = 1[u(offset + t) < θ[t % C]] for t < T = N·C."""
    t = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = t < T
    th = tl.load(theta_ptr + t % C, mask=ok, other=0.0)
    u = tl.rand(seed, offset + t)
    tl.store(xi_ptr + t, (u < th).to(tl.int8), mask=ok)


@triton.jit
def _keep(xi_ptr, theta_ptr, rows, cols, idx, inb, cin, S, P, C, seed, offset, INLINE: tl.constexpr):
    c = cols // S
    if INLINE:   # P = S = 1: element idx = n·C + c is its own draw
        th = tl.load(theta_ptr + c, mask=cin, other=0.0)
        keep = tl.rand(seed, offset + idx) < th[None, :]
    else:
        t = (rows // P).to(tl.int64)[:, None] * C + c[None, :]
        keep = tl.load(xi_ptr + t, mask=inb, other=0) != 0
    return keep


@triton.jit
def _tile(M, K, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    # 1-D grid, row blocks outermost (no 65535 limit on either axis)
    nkb = tl.cdiv(K, BLOCK_K)
    pid = tl.program_id(0)
    pid_m = pid // nkb
    pid_k = pid % nkb
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    cin = cols < K
    inb = (rows < M)[:, None] & cin[None, :]
    idx = rows.to(tl.int64)[:, None] * K + cols[None, :]
    return pid_m, rows, cols, cin, inb, idx


@triton.jit
def _fwd_kernel(x_ptr, y_ptr, xi_ptr, theta_ptr, M, K, S, P, C, seed, offset, INLINE: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    _, rows, cols, cin, inb, idx = _tile(M, K, BLOCK_M, BLOCK_K)
    keep = _keep(xi_ptr, theta_ptr, rows, cols, idx, inb, cin, S, P, C, seed, offset, INLINE)
    x = tl.load(x_ptr + idx, mask=inb, other=0.0)
    tl.store(y_ptr + idx, tl.where(keep, x, tl.zeros_like(x)), mask=inb)


@triton.jit
def _bwd_kernel(g_ptr, x_ptr, dx_ptr, part_ptr, xi_ptr, theta_ptr, M, K, S, P, C, seed, offset,
                INLINE: tl.constexpr, F64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m, rows, cols, cin, inb, idx = _tile(M, K, BLOCK_M, BLOCK_K)
    keep = _keep(xi_ptr, theta_ptr, rows, cols, idx, inb, cin, S, P, C, seed, offset, INLINE)
    g = tl.load(g_ptr + idx, mask=inb, other=0.0)
    x = tl.load(x_ptr + idx, mask=inb, other=0.0)
    gd = g.to(dx_ptr.dtype.element_ty)
    tl.store(dx_ptr + idx, tl.where(keep, gd, tl.zeros_like(gd)), mask=inb)
    if F64:
        gx = g.to(tl.float64) * x.to(tl.float64)
    else:
        gx = (g.to(tl.float32) * x.to(tl.float32)).to(tl.float64)
    part = tl.sum(tl.where(inb, gx, 0.0), axis=0)
    tl.store(part_ptr + pid_m.to(tl.int64) * K + cols, part, mask=cin)


@triton.jit
def _prior_terms(sq, k, lv0, lv1):
    h0 = 0.5 * tl.exp(-lv0)
    h1 = 0.5 * tl.exp(-lv1)
    c0 = sq * h0 + 0.5 * k * (1.8378770664093454836 + lv0)
    c1 = sq * h1 + 0.5 * k * (1.8378770664093454836 + lv1)
    return c0, c1, h0, h1


@triton.jit
def _prior_kernel(th_ptr, sq_ptr, k_ptr, lv0_ptr, lv1_ptr, out_ptr, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = i < n
    th = tl.load(th_ptr + i, mask=ok, other=0.0).to(tl.float64)
    c0, c1, _, _ = _prior_terms(tl.load(sq_ptr + i, mask=ok, other=0.0).to(tl.float64),
                                tl.load(k_ptr + i, mask=ok, other=0.0).to(tl.float64),
                                tl.load(lv0_ptr + i, mask=ok, other=0.0).to(tl.float64),
                                tl.load(lv1_ptr + i, mask=ok, other=0.0).to(tl.float64))
    tl.store(out_ptr + i, (th * c1 + (1.0 - th) * c0).to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _prior_bwd_kernel(g_ptr, th_ptr, sq_ptr, k_ptr, lv0_ptr, lv1_ptr, dth_ptr, dsq_ptr, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = i < n
    g = tl.load(g_ptr + i, mask=ok, other=0.0).to(tl.float64)
    th = tl.load(th_ptr + i, mask=ok, other=0.0).to(tl.float64)
    c0, c1, h0, h1 = _prior_terms(tl.load(sq_ptr + i, mask=ok, other=0.0).to(tl.float64),
                                  tl.load(k_ptr + i, mask=ok, other=0.0).to(tl.float64),
                                  tl.load(lv0_ptr + i, mask=ok, other=0.0).to(tl.float64),
                                  tl.load(lv1_ptr + i, mask=ok, other=0.0).to(tl.float64))
    tl.store(dth_ptr + i, (g * (c1 - c0)).to(dth_ptr.dtype.element_ty), mask=ok)
    tl.store(dsq_ptr + i, (g * (th * h1 + (1.0 - th) * h0)).to(dsq_ptr.dtype.element_ty), mask=ok)


# ------------------------------------------------------------------------------------------------------
# launchers
# ------------------------------------------------------------------------------------------------------

def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _on_device(t: torch.Tensor):
    """Make t's GPU the current device for the launches (Triton launches on the current device, so a tensor on a
    second GPU would otherwise fail); a no-op for CPU tensors (interpreter)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _check(x, theta, mask, dim):
    """(N, P, C, S) of the [M, K] = [N·P, C·S] view; ValueError naming the bad argument."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise ValueError("x must be a floating-point tensor with at least two dimensions")
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim < x.dim():
        raise ValueError(f"dim must be an integer in [1, x.dim() = {x.dim()}), got {dim!r}")
    c = x.shape[dim]
    if theta.dim() != 1 or theta.numel() != c or theta.dtype != torch.float32:
        raise ValueError(f"theta must be a 1-d float32 tensor with x.shape[{dim}] = {c} entries, "
                         f"got {theta.dtype} {tuple(theta.shape)}")
    if mask is not None and (mask.dtype != torch.bool or mask.shape != theta.shape):
        raise ValueError(f"mask must be a bool tensor of shape {tuple(theta.shape)}")
    return x.shape[0], math.prod(x.shape[1:dim]), c, math.prod(x.shape[dim + 1:])


def _tiles(m, k, backward):
    """(BLOCK_M, BLOCK_K, num_warps): memory-bound tiles of 4K elements on a GPU (backward tiles 128 columns wide so
    that the partial sums, K·M/BLOCK_M, stay small); in the interpreter as few programs as possible."""
    if _interpreting():
        bk = min(triton.next_power_of_2(k), 1 << 14)
        return min(triton.next_power_of_2(m), max(1, (1 << 14) // bk)), bk, 4
    bk = min(triton.next_power_of_2(k), 128 if backward else 512)
    bm = min(triton.next_power_of_2(m), max(1, 4096 // bk))
    return bm, bk, 8 if bm * bk >= 2048 else 4


def _prepare(x, theta, mask, dim, seed, offset):
    """(n, p, c, s, inline, θ with the mask folded in, ξ table or a dummy)."""
    n, p, c, s = _check(x, theta, mask, dim)
    th = theta.contiguous() if mask is None else theta.masked_fill(~mask, 0.0)
    inline = p == 1 and s == 1
    if inline:
        return n, p, c, s, True, th, th
    t = n * c
    xi = torch.empty(t, dtype=torch.int8, device=x.device)
    block = min(triton.next_power_of_2(max(t, 1)), 1 << 14 if _interpreting() else 1024)
    _draw_kernel[(triton.cdiv(t, block),)](th, xi, t, c, seed, offset, BLOCK=block)
    return n, p, c, s, False, th, xi


@register("triton")
def bernoulli_gate(x, theta, mask, dim: int, seed: int, offset: int) -> torch.Tensor:
    """y = x where ξ else 0, ξ drawn from (seed, offset) exactly as reference.bernoulli.bernoulli_gate."""
    x = x.contiguous()
    y = torch.empty_like(x)
    if x.numel() == 0:
        _check(x, theta, mask, dim)
        return y
    with _on_device(x):
        n, p, c, s, inline, th, xi = _prepare(x, theta, mask, dim, seed, offset)
        m, k = n * p, c * s
        bm, bk, warps = _tiles(m, k, backward=False)
        _fwd_kernel[(triton.cdiv(m, bm) * triton.cdiv(k, bk),)](x, y, xi, th, m, k, s, p, c, seed, offset,
                                                                INLINE=inline, BLOCK_M=bm, BLOCK_K=bk,
                                                                num_warps=warps)
    return y


@register("triton")
def bernoulli_gate_backward(grad_y, x, theta, mask, dim: int, seed: int, offset: int):
    """(dx, dθ): dx = g·ξ (ξ regenerated) and the straight-through dθ_c = Σ g·x, float64 sums without atomics."""
    if grad_y.shape != x.shape:
        raise ValueError(f"grad_y must have the shape of x {tuple(x.shape)}, got {tuple(grad_y.shape)}")
    x = x.contiguous()
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    # the reference computes with g.to(math dtype): keep g in x's dtype, else convert it exactly like that
    g = (grad_y if grad_y.dtype == x.dtype else grad_y.to(dt)).contiguous()
    dx = torch.empty_like(x)
    if x.numel() == 0:
        _check(x, theta, mask, dim)
        return dx, torch.zeros_like(theta)
    with _on_device(x):
        n, p, c, s, inline, th, xi = _prepare(x, theta, mask, dim, seed, offset)
        m, k = n * p, c * s
        bm, bk, warps = _tiles(m, k, backward=True)
        nmb = triton.cdiv(m, bm)
        part = torch.empty((nmb, k), dtype=torch.float64, device=x.device)
        _bwd_kernel[(nmb * triton.cdiv(k, bk),)](g, x, dx, part, xi, th, m, k, s, p, c, seed, offset, INLINE=inline,
                                                 F64=dt == torch.float64, BLOCK_M=bm, BLOCK_K=bk, num_warps=warps)
    # second stage: a fixed-order reduction over row blocks and the dims after the unit axis
    dtheta = part.view(nmb, c, s).sum(dim=(0, 2))
    if mask is not None:
        dtheta = torch.where(mask, dtheta, torch.zeros_like(dtheta))
    return dx, dtheta.to(theta.dtype)


def _check_prior(theta, *rest):
    if theta.dim() != 1 or theta.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"theta must be a 1-d float32/float64 tensor, got {theta.dtype} {tuple(theta.shape)}")
    for name, t in rest:
        if t.shape != theta.shape or t.dtype != theta.dtype or t.device != theta.device:
            raise ValueError(f"{name} must have the shape, dtype and device of theta")


def _prior_block(n):
    return min(triton.next_power_of_2(max(n, 1)), 1 << 14 if _interpreting() else 256)


@register("triton")
def scale_mixture_prior(theta, sq_norm, k, log_var0, log_var1) -> torch.Tensor:
    """Per-unit θ·c1 + (1 − θ)·c0 (float64 math, returned in θ's dtype)."""
    _check_prior(theta, ("sq_norm", sq_norm), ("k", k), ("log_var0", log_var0), ("log_var1", log_var1))
    ts = [t.contiguous() for t in (theta, sq_norm, k, log_var0, log_var1)]
    out = torch.empty_like(ts[0])
    n = out.numel()
    if n:
        block = _prior_block(n)
        with _on_device(out):
            _prior_kernel[(triton.cdiv(n, block),)](*ts, out, n, BLOCK=block)
    return out


@register("triton")
def scale_mixture_prior_backward(grad, theta, sq_norm, k, log_var0, log_var1):
    """(dθ, d sq_norm) = grad·(c1 − c0), grad·(θ/(2σ1²) + (1 − θ)/(2σ0²))."""
    _check_prior(theta, ("grad", grad), ("sq_norm", sq_norm), ("k", k), ("log_var0", log_var0),
                 ("log_var1", log_var1))
    ts = [t.contiguous() for t in (grad, theta, sq_norm, k, log_var0, log_var1)]
    dth, dsq = torch.empty_like(ts[1]), torch.empty_like(ts[2])
    n = dth.numel()
    if n:
        block = _prior_block(n)
        with _on_device(dth):
            _prior_bwd_kernel[(triton.cdiv(n, block),)](*ts, dth, dsq, n, BLOCK=block)
    return dth, dsq
