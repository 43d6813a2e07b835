"""The gates' terms of the loss, and the optimiser groups that train them."""
from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from ..ops._dispatch import cpp_autograd
from ..ops.gate_stats import stats as flat_gate_stats
from ..reference.gate_stats import LOG_SIGMA_MAX, LOG_SIGMA_MIN
from .bernoulli import BernoulliGate, prior_loss
from .gates import LogNormalGate
from .sites import GATE_ATTR, gates


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")


def param_groups(model: nn.Module, lr: float, gate_lr_factor: float = 10.0) -> list[dict]:
    """Optimiser parameter groups: every parameter at ``lr``, the gates' parameters at ``lr · gate_lr_factor``.

        opt = torch.optim.Adam(fastbayes.nn.param_groups(model, 1e-3), 1e-3)

    Adam moves a parameter by about its lr per step, and a prunable unit's log σ has to travel from its init (-5)
    to about +3 before a criterion can judge it; at the weights' lr that takes ~15 epochs of BMRS training, at 10×
    (SBP's VGG recipe) about 2 (docs/RESULTS.md §1).  Gates shared by coupled layers are listed once.
    """
    for name, v in (("lr", lr), ("gate_lr_factor", gate_lr_factor)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a finite positive number, got {v!r}")
    _check_model(model)
    gate_params, seen = [], set()
    for g in gates(model).values():
        for p in g.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                gate_params.append(p)
    if not gate_params:
        raise ValueError("model has no gates: call fastbayes.add_gates(model) first")
    rest, done = [], set(seen)
    for p in model.parameters():
        if id(p) not in done:
            done.add(id(p))
            rest.append(p)
    return [{"params": rest}, {"params": gate_params, "lr": float(lr) * float(gate_lr_factor)}]


_WEIGHTS: dict[tuple, torch.Tensor] = {}


def _kl_weights(sizes: tuple, layers: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The per-unit KL weights of gates with (num_features, kl_weight) ``sizes``: kl_weight for reduction="sum"
    (``layers`` = 0), kl_weight / (layers · num_features) for "mean".  Built once per configuration and device, so a
    training step allocates (and, on a GPU, copies) nothing for them."""
    key = (sizes, layers, device, dtype)
    w = _WEIGHTS.get(key)
    if w is None:
        if len(_WEIGHTS) >= 256:
            _WEIGHTS.clear()
        w = torch.cat([torch.full((n,), kw / (layers * n) if layers else kw, dtype=torch.float64)
                       for n, kw in sizes]).to(device=device, dtype=dtype)
        _WEIGHTS[key] = w
    return w


def kl_loss(model: nn.Module, reduction: str = "sum") -> torch.Tensor:
    """Total weighted KL of every LogNormalGate in ``model``, in one fused ``gate_stats`` launch per (a, b).

    The ELBO scaling is per-example: ``loss = cross_entropy(mean over batch) + kl_loss(model) / N`` with N the
    number of training examples (SBP's code: N·mean CE + KL).  ``reduction="mean"`` reproduces the released BMRS
    code instead: the mean KL over the units of each layer, then the mean over layers, added to the mean CE with
    weight 1 (a KL about N/(L·U) times stronger than the ELBO; METHODS.md §2.1).  A coupled gate counts once.
    """
    _check_model(model)
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    found = _lognormal_gates(model)
    if not found:
        raise ValueError("model has no LogNormalGate: call fastbayes.add_gates(model) first")
    scale = len(found) if reduction == "mean" else 0
    ab = found[0]._bounds
    if all(g._bounds == ab for g in found):     # the usual case: one (a, b), one launch
        groups = {ab: found}
    else:
        groups = {}
        for g in found:
            groups.setdefault(g._bounds, []).append(g)
    total = None
    for (a, b), gs in groups.items():
        mus = [g._parameters["mu"] for g in gs]
        lss = [g._parameters["log_sigma"] for g in gs]
        mu0 = mus[0]
        weights = _kl_weights(tuple([(m.shape[0], g._kl_weight) for m, g in zip(mus, gs)]), scale, mu0.device,
                              mu0.dtype)
        if cpp_autograd("gate_stats", mu0) is not None:
            # one C++ autograd node for cat, clamp, gate_stats and dot (csrc/autograd.cpp): same kernels, same bits
            kl = torch.ops.fastbayes_C.kl_loss(mus, lss, weights, a, b, LOG_SIGMA_MIN, LOG_SIGMA_MAX)
        else:
            mu = torch.cat(mus) if len(gs) > 1 else mu0
            ls = (torch.cat(lss) if len(gs) > 1 else lss[0]).clamp(LOG_SIGMA_MIN, LOG_SIGMA_MAX)
            kl = torch.dot(flat_gate_stats(mu, ls.to(mu0.dtype), a, b)[0], weights)
        total = kl if total is None else total + kl
    return total


def _lognormal_gates(model: nn.Module) -> list[LogNormalGate]:
    """Every LogNormalGate of ``model`` once, in module order (those of ``gates(model)``), by a walk over the raw
    ``_modules`` dicts: no names, no hook inspection.  ``kl_loss`` runs it every step, where a Python line costs
    ~1 µs."""
    found, seen, stack = [], set(), [model]
    while stack:
        m = stack.pop()
        if id(m) in seen:       # a module registered twice (named_modules lists it once)
            continue
        seen.add(id(m))
        children = m._modules
        g = children.get(GATE_ATTR)
        if g is not None and isinstance(g, LogNormalGate) and id(g) not in seen:
            seen.add(id(g))     # a gate has no children to walk
            found.append(g)
        if children:
            stack.extend([c for c in reversed(children.values()) if c is not None])
    return found


def penalty(model: nn.Module, reduction: str = "sum") -> torch.Tensor:
    """Every gate's term of the loss, summed: the weighted KL of the log-normal gates (``kl_loss``, one fused
    ``gate_stats`` launch per (a, b)) plus the spike-and-slab prior of the Bernoulli gates (``prior_loss``, one
    ``scale_mixture_prior`` launch).  Add ``penalty(model) / n_train`` to the mean task loss (the per-example ELBO);
    ``reduction`` applies to the KL as in ``kl_loss``."""
    _check_model(model)
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    found = gates(model).values()
    kinds = {type(g) for g in found}
    if not kinds:
        raise ValueError("model has no gates: call fastbayes.add_gates(model) first")
    total = None
    if LogNormalGate in kinds:
        total = kl_loss(model, reduction)
    if BernoulliGate in kinds:
        p = prior_loss(model)
        total = p if total is None else total + p
    if total is None:
        raise ValueError(f"penalty knows LogNormalGate and BernoulliGate, got {sorted(k.__name__ for k in kinds)}")
    return total
