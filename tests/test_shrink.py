"""Shrinker: Bernoulli units removed physically while training, optimiser state kept, gates folded at the end."""
import pytest
import torch
import torch.nn.functional as F

import fastbayes as fb
from fastbayes.nn import bernoulli as B
from fastbayes.nn.sites import gates as all_gates
from fastbayes.prune import Shrinker
from fastbayes.prune.compact import eval_outputs
from models import MLP, LeNet5

N_TRAIN = 1000


def _lenet():
    return LeNet5(widths=(6, 8, 20)), torch.randn(8, 1, 28, 28)


def _mlp():
    return MLP((20, 16, 12, 5)), torch.randn(8, 20)


MODELS = {"lenet5": _lenet, "mlp": _mlp}


def _setup(name, seed=0, lr=1e-2, steps=3):
    torch.manual_seed(seed)
    model, x = MODELS[name]()
    y = torch.randint(0, 5, (x.shape[0],))
    gates = fb.add_gates(model, kind="bernoulli", init_theta=0.5, spike_ratio=0.1)
    opt = torch.optim.Adam(model.parameters(), lr)
    for _ in range(steps):      # non-trivial Adam state everywhere
        _train_step(model, opt, x, y)
    return model, gates, opt, x, y


def _train_step(model, opt, x, y):
    loss = F.cross_entropy(model(x), y) + B.prior_loss(model) / N_TRAIN
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    B.project_gates(model)
    return float(loss.detach())


def _drop(gates, k=3):
    """θ of the first k units of every gate to 0, of the next two to 1."""
    with torch.no_grad():
        for g in gates.values():
            g.theta[:k] = 0.0
            g.theta[k:k + 2] = 1.0


def _state_matches(model, opt):
    owned = [p for grp in opt.param_groups for p in grp["params"]]
    params = list(model.parameters())
    assert {id(p) for p in owned} == {id(p) for p in params}
    for p in params:
        for k, v in opt.state[p].items():
            if k != "step":
                assert v.shape == p.shape, k


@pytest.mark.parametrize("name", MODELS)
def test_removal_keeps_eval_output_and_slices_adam_state(name):
    model, gates, opt, x, y = _setup(name)
    _drop(gates)
    widths = {n: g.num_features for n, g in gates.items()}
    ref = eval_outputs(model, x)
    first = next(iter(gates))
    layer = dict(model.named_modules())[first]
    old_w, old_avg = layer.weight.detach().clone(), opt.state[layer.weight]["exp_avg"].clone()
    old_sq = opt.state[layer.weight]["exp_avg_sq"].clone()
    sh = Shrinker(model, opt, every=1, eps=1e-3, example_inputs=x[:2], freeze=True)
    assert sh.step() is True
    for n, g in gates.items():
        assert g.num_features == widths[n] - 3 and bool(g.mask.all())
        assert int(g.frozen.sum()) >= 2
    torch.testing.assert_close(eval_outputs(model, x), ref, rtol=1e-5, atol=1e-6)
    _state_matches(model, opt)
    # the first gated layer lost its first 3 output rows: weight and Adam moments are the surviving rows, as they were
    torch.testing.assert_close(layer.weight.detach(), old_w[3:])
    torch.testing.assert_close(opt.state[layer.weight]["exp_avg"], old_avg[3:])
    torch.testing.assert_close(opt.state[layer.weight]["exp_avg_sq"], old_sq[3:])
    assert sh.history[-1]["removed"] == 3 * len(gates)
    assert sh.history[-1]["units"] == sum(widths.values()) - 3 * len(gates)


