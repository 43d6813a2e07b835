"""Putting gates into an existing model without touching its code or its state_dict keys.

A gate becomes a child ``fastbayes_gate`` of the module whose output it multiplies, and a forward hook applies it.
So the model's own parameters keep their names (pretrained checkpoints still load), functional activations in the
model's forward need no change, ``copy.deepcopy`` and ``torch.compile`` see ordinary modules, and the gate's
parameters and mask appear in ``state_dict`` as ``<layer>.fastbayes_gate.mu`` etc.

Three placements:

* **Coupled** (``add_gates(model, example_inputs=x)``): Torch-Pruning's dependency graph finds the groups of channels
  that must be removed together (residual sums, depthwise convolutions, concatenations, BatchNorm) and each group
  gets ONE gate, registered under every *site* of the group: each BatchNorm of the group, and each Conv/Linear of
  the group that no BatchNorm follows.  A pruned channel is then exactly 0 wherever it leaves the group's layers
  (after BN, after ReLU/SiLU/...), so every decision can be removed by ``fastbayes.prune.compact``.  Channels
  feeding a grouped convolution (``1 < groups < channels``) are pruned at the same position of every conv group, as
  Torch-Pruning does; their gate has ``channels / tiles`` units, each repeated over the ``tiles`` conv groups.
* **Per layer** (no ``example_inputs``, or ``coupled=False``): a gate per Conv/Linear, on its output
  (``placement="output"``) or on the output of the BatchNorm right after it (``placement="bn"``, BMRS's ResNet
  recipe).  Decisions of coupled channels may then disagree, and a pruned channel gated before a BatchNorm is not
  0 after it; compact() keeps such channels (zero-scaled, so still exact).
* **After an activation** (``placement="activation"``: the activation module that follows each gated layer, or its
  BatchNorm; ``placement="after:<module name>"`` for one layer: any named activation or pooling module that keeps
  the layer's units).  This is where BMRS's released code puts its noise (``Linear → Tanh → noise``, ``Conv → ReLU →
  noise → MaxPool``).  For tanh it is not the same model as gating the layer's output.  The host must be a module
  (not a functional call in ``forward``) that runs once per forward; compact() folds a gate after a positively
  homogeneous module (ReLU, pooling) into the layer and one after any other activation into the next layers' inputs.

Gating after a ReLU is the same as gating before it, since θ > 0 and ReLU(θz) = θ·ReLU(z).
"""
from __future__ import annotations

import importlib
import inspect
import math
import numbers
import warnings
from typing import Callable, Iterable

import torch
from torch import nn

from ..graph import as_args, channel_groups
from ..layers import ACTIVATIONS, CONV, POOLS, units
from .bernoulli import BernoulliGate
from .gates import LogNormalGate
from .sites import (GATE_ATTR, attach, device_of, following_bn, gates, leaves, select_layers, site_layers, sites,
                    trace, traceable)

KINDS = {"lognormal": LogNormalGate, "bernoulli": BernoulliGate}


def _check_kl_weight(kl_weight) -> None:
    def ok(w):
        return isinstance(w, numbers.Real) and not isinstance(w, bool) and math.isfinite(w) and w >= 0
    if isinstance(kl_weight, dict):
        bad = {k: w for k, w in kl_weight.items() if not isinstance(k, str) or not ok(w)}
        if bad:
            raise ValueError(f"kl_weight must map layer names to finite non-negative numbers, got {bad}")
    elif not callable(kl_weight) and not ok(kl_weight):
        raise ValueError(f"kl_weight must be a finite non-negative number, a {{layer name: weight}} dict or a "
                         f"callable, got {kl_weight!r}")


