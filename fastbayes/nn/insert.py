"""Putting gates into an existing model without touching its code or its state_dict keys.

A gate becomes a child ``fastbayes_gate`` of the module whose output it multiplies, and a forward hook applies it.
So the model's own parameters keep their names (pretrained checkpoints still load), functional activations in the
model's forward need no change, ``copy.deepcopy`` and ``torch.compile`` see ordinary modules, and the gate's
parameters and mask appear in ``state_dict`` as ``<layer>.fastbayes_gate.mu`` etc.

Two placements:

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

Gating after a ReLU is the same as gating before it, since θ > 0 and ReLU(θz) = θ·ReLU(z).
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn

from ..ops.gate_stats import stats as flat_gate_stats
from ..reference.gate_stats import LOG_SIGMA_MAX, LOG_SIGMA_MIN
from .gates import LogNormalGate

GATE_ATTR = "fastbayes_gate"
KINDS = {"lognormal": LogNormalGate}
_BN = nn.modules.batchnorm._BatchNorm        # BatchNorm1d/2d/3d, SyncBatchNorm
_CONV = nn.modules.conv._ConvNd


def _apply_gate(module: nn.Module, inputs, output, tiles: int = 1):
    gate = getattr(module, GATE_ATTR)
    if tiles == 1:
        return gate(output)
    # one unit per position of a grouped conv's channel groups: [.., tiles·u, ..] -> [.., tiles, u, ..]
    d = -1 if isinstance(module, nn.Linear) else 1
    y = gate(output.unflatten(d, (tiles, output.shape[d] // tiles)))
    return y.flatten(1, 2) if d == 1 else y.flatten(-2, -1)


def _hook_tiles(hook) -> int | None:
    """tiles of a gate hook, None for any other hook."""
    if hook is _apply_gate:
        return 1
    if isinstance(hook, functools.partial) and hook.func is _apply_gate:
        return hook.keywords.get("tiles", 1)
    return None


def _attach(module: nn.Module, gate: nn.Module, tiles: int = 1) -> None:
    module.add_module(GATE_ATTR, gate)
    module.register_forward_hook(_apply_gate if tiles == 1 else functools.partial(_apply_gate, tiles=tiles))


def _detach(module: nn.Module) -> nn.Module:
    """Remove the gate and its hook from ``module``; returns the gate."""
    gate = module._modules.pop(GATE_ATTR)
    for key in [k for k, h in module._forward_hooks.items() if _hook_tiles(h) is not None]:
        del module._forward_hooks[key]
        module._forward_hooks_with_kwargs.pop(key, None)
        module._forward_hooks_always_called.pop(key, None)
    return gate


def _units(layer: nn.Module) -> tuple[int, int]:
    """(units, unit dim) of a layer's output."""
    if isinstance(layer, nn.Linear):
        return layer.out_features, -1
    if isinstance(layer, _CONV):
        return layer.out_channels, 1
    if isinstance(layer, _BN):
        return layer.num_features, 1
    raise ValueError(f"cannot gate a {type(layer).__name__}: expected Linear, Conv or BatchNorm")


