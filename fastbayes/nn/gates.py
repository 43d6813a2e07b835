"""Gate modules: a learned multiplicative variable per output unit (neuron or channel) of a layer."""
from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ..reference.gate_stats import LOG_SIGMA_MAX, LOG_SIGMA_MIN
from ..reference.lognormal import GRANULARITIES


class LogNormalGate(nn.Module):
    """y = x · θ, θ ~ LogN[a,b](μ, σ²) per unit along ``dim`` (SBP / BMRS noise, METHODS.md §0–§2).

    Parameters ``mu`` (init 0) and ``log_sigma`` (init -5) have one entry per unit; the bool buffer ``mask`` marks
    the kept units.  log σ is clamped into [-20, 5] in the forward, as in both official codes (the parameter itself
    is left alone).  In eval mode θ is replaced by E[θ]·mask and nothing is drawn.

    Args:
        num_features: number of units (channels or neurons).
        a, b: log-space truncation bounds of θ (default θ ∈ [e⁻²⁰, 1]).
        dim: unit axis of the input (1 for NCHW, -1 for [B, T, C]).
        granularity: "batch", "sample" (default) or "element"; see ``fastbayes.ops.lognormal_noise``.
        kl_weight: multiplier of this gate's KL in ``fastbayes.kl_loss`` (SBPa-style per-layer weights).
    """

    def __init__(self, num_features: int, a: float = -20.0, b: float = 0.0, dim: int = 1,
                 granularity: str = "sample", kl_weight: float = 1.0, init_mu: float = 0.0,
                 init_log_sigma: float = -5.0):
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features must be a positive integer, got {num_features!r}")
        if not float(a) < float(b):
            raise ValueError(f"bound a must be smaller than bound b, got a={a}, b={b}")
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        if not float(kl_weight) >= 0:
            raise ValueError(f"kl_weight must be non-negative, got {kl_weight!r}")
        self.a, self.b, self.dim, self.granularity = float(a), float(b), int(dim), granularity
        self.kl_weight = float(kl_weight)
        self.mu = nn.Parameter(torch.full((num_features,), float(init_mu)))
        self.log_sigma = nn.Parameter(torch.full((num_features,), float(init_log_sigma)))
        self.register_buffer("mask", torch.ones(num_features, dtype=torch.bool))

    @property
    def num_features(self) -> int:
        return self.mu.numel()

    def clamped_log_sigma(self) -> torch.Tensor:
        return self.log_sigma.clamp(LOG_SIGMA_MIN, LOG_SIGMA_MAX)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 1:            # an unbatched Linear output: a single sample
            return self.forward(x.unsqueeze(0)).squeeze(0)
        return ops.lognormal_noise(x, self.mu, self.clamped_log_sigma(), a=self.a, b=self.b, dim=self.dim,
                                   granularity=self.granularity, mask=self.mask, training=self.training)

    @property
    def posterior(self):
        """q(θ) as a ``fastbayes.distributions.TruncatedLogNormal`` (detached parameters)."""
        from ..distributions import TruncatedLogNormal
        return TruncatedLogNormal(self.mu.detach(), self.clamped_log_sigma().detach().exp(), self.a, self.b)

    def stats(self):
        """(kl, mean, snr) per unit through the fused ``gate_stats``."""
        return ops.gate_stats(self.mu, self.clamped_log_sigma(), a=self.a, b=self.b)

    def kl(self) -> torch.Tensor:
        """KL(q ‖ LogUniform[a, b]) summed over the units (unweighted)."""
        return self.stats()[0].sum()

    def extra_repr(self) -> str:
        kept = int(self.mask.sum())
        return (f"{self.num_features}, kept={kept}, a={self.a}, b={self.b}, dim={self.dim}, "
                f"granularity={self.granularity!r}, kl_weight={self.kl_weight}")
