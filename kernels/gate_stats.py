"""Fused per-unit statistics of the truncated log-normal gate: the Triton twin of reference/gate_stats.py.

Read the reference's module docstring first: the regimes (interior: METHODS §0.2/§0.4 direct forms on
log Z = log_diff_ndtr; tail, s > TAIL_S: continued-fraction Mills-ratio forms; wide window, T < WIDE_T:
centred Gauss-Legendre sums for the KL), the anchored log-moments and the quadrature for
Δ² = log(1 + 1/SNR²) are ported here line by line, in the same evaluation order, so that the kernel and
the reference agree to a few ulp of their (cancellation-free) results.

One program handles BLOCK units: it loads μ and log σ in any float dtype, computes in float64 and stores in
the parameters' dtype.  Both branches of every ``torch.where`` are evaluated, as in the reference.
"""
import contextlib
import math

import torch
import triton
import triton.language as tl

from ._math import expm1, log1p, log_diff_ndtr
from ..backends import register

HALF_LOG_2PI = tl.constexpr(0.9189385332046727)
HALF_LOG_2PIE = tl.constexpr(1.4189385332046727)
TAIL_S = tl.constexpr(5.0)  # reference.gate_stats.TAIL_S
CF_TERMS = tl.constexpr(32)  # reference.gate_stats.CF_TERMS
QUAD_SIGMA = tl.constexpr(0.1)  # reference.gate_stats.QUAD_SIGMA
# reference.gate_stats.GJ_NODES / GJ_WEIGHTS: 4-point Gauss rule for ∫_0^1 (1-ξ) f(ξ) dξ
GJ_X0 = tl.constexpr(0.057104196114517725)
GJ_X1 = tl.constexpr(0.2768430136381238)
GJ_X2 = tl.constexpr(0.5835904323689168)
GJ_X3 = tl.constexpr(0.8602401356562195)
GJ_W0 = tl.constexpr(0.13550691343148852)
GJ_W1 = tl.constexpr(0.2034645680102711)
GJ_W2 = tl.constexpr(0.12984754760823233)
GJ_W3 = tl.constexpr(0.031180970950008085)
WIDE_T = tl.constexpr(1.0)  # reference.gate_stats.WIDE_T
# reference.gate_stats.GL_NODES / GL_WEIGHTS: 8-point Gauss-Legendre on [-1, 1], positive half
GL_X0 = tl.constexpr(0.18343464249564978)
GL_X1 = tl.constexpr(0.525532409916329)
GL_X2 = tl.constexpr(0.7966664774136267)
GL_X3 = tl.constexpr(0.9602898564975362)
GL_W0 = tl.constexpr(0.36268378337836166)
GL_W1 = tl.constexpr(0.3137066458778869)
GL_W2 = tl.constexpr(0.22238103445337443)
GL_W3 = tl.constexpr(0.10122853629037706)

# The interpreter runs one numpy op per block, so big blocks keep it fast; on a GPU a block of 128 float64
# lanes (one per thread) keeps register pressure down and gives enough programs for a few thousand units.
_BLOCK_INTERPRET = 1024
_BLOCK_GPU = 128


# ------------------------------------------------------------------------------------------------------
# device functions (reference.gate_stats names)
# ------------------------------------------------------------------------------------------------------

@triton.jit
def _clamp_tail(x):
    """torch.clamp(x, min=TAIL_S), NaN passing through."""
    return tl.where(x < TAIL_S, TAIL_S, x)


@triton.jit
def _mills_cf(x):
    """(C1(x), h2(x)) for x >= TAIL_S by the Laplace continued fraction h_k = 1/(x + (k+1)·h_{k+1})."""
    x = _clamp_tail(x)
    h = tl.zeros_like(x)
    # k = CF_TERMS, ..., 2; kept rolled (the forward inlines this function several times)
    for j in tl.range(0, CF_TERMS - 1, loop_unroll_factor=1):
        h = 1.0 / (x + h * (CF_TERMS + 1 - j))
    return 1.0 / (x + 2.0 * h), h


