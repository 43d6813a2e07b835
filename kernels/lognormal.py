"""Triton kernels of ``lognormal_noise``: y = x · θ · mask with θ ~ LogN[a,b](μ, σ²) drawn per unit.

The semantics (Philox counters, per-unit prologue, per-element sampler, backward with its far-tail branch) are
those of ``fastbayes/reference/lognormal.py``; read its docstring first.

x is viewed as a matrix [M, K] = [N·P, C·S] (rows: example and the dims before the unit axis; columns: unit and
the dims after it), tiled [BLOCK_M, BLOCK_K] on a 1-D grid.  Three modes:

* ``_INLINE``: one draw per element (granularity "element", or any granularity whose draws cover x one to one,
  e.g. "sample" on [B, C]); the sampler runs per element, with the element index as the counter.
* ``_GATHER_COL`` / ``_GATHER_ROW``: draws shared by several elements ("batch": per column unit; "sample": per
  example and unit).  A small kernel draws the T = C or N·C θ (and the backward's factors) once, the main
  kernel gathers them, so the transcendental-heavy sampler does not run S or N·P times per draw.

The per-unit prologue (σ, α', β', L = log Φ(β'), r, s, mask) is one tiny float64 kernel over the C units.  In the
backward each program owns a column block and loops over every G-th row block (G a fixed function of the shape),
so the per-(row group, column) partial sums of g·x·θ·∂x_s/∂μ and g·x·θ·σ·∂x_s/∂σ are a [G, C·S] buffer; torch
sums them in a fixed order (no atomics, so results are bit-reproducible).
"""
from __future__ import annotations

import contextlib
import math
import os

import torch
import triton
import triton.language as tl

from ._math import log1p, log_ndtr, ndtri_log
from ..backends import register

GRANULARITIES = ("batch", "sample", "element")
FAR_TAIL = tl.constexpr(16.0)    # reference.lognormal.FAR_TAIL
_NTAB = 8                       # rows of the per-unit table: μ, σ, α', β', L, r, s, mask; then a, b
_INLINE, _GATHER_COL, _GATHER_ROW = 0, 1, 2


# ------------------------------------------------------------------------------------------------------
# device functions
# ------------------------------------------------------------------------------------------------------

@triton.jit
def _clamp_min(x, lo):
    """torch.clamp(x, min=lo), NaN passing through."""
    return tl.where(x < lo, lo, x)


@triton.jit
def _sample(u, mu, sg, al, be, big_l, r, s, lo, hi):
    """θ and what the backward needs (v, w, ε') for uniforms u, in canonical (mirrored) coordinates."""
    v = tl.where(s < 0.0, 1.0 - u, u)
    w = v + (1.0 - v) * r
    w = tl.where(w < 1.1754943508222875e-38, 1.1754943508222875e-38, w)   # reference W_FLOOR
    eps = ndtri_log(big_l + tl.log(w))
    xs = mu + sg * s * eps
    xs = tl.where(xs < lo, lo, tl.where(xs > hi, hi, xs))
    return tl.exp(xs), v, w, eps


@triton.jit
def _mills_asym(t):
    """t·R(t) for t >= FAR_TAIL, R the Mills ratio."""
    t2 = 1.0 / (t * t)
    return 1.0 - t2 + 3.0 * t2 * t2


@triton.jit
def _grad_factors(v, w, eps, al, be, r, s):
    """(∂x_s/∂μ, ∂x_s/∂σ) per draw; the same expressions, in the same order, as reference grad_factors."""
    far = be < -FAR_TAIL
    pe = _clamp_min(-eps, FAR_TAIL)
    bb = _clamp_min(-be, FAR_TAIL)
    aa = _clamp_min(-al, FAR_TAIL)
    mp = _mills_asym(pe)
    rb_far = (v / w) * (bb / pe) * mp / _mills_asym(bb)
    ra_far = ((1.0 - v) * r / w) * (aa / pe) * mp / _mills_asym(aa)
    vpos = v > 0.0
    log_v = tl.log(tl.where(vpos, v, 1.0))
    rb_near = tl.where(vpos, tl.exp(log_v - 0.5 * (be - eps) * (be + eps)), 0.0)
    ra_near = tl.exp(log1p(-v) - 0.5 * (al - eps) * (al + eps))
    ra = tl.where(far, tl.where(r > 0.0, ra_far, 0.0), ra_near)
    rb = tl.where(far, rb_far, rb_near)
    dmu = 1.0 - ra - rb
    # α'·ra vanishes wherever ra does; the guard avoids the 0·inf a huge |α'| would give
    dsig = s * (eps - tl.where(ra > 0.0, al * ra, 0.0) - tl.where(rb > 0.0, be * rb, 0.0))
    return dmu, dsig


