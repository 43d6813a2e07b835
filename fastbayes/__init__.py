"""fastbayes: Bayesian structured pruning for PyTorch with fused kernels.

Public API (see README.md): ``fastbayes.distributions``, ``fastbayes.bmr``, ``fastbayes.ops``, ``fastbayes.backends``.
"""
import torch  # noqa: F401  (must precede the extension: it maps torch's libgomp)

from . import backends, ops, reference  # noqa: E402

__version__ = "0.1.0"

__all__ = ["backends", "ops", "reference", "__version__"]
