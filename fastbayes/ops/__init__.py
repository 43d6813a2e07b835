"""Autograd-aware fused ops; each dispatches to the best backend for its tensors (see ``fastbayes.backends``)."""
from .bernoulli import bernoulli_gate, scale_mixture_prior
from .gate_stats import gate_stats
from .lognormal import lognormal_noise
from .philox import philox_uniform
from .svgd import svgd_direction

__all__ = ["bernoulli_gate", "gate_stats", "lognormal_noise", "philox_uniform", "scale_mixture_prior",
           "svgd_direction"]