@triton.jit
def _tail_pieces(s, T):
    """Continued-fraction pieces of the window [s, s+T] (s clamped to TAIL_S)."""
    s = _clamp_tail(s)
    t = s + T
    c_s, h_s = _mills_cf(s)
    c_t, h_t = _mills_cf(t)
    g_s = s + c_s
    g_t = t + c_t
    nu = T + (c_t - c_s)
    log_rho = -T * (s + 0.5 * T) - log1p(nu / g_s)
    one_m_rho = -expm1(log_rho)
    log_d = tl.log(one_m_rho) - tl.log(g_s)
    return c_s, h_s, c_t, h_t, g_s, g_t, nu, log_rho, one_m_rho, log_d


@triton.jit
def _log_z_parts(lo, hi, T):
    """(tail, flip, s, L, pieces...): L = log D in a tail, log Z inside (reference.log_z_parts)."""
    flip = (lo + hi) < 0.0
    s = tl.where(flip, -hi, lo)
    tail = s > TAIL_S
    c_s, h_s, c_t, h_t, g_s, g_t, nu, log_rho, one_m_rho, log_d = _tail_pieces(s, T)
    L = tl.where(tail, log_d, log_diff_ndtr(lo, hi))
    return tail, flip, s, L, c_s, h_s, c_t, h_t, g_s, g_t, nu, log_rho, one_m_rho


@triton.jit
def _tn_var(lo, hi, T):
    """Variance of N(0, 1) truncated to [lo, hi], T = hi - lo (reference.tn_var)."""
    tail, flip, s, L, c_s, h_s, c_t, h_t, g_s, g_t, nu, log_rho, one_m_rho = _log_z_parts(lo, hi, T)
    ga = tl.exp(-0.5 * lo * lo - HALF_LOG_2PI - L)
    gb = tl.exp(-0.5 * hi * hi - HALF_LOG_2PI - L)
    gd = ga - gb
    v_int = 1.0 + lo * ga - hi * gb - gd * gd
    rho = tl.exp(log_rho)
    e = tl.exp(-T * (_clamp_tail(s) + 0.5 * T))
    dlt = rho * nu / one_m_rho
    v1 = c_s * (2.0 * h_s - c_s)
    third = g_s * e * (T * T + (c_s - c_t) * (g_s - T)) / (one_m_rho * g_t)
    v_tail = v1 + dlt * (c_s - dlt) - third
    return tl.where(tail, v_tail, v_int)


@triton.jit
def _log_moment(mu, sigma, a, b, al, be, T, tail0, flip0, L0, K: tl.constexpr):
    """log E[θ^K] with the anchors of both windows folded in analytically (reference._log_moment)."""
    lo1 = al - K * sigma
    tail1, flip1, s1, L1, c_s, h_s, c_t, h_t, g_s, g_t, nu, log_rho, one_m_rho = _log_z_parts(lo1, be - K * sigma, T)
    lo0 = tail0 & ~flip0
    up1 = tail1 & flip1
    pre = K * mu + 0.5 * K * K * sigma * sigma
    pre = tl.where(~tail0 & up1, K * b - 0.5 * be * be - HALF_LOG_2PI, pre)
    pre = tl.where(lo0 & ~tail1, K * a + 0.5 * (lo1 * lo1) + HALF_LOG_2PI, pre)
    pre = tl.where(lo0 & up1, K * b - 0.5 * T * (al + be), pre)
    pre = tl.where(tail0 & flip0, K * b, pre)
    pre = tl.where(lo0 & tail1 & ~flip1, K * a, pre)
    return pre + L1 - L0