@triton.jit
def _bounds(tab_ptr, C):
    return tl.load(tab_ptr + 8 * C), tl.load(tab_ptr + 8 * C + 1)


@triton.jit
def _load_unit(tab_ptr, c, C, ok):
    """The per-unit table at units c; harmless values (μ=0, σ=1 on [-1, 1]) where not ok."""
    mu = tl.load(tab_ptr + c, mask=ok, other=0.0)
    sg = tl.load(tab_ptr + C + c, mask=ok, other=1.0)
    al = tl.load(tab_ptr + 2 * C + c, mask=ok, other=-1.0)
    be = tl.load(tab_ptr + 3 * C + c, mask=ok, other=1.0)
    big_l = tl.load(tab_ptr + 4 * C + c, mask=ok, other=-0.1727537790234499)   # log Φ(1)
    r = tl.load(tab_ptr + 5 * C + c, mask=ok, other=0.1886029416657290)        # Φ(-1)/Φ(1)
    s = tl.load(tab_ptr + 6 * C + c, mask=ok, other=1.0)
    return mu, sg, al, be, big_l, r, s


# ------------------------------------------------------------------------------------------------------
# kernels
# ------------------------------------------------------------------------------------------------------

@triton.jit
def _prologue_kernel(mu_ptr, ls_ptr, mask_ptr, tab_ptr, C, a: tl.float64, b: tl.float64,
                     HAS_MASK: tl.constexpr, BLOCK: tl.constexpr):
    """Per-unit sampler constants in float64 (reference unit_params), stored in the math dtype."""
    c = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = c < C
    mu = tl.load(mu_ptr + c, mask=ok, other=0.0).to(tl.float64)
    sigma = tl.exp(tl.load(ls_ptr + c, mask=ok, other=0.0).to(tl.float64))
    al = (a - mu) / sigma
    be = (b - mu) / sigma
    mirror = (al + be) > 0.0
    al_c = tl.where(mirror, -be, al)
    be_c = tl.where(mirror, -al, be)
    big_l = log_ndtr(be_c)
    r = tl.exp(log_ndtr(al_c) - big_l)
    one = tl.full([BLOCK], 1.0, tl.float64)
    s = tl.where(mirror, -one, one)
    if HAS_MASK:
        mk = tl.where(tl.load(mask_ptr + c, mask=ok, other=0) != 0, one, 0.0 * one)
    else:
        mk = one
    ty = tab_ptr.dtype.element_ty
    tl.store(tab_ptr + c, mu.to(ty), mask=ok)
    tl.store(tab_ptr + C + c, sigma.to(ty), mask=ok)
    tl.store(tab_ptr + 2 * C + c, al_c.to(ty), mask=ok)
    tl.store(tab_ptr + 3 * C + c, be_c.to(ty), mask=ok)
    tl.store(tab_ptr + 4 * C + c, big_l.to(ty), mask=ok)
    tl.store(tab_ptr + 5 * C + c, r.to(ty), mask=ok)
    tl.store(tab_ptr + 6 * C + c, s.to(ty), mask=ok)
    tl.store(tab_ptr + 7 * C + c, mk.to(ty), mask=ok)
    # the clamp bounds in the math dtype, rounded as torch.clamp rounds a Python scalar (scalar kernel arguments
    # are Python floats in the interpreter, so they enter through a float64 tensor)
    i2 = tl.arange(0, 2)
    z2 = tl.zeros([2], tl.float64)
    tl.store(tab_ptr + 8 * C + i2, tl.where(i2 == 0, z2 + a, z2 + b).to(ty), mask=(i2 < 2) & (tl.program_id(0) == 0))


