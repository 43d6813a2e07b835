"""Triton kernels of the SVGD direction: the twin of ``fastbayes/reference/svgd.py`` (read its docstring first).

* ``svgd_kernel_matrix``: ``_gram_kernel`` reads each particle tensor [n, m] once.  Programs own a (column split,
  row tile i, row tile j) triple; each loads its rows minus particle 0's values (the shift-invariance of distances
  that removes the ‖x_i‖² + ‖x_j‖² − 2 x_i·x_j cancellation), multiplies them with ``tl.dot`` (fp32 inputs in
  IEEE precision, never TF32) and adds each column block's product to a float64 accumulator.  The per-split
  partial Gram matrices are summed in a fixed order on the device; D, the median bandwidth and K follow with torch
  on the n×n matrix, without a host sync.
* ``svgd_apply``: ``_apply_kernel`` computes φ = K·Y + diag(c·r)·X with Y = S/n − c·X, c = 2/(h n), r = K·1 (the
  reference's (K·S + (2/h)(diag(K1)·X − K·X))/n regrouped: one ``tl.dot`` per block of particles instead of two).
  Y is formed from the loaded tiles of X and S, r and c in float64 inside the kernel, and the diagonal term is the
  epilogue (its tile of X is the one just read, from L1/L2).  The grid walks the row tiles of one column block next
  to each other, so for n > BLOCK_I the repeated reads of X and S hit L2; for n <= BLOCK_I they are read once.
"""
from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

from fastbayes.reference.svgd import median_bandwidth
from ..backends import register


