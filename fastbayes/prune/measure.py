"""Measuring a model: parameters, FLOPs (torch.utils.flop_counter) and median latency.

``example_inputs`` takes the forms ``compact`` takes (``fastbayes.graph.as_args``): a tensor, a tuple or list of
positional arguments, or a dict of keyword arguments.
"""
from __future__ import annotations

import math
import statistics
import time

import torch
from torch import nn

from ..graph import as_args


def _call(model: nn.Module, args):
    return model(**args) if isinstance(args, dict) else model(*args)


def _device(args) -> torch.device:
    values = args.values() if isinstance(args, dict) else args
    return next((t.device for t in values if isinstance(t, torch.Tensor)), torch.device("cpu"))


def _count(name: str, v, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return v


def count_params(model: nn.Module, trainable_only: bool = True) -> int:
    """Parameters of ``model`` (gates excluded), each shared tensor once."""
    seen, total = set(), 0
    for name, p in model.named_parameters():
        if "fastbayes_gate" in name or id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def _gated_layer(model: nn.Module, site: str, after: dict) -> str | None:
    """The Linear/Conv whose units the gate at ``site`` gates."""
    from ..layers import WEIGHTED
    if site in after:
        return after[site]
    modules = dict(model.named_modules())
    if isinstance(modules[site], WEIGHTED):
        return site
    weighted = [n for n, m in modules.items() if isinstance(m, WEIGHTED)]
    before = [n for n in weighted if list(modules).index(n) < list(modules).index(site)]
    return before[-1] if before else None      # a BatchNorm site: the layer before it


@torch.no_grad()
def bmrs_compression_pct(model: nn.Module) -> float:
    """% of trainable parameters removed, counted as BMRS's released code counts it (``get_true_parameter_
    compression_percent``): the total holds every trainable parameter, the gates' μ and log σ included; removed are
    2 per masked unit (its μ, log σ), the incoming weight rows of masked units, their outgoing weight columns in the
    next Linear/Conv when it reads the units directly (not through a flatten), and any weight that is exactly 0.
    Biases are never counted as removed.  Units masked by log-normal or Bernoulli gates alike."""
    from ..layers import WEIGHTED
    from ..nn.sites import site_layers, sites
    modules = dict(model.named_modules())
    weighted = [n for n, m in modules.items() if isinstance(m, WEIGHTED)]
    zero = {n: modules[n].weight == 0 for n in weighted}
    removed, total = 0, 0
    for p in model.parameters():
        total += p.numel() if p.requires_grad else 0
    after = site_layers(model)
    for site, (gate, tiles) in sites(model).items():
        mask = getattr(gate, "mask", None)
        layer = _gated_layer(model, site, after)
        if mask is None or layer is None:
            continue
        off = ~mask.bool().reshape(-1).repeat(tiles).cpu()
        removed += 2 * int((~mask.bool()).sum())
        zero[layer][off.to(zero[layer].device)] = True
        i = weighted.index(layer)
        if i + 1 < len(weighted):
            nxt = zero[weighted[i + 1]]
            if nxt.dim() > 1 and nxt.shape[1] == off.numel():
                nxt[:, off.to(nxt.device)] = True
    removed += sum(int(z.sum()) for n, z in zero.items() if modules[n].weight.requires_grad)
    return 100.0 * removed / max(total, 1)


def count_flops(model: nn.Module, example_inputs) -> int:
    """FLOPs of one eval-mode forward on ``example_inputs`` (multiply-add = 2 FLOPs), by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode
    args = as_args(example_inputs)
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            _call(model, args)
    finally:
        model.train(was)
    return int(fc.get_total_flops())


def _check_latency_options(warmup, repeats, min_time) -> None:
    _count("warmup", warmup, 0)
    _count("repeats", repeats, 1)
    if isinstance(min_time, bool) or not isinstance(min_time, (int, float)) or not math.isfinite(min_time) \
            or min_time < 0:
        raise ValueError(f"min_time must be a finite number of seconds >= 0, got {min_time!r}")


def latency_ms(model: nn.Module, example_inputs, *, warmup: int = 5, repeats: int = 30, min_time: float = 0.2) -> float:
    """Median wall time in ms of an eval-mode forward, after ``warmup`` calls; at least ``repeats`` calls (>= 1) and
    ``min_time`` seconds.  CUDA work is synchronised around every call."""
    _check_latency_options(warmup, repeats, min_time)
    args = as_args(example_inputs)
    dev = _device(args)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    was = model.training
    model.eval()
    times = []
    try:
        with torch.no_grad():
            for _ in range(warmup):
                _call(model, args)
            sync()
            start = time.perf_counter()
            while len(times) < repeats or time.perf_counter() - start < min_time:
                t0 = time.perf_counter()
                _call(model, args)
                sync()
                times.append(time.perf_counter() - t0)
                if len(times) >= 10 * repeats:
                    break
    finally:
        model.train(was)
    return 1e3 * statistics.median(times)


def measure(model: nn.Module, example_inputs, **latency_options) -> dict:
    """{"params", "flops", "latency_ms", "device"} of ``model`` on ``example_inputs`` (eval mode); the options
    (``warmup``, ``repeats``, ``min_time``) go to ``latency_ms``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    unknown = set(latency_options) - {"warmup", "repeats", "min_time"}
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}; measure takes warmup, repeats and min_time")
    _check_latency_options(latency_options.get("warmup", 5), latency_options.get("repeats", 30),
                           latency_options.get("min_time", 0.2))
    args = as_args(example_inputs)
    dev = _device(args)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    return {"params": count_params(model), "flops": count_flops(model, example_inputs),
            "latency_ms": latency_ms(model, example_inputs, **latency_options), "device": name}
