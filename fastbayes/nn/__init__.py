"""Gate modules and their insertion into existing models."""
from .gates import LogNormalGate
from .insert import add_gates, gates, kl_loss

__all__ = ["LogNormalGate", "add_gates", "gates", "kl_loss"]
