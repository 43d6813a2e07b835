"""fastbayes: Bayesian structured pruning for PyTorch with fused kernels.

    gates = fastbayes.add_gates(model)                       # gate every Conv/Linear but the classifier
    loss = F.cross_entropy(model(x), y) + fastbayes.kl_loss(model) / n_train
    report = fastbayes.prune.update_masks(model, "bmrs_n")   # or "snr", "bmrs_u"
"""
import torch  # noqa: F401  (must precede the extension: it maps torch's libgomp)

from . import backends, bmr, checkpoint, distributions, nn, ops, prune, reference, svgd  # noqa: E402
from .nn import add_gates, kl_loss  # noqa: E402

__version__ = "0.1.0"

# sub-packages that pull optional dependencies or are rarely needed load on first use: fb.dllp, fb.metrics, ...
_LAZY = ("dllp", "graph", "layers", "metrics", "apps", "models", "data")


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'fastbayes' has no attribute {name!r}")

__all__ = ["add_gates", "backends", "bmr", "checkpoint", "distributions", "kl_loss", "nn", "ops", "prune", "reference", "svgd", "__version__"]
