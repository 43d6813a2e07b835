"""Pruning criteria over gate posteriors: one decision statistic per unit and the rule that keeps it.

* ``snr``:    keep iff SNR(θ) > threshold (SBP, τ = 1).
* ``bmrs_n``: keep iff ΔF_N < 0, reduced prior TruncatedLogNormal(a, 1e-6) on [a, b] (BMRS_N, METHODS.md §2.3).
* ``bmrs_u``: keep iff ΔF_U < 0, reduced prior LogUniform(log 2^-p2, log 2^-p1) (BMRS_U-p1, §2.4).  With the paper's
  a' = 2^-23 a unit whose posterior sits below a' (θ < 1e-7, i.e. effectively zero) has ΔF_U → -∞ and is never
  pruned; ``lower="a"`` uses a' = a and closes that blind spot.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..reference.gate_stats import delta_f_n, delta_f_u


@dataclass(frozen=True)
class Decision:
    statistic: torch.Tensor   # float64, one per unit
    keep: torch.Tensor        # bool
    threshold: float
    rule: str                 # human-readable rule, e.g. "keep if SNR > 1"


def snr(gate, threshold: float = 1.0) -> Decision:
    if not threshold >= 0:
        raise ValueError(f"threshold must be non-negative, got {threshold!r}")
    s = gate.stats()[2].detach().to(torch.float64)
    return Decision(s, s > threshold, float(threshold), f"keep if SNR > {threshold:g}")


def bmrs_n(gate, scale: float = 1e-6, code_offset: bool = False) -> Decision:
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale!r}")
    sigma = gate.clamped_log_sigma().detach().to(torch.float64).exp()
    df = delta_f_n(gate.mu.detach(), sigma, gate.a, gate.b, gate.a, scale, code_offset=code_offset)
    return Decision(df, df < 0, 0.0, "keep if ΔF_N + ½·log 2π < 0 (BMRS code)" if code_offset else "keep if ΔF_N < 0")


def bmrs_u(gate, p1: float = 8, p2: float = 23, lower: str | float | None = None) -> Decision:
    a2 = -p2 * math.log(2.0) if lower is None else (gate.a if lower == "a" else float(lower))
    b2 = -p1 * math.log(2.0)
    if not gate.a <= a2 < b2 <= gate.b:
        raise ValueError(f"need a <= a' < b' <= b for BMRS_U, got a={gate.a}, a'={a2:.4g} (p2/lower), "
                         f"b'={b2:.4g} (p1), b={gate.b}")
    sigma = gate.clamped_log_sigma().detach().to(torch.float64).exp()
    df = delta_f_u(gate.mu.detach(), sigma, gate.a, gate.b, a2, b2)
    return Decision(df, df < 0, 0.0, f"keep if ΔF_U(p1={p1:g}) < 0")


CRITERIA = {"snr": snr, "bmrs_n": bmrs_n, "bmrs_u": bmrs_u}