def default_layers(model: nn.Module) -> list[str]:
    """Every Conv/Linear except the final classifier (the last Linear, or the last conv if there is none)."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, _CONV))]
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


def sites(model: nn.Module) -> dict[str, tuple[nn.Module, int]]:
    """{name of a gated module: (gate, tiles)} for every site; a coupled gate appears once per site."""
    out = {}
    for n, m in model.named_modules():
        gate = m._modules.get(GATE_ATTR)
        if gate is None:
            continue
        tiles = [t for t in map(_hook_tiles, m._forward_hooks.values()) if t is not None]
        out[n] = (gate, tiles[0] if tiles else 1)
    return out


def gates(model: nn.Module) -> dict[str, nn.Module]:
    """{name: gate} for every gate in ``model``, each gate once (named by its first site)."""
    out, seen = {}, set()
    for n, (gate, _) in sites(model).items():
        if id(gate) not in seen:
            seen.add(id(gate))
            out[n] = gate
    return out


def param_groups(model: nn.Module, lr: float, gate_lr_factor: float = 10.0) -> list[dict]:
    """Optimiser parameter groups: every parameter at ``lr``, the gates' parameters at ``lr · gate_lr_factor``.

        opt = torch.optim.Adam(fastbayes.nn.param_groups(model, 1e-3), 1e-3)

    Adam moves a parameter by about its lr per step, and a prunable unit's log σ has to travel from its init (-5)
    to about +3 before a criterion can judge it; at the weights' lr that takes ~15 epochs of BMRS training, at 10×
    (SBP's VGG recipe) about 2 (docs/RESULTS.md §1).  Gates shared by coupled layers are listed once.
    """
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if not (isinstance(gate_lr_factor, (int, float)) and gate_lr_factor > 0):
        raise ValueError(f"gate_lr_factor must be a positive number, got {gate_lr_factor!r}")
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


# ----------------------------------------------------------------------------------------------------------------
# Torch-Pruning's view of the model

def _as_args(example_inputs):
    """Torch-Pruning calls ``model(*x)`` first: a bare tensor must become a 1-tuple, or it is unpacked."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (list, tuple, dict)):
        return example_inputs
    raise ValueError(f"example_inputs must be a tensor, a tuple/list of model arguments or a dict of keyword "
                     f"arguments, got {type(example_inputs).__name__}")


@contextlib.contextmanager
def _traceable(model: nn.Module):
    """Gates out of the forward, all parameters differentiable (the graph is read from autograd), modes restored."""
    hosts = [m for m in model.modules() if GATE_ATTR in m._modules]
    saved_hooks = [(m, dict(m._forward_hooks)) for m in hosts]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    try:
        for m in hosts:
            for key in [k for k, h in m._forward_hooks.items() if _hook_tiles(h) is not None]:
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


def dependency_graph(model: nn.Module, example_inputs):
    """Torch-Pruning's DependencyGraph of ``model`` with its gates taken out of the forward.

    The gates' parameters are registered as unwrapped parameters (pruned along dim 0), as Torch-Pruning's
    documentation asks for parameters outside its known layers; they never enter the traced graph.
    """
    import torch_pruning as tp
    unwrapped = [(p, 0) for g in gates(model).values() for p in g.parameters(recurse=False)]
    args = _as_args(example_inputs)
    with _traceable(model):
        try:
            return tp.DependencyGraph().build_dependency(model, args, unwrapped_parameters=unwrapped or None)
        except Exception as e:   # e.g. channel shuffles: Torch-Pruning's reshape mapping divides by zero
            raise RuntimeError(f"Torch-Pruning could not trace {type(model).__name__} ({type(e).__name__}: {e}); "
                               "per-layer gates (add_gates without example_inputs) still work, compact() does "
                               "not") from e


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
        dg = dependency_graph(model, example_inputs)
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
            if isinstance(m, _BN):
                if name not in bns:
                    bns.append(name)
                    maps[name] = pair
            elif isinstance(m, (nn.Linear, _CONV)):
                is_out = dg.is_out_channel_pruning_fn(fn)
                if is_out and name not in producers:
                    producers.append(name)
                    maps[name] = pair
                if isinstance(m, _CONV) and 1 < m.groups and not (m.groups == m.out_channels and m.out_channels > 1):
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
            if outs and all(isinstance(o.module, _BN) and names.get(o.module) in bns for o in outs):
                feeds_bn_only.add(p)
        site_names = sorted(set(bns) | (set(producers) - feeds_bn_only), key=order.get)
        for s in site_names:
            idxs, roots = maps[s]
            if idxs != roots or len(idxs) != _units(modules[s])[0] or len(idxs) != size:
                problem = problem or f"{s} holds channels of several groups (a concatenation into a BatchNorm?)"
        if size % tiles:
            problem = problem or f"{size} channels do not split into {tiles} conv groups"
        linear_only = all(isinstance(modules[s], nn.Linear) for s in site_names)
        if tiles > 1 and any(isinstance(modules[s], nn.Linear) for s in site_names) and not linear_only:
            problem = problem or "a grouped conv couples Linear and Conv outputs"
        out.append(ChannelGroup(names[root], size, sorted(producers, key=order.get), site_names, tiles, problem,
                                maps, group, linear_only))
    return sorted(out, key=lambda g: order.get(g.sites[0] if g.sites else g.root))


# ----------------------------------------------------------------------------------------------------------------

def _kl_weight_for(kl_weight, names: list[str]) -> float:
    if isinstance(kl_weight, dict):
        return next((float(kl_weight[n]) for n in names if n in kl_weight), 1.0)
    if callable(kl_weight):
        return float(kl_weight(names[0]))
    return float(kl_weight)


def _new_gate(kind, units, dim, weight, device, gate_options):
    gate = KINDS[kind](units, dim=dim, kl_weight=weight, **gate_options)
    return gate if device is None else gate.to(device=device)


def _device_of(module: nn.Module):
    for t in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
        return t.device
    return None


def select_layers(model: nn.Module, layers, exclude) -> tuple[dict[str, nn.Module], list[str], set[str]]:
    """(named modules, the layer names to gate, the excluded names) for ``add_gates`` and ``bernoulli.attach``:
    ``layers`` None (``default_layers``), a predicate ``(name, module) -> bool`` over Linear/Conv layers, or names."""
    modules = dict(model.named_modules())
    if layers is None:
        names = default_layers(model)
    elif callable(layers):
        names = [n for n, m in modules.items() if isinstance(m, (nn.Linear, _CONV)) and layers(n, m)]
    else:
        names = list(layers)
        missing = [n for n in names if n not in modules]
        if missing:
            raise ValueError(f"layers names not found in the model: {missing}")
    excluded = set(exclude)
    unknown = excluded - set(modules)
    if unknown:
        raise ValueError(f"exclude names not found in the model: {sorted(unknown)}")
    return modules, names, excluded


def add_gates(model: nn.Module, kind: str = "lognormal", *, layers: Iterable[str] | Callable | None = None,
              exclude: Iterable[str] = (), placement: str | None = None,
              kl_weight: float | dict[str, float] | Callable[[str], float] = 1.0, example_inputs=None,
              coupled: bool = True, **gate_options) -> dict[str, nn.Module]:
    """Put gates on the output units of layers of ``model`` (in place); returns {name of first site: gate}.

    Args:
        kind: "lognormal" (SBP / BMRS noise) or "bernoulli" (Bernoulli unit gates with a scale-mixture prior,
            σ1² = 2/fan_in per layer; see ``fastbayes.nn.bernoulli.attach``).
        layers: names of Conv/Linear modules to gate, or a predicate ``(name, module) -> bool``; default: every
            Conv/Linear except the final classifier.  Coupled: a group is gated if one of its layers is listed
            (by default: if none of its layers is the classifier).
        exclude: names to leave out; coupled, a group with an excluded layer stays ungated.
        placement: per layer only: "output" (default, the layer's output) or "bn" (the output of the BatchNorm
            right after the layer).  Coupled gates always sit after the BatchNorm when there is one.
        kl_weight: one weight, {layer name: weight} (SBPa-style, unlisted layers get 1; coupled: the first listed
            layer of the group), or ``name -> weight`` (coupled: called with the group's first layer).
        example_inputs: a tensor, a tuple of arguments or a dict of keyword arguments to trace the model with;
            enables the coupled placement (without them gates are placed per layer).
        coupled: with example_inputs, one gate per group of coupled channels (default); False: per layer.
        **gate_options: passed to the gate (a, b, granularity, init_mu, init_log_sigma, ...).

    Calling it again returns the existing gates and adds none (idempotent).
    """
    if kind == "bernoulli":   # lazy: nn/bernoulli.py imports this module
        from .bernoulli import attach
        return attach(model, layers, exclude=exclude, placement=placement or "output", kl_weight=kl_weight,
                      **gate_options)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {(*KINDS, 'bernoulli')}, got {kind!r}")
    if placement not in (None, "output", "bn"):
        raise ValueError(f"placement must be 'output' or 'bn', got {placement!r}")
    modules, names, excluded = select_layers(model, layers, exclude)
    if coupled and example_inputs is not None:
        if placement == "output":
            raise ValueError("placement='output' puts gates before BatchNorm, where a pruned channel is not 0 and "
                             "cannot be removed; coupled gates sit after BatchNorm (use coupled=False for 'output')")
        return _add_coupled(model, kind, names, layers is None, excluded, kl_weight, example_inputs, gate_options)
    placement = placement or "output"
    existing = {n: g for n, (g, _) in sites(model).items()}     # a module never gets a second gate
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
        gate = _new_gate(kind, units, dim, _kl_weight_for(kl_weight, [name]), _device_of(modules[target]),
                         gate_options)
        _attach(modules[target], gate)
        out[target] = gate
    return out


def _add_coupled(model, kind, names, by_default, excluded, kl_weight, example_inputs, gate_options):
    modules = dict(model.named_modules())
    listed = set(names)
    existing = sites(model)
    out, skipped = {}, []
    for g in channel_groups(model, example_inputs):
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
        dim = -1 if g.linear_only else (1 if g.tiles == 1 else 2)
        gate = _new_gate(kind, g.size // g.tiles, dim, _kl_weight_for(kl_weight, g.producers),
                         _device_of(modules[g.sites[0]]), gate_options)
        for s in g.sites:
            _attach(modules[s], gate, g.tiles)
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
    import importlib
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
    for name, (gate, tiles) in sites(model).items():
        e = entries.setdefault(id(gate), {"kind": _kind_of(gate), "options": _gate_options(gate), "sites": []})
        e["sites"].append([name, tiles])
    return list(entries.values())


def attach_gates(model: nn.Module, config: list[dict]) -> dict[str, nn.Module]:
    """Recreate the gates described by ``gate_config`` on a model without gates; returns ``gates(model)``."""
    modules = dict(model.named_modules())
    for e in config:
        cls = _gate_class(e["kind"])
        missing = [s for s, _ in e["sites"] if s not in modules]
        if missing:
            raise ValueError(f"config sites not found in the model: {missing}")
        taken = [s for s, _ in e["sites"] if GATE_ATTR in modules[s]._modules]
        if taken:
            raise ValueError(f"model already has gates at {taken}")
        opts = dict(e["options"])
        units = opts.pop("num_features")
        gate = cls(units, **opts)
        device = _device_of(modules[e["sites"][0][0]])
        if device is not None:
            gate = gate.to(device=device)
        for s, tiles in e["sites"]:
            _attach(modules[s], gate, int(tiles))
    return gates(model)


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
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    found = [g for g in gates(model).values() if isinstance(g, LogNormalGate)]
    if not found:
        raise ValueError("model has no LogNormalGate: call fastbayes.add_gates(model) first")
    total = None
    groups: dict[tuple[float, float], list[LogNormalGate]] = {}
    for g in found:
        groups.setdefault((g.a, g.b), []).append(g)
    for (a, b), gs in groups.items():
        mu = torch.cat([g.mu for g in gs]) if len(gs) > 1 else gs[0].mu
        ls = torch.cat([g.log_sigma for g in gs]) if len(gs) > 1 else gs[0].log_sigma
        ls = ls.clamp(LOG_SIGMA_MIN, LOG_SIGMA_MAX)
        scale = len(found) if reduction == "mean" else 0
        weights = _kl_weights(tuple((g.num_features, g.kl_weight) for g in gs), scale, mu.device, mu.dtype)
        kl = torch.dot(flat_gate_stats(mu, ls.to(mu.dtype), a, b)[0], weights)
        total = kl if total is None else total + kl
    return total
