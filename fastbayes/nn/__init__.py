"""Gate modules (one protocol: ``num_features``, ``mask``, ``kl_weight``, ``penalty()``, ``from_layer()``), their
placement in existing models, and their terms of the loss."""
from . import bernoulli
from .bernoulli import BernoulliGate, prior_loss
from .cost import CostPrior, ParamCost
from .gates import LogNormalGate
from .insert import add_gates
from .penalty import kl_loss, param_groups, penalty
from .sites import gates

__all__ = ["BernoulliGate", "CostPrior", "LogNormalGate", "ParamCost", "add_gates", "bernoulli", "gates", "kl_loss", "param_groups", "penalty",
           "prior_loss"]
