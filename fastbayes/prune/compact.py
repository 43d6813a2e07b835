"""From masks to a physically smaller model: fold E[θ]·mask into the gated layers, drop the gates, remove channels.

Folding (METHODS.md §5.4) is exact because every gate multiplies the output of the module it is registered under:

* Conv/Linear site: y = (W x + b)·s  ->  W' = s·W (per output row), b' = s·b;
* BatchNorm site:   y = (γ x̂ + β)·s  ->  γ' = s·γ, β' = s·β,

with s = E[θ]·mask, the very multiplier the gated model applies in eval mode.  A pruned channel (s = 0) is then 0
at every site of its group; it can be removed when it is 0 at *all* sites of its Torch-Pruning group, given that
whatever the model does between a site and the next layer maps 0 to 0 (ReLU, SiLU, pooling, ... do; a sigmoid
does not, and ``check`` catches it).  Channels that cannot be removed keep s = 0 and stay exact.
"""
from __future__ import annotations

import copy
import warnings
from typing import Mapping

import torch
from torch import nn

from ..graph import as_args, channel_groups
from ..layers import BATCH_NORMS, CONV, HOMOGENEOUS, WEIGHTED, units
from ..nn.sites import detach, fold_target, following_bn, gates, leaves, site_layers, sites, trace

CHECK_RTOL = 1e-5


def _forward(model: nn.Module, example_inputs):
    args = as_args(example_inputs)
    return model(**args) if isinstance(args, dict) else model(*args)


