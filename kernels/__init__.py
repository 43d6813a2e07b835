"""Triton kernels of fastbayes (installed as ``fastbayes.kernels``).

Importing this package only imports triton and defines the jit functions; nothing is compiled until a
kernel is launched.  Set ``TRITON_INTERPRET=1`` before the import to run the kernels on CPU tensors.
"""
from .bernoulli import bernoulli_gate, bernoulli_gate_backward, scale_mixture_prior, scale_mixture_prior_backward
from .gate_stats import gate_stats, gate_stats_backward
from .lognormal import lognormal_noise, lognormal_noise_backward
from .svgd import svgd_apply, svgd_kernel_matrix

__all__ = ["bernoulli_gate", "bernoulli_gate_backward", "gate_stats", "gate_stats_backward", "lognormal_noise",
           "lognormal_noise_backward", "scale_mixture_prior", "scale_mixture_prior_backward", "svgd_apply", "svgd_kernel_matrix"]