def test_train_mode_same_seed_output_unchanged():
    """The shrunk gate's survivors are deterministic; the other gate draws at random and keeps its width, so with
    the same seed every draw repeats and the train-mode output is the same."""
    torch.manual_seed(0)
    model = MLP((20, 16, 12, 5))
    x = torch.randn(8, 20)
    gates = fb.add_gates(model, kind="bernoulli", init_theta=0.5, spike_ratio=0.1)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    g0, g1 = gates["layers.0"], gates["layers.1"]
    with torch.no_grad():
        g0.theta.copy_((torch.arange(16) % 2).float())         # half at 0, half at 1
        g1.theta.uniform_(0.2, 0.8)                             # random draws, nothing to remove
    model.train()
    torch.manual_seed(123)
    ref = model(x).detach()
    Shrinker(model, opt, every=1, example_inputs=x[:2]).step()
    assert g0.num_features == 8 and g1.num_features == 12
    model.train()
    torch.manual_seed(123)
    torch.testing.assert_close(model(x).detach(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_training_continues_after_shrinking(name):
    model, gates, opt, x, y = _setup(name, lr=5e-3)
    sh = Shrinker(model, opt, every=5, eps=1e-3, example_inputs=x[:2], freeze=True)
    _drop(gates)
    before = sum(g.num_features for g in gates.values())
    losses = []
    for _ in range(40):
        losses.append(_train_step(model, opt, x, y))
        sh.step()
    assert sum(g.num_features for g in gates.values()) < before
    assert any(h["removed"] for h in sh.history)
    _state_matches(model, opt)
    assert min(losses[-5:]) < losses[0]
    for g in gates.values():        # frozen units stayed at exactly 1, pruned ones are gone or at 0
        assert bool((g.theta[g.frozen] == 1).all())
        assert bool((g.theta[~g.mask] == 0).all())


def test_frozen_units_get_no_theta_gradient_and_stay_at_one():
    model, gates, opt, x, y = _setup("mlp")
    g = gates["layers.0"]
    with torch.no_grad():
        g.theta[:4] = 0.9995
    sh = Shrinker(model, opt, every=1, eps=1e-3, example_inputs=x[:2], freeze=True)
    sh.step()
    assert bool(g.frozen[:4].all()) and bool((g.theta[:4] == 1).all())
    loss = F.cross_entropy(model(x), y) + B.prior_loss(model) / N_TRAIN
    opt.zero_grad()
    loss.backward()
    assert bool((g.theta.grad[g.frozen] == 0).all())
    for _ in range(3):
        _train_step(model, opt, x, y)
        sh.step()
    assert bool((g.theta[g.frozen] == 1).all())


@pytest.mark.parametrize("name", MODELS)
def test_finalize_is_plain_and_equals_gated_eval(name):
    model, gates, opt, x, y = _setup(name)
    _drop(gates)
    with torch.no_grad():       # every other unit decided too, so the gated model is deterministic
        for g in gates.values():
            g.theta[5:] = torch.where(torch.arange(5, g.num_features) % 3 == 0, 0.0, 1.0)
    sh = Shrinker(model, opt, every=10, example_inputs=x[:2])
    ref = eval_outputs(model, x)
    net = sh.finalize()
    assert sh.binary()
    assert not all_gates(net) and not any("fastbayes_gate" in n for n, _ in net.named_parameters())
    torch.testing.assert_close(eval_outputs(net, x), ref, rtol=1e-5, atol=1e-6)
    assert fb.prune.count_params(net) < fb.prune.count_params(model) + sum(g.num_features for g in gates.values())
    assert sum(g.num_features for g in all_gates(model).values()) == sh.live_units()


def test_bad_arguments():
    model, gates, opt, x, y = _setup("mlp", steps=0)
    for kw, match in [(dict(every=0), "every"), (dict(every=1.5), "every"), (dict(eps=0.0), "eps"),
                      (dict(eps=0.5), "eps"), (dict(min_units=0), "min_units"), (dict(example_inputs=None), "example"),
                      (dict(example_inputs="x"), "example_inputs"), (dict(freeze=1), "freeze"),
                      (dict(freeze="yes"), "freeze")]:
        args = dict(every=1, eps=1e-3, example_inputs=x[:2])
        args.update(kw)
        with pytest.raises(ValueError, match=match):
            Shrinker(model, opt, **args)
    with pytest.raises(ValueError, match="optimizer"):
        Shrinker(model, "adam", example_inputs=x)
    with pytest.raises(ValueError, match="none of model"):
        Shrinker(model, torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], 0.1), example_inputs=x)
    with pytest.raises(ValueError, match="BernoulliGate"):
        plain = MLP((20, 5))
        Shrinker(plain, torch.optim.SGD(plain.parameters(), 0.1), example_inputs=x)