@triton.jit
def _gram_kernel(x_ptr, part_ptr, n, m, cols_per_split, ACCUM: tl.constexpr, IS_F64: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    s = tl.program_id(0)
    ri = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rj = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    mi = ri < n
    mj = rj < n
    c_lo = s * cols_per_split
    c_hi = tl.minimum(c_lo + cols_per_split, m)
    acc = tl.zeros((BLOCK_N, BLOCK_N), dtype=tl.float64)
    for k in range(c_lo, c_hi, BLOCK_K):
        cols = k + tl.arange(0, BLOCK_K)
        mc = cols < c_hi
        x0 = tl.load(x_ptr + cols, mask=mc, other=0.0)
        mask_i = mi[:, None] & mc[None, :]
        mask_j = mj[:, None] & mc[None, :]
        xi = tl.load(x_ptr + ri[:, None].to(tl.int64) * m + cols[None, :], mask=mask_i, other=0.0)
        xj = tl.load(x_ptr + rj[:, None].to(tl.int64) * m + cols[None, :], mask=mask_j, other=0.0)
        xi = tl.where(mask_i, xi - x0[None, :], 0.0)
        xj = tl.where(mask_j, xj - x0[None, :], 0.0)
        if IS_F64:
            acc += tl.dot(xi, tl.trans(xj), out_dtype=tl.float64)
        else:
            acc += tl.dot(xi, tl.trans(xj), input_precision="ieee").to(tl.float64)
    offs = s.to(tl.int64) * n * n + ri[:, None] * n + rj[None, :]
    mask = mi[:, None] & mj[None, :]
    if ACCUM:
        acc += tl.load(part_ptr + offs, mask=mask, other=0.0)
    tl.store(part_ptr + offs, acc, mask=mask)


@triton.jit
def _apply_kernel(k_ptr, h_ptr, x_ptr, s_ptr, out_ptr, n, m, num_i, inv_n: tl.float64, IS_F64: tl.constexpr,
                  BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    ri = (pid % num_i) * BLOCK_I + tl.arange(0, BLOCK_I)
    cols = (pid // num_i).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    mi = ri < n
    mc = cols < m
    dt = x_ptr.dtype.element_ty
    h = tl.load(h_ptr)
    c = 2.0 * inv_n / h
    # r_i = Σ_j K_ij (float64), for the diagonal term
    r = tl.zeros((BLOCK_I,), dtype=tl.float64)
    for j0 in range(0, n, BLOCK_J):
        rj = j0 + tl.arange(0, BLOCK_J)
        kt = tl.load(k_ptr + ri[:, None] * n + rj[None, :], mask=mi[:, None] & (rj[None, :] < n), other=0.0)
        r += tl.sum(kt, axis=1)
    acc = tl.zeros((BLOCK_I, BLOCK_D), dtype=tl.float64 if IS_F64 else tl.float32)
    inv_n_t = (h * 0.0 + inv_n).to(dt)  # inv_n may arrive as a Python float (interpreter, n = 1)
    c_t = c.to(dt)
    for j0 in range(0, n, BLOCK_J):
        rj = j0 + tl.arange(0, BLOCK_J)
        mj = rj < n
        kt = tl.load(k_ptr + ri[:, None] * n + rj[None, :], mask=mi[:, None] & mj[None, :], other=0.0).to(dt)
        offs = rj[:, None].to(tl.int64) * m + cols[None, :]
        mask = mj[:, None] & mc[None, :]
        sv = tl.load(s_ptr + offs, mask=mask, other=0.0)
        xv = tl.load(x_ptr + offs, mask=mask, other=0.0)
        y = sv * inv_n_t - c_t * xv
        if IS_F64:
            acc = tl.dot(kt, y, acc, out_dtype=tl.float64)
        else:
            acc = tl.dot(kt, y, acc, input_precision="ieee")
    offs_i = ri[:, None].to(tl.int64) * m + cols[None, :]
    mask_i = mi[:, None] & mc[None, :]
    xi = tl.load(x_ptr + offs_i, mask=mask_i, other=0.0)
    acc += (c * r).to(dt)[:, None] * xi
    tl.store(out_ptr + offs_i, acc.to(dt), mask=mask_i)


# ------------------------------------------------------------------------------------------------------
# launchers (the backend API: same names and signatures as the reference)
# ------------------------------------------------------------------------------------------------------

def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _on_device(t: torch.Tensor):
    """Make t's GPU the current device for the launches (Triton launches on the current device, so a tensor on a
    second GPU would otherwise fail); a no-op for CPU tensors (interpreter)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


_GRAM_TARGET_BLOCKS = 512   # ~4 programs per SM of an H100/H200; csrc/cuda/svgd.cu uses the same target


def _block_n(n: int) -> int:
    return min(64, max(16, triton.next_power_of_2(n)))


def _check_rows(name: str, x: torch.Tensor, n: int) -> None:
    if x.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{name} must be float32 or float64, got {x.dtype}")
    if x.dim() < 1 or x.shape[0] != n:
        raise ValueError(f"{name} must have n = {n} particles in dim 0, got shape {tuple(x.shape)}")


@register("triton")
def svgd_kernel_matrix(particles, bandwidth):
    """(K, h) as float64 tensors on the particles' device; see reference.svgd.svgd_kernel_matrix."""
    if not particles:
        raise ValueError("particles must be a non-empty list of tensors")
    n = particles[0].shape[0] if particles[0].dim() else 0
    if n < 2:
        raise ValueError(f"particles must hold at least n = 2 particles along dim 0, got n = {n}")
    device = particles[0].device
    xs = []
    for k, x in enumerate(particles):
        _check_rows(f"particles[{k}]", x, n)
        if x.device != device:
            raise ValueError("particles must be on one device")
        xs.append(x.contiguous().reshape(n, -1))
    bn = _block_n(n)
    tiles = triton.cdiv(n, bn)
    bk = 512 if _interpreting() else 64
    # a fixed block target, never the SM count: the float64 sum over the splits, hence K and h, must not depend on
    # the GPU model
    target = 2 if _interpreting() else max(1, _GRAM_TARGET_BLOCKS // (tiles * tiles))
    m_max = max(x.shape[1] for x in xs)
    splits = max(1, min(target, triton.cdiv(m_max, 8 * bk)))
    part = torch.zeros((splits, n, n), dtype=torch.float64, device=device)
    first = True
    with _on_device(part):
        for x in xs:
            m = x.shape[1]
            if m == 0:
                continue
            cols = triton.cdiv(triton.cdiv(m, splits), bk) * bk
            grid = (triton.cdiv(m, cols), tiles, tiles)
            _gram_kernel[grid](x, part, n, m, cols, ACCUM=not first, IS_F64=x.dtype == torch.float64, BLOCK_N=bn,
                               BLOCK_K=bk)
            first = False
    gram = part.sum(0)
    sq = gram.diagonal()
    d = (sq[:, None] + sq[None, :] - 2.0 * gram).clamp_min(0.0)
    d.fill_diagonal_(0.0)
    if bandwidth is None:
        h = median_bandwidth(d)
    else:
        if not (bandwidth > 0 and bandwidth != float("inf")):
            raise ValueError(f"bandwidth must be positive and finite, got {bandwidth}")
        h = torch.tensor(float(bandwidth), dtype=torch.float64, device=device)
    return torch.exp(-d / h), h


@register("triton")
def svgd_apply(K, h, x, score):
    """φ for one [n, ...] tensor of the particles; see reference.svgd.svgd_apply."""
    n = x.shape[0] if x.dim() else 0
    _check_rows("x", x, n)
    if score.shape != x.shape or score.dtype != x.dtype:
        raise ValueError(f"score must have the shape and dtype of x ({tuple(x.shape)}, {x.dtype}), "
                         f"got {tuple(score.shape)}, {score.dtype}")
    if K.shape != (n, n):
        raise ValueError(f"K must be [n, n] = [{n}, {n}], got {tuple(K.shape)}")
    if h.numel() != 1:
        raise ValueError(f"h must hold one value, got shape {tuple(h.shape)}")
    X, S = x.contiguous().reshape(n, -1), score.contiguous().reshape(n, -1)
    m = X.shape[1]
    out = torch.empty_like(X)
    if m == 0 or n == 0:
        return out.reshape(x.shape)
    bi = _block_n(n)
    is64 = x.dtype == torch.float64
    bd = 1024 if _interpreting() else (64 if is64 else 128)
    num_i = triton.cdiv(n, bi)
    grid = (num_i * triton.cdiv(m, bd),)
    with _on_device(out):
        _apply_kernel[grid](K.to(torch.float64).contiguous(), h.to(torch.float64).reshape(1), X, S, out, n, m, num_i,
                            1.0 / n, IS_F64=is64, BLOCK_I=bi, BLOCK_J=bi, BLOCK_D=bd)
    return out.reshape(x.shape)
