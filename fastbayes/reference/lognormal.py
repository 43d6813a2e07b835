"""Reference of the fused log-normal noise op: y = x · θ with θ ~ LogN[a,b](μ, σ²) per unit (METHODS.md §0.3, §5).

Everything a kernel must reproduce is spelled out here:

* **Counters.** View x as [N, P, C, S]: N = x.shape[0], C = x.shape[dim] (the units), P and S the dims between and
  after.  The uniform for a θ draw is ``philox_uniform(seed, offset + k)`` with
  ``k = c`` (granularity "batch"), ``k = n·C + c`` ("sample") or ``k`` = the row-major element index ("element").
* **Per-unit prologue** (float64, then cast to the math dtype): σ = exp(log σ), α = (a-μ)/σ, β = (b-μ)/σ.  The draw
  works on the side of the interval where both normal CDFs are small: mirrored (s = -1) when α + β > 0, else s = +1.
  In canonical coordinates (α', β') = (α, β) if s = 1 else (-β, -α), with v = u (or 1 - u when mirrored):
  γ' = Φ(β')·w, w = v + (1-v)·r, r = Φ(α')/Φ(β'), L = log Φ(β'), and ε = s · ndtri_log(L + log w).
  This is exactly ε = Φ⁻¹((1-u)Φ(α) + uΦ(β)), but no probability is ever formed that rounds to 0 or 1.
* **Per element** (float32 unless x is float64): x_s = clamp(μ + σ ε, a, b), θ = exp(x_s), y = x · θ · mask.
* **Backward** regenerates u.  With u held fixed (METHODS.md §0.3, the clamp treated as identity), in canonical
  coordinates (ε' = s·ε), with ra = (1-v)φ(α')/φ(ε') and rb = v·φ(β')/φ(ε'):
  ∂x_s/∂μ = 1 - ra - rb,  ∂x_s/∂σ = s·(ε' - α'·ra - β'·rb).
  The ratios are formed as exp(log v - (β'-ε')(β'+ε')/2), except in the far tail β' < -FAR_TAIL where float32 cannot
  resolve β' - ε': there φ(β')/φ(ε') = (Φ(β')/Φ(ε'))·R(-ε')/R(-β') = R(-ε')/(w·R(-β')) with the Mills ratio
  R(t) = Φ(-t)/φ(t) ≈ (1 - 1/t² + 3/t⁴)/t (relative error < 1e-6 for t >= 16), likewise for α'.
  dx = g·θ·mask;  dμ_c = Σ g·x·θ·∂x_s/∂μ;  d log σ_c = Σ g·x·θ·σ·∂x_s/∂σ  (sums over the unit's elements, masked
  units get 0).
"""
from __future__ import annotations

import math

import torch

from .philox import philox_uniform
from .special import log_ndtr, ndtri_log
from ..backends import register

GRANULARITIES = ("batch", "sample", "element")
FAR_TAIL = 16.0
W_FLOOR = 1.1754943508222875e-38   # FLT_MIN, the floor of w in every dtype and backend


def math_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def layout(shape, dim: int, granularity: str):
    """(N, P, C, S) and the shape θ takes before broadcasting against x."""
    n = shape[0]
    c = shape[dim]
    p = math.prod(shape[1:dim]) if dim > 0 else 1
    s = math.prod(shape[dim + 1:])
    if granularity == "batch":
        tshape = [1] * len(shape)
        tshape[dim] = c
    elif granularity == "sample":
        tshape = [1] * len(shape)
        tshape[0], tshape[dim] = n, c
    else:
        tshape = list(shape)
    return (n, p, c, s), tuple(tshape)


def draws(granularity: str, shape, dim: int) -> int:
    """How many Philox counters one call consumes (advance ``offset`` by this to get fresh noise)."""
    (n, p, c, s), tshape = layout(shape, dim, granularity)
    return math.prod(tshape)


def unit_params(mu: torch.Tensor, log_sigma: torch.Tensor, a: float, b: float, dtype: torch.dtype):
    """Per-unit constants of the sampler: (μ, σ, α', β', L, r, s), computed in float64, returned in ``dtype``."""
    mu64 = mu.detach().to(torch.float64)
    sigma = torch.exp(log_sigma.detach().to(torch.float64))
    al, be = (a - mu64) / sigma, (b - mu64) / sigma
    mirror = (al + be) > 0
    al_c, be_c = torch.where(mirror, -be, al), torch.where(mirror, -al, be)
    far = log_ndtr(be_c)
    r = torch.exp(log_ndtr(al_c) - far)
    s = torch.where(mirror, -1.0, 1.0).to(torch.float64)
    return tuple(t.to(dtype) for t in (mu64, sigma, al_c, be_c, far, r, s))


def _view(t: torch.Tensor, ndim: int, dim: int) -> torch.Tensor:
    shape = [1] * ndim
    shape[dim] = t.numel()
    return t.reshape(shape)