@triton.jit
def _delta2(sigma, al, be, T, s0, lm1, lm2):
    """Δ² = log E[θ²] - 2 log E[θ]; by quadrature of the truncated variance where that difference cancels.

    The 8 nodes run in the reference's order (1 - x_0..3, then 1 + x_0..3), accumulated in sequence, as a
    rolled loop so that the large _tn_var body is compiled once; nodes and weights are picked as float64
    tensors (a select between two float literals would be float32)."""
    quad = sigma < tl.where(s0 < 1.0, 1.0, s0) * QUAD_SIGMA
    sq = tl.where(quad, sigma, 0.0)
    zero = tl.zeros_like(sigma)
    acc = zero
    for j in tl.range(0, 8, loop_unroll_factor=1):
        jf = zero + j
        i = tl.where(jf < 4.0, jf, jf - 4.0)
        xj = tl.where(i == 0.0, GJ_X0, tl.where(i == 1.0, GJ_X1, tl.where(i == 2.0, GJ_X2, zero + GJ_X3)))
        wj = tl.where(i == 0.0, GJ_W0, tl.where(i == 1.0, GJ_W1, tl.where(i == 2.0, GJ_W2, zero + GJ_W3)))
        w = sq * tl.where(jf < 4.0, 1.0 - xj, 1.0 + xj)
        acc = acc + wj * _tn_var(al - w, be - w, T)
    return tl.where(quad, sq * sq * acc, lm2 - 2.0 * lm1)


@triton.jit
def _wide_node(m, T, C: tl.constexpr):
    """τ = C·T, the centred log-density g(τ) and e^g - 1 at one quadrature node."""
    tau = T * C
    g = -(m * tau + 0.5 * (tau * tau - T * T / 12.0))
    return tau, g, expm1(g)


@triton.jit
def _wide_moments(p, tau, h, m1, m2):
    return p * (tau - m1) * (h - m2), p * ((h - m2) * (h - m2))


@triton.jit
def _kl_wide(al, be, T, sigma):
    """KL to the uniform window and its gradients when q is close to uniform on it (reference._kl_wide).

    The 8 Gauss-Legendre nodes in the reference's order (+x0, -x0, +x1, ...); sums accumulate in that order.
    """
    m = 0.5 * (al + be)
    t0, g0, e0 = _wide_node(m, T, 0.5 * GL_X0)
    t1, g1, e1 = _wide_node(m, T, -0.5 * GL_X0)
    t2, g2, e2 = _wide_node(m, T, 0.5 * GL_X1)
    t3, g3, e3 = _wide_node(m, T, -0.5 * GL_X1)
    t4, g4, e4 = _wide_node(m, T, 0.5 * GL_X2)
    t5, g5, e5 = _wide_node(m, T, -0.5 * GL_X2)
    t6, g6, e6 = _wide_node(m, T, 0.5 * GL_X3)
    t7, g7, e7 = _wide_node(m, T, -0.5 * GL_X3)
    w0: tl.constexpr = 0.5 * GL_W0
    w1: tl.constexpr = 0.5 * GL_W1
    w2: tl.constexpr = 0.5 * GL_W2
    w3: tl.constexpr = 0.5 * GL_W3
    ee = e0 * w0 + e1 * w0 + e2 * w1 + e3 * w1 + e4 * w2 + e5 * w2 + e6 * w3 + e7 * w3   # E_U[e^g] - 1
    eg = (g0 * w0 * (1.0 + e0) + g1 * w0 * (1.0 + e1) + g2 * w1 * (1.0 + e2) + g3 * w1 * (1.0 + e3)
          + g4 * w2 * (1.0 + e4) + g5 * w2 * (1.0 + e5) + g6 * w3 * (1.0 + e6) + g7 * w3 * (1.0 + e7))
    kl = eg / (1.0 + ee) - log1p(ee)
    z = 1.0 + ee
    p0 = (1.0 + e0) * w0 / z
    p1 = (1.0 + e1) * w0 / z
    p2 = (1.0 + e2) * w1 / z
    p3 = (1.0 + e3) * w1 / z
    p4 = (1.0 + e4) * w2 / z
    p5 = (1.0 + e5) * w2 / z
    p6 = (1.0 + e6) * w3 / z
    p7 = (1.0 + e7) * w3 / z
    m2x = 2.0 * m
    h0 = t0 * (m2x + t0)
    h1 = t1 * (m2x + t1)
    h2 = t2 * (m2x + t2)
    h3 = t3 * (m2x + t3)
    h4 = t4 * (m2x + t4)
    h5 = t5 * (m2x + t5)
    h6 = t6 * (m2x + t6)
    h7 = t7 * (m2x + t7)
    m1 = p0 * t0 + p1 * t1 + p2 * t2 + p3 * t3 + p4 * t4 + p5 * t5 + p6 * t6 + p7 * t7
    m2 = p0 * h0 + p1 * h1 + p2 * h2 + p3 * h3 + p4 * h4 + p5 * h5 + p6 * h6 + p7 * h7
    c0, v0 = _wide_moments(p0, t0, h0, m1, m2)
    c1, v1 = _wide_moments(p1, t1, h1, m1, m2)
    c2, v2 = _wide_moments(p2, t2, h2, m1, m2)
    c3, v3 = _wide_moments(p3, t3, h3, m1, m2)
    c4, v4 = _wide_moments(p4, t4, h4, m1, m2)
    c5, v5 = _wide_moments(p5, t5, h5, m1, m2)
    c6, v6 = _wide_moments(p6, t6, h6, m1, m2)
    c7, v7 = _wide_moments(p7, t7, h7, m1, m2)
    cov = c0 + c1 + c2 + c3 + c4 + c5 + c6 + c7
    var2 = v0 + v1 + v2 + v3 + v4 + v5 + v6 + v7
    return kl, -cov / (2.0 * sigma), -0.5 * var2


