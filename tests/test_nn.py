"""Gate modules, add_gates, kl_loss: placement, state, autograd, torch.compile."""
import copy
import pickle
import io
import math

import pytest
import torch
import torch.nn.functional as F

import fastbayes as fb
from fastbayes.reference.gate_stats import gate_stats as ref_gate_stats
from models import MLP, ConvBN, LeNet5


def test_default_placement_skips_classifier():
    m = LeNet5()
    gates = fb.add_gates(m)
    assert list(gates) == ["conv1", "conv2", "fc1"]
    assert [g.num_features for g in gates.values()] == [20, 50, 500]
    assert gates["conv1"].dim == 1 and gates["fc1"].dim == -1


def test_idempotent_and_state_dict():
    m = LeNet5()
    g1 = fb.add_gates(m)
    g2 = fb.add_gates(m)
    assert all(g1[k] is g2[k] for k in g1)
    keys = m.state_dict().keys()
    assert "conv1.weight" in keys and "conv1.fastbayes_gate.mu" in keys and "fc1.fastbayes_gate.mask" in keys
    assert sum(1 for n, _ in m.named_parameters() if "fastbayes_gate" in n) == 6


def test_deepcopy_and_state_dict_round_trip():
    torch.manual_seed(0)
    m = LeNet5()
    fb.add_gates(m)
    with torch.no_grad():
        m.conv2.fastbayes_gate.mu.uniform_(-3, 0)
        m.conv2.fastbayes_gate.mask[::3] = False
    m.eval()
    x = torch.randn(2, 1, 28, 28)
    m2 = copy.deepcopy(m)
    torch.testing.assert_close(m2(x), m(x), rtol=0, atol=0)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    m3 = LeNet5()
    fb.add_gates(m3)
    m3.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    m3.eval()
    torch.testing.assert_close(m3(x), m(x), rtol=0, atol=0)


def test_gate_clamps_log_sigma_and_eval_uses_mean():
    g = fb.nn.LogNormalGate(4)
    with torch.no_grad():
        g.log_sigma.copy_(torch.tensor([-50.0, 0.0, 9.0, -5.0]))
    assert torch.equal(g.clamped_log_sigma(), torch.tensor([-20.0, 0.0, 5.0, -5.0]))
    g.eval()
    x = torch.randn(3, 4)
    mean = ref_gate_stats(g.mu.detach(), g.clamped_log_sigma().detach())[1]
    torch.testing.assert_close(g(x), x * mean)


def test_posterior_and_kl_match_reference():
    g = fb.nn.LogNormalGate(3, init_mu=-1.0, init_log_sigma=math.log(0.5))
    q = g.posterior
    torch.testing.assert_close(q.mean, torch.full((3,), 0.3980687514), rtol=1e-6, atol=0)
    torch.testing.assert_close(g.kl(), torch.tensor(3 * 2.348201693), rtol=1e-6, atol=0)


def test_kl_loss_sum_and_mean_reductions():
    m = MLP((8, 6, 4, 3))
    gates = fb.add_gates(m, kl_weight={"layers.0": 2.0})
    per_gate = {n: g.kl() for n, g in gates.items()}
    want_sum = 2.0 * per_gate["layers.0"] + per_gate["layers.1"]
    torch.testing.assert_close(fb.kl_loss(m), want_sum)
    want_mean = (2.0 * per_gate["layers.0"] / 6 + per_gate["layers.1"] / 4) / 2
    torch.testing.assert_close(fb.kl_loss(m, reduction="mean"), want_mean)
    fb.kl_loss(m).backward()
    assert gates["layers.0"].mu.grad is not None


def test_bn_placement():
    m = ConvBN()
    gates = fb.add_gates(m, placement="bn", layers=["conv"])
    assert list(gates) == ["bn"]
    m.eval()
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        m.bn.fastbayes_gate.mask[:4] = False
    feats = {}
    m.bn.register_forward_hook(lambda mod, i, o: feats.setdefault("bn", o))
    m(x)
    assert torch.all(feats["bn"][:, :4] == 0)


def test_bad_arguments():
    m = LeNet5()
    with pytest.raises(ValueError, match="kind"):
        fb.add_gates(m, kind="gaussian")
    with pytest.raises(ValueError, match="layers"):
        fb.add_gates(m, layers=["nope"])
    with pytest.raises(ValueError, match="placement"):
        fb.add_gates(m, placement="input")
    with pytest.raises(ValueError, match="num_features"):
        fb.nn.LogNormalGate(0)
    with pytest.raises(ValueError, match="granularity"):
        fb.nn.LogNormalGate(3, granularity="pixel")
    with pytest.raises(ValueError, match="add_gates"):
        fb.kl_loss(LeNet5())


