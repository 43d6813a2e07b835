"""Gate modules: a learned multiplicative variable per output unit (neuron or channel) of a layer."""
from __future__ import annotations

import math
import numbers
import operator

import torch
from torch import nn

from .. import ops
from ..ops import lognormal
from ..layers import units
from ..ops._dispatch import check_bounds
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
        self._bounds = check_bounds(a, b)
        self.dim, self.granularity, self.kl_weight = dim, granularity, kl_weight
        for name, v in (("init_mu", init_mu), ("init_log_sigma", init_log_sigma)):
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        self.mu = nn.Parameter(torch.full((num_features,), float(init_mu)))
        self.log_sigma = nn.Parameter(torch.full((num_features,), float(init_log_sigma)))
        self.register_buffer("mask", torch.ones(num_features, dtype=torch.bool))
        self._eval_cache = None

    # Options are validated when set, so the forward only checks the activation (validate once, not per call).
    @property
    def a(self) -> float:
        return self._bounds[0]

    @a.setter
    def a(self, value) -> None:
        self._bounds = check_bounds(value, self._bounds[1])

    @property
    def b(self) -> float:
        return self._bounds[1]

    @b.setter
    def b(self, value) -> None:
        self._bounds = check_bounds(self._bounds[0], value)

    @property
    def dim(self) -> int:
        return self._dim

    @dim.setter
    def dim(self, value) -> None:
        if isinstance(value, bool):
            raise TypeError(f"dim must be an integer (the unit axis), got {value!r}")
        try:
            self._dim = operator.index(value)
        except TypeError:
            raise TypeError(f"dim must be an integer (the unit axis), got {value!r}") from None

    @property
    def granularity(self) -> str:
        return self._granularity

    @granularity.setter
    def granularity(self, value) -> None:
        if value not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {value!r}")
        self._granularity = value

    @property
    def kl_weight(self) -> float:
        return self._kl_weight

    @kl_weight.setter
    def kl_weight(self, value) -> None:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
            raise ValueError(f"kl_weight must be a finite non-negative number, got {value!r}")
        self._kl_weight = float(value)

    @classmethod
    def from_layer(cls, layer: nn.Module, *, site: nn.Module | None = None, **options) -> "LogNormalGate":
        """A gate for the output units of ``layer`` (a Linear/Conv), hosted on ``site`` (the layer itself or the
        BatchNorm after it): units and unit dim from the site, ``options`` as the constructor's."""
        n, dim = units(site if site is not None else layer)
        return cls(n, dim=dim, **options)

    @property
    def num_features(self) -> int:
        return self.mu.numel()

    def penalty(self) -> torch.Tensor:
        """kl_weight · KL(q ‖ LogUniform[a, b]) summed over the units: this gate's term of the loss
        (``fastbayes.nn.penalty(model)`` sums every gate of a model in fused launches)."""
        return self.kl_weight * self.kl()

    def clamped_log_sigma(self) -> torch.Tensor:
        return self.log_sigma.clamp(LOG_SIGMA_MIN, LOG_SIGMA_MAX)

    def _unit_dim(self, x: torch.Tensor) -> int:
        if not x.is_floating_point():
            raise ValueError(f"the gate's input must be a floating-point tensor, got dtype {x.dtype}")
        n = x.dim()
        d = self._dim + n if self._dim < 0 else self._dim
        if not 0 <= d < n or x.shape[d] != self.mu.numel():
            raise ValueError(f"the gate has {self.mu.numel()} units on dim {self._dim}, but its input has shape "
                             f"{tuple(x.shape)}")
        if self._granularity == "sample" and d == 0:
            raise ValueError("granularity='sample' draws one θ per example and unit, so the unit dim must not be 0")
        return d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The training hot path first, on the raw parameter dicts: in a training step, with caches cold after the
        # matmuls, every Python line here costs ~1 µs (measured in a BMRS MLP step, against a gate overhead of a few
        # tenths of a ms in all).  Anything unusual goes through the full checks below.
        if self.training:
            n = x.dim()
            d = self._dim + n if self._dim < 0 else self._dim
            mu = self._parameters["mu"]
            if n > 1 and 0 <= d < n and x.shape[d] == mu.shape[0] and (d or self._granularity != "sample") \
                    and x.is_floating_point():
                a, b = self._bounds
                return lognormal.gate(x, mu, self._parameters["log_sigma"], self._buffers["mask"], a, b, d,
                                      self._granularity, None, 0)
        if x.dim() == 1:            # an unbatched Linear output: a single sample
            return self.forward(x.unsqueeze(0)).squeeze(0)
        d = self._unit_dim(x)
        if not self.training:
            shape = [1] * x.dim()
            shape[d] = -1
            return x * self.expected_scale().to(x.dtype).reshape(shape)
        a, b = self._bounds
        return lognormal.gate(x, self.mu, self.log_sigma, self.mask, a, b, d, self._granularity, None, 0)

    def expected_scale(self) -> torch.Tensor:
        """E[θ]·mask per unit (no gradient), cached until ``mu``, ``log_sigma`` or ``mask`` change (by the tensors'
        version counters), so an eval-mode gate costs one multiply.  Writes through ``.data`` bypass the version
        counter: write under ``torch.no_grad()`` instead."""
        if torch.compiler.is_compiling():
            return self._expected_scale()
        # the inputs themselves (held, so a replaced Parameter cannot reuse an id) and their version counters
        tensors = (self.mu, self.log_sigma, self.mask)
        state = (tuple(t._version for t in tensors), self._bounds)
        c = self._eval_cache
        if c is None or any(a is not b for a, b in zip(c[0], tensors)) or c[1] != state:
            c = self._eval_cache = (tensors, state, self._expected_scale())
        return c[2]

    def __getstate__(self):
        # a copy restarts the tensors' version counters, so a copied cache could look fresh while stale
        state = dict(super().__getstate__())
        state["_eval_cache"] = None
        return state

    def _expected_scale(self) -> torch.Tensor:
        with torch.no_grad():
            mean = ops.gate_stats(self.mu, self.clamped_log_sigma(), a=self.a, b=self.b)[1]
            return mean * self.mask

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
