"""Deprecation path for modules moved into ``fastbayes.apps``: the old module re-exports the new one's names and
warns on first use (a module-level ``__getattr__``, so ``import fastbayes`` stays silent and apps stays unloaded)."""
from __future__ import annotations

import importlib
import warnings


def forwarder(old: str, new: str):
    """``__getattr__`` for module ``old`` that warns (DeprecationWarning) and returns the attribute of ``new``."""
    def __getattr__(name: str):
        if name.startswith("__"):       # keep import machinery / pickle / inspect probes quiet
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        warnings.warn(f"{old} moved to {new}; import it from there ({old} will be removed)", DeprecationWarning,
                      stacklevel=2)
        return getattr(importlib.import_module(new), name)
    return __getattr__