def test_training_step_decreases_loss():
    torch.manual_seed(0)
    m = MLP((16, 32, 3))
    fb.add_gates(m)
    x = torch.randn(64, 16)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(m(x), y) + fb.kl_loss(m) / 1000
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_torch_compile_fullgraph_matches_eager_and_trains():
    torch.manual_seed(0)
    m = LeNet5(widths=(4, 6, 16))
    fb.add_gates(m)
    cm = torch.compile(m, fullgraph=True)
    x = torch.randn(4, 1, 28, 28)
    m.eval()
    torch.testing.assert_close(cm(x), m(x), rtol=1e-5, atol=1e-5)
    m.train()
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    before = m.conv1.fastbayes_gate.mu.detach().clone()
    outs = []
    for _ in range(2):
        out = cm(x)
        outs.append(out.detach())
        loss = F.cross_entropy(out, torch.zeros(4, dtype=torch.long)) + fb.kl_loss(m) / 100
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.equal(before, m.conv1.fastbayes_gate.mu.detach())
    assert not torch.equal(outs[0], outs[1])   # fresh noise every compiled call


def test_param_groups_split_gates_from_weights():
    from fastbayes.apps.models import LeNet5
    m = LeNet5()
    gates = fb.add_gates(m)
    groups = fb.nn.param_groups(m, 1e-3, gate_lr_factor=10)
    rest, gp = groups
    gate_ids = {id(p) for g in gates.values() for p in (g.mu, g.log_sigma)}
    assert {id(p) for p in gp["params"]} == gate_ids and gp["lr"] == pytest.approx(1e-2)
    assert not gate_ids & {id(p) for p in rest["params"]} and "lr" not in rest
    assert len(rest["params"]) + len(gp["params"]) == len(list(m.parameters()))
    torch.optim.Adam(groups, 1e-3)          # accepted by an optimiser as is


def test_param_groups_bad_arguments():
    from fastbayes.apps.models import LeNet5
    m = LeNet5()
    with pytest.raises(ValueError, match="no gates"):
        fb.nn.param_groups(m, 1e-3)
    fb.add_gates(m)
    with pytest.raises(ValueError, match="lr"):
        fb.nn.param_groups(m, 0.0)
    with pytest.raises(ValueError, match="gate_lr_factor"):
        fb.nn.param_groups(m, 1e-3, gate_lr_factor=-1)


# --- eval-mode cache and validate-once options ------------------------------------------------------------------

def _eval_expected(g, x):
    mean = ref_gate_stats(g.mu.detach(), g.clamped_log_sigma().detach(), g.a, g.b)[1] * g.mask
    return x * mean.to(x.dtype)


def test_eval_gate_caches_expected_scale_until_parameters_or_mask_change():
    torch.manual_seed(0)
    g = fb.nn.LogNormalGate(6, dim=1).eval()
    with torch.no_grad():
        g.mu.uniform_(-2, 0)
        g.log_sigma.uniform_(-2, 1)
    x = torch.randn(4, 6)
    torch.testing.assert_close(g(x), _eval_expected(g, x))
    first = g.expected_scale()
    assert g.expected_scale() is first                       # nothing changed: the cached tensor is reused
    opt = torch.optim.SGD(g.parameters(), lr=0.5)            # a parameter update (in place: bumps the version)
    g.train()
    g(x).sum().backward()
    opt.step()
    g.eval()
    assert g.expected_scale() is not first
    torch.testing.assert_close(g(x), _eval_expected(g, x))
    second = g.expected_scale()
    g.mask[2] = False                                        # a mask change
    assert g.expected_scale() is not second
    torch.testing.assert_close(g(x), _eval_expected(g, x))
    assert g(x)[:, 2].abs().max() == 0
    g.load_state_dict({k: v.clone() for k, v in g.state_dict().items()})   # copy_ into the same tensors
    torch.testing.assert_close(g(x), _eval_expected(g, x))
    g.a = -10.0                                              # an option change
    torch.testing.assert_close(g(x), _eval_expected(g, x))


def test_eval_cache_follows_replaced_parameters():
    g = fb.nn.LogNormalGate(3).eval()
    x = torch.ones(2, 3)
    before = g(x)
    g.mu = torch.nn.Parameter(torch.full((3,), -3.0))        # e.g. a checkpoint loader or Shrinker swapping tensors
    torch.testing.assert_close(g(x), _eval_expected(g, x))
    assert not torch.equal(before, g(x))


