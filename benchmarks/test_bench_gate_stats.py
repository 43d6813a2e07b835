"""gate_stats with backward for ~26,000 units spread like ResNet-50's 53 conv layers, providers side by side.

Providers: ``reference-loop`` (eager reference per layer, autograd — how per-layer noise modules compute their KL),
``reference`` (eager reference on the flat vector), ``reference+compile`` (torch.compile of that), ``cpu`` (the fused
op, forward + fused backward).  Goal: >= 10x over the per-layer loop and faster than torch.compile.
"""
import pytest
import torch

import fastbayes as fb
from fastbayes.reference.gate_stats import gate_stats as ref_gate_stats

# output channels of torchvision's resnet50 convolutions, in order (53 layers, 26,560 units)
_STAGES = [(64, 256, 3), (128, 512, 4), (256, 1024, 6), (512, 2048, 3)]
WIDTHS = [64]
for mid, out, blocks in _STAGES:
    for i in range(blocks):
        WIDTHS += [mid, mid, out] + ([out] if i == 0 else [])


def _params():
    g = torch.Generator().manual_seed(0)
    return [((torch.rand(w, generator=g) * -10).requires_grad_(), (torch.rand(w, generator=g) * 4 - 5).requires_grad_())
            for w in WIDTHS]


def _ref_flat(mu, ls):
    return ref_gate_stats(mu, ls)[0].sum()


PROVIDERS = ["reference-loop", "reference", "reference+compile", "cpu", "triton", "cuda"]
assert sum(WIDTHS) == 26560


@pytest.mark.parametrize("provider", PROVIDERS)
def test_gate_stats_fwd_bwd(benchmark, provider):
    assert len(WIDTHS) == 53
    layers = _params()
    device = "cuda" if provider in ("cuda", "triton") else "cpu"
    if provider in ("cpu", "triton", "cuda"):
        if not fb.backends.available()[provider] or fb.backends.triton_mode() == "interpreter" and provider == "triton":
            pytest.skip(f"{provider} not available for timing here")
    layers = [(m.detach().to(device).requires_grad_(), l.detach().to(device).requires_grad_()) for m, l in layers]
    mu = torch.cat([m.detach() for m, _ in layers]).requires_grad_()
    ls = torch.cat([l.detach() for _, l in layers]).requires_grad_()

    if provider == "reference-loop":
        def fn():
            total = sum(ref_gate_stats(m, l)[0].sum() for m, l in layers)
            total.backward()
    elif provider == "reference":
        def fn():
            _ref_flat(mu, ls).backward()
    elif provider == "reference+compile":
        cf = torch.compile(_ref_flat)

        def fn():
            cf(mu, ls).backward()
    else:
        def fn():
            with fb.backends.use(provider):
                fb.ops.gate_stats(mu, ls)[0].sum().backward()

    fn()
    benchmark.group = f"gate_stats fwd+bwd, {mu.numel()} units in 53 layers"
    benchmark.extra_info["provider"] = provider
    if device == "cuda":
        def timed():
            fn()
            torch.cuda.synchronize()
        benchmark.pedantic(timed, rounds=20, warmup_rounds=3)
    else:
        benchmark.pedantic(fn, rounds=15, warmup_rounds=2)
