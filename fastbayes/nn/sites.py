"""Where gates live in a model: the layer sites, their hooks, unit axes and the layer selection.

A gate becomes a child ``fastbayes_gate`` of the module whose output it multiplies, and a forward hook applies it, so
the model's own parameters keep their names and its forward needs no change (see ``fastbayes.nn.insert``).  Every
kind of gate (log-normal, Bernoulli) uses this one mechanism.
"""
from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn

from ..graph import dependency_graph
from ..layers import BATCH_NORMS, CONV, units

GATE_ATTR = "fastbayes_gate"


def apply_gate(module: nn.Module, inputs, output, tiles: int = 1, layer: str | None = None):
    # ``layer``: for a gate hosted after an activation/pooling module, the Linear/Conv whose units it gates
    gate = getattr(module, GATE_ATTR)
    if tiles == 1:
        return gate(output)
    # one unit per position of a grouped conv's channel groups: [.., tiles·u, ..] -> [.., tiles, u, ..]
    d = -1 if isinstance(module, nn.Linear) else 1
    y = gate(output.unflatten(d, (tiles, output.shape[d] // tiles)))
    return y.flatten(1, 2) if d == 1 else y.flatten(-2, -1)


def hook_tiles(hook) -> int | None:
    """tiles of a gate hook, None for any other hook."""
    if hook is apply_gate:
        return 1
    if isinstance(hook, functools.partial) and hook.func is apply_gate:
        return hook.keywords.get("tiles", 1)
    return None


def hook_layer(hook) -> str | None:
    """The gated layer named by a gate hook hosted after an activation (``placement="activation"``/"after:")."""
    if isinstance(hook, functools.partial) and hook.func is apply_gate:
        return hook.keywords.get("layer")
    return None


def attach(module: nn.Module, gate: nn.Module, tiles: int = 1, layer: str | None = None) -> None:
    """Host ``gate`` on ``module``'s output; ``layer`` names the Linear/Conv whose units it gates when ``module`` is
    not that layer or its BatchNorm (an activation, a pooling layer), which is what compact() folds it into."""
    module.add_module(GATE_ATTR, gate)
    kw = {k: v for k, v in (("tiles", tiles), ("layer", layer)) if v not in (1, None)}
    module.register_forward_hook(functools.partial(apply_gate, **kw) if kw else apply_gate)


def detach(module: nn.Module) -> nn.Module:
    """Remove the gate and its hook from ``module``; returns the gate."""
    gate = module._modules.pop(GATE_ATTR)
    for key in [k for k, h in module._forward_hooks.items() if hook_tiles(h) is not None]:
        del module._forward_hooks[key]
        module._forward_hooks_with_kwargs.pop(key, None)
        module._forward_hooks_always_called.pop(key, None)
    return gate


def default_layers(model: nn.Module) -> list[str]:
    """Every Conv/Linear except the final classifier (the last Linear, or the last conv if there is none)."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, CONV))]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    last = linears[-1] if linears else (names[-1] if names else None)
    return [n for n in names if n != last]


def leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's leaf modules in registration order (the order of its data path in most models): a gate's host
    counts as a leaf and its gate does not; a Linear/Conv always counts."""
    from ..layers import WEIGHTED
    return [(n, m) for n, m in model.named_modules()
            if GATE_ATTR not in n.split(".") and (isinstance(m, WEIGHTED) or not set(m._modules) - {GATE_ATTR})]


def following_bn(model: nn.Module, name: str, units: int) -> str | None:
    order = [(n, m) for n, m in model.named_modules() if len(list(m.children())) == 0]
    for i, (n, _) in enumerate(order):
        if n == name and i + 1 < len(order):
            nxt_name, nxt = order[i + 1]
            if isinstance(nxt, BATCH_NORMS) and nxt.num_features == units:
                return nxt_name
    return None


def sites(model: nn.Module) -> dict[str, tuple[nn.Module, int]]:
    """{name of a gated module: (gate, tiles)} for every site; a coupled gate appears once per site."""
    out = {}
    for n, m in model.named_modules():
        gate = m._modules.get(GATE_ATTR)
        if gate is None:
            continue
        tiles = [t for t in map(hook_tiles, m._forward_hooks.values()) if t is not None]
        out[n] = (gate, tiles[0] if tiles else 1)
    return out


def site_layers(model: nn.Module) -> dict[str, str]:
    """{site: gated layer} for the gates hosted after an activation or pooling module."""
    out = {}
    for n, m in model.named_modules():
        if GATE_ATTR in m._modules:
            for h in m._forward_hooks.values():
                if hook_layer(h) is not None:
                    out[n] = hook_layer(h)
    return out


def fold_target(model: nn.Module, site: str, after: dict[str, str]) -> str:
    """The module whose output channels the gate at ``site`` stands for: the site itself, or for a gate hosted after
    an activation (``after`` = ``site_layers(model)``) its layer, or the BatchNorm right after that layer."""
    if site not in after:
        return site
    layer = after[site]
    return following_bn(model, layer, units(dict(model.named_modules())[layer])[0]) or layer


def gates(model: nn.Module) -> dict[str, nn.Module]:
    """{name: gate} for every gate in ``model``, each gate once (named by its first site)."""
    out, seen = {}, set()
    for n, (gate, _) in sites(model).items():
        if id(gate) not in seen:
            seen.add(id(gate))
            out[n] = gate
    return out


def device_of(module: nn.Module):
    for t in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
        return t.device
    return None


def select_layers(model: nn.Module, layers, exclude) -> tuple[dict[str, nn.Module], list[str], set[str]]:
    """(named modules, the layer names to gate, the excluded names) for ``add_gates``: ``layers`` None
    (``default_layers``), a predicate ``(name, module) -> bool`` over Linear/Conv layers, or a list of names of
    Linear/Conv layers.  Every name is checked before anything is gated."""
    modules = dict(model.named_modules())
    if layers is None:
        names = default_layers(model)
    elif callable(layers):
        names = [n for n, m in modules.items() if isinstance(m, (nn.Linear, CONV)) and layers(n, m)]
    else:
        names = _names("layers", layers)
        missing = [n for n in names if n not in modules]
        if missing:
            raise ValueError(f"layers names not found in the model: {missing}")
        wrong = {n: type(modules[n]).__name__ for n in names if not isinstance(modules[n], (nn.Linear, CONV))}
        if wrong:
            raise ValueError(f"layers must name Linear or Conv modules (gates go on their output units), got {wrong}")
    excluded = set(_names("exclude", exclude))
    unknown = excluded - set(modules)
    if unknown:
        raise ValueError(f"exclude names not found in the model: {sorted(unknown)}")
    return modules, names, excluded


def _names(arg: str, value) -> list[str]:
    if isinstance(value, str):       # a bare string would be read as its characters
        raise TypeError(f"{arg} must be a list of module names, got the string {value!r} (use [{value!r}])")
    try:
        names = list(value)
    except TypeError:
        raise TypeError(f"{arg} must be a list of module names, got {type(value).__name__}") from None
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise TypeError(f"{arg} must hold module names (strings), got {bad}")
    return names


@contextlib.contextmanager
def traceable(model: nn.Module):
    """Gates out of the forward, all parameters differentiable (the graph is read from autograd), modes restored."""
    hosts = [m for m in model.modules() if GATE_ATTR in m._modules]
    saved_hooks = [(m, dict(m._forward_hooks)) for m in hosts]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()      # tracing runs a forward: in train mode it would move BatchNorm's running statistics
        for m in hosts:
            for key in [k for k, h in m._forward_hooks.items() if hook_tiles(h) is not None]:
                del m._forward_hooks[key]
        for p, _ in flags:
            p.requires_grad_(True)
        with torch.enable_grad():
            yield
    finally:
        for m, hooks in saved_hooks:       # same dict object, same order: the users' hook handles stay valid
            m._forward_hooks.clear()
            m._forward_hooks.update(hooks)
        for p, f in flags:
            p.requires_grad_(f)
        for m, t in modes:
            m.training = t


def trace(model: nn.Module, example_inputs):
    """Torch-Pruning's dependency graph of a model that may carry gates: the gates are taken out of the forward and
    their parameters registered as unwrapped (pruned along dim 0); they never enter the traced graph."""
    params = [p for g in gates(model).values() for p in g.parameters(recurse=False)]
    with traceable(model):
        return dependency_graph(model, example_inputs, params)