def theta(x_shape, mu, log_sigma, a, b, dim, granularity, seed, offset, dtype):
    """θ shaped for broadcasting against x, plus what the backward needs: (θ, v, w, ε', per-unit views)."""
    _, tshape = layout(x_shape, dim, granularity)
    u = philox_uniform(seed, offset, tshape, device=mu.device).to(dtype)
    m, sg, al, be, far, r, s = (_view(t, len(x_shape), dim) for t in unit_params(mu, log_sigma, a, b, dtype))
    v = torch.where(s < 0, 1.0 - u, u)
    # u = 0 (or 1 when mirrored) with r underflowed gives w = 0 and log w = -inf; the floor keeps ε' finite and
    # inside [α', β'] (it only moves these measure-zero draws)
    w = torch.clamp_min(v + (1.0 - v) * r, W_FLOOR)
    eps_c = ndtri_log(far + torch.log(w))
    xs = torch.clamp(m + sg * s * eps_c, a, b)
    return torch.exp(xs), v, w, eps_c, (sg, al, be, r, s)


def _mills_asym(t: torch.Tensor) -> torch.Tensor:
    """t·R(t) for t >= FAR_TAIL (the 1/t is cancelled in the ratios below)."""
    t2 = 1.0 / (t * t)
    return 1.0 - t2 + 3.0 * t2 * t2


def grad_factors(v, w, eps_c, al, be, r, s):
    """(∂x_s/∂μ, ∂x_s/∂σ) per draw, in canonical coordinates (see the module docstring)."""
    zero = torch.zeros_like(v)
    far = be < -FAR_TAIL
    # far tail: φ(t)/φ(ε') = (Φ(t)/Φ(ε'))·R(-ε')/R(-t), and R(-ε')/R(-t) = (t/ε')·mills_asym(-ε')/mills_asym(-t)
    pe = torch.clamp(-eps_c, min=FAR_TAIL)
    rb_far = (v / w) * (torch.clamp(-be, min=FAR_TAIL) / pe) * _mills_asym(pe) / _mills_asym(torch.clamp(-be, min=FAR_TAIL))
    ra_far = ((1.0 - v) * r / w) * (torch.clamp(-al, min=FAR_TAIL) / pe) * _mills_asym(pe) \
        / _mills_asym(torch.clamp(-al, min=FAR_TAIL))
    log_v = torch.where(v > 0, torch.log(v), torch.full_like(v, -math.inf))
    rb_near = torch.where(v > 0, torch.exp(log_v - 0.5 * (be - eps_c) * (be + eps_c)), zero)
    ra_near = torch.exp(torch.log1p(-v) - 0.5 * (al - eps_c) * (al + eps_c))
    ra = torch.where(far, torch.where(r > 0, ra_far, zero), ra_near)
    rb = torch.where(far, rb_far, rb_near)
    dmu = 1.0 - ra - rb
    # α'·ra vanishes wherever ra does; guard the 0·inf that a huge |α'| would otherwise produce
    dsig = s * (eps_c - torch.where(ra > 0, al * ra, zero) - torch.where(rb > 0, be * rb, zero))
    return dmu, dsig


def _mask_view(mask, ndim, dim, dtype):
    return None if mask is None else _view(mask.to(dtype), ndim, dim)


@register("reference")
def lognormal_noise(x, mu, log_sigma, mask, a: float, b: float, dim: int, granularity: str, seed: int, offset: int):
    """Training-mode forward: y = x · θ · mask, θ drawn from (seed, offset).  ``dim`` must be non-negative."""
    dt = math_dtype(x)
    th, *_ = theta(x.shape, mu, log_sigma, a, b, dim, granularity, seed, offset, dt)
    mk = _mask_view(mask, x.dim(), dim, dt)
    if mk is not None:
        th = th * mk
    return (x.to(dt) * th).to(x.dtype)


@register("reference")
def lognormal_noise_backward(grad_y, x, mu, log_sigma, mask, a: float, b: float, dim: int, granularity: str,
                             seed: int, offset: int):
    """(dx, dμ, d log σ) of ``lognormal_noise`` for upstream gradient ``grad_y``, regenerating θ from (seed, offset)."""
    dt = math_dtype(x)
    th, v, w, eps_c, (sg, al, be, r, s) = theta(x.shape, mu, log_sigma, a, b, dim, granularity, seed, offset, dt)
    mk = _mask_view(mask, x.dim(), dim, dt)
    if mk is not None:
        th = th * mk
    g = grad_y.to(dt)
    dx = (g * th).to(x.dtype)
    dxs_dmu, dxs_dsig = grad_factors(v, w, eps_c, al, be, r, s)
    gxt = g * x.to(dt) * th
    red = [d for d in range(x.dim()) if d != dim]
    dmu, dls = gxt * dxs_dmu, gxt * dxs_dsig * sg
    if red:   # a 1-d x has one element per unit: nothing to sum (an empty dim list would sum everything)
        dmu, dls = dmu.sum(dim=red), dls.sum(dim=red)
    return dx, dmu.to(mu.dtype), dls.to(log_sigma.dtype)
