"""Training-step time of a LeNet5 with Bernoulli gates before and after the Shrinker removed units, against the dense
plain step (no gates).  The point of pruning while training: later steps get cheaper.

Providers: ``plain`` (dense LeNet5-Caffe 20-50-500, no gates), ``bernoulli:dense`` (gates, full width) and
``bernoulli:shrunk`` (gates, after removing 3/4 of the units of every gated layer: 5-13-125).
"""
import pytest
import torch
import torch.nn.functional as F

import fastbayes as fb
from fastbayes.nn import bernoulli as B
from fastbayes.prune import Shrinker
from models import LeNet5

SHAPE = (128, 1, 28, 28)
N_TRAIN = 60000


@pytest.mark.parametrize("provider", ["plain", "bernoulli:dense", "bernoulli:shrunk"])
def test_train_step_shrink(benchmark, provider):
    torch.manual_seed(0)
    model = LeNet5()
    x, y = torch.randn(SHAPE), torch.randint(0, 10, (SHAPE[0],))
    gated = provider != "plain"
    if gated:
        gates = fb.add_gates(model, kind="bernoulli", init_theta=0.9, spike_ratio=0.3)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    shrinker = Shrinker(model, opt, every=1, example_inputs=x[:2]) if gated else None
    if provider == "bernoulli:shrunk":
        with torch.no_grad():
            for g in gates.values():
                g.theta[g.num_features // 4:] = 0.0
        shrinker.shrink()
        benchmark.extra_info["widths"] = [g.num_features for g in gates.values()]

    def step():
        loss = F.cross_entropy(model(x), y)
        if gated:
            loss = loss + B.prior_loss(model) / N_TRAIN
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if gated:
            B.project_gates(model)

    benchmark.group = f"train step lenet5 batch {SHAPE[0]}: Bernoulli gates before/after shrinking"
    benchmark.extra_info["provider"] = provider
    step()
    benchmark.pedantic(step, rounds=7, warmup_rounds=1)
