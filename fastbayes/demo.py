"""Deprecated: moved to ``fastbayes.apps.demo``.  Names still resolve here, with a DeprecationWarning on use."""
from ._moved import forwarder

__getattr__ = forwarder(__name__, "fastbayes.apps.demo")
