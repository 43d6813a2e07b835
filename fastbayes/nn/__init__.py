"""Gate modules and their insertion into existing models."""
from . import bernoulli
from .bernoulli import BernoulliGate, prior_loss
from .gates import LogNormalGate
from .insert import add_gates, gates, kl_loss, param_groups

__all__ = ["BernoulliGate", "LogNormalGate", "add_gates", "bernoulli", "gates", "kl_loss", "param_groups", "prior_loss"]