@triton.jit
def _is_wide(tail, al, be, T):
    return ~tail & (T < WIDE_T) & (tl.abs(al + be) * T < 2.0 * WIDE_T)


@triton.jit
def _store(ptr, offs, val, m):
    """Store float64 ``val`` in the pointer's dtype, narrowing through float32 as torch's ``.to`` does.

    bfloat16 is rounded to nearest-even by hand on the float32 bits: the interpreter's float32 -> bfloat16
    cast truncates (and its float64 -> bfloat16 cast is wrong), while the hardware one rounds."""
    if ptr.dtype.element_ty == tl.float64:
        tl.store(ptr + offs, val, mask=m)
    elif ptr.dtype.element_ty == tl.bfloat16:
        v32 = val.to(tl.float32)
        bits = v32.to(tl.uint32, bitcast=True)
        bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000
        v32 = tl.where(v32 != v32, v32, bits.to(tl.float32, bitcast=True))   # keep NaN a NaN
        tl.store(ptr + offs, v32.to(tl.bfloat16), mask=m)
    else:
        tl.store(ptr + offs, val.to(tl.float32).to(ptr.dtype.element_ty), mask=m)


@triton.jit
def _load_units(mu_ptr, log_sigma_ptr, offs, m, a, b):
    mu = tl.load(mu_ptr + offs, mask=m, other=-10.0).to(tl.float64)
    sigma = tl.exp(tl.load(log_sigma_ptr + offs, mask=m, other=0.0).to(tl.float64))
    return mu, sigma, (a - mu) / sigma, (b - mu) / sigma, (b - a) / sigma


@triton.jit
def _tail_common(s0, T, c_s, h_s, c_t, h_t, log_rho, one_m_rho):
    """Shared pieces of the tail KL and its gradient: (s, t, x2, ρ, Q(s), Q(t), ΔQ)."""
    s = _clamp_tail(s0)
    t = s + T
    x2 = T * (s + t)
    rho = tl.exp(log_rho)
    q_s = 2.0 * c_s * h_s
    q_t = 2.0 * c_t * h_t
    return s, t, x2, rho, q_s, q_t, q_s - rho * q_t


