"""Bayesian model reduction for the truncated log-normal gate (BMRS, METHODS.md §2.2–§2.4).

For a posterior q(θ) fitted under the prior p(θ) = LogU[a, b], the change in log evidence when the prior
is replaced by a reduced prior p̃ is  ΔF = log ∫ q(θ)·p̃(θ)/p(θ) dθ  (no retraining).  A unit is pruned
when ΔF >= 0.  Two reduced priors:

* BMRS_N: p̃ = TruncatedLogNormal(a, 1e-6, a, b), a spike at the lower bound (``bmrs_n_prior``).
* BMRS_U: p̃ = LogUniform(a2, b2) with a <= a2 < b2 <= b (``bmrs_u_prior``): prune iff q puts at least
  (b2-a2)/(b-a) of its mass in [a2, b2].

Every ΔF is computed in float64 on the posterior's device by the far-tail-exact forms of
``fastbayes.reference.gate_stats`` and returned as float64.
"""
from __future__ import annotations

import math

import torch

from .distributions import LogUniform, TruncatedLogNormal
from .reference import gate_stats as gs

__all__ = ["delta_f", "bmrs_n_prior", "bmrs_u_prior"]

LOG2 = math.log(2.0)


def delta_f(posterior: TruncatedLogNormal, prior: LogUniform, reduced, *, code_offset: bool = False) -> torch.Tensor:
    """ΔF = log p̃(D) - log p(D) per unit (float64, shape = posterior.batch_shape broadcast with reduced's).

    posterior: TruncatedLogNormal on [a, b]; prior: LogUniform(a, b) with the same bounds;
    reduced: TruncatedLogNormal on [a, b] (BMRS_N) or LogUniform(a2, b2), a <= a2 < b2 <= b (BMRS_U).

    code_offset=True adds +½·log 2π to ΔF_N, the constant the released BMRS code carries because its
    ``deltaF`` drops the 2π inside a log (METHODS §2.3).  It moves the pruning threshold: units with paper
    ΔF_N in [-0.919, 0) are kept by the paper's rule and pruned by the code.  It does not apply to BMRS_U
    (the code's ΔF_U has no such constant) and is ignored there.
    """
    if not isinstance(posterior, TruncatedLogNormal):
        raise TypeError(f"posterior must be a TruncatedLogNormal, got {type(posterior).__name__}")
    if not isinstance(prior, LogUniform):
        raise TypeError(f"prior must be a LogUniform, got {type(prior).__name__}")
    a, b = posterior.a, posterior.b
    if (prior.a, prior.b) != (a, b):
        raise ValueError(f"prior bounds ({prior.a}, {prior.b}) must equal the posterior bounds ({a}, {b})")
    mu, sigma = posterior.loc.detach().double(), posterior.scale.detach().double()
    if isinstance(reduced, TruncatedLogNormal):
        if (reduced.a, reduced.b) != (a, b):
            raise ValueError(f"reduced bounds ({reduced.a}, {reduced.b}) must equal the posterior bounds ({a}, {b})")
        loc = reduced.loc.detach().double().to(mu.device)
        scale = reduced.scale.detach().double().to(mu.device)
        return gs.delta_f_n(mu, sigma, a, b, loc, scale, code_offset=code_offset)
    if isinstance(reduced, LogUniform):
        if not (a <= reduced.a and reduced.b <= b):
            raise ValueError(f"reduced bounds ({reduced.a}, {reduced.b}) must lie inside the posterior "
                             f"bounds ({a}, {b})")
        return gs.delta_f_u(mu, sigma, a, b, reduced.a, reduced.b)
    raise TypeError(f"reduced must be a TruncatedLogNormal or a LogUniform, got {type(reduced).__name__}")


def bmrs_n_prior(a: float = -20.0, b: float = 0.0, scale: float = 1e-6) -> TruncatedLogNormal:
    """BMRS_N's reduced prior: TruncatedLogNormal(a, scale, a, b), a spike of width ``scale`` at θ = e^a."""
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite positive number, got {scale!r}")
    f64 = dict(dtype=torch.float64)
    return TruncatedLogNormal(torch.tensor(float(a), **f64), torch.tensor(float(scale), **f64), a, b)


def bmrs_u_prior(p1: float = 8, p2: float = 23, a: float = -20.0, b: float = 0.0, lower=None) -> LogUniform:
    """BMRS_U's reduced prior LogU[a', b'] with b' = 2^-p1 and a' = 2^-p2 (log-space -p·log 2).

    p1 is the compression knob (paper: 8 = "BMRS_U-8", 4 = "BMRS_U-4"); p2 = 23 is the float32 mantissa.

    Blind spot of the paper's choice: log a' = -23·log 2 = -15.94 lies above a = -20, so a unit whose q
    sits in [a, a'] (θ < 2^-23, i.e. already zero in float32) has almost no mass in [a', b'] and gets
    ΔF_U -> -inf: it is never pruned (μ=-19.9, σ=0.5 gives ΔF_U ≈ -33).  ``lower="a"`` sets a' = a and
    closes it (the same unit then gets ΔF_U >= 0).  ``lower`` may also be a log-space number for a'.
    """
    if lower is None:
        a2 = -float(p2) * LOG2
    elif isinstance(lower, str):
        if lower != "a":
            raise ValueError(f"lower must be None, 'a' or a log-space number, got {lower!r}")
        a2 = float(a)
    else:
        a2 = float(lower)
    b2 = -float(p1) * LOG2
    if not (a <= a2 < b2 <= b):
        raise ValueError(f"need a <= a' < b' <= b for the reduced bounds, got a={a}, a'={a2} (p2/lower), "
                         f"b'={b2} (p1), b={b}")
    return LogUniform(a2, b2)
