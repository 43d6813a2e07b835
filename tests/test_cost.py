"""The cost-aware prior of Bernoulli gates (fastbayes/nn/cost.py) and ``decide`` (fastbayes/nn/bernoulli.py).

Oracles: the parameter count of the model itself (θ = 1) and of what compact() builds (binary θ), and the
multilinearity of E[#params] (∂E/∂θ_i = E(θ_i = 1) − E(θ_i = 0) exactly); ``decide`` against exact_theta_grad.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastbayes as fb
from fastbayes.apps.models import LeNet5BMRS, build
from fastbayes.nn.bernoulli import CostPrior, ParamCost, decide, exact_theta_grad
from fastbayes.prune import Shrinker, compact

pytest.importorskip("torch_pruning")


class ConvBN(nn.Module):
    """conv-BN-ReLU twice, a residual add coupling two gated layers' channels, then a flatten into a Linear."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        h = F.relu(self.b1(self.c1(x)))
        h = F.relu(self.b2(self.c2(h)) + h)
        return self.fc(F.adaptive_avg_pool2d(h, 4).flatten(1))


MODELS = {
    "mlp": (lambda: build("mlp-30-20"), (2, 1, 28, 28), {}),
    "lenet5-caffe": (lambda: build("lenet5"), (2, 1, 28, 28), {}),
    "lenet5-bmrs-activation": (LeNet5BMRS, (2, 1, 32, 32), {"placement": "activation"}),
    "convbn-residual": (ConvBN, (2, 3, 8, 8), {"placement": "bn"}),   # two gates on one residual group
}


def _gated(name, seed=0):
    ctor, shape, opts = MODELS[name]
    torch.manual_seed(seed)
    model, x = ctor(), torch.randn(shape)
    opts = {k: (x if v is True else v) for k, v in opts.items()}
    gates = fb.add_gates(model, kind="bernoulli", **opts)
    return model, gates, x


def _counted(model) -> int:
    """Parameters of Linear/Conv/BatchNorm layers: what ParamCost counts (θ and other parameters excluded)."""
    return sum(p.numel() for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd,
                                                                  nn.modules.batchnorm._BatchNorm))
               for p in m.parameters(recurse=False))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_expected_params_at_full_width_is_the_parameter_count(name):
    model, _, x = _gated(name)
    assert ParamCost(model, x)().item() == _counted(model)


@pytest.mark.filterwarnings("ignore:compact\\(\\) could not remove")   # the residual group: kept where one site keeps
@pytest.mark.parametrize("name", sorted(MODELS))
def test_expected_params_at_binary_theta_is_the_compacted_count(name):
    model, gates, x = _gated(name)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for gate in gates.values():
            keep = torch.rand(gate.num_features, generator=g) < 0.6
            keep[0] = True
            gate.theta.copy_(keep.to(gate.theta.dtype))
    cost = ParamCost(model, x)()
    small = compact(model, x)
    assert cost.item() == _counted(small)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_per_unit_cost_is_the_exact_difference(name):
    """E[#params] is multilinear in θ: its gradient in θ_i is E(θ_i = 1) − E(θ_i = 0) at any other θ."""
    model, gates, x = _gated(name)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for gate in gates.values():
            gate.theta.copy_(torch.rand(gate.num_features, generator=g, dtype=torch.float64).to(gate.theta.dtype))
    cost = ParamCost(model, x)
    per_unit = cost.per_unit()
    for k, gate in gates.items():
        for i in (0, gate.num_features - 1):
            old = gate.theta[i].item()
            with torch.no_grad():
                gate.theta[i] = 1.0
                hi = cost().item()
                gate.theta[i] = 0.0
                lo = cost().item()
                gate.theta[i] = old
            # float32 θ: E ~ 4e5 rounds to ~0.03, so the difference is good to about 1e-7 of E
            assert per_unit[k][i].item() == pytest.approx(hi - lo, rel=1e-5, abs=2e-7 * hi), (k, i)


def test_pruned_units_cost_nothing_and_cost_follows_a_shrinker():
    model, gates, x = _gated("lenet5-caffe")
    cost = ParamCost(model, x)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    gate = gates["conv2"]
    with torch.no_grad():
        gate.theta[:10] = 0.0
    before = cost().item()
    assert cost.per_unit()["conv2"][:10].abs().max().item() > 0      # θ = 0 but unmasked: still a choice
    shrinker = Shrinker(model, opt, every=1, example_inputs=x)
    assert shrinker.shrink()
    assert gates["conv2"].num_features == 40
    after = cost()                                                   # re-traced: the model's structure changed
    assert after.item() == before == _counted(model)
    assert after.requires_grad


