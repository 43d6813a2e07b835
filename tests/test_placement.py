"""Gates after an activation or pooling module (BMRS's placement), the BMRS builders, BMRS's parameter count and
post-training pruning (issue 3/5)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastbayes as fb
from fastbayes import checkpoint
from fastbayes.apps.models import BMRSMLP, LeNet5BMRS, build
from fastbayes.nn.sites import site_layers
from fastbayes.prune import bmrs_compression_pct, decide, post_training
from fastbayes.prune.compact import relative_error


def _prune_some(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gate in fb.nn.gates(model).values():
            gate.mu.uniform_(-4, 0, generator=g)
            gate.log_sigma.uniform_(-3, 0, generator=g)
            gate.mask.copy_(torch.rand(gate.mask.shape, generator=g) > 0.4)


class FunctionalTanh(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


class SharedAct(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3, self.act = nn.Linear(8, 6), nn.Linear(6, 6), nn.Linear(6, 3), nn.Tanh()

    def forward(self, x):
        return self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))


class ConvBNPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1, self.act1, self.pool = nn.Conv2d(2, 5, 3), nn.BatchNorm2d(5), nn.GELU(), nn.MaxPool2d(2)
        self.conv2, self.fc = nn.Conv2d(5, 4, 3), nn.Linear(4 * 2 * 2, 3)

    def forward(self, x):
        x = self.pool(self.act1(self.bn1(self.conv1(x))))
        return self.fc(F.relu(self.conv2(x)).flatten(1))


# ------------------------------------------------------------------------------------------------ the builders

def test_bmrs_mlp_matches_the_released_architecture():
    m = build("bmrs-mlp", (1, 32, 32))
    shapes = [tuple(l.weight.shape) for l in m if isinstance(l, nn.Linear)]
    assert shapes == [(150, 1024), (150, 150), (10, 150)]
    gates = fb.add_gates(m, placement="activation")
    assert list(gates) == ["2", "4"] and all(isinstance(m[int(n)], nn.Tanh) for n in gates)
    assert site_layers(m) == {"2": "1", "4": "3"}
    # BMRS counts every trainable parameter, μ and log σ of each unit included
    assert sum(p.numel() for p in m.parameters()) == (1024 * 150 + 150) + (150 * 150 + 150) + (150 * 10 + 10) + 2 * 300
    assert m(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    assert fb.add_gates(m, placement="activation") == gates           # idempotent
    with pytest.raises(ValueError, match="placed differently"):
        fb.add_gates(m, placement="activation", kind="bernoulli")


def test_bmrs_lenet5_matches_the_released_architecture():
    m = build("lenet5-bmrs", (1, 32, 32))
    assert isinstance(m, LeNet5BMRS)
    gates = fb.add_gates(m, placement="activation")
    assert list(gates) == ["act1", "act2", "act3", "act4"]
    assert [g.num_features for g in gates.values()] == [6, 16, 120, 84]
    assert site_layers(m) == {"act1": "conv1", "act2": "conv2", "act3": "fc1", "act4": "fc2"}
    assert sum(p.numel() for p in m.parameters()) == 61706 + 2 * (6 + 16 + 120 + 84)


def test_bmrs_preprocessing():
    from fastbayes.apps.data import Split, bmrs_preprocess
    x = torch.full((3, 1, 28, 28), 1.0)
    out = bmrs_preprocess(Split(x, torch.zeros(3, dtype=torch.long)))
    assert out.x.shape == (3, 1, 32, 32)
    torch.testing.assert_close(out.x, torch.full_like(out.x, (255 - 127) / 255))


# ------------------------------------------------------------------------------------------------ placement

@pytest.mark.parametrize("builder,shape", [(lambda: BMRSMLP(64, hidden=12), (4, 1, 8, 8)),
                                           (lambda: LeNet5BMRS(), (4, 1, 32, 32))])
def test_activation_placement_trains_compacts_exactly_and_round_trips(builder, shape, tmp_path):
    torch.manual_seed(0)
    model = builder()
    fb.add_gates(model, placement="activation")
    x = torch.randn(*shape)
    y = torch.randint(0, 10, (shape[0],))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    before = [g.mu.detach().clone() for g in fb.nn.gates(model).values()]
    for _ in range(3):
        loss = F.cross_entropy(model(x), y) + fb.kl_loss(model, reduction="mean")
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(not torch.equal(b, g.mu) for b, g in zip(before, fb.nn.gates(model).values()))
    _prune_some(model)
    model.eval()
    small = fb.prune.compact(model, x)
    assert relative_error(small(x), model(x)) < 1e-5
    assert fb.prune.count_params(small) < fb.prune.count_params(model)
    checkpoint.save(tmp_path / "c.pt", model, opt)
    fresh = builder()
    ck = checkpoint.load(tmp_path / "c.pt", fresh)
    assert site_layers(ck.model) == site_layers(model)
    ck.model.eval()
    assert torch.equal(ck.model(x), model(x))


def test_gate_after_tanh_is_not_the_same_as_before_it_and_folds_into_the_next_layer():
    torch.manual_seed(1)
    a, b = BMRSMLP(16, hidden=6), None
    b = copy.deepcopy(a)
    fb.add_gates(a, placement="activation")
    fb.add_gates(b, placement="output")
    for m in (a, b):
        with torch.no_grad():
            for g in fb.nn.gates(m).values():
                g.mu.fill_(-1.0)
        m.eval()
    x = torch.randn(5, 1, 4, 4)
    assert relative_error(a(x), b(x)) > 1e-3        # tanh(θz) != θ·tanh(z)
    _prune_some(a, 3)
    small = fb.prune.compact(a, x)
    assert relative_error(small(x), a(x)) < 1e-5


def test_after_named_pool_and_gelu_after_batchnorm():
    torch.manual_seed(2)
    x = torch.randn(3, 2, 10, 10)
    for placement, layers in (("after:pool", ["conv1"]), ("activation", ["conv1"])):
        m = ConvBNPool()
        fb.add_gates(m, layers=layers, placement=placement)
        _prune_some(m, 4)
        m.eval()
        small = fb.prune.compact(m, x)
        assert relative_error(small(x), m(x)) < 1e-5
        assert small.conv1.out_channels == int(fb.nn.gates(m)[placement.split(":")[-1] if ":" in placement
                                                               else "act1"].mask.sum())


@pytest.mark.parametrize("model,kwargs,match", [
    (FunctionalTanh, dict(placement="activation"), "functional activation"),
    (SharedAct, dict(placement="activation"), "is 'fc2' \\(Linear\\), not an activation"),
    (SharedAct, dict(placement="after:act", layers=["fc2"]), "once per forward"),
    (FunctionalTanh, dict(placement="after:nope"), "no module named 'nope'"),
    (FunctionalTanh, dict(placement="after:fc2"), "activation or pooling"),
    (lambda: BMRSMLP(16, hidden=4), dict(placement="after:2"), "gates one layer"),
    (FunctionalTanh, dict(placement="sideways"), "placement must be"),
])
def test_bad_placement_names_the_problem_and_leaves_the_model_alone(model, kwargs, match):
    m = model()
    state = copy.deepcopy(m.state_dict())
    hooks = [dict(mod._forward_hooks) for mod in m.modules()]
    with pytest.raises(ValueError, match=match):
        fb.add_gates(m, **kwargs)
    assert not fb.nn.gates(m)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in state.items())
    assert [dict(mod._forward_hooks) for mod in m.modules()] == hooks


# ------------------------------------------------------------------------------------------------ counting

def test_bmrs_compression_pct_matches_a_hand_count():
    m = BMRSMLP(6, hidden=4)             # 6-4-4-10 with gates after each tanh
    gates = fb.add_gates(m, placement="activation")
    total = (6 * 4 + 4) + (4 * 4 + 4) + (4 * 10 + 10) + 2 * 8
    assert bmrs_compression_pct(m) == 0.0
    with torch.no_grad():
        gates["2"].mask[:] = torch.tensor([True, False, True, True])     # unit 1 of layer 1
        gates["4"].mask[:] = torch.tensor([False, False, True, True])    # units 0, 1 of layer 2
    removed = 2 * 3                       # μ, log σ of 3 units
    removed += 6                          # layer 1: incoming row of unit 1
    removed += 4 + 4 + 4 - 2              # layer 2: rows 0, 1 (4 each), column 1 (4), minus the 2 shared entries
    removed += 2 * 10                     # layer 3: columns 0, 1
    assert bmrs_compression_pct(m) == pytest.approx(100.0 * removed / total)


def test_permanent_schedule_keeps_pruned_units_pruned():
    m = BMRSMLP(6, hidden=4)
    gate = fb.add_gates(m, placement="activation")["2"]
    sched = fb.prune.PruneSchedule(m, "snr", prune_epochs=5, permanent=True, min_units=0)
    with torch.no_grad():
        gate.log_sigma[:2] = 3.0          # SNR << 1: pruned
    sched.step(0)
    assert gate.mask.tolist()[:2] == [False, False]
    with torch.no_grad():
        gate.log_sigma[:2] = -5.0         # would be kept again from scratch
    rep = sched.step(1)
    assert gate.mask.tolist()[:2] == [False, False] and rep.kept_per_layer["2"] == 2
    with pytest.raises(TypeError, match="permanent"):
        fb.prune.PruneSchedule(m, "snr", prune_epochs=5, permanent="yes")


def test_bmrs_u_code_clamp_follows_the_released_code():
    from fastbayes.nn.gates import LogNormalGate
    from fastbayes.prune.criteria import bmrs_u
    g = LogNormalGate(3)
    with torch.no_grad():
        g.mu.copy_(torch.tensor([-25.0, -10.0, 2.0]))
        g.log_sigma.copy_(torch.tensor([0.0, 6.0, 0.0]))
    ours, code = bmrs_u(g).statistic, bmrs_u(g, code_clamp=True).statistic
    assert torch.isfinite(code).all() and torch.isfinite(ours).all()
    assert not torch.allclose(ours, code)         # μ outside [a, b] and log σ > 5 are read differently
    with pytest.raises(TypeError, match="code_clamp|options"):
        decide(nn.Sequential(), "bmrs_u", code_clmp=True)


# ------------------------------------------------------------------------------------------------ post-training

def _trained_tiny(seed=0):
    torch.manual_seed(seed)
    m = BMRSMLP(16, hidden=10)
    fb.add_gates(m, placement="activation")
    x = torch.randn(192, 16)
    y = (x[:, 0] + x[:, 1] > 0).long()
    loader = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 192, 64)]
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    for _ in range(15):
        for xb, yb in loader:
            loss = F.cross_entropy(m(xb), yb) + fb.kl_loss(m, reduction="mean")
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():          # a few units the rule wants gone: their posterior sits at the lower bound
        for g in fb.nn.gates(m).values():
            g.mu[:3] = -19.0
            g.log_sigma[:3] = 0.0
    return m, loader


def test_post_training_curve_is_monotone_and_stops_where_the_rule_prunes_nothing():
    m, loader = _trained_tiny()
    curve = post_training(m, "bmrs_n", loader, loader, step_units=2, progress=False, restore="stop")
    comp = [p.compression_pct for p in curve.points]
    kept = [p.kept for p in curve.points]
    assert all(b > a for a, b in zip(comp, comp[1:])) and all(b < a for a, b in zip(kept, kept[1:]))
    assert curve.points[0].rule_would_prune == 6 and curve.stop is not None and curve.stop >= 3
    assert all(p.rule_would_prune > 0 for p in curve.points[:curve.stop])
    assert curve.points[curve.stop].rule_would_prune == 0
    # the model is left at the stop: every remaining unit has ΔF_N < 0, and the 6 it wanted gone are gone first
    d = decide(m, "bmrs_n", min_units=0)
    for name, g in fb.nn.gates(m).items():
        live = g.mask.bool()
        assert bool(d[name].keep[live].all())
        assert not bool(live[:3].any())
    assert sum(int(g.mask.sum()) for g in fb.nn.gates(m).values()) == curve.points[curve.stop].kept
    assert min(curve.points[-1].kept_per_layer.values()) >= 1


def test_post_training_checks_everything_before_changing_the_model():
    m, loader = _trained_tiny(1)
    state = copy.deepcopy(m.state_dict())
    for kwargs, err in ((dict(criterion="nope"), ValueError), (dict(step_units=0), ValueError),
                        (dict(lr=-1.0), ValueError), (dict(train_loader=torch.zeros(3)), TypeError),
                        (dict(criterion="bernoulli"), ValueError), (dict(p1="x", criterion="bmrs_u"), ValueError)):
        args = dict(criterion="bmrs_n", train_loader=loader, val_loader=loader, progress=False)
        args.update(kwargs)
        with pytest.raises(err):
            post_training(m, **args)
        assert all(torch.equal(v, m.state_dict()[k]) for k, v in state.items())


def test_shrinker_removes_units_of_gates_after_an_activation():
    torch.manual_seed(3)
    m = BMRSMLP(16, hidden=8)
    gates = fb.add_gates(m, kind="bernoulli", placement="activation")
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    x = torch.randn(4, 1, 4, 4)
    shrink = fb.prune.Shrinker(m, opt, every=1, example_inputs=x)
    with torch.no_grad():
        for g in gates.values():
            g.theta[:3] = 0.0
    m.eval()
    before = m(x)
    assert shrink.step()                       # the eval outputs are checked equal inside
    assert (m[1].out_features, m[3].in_features, m[3].out_features, m[5].in_features) == (5, 5, 5, 5)
    assert [g.num_features for g in fb.nn.gates(m).values()] == [5, 5]
    torch.testing.assert_close(m(x), before)
    m.train()
    F.cross_entropy(m(x), torch.zeros(4, dtype=torch.long)).backward()
    opt.step()                                 # the optimiser follows the smaller parameters


class TanhIntoBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.bn, self.fc2 = nn.Linear(6, 4), nn.Tanh(), nn.BatchNorm1d(4), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(self.bn(self.act(self.fc1(x))))


def test_compact_refuses_to_fold_a_gate_after_tanh_into_a_batchnorm():
    m = TanhIntoBN()
    fb.add_gates(m, layers=["fc1"], placement="activation")
    _prune_some(m)
    m.eval()
    with torch.no_grad():
        m.bn.running_mean.fill_(0.5)
        m.bn.bias.fill_(0.3)
    with pytest.raises(ValueError, match="cannot fold the gate after 'act' into 'bn'"):
        fb.prune.compact(m, torch.randn(3, 6))
    assert fb.nn.gates(m)                      # the model is untouched (compact works on a copy)
