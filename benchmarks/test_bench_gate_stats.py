"""gate_stats with backward for 26,560 units spread like ResNet-50's 53 conv layers, providers side by side.

Providers: ``reference-loop`` (eager reference per layer, autograd — how per-layer noise modules compute their KL),
``reference`` (eager reference on the flat vector), ``reference+compile`` (torch.compile of that), ``cpu`` (the fused
op, forward + fused backward) and ``kl_loss`` (``fb.kl_loss`` over 53 gates holding those parameters, forward +
backward: what a training step calls, the KL and its gradient in one evaluation per unit).  Goal: >= 10x over the
per-layer loop and faster than torch.compile; for ``cpu`` <= 50 ns per unit (fwd+bwd, 2 threads), reported as
``extra_info["ns_per_unit"]`` (median round / units).

Three parameter spreads: ``spread`` (μ uniform in [-10, 0], log σ in [-5, -1]: mostly deep inside [a, b]),
``around_b`` (μ ~ N(0, 1), log σ ~ N(-3, 1): the gates near their init μ = b = 0, half of them beyond b, where the
fast path's near and tail kinds work; see csrc/include/fastbayes/math.h) and ``relaxed`` (μ uniform in [-3, 0],
log σ in [1, 4]: posteriors that have relaxed towards the prior, σ ~ (b - a)/7 .. 3(b - a), as every unit BMRS
prunes does under the mean KL; both ends of [a, b] matter, and the fast path's interior kind serves them).
"""
import pytest
import torch

import fastbayes as fb
from fastbayes.nn.sites import GATE_ATTR
from fastbayes.reference.gate_stats import gate_stats as ref_gate_stats

# output channels of torchvision's resnet50 convolutions, in order (53 layers, 26,560 units)
_STAGES = [(64, 256, 3), (128, 512, 4), (256, 1024, 6), (512, 2048, 3)]
WIDTHS = [64]
for mid, out, blocks in _STAGES:
    for i in range(blocks):
        WIDTHS += [mid, mid, out] + ([out] if i == 0 else [])


def _params(spread):
    g = torch.Generator().manual_seed(0)
    if spread == "spread":
        return [((torch.rand(w, generator=g) * -10), (torch.rand(w, generator=g) * 4 - 5)) for w in WIDTHS]
    if spread == "relaxed":
        return [((torch.rand(w, generator=g) * -3), (torch.rand(w, generator=g) * 3 + 1)) for w in WIDTHS]
    return [(torch.randn(w, generator=g), torch.randn(w, generator=g) - 3) for w in WIDTHS]


def _ref_flat(mu, ls):
    return ref_gate_stats(mu, ls)[0].sum()


PROVIDERS = ["reference-loop", "reference", "reference+compile", "cpu", "kl_loss", "triton", "cuda"]
assert sum(WIDTHS) == 26560


@pytest.mark.parametrize("spread", ["spread", "around_b", "relaxed"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_gate_stats_fwd_bwd(benchmark, provider, spread):
    assert len(WIDTHS) == 53
    layers = _params(spread)
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
    elif provider == "kl_loss":
        hosts = torch.nn.ModuleList()
        for m, l in layers:
            host, gate = torch.nn.Module(), fb.nn.LogNormalGate(m.numel())
            with torch.no_grad():
                gate.mu.copy_(m)
                gate.log_sigma.copy_(l)
            host.add_module(GATE_ATTR, gate)
            hosts.append(host)

        def fn():
            fb.kl_loss(hosts).backward()
    elif provider == "reference+compile":
        cf = torch.compile(_ref_flat)

        def fn():
            cf(mu, ls).backward()
    else:
        def fn():
            with fb.backends.use(provider):
                fb.ops.gate_stats(mu, ls)[0].sum().backward()

    fn()
    benchmark.group = f"gate_stats fwd+bwd, {mu.numel()} units in 53 layers, {spread}"
    benchmark.extra_info.update(provider=provider, spread=spread, units=mu.numel(), threads=torch.get_num_threads())
    if device == "cuda":
        def timed():
            fn()
            torch.cuda.synchronize()
        benchmark.pedantic(timed, rounds=20, warmup_rounds=3)
    else:
        benchmark.pedantic(fn, rounds=15, warmup_rounds=2)
    if benchmark.stats is not None:      # None in the --benchmark-disable smoke pass
        benchmark.extra_info["ns_per_unit"] = benchmark.stats.stats.median / mu.numel() * 1e9