def _check_gate_options(cls, options: dict) -> None:
    """Unknown option names fail here, before any gate exists (a typo would otherwise surface as a TypeError of
    the constructor after some layers were gated)."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return   # the constructor takes more (deprecated) names and checks them itself; gates exist before any attach
    allowed = [p for p in params if p not in ("self", "num_features", "dim", "kl_weight")]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for {cls.__name__}; it takes {allowed}")


def _default_inputs(model: nn.Module) -> list:
    """Candidate inputs for a model given without example_inputs: a batch of 2 shaped for its first layer."""
    first = next((m for m in model.modules() if isinstance(m, (nn.Linear, CONV))), None)
    if first is None:
        return []
    ref = next(first.parameters(), None)
    kw = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
    if isinstance(first, nn.Linear):
        return [torch.zeros(2, first.in_features, **kw)]
    spatial = first.weight.dim() - 2
    c = first.in_channels
    return [torch.zeros(2, c, *([s] * spatial), **kw) for s in ((32, 28, 64, 224) if spatial <= 2 else (16, 32))]


def _default_trace(model: nn.Module):
    """Torch-Pruning's graph of ``model`` traced on the first inferred input it accepts, or None.  A wrong input
    fails in the trace's own forward (a RuntimeError, hooks restored), so no separate trial forward is needed."""
    for x in _default_inputs(model):
        try:
            return trace(model, x)
        except RuntimeError:
            continue
    return None


AFTER = "after:"


def _check_placement(placement) -> None:
    if placement is None or placement in ("output", "bn", "activation"):
        return
    if isinstance(placement, str) and placement.startswith(AFTER) and len(placement) > len(AFTER):
        return
    raise ValueError(f"placement must be 'output', 'bn', 'activation' or 'after:<module name>', got {placement!r}")


def _leaf_after(model: nn.Module, name: str) -> tuple[str, nn.Module] | None:
    order = leaves(model)
    names = [n for n, _ in order]
    if name not in names or names.index(name) + 1 >= len(order):
        return None
    return order[names.index(name) + 1]


def _after_target(model: nn.Module, modules: dict, name: str, placement: str) -> str:
    """The module a gate of layer ``name`` is hosted on for placement "activation" or "after:<module>"."""
    if placement == "activation":
        start = following_bn(model, name, units(modules[name])[0]) or name
        nxt = _leaf_after(model, start)
        if nxt is None or not isinstance(nxt[1], ACTIVATIONS):
            what = f"{nxt[0]!r} ({type(nxt[1]).__name__})" if nxt else "nothing"
            raise ValueError(f"placement='activation': the module after {start!r} is {what}, not an activation "
                             "module; a functional activation in forward() cannot host a gate (make it a module, "
                             "e.g. nn.Tanh(), or use placement='output')")
        return nxt[0]
    target = placement[len(AFTER):]
    if target not in modules:
        raise ValueError(f"placement={placement!r}: no module named {target!r} in the model")
    if not isinstance(modules[target], (*ACTIVATIONS, *POOLS)):
        raise ValueError(f"placement={placement!r}: {target!r} is a {type(modules[target]).__name__}; a gate goes "
                         "after an activation or pooling module (use placement='output' or 'bn' for a layer)")
    return target


def _check_runs_once(model: nn.Module, hosts: list[str], example_inputs) -> None:
    """Each host module must run exactly once per forward (a shared nn.ReLU used twice would gate both uses).
    Checked on example_inputs, or on an input inferred from the first layer; skipped when neither runs."""
    modules = dict(model.named_modules())
    candidates = [as_args(example_inputs)] if example_inputs is not None else [(x,) for x in _default_inputs(model)]
    for args in candidates:
        calls = {h: 0 for h in hosts}
        handles = [modules[h].register_forward_hook(lambda m, i, o, h=h: calls.__setitem__(h, calls[h] + 1))
                   for h in hosts]
        try:
            with traceable(model), torch.no_grad():
                model(**args) if isinstance(args, dict) else model(*args)
        except RuntimeError:
            continue
        finally:
            for hd in handles:
                hd.remove()
        wrong = {h: c for h, c in calls.items() if c != 1}
        if wrong:
            raise ValueError(f"a gate's host module must run once per forward, but {wrong} ran that many times "
                             "(a module reused in forward()); give each use its own module")
        return


def _kl_weight_for(kl_weight, names: list[str]) -> float:
    if isinstance(kl_weight, dict):
        return next((float(kl_weight[n]) for n in names if n in kl_weight), 1.0)
    if callable(kl_weight):
        return float(kl_weight(names[0]))
    return float(kl_weight)


