"""Reference of the Bernoulli unit gate and of the spike-and-slab scale-mixture prior (METHODS.md §3.2).

Design after Guenter & Sideris (arXiv 2205.04650); their paper text and code could not be read, so the estimator and
the prior below are fastbayes's own reading of the abstracts.  Everything a kernel must reproduce:

**Gate** ``y = x · ξ``, ξ_{n,c} ~ Bern(θ_c) drawn per example n = index along x.shape[0] and unit c = index along
``dim`` (``dim != 0``), shared over the other dims.

* **Counters.** View x as [N, P, C, S] (as ``reference.lognormal`` with granularity "sample"): the draw of (n, c) is
  ``u = philox_uniform(seed, offset + n·C + c)`` (bit-identical to ``tl.rand``); one call consumes N·C counters.
* **Draw.** ξ = 1[u < θ_c] with the float32 u and the float32 θ compared exactly (θ = 1 always keeps a unit, θ = 0
  always drops it); a masked unit has ξ = 0.
* **Forward.** y = x where ξ = 1, else an exact 0 (also for non-finite x): a dropped unit passes nothing on.
* **Backward** regenerates ξ from (seed, offset): dx = g where ξ = 1, else 0 (in x's dtype).  The θ gradient is the
  straight-through (first-order) estimate  dθ_c = Σ_{n,p,s} g·x  over every element of the unit, kept *and* dropped
  examples alike: ∂ℓ/∂ξ at the sampled ξ.  Products g·x are formed in the math dtype (float32, float64 for float64
  x; exact for 16-bit inputs) and summed in float64; masked units get 0.
* **Its bias.** E_q[ℓ] is affine in each θ_c, so the exact gradient is D_c = E[ℓ(ξ_c=1) − ℓ(ξ_c=0)].  ∂ℓ/∂ξ_c is a
  first-order Taylor estimate of that difference at the sampled endpoint: for ℓ locally quadratic in ξ_c it is
  D_c + ½ℓ'' when ξ_c = 1 was drawn and D_c − ½ℓ'' when ξ_c = 0, so the bias is (θ_c − ½)·ℓ'' in expectation.  It
  is zero for a loss linear in the unit's output, small when one unit moves the next layer's pre-activations little
  (wide layers), and largest at θ_c ≈ 0 or 1: with ℓ'' > 0 it pushes kept units (θ_c ≈ 1) towards removal and pulls
  nearly removed ones (θ_c ≈ 0) back.  ``fastbayes.nn.bernoulli.exact_theta_grad`` gives the unbiased two-pass
  difference for a few units.

**Prior** of unit i with gate probability θ_i, k_i incoming weights of squared norm ‖w_i‖² = ``sq_norm``, slab
variance σ1² = exp(log_var1) and spike variance σ0² = exp(log_var0):

    cost_i = θ_i·c1 + (1 − θ_i)·c0,   c_s = ‖w_i‖²/(2σ_s²) + (k_i/2)·log(2πσ_s²)

(−log N(w_i; 0, σ_s² I) under either mixture component, weighted by q(ξ_i); the flattening hyper-prior sets π_i = θ_i
so that the KL of the gate itself vanishes, METHODS.md §3.2).  Gradients: ∂cost/∂θ = c1 − c0 and
∂cost/∂‖w‖² = θ/(2σ1²) + (1 − θ)/(2σ0²).  Computed in float64, returned in the inputs' dtypes.
"""
from __future__ import annotations

import math

import torch

from .philox import philox_uniform
from ..backends import register

LOG_2PI = math.log(2.0 * math.pi)


def math_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def layout(shape, dim: int):
    """(N, P, C, S) and the shape of the ξ table before broadcasting against x ([N, 1.., C, 1..])."""
    n, c = shape[0], shape[dim]
    p = math.prod(shape[1:dim])
    s = math.prod(shape[dim + 1:])
    tshape = [1] * len(shape)
    tshape[0], tshape[dim] = n, c
    return (n, p, c, s), tuple(tshape)


