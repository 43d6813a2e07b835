"""Reference of the fused log-normal noise op: y = x · θ with θ ~ LogN[a,b](μ, σ²) per unit (METHODS.md §0.3, §5).

Everything a kernel must reproduce is spelled out here:

* **Counters.** View x as [N, P, C, S]: N = x.shape[0], C = x.shape[dim] (the units), P and S the dims between and
  after.  The uniform for a θ draw is ``philox_uniform(seed, offset + k)`` with
  ``k = c`` (granularity "batch"), ``k = n·C + c`` ("sample") or ``k`` = the row-major element index ("element").
* **Per-unit prologue** (float64, then cast to the math dtype): σ = exp(log σ), α = (a-μ)/σ, β = (b-μ)/σ.  The draw
  works on the side of the interval where both normal CDFs are small: ``mirror = α + β > 0``.
  Not mirrored: γ = Φ(β)·[u + (1-u)·r], r = Φ(α)/Φ(β), ε = Φ⁻¹(γ).
  Mirrored:     1-γ = Φ(-α)·[(1-u) + u·r], r = Φ(-β)/Φ(-α), ε = -Φ⁻¹(1-γ).
  So with v = u (or 1-u), L = log Φ(far end) and s = ±1:  ε = s · ndtri_log(L + log(v + (1-v)·r)).
  Both forms are the same ε in exact arithmetic; neither ever forms a probability that rounds to 0 or 1.
* **Per element** (float32 unless x is float64): x_s = clamp(μ + σ ε, a, b), θ = exp(x_s), y = x · θ · mask.
* **Backward** regenerates u.  With u held fixed (METHODS.md §0.3, the clamp treated as identity):
  ∂x_s/∂μ = 1 - [(1-u)φ(α) + uφ(β)]/φ(ε),  ∂x_s/∂σ = ε - [(1-u)αφ(α) + uβφ(β)]/φ(ε),
  with the ratios formed as exp(log(1-u) - (α-ε)(α+ε)/2) so that nothing overflows.
  dx = g·θ·mask;  dμ_c = Σ g·x·θ·∂x_s/∂μ;  d log σ_c = Σ g·x·θ·σ·∂x_s/∂σ  (sums over the unit's elements, masked
  units get 0).
"""
from __future__ import annotations

import math

import torch

from .philox import philox_uniform
from .special import log_ndtr, ndtri_log

GRANULARITIES = ("batch", "sample", "element")


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
    """Per-unit constants of the sampler: (μ, σ, α, β, L, r, s), computed in float64, returned in ``dtype``."""
    mu64 = mu.detach().to(torch.float64)
    sigma = torch.exp(log_sigma.detach().to(torch.float64))
    al, be = (a - mu64) / sigma, (b - mu64) / sigma
    mirror = (al + be) > 0
    far = log_ndtr(torch.where(mirror, -al, be))
    near = log_ndtr(torch.where(mirror, -be, al))
    r = torch.exp(near - far)
    s = torch.where(mirror, -1.0, 1.0).to(torch.float64)
    return tuple(t.to(dtype) for t in (mu64, sigma, al, be, far, r, s))


def _view(t: torch.Tensor, ndim: int, dim: int) -> torch.Tensor:
    shape = [1] * ndim
    shape[dim] = t.numel()
    return t.reshape(shape)


def sample_eps(u: torch.Tensor, params, ndim: int, dim: int):
    """ε for uniforms u (already shaped like θ), and the per-unit params viewed for broadcasting."""
    mu, sigma, al, be, far, r, s = (_view(t, ndim, dim) for t in params)
    v = torch.where(s < 0, 1.0 - u, u)
    eps = s * ndtri_log(far + torch.log(v + (1.0 - v) * r))
    return eps, (mu, sigma, al, be)


def theta(x_shape, mu, log_sigma, a, b, dim, granularity, seed, offset, dtype):
    """(θ, u, ε, per-unit views) with θ shaped for broadcasting against x."""
    _, tshape = layout(x_shape, dim, granularity)
    u = philox_uniform(seed, offset, tshape, device=mu.device).to(dtype)
    params = unit_params(mu, log_sigma, a, b, dtype)
    eps, (m, sg, al, be) = sample_eps(u, params, len(x_shape), dim)
    xs = torch.clamp(m + sg * eps, a, b)
    return torch.exp(xs), u, eps, (m, sg, al, be)


def _mask_view(mask, ndim, dim, dtype):
    return None if mask is None else _view(mask.to(dtype), ndim, dim)


def lognormal_noise(x, mu, log_sigma, mask, a: float, b: float, dim: int, granularity: str, seed: int, offset: int):
    """Training-mode forward: y = x · θ · mask, θ drawn from (seed, offset).  ``dim`` must be non-negative."""
    dt = math_dtype(x)
    th, *_ = theta(x.shape, mu, log_sigma, a, b, dim, granularity, seed, offset, dt)
    mk = _mask_view(mask, x.dim(), dim, dt)
    if mk is not None:
        th = th * mk
    return (x.to(dt) * th).to(x.dtype)


def lognormal_noise_backward(grad_y, x, mu, log_sigma, mask, a: float, b: float, dim: int, granularity: str,
                             seed: int, offset: int):
    """(dx, dμ, d log σ) of ``lognormal_noise`` for upstream gradient ``grad_y``, regenerating θ from (seed, offset)."""
    dt = math_dtype(x)
    th, u, eps, (m, sg, al, be) = theta(x.shape, mu, log_sigma, a, b, dim, granularity, seed, offset, dt)
    mk = _mask_view(mask, x.dim(), dim, dt)
    if mk is not None:
        th = th * mk
    g = grad_y.to(dt)
    dx = (g * th).to(x.dtype)
    log_u = torch.where(u > 0, torch.log(u), torch.full_like(u, -math.inf))
    ra = torch.exp(torch.log1p(-u) - 0.5 * (al - eps) * (al + eps))   # (1-u) φ(α)/φ(ε)
    rb = torch.where(u > 0, torch.exp(log_u - 0.5 * (be - eps) * (be + eps)), torch.zeros_like(u))  # u φ(β)/φ(ε)
    # α·ra vanishes wherever ra does; guard the 0·inf that a huge |α| would otherwise produce
    dxs_dmu = 1.0 - ra - rb
    dxs_dsig = eps - torch.where(ra > 0, al * ra, torch.zeros_like(ra)) - torch.where(rb > 0, be * rb, torch.zeros_like(rb))
    gxt = g * x.to(dt) * th
    red = [d for d in range(x.dim()) if d != dim]
    dmu = (gxt * dxs_dmu).sum(dim=red)
    dls = (gxt * dxs_dsig * sg).sum(dim=red)
    return dx, dmu.to(mu.dtype), dls.to(log_sigma.dtype)