def add_gates(model: nn.Module, kind: str = "lognormal", *, layers: Iterable[str] | Callable | None = None,
              exclude: Iterable[str] = (), placement: str | None = None,
              kl_weight: float | dict[str, float] | Callable[[str], float] = 1.0, example_inputs=None,
              coupled: bool = True, **gate_options) -> dict[str, nn.Module]:
    """Put gates on the output units of layers of ``model`` (in place); returns {name of first site: gate}.

    Args:
        kind: "lognormal" (SBP / BMRS noise) or "bernoulli" (Bernoulli unit gates with a scale-mixture prior,
            σ1² = 2/fan_in per layer; see ``fastbayes.nn.bernoulli``).
        layers: names of Conv/Linear modules to gate, or a predicate ``(name, module) -> bool``; default: every
            Conv/Linear except the final classifier.  Coupled: a group is gated if one of its layers is listed
            (by default: if none of its layers is the classifier).
        exclude: names to leave out; coupled, a group with an excluded layer stays ungated.
        placement: per layer only: "output" (default, the layer's output), "bn" (the output of the BatchNorm
            right after the layer), "activation" (the activation module after the layer or its BatchNorm, as in
            BMRS's code) or "after:<module name>" (one layer: after that activation or pooling module).  Coupled
            gates always sit after the BatchNorm when there is one.
        kl_weight: one weight, {layer name: weight} (SBPa-style, unlisted layers get 1; coupled: the first listed
            layer of the group), or ``name -> weight`` (coupled: called with the group's first layer).
        example_inputs: a tensor, a tuple of arguments or a dict of keyword arguments to trace the model with;
            enables the coupled placement (without them gates are placed per layer).  With "activation"/"after:"
            placements they only serve to check that each host module runs once per forward.
        coupled: with example_inputs, one gate per group of coupled channels (default); False: per layer.
        **gate_options: passed to the gate (a, b, granularity, init_mu, init_log_sigma, ...).

    Calling it again returns the existing gates and adds none (idempotent).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"kind must be one of {tuple(KINDS)}, got {kind!r}")
    _check_placement(placement)
    if not isinstance(coupled, bool):
        raise TypeError(f"coupled must be True or False, got {coupled!r}")
    _check_kl_weight(kl_weight)
    if example_inputs is not None:
        as_args(example_inputs)
    cls = KINDS[kind]
    modules, names, excluded = select_layers(model, layers, exclude)
    _check_gate_options(cls, gate_options)
    after = placement is not None and (placement == "activation" or placement.startswith(AFTER))
    if after:
        return _add_after(model, cls, modules, names, excluded, placement, kl_weight, example_inputs, gate_options)
    dg = None
    if coupled and kind == "lognormal" and placement is None and example_inputs is None:
        dg = _default_trace(model)           # gates that compact() can remove, without asking for inputs
        if dg is None:
            placement = "bn"
            warnings.warn(f"add_gates could not trace {type(model).__name__} on an input inferred from its first "
                          "layer, so gates are placed per layer (after BatchNorm where one follows); channels that a "
                          "residual sum or a depthwise/grouped convolution ties together may then not be removable "
                          "by compact(): pass example_inputs= (an input the model accepts) to gate each coupled "
                          "group once", stacklevel=2)
    if coupled and (example_inputs is not None or dg is not None):
        if kind != "lognormal":
            raise ValueError(f"kind={kind!r} gates are placed per layer (their prior needs the one layer that feeds "
                             "each unit): call add_gates without example_inputs, or with coupled=False")
        if placement == "output":
            raise ValueError("placement='output' puts gates before BatchNorm, where a pruned channel is not 0 and "
                             "cannot be removed; coupled gates sit after BatchNorm (use coupled=False for 'output')")
        if dg is None:
            dg = trace(model, example_inputs)
        return _add_coupled(model, cls, names, layers is None, excluded, kl_weight, dg, gate_options)
    placement = placement or "output"
    existing = {n: g for n, (g, _) in sites(model).items()}     # a module never gets a second gate
    plan, out = [], {}
    for name in names:
        if name in excluded:
            continue
        target = (following_bn(model, name, units(modules[name])[0]) or name) if placement == "bn" else name
        if target in existing:
            if not isinstance(existing[target], cls):
                raise ValueError(f"{target!r} already has a {type(existing[target]).__name__}; remove it before "
                                 f"adding kind={kind!r} gates")
            out[target] = existing[target]
            continue
        plan.append((name, target))
    # build every gate before attaching any, so that a bad option leaves the model untouched
    built = []
    for name, target in plan:
        gate = cls.from_layer(modules[name], site=modules[target], kl_weight=_kl_weight_for(kl_weight, [name]),
                              **gate_options)
        dev = device_of(modules[target])
        built.append((target, gate if dev is None else gate.to(device=dev)))
    for target, gate in built:
        attach(modules[target], gate)
        out[target] = gate
    return out


def _add_after(model, cls, modules, names, excluded, placement, kl_weight, example_inputs, gate_options):
    names = [n for n in names if n not in excluded]
    if placement.startswith(AFTER) and len(names) != 1:
        raise ValueError(f"placement={placement!r} gates one layer: pass layers=[<that layer>], got {names}")
    existing, hosted = sites(model), site_layers(model)
    plan, out = [], {}
    for name in names:
        target = _after_target(model, modules, name, placement)
        if target in existing:
            gate = existing[target][0]
            if hosted.get(target) != name or not isinstance(gate, cls):
                raise ValueError(f"{target!r} already hosts a {type(gate).__name__} placed differently; remove it "
                                 "first")
            out[target] = gate           # the same call again: idempotent
            continue
        plan.append((name, target))
    hosts = [t for _, t in plan]
    if len(set(hosts)) != len(hosts):
        raise ValueError(f"two layers would be gated after the same module: {[p for p in plan if hosts.count(p[1]) > 1]}")
    if hosts:
        _check_runs_once(model, hosts, example_inputs)
    built = []          # every gate built (options checked) before the first is attached
    for name, target in plan:
        gate = cls.from_layer(modules[name], kl_weight=_kl_weight_for(kl_weight, [name]), **gate_options)
        dev = device_of(modules[name])
        built.append((name, target, gate if dev is None else gate.to(device=dev)))
    for name, target, gate in built:
        attach(modules[target], gate, layer=name)
        out[target] = gate
    return out


def _add_coupled(model, cls, names, by_default, excluded, kl_weight, dg, gate_options):
    modules = dict(model.named_modules())
    listed = set(names)
    existing = sites(model)
    out, skipped, plan = {}, [], []
    for g in channel_groups(model, dg=dg):
        if by_default:
            wanted = bool(g.producers) and all(p in listed for p in g.producers)
        else:
            wanted = any(p in listed for p in g.producers)
        if not wanted or any(p in excluded for p in g.producers):
            continue
        if g.problem is not None:
            skipped.append(f"{g.root}: {g.problem}")
            continue
        have = [existing.get(s, (None, 1))[0] for s in g.sites]
        others = [p for p in g.producers if p not in g.sites and p in existing]
        if not others and have[0] is not None and all(h is have[0] for h in have):
            out[g.sites[0]] = have[0]
            continue
        if others or any(h is not None for h in have):
            raise ValueError(f"the channels of {sorted(set(g.sites) | set(g.producers))} already carry gates placed "
                             "differently; add coupled gates to a model without gates")
        plan.append(g)
    # every gate is built (options checked) before the first is attached: a failure leaves the model as it was
    built = []
    for g in plan:
        dim = -1 if g.linear_only else (1 if g.tiles == 1 else 2)
        gate = cls(g.size // g.tiles, dim=dim, kl_weight=_kl_weight_for(kl_weight, g.producers), **gate_options)
        dev = device_of(modules[g.sites[0]])
        built.append((g, gate if dev is None else gate.to(device=dev)))
    for g, gate in built:
        for s in g.sites:
            attach(modules[s], gate, g.tiles)
        out[g.sites[0]] = gate
    if skipped:
        more = f" (and {len(skipped) - 5} more)" if len(skipped) > 5 else ""
        warnings.warn("add_gates left these channel groups ungated, their channels cannot be removed exactly: "
                      + "; ".join(skipped[:5]) + more, stacklevel=3)
    order = {n: i for i, n in enumerate(modules)}
    return dict(sorted(out.items(), key=lambda kv: order[kv[0]]))


# ----------------------------------------------------------------------------------------------------------------
# configuration (for checkpoints)

def _kind_of(gate: nn.Module) -> str:
    """The registered kind, else ``module:qualname`` of a fastbayes gate class (e.g. one not in KINDS yet)."""
    for k, cls in KINDS.items():
        if type(gate) is cls:
            return k
    cls = type(gate)
    if not cls.__module__.startswith("fastbayes."):
        raise ValueError(f"unknown gate type {cls.__name__}; known kinds: {tuple(KINDS)}")
    return f"{cls.__module__}:{cls.__qualname__}"


def _gate_class(kind: str):
    if kind in KINDS:
        return KINDS[kind]
    module, _, qualname = kind.partition(":")
    if not module.startswith("fastbayes.") or not qualname:   # never import what a file names outside fastbayes
        raise ValueError(f"config kind must be one of {tuple(KINDS)} or a fastbayes gate class, got {kind!r}")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _gate_options(gate: nn.Module) -> dict:
    """The constructor arguments a gate keeps as attributes (the rest, e.g. init values, live in its state)."""
    params = list(inspect.signature(type(gate).__init__).parameters)[1:]
    opts = {p: getattr(gate, p) for p in params if hasattr(gate, p) and not p.startswith("init_")}
    opts["num_features"] = gate.num_features
    return opts


def gate_config(model: nn.Module) -> list[dict]:
    """A plain-data description of every gate: kind, constructor options, and its sites with their tiling."""
    entries: dict[int, dict] = {}
    layers = site_layers(model)
    for name, (gate, tiles) in sites(model).items():
        e = entries.setdefault(id(gate), {"kind": _kind_of(gate), "options": _gate_options(gate), "sites": []})
        e["sites"].append([name, tiles] + ([layers[name]] if name in layers else []))
    return list(entries.values())


def attach_gates(model: nn.Module, config: list[dict]) -> dict[str, nn.Module]:
    """Recreate the gates described by ``gate_config`` on a model without gates; returns ``gates(model)``."""
    modules = dict(model.named_modules())
    for e in config:
        cls = _gate_class(e["kind"])
        missing = [s for s, *rest in e["sites"] if s not in modules or (rest[1:] and rest[1] not in modules)]
        if missing:
            raise ValueError(f"config sites (or their gated layers) not found in the model: {missing}")
        taken = [s for s, *_ in e["sites"] if GATE_ATTR in modules[s]._modules]
        if taken:
            raise ValueError(f"model already has gates at {taken}")
        opts = dict(e["options"])
        units = opts.pop("num_features")
        gate = cls(units, **opts)
        site = e["sites"][0]
        device = device_of(modules[site[2] if len(site) > 2 else site[0]])
        if device is not None:
            gate = gate.to(device=device)
        for s, tiles, *layer in e["sites"]:
            attach(modules[s], gate, int(tiles), layer[0] if layer else None)
    return gates(model)


# names that lived here before nn/ was split (sites, graph, penalty): still importable, with a DeprecationWarning
_MOVED = {"kl_loss": "fastbayes.nn.penalty", "param_groups": "fastbayes.nn.penalty",
          "default_layers": "fastbayes.nn.sites", "select_layers": "fastbayes.nn.sites",
          "channel_groups": "fastbayes.graph", "ChannelGroup": "fastbayes.graph",
          "dependency_graph": "fastbayes.graph"}


def __getattr__(name):
    if name in _MOVED:
        warnings.warn(f"fastbayes.nn.insert.{name} moved to {_MOVED[name]}.{name}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module 'fastbayes.nn.insert' has no attribute {name!r}")
