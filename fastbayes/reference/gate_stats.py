"""Per-unit statistics of the truncated log-normal gate, in float64 (METHODS.md §0.2–§0.5, §2.3–§2.4).

Notation: x = log θ ~ N(μ, σ²) truncated to [a, b]; α = (a-μ)/σ, β = (b-μ)/σ, T = β - α = (b-a)/σ,
Z = Φ(β) - Φ(α).  Every function takes tensors μ, σ (any float dtype) and works in float64 with plain
vectorised torch ops; the C++ and Triton kernels port it line by line.

Canonical orientation.  Z, the KL and the variance are symmetric under the reflection (α, β) -> (-β, -α),
so each window [lo, hi] is read from the end where the normal's mass sits:
    flip = lo + hi < 0;  s = flip ? -hi : lo  ("near end"),  t = s + T.
The window's anchor endpoint in x-space is c = flip ? b : a.

Regime T (tail: s > TAIL_S = 5, i.e. μ lies more than 5σ outside the anchor end).  Here
    Z = φ(s)·D(s, t),    D = R(s) - R(t)·exp(-T(s+t)/2) = R(s)·(1 - ρ)
with the Mills ratio R(x) = Φ(-x)/φ(x) = 1/g(x), g(x) = x + C1(x), and C1(x) = 1/R(x) - x from the Laplace
continued fraction  C1 = h1,  h_k = 1/(x + (k+1)·h_{k+1})  (CF_TERMS = 32 levels, exact to 1 ulp at x >= 5;
computed directly, never as 1/R - x).  With Q(x) = 1 - x·C1(x) = 2·h1·h2 and ν = T + C1(t) - C1(s):
    log ρ = -T(s + T/2) - log1p(ν/g(s)),           log D = log(-expm1(log ρ)) - log g(s)
    KL    = log(b-a) - log σ - 1 - log D + G/2,    G = [Q(s) - ρQ(t) + ρT(s+t)] / (1-ρ)
    ∂KL/∂μ     = -sg·A·H_μ/(2σ)        (sg = +1, or -1 when flipped; A = g(s)/(1-ρ) = φ(s)/Z)
    ∂KL/∂log σ = -1 - A·H_σ/2
    H_μ = [(1-E)(Q(s) - ρQ(t)) - E·(ν/g(t))·T(s+t)] / (1-ρ),      E = exp(-T(s+t)/2)
    H_σ = [(s - tE)(Q(s) - ρQ(t)) - E·T(s+t)·(T(s+t) + Q(s) - Q(t))/g(t)] / (1-ρ)
These replace the direct forms whose terms (α²/2 vs α·φ(α)/2Z, α³φ(α)/Z, ...) cancel catastrophically.
Regime I (interior, s <= 5): the direct forms of METHODS §0.2/§0.4 with log Z = log_diff_ndtr(lo, hi)
(they lose at most ~s⁴ ulp at the switch).
Regime W (wide, inside I: T < 1 and |α+β|·T < 2, i.e. σ ≫ b - a): q is nearly uniform on the window, KL is
~m²T²/24 + T⁴/1440 and the direct forms would leave it with ~1e-16/KL relative error.  With ε = m + τ, m = (α+β)/2,
τ ∈ [±T/2] and g(τ) = -(mτ + (τ² - T²/12)/2) (centred under the uniform), an 8-point Gauss–Legendre rule
in τ gives  KL = E_U[g e^g]/(1 + E_U[e^g - 1]) - log1p(E_U[e^g - 1])  and, under q,
∂KL/∂μ = -Cov(ε, ε²)/(2σ),  ∂KL/∂log σ = -Var(ε²)/2  (two-pass central moments of τ and τ(2m+τ)).
``log_z_parts`` returns L = log D (tail) or log Z (interior),
so log Z = L - [tail]·(s²/2 + ½log 2π); differences of log Z's combine the s²/2 anchors analytically:
    same anchor c for both windows:  -(s1² - s0²)/2 = -(c1 - c0)(c1 + c0 - 2μ)/(2σ²).

Moments.  log E[θ^k] = kμ + k²σ²/2 + log Z(α-kσ, β-kσ) - log Z(α, β) with the anchors folded in:
    both windows tail at a: k·a + L1 - L0;   both at b: k·b + L1 - L0;   Z tail at a, Z_k tail at b:
    k·b - T(α+β)/2 + L1 - L0;   only Z tail (at a): k·a + (α-kσ)²/2 + ½log 2π + L1 - L0;
    only Z_k tail (at b): k·b - β²/2 - ½log 2π + L1 - L0;   neither: kμ + k²σ²/2 + L1 - L0.
SNR.  Δ² = log E[θ²] - 2 log E[θ] = log(1 + 1/SNR²).  When σ < QUAD_SIGMA·max(1, s) the difference above
would cancel (Δ² ~ σ²·Var ε), so Δ² is taken from its exact integral form
    Δ² = K(2σ) - 2K(σ) = σ² ∫_{-1}^{1} (1-|ξ|)·v(σ(1+ξ)) dξ,   v(w) = Var of N(0,1) on [α-w, β-w]
(K = cumulant generating function of ε, K'' = v), by a 4-point Gauss rule per half (weight 1-ξ).
v itself: interior 1 + lo·A - hi·B - (A-B)²; tail (y = ε - s)  v = h1(2h2 - h1) + Δ(C1(s) - Δ) -
g(s)·E·[T² + (C1(s)-C1(t))(g(s) - T)] / ((1-ρ)·g(t)),  Δ = ρν/(1-ρ).
Otherwise Δ² = log E[θ²] - 2 log E[θ] directly.  1/SNR² = expm1(Δ²).

Measured against mpmath (100 digits) for μ ∈ [-60, 30], σ ∈ [1e-6, 1e3], bounds (-20, 0), (-15.9, -5.5),
(-1, 0), (-20, -19.5), (-3, 5): KL ≲ 1e-11 relative (≲ 1e-15 absolute), log E[θ] ≲ 2e-13 absolute,
Δ² ≲ 3e-11 relative, ∂KL/∂μ and ∂KL/∂log σ ≲ 3e-12 relative, ΔF_N and ΔF_U ≲ 3e-13·max(1, |ΔF|).
Known limit: windows that are both far in a tail (s > 5) and very narrow (T·s < ~1e-2, i.e. b - a below
~σ²/(100·|c - μ|)) lose digits in the gradients; with b - a >= 1 this needs σ > 100, where s > 5 puts μ
thousands outside [a, b].
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .special import HALF_LOG_2PI, log_diff_ndtr
from ..backends import register

HALF_LOG_2PIE = 0.5 * math.log(2.0 * math.pi * math.e)
LOG_SIGMA_MIN, LOG_SIGMA_MAX = -20.0, 5.0   # the forward clamp of both official codes

TAIL_S = 5.0          # near-end distance (in σ) beyond which the tail forms are used
CF_TERMS = 32         # continued-fraction depth: exact to 1 ulp for x >= TAIL_S
QUAD_SIGMA = 0.1      # Δ² by quadrature when σ < QUAD_SIGMA·max(1, s)
# 4-point Gauss rule for ∫_0^1 (1-ξ) f(ξ) dξ (Gauss–Jacobi α=1, β=0 mapped to [0, 1]); weights sum to 1/2
GJ_NODES = (0.057104196114517725, 0.2768430136381238, 0.5835904323689168, 0.8602401356562195)
GJ_WEIGHTS = (0.13550691343148852, 0.2034645680102711, 0.12984754760823233, 0.031180970950008085)
WIDE_T = 1.0          # KL by quadrature when the window is narrow in σ units: T < 1 and |α+β|·T < 2
# 8-point Gauss–Legendre on [-1, 1], positive half (nodes ±x, weights sum to 1 per half)
GL_NODES = (0.18343464249564978, 0.525532409916329, 0.7966664774136267, 0.9602898564975362)
GL_WEIGHTS = (0.36268378337836166, 0.3137066458778869, 0.22238103445337443, 0.10122853629037706)


def _f64(t) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        return t.to(torch.float64)
    return torch.as_tensor(t, dtype=torch.float64)   # a Python float must not pass through float32


def mills_cf(x: torch.Tensor):
    """(C1(x), h2(x)) for x >= TAIL_S (smaller x is clamped): C1 = 1/R(x) - x, h2 its next CF level."""
    x = torch.clamp(x, min=TAIL_S)
    h = torch.zeros_like(x)
    for k in range(CF_TERMS, 1, -1):
        h = 1.0 / (x + (k + 1) * h)
    return 1.0 / (x + 2.0 * h), h


class TailPieces(NamedTuple):
    c_s: torch.Tensor        # C1(s)
    h_s: torch.Tensor        # h2(s)
    c_t: torch.Tensor
    h_t: torch.Tensor
    g_s: torch.Tensor        # s + C1(s) = 1/R(s)
    g_t: torch.Tensor
    nu: torch.Tensor         # T + C1(t) - C1(s) = g(t) - g(s)
    log_rho: torch.Tensor    # log[R(t)φ(t) / (R(s)φ(s))] = log[Φ(-t)/Φ(-s)]
    one_m_rho: torch.Tensor
    log_d: torch.Tensor      # log D = log Z - log φ(s)


def tail_pieces(s: torch.Tensor, T: torch.Tensor) -> TailPieces:
    """Continued-fraction pieces of the window [s, s+T], s >= TAIL_S (smaller s is clamped)."""
    s = torch.clamp(s, min=TAIL_S)
    t = s + T
    c_s, h_s = mills_cf(s)
    c_t, h_t = mills_cf(t)
    g_s, g_t = s + c_s, t + c_t
    nu = T + (c_t - c_s)
    log_rho = -T * (s + 0.5 * T) - torch.log1p(nu / g_s)
    one_m_rho = -torch.expm1(log_rho)
    log_d = torch.log(one_m_rho) - torch.log(g_s)
    return TailPieces(c_s, h_s, c_t, h_t, g_s, g_t, nu, log_rho, one_m_rho, log_d)


def _no_tail(s: torch.Tensor, T: torch.Tensor) -> TailPieces:
    # placeholder pieces of a window batch without tail lanes (values never selected); saves the CF loops
    s = torch.clamp(s, min=TAIL_S) + 0.0 * T
    one = torch.ones_like(s)
    return TailPieces(*([one] * 7), -one, one - torch.exp(-one), -one)


class LogZ(NamedTuple):
    tail: torch.Tensor   # bool: regime T
    flip: torch.Tensor   # bool: near end is hi (anchor b)
    s: torch.Tensor      # canonical near end
    L: torch.Tensor      # log D (tail) or log Z (interior)
    p: TailPieces


def log_z_parts(lo: torch.Tensor, hi: torch.Tensor, T: torch.Tensor) -> LogZ:
    """log(Φ(hi) - Φ(lo)) split as L - [tail]·(s²/2 + ½log 2π); T = hi - lo passed exactly."""
    flip = (lo + hi) < 0
    s = torch.where(flip, -hi, lo)
    tail = s > TAIL_S
    p = tail_pieces(s, T) if bool(tail.any()) else _no_tail(s, T)
    L = torch.where(tail, p.log_d, log_diff_ndtr(lo, hi))
    return LogZ(tail, flip, s, L, p)


def log_z_value(z: LogZ) -> torch.Tensor:
    """log Z itself (no cancellation-free guarantee beyond its own absolute accuracy ~ ulp(s²))."""
    return torch.where(z.tail, z.L - 0.5 * z.s * z.s - HALF_LOG_2PI, z.L)


def log_z_diff(z1: LogZ, c1, z0: LogZ, c0, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """log Z1 - log Z0 for two windows of the same N(μ, σ²); c1, c0 are the x-space anchors (a/b ends)."""
    same = z1.tail & z0.tail & (z1.flip == z0.flip)
    both = -(c1 - c0) * (c1 + c0 - 2.0 * mu) / (2.0 * sigma * sigma)
    sep = log_z_value(z1) - log_z_value(z0)
    return torch.where(same, both + z1.L - z0.L, sep)


def tn_var(lo: torch.Tensor, hi: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """Variance of N(0, 1) truncated to [lo, hi] (T = hi - lo), relative accuracy in every regime."""
    z = log_z_parts(lo, hi, T)
    p = z.p
    # interior: 1 + lo·A - hi·B - (A - B)², A = φ(lo)/Z, B = φ(hi)/Z
    ga = torch.exp(-0.5 * lo * lo - HALF_LOG_2PI - z.L)
    gb = torch.exp(-0.5 * hi * hi - HALF_LOG_2PI - z.L)
    v_int = 1.0 + lo * ga - hi * gb - (ga - gb) ** 2
    # tail: variance of y = ε - s on [0, T] with density ∝ exp(-s·y - y²/2)
    rho = torch.exp(p.log_rho)
    e = torch.exp(-T * (torch.clamp(z.s, min=TAIL_S) + 0.5 * T))
    dlt = rho * p.nu / p.one_m_rho
    v1 = p.c_s * (2.0 * p.h_s - p.c_s)
    third = p.g_s * e * (T * T + (p.c_s - p.c_t) * (p.g_s - T)) / (p.one_m_rho * p.g_t)
    v_tail = v1 + dlt * (p.c_s - dlt) - third
    return torch.where(z.tail, v_tail, v_int)


def _ends(flip: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """The anchor endpoint c = flip ? hi : lo as float64 (no float32 round trip of the bounds)."""
    kw = dict(dtype=torch.float64, device=flip.device)
    return torch.where(flip, torch.tensor(float(hi), **kw), torch.tensor(float(lo), **kw))


def _window(mu, sigma, a, b):
    mu, sigma = _f64(mu), _f64(sigma)
    al, be = (a - mu) / sigma, (b - mu) / sigma
    T = (b - a) / sigma
    return mu, sigma, al, be, T


def _log_moment(mu, sigma, a, b, al, be, T, z0: LogZ, k: int) -> torch.Tensor:
    """log E[θ^k] with the anchors of both windows folded in analytically (see module docstring)."""
    z1 = log_z_parts(al - k * sigma, be - k * sigma, T)
    lo0 = z0.tail & ~z0.flip
    up1 = z1.tail & z1.flip
    pre = k * mu + 0.5 * k * k * sigma * sigma
    pre = torch.where(~z0.tail & up1, k * b - 0.5 * be * be - HALF_LOG_2PI, pre)
    pre = torch.where(lo0 & ~z1.tail, k * a + 0.5 * (al - k * sigma) ** 2 + HALF_LOG_2PI, pre)
    pre = torch.where(lo0 & up1, k * b - 0.5 * T * (al + be), pre)
    pre = torch.where(z0.tail & z0.flip, torch.full_like(pre, k * b), pre)
    pre = torch.where(lo0 & z1.tail & ~z1.flip, torch.full_like(pre, k * a), pre)
    return pre + z1.L - z0.L


def _delta2(sigma, al, be, T, z0: LogZ, lm1, lm2) -> torch.Tensor:
    """Δ² = log E[θ²] - 2 log E[θ] = log(1 + 1/SNR²)."""
    direct = lm2 - 2.0 * lm1
    quad = sigma < QUAD_SIGMA * torch.clamp(z0.s, min=1.0)
    if not bool(quad.any()):
        return direct
    sq = torch.where(quad, sigma, torch.zeros_like(sigma))
    xs = torch.tensor(GJ_NODES, dtype=torch.float64, device=sigma.device)
    ws = torch.tensor(GJ_WEIGHTS, dtype=torch.float64, device=sigma.device)
    shifts = torch.cat([1.0 - xs, 1.0 + xs]).reshape((-1,) + (1,) * sigma.dim())   # 8 nodes on a new dim 0
    w = sq * shifts
    v = tn_var(al - w, be - w, T.expand_as(w) if T.dim() else T)
    acc = (torch.cat([ws, ws]).reshape(shifts.shape) * v).sum(0)
    return torch.where(quad, sq * sq * acc, direct)


def moments_log(mu: torch.Tensor, sigma: torch.Tensor, a: float, b: float):
    """(log Z, log E[θ], log E[θ²]) in float64.

    log E[θ] is accurate to ~1e-15 absolute everywhere; log Z is only as accurate as its size allows
    (~ulp(α²/2) in a far tail) -- form differences with ``log_z_diff``, and the second difference
    log E[θ²] - 2 log E[θ] with ``inv_snr2`` / ``log1p_inv_snr2``, never from these three numbers.
    """
    mu, sigma, al, be, T = _window(mu, sigma, a, b)
    z0 = log_z_parts(al, be, T)
    lm1 = _log_moment(mu, sigma, a, b, al, be, T, z0, 1)
    lm2 = _log_moment(mu, sigma, a, b, al, be, T, z0, 2)
    return log_z_value(z0), lm1, lm2


def log1p_inv_snr2(mu: torch.Tensor, sigma: torch.Tensor, a: float, b: float):
    """(log E[θ], Δ²) with Δ² = log(1 + Var[θ]/E[θ]²), both float64 and cancellation-free."""
    mu, sigma, al, be, T = _window(mu, sigma, a, b)
    z0 = log_z_parts(al, be, T)
    lm1 = _log_moment(mu, sigma, a, b, al, be, T, z0, 1)
    lm2 = _log_moment(mu, sigma, a, b, al, be, T, z0, 2)
    return lm1, _delta2(sigma, al, be, T, z0, lm1, lm2)


def inv_snr2(mu: torch.Tensor, sigma: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """1/SNR² = Var[θ]/E[θ]² (float64)."""
    return torch.expm1(log1p_inv_snr2(mu, sigma, a, b)[1])


def x_mean_var(mu: torch.Tensor, sigma: torch.Tensor, a: float, b: float):
    """(anchor, offset, var) of x = log θ: E[x] = anchor + offset (anchor = a/b in a tail, μ inside)."""
    mu, sigma, al, be, T = _window(mu, sigma, a, b)
    z = log_z_parts(al, be, T)
    p = z.p
    ga = torch.exp(-0.5 * al * al - HALF_LOG_2PI - z.L)
    gb = torch.exp(-0.5 * be * be - HALF_LOG_2PI - z.L)
    rho = torch.exp(p.log_rho)
    ey = (p.c_s - rho * p.nu / p.one_m_rho)          # E[y], y = ε - s >= 0 in the canonical window
    sgn = torch.where(z.flip, -1.0, 1.0).to(mu)
    anchor = torch.where(z.tail, _ends(z.flip, a, b), mu)
    offset = torch.where(z.tail, sgn * sigma * ey, sigma * (ga - gb))
    return anchor, offset, sigma * sigma * tn_var(al, be, T)


class KLParts(NamedTuple):
    kl: torch.Tensor
    al: torch.Tensor
    be: torch.Tensor
    pa: torch.Tensor
    pb: torch.Tensor
    n_over_z: torch.Tensor
    dkl_mu: torch.Tensor
    dkl_ls: torch.Tensor


def _kl_wide(al, be, T, sigma):
    """KL to the uniform window, ∂KL/∂μ = -Cov(ε, ε²)/(2σ), ∂KL/∂log σ = -Var(ε²)/2, for T small.

    ε = m + τ with m the window centre and τ ~ ∝ exp(g(τ)) on [-T/2, T/2], g centred under the uniform
    so that every sum is O(KL) instead of O(log σ) (the direct forms lose ~1e-16/KL relative here).
    """
    m = 0.5 * (al + be)
    taus, ws = [], []
    for xj, wj in zip(GL_NODES, GL_WEIGHTS):
        for sgn in (1.0, -1.0):
            taus.append(sgn * xj * 0.5 * T)
            ws.append(0.5 * wj)
    gl = [-(m * tau + 0.5 * (tau * tau - T * T / 12.0)) for tau in taus]
    es = [torch.expm1(g) for g in gl]
    ee = sum(w * e for w, e in zip(ws, es))                   # E_U[e^g] - 1
    eg = sum(w * g * (1.0 + e) for w, g, e in zip(ws, gl, es))  # E_U[g e^g]
    kl = eg / (1.0 + ee) - torch.log1p(ee)
    ps = [w * (1.0 + e) / (1.0 + ee) for w, e in zip(ws, es)]
    h2 = [tau * (2.0 * m + tau) for tau in taus]               # ε² - m²
    m1 = sum(p * tau for p, tau in zip(ps, taus))
    m2 = sum(p * h for p, h in zip(ps, h2))
    cov = sum(p * (tau - m1) * (h - m2) for p, tau, h in zip(ps, taus, h2))
    var2 = sum(p * (h - m2) ** 2 for p, h in zip(ps, h2))
    return kl, -cov / (2.0 * sigma), -0.5 * var2


def _kl_parts(mu, sigma, a: float, b: float) -> KLParts:
    mu, sigma, al, be, T = _window(mu, sigma, a, b)
    z = log_z_parts(al, be, T)
    p = z.p
    log_bma = math.log(b - a)
    # interior: METHODS §0.2 / §0.4 direct forms
    pa_i = torch.exp(-0.5 * al * al - HALF_LOG_2PI - z.L)
    pb_i = torch.exp(-0.5 * be * be - HALF_LOG_2PI - z.L)
    nz_i = al * pa_i - be * pb_i
    kl_i = log_bma - torch.log(sigma) - z.L - HALF_LOG_2PIE - 0.5 * nz_i
    dz_mu = (pa_i - pb_i) / sigma                                   # (∂Z/∂μ)/Z
    dn_mu = (pb_i * (1 - be * be) - pa_i * (1 - al * al)) / sigma    # (∂N/∂μ)/Z
    dmu_i = -dz_mu - 0.5 * (dn_mu - nz_i * dz_mu)
    dn_ls = be * pb_i * (1 - be * be) - al * pa_i * (1 - al * al)   # σ(∂N/∂σ)/Z
    dls_i = -1.0 - nz_i - 0.5 * (dn_ls - nz_i * nz_i)
    # tail: continued-fraction forms (module docstring)
    s = torch.clamp(z.s, min=TAIL_S)
    t = s + T
    x2 = T * (s + t)                                  # t² - s²
    e = torch.exp(-0.5 * x2)
    rho = torch.exp(p.log_rho)
    q_s, q_t = 2.0 * p.c_s * p.h_s, 2.0 * p.c_t * p.h_t
    dq = q_s - rho * q_t
    g = (dq + rho * x2) / p.one_m_rho
    kl_t = log_bma - torch.log(sigma) - 1.0 - p.log_d + 0.5 * g
    amp = p.g_s / p.one_m_rho                          # φ(s)/Z
    h_mu = ((1.0 - e) * dq - e * (p.nu / p.g_t) * x2) / p.one_m_rho
    h_sig = ((s - t * e) * dq - e * x2 * (x2 + q_s - q_t) / p.g_t) / p.one_m_rho
    sgn = torch.where(z.flip, -1.0, 1.0).to(mu)
    dmu_t = -sgn * amp * h_mu / (2.0 * sigma)
    dls_t = -1.0 - 0.5 * amp * h_sig
    # wide: q is close to uniform on the window; KL and its gradients as centred quadrature sums
    kl_w, dmu_w, dls_w = _kl_wide(al, be, T, sigma)
    w = ~z.tail & (T < WIDE_T) & ((al + be).abs() * T < 2.0 * WIDE_T)
    kl_i, dmu_i, dls_i = torch.where(w, kl_w, kl_i), torch.where(w, dmu_w, dmu_i), torch.where(w, dls_w, dls_i)
    near, far = amp, amp * e
    pa_t = torch.where(z.flip, far, near)
    pb_t = torch.where(z.flip, near, far)
    nz_t = 1.0 + s * s - g
    w = z.tail
    return KLParts(torch.where(w, kl_t, kl_i), al, be, torch.where(w, pa_t, pa_i), torch.where(w, pb_t, pb_i),
                   torch.where(w, nz_t, nz_i), torch.where(w, dmu_t, dmu_i), torch.where(w, dls_t, dls_i))


def kl_terms(mu: torch.Tensor, sigma: torch.Tensor, a: float, b: float):
    """KL(q || LogU[a,b]) and (α, β, φ(α)/Z, φ(β)/Z, (αφ(α) - βφ(β))/Z), all float64."""
    r = _kl_parts(mu, sigma, a, b)
    return r.kl, r.al, r.be, r.pa, r.pb, r.n_over_z


@register("reference")
def gate_stats(mu: torch.Tensor, log_sigma: torch.Tensor, a: float = -20.0, b: float = 0.0):
    """(kl, mean, snr) per unit, computed in float64 and returned in ``mu.dtype``."""
    sigma = torch.exp(_f64(log_sigma))
    kl = _kl_parts(mu, sigma, a, b).kl
    lm1, d2 = log1p_inv_snr2(mu, sigma, a, b)
    snr = torch.rsqrt(torch.expm1(torch.clamp(d2, min=0.0)))
    dt = mu.dtype
    return kl.to(dt), torch.exp(lm1).to(dt), snr.to(dt)


@register("reference")
def gate_stats_backward(grad_kl: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor,
                        a: float = -20.0, b: float = 0.0):
    """(∂L/∂μ, ∂L/∂log σ) from ∂L/∂KL: METHODS §0.4 inside, the continued-fraction forms in a tail."""
    sigma = torch.exp(_f64(log_sigma))
    r = _kl_parts(mu, sigma, a, b)
    g = _f64(grad_kl)
    return (g * r.dkl_mu).to(mu.dtype), (g * r.dkl_ls).to(log_sigma.dtype)


def delta_f_n(mu: torch.Tensor, sigma: torch.Tensor, a: float, b: float, reduced_loc, reduced_scale,
              code_offset: bool = False) -> torch.Tensor:
    """ΔF for a TruncatedLogNormal(reduced_loc, reduced_scale) reduced prior (BMRS_N, METHODS.md §2.3).

    ΔF = log(b-a) - log Z̃p - log Zq + log Z̃q - (μ-μp)²/(2τ) - ½log(2πτ),  τ = σ² + σp²,
    with every log Z split at its anchor c (``log_z_parts``) and the quadratics combined exactly through
    the product identity at x = c:  (c-μ)²/σ² + (c-μp)²/σp² = (μ-μp)²/τ + (c-μ̃q)²/σ̃q².
    ``code_offset`` adds the +½·log 2π that the released BMRS code carries (it drops the 2π in the log).
    """
    mu, sigma = _f64(mu), _f64(sigma)
    mp = _f64(reduced_loc).to(mu.device)
    sp = _f64(reduced_scale).to(mu.device)
    sp2, s2 = sp * sp, sigma * sigma
    tot = s2 + sp2
    sq = sigma * sp / torch.sqrt(tot)
    # posterior q, reduced posterior q̃ (μ̃q = (μσp² + μpσ²)/τ, σ̃q = σσp/√τ) and reduced prior p̃
    zq = log_z_parts((a - mu) / sigma, (b - mu) / sigma, (b - a) / sigma)
    zr = log_z_parts(((a - mu) * sp2 + (a - mp) * s2) / (tot * sq), ((b - mu) * sp2 + (b - mp) * s2) / (tot * sq),
                     (b - a) / sq)
    zp = log_z_parts((a - mp) / sp, (b - mp) / sp, (b - a) / sp)
    cq, cr, cp = _ends(zq.flip, a, b), _ends(zr.flip, a, b), _ends(zp.flip, a, b)
    # tail r: -(μ-μp)²/(2τ) - s_r²/2 = -(c_r-μ)²/(2σ²) - (c_r-μp)²/(2σp²), then fold the q and p̃ anchors in
    part_q = torch.where(zq.tail, (cq - cr) * (cq + cr - 2.0 * mu), -(cr - mu) ** 2) / (2.0 * s2)
    part_p = torch.where(zp.tail, (cp - cr) * (cp + cr - 2.0 * mp), -(cr - mp) ** 2) / (2.0 * sp2)
    qq_r = part_q + part_p
    # r inside: -(μ-μp)²/(2τ) + [tail q] s_q²/2 + [tail p̃] s_p²/2
    qq_q = torch.where(zq.tail,
                       (cq - mu) ** 2 * sp2 / (2.0 * s2 * tot) - (cq - mp) * (2.0 * mu - cq - mp) / (2.0 * tot),
                       -(mu - mp) ** 2 / (2.0 * tot))
    qq_i = qq_q + torch.where(zp.tail, (cp - mp) ** 2 / (2.0 * sp2), torch.zeros_like(mu))
    qq = torch.where(zr.tail, qq_r, qq_i)
    n_tail = zq.tail.to(mu) + zp.tail.to(mu) - zr.tail.to(mu)
    df = (math.log(b - a) - 0.5 * torch.log(2.0 * math.pi * tot) + (zr.L - zq.L - zp.L)
          + HALF_LOG_2PI * n_tail + qq)
    return df + HALF_LOG_2PI if code_offset else df


def delta_f_u(mu: torch.Tensor, sigma: torch.Tensor, a: float, b: float, a2: float, b2: float) -> torch.Tensor:
    """ΔF for a LogUniform(a2, b2) reduced prior, a <= a2 < b2 <= b (BMRS_U, METHODS.md §2.4).

    ΔF_U = log q(a2 <= x <= b2) - log((b2-a2)/(b-a)); the mass is a log Z difference with the anchors folded.
    """
    mu, sigma = _f64(mu), _f64(sigma)
    z2 = log_z_parts((a2 - mu) / sigma, (b2 - mu) / sigma, (b2 - a2) / sigma)
    z0 = log_z_parts((a - mu) / sigma, (b - mu) / sigma, (b - a) / sigma)
    c2, c0 = _ends(z2.flip, a2, b2), _ends(z0.flip, a, b)
    return log_z_diff(z2, c2, z0, c0, mu, sigma) - math.log((b2 - a2) / (b - a))