@triton.jit
def _draw_kernel(tab_ptr, th_ptr, fm_ptr, fs_ptr, T, C, seed, offset, GRAD: tl.constexpr, BLOCK: tl.constexpr):
    """θ (0 for masked units) for shared draws t = c or n·C + c (counter offset + t), plus, with GRAD,
    ∂x_s/∂μ and σ·∂x_s/∂σ."""
    t = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = t < T
    c = t % C
    dt = th_ptr.dtype.element_ty
    lo, hi = _bounds(tab_ptr, C)
    mu, sg, al, be, big_l, r, s = _load_unit(tab_ptr, c, C, ok)
    live = tl.load(tab_ptr + 7 * C + c, mask=ok, other=0.0) != 0.0
    u = tl.rand(seed, offset + t.to(tl.int64)).to(dt)
    th, v, w, eps = _sample(u, mu, sg, al, be, big_l, r, s, lo, hi)
    tl.store(th_ptr + t, tl.where(live, th, 0.0), mask=ok)
    if GRAD:
        dmu, dsig = _grad_factors(v, w, eps, al, be, r, s)
        tl.store(fm_ptr + t, tl.where(live, dmu, 0.0), mask=ok)
        tl.store(fs_ptr + t, tl.where(live, dsig * sg, 0.0), mask=ok)