# ------------------------------------------------------------------------------------------------------
# kernels
# ------------------------------------------------------------------------------------------------------

@triton.jit
def _gate_stats_fwd_kernel(mu_ptr, log_sigma_ptr, kl_ptr, mean_ptr, snr_ptr, n,
                           a: tl.float64, b: tl.float64, log_bma: tl.float64, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    mu, sigma, al, be, T = _load_units(mu_ptr, log_sigma_ptr, offs, m, a, b)
    tail, flip, s0, L, c_s, h_s, c_t, h_t, g_s, g_t, nu, log_rho, one_m_rho = _log_z_parts(al, be, T)
    # KL, interior: METHODS §0.2
    pa = tl.exp(-0.5 * al * al - HALF_LOG_2PI - L)
    pb = tl.exp(-0.5 * be * be - HALF_LOG_2PI - L)
    nz = al * pa - be * pb
    kl_i = log_bma - tl.log(sigma) - L - HALF_LOG_2PIE - 0.5 * nz
    # KL, wide window (q close to uniform): centred quadrature
    kl_w, dmu_w, dls_w = _kl_wide(al, be, T, sigma)
    kl_i = tl.where(_is_wide(tail, al, be, T), kl_w, kl_i)
    # KL, tail: continued-fraction form
    s, t, x2, rho, q_s, q_t, dq = _tail_common(s0, T, c_s, h_s, c_t, h_t, log_rho, one_m_rho)
    g = (dq + rho * x2) / one_m_rho
    kl_t = log_bma - tl.log(sigma) - 1.0 - L + 0.5 * g
    kl = tl.where(tail, kl_t, kl_i)
    # E[θ] and SNR from the anchored log-moments
    lm1 = _log_moment(mu, sigma, a, b, al, be, T, tail, flip, L, 1)
    lm2 = _log_moment(mu, sigma, a, b, al, be, T, tail, flip, L, 2)
    d2 = _delta2(sigma, al, be, T, s0, lm1, lm2)
    snr = 1.0 / tl.sqrt(expm1(tl.where(d2 < 0.0, 0.0, d2)))
    _store(kl_ptr, offs, kl, m)
    _store(mean_ptr, offs, tl.exp(lm1), m)
    _store(snr_ptr, offs, snr, m)


@triton.jit
def _gate_stats_bwd_kernel(grad_ptr, mu_ptr, log_sigma_ptr, dmu_ptr, dls_ptr, n,
                           a: tl.float64, b: tl.float64, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    grad = tl.load(grad_ptr + offs, mask=m, other=0.0).to(tl.float64)
    mu, sigma, al, be, T = _load_units(mu_ptr, log_sigma_ptr, offs, m, a, b)
    tail, flip, s0, L, c_s, h_s, c_t, h_t, g_s, g_t, nu, log_rho, one_m_rho = _log_z_parts(al, be, T)
    # interior: METHODS §0.4 divided through by Z
    pa = tl.exp(-0.5 * al * al - HALF_LOG_2PI - L)
    pb = tl.exp(-0.5 * be * be - HALF_LOG_2PI - L)
    nz = al * pa - be * pb
    dz_mu = (pa - pb) / sigma
    dn_mu = (pb * (1.0 - be * be) - pa * (1.0 - al * al)) / sigma
    dmu_i = -dz_mu - 0.5 * (dn_mu - nz * dz_mu)
    dn_ls = be * pb * (1.0 - be * be) - al * pa * (1.0 - al * al)
    dls_i = -1.0 - nz - 0.5 * (dn_ls - nz * nz)
    # wide window (q close to uniform): centred quadrature
    kl_w, dmu_w, dls_w = _kl_wide(al, be, T, sigma)
    wide = _is_wide(tail, al, be, T)
    dmu_i = tl.where(wide, dmu_w, dmu_i)
    dls_i = tl.where(wide, dls_w, dls_i)
    # tail: continued-fraction forms
    s, t, x2, rho, q_s, q_t, dq = _tail_common(s0, T, c_s, h_s, c_t, h_t, log_rho, one_m_rho)
    e = tl.exp(-0.5 * x2)
    amp = g_s / one_m_rho
    h_mu = ((1.0 - e) * dq - e * (nu / g_t) * x2) / one_m_rho
    h_sig = ((s - t * e) * dq - e * x2 * (x2 + q_s - q_t) / g_t) / one_m_rho
    dmu_t = tl.where(flip, amp, -amp) * h_mu / (2.0 * sigma)
    dls_t = -1.0 - 0.5 * amp * h_sig
    dmu = grad * tl.where(tail, dmu_t, dmu_i)
    dls = grad * tl.where(tail, dls_t, dls_i)
    _store(dmu_ptr, offs, dmu, m)
    _store(dls_ptr, offs, dls, m)


# ------------------------------------------------------------------------------------------------------
# launchers
# ------------------------------------------------------------------------------------------------------

def _interpreted(kernel) -> bool:
    return type(kernel).__name__ == "InterpretedFunction"


def _check_bounds(a, b):
    for name, v in (("a", a), ("b", b)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite real number, got {v!r}")
    if not a < b:
        raise ValueError(f"a must be < b, got a={a!r}, b={b!r}")
    return float(a), float(b)


def _check_units(kernel, **tensors):
    """1-D float tensors of one length on one device the kernel can run on; returns them contiguous."""
    first_name, first = next(iter(tensors.items()))
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.dtype.is_floating_point:
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if t.dim() != 1:
            raise ValueError(f"{name} must be 1-D (one value per unit), got shape {tuple(t.shape)}")
        if t.shape != first.shape:
            raise ValueError(f"{name} has {t.numel()} units but {first_name} has {first.numel()}")
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}")
    if first.device.type != "cuda" and not (first.device.type == "cpu" and _interpreted(kernel)):
        raise ValueError(f"{first_name} is on {first.device}: the Triton kernels need CUDA tensors, "
                         "or CPU tensors with TRITON_INTERPRET=1 set before kernels is imported")
    return [t.contiguous() for t in tensors.values()]


def _launch(kernel, n, device, *args):
    block = _BLOCK_INTERPRET if _interpreted(kernel) else _BLOCK_GPU
    ctx = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with ctx:
        kernel[(triton.cdiv(n, block),)](*args, BLOCK=block, num_warps=4)


@register("triton")
def gate_stats(mu: torch.Tensor, log_sigma: torch.Tensor, a: float = -20.0, b: float = 0.0):
    """(kl, mean, snr) per unit in ``mu.dtype``: KL(q‖LogU[a,b]), E[θ] and E[θ]/sd[θ], computed in float64."""
    a, b = _check_bounds(a, b)
    mu, log_sigma = _check_units(_gate_stats_fwd_kernel, mu=mu, log_sigma=log_sigma)
    kl, mean, snr = (torch.empty_like(mu) for _ in range(3))
    n = mu.numel()
    if n:
        _launch(_gate_stats_fwd_kernel, n, mu.device, mu, log_sigma, kl, mean, snr, n, a, b, math.log(b - a))
    return kl, mean, snr


@register("triton")
def gate_stats_backward(grad_kl: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor,
                        a: float = -20.0, b: float = 0.0):
    """(∂L/∂μ, ∂L/∂log σ) from ∂L/∂KL, in the dtypes of ``mu`` and ``log_sigma`` (computed in float64)."""
    a, b = _check_bounds(a, b)
    grad_kl, mu, log_sigma = _check_units(_gate_stats_bwd_kernel, grad_kl=grad_kl, mu=mu, log_sigma=log_sigma)
    dmu = torch.empty_like(mu)
    dls = torch.empty_like(log_sigma)
    n = mu.numel()
    if n:
        _launch(_gate_stats_bwd_kernel, n, mu.device, grad_kl, mu, log_sigma, dmu, dls, n, a, b)
    return dmu, dls