def test_cost_prior_scales_by_price_and_checks_its_arguments():
    model, gates, x = _gated("mlp")
    prior = CostPrior(model, x, price=0.5)
    assert prior().item() == pytest.approx(0.5 * _counted(model))
    unit = prior.unit_costs()["layers.0"]
    assert unit[0].item() == pytest.approx(0.5 * (784 + 1 + 20))      # own weights and bias, and 20 outgoing
    for bad in (-1.0, float("nan"), "1", True):
        with pytest.raises(ValueError, match="price"):
            CostPrior(model, x, price=bad)
    with pytest.raises(ValueError, match="no BernoulliGate"):
        ParamCost(build("mlp-30-20"), x)
    with pytest.raises(TypeError, match="model"):
        ParamCost("model", x)


def test_decide_sets_units_in_transit_by_the_exact_gradient():
    model, gates, x = _gated("mlp")
    xb, yb = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    n = 1000
    prior = CostPrior(model, x, price=0.05)
    gate = gates["layers.1"]
    with torch.no_grad():
        gate.theta[:5] = 0.5
        gate.theta[5] = 0.0          # reached 0 by training: only a candidate, judged like the others
        gate.mask[6] = False         # masked (removed): not judged
        gate.theta[6] = 0.0
    model.train()
    loss_fn = lambda m: F.cross_entropy(m(xb), yb)  # noqa: E731
    # the rule by hand: data part by exact_theta_grad, prior part price · cost / n
    d = exact_theta_grad(model, loss_fn, gate, torch.arange(6)) + prior.unit_costs()["layers.1"][:6].double() / n
    out = decide(model, loss_fn, lambda: prior() / n)
    assert out == {"layers.1": 6}
    assert torch.equal(gate.theta[:6], (d < 0).to(gate.theta.dtype))
    assert gate.theta[6].item() == 0.0 and gate.theta[7:].eq(1).all()
    with torch.no_grad():
        gate.mask[:6] &= gate.theta[:6] == 1    # what the next shrink() does with the units set to 0
    assert decide(model, loss_fn, lambda: prior() / n) == {}        # nothing left in transit


def test_decide_with_a_huge_price_drops_every_unit_in_transit_and_fails_cleanly():
    model, gates, x = _gated("mlp")
    xb, yb = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    prior = CostPrior(model, x, price=1e6)
    with torch.no_grad():
        for g in gates.values():
            g.theta.fill_(0.7)
    before = {k: g.theta.detach().clone() for k, g in gates.items()}

    def bad_loss(m):
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        decide(model, bad_loss, lambda: prior() / 100)
    assert all(torch.equal(g.theta, before[k]) for k, g in gates.items())   # nothing changed
    with pytest.raises(TypeError, match="loss_fn"):
        decide(model, "loss")
    with pytest.raises(TypeError, match="prior_fn"):
        decide(model, lambda m: m(xb).sum(), prior_fn=3)
    decide(model, lambda m: F.cross_entropy(m(xb), yb), lambda: prior() / 100)
    assert all(g.theta.eq(0).all() for g in gates.values())


def test_decide_drops_only_on_evidence_and_caps_the_drops():
    """Per-example losses: a unit goes to 0 only when its gradient exceeds z standard errors; max_drop caps how many
    of a gate's kept units go at once (those with the largest gradient)."""
    model, gates, x = _gated("mlp")
    xb, yb = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    gate = gates["layers.0"]
    loss_fn = lambda m: F.cross_entropy(m(xb), yb, reduction="none")  # noqa: E731
    prior = CostPrior(model, x, price=1.0)
    n = 100
    with torch.no_grad():
        gate.theta.fill_(0.5)
    from fastbayes.nn.bernoulli import _forced_differences
    model.train()
    diffs = _forced_differences(model, loss_fn, gate, torch.arange(30), per_example=True)
    g = torch.stack([d.mean() for d in diffs]) + prior.unit_costs()["layers.0"].double() / n
    se = torch.stack([d.std() / d.numel() ** 0.5 for d in diffs])
    saved = gate.theta.detach().clone()
    decide(model, loss_fn, lambda: prior() / n, z=1e9)              # no evidence is ever enough: all kept
    assert gate.theta.eq(1).all()
    with torch.no_grad():
        gate.theta.copy_(saved)
    decide(model, loss_fn, lambda: prior() / n, z=2.0)
    assert torch.equal(gate.theta == 0, g > 2 * se)
    with torch.no_grad():
        gate.theta.copy_(saved)
    decide(model, loss_fn, lambda: prior() / n, z=0.0, max_drop=0.1)
    dropped = (gate.theta == 0).nonzero().flatten()
    assert dropped.numel() == 3 and set(dropped.tolist()) == set(g.argsort(descending=True)[:3].tolist())
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="max_drop"):
            decide(model, loss_fn, max_drop=bad)
    with pytest.raises(ValueError, match="z must"):
        decide(model, loss_fn, z=-1)