@triton.jit
def _tile(M, K, S, tab_ptr, C, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    # 1-D grid, row blocks outermost (no 65535 limit on either axis); neighbouring programs share rows
    nkb = tl.cdiv(K, BLOCK_K)
    pid = tl.program_id(0)
    pid_m = pid // nkb
    pid_k = pid % nkb
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    cin = cols < K
    c = cols // S
    on = tl.load(tab_ptr + 7 * C + c, mask=cin, other=0.0) != 0.0     # unit not pruned
    inb = (rows < M)[:, None] & cin[None, :]
    live = inb & on[None, :]
    idx = rows.to(tl.int64)[:, None] * K + cols[None, :]
    return pid_m, rows, cols, cin, c, on, inb, live, idx


@triton.jit
def _fwd_kernel(x_ptr, y_ptr, tab_ptr, th_ptr, M, K, S, P, C, seed, offset, MODE: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_K: tl.constexpr):
    _, rows, cols, cin, c, on, inb, live, idx = _tile(M, K, S, tab_ptr, C, BLOCK_M, BLOCK_K)
    dt = tab_ptr.dtype.element_ty
    # loads masked by the tile bounds only (a per-unit mask would defeat vectorised loads); pruned units get θ = 0
    x = tl.load(x_ptr + idx, mask=inb, other=0.0).to(dt)
    if MODE == 0:
        lo, hi = _bounds(tab_ptr, C)
        mu, sg, al, be, big_l, r, s = _load_unit(tab_ptr, c, C, cin)
        u = tl.rand(seed, offset + idx).to(dt)
        th, v, w, eps = _sample(u, mu[None, :], sg[None, :], al[None, :], be[None, :], big_l[None, :],
                                r[None, :], s[None, :], lo, hi)
        th = tl.where(on[None, :], th, 0.0)
    elif MODE == 1:
        th = tl.load(th_ptr + c, mask=cin, other=0.0)[None, :]
    else:
        t = (rows // P)[:, None] * C + c[None, :]
        th = tl.load(th_ptr + t, mask=inb, other=0.0)
    tl.store(y_ptr + idx, (x * th).to(y_ptr.dtype.element_ty), mask=inb)


@triton.jit
def _bwd_kernel(g_ptr, x_ptr, dx_ptr, pm_ptr, ps_ptr, tab_ptr, th_ptr, fm_ptr, fs_ptr, M, K, S, P, C, seed, offset,
                ROW_GROUPS, MODE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """Program (row group, column block) walks the row blocks g, g + ROW_GROUPS, ... of its columns, adding their
    per-column sums in order, and writes one row of the [ROW_GROUPS, K] partial sums (a buffer of ROW_GROUPS·K,
    not M·K / BLOCK_M)."""
    nkb = tl.cdiv(K, BLOCK_K)
    pid = tl.program_id(0)
    pid_g = pid // nkb
    pid_k = pid % nkb
    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    cin = cols < K
    c = cols // S
    on = tl.load(tab_ptr + 7 * C + c, mask=cin, other=0.0) != 0.0     # unit not pruned
    dt = tab_ptr.dtype.element_ty
    if MODE == 0:
        lo, hi = _bounds(tab_ptr, C)
        mu, sg, al, be, big_l, r, s = _load_unit(tab_ptr, c, C, cin)
        mu2, sg2, l2 = mu[None, :], sg[None, :], big_l[None, :]
        al2, be2, r2, s2 = al[None, :], be[None, :], r[None, :], s[None, :]
    elif MODE == 1:
        th1 = tl.load(th_ptr + c, mask=cin, other=0.0)[None, :]
        fm1 = tl.load(fm_ptr + c, mask=cin, other=0.0)[None, :]
        fs1 = tl.load(fs_ptr + c, mask=cin, other=0.0)[None, :]
    acc_m = tl.zeros([BLOCK_K], dtype=dt)
    acc_s = tl.zeros([BLOCK_K], dtype=dt)
    for mb in range(pid_g, tl.cdiv(M, BLOCK_M), ROW_GROUPS):
        rows = mb * BLOCK_M + tl.arange(0, BLOCK_M)
        inb = (rows < M)[:, None] & cin[None, :]
        live = inb & on[None, :]
        idx = rows.to(tl.int64)[:, None] * K + cols[None, :]
        g = tl.load(g_ptr + idx, mask=inb, other=0.0).to(dt)
        x = tl.load(x_ptr + idx, mask=inb, other=0.0).to(dt)
        if MODE == 0:
            u = tl.rand(seed, offset + idx).to(dt)
            th, v, w, eps = _sample(u, mu2, sg2, al2, be2, l2, r2, s2, lo, hi)
            th = tl.where(on[None, :], th, 0.0)
            dmu, dsig = _grad_factors(v, w, eps, al2, be2, r2, s2)
            gxt = g * x * th
            cm = gxt * dmu
            cs = gxt * dsig * sg2
        else:
            if MODE == 1:
                th = th1
                fm = fm1
                fs = fs1
            else:
                t = (rows // P)[:, None] * C + c[None, :]
                th = tl.load(th_ptr + t, mask=inb, other=0.0)
                fm = tl.load(fm_ptr + t, mask=inb, other=0.0)
                fs = tl.load(fs_ptr + t, mask=inb, other=0.0)
            gxt = g * x * th
            cm = gxt * fm
            cs = gxt * fs
        tl.store(dx_ptr + idx, (g * th).to(dx_ptr.dtype.element_ty), mask=inb)
        # pruned units and padding contribute exactly 0 to dμ, d log σ (even where x or a factor is not finite)
        acc_m += tl.sum(tl.where(live, cm, 0.0), axis=0)
        acc_s += tl.sum(tl.where(live, cs, 0.0), axis=0)
    prow = pid_g.to(tl.int64) * K
    tl.store(pm_ptr + prow + cols, acc_m, mask=cin)
    tl.store(ps_ptr + prow + cols, acc_s, mask=cin)


# ------------------------------------------------------------------------------------------------------
# launchers
# ------------------------------------------------------------------------------------------------------

def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _on_device(t: torch.Tensor):
    """Make t's GPU the current device for the launches (Triton launches on the current device, so a tensor on a
    second GPU would otherwise fail); a no-op for CPU tensors (interpreter)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


_BWD_TARGET_PROGRAMS = 1024   # backward programs on a GPU: a fixed number (never the SM count), so sums are reproducible


def _row_groups(m, bm, k, bk):
    """How many programs share a column block in the backward (each loops over every ROW_GROUPS-th row block)."""
    nmb = triton.cdiv(m, bm)
    if _interpreting():
        return 1
    return max(1, min(nmb, triton.cdiv(_BWD_TARGET_PROGRAMS, triton.cdiv(k, bk))))


def _math_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check(x, mu, log_sigma, mask, a, b, dim, granularity):
    """(N, P, C, S) of the [M, K] = [N·P, C·S] view; ValueError naming the bad argument."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1:
        raise ValueError("x must be a floating-point tensor with at least one dimension")
    if isinstance(dim, bool) or not isinstance(dim, int) or not 0 <= dim < x.dim():
        raise ValueError(f"dim must be a non-negative integer below x.dim() = {x.dim()}, got {dim!r}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if granularity == "sample" and dim == 0:
        raise ValueError("granularity='sample' needs dim != 0")
    c = x.shape[dim]
    if mu.dim() != 1 or mu.numel() != c or not mu.is_floating_point():
        raise ValueError(f"mu must be a 1-d float tensor with x.shape[{dim}] = {c} entries, got {tuple(mu.shape)}")
    if log_sigma.shape != mu.shape or not log_sigma.is_floating_point():
        raise ValueError(f"log_sigma must be a float tensor of shape {tuple(mu.shape)}, got {tuple(log_sigma.shape)}")
    if mask is not None and (mask.dtype != torch.bool or mask.shape != mu.shape):
        raise ValueError(f"mask must be a bool tensor of shape {tuple(mu.shape)}")
    if not float(a) < float(b):
        raise ValueError(f"bound a must be smaller than bound b, got a={a}, b={b}")
    if dim == 0:   # reference layout: P = 1 and N irrelevant ("sample" is refused above)
        return 1, 1, c, math.prod(x.shape[1:])
    return x.shape[0], math.prod(x.shape[1:dim]), c, math.prod(x.shape[dim + 1:])


def _unit_table(mu, log_sigma, mask, a, b, dt):
    """[8·C + 2] table in the math dtype: rows μ, σ, α', β', L, r, s, mask (1/0), then the bounds a, b."""
    c = mu.numel()
    tab = torch.empty(_NTAB * c + 2, dtype=dt, device=mu.device)
    # float64 log Φ is register-hungry: one unit a thread on the GPU (C is small anyway)
    block = min(triton.next_power_of_2(max(c, 1)), 1 << 14 if _interpreting() else 128)
    mk = mask.contiguous() if mask is not None else tab   # dummy pointer when HAS_MASK is False
    _prologue_kernel[(triton.cdiv(c, block),)](mu.contiguous(), log_sigma.contiguous(), mk, tab, c, float(a),
                                               float(b), HAS_MASK=mask is not None, BLOCK=block)
    return tab


def _plan(n, p, c, s, granularity, numel):
    """(mode, number of shared draws) for the layout."""
    t = {"batch": c, "sample": n * c, "element": numel}[granularity]
    if t == numel:   # one draw per element; counters n·C + c or c coincide with the element index here
        return _INLINE, t
    return (_GATHER_COL if granularity == "batch" else _GATHER_ROW), t


def _tiles(m, k, mode, backward):
    """(BLOCK_M, BLOCK_K, num_warps).  GPU: the sampler is register-hungry, so _INLINE tiles hold 1K elements
    (4 a thread); gather tiles are memory-bound and hold 4K.  Backward tiles are 128 columns wide (each backward
    program loops over row blocks, see _row_groups).  Interpreter: as few programs as possible."""
    if _interpreting():
        bk = min(triton.next_power_of_2(k), 1 << 14)
        return min(triton.next_power_of_2(m), max(1, (1 << 14) // bk)), bk, 4
    budget = 1024 if mode == _INLINE else 4096
    bk = min(triton.next_power_of_2(k), 128 if backward else 512)
    bm = min(triton.next_power_of_2(m), max(1, budget // bk))
    return bm, bk, 8 if bm * bk >= 1024 else 4


def _draw_block(t):
    return min(triton.next_power_of_2(t), 1 << 14 if _interpreting() else 256)


def _draws(tab, t, c, seed, offset, grad):
    """The T shared draws: θ (and, with grad, ∂x_s/∂μ and σ·∂x_s/∂σ) in the math dtype."""
    dt = tab.dtype
    th = torch.empty(t, dtype=dt, device=tab.device)
    fm = torch.empty(t, dtype=dt, device=tab.device) if grad else th
    fs = torch.empty(t, dtype=dt, device=tab.device) if grad else th
    block = _draw_block(t)
    _draw_kernel[(triton.cdiv(t, block),)](tab, th, fm, fs, t, c, seed, offset, GRAD=grad, BLOCK=block)
    return th, fm, fs


@register("triton")
def lognormal_noise(x, mu, log_sigma, mask, a: float, b: float, dim: int, granularity: str, seed: int,
                    offset: int) -> torch.Tensor:
    """y = x · θ · mask, θ drawn from (seed, offset) exactly as reference.lognormal.lognormal_noise."""
    n, p, c, s = _check(x, mu, log_sigma, mask, a, b, dim, granularity)
    x = x.contiguous()
    y = torch.empty_like(x)
    if x.numel() == 0:
        return y
    with _on_device(x):
        tab = _unit_table(mu, log_sigma, mask, a, b, _math_dtype(x))
        mode, t = _plan(n, p, c, s, granularity, x.numel())
        th = _draws(tab, t, c, seed, offset, grad=False)[0] if mode != _INLINE else tab
        m, k = n * p, c * s
        bm, bk, warps = _tiles(m, k, mode, backward=False)
        _fwd_kernel[(triton.cdiv(m, bm) * triton.cdiv(k, bk),)](x, y, tab, th, m, k, s, p, c, seed, offset,
                                                                MODE=mode, BLOCK_M=bm, BLOCK_K=bk, num_warps=warps)
    return y


@register("triton")
def lognormal_noise_backward(grad_y, x, mu, log_sigma, mask, a: float, b: float, dim: int, granularity: str,
                             seed: int, offset: int):
    """(dx, dμ, d log σ) of ``lognormal_noise``, regenerating θ from (seed, offset); reduction without atomics."""
    n, p, c, s = _check(x, mu, log_sigma, mask, a, b, dim, granularity)
    if grad_y.shape != x.shape:
        raise ValueError(f"grad_y must have the shape of x {tuple(x.shape)}, got {tuple(grad_y.shape)}")
    x, grad_y = x.contiguous(), grad_y.contiguous()
    dx = torch.empty_like(x)
    if x.numel() == 0:
        return dx, torch.zeros_like(mu), torch.zeros_like(log_sigma)
    dt = _math_dtype(x)
    with _on_device(x):
        tab = _unit_table(mu, log_sigma, mask, a, b, dt)
        mode, t = _plan(n, p, c, s, granularity, x.numel())
        th, fm, fs = _draws(tab, t, c, seed, offset, grad=True) if mode != _INLINE else (tab, tab, tab)
        m, k = n * p, c * s
        bm, bk, warps = _tiles(m, k, mode, backward=True)
        groups = _row_groups(m, bm, k, bk)
        part = torch.empty((2, groups, k), dtype=dt, device=x.device)
        _bwd_kernel[(groups * triton.cdiv(k, bk),)](grad_y, x, dx, part[0], part[1], tab, th, fm, fs, m, k, s, p, c,
                                                    seed, offset, groups, MODE=mode, BLOCK_M=bm, BLOCK_K=bk,
                                                    num_warps=warps)
    # second stage: a fixed-order reduction over the row groups and the dims after the unit axis
    dmu, dls = part.view(2, groups, c, s).sum(dim=(1, 3))
    # two rows of one tensor: copy, a custom op's outputs must not alias each other
    return dx, dmu.to(mu.dtype, copy=True), dls.to(log_sigma.dtype, copy=True)
