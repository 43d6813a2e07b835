"""Torch-Pruning's dependency graph seen from fastbayes: which output channels of a model must be removed together.

Used by ``add_gates`` (one gate per group of coupled channels), ``fastbayes.prune.compact`` and the ``Shrinker``.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .layers import BATCH_NORMS, CONV, units


def as_args(example_inputs):
    """Torch-Pruning calls ``model(*x)`` first: a bare tensor must become a 1-tuple, or it is unpacked."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (list, tuple, dict)):
        return example_inputs
    raise ValueError(f"example_inputs must be a tensor, a tuple/list of model arguments or a dict of keyword "
                     f"arguments, got {type(example_inputs).__name__}")


@contextlib.contextmanager
def _hooks_restored(model: nn.Module):
    """Every module's forward hooks as they were, whatever happens inside (Torch-Pruning's tracing hooks stay behind
    when a trace fails, and keep each forward's autograd graph alive)."""
    saved = [(m, dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in model.modules()]
    try:
        yield
    finally:
        for m, hooks, pre in saved:     # same dict objects, same order: the users' hook handles stay valid
            if m._forward_hooks != hooks:
                m._forward_hooks.clear()
                m._forward_hooks.update(hooks)
            if m._forward_pre_hooks != pre:
                m._forward_pre_hooks.clear()
                m._forward_pre_hooks.update(pre)


def dependency_graph(model: nn.Module, example_inputs, unwrapped=()):
    """Torch-Pruning's DependencyGraph of ``model`` traced on ``example_inputs``.

    ``unwrapped``: parameters outside Torch-Pruning's known layers (pruned along dim 0), as its documentation asks.
    A failed trace raises RuntimeError and leaves the model's hooks as they were.
    """
    import torch_pruning as tp
    args = as_args(example_inputs)
    unwrapped = [(p, 0) for p in unwrapped]
    with _hooks_restored(model):
        try:
            return tp.DependencyGraph().build_dependency(model, args, unwrapped_parameters=unwrapped or None)
        except Exception as e:   # a wrong input shape, or e.g. channel shuffles (a division by zero in TP)
            raise RuntimeError(f"Torch-Pruning could not trace {type(model).__name__} on example_inputs "
                               f"({type(e).__name__}: {e}); per-layer gates (add_gates without example_inputs) "
                               "still work, compact() does not") from e


@dataclass
class ChannelGroup:
    """Channels that Torch-Pruning removes together, seen from fastbayes.

    ``maps[name]`` pairs the indices a module of the group holds with the root's indices: for every site and
    every grouped convolution (keyed ``name`` for sites, ``(name, "in"|"out", groups)`` for grouped convs).
    """
    root: str
    size: int
    producers: list[str]
    sites: list[str]
    tiles: int = 1
    problem: str | None = None
    maps: dict = field(default_factory=dict, repr=False)
    tp_group: object = field(default=None, repr=False)
    linear_only: bool = False


_PASS_THROUGH = {"ELEMENTWISE", "CONCAT", "SPLIT", "RESHAPE", "UNBIND", "EXPAND", "SLICE"}


def channel_groups(model: nn.Module, example_inputs=None, *, dg=None) -> list[ChannelGroup]:
    """Every group of coupled output channels of ``model``'s Conv/Linear layers, in module order.

    ``problem`` says why a group's channels cannot be gated so that removing them is exact (a LayerNorm,
    GroupNorm or attention layer mixes them, or a BatchNorm holds channels of several groups, as after a
    concatenation); such groups are left ungated by add_gates and untouched by compact.
    """
    if dg is None:
        if example_inputs is None:
            raise ValueError("example_inputs is required to trace the model")
        dg = dependency_graph(model, example_inputs)   # a model with gates: use fastbayes.nn.sites.trace
    names = {m: n for n, m in model.named_modules()}
    modules = dict(model.named_modules())
    order = {n: i for i, n in enumerate(modules)}
    out = []
    for group in dg.get_all_groups():
        root = group[0].dep.target.module
        size = len(group[0].idxs)
        producers, bns, maps, problem, tiles = [], [], {}, None, 1
        for item in group:
            m, fn = item.dep.target.module, item.dep.handler
            kind = item.dep.target.type.name
            name = names.get(m) if isinstance(m, nn.Module) else None
            pair = (list(item.idxs), list(item.root_idxs))
            if isinstance(m, BATCH_NORMS):
                if name not in bns:
                    bns.append(name)
                    maps[name] = pair
            elif isinstance(m, (nn.Linear, CONV)):
                is_out = dg.is_out_channel_pruning_fn(fn)
                if is_out and name not in producers:
                    producers.append(name)
                    maps[name] = pair
                if isinstance(m, CONV) and 1 < m.groups and not (m.groups == m.out_channels and m.out_channels > 1):
                    side = "out" if is_out else "in"
                    maps[(name, side, m.groups)] = pair
                    channels = m.out_channels if is_out else m.in_channels
                    if pair[0] != pair[1] or len(pair[0]) != channels:
                        problem = problem or f"grouped conv {name} holds channels of several groups"
                    tiles = tiles * m.groups // math.gcd(tiles, m.groups)
            elif isinstance(m, nn.PReLU) or kind in _PASS_THROUGH:
                pass
            elif kind == "OUTPUT":
                problem = problem or "these channels are outputs of the model"
            else:
                what = name or ("a parameter" if isinstance(m, nn.Parameter) else type(m).__name__)
                problem = problem or f"{what} ({type(m).__name__}) mixes or reshapes these channels"
        feeds_bn_only = set()
        for p in producers:
            outs = dg.module2node[modules[p]].outputs
            if outs and all(isinstance(o.module, BATCH_NORMS) and names.get(o.module) in bns for o in outs):
                feeds_bn_only.add(p)
        site_names = sorted(set(bns) | (set(producers) - feeds_bn_only), key=order.get)
        for s in site_names:
            idxs, roots = maps[s]
            if idxs != roots or len(idxs) != units(modules[s])[0] or len(idxs) != size:
                problem = problem or f"{s} holds channels of several groups (a concatenation into a BatchNorm?)"
        if size % tiles:
            problem = problem or f"{size} channels do not split into {tiles} conv groups"
        linear_only = all(isinstance(modules[s], nn.Linear) for s in site_names)
        if tiles > 1 and any(isinstance(modules[s], nn.Linear) for s in site_names) and not linear_only:
            problem = problem or "a grouped conv couples Linear and Conv outputs"
        out.append(ChannelGroup(names[root], size, sorted(producers, key=order.get), site_names, tiles, problem,
                                maps, group, linear_only))
    return sorted(out, key=lambda g: order.get(g.sites[0] if g.sites else g.root))
