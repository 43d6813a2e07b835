"""Per-call cost of a gate op on a small activation, against a plain multiply — what a paper-sized model pays per
gated layer and step.  x is (128, 150) float32 (the BMRS MLP's hidden layer at batch 128); every provider runs
forward + backward through autograd, timed round-robin in one run (``fastbayes.benchtools.interleaved``):

* ``plain``: y = x · s with s a [150] parameter (the floor: one broadcast multiply and its backward);
* ``lognormal:<granularity>`` / ``bernoulli``: ``fb.ops.lognormal_noise`` / ``fb.ops.bernoulli_gate``;
* ``gate-module:<granularity>``: a ``fb.nn.LogNormalGate`` in training mode (the path models take).

``extra_info`` holds the medians (µs) and each provider's ratio to ``plain``.  Goal: <= 1.3x, must reach <= 2x
(for "sample"/"element" the draws add per-element work that no multiply has; see ns_per_element).
"""
import pytest
import torch

import fastbayes as fb
from fastbayes.benchtools import interleaved

SHAPE = (128, 150)


def _providers():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=g).requires_grad_()
    grad = torch.randn(SHAPE, generator=g)
    s = torch.rand(SHAPE[1], generator=g).requires_grad_()
    mu = (torch.randn(SHAPE[1], generator=g) - 1).requires_grad_()
    ls = torch.full((SHAPE[1],), -2.0).requires_grad_()
    th = torch.full((SHAPE[1],), 0.9).requires_grad_()
    fns = {"plain": lambda: (x * s).backward(grad),
           "bernoulli": lambda: fb.ops.bernoulli_gate(x, th).backward(grad)}
    for gran in ("batch", "sample", "element"):
        fns[f"lognormal:{gran}"] = lambda gran=gran: fb.ops.lognormal_noise(x, mu, ls, granularity=gran).backward(grad)
        gate = fb.nn.LogNormalGate(SHAPE[1], granularity=gran)
        fns[f"gate-module:{gran}"] = lambda gate=gate: gate(x).backward(grad)
    return fns


def test_per_call_cost(benchmark):
    fns = _providers()
    benchmark.group = f"per call fwd+bwd {SHAPE}"
    benchmark.extra_info["provider"] = "lognormal:batch"
    if getattr(benchmark, "disabled", False):
        for fn in fns.values():
            fn()
        return
    ms = interleaved(fns, rounds=200, inner=5)
    benchmark.extra_info["interleaved_us"] = {p: 1e3 * v for p, v in ms.items()}
    benchmark.extra_info["ratio_vs_plain"] = {p: v / ms["plain"] for p, v in ms.items()}
    benchmark.extra_info["ns_per_element"] = {p: 1e6 * v / (SHAPE[0] * SHAPE[1]) for p, v in ms.items()}
    benchmark.pedantic(fns["lognormal:batch"], rounds=50, warmup_rounds=5)
