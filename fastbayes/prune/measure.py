"""Measuring a model: parameters, FLOPs (torch.utils.flop_counter) and median latency."""
from __future__ import annotations

import statistics
import time

import torch
from torch import nn


def count_params(model: nn.Module, trainable_only: bool = True) -> int:
    """Parameters of ``model`` (gates excluded), each shared tensor once."""
    seen, total = set(), 0
    for name, p in model.named_parameters():
        if "fastbayes_gate" in name or id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def count_flops(model: nn.Module, example_inputs) -> int:
    """FLOPs of one eval-mode forward on ``example_inputs`` (multiply-add = 2 FLOPs), by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(*args)
    finally:
        model.train(was)
    return int(fc.get_total_flops())


def latency_ms(model: nn.Module, example_inputs, *, warmup: int = 5, repeats: int = 30, min_time: float = 0.2) -> float:
    """Median wall time in ms of an eval-mode forward, after ``warmup`` calls; at least ``repeats`` calls and
    ``min_time`` seconds.  CUDA work is synchronised around every call."""
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    dev = next((t.device for t in args if isinstance(t, torch.Tensor)), torch.device("cpu"))
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    was = model.training
    model.eval()
    times = []
    try:
        with torch.no_grad():
            for _ in range(warmup):
                model(*args)
            sync()
            start = time.perf_counter()
            while len(times) < repeats or time.perf_counter() - start < min_time:
                t0 = time.perf_counter()
                model(*args)
                sync()
                times.append(time.perf_counter() - t0)
                if len(times) >= 10 * repeats:
                    break
    finally:
        model.train(was)
    return 1e3 * statistics.median(times)


def measure(model: nn.Module, example_inputs, **latency_options) -> dict:
    """{"params", "flops", "latency_ms", "device"} of ``model`` on ``example_inputs`` (eval mode)."""
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    dev = next((t.device for t in args if isinstance(t, torch.Tensor)), torch.device("cpu"))
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    return {"params": count_params(model), "flops": count_flops(model, example_inputs),
            "latency_ms": latency_ms(model, example_inputs, **latency_options), "device": name}