def test_decide_judges_at_most_max_units_per_gate():
    model, gates, x = _gated("mlp")
    xb, yb = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    gate = gates["layers.0"]
    with torch.no_grad():
        gate.theta.fill_(0.5)
    out = decide(model, lambda m: F.cross_entropy(m(xb), yb, reduction="none"), max_units=7)
    assert out == {"layers.0": 7}
    assert int(((gate.theta == 0) | (gate.theta == 1)).sum()) == 7 and int((gate.theta == 0.5).sum()) == 23
    with pytest.raises(ValueError, match="max_units"):
        decide(model, lambda m: m(xb).sum(), max_units=0)


def test_decide_accumulates_evidence_over_calls_and_the_shrinker_slices_it():
    """accumulate=True pools each unit's per-example differences over the calls that judged it: the decision uses the
    pooled mean and standard error (oracle: the two batches' differences concatenated), the pool survives a shrink
    with the surviving units, and nothing changes when a call fails."""
    from fastbayes.nn.bernoulli import _forced_differences, evidence
    from fastbayes.prune import Shrinker
    model, gates, x = _gated("mlp")
    gate = gates["layers.0"]
    prior = CostPrior(model, x, price=3e-4)      # about the size of the data's differences: some go, some stay
    n = 100
    batches = [(torch.randn(24, 1, 28, 28), torch.randint(0, 10, (24,))) for _ in range(2)]
    model.train()
    diffs = []
    for xb, yb in batches:
        loss_fn = lambda m, xb=xb, yb=yb: F.cross_entropy(m(xb), yb, reduction="none")  # noqa: E731
        with torch.no_grad():
            gate.theta.fill_(0.5)
        diffs.append(_forced_differences(model, loss_fn, gate, torch.arange(30), per_example=True))
        decide(model, loss_fn, lambda: prior() / n, z=1e9, accumulate=True)    # first pass: keep every unit
    pooled = [torch.cat([a, b]) for a, b in zip(*diffs)]
    ev = evidence(gate)
    assert torch.equal(ev[0], torch.full((30,), 48.0, dtype=torch.float64))
    torch.testing.assert_close(ev[1], torch.stack([p.sum() for p in pooled]), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ev[2], torch.stack([p.square().sum() for p in pooled]), rtol=1e-12, atol=1e-12)
    # a third call on the second batch again: the decision is by the pool of all three batches' differences
    xb, yb = batches[1]
    loss_fn = lambda m: F.cross_entropy(m(xb), yb, reduction="none")  # noqa: E731
    with torch.no_grad():
        gate.theta.fill_(0.5)
    third = _forced_differences(model, loss_fn, gate, torch.arange(30), per_example=True)
    pooled = [torch.cat([p, t]) for p, t in zip(pooled, third)]
    g = torch.stack([p.mean() for p in pooled]) + prior.unit_costs()["layers.0"].double() / n
    se = torch.stack([p.std() / p.numel() ** 0.5 for p in pooled])
    before = ev.clone()

    def bad_loss(m):
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        decide(model, bad_loss, lambda: prior() / n, accumulate=True)
    assert torch.equal(evidence(gate), before) and gate.theta.eq(0.5).all()
    decide(model, loss_fn, lambda: prior() / n, z=1.0, accumulate=True)
    assert torch.equal(gate.theta == 0, g > 1.0 * se)
    # the shrinker removes the dropped units and slices the pool with them
    opt = torch.optim.Adam([p for k, p in model.named_parameters() if not k.endswith("theta")], 1e-3)
    pool = evidence(gate).clone()
    kept = gate.theta.detach() == 1
    assert 0 < int(kept.sum()) < 30                                        # some go, some stay
    Shrinker(model, opt, every=2 ** 62, example_inputs=x).shrink()
    assert torch.equal(evidence(fb.nn.gates(model)["layers.0"]), pool[:, kept])
    with pytest.raises(ValueError, match="accumulate"):
        decide(model, loss_fn, accumulate="yes")