def _flat(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out.detach().reshape(-1)
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        parts = [_flat(o) for o in out]
        parts = [p for p in parts if p.numel()]
        return torch.cat(parts) if parts else torch.zeros(0)
    return torch.zeros(0)


def relative_error(out, ref) -> float:
    """‖out − ref‖ / ‖ref‖ over all output tensors (computed in float64)."""
    a, b = _flat(out).double(), _flat(ref).double()
    if a.shape != b.shape:
        return float("inf")
    return float((a - b).norm() / b.norm().clamp_min(torch.finfo(torch.float64).tiny))


@torch.no_grad()
def eval_outputs(model: nn.Module, example_inputs):
    """The model's outputs in eval mode, leaving every module's train/eval flag as it was."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        return _forward(model, example_inputs)
    finally:
        for m, t in modes:
            m.training = t


def _unit_shape(gate: nn.Module) -> list[int]:
    d = gate.dim if gate.dim >= 0 else 1
    shape = [1] * (d + 1)
    shape[d] = gate.num_features
    return shape


@torch.no_grad()
def _eval_scale(gate: nn.Module, tiles: int) -> torch.Tensor:
    """The multiplier a gate applies in eval mode, one per channel of its site (E[θ]·mask for LogNormalGate)."""
    ref = next(iter(gate.parameters()), None)
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    device = ref.device if ref is not None else None
    was = gate.training
    gate.eval()
    try:
        s = gate(torch.ones(_unit_shape(gate), dtype=dtype, device=device)).reshape(-1)
    finally:
        gate.train(was)
    return s.repeat(tiles)


@torch.no_grad()
def _fold(module: nn.Module, s: torch.Tensor) -> None:
    if isinstance(module, BATCH_NORMS):
        if module.weight is None:   # affine=False: the scale becomes the affine part
            module.weight = nn.Parameter(s.to(module.running_var.dtype if module.running_var is not None
                                              else torch.float32).clone())
            module.bias = nn.Parameter(torch.zeros_like(module.weight))
            module.affine = True
            return
        module.weight.mul_(s.to(module.weight.dtype))
        module.bias.mul_(s.to(module.bias.dtype))
        return
    w = module.weight
    if isinstance(module, nn.Linear):
        w.mul_(s.to(w.dtype).reshape(-1, 1))
    elif isinstance(module, CONV) and module.transposed:
        g = module.groups
        per_in, per_out = w.shape[0] // g, w.shape[1]
        st = s.to(w.dtype).reshape(g, 1, per_out).expand(g, per_in, per_out).reshape(w.shape[0], per_out)
        w.mul_(st.reshape(*st.shape, *([1] * (w.dim() - 2))))
    elif isinstance(module, CONV):
        w.mul_(s.to(w.dtype).reshape(-1, *([1] * (w.dim() - 1))))
    else:
        raise ValueError(f"cannot fold a gate into a {type(module).__name__}")
    if module.bias is not None:
        module.bias.mul_(s.to(module.bias.dtype))


def _periodic(removable: torch.Tensor, grouped: list) -> torch.Tensor:
    """Removable only at positions removable in every conv group (a grouped conv keeps equal, aligned groups)."""
    for (channels, groups), (idxs, roots) in grouped:
        t = torch.zeros(channels, dtype=torch.bool)
        t[idxs] = removable[roots]
        pos = t.reshape(groups, channels // groups).all(0).repeat(groups)
        removable = removable.clone()
        removable[roots] &= pos[idxs]
    return removable


def _settle(removable, score, grouped, min_units, round_to):
    """Give back the best pruned channels until at least ``min_units`` stay and the width is a multiple of round_to."""
    n = removable.numel()
    removable = _periodic(removable, grouped)
    order = torch.argsort(score, descending=True, stable=True)
    while bool(removable.any()):
        kept = n - int(removable.sum())
        if kept >= min(min_units, n) and (round_to is None or kept % round_to == 0):
            break
        best = order[removable[order]][0]
        removable = removable.clone()
        removable[best] = False
        removable = _periodic(removable, grouped)
    return removable


@torch.no_grad()
def _unmasked_mean(gate: nn.Module, tiles: int, scale: torch.Tensor) -> torch.Tensor:
    """E[θ] per channel ignoring the mask (what round_to and min_units rank by); the eval scale for other gates."""
    stats = getattr(gate, "stats", None)
    mean = stats()[1].reshape(-1).repeat(tiles) if callable(stats) else scale
    return mean.detach().to(device="cpu", dtype=torch.float64)


def _strip_gates(model: nn.Module):
    """Fold every gate and remove gates and hooks; returns ({fold target: (eval scale == 0, unmasked E[θ])},
    [(fold target, scale)] still to fold into the next layers' inputs).  A gate hosted after an activation (see
    ``add_gates(placement="activation")``) folds into its layer (or the BatchNorm after it) when the activation is
    positively homogeneous (ReLU(s·z) = s·ReLU(z)), otherwise into the inputs of the layers it feeds."""
    found = sites(model)
    after = site_layers(model)
    modules = dict(model.named_modules())
    out, into_consumers = {}, []
    for name, (gate, tiles) in found.items():
        s = _eval_scale(gate, tiles)
        entry = ((s == 0).cpu(), _unmasked_mean(gate, tiles, s))
        target = name
        if name in after:
            target = fold_target(model, name, after)
            if _homogeneous_path(model, target, name) and bool((s >= 0).all()):
                _fold(modules[target], s)
            else:
                into_consumers.append((name, target, s))
        else:
            _fold(modules[name], s)
        if target in out:      # two gates on one layer's units: pruned by either
            entry = (out[target][0] | entry[0], torch.maximum(out[target][1], entry[1]))
        out[target] = entry
    for name in found:
        detach(modules[name])
    return out, into_consumers


def _homogeneous_path(model: nn.Module, target: str, site: str) -> bool:
    """Every leaf module after ``target`` up to ``site`` (included), in registration order, is positively homogeneous;
    module order stands for the data path here, so anything unusual falls back to folding into the consumers."""
    names = [n for n, _ in leaves(model)]
    if target not in names or site not in names or names.index(site) <= names.index(target):
        return False
    modules = dict(model.named_modules())
    return all(isinstance(modules[n], HOMOGENEOUS) for n in names[names.index(target) + 1: names.index(site) + 1])


@torch.no_grad()
def _fold_into_consumers(model: nn.Module, dg, site: str, target: str, s: torch.Tensor) -> None:
    """y = f(z)·s after an activation f: scale the input columns of every Linear/Conv that reads these channels
    (Torch-Pruning's group gives their indices, through flattens); anything else reading them cannot fold."""
    group = next((g for g in channel_groups(model, dg=dg) if target in g.maps), None)
    if group is None:
        raise ValueError(f"cannot fold the gate after {site!r}: {target!r} is in no prunable channel group")
    idxs, roots = group.maps[target]
    scale = torch.ones(group.size, dtype=torch.float64)
    scale[roots] = s.detach().double().cpu()[idxs]
    names = {m: n for n, m in model.named_modules()}
    seen = set()
    for item in group.tp_group:
        m, fn = item.dep.target.module, item.dep.handler
        if names.get(m) == target or (id(m), fn) in seen:
            continue
        if isinstance(m, BATCH_NORMS):     # Torch-Pruning prunes a BatchNorm with an out-channel handler
            raise ValueError(f"cannot fold the gate after {site!r} into {names.get(m)!r} (BatchNorm): a BatchNorm "
                             "after a non-homogeneous activation does not commute with the gate's scale, so the "
                             "gated units cannot be folded away; gate the layer's output instead (placement='output')")
        if dg.is_out_channel_pruning_fn(fn):
            continue
        seen.add((id(m), fn))
        kind = item.dep.target.type.name
        if kind in ("ELEMENTWISE", "RESHAPE", "FLATTEN", "SPLIT", "CONCAT", "UNBIND", "EXPAND", "SLICE") or \
                not isinstance(m, nn.Module):
            continue
        if not isinstance(m, WEIGHTED) or (isinstance(m, CONV) and (m.groups != 1 or m.transposed)):
            raise ValueError(f"cannot fold the gate after {site!r} into {names.get(m, type(m).__name__)!r} "
                             f"({type(m).__name__}): only Linear and ungrouped Conv layers may read channels gated "
                             "after a non-homogeneous activation")
        cols = torch.as_tensor(list(item.idxs), dtype=torch.long)
        sc = scale[torch.as_tensor(list(item.root_idxs), dtype=torch.long)].to(m.weight.dtype).to(m.weight.device)
        shape = [1, -1] + [1] * (m.weight.dim() - 2)
        m.weight[:, cols.to(m.weight.device)] *= sc.reshape(shape)


def _copy(model: nn.Module) -> nn.Module:
    """copy.deepcopy with every gate's eval cache current first: a LogNormalGate caches E[θ]·mask keyed by tensor
    version counters, which a copy restarts at 0, so a stale cache (parameters changed since the last eval forward)
    could be taken for valid in the copy."""
    for gate in gates(model).values():
        if callable(getattr(gate, "expected_scale", None)):
            gate.expected_scale()
    return copy.deepcopy(model)


def _check_masks(model: nn.Module, masks) -> dict[str, torch.Tensor]:
    if not isinstance(masks, Mapping):
        raise ValueError(f"masks must be a dict {{layer name: bool tensor [units]}}, got {type(masks).__name__}")
    modules = dict(model.named_modules())
    missing = [n for n in masks if n not in modules]
    if missing:
        raise ValueError(f"masks names layers not found in the model: {missing}")
    out = {}
    for name, m in masks.items():
        layer = modules[name]
        if not isinstance(layer, (*WEIGHTED, BATCH_NORMS)):
            raise ValueError(f"masks[{name!r}]: {name} is a {type(layer).__name__}; masks go on Linear, Conv or "
                             "BatchNorm layers (their output units)")
        n = units(layer)[0]
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool or tuple(m.shape) != (n,):
            got = f"{m.dtype} {tuple(m.shape)}" if isinstance(m, torch.Tensor) else type(m).__name__
            raise ValueError(f"masks[{name!r}] must be a bool tensor of shape ({n},) (True = kept), got {got}")
        out[name] = m.detach().cpu()
    return out


@torch.no_grad()
def _fold_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Zero the masked units of each layer (weight rows, bias) and of the BatchNorm right after a Linear/Conv (its
    affine entries), so a masked unit is exactly 0 after that BatchNorm too; returns {module: pruned channels}."""
    modules = dict(model.named_modules())
    zero = {}
    for name, keep in masks.items():
        targets = [name]
        if isinstance(modules[name], WEIGHTED):
            bn = following_bn(model, name, keep.numel())
            if bn is not None:
                targets.append(bn)
        for t in targets:
            module = modules[t]
            ref = module.weight if getattr(module, "weight", None) is not None else module.running_var
            _fold(module, keep.to(device=ref.device if ref is not None else None, dtype=torch.float32))
            zero[t] = zero.get(t, torch.zeros_like(keep)) | ~keep
    return zero


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """A copy of ``model`` with explicit masks {layer: bool [units], True = kept} applied: the weight rows and biases
    of masked units zeroed, and the affine entries of a BatchNorm right after a masked Linear/Conv too (an
    affine-free BatchNorm gets an affine part holding the mask), so a masked unit is exactly 0 after the BatchNorm.
    This is the model ``compact(model, x, masks=masks)`` starts from and equals; gates, if any, stay."""
    masks = _check_masks(model, masks)
    out = _copy(model)
    _fold_masks(out, masks)
    return out


def _blocked_message(blocked: dict[str, tuple[int, int, str]]) -> str:
    parts = [f"{name!r} ({n} of {total} masked units kept: {why})" for name, (n, total, why) in blocked.items()]
    return ("compact() could not remove masked units of " + "; ".join(parts) + ". They stay in the model, scaled to "
            "exactly 0 (the result is still exact). Per-layer gates or masks before an ungated BatchNorm are the "
            "usual cause: gate after the BatchNorm (add_gates(..., placement='bn')) or use coupled gates "
            "(add_gates(model, example_inputs=x)).")


def compact(model: nn.Module, example_inputs, *, masks: Mapping[str, torch.Tensor] | None = None,
            round_to: int | None = None, min_units: int = 1, check: bool = True) -> nn.Module:
    """A new, physically smaller plain ``nn.Module`` equal to ``model`` masked, in eval mode (``model`` untouched).

    E[θ]·mask of every gate is folded into the module it is registered under (METHODS.md §5.4), the gates and
    their hooks are removed, and every channel whose scale is 0 at all sites of its Torch-Pruning group is removed
    with Torch-Pruning (residual sums, depthwise and grouped convolutions, concatenations and BatchNorm handled by
    its dependency graph).  With coupled gates (``add_gates(model, example_inputs=x)``) every pruning decision is
    removed; with per-layer gates a channel goes only when all its coupled layers pruned it and no ungated
    BatchNorm follows its gate.  Masked units that cannot be removed stay (exactly 0) and a UserWarning names
    their layers and why (those given back for ``min_units``/``round_to`` excepted).

    Args:
        example_inputs: a tensor, a tuple of arguments or a dict of keyword arguments to trace the model with.
        masks: explicit decisions {layer name: bool tensor [units], True = kept} on Linear/Conv/BatchNorm layers of
            a model with or without gates (e.g. ``ParticleEnsemble.consensus_mask()``): a masked unit's weight row
            and bias, and the affine entries of a BatchNorm right after the layer, become 0 (as if a gate with
            scale 0 sat after that BatchNorm), then it is removed like a gated one.
        round_to: keep widths multiples of this (extra channels: the pruned ones with the best E[θ]; they stay
            exact because their folded scale is 0).  A group whose width cannot reach a multiple keeps all.
        min_units: keep at least this many channels per group (a layer cannot lose all of them).
        check: compare the result with the masked model in eval mode on example_inputs and raise RuntimeError if
            the relative error exceeds 1e-5 (e.g. an activation with f(0) != 0 right after a gate).

    Returns the compact model in eval mode (call ``.train()`` to fine-tune it).
    """
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise ValueError(f"round_to must be None or a positive integer, got {round_to!r}")
    if isinstance(min_units, bool) or not isinstance(min_units, int) or min_units < 1:
        raise ValueError(f"min_units must be a positive integer (a layer cannot lose all its channels), "
                         f"got {min_units!r}")
    if example_inputs is None:
        raise ValueError("example_inputs is required to trace the model")
    as_args(example_inputs)
    masks = None if masks is None else _check_masks(model, masks)
    small = _copy(model)
    masked = _fold_masks(small, masks) if masks else {}
    reference = eval_outputs(small, example_inputs) if check else None
    small.eval()
    folded, into_consumers = _strip_gates(small)
    dg = trace(small, example_inputs) if into_consumers else None
    for site, target, s in into_consumers:
        _fold_into_consumers(small, dg, site, target, s)
    for name, zero in masked.items():       # a mask and a gate on one module: pruned by either
        if name in folded:
            folded[name] = (folded[name][0] | zero, folded[name][1])
        else:
            folded[name] = (zero, torch.zeros(zero.numel(), dtype=torch.float64))
    blocked: dict[str, tuple[int, int, str]] = {}
    if any(bool(z.any()) for z, _ in folded.values()):
        flags = {n: p.requires_grad for n, p in model.named_parameters()}
        dg = dg or trace(small, example_inputs)
        modules = dict(small.named_modules())
        plans, covered = [], set()
        for g in channel_groups(small, dg=dg):
            named = [k for k in g.maps if isinstance(k, str) and k in folded]
            covered.update(named)
            wanted = torch.zeros(g.size, dtype=torch.bool)
            for k in named:
                idxs, roots = g.maps[k]
                wanted[roots] |= folded[k][0][idxs]
            if not bool(wanted.any()):
                continue
            ungated = [s for s in g.sites if s not in folded]
            problem = g.problem
            if problem is None and any(not dg.module2node[modules[p]].outputs for p in g.producers):
                # Torch-Pruning marks no OUTPUT node after a model's last layer (graph.py does not see it either)
                problem = "these channels are outputs of the model"
            if problem is not None:
                removable = structural = torch.zeros_like(wanted)
            else:
                removable = torch.ones(g.size, dtype=torch.bool)
                score = torch.full((g.size,), -float("inf"), dtype=torch.float64)
                for s in g.sites:
                    idxs, roots = g.maps[s]
                    if s not in folded:      # an ungated site: its channels are not 0 there
                        removable[roots] = False
                        continue
                    zero, mean = folded[s]
                    removable[roots] &= zero[idxs]
                    score[roots] = torch.maximum(score[roots], mean[idxs])
                grouped = [((len(g.maps[k][0]), k[2]), g.maps[k]) for k in g.maps if isinstance(k, tuple)]
                structural = _periodic(removable, grouped)
                final = _settle(structural, score, grouped, min_units, round_to)
                if final.any():
                    root_item = g.tp_group[0]
                    plans.append((root_item.dep.target.module, root_item.dep.handler,
                                  final.nonzero().flatten().tolist()))
            for k in named:
                idxs, roots = g.maps[k]
                mine = torch.zeros(g.size, dtype=torch.bool)
                mine[roots] = folded[k][0][idxs]
                stuck = mine & ~structural
                if not bool(stuck.any()):
                    continue
                if problem is not None:
                    why = problem
                elif bool((stuck & ~removable).any()):
                    others = [s for s in g.sites if s != k and s in folded
                              and bool((stuck[g.maps[s][1]] & ~folded[s][0][g.maps[s][0]]).any())]
                    why = " and ".join(
                        ([f"{', '.join(map(repr, ungated))} {'is' if len(ungated) == 1 else 'are'} not gated or "
                          "masked and passes them on"] if ungated else [])
                        + ([f"coupled layers {', '.join(map(repr, others))} keep them"] if others else []))
                else:
                    why = "a grouped convolution needs them at every group position"
                blocked[k] = (int(stuck.sum()), int(mine.sum()), why)
        for name, (zero, _) in folded.items():
            if name not in covered and bool(zero.any()):
                blocked[name] = (int(zero.sum()), int(zero.sum()), "not part of any prunable channel group")
        for module, fn, idxs in plans:
            dg.get_pruning_group(module, fn, idxs).prune()
        for n, p in small.named_parameters():
            p.requires_grad_(flags.get(n, True))
    small.eval()
    if check:
        with torch.no_grad():
            err = relative_error(_forward(small, example_inputs), reference)
        if not err <= CHECK_RTOL:
            raise RuntimeError(f"the compact model differs from the masked model: relative error {err:.3g} > "
                               f"{CHECK_RTOL:g}; something between a gate and the next layer does not map 0 to 0 "
                               "(e.g. a sigmoid after an output gate), or channels reach the model's output")
    if blocked:
        warnings.warn(_blocked_message(blocked), stacklevel=2)
    return small