def test_no_freeze_by_default_units_at_one_can_still_leave():
    """Default freeze=False: a unit at θ = 1 is not frozen at a check, and when θ later falls to 0 it is removed."""
    model, gates, opt, x, y = _setup("mlp")
    g = gates["layers.0"]
    with torch.no_grad():
        g.theta.fill_(1.0)
    sh = Shrinker(model, opt, every=1, eps=1e-3, example_inputs=x[:2])
    sh.step()
    assert not bool(g.frozen.any()) and bool((g.theta == 1).all())
    width = g.num_features
    with torch.no_grad():
        g.theta[:2] = 0.0
    assert sh.step() is True and g.num_features == width - 2
    assert not bool(g.frozen.any())


class _SigmoidMLP(torch.nn.Module):
    """A sigmoid right after a gated layer: a dropped unit gives σ(0) = ½, not 0, so removing it changes the output."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = torch.nn.Linear(6, 8), torch.nn.Linear(8, 7), torch.nn.Linear(7, 3)

    def forward(self, x):
        return self.c(F.relu(self.b(torch.sigmoid(self.a(x)))))


def _snapshot(model, opt):
    return {"params": [(n, p, p.detach().clone(), None if p.grad is None else p.grad.clone())
                       for n, p in model.named_parameters()],
            "buffers": {n: b.clone() for n, b in model.named_buffers()},
            "widths": [(m.in_features, m.out_features) for m in (model.a, model.b, model.c)],
            "hooks": {n: dict(m._forward_hooks) for n, m in model.named_modules()},
            "groups": [[id(p) for p in g["params"]] for g in opt.param_groups],
            "state": {id(p): {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
                      for p, s in opt.state.items()}}


def _assert_same(before, model, opt):
    now = list(model.named_parameters())
    assert [(n, id(p)) for n, p in now] == [(n, id(p)) for n, p, _, _ in before["params"]]
    for (n, p), (_, _, value, grad) in zip(now, before["params"]):
        assert torch.equal(p.detach(), value), n
        assert (p.grad is None) == (grad is None) and (grad is None or torch.equal(p.grad, grad)), n
    assert {n: b for n, b in model.named_buffers()}.keys() == before["buffers"].keys()
    assert all(torch.equal(b, before["buffers"][n]) for n, b in model.named_buffers())
    assert [(m.in_features, m.out_features) for m in (model.a, model.b, model.c)] == before["widths"]
    assert {n: dict(m._forward_hooks) for n, m in model.named_modules()} == before["hooks"]
    assert [[id(p) for p in g["params"]] for g in opt.param_groups] == before["groups"]
    assert set(map(id, opt.state)) == set(before["state"])
    for p, s in opt.state.items():
        for k, v in s.items():
            assert torch.equal(v, before["state"][id(p)][k]) if torch.is_tensor(v) else v == before["state"][id(p)][k]


@pytest.mark.parametrize("call", ["shrink", "step"])
def test_a_failed_check_rolls_back_model_and_optimiser(call):
    torch.manual_seed(0)
    model = _SigmoidMLP()
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
    gates = fb.add_gates(model, "bernoulli", layers=["a", "b"])
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(2):
        _train_step(model, opt, x, y)
    loss = F.cross_entropy(model(x), y) + B.prior_loss(model) / N_TRAIN
    loss.backward()                                   # a pending gradient must come back too
    with torch.no_grad():
        gates["a"].theta[:3] = 0.0                    # removing these changes the output through σ(0) = ½
        gates["b"].theta[:2] = 0.0
        gates["b"].theta[4] = 1.5                     # would be projected: the projection is undone as well
    shrinker = Shrinker(model, opt, every=1, example_inputs=x, check=True)
    before = _snapshot(model, opt)
    with pytest.raises(RuntimeError, match="restored"):
        getattr(shrinker, call)()
    _assert_same(before, model, opt)
    assert shrinker.steps == 0 and shrinker.removed == 0 and shrinker.history == []
    assert float(gates["b"].theta.detach()[4]) == 1.5 and bool(gates["a"].mask.all())
    _train_step(model, opt, x, y)                     # the restored model still trains
    # without the check the same shrink goes through
    with torch.no_grad():
        gates["a"].theta[:3] = 0.0
    shrinker.check = False
    assert shrinker.shrink() and model.a.out_features == 5
    _state_matches(model, opt)