@pytest.mark.parametrize("attr,value,err", [
    ("a", 1.0, ValueError), ("b", float("nan"), ValueError), ("granularity", "unit", ValueError),
    ("kl_weight", -1.0, ValueError), ("kl_weight", "1", ValueError), ("dim", 1.5, TypeError),
])
def test_gate_options_validated_when_set(attr, value, err):
    g = fb.nn.LogNormalGate(3)
    before = (g.a, g.b, g.granularity, g.kl_weight, g.dim)
    with pytest.raises(err, match=attr if attr not in ("a", "b") else "bound"):
        setattr(g, attr, value)
    assert (g.a, g.b, g.granularity, g.kl_weight, g.dim) == before


def test_gate_refuses_input_without_its_units():
    g = fb.nn.LogNormalGate(5, dim=1)
    with pytest.raises(ValueError, match="5 units"):
        g(torch.randn(2, 4))
    with pytest.raises(ValueError, match="floating-point"):
        g(torch.ones(2, 5, dtype=torch.int64))


def test_kl_loss_weights_cached_and_follow_kl_weight_changes():
    m = MLP()
    gates = fb.add_gates(m)
    k1 = fb.kl_loss(m)
    g = next(iter(gates.values()))
    g.kl_weight = 3.0
    want = sum(gg.kl_weight * ref_gate_stats(gg.mu, gg.clamped_log_sigma(), gg.a, gg.b)[0].sum()
               for gg in gates.values())
    torch.testing.assert_close(fb.kl_loss(m), want.to(k1.dtype))


def test_eval_cache_is_not_copied():
    g = fb.nn.LogNormalGate(3)
    g.mask[0] = False
    g.eval()
    x = torch.ones(2, 3)
    g(x)
    with torch.no_grad():
        g.mu.fill_(-10.0)
    c = copy.deepcopy(g)
    torch.testing.assert_close(c(x), g(x))
    torch.testing.assert_close(pickle.loads(pickle.dumps(g))(x), g(x))


def _kl_case(dtype=torch.float64, ls_dtype=None):
    m = MLP((8, 6, 5, 3))
    gates = fb.add_gates(m, kl_weight={"layers.0": 0.7})
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for g in gates.values():
            g.to(dtype)
            g.mu.copy_(torch.randn(g.mu.shape, generator=gen) * 3 - 2)
            g.log_sigma.copy_(torch.randn(g.log_sigma.shape, generator=gen) * 3)
            g.log_sigma[0], g.log_sigma[1] = 7.0, -25.0       # outside the forward clamp [-20, 5]: no gradient
            if ls_dtype is not None:
                g.log_sigma.data = g.log_sigma.data.to(ls_dtype)
    gates["layers.1"].a = -12.0                               # a second (a, b) group
    return m, gates


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("dtypes", [(torch.float32, None), (torch.float64, torch.float32)])
def test_kl_loss_cpp_node_equals_composite(monkeypatch, reduction, dtypes):
    """On the compiled backend kl_loss is one C++ autograd node (csrc/autograd.cpp); the composite of cat, clamp,
    gate_stats and dot on the reference backend is the oracle, and the compiled composite must give the same bits."""
    if not fb.backends.available()["cpu"]:
        pytest.skip("the compiled extension is not built")
    m, gates = _kl_case(*dtypes)

    def run(backend):
        for g in gates.values():
            g.mu.grad = g.log_sigma.grad = None
        with fb.backends.use(backend):
            k = fb.kl_loss(m, reduction)
            (3.0 * k).backward()
        return [k.detach()] + [t.grad.clone() for g in gates.values() for t in (g.mu, g.log_sigma)], k.grad_fn

    got, fn = run("cpu")
    assert type(fn).__name__ != "DotBackward0"
    assert all(float(g.log_sigma.grad[i]) == 0.0 for g in gates.values() for i in (0, 1))
    want, _ = run("reference")
    for a, b in zip(got, want):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=1e-6 if a.dtype == torch.float32 else 1e-12, atol=0)
    monkeypatch.setattr(fb.backends, "compiled", lambda name: False)
    composite, fn = run("cpu")
    assert type(fn).__name__ != "CppFunction"
    for a, b in zip(got, composite):
        assert torch.equal(a, b)


def test_kl_loss_cpp_node_gradcheck():
    if not fb.backends.available()["cpu"]:
        pytest.skip("the compiled extension is not built")
    _, gates = _kl_case()
    inputs = [t.detach().clone().requires_grad_() for g in gates.values() for t in (g.mu, g.log_sigma)]
    w = torch.rand(sum(t.numel() for t in inputs[0::2]), dtype=torch.float64)

    def f(*ts):
        return torch.ops.fastbayes_C.kl_loss(list(ts[0::2]), list(ts[1::2]), w, -20.0, 0.0, -20.0, 5.0)

    assert torch.autograd.gradcheck(f, inputs)
