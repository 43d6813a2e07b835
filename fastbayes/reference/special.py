"""Special functions in log space, written with plain torch ops.

These are the reference forms of what ``csrc/include/fastbayes/math.h`` and ``kernels/_math.py``
implement.  ``ndtri`` / ``ndtri_log`` use Wichura's AS241 (PPND16) because it needs only polynomials,
``log`` and ``sqrt``: the Triton kernels can run the very same algorithm in the interpreter, and it
accepts ``log p`` directly, so the truncated sampler never has to form a probability that underflows.
"""
from __future__ import annotations

import math

import torch

from ..backends import register

LOG_2PI = math.log(2.0 * math.pi)
HALF_LOG_2PI = 0.5 * LOG_2PI

# AS241 PPND16 coefficients (Wichura 1988), lowest degree first.
_A = (3.3871328727963666080e0, 1.3314166789178437745e2, 1.9715909503065514427e3, 1.3731693765509461125e4,
      4.5921953931549871457e4, 6.7265770927008700853e4, 3.3430575583588128105e4, 2.5090809287301226727e3)
_B = (1.0, 4.2313330701600911252e1, 6.8718700749205790830e2, 5.3941960214247511077e3,
      2.1213794301586595867e4, 3.9307895800092710610e4, 2.8729085735721942674e4, 5.2264952788528545610e3)
_C = (1.42343711074968357734e0, 4.63033784615654529590e0, 5.76949722146069140550e0, 3.64784832476320460504e0,
      1.27045825245236838258e0, 2.41780725177450611770e-1, 2.27238449892691845833e-2, 7.74545014278341407640e-4)
_D = (1.0, 2.05319162663775882187e0, 1.67638483018380384940e0, 6.89767334985100004550e-1,
      1.48103976427480074590e-1, 1.51986665636164571966e-2, 5.47593808499534494600e-4, 1.05075007164441684324e-9)
_E = (6.65790464350110377720e0, 5.46378491116411436990e0, 1.78482653991729133580e0, 2.96560571828504891230e-1,
      2.65321895265761230930e-2, 1.24266094738807843860e-3, 2.71155556874348757815e-5, 2.01033439929228813265e-7)
_F = (1.0, 5.99832206555887937690e-1, 1.36929880922735805310e-1, 1.48753612908506148525e-2,
      7.86869131145613259100e-4, 1.84631831751005468180e-5, 1.42151175831644588870e-7, 2.04426310338993978564e-15)

# Beyond r = sqrt(-log p) > 26 (p < 1e-294) PPND16 leaves its fitted range; there we solve the Mills-ratio
# asymptotic  L = t²/2 + log t + ½log 2π - log(1 - 1/t²)  for t by fixed-point iteration.
NDTRI_ASYMPTOTIC_R = 26.0
NDTRI_HUGE_R = 1e18      # beyond it Φ⁻¹ = -√2·r to working precision (r = sqrt(-log p))
SQRT2 = math.sqrt(2.0)


def _poly(c, x):
    acc = torch.full_like(x, c[-1])
    for coef in reversed(c[:-1]):
        acc = acc * x + coef
    return acc


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, accurate on both sides of -log 2 (Mächler 2012)."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


@register("reference")
def log_ndtr(x: torch.Tensor) -> torch.Tensor:
    """log Φ(x), finite for every finite x."""
    return torch.special.log_ndtr(x)


def log_diff_ndtr(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """log(Φ(hi) - Φ(lo)) for lo < hi, mirrored to the side where both CDFs are small (no cancellation)."""
    mirror = (lo + hi) > 0
    l_hi = log_ndtr(torch.where(mirror, -lo, hi))
    l_lo = log_ndtr(torch.where(mirror, -hi, lo))
    return l_hi + log1mexp(torch.clamp(l_lo - l_hi, max=0.0))


def _tail(r: torch.Tensor) -> torch.Tensor:
    """Positive quantile t with -log Φ(-t) = r² (so r = sqrt(-log p) of the lower tail)."""
    small = _poly(_C, r - 1.6) / _poly(_D, r - 1.6)
    mid = _poly(_E, r - 5.0) / _poly(_F, r - 5.0)
    # asymptotic branch: L = r², iterate t² = 2L - log 2π - 2 log t + 2 log(1 - 1/t²)
    big_l = torch.clamp(r, min=NDTRI_ASYMPTOTIC_R) ** 2
    t = torch.sqrt(2.0 * big_l)
    for _ in range(3):
        t = torch.sqrt(2.0 * big_l - LOG_2PI - 2.0 * torch.log(t) + 2.0 * torch.log1p(-1.0 / (t * t)))
    # r > 1e18 (logp < -1e36, or -inf): the corrections are < 1e-34 relative, and the iteration would meet inf - inf
    t = torch.where(r > NDTRI_HUGE_R, r * SQRT2, t)
    return torch.where(r <= 5.0, small, torch.where(r <= NDTRI_ASYMPTOTIC_R, mid, t))


@register("reference")
def ndtri_log(logp: torch.Tensor) -> torch.Tensor:
    """Φ⁻¹(exp(logp)) for logp <= 0, accurate from logp = -1e30 up to logp = 0⁻ (AS241 + asymptotics).

    The lower tail is read from -logp directly, the upper tail from -log(-expm1(logp)), so neither
    p nor 1 - p is ever rounded to 0 or 1.
    """
    logp = torch.clamp(logp, max=0.0)
    p = torch.exp(logp)
    q = p - 0.5
    central = q.abs() <= 0.425
    rr = 0.180625 - q * q
    c_val = q * _poly(_A, rr) / _poly(_B, rr)
    upper = q > 0
    # -log(min(p, 1-p)): lower tail from logp itself, upper tail via expm1
    neg_log_tail = torch.where(upper, -torch.log(-torch.expm1(torch.clamp(logp, max=-1e-300 if logp.dtype == torch.float64 else -1e-38))), -logp)
    r = torch.sqrt(torch.clamp(neg_log_tail, min=0.0))
    t = _tail(torch.where(central, torch.ones_like(r) * 2.0, r))
    t_val = torch.where(upper, t, -t)
    return torch.where(central, c_val, t_val)


def ndtri(p: torch.Tensor) -> torch.Tensor:
    """Φ⁻¹(p) by AS241 (the algorithm every backend shares)."""
    return ndtri_log(torch.log(p))
