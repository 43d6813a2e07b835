"""Putting gates into an existing model without touching its code or its state_dict keys.

A gate becomes a child ``fastbayes_gate`` of the module whose output it multiplies, and a forward hook applies it.
So the model's own parameters keep their names (pretrained checkpoints still load), functional activations in the
model's forward need no change, ``copy.deepcopy`` and ``torch.compile`` see ordinary modules, and the gate's
parameters and mask appear in ``state_dict`` as ``<layer>.fastbayes_gate.mu`` etc.

Placement: ``"output"`` gates the layer's output; ``"bn"`` gates the output of the BatchNorm that directly follows
the layer (BMRS's ResNet recipe: noise after every BN, before the ReLU).  Gating after a ReLU is the same as gating
before it, since θ > 0 and ReLU(θz) = θ·ReLU(z).
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from .gates import LogNormalGate

GATE_ATTR = "fastbayes_gate"
KINDS = {"lognormal": LogNormalGate}
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _apply_gate(module: nn.Module, inputs, output):
    return getattr(module, GATE_ATTR)(output)


def _units(layer: nn.Module) -> tuple[int, int]:
    """(units, unit dim) of a layer's output."""
    if isinstance(layer, nn.Linear):
        return layer.out_features, -1
    if isinstance(layer, nn.modules.conv._ConvNd):
        return layer.out_channels, 1
    if isinstance(layer, _BN):
        return layer.num_features, 1
    raise ValueError(f"cannot gate a {type(layer).__name__}: expected Linear, Conv or BatchNorm")


def default_layers(model: nn.Module) -> list[str]:
    """Every Conv/Linear except the final classifier (the last Linear, or the last conv if there is none)."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    last = linears[-1] if linears else (names[-1] if names else None)
    return [n for n in names if n != last]


def _following_bn(model: nn.Module, name: str, units: int) -> str | None:
    order = [(n, m) for n, m in model.named_modules() if len(list(m.children())) == 0]
    for i, (n, _) in enumerate(order):
        if n == name and i + 1 < len(order):
            nxt_name, nxt = order[i + 1]
            if isinstance(nxt, _BN) and nxt.num_features == units:
                return nxt_name
    return None


def gates(model: nn.Module) -> dict[str, nn.Module]:
    """{name of the gated module: gate} for every gate in ``model``."""
    return {n: getattr(m, GATE_ATTR) for n, m in model.named_modules() if hasattr(m, GATE_ATTR)}


def add_gates(model: nn.Module, kind: str = "lognormal", *, layers: Iterable[str] | Callable | None = None,
              exclude: Iterable[str] = (), placement: str = "output",
              kl_weight: float | dict[str, float] | Callable[[str], float] = 1.0, **gate_options) -> dict[str, nn.Module]:
    """Put a gate on the output units of layers of ``model`` (in place); returns {name: gate}.

    Args:
        kind: "lognormal" (SBP / BMRS noise).
        layers: names of Conv/Linear modules to gate, or a predicate ``(name, module) -> bool``; default: every
            Conv/Linear except the final classifier.
        exclude: names to leave out.
        placement: "output" (the layer's output) or "bn" (the output of the BatchNorm right after the layer).
        kl_weight: one weight, {layer name: weight} (SBPa-style, unlisted layers get 1), or ``name -> weight``.
        **gate_options: passed to the gate (a, b, granularity, init_mu, init_log_sigma, ...).

    Calling it again returns the existing gates and adds none (idempotent).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {tuple(KINDS)}, got {kind!r}")
    if placement not in ("output", "bn"):
        raise ValueError(f"placement must be 'output' or 'bn', got {placement!r}")
    modules = dict(model.named_modules())
    if layers is None:
        names = default_layers(model)
    elif callable(layers):
        names = [n for n, m in modules.items() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) and layers(n, m)]
    else:
        names = list(layers)
        missing = [n for n in names if n not in modules]
        if missing:
            raise ValueError(f"layers names not found in the model: {missing}")
    excluded = set(exclude)
    unknown = excluded - set(modules)
    if unknown:
        raise ValueError(f"exclude names not found in the model: {sorted(unknown)}")
    existing = gates(model)
    out: dict[str, nn.Module] = {}
    for name in names:
        if name in excluded:
            continue
        units, dim = _units(modules[name])
        target = name
        if placement == "bn":
            target = _following_bn(model, name, units) or name
            units, dim = _units(modules[target])
        if target in existing:
            out[target] = existing[target]
            continue
        if isinstance(kl_weight, dict):
            w = kl_weight.get(name, 1.0)
        elif callable(kl_weight):
            w = kl_weight(name)
        else:
            w = kl_weight
        mod = modules[target]
        ref = next(iter(mod.parameters()), None)
        gate = KINDS[kind](units, dim=dim, kl_weight=w, **gate_options)
        if ref is not None:
            gate = gate.to(device=ref.device)
        mod.add_module(GATE_ATTR, gate)
        mod.register_forward_hook(_apply_gate)
        out[target] = gate
    return out


def kl_loss(model: nn.Module, reduction: str = "sum") -> torch.Tensor:
    """Total weighted KL of every LogNormalGate in ``model``, in one fused ``gate_stats`` launch per (a, b).

    The ELBO scaling is per-example: ``loss = cross_entropy(mean over batch) + kl_loss(model) / N`` with N the
    number of training examples (SBP's code: N·mean CE + KL).  ``reduction="mean"`` reproduces the released BMRS
    code instead: the mean KL over the units of each layer, then the mean over layers, added to the mean CE with
    weight 1 (a KL about N/(L·U) times stronger than the ELBO; METHODS.md §2.1).
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    from .. import ops
    found = [g for g in gates(model).values() if isinstance(g, LogNormalGate)]
    if not found:
        raise ValueError("model has no LogNormalGate: call fastbayes.add_gates(model) first")
    total = None
    groups: dict[tuple[float, float], list[LogNormalGate]] = {}
    for g in found:
        groups.setdefault((g.a, g.b), []).append(g)
    for (a, b), gs in groups.items():
        mu = torch.cat([g.mu for g in gs])
        ls = torch.cat([g.clamped_log_sigma() for g in gs])
        if reduction == "sum":
            w = [torch.full((g.num_features,), g.kl_weight) for g in gs]
        else:
            w = [torch.full((g.num_features,), g.kl_weight / (len(found) * g.num_features)) for g in gs]
        weights = torch.cat(w).to(device=mu.device, dtype=mu.dtype)
        kl = (ops.gate_stats(mu, ls, a=a, b=b)[0] * weights).sum()
        total = kl if total is None else total + kl
    return total