def draws(shape, dim: int) -> int:
    """Philox counters one call consumes (advance ``offset`` by this for fresh draws): N·C."""
    return shape[0] * shape[dim]


def _view(t: torch.Tensor, ndim: int, dim: int) -> torch.Tensor:
    shape = [1] * ndim
    shape[dim] = t.numel()
    return t.reshape(shape)


def gate_draws(x_shape, theta: torch.Tensor, mask, dim: int, seed: int, offset: int) -> torch.Tensor:
    """ξ as a bool tensor of shape [N, 1.., C, 1..] (True: the unit is kept for that example)."""
    _, tshape = layout(x_shape, dim)
    u = philox_uniform(seed, offset, tshape, device=theta.device)
    xi = u < _view(theta.detach().to(torch.float32), len(x_shape), dim)
    if mask is not None:
        xi = xi & _view(mask, len(x_shape), dim)
    return xi


@register("reference")
def bernoulli_gate(x, theta, mask, dim: int, seed: int, offset: int) -> torch.Tensor:
    """Training-mode forward: y = x where ξ = 1 else 0, ξ drawn from (seed, offset).  ``dim`` must be in [1, ndim)."""
    xi = gate_draws(x.shape, theta, mask, dim, seed, offset)
    return torch.where(xi, x, torch.zeros((), dtype=x.dtype, device=x.device))


@register("reference")
def bernoulli_gate_backward(grad_y, x, theta, mask, dim: int, seed: int, offset: int):
    """(dx, dθ) of ``bernoulli_gate``: dx = g·ξ and the straight-through dθ_c = Σ g·x (float64 sums)."""
    xi = gate_draws(x.shape, theta, mask, dim, seed, offset)
    dt = math_dtype(x)
    dx = torch.where(xi, grad_y.to(x.dtype), torch.zeros((), dtype=x.dtype, device=x.device))
    red = [d for d in range(x.dim()) if d != dim]
    dtheta = (grad_y.to(dt) * x.to(dt)).sum(dim=red, dtype=torch.float64)
    if mask is not None:
        dtheta = torch.where(mask, dtheta, torch.zeros_like(dtheta))
    return dx, dtheta.to(theta.dtype)


def _components(sq_norm, k, log_var0, log_var1):
    sq, kk = sq_norm.to(torch.float64), k.to(torch.float64)
    lv0, lv1 = log_var0.to(torch.float64), log_var1.to(torch.float64)
    h0, h1 = 0.5 * torch.exp(-lv0), 0.5 * torch.exp(-lv1)   # 1/(2σ_s²)
    c0 = sq * h0 + 0.5 * kk * (LOG_2PI + lv0)
    c1 = sq * h1 + 0.5 * kk * (LOG_2PI + lv1)
    return c0, c1, h0, h1


@register("reference")
def scale_mixture_prior(theta, sq_norm, k, log_var0, log_var1) -> torch.Tensor:
    """Per-unit prior cost θ·c1 + (1 − θ)·c0 in float64, returned in ``theta.dtype``."""
    th = theta.to(torch.float64)
    c0, c1, _, _ = _components(sq_norm, k, log_var0, log_var1)
    return (th * c1 + (1.0 - th) * c0).to(theta.dtype)


@register("reference")
def scale_mixture_prior_backward(grad, theta, sq_norm, k, log_var0, log_var1):
    """(dθ, d sq_norm) = grad·(c1 − c0), grad·(θ/(2σ1²) + (1 − θ)/(2σ0²)), in the dtypes of theta and sq_norm."""
    g, th = grad.to(torch.float64), theta.to(torch.float64)
    c0, c1, h0, h1 = _components(sq_norm, k, log_var0, log_var1)
    dtheta = g * (c1 - c0)
    dsq = g * (th * h1 + (1.0 - th) * h0)
    return dtheta.to(theta.dtype), dsq.to(sq_norm.dtype)
