"""Bernoulli gates (after Guenter & Sideris): the fused gate and prior ops against the reference on every backend,
the straight-through gradient, the prior's gradients, the module, its prior loss and projection, convergence to {0, 1}.
"""
import copy
import io
import math
import os
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastbayes as fb
from fastbayes.nn import bernoulli as B
from fastbayes.ops._dispatch import has_op
from fastbayes.ops.bernoulli import bernoulli_gate, scale_mixture_prior
from fastbayes.reference import bernoulli as ref
from fastbayes.reference.philox import philox_uniform
from models import ConvBN, LeNet5

REQUIRED = {b for b in os.environ.get("FASTBAYES_REQUIRE_BACKENDS", "").split(",") if b}
# dθ is a float64 sum of identical products on every backend: only the summation order differs
DTHETA_TOL = dict(rtol=1e-6, atol=1e-6)


def _needs(op, name):
    if not has_op(op, name):
        msg = f"backend {name} does not implement {op} (fastbayes.kernels / fastbayes._C lacks it)"
        if name in REQUIRED:
            pytest.fail(msg)
        pytest.skip(msg)


def _theta(c, gen):
    th = torch.rand(c, generator=gen)
    th[0] = 1.0                 # always kept
    if c > 2:
        th[1] = 0.0             # always dropped
        th[2] = 0.5
    return th


# (shape, dim): conv-like S > 1, unit axis last (S = 1, P > 1), plain [B, C] (inline draws), odd sizes, 5-d
SHAPES = [((5, 7, 3, 3), 1), ((3, 11, 13), -1), ((6, 17), 1), ((2, 5, 9), 1), ((3, 4, 5, 2, 3), 2)]


@pytest.mark.parametrize("shape,dim", SHAPES)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backend_matches_reference(kernel_backend, shape, dim, masked, dtype):
    name, device = kernel_backend
    _needs("bernoulli_gate", name)
    gen = torch.Generator().manual_seed(hash((shape, masked, str(dtype))) % 2 ** 31)
    x = torch.randn(shape, generator=gen).to(dtype)
    th = _theta(shape[dim], gen)
    mask = (torch.rand(th.shape, generator=gen) > 0.3) if masked else None
    gy = torch.randn(shape, generator=gen).to(dtype)

    def run(backend, dev):
        xx, t = x.to(dev).requires_grad_(), th.to(dev).requires_grad_()
        with fb.backends.use(backend):
            y = bernoulli_gate(xx, t, dim=dim, seed=4321 + len(shape), offset=13,
                                      mask=None if mask is None else mask.to(dev))
        y.backward(gy.to(dev))
        return [v.detach().cpu() for v in (y, xx.grad, t.grad)]

    want, got = run("reference", "cpu"), run(name, device)
    assert torch.equal(got[0], want[0]), "y differs"          # a select: bit-exact in every dtype
    assert torch.equal(got[1], want[1]), "dx differs"
    torch.testing.assert_close(got[2], want[2], **DTHETA_TOL)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_backend_other_dtypes_and_float32_grad(kernel_backend, dtype):
    """float16 / float64 activations, and an upstream gradient in float32 for 16-bit x."""
    name, device = kernel_backend
    _needs("bernoulli_gate", name)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 6, 5, generator=gen).to(dtype)
    th = _theta(6, gen)
    for gy in (torch.randn(4, 6, 5, generator=gen).to(dtype), torch.randn(4, 6, 5, generator=gen)):
        outs = []
        for backend, dev in (("reference", "cpu"), (name, device)):
            fn = fb.ops._dispatch.backend_fn("bernoulli_gate_backward", backend)
            dx, dth = fn(gy.to(dev), x.to(dev), th.to(dev), None, 1, 77, 5)
            outs.append((dx.cpu(), dth.cpu()))
        assert torch.equal(outs[0][0], outs[1][0])
        torch.testing.assert_close(outs[1][1], outs[0][1], **DTHETA_TOL)


def test_backend_draws_reproducible(kernel_backend):
    name, device = kernel_backend
    _needs("bernoulli_gate", name)
    x = torch.randn(64, 9, 5, device=device)
    th = torch.full((9,), 0.5, device=device)
    with fb.backends.use(name):
        y1 = bernoulli_gate(x, th, seed=99)
        y2 = bernoulli_gate(x, th, seed=99)
        y3 = bernoulli_gate(x, th, seed=100)
        y4 = bernoulli_gate(x, th, seed=99, offset=64 * 9)
    assert torch.equal(y1, y2)
    assert not torch.equal(y1, y3) and not torch.equal(y1, y4)


@pytest.mark.parametrize("shape,dim", [((64, 40, 30), 1), ((300, 257), 1), ((0, 4, 3), 1), ((2, 4, 0), 1)])
def test_backend_multi_chunk_and_empty(kernel_backend, shape, dim):
    """Shapes past one parallel chunk (the fixed partition of the sums has several parts) and empty inputs."""
    name, device = kernel_backend
    _needs("bernoulli_gate_backward", name)
    gen = torch.Generator().manual_seed(11)
    x, gy = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    th = torch.rand(shape[dim], generator=gen)
    fns = [fb.ops._dispatch.backend_fn(op, b) for b in ("reference", name)
           for op in ("bernoulli_gate", "bernoulli_gate_backward")]
    want_y, (want_dx, want_dth) = fns[0](x, th, None, dim, 5, 0), fns[1](gy, x, th, None, dim, 5, 0)
    dev = [t.to(device) for t in (gy, x, th)]
    got_y, (got_dx, got_dth) = fns[2](*dev[1:], None, dim, 5, 0), fns[3](*dev, None, dim, 5, 0)
    assert torch.equal(got_y.cpu(), want_y) and torch.equal(got_dx.cpu(), want_dx)
    torch.testing.assert_close(got_dth.cpu(), want_dth, **DTHETA_TOL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backend_prior_matches_reference(kernel_backend, dtype):
    name, device = kernel_backend
    _needs("scale_mixture_prior", name)
    gen = torch.Generator().manual_seed(1)
    n = 301
    args = [torch.rand(n, generator=gen), torch.rand(n, generator=gen) * 5, torch.randint(1, 3000, (n,), generator=gen),
            torch.randn(n, generator=gen) - 12, torch.randn(n, generator=gen) - 3]
    args = [a.to(dtype) for a in args]
    g = torch.randn(n, generator=gen).to(dtype)
    want_f = ref.scale_mixture_prior(*args)
    want_b = ref.scale_mixture_prior_backward(g, *args)
    with fb.backends.use(name):
        th, sq = args[0].to(device).requires_grad_(), args[1].to(device).requires_grad_()
        cost = scale_mixture_prior(th, sq, *(a.to(device) for a in args[2:]))
        cost.backward(g.to(device))
    tol = dict(rtol=1e-6, atol=0) if dtype == torch.float32 else dict(rtol=1e-13, atol=0)
    torch.testing.assert_close(cost.detach().cpu(), want_f, **tol)
    torch.testing.assert_close(th.grad.cpu(), want_b[0], **tol)
    torch.testing.assert_close(sq.grad.cpu(), want_b[1], **tol)


# ---------------------------------------------------------------------------------------------------------------
# the reference's semantics


def test_reference_counter_layout_and_draw():
    """ξ[n, c] = 1[philox_uniform(seed, offset + n·C + c) < θ_c], shared over the dims between and after."""
    n, p, c, s = 4, 3, 5, 2
    x = torch.randn(n, p, c, s)
    th = torch.tensor([0.0, 0.3, 0.5, 0.9, 1.0])
    y = bernoulli_gate(x, th, dim=2, seed=7, offset=11)
    u = philox_uniform(7, 11, (n, c))
    xi = (u < th).view(n, 1, c, 1)
    assert torch.equal(y, torch.where(xi, x, 0.0))
    assert torch.all(y[:, :, 0] == 0) and torch.equal(y[:, :, 4], x[:, :, 4])
    assert ref.draws(x.shape, 2) == n * c


def test_keep_frequency_is_theta():
    x = torch.ones(20000, 4)
    th = torch.tensor([0.05, 0.3, 0.7, 0.95])
    freq = bernoulli_gate(x, th, seed=5).mean(0)
    sd = torch.sqrt(th * (1 - th) / 20000)
    assert torch.all((freq - th).abs() < 5 * sd)


def test_dropped_unit_outputs_exact_zero():
    x = torch.tensor([[math.inf, -1.0, math.nan]])
    y = bernoulli_gate(x, torch.tensor([0.0, 0.0, 1.0]), seed=0)
    assert y[0, 0] == 0 and y[0, 1] == 0 and math.isnan(y[0, 2])


def test_straight_through_is_the_derivative_in_xi():
    """dθ = ∂ℓ/∂ξ at the sampled ξ (ξ as a leaf tensor), dx = ∂ℓ/∂x; float64 gradcheck of the x path."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    th = torch.tensor([0.2, 0.5, 0.9, 1.0, 0.0], requires_grad=True)
    mask = torch.tensor([True, True, False, True, True])
    w = torch.randn(6, 5, 4, generator=gen, dtype=torch.float64)
    loss_of = lambda y: (torch.tanh(y) * w).sum()   # noqa: E731  (non-linear in ξ)
    loss_of(bernoulli_gate(x, th, seed=3, offset=2, mask=mask)).backward()
    xi = ref.gate_draws(x.shape, th, mask, 1, 3, 2).to(torch.float64).requires_grad_()
    x2 = x.detach().requires_grad_()
    loss_of(x2 * xi).backward()
    torch.testing.assert_close(th.grad, (xi.grad.sum((0, 2)) * mask).float())
    torch.testing.assert_close(x.grad, x2.grad)
    assert th.grad[2] == 0
    assert torch.autograd.gradcheck(lambda v: bernoulli_gate(v, th.detach(), seed=3, mask=mask),
                                    (x.detach().requires_grad_(),))


def test_eval_is_deterministic_threshold():
    x = torch.randn(4, 6, 3)
    th = torch.tensor([0.0, 0.49, 0.5, 0.51, 1.0, 0.9], requires_grad=True)
    mask = torch.tensor([True, True, True, True, True, False])
    state = torch.get_rng_state()
    y = bernoulli_gate(x, th, mask=mask, training=False)
    assert torch.equal(torch.get_rng_state(), state)          # nothing drawn
    keep = torch.tensor([0, 0, 1, 1, 1, 0], dtype=torch.bool).view(1, 6, 1)
    assert torch.equal(y, torch.where(keep, x, 0.0))
    assert not y.requires_grad


def test_seed_none_follows_torch_manual_seed():
    x = torch.randn(8, 4, 3)
    th = torch.full((4,), 0.5)
    torch.manual_seed(5)
    y1 = bernoulli_gate(x, th)
    torch.manual_seed(5)
    y2 = bernoulli_gate(x, th)
    assert torch.equal(y1, y2)


def test_opcheck():
    x = torch.randn(3, 4, 5)
    th = torch.tensor([0.1, 0.5, 0.9, 1.0])
    mask = torch.tensor([True, False, True, True])
    op = torch.ops.fastbayes.bernoulli_gate.default
    torch.library.opcheck(op, (x, th, mask, 1, torch.tensor(1), 0))
    torch.library.opcheck(op, (x.clone().requires_grad_(), th.clone().requires_grad_(), None, 1, torch.tensor(1), 3))
    torch.library.opcheck(op, (x.transpose(1, 2).contiguous(), torch.rand(5), None, 1, torch.tensor(2), 0))
    f64 = dict(dtype=torch.float64)
    p = [torch.rand(6, **f64), torch.rand(6, **f64), torch.full((6,), 9.0, **f64), torch.full((6,), -9.0, **f64),
         torch.full((6,), -1.0, **f64)]
    torch.library.opcheck(torch.ops.fastbayes.scale_mixture_prior.default,
                          (p[0].requires_grad_(), p[1].requires_grad_(), *p[2:]))


def test_prior_matches_autograd_of_formula_and_gradcheck():
    gen = torch.Generator().manual_seed(2)
    n = 7
    th = torch.rand(n, generator=gen, dtype=torch.float64, requires_grad=True)
    sq = (torch.rand(n, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    k = torch.randint(1, 50, (n,), generator=gen).double()
    lv1 = torch.randn(n, generator=gen, dtype=torch.float64) - 2
    lv0 = lv1 + 2 * math.log(1e-2)
    g = torch.randn(n, generator=gen, dtype=torch.float64)
    cost = scale_mixture_prior(th, sq, k, lv0, lv1)
    d_th, d_sq = torch.autograd.grad(cost, (th, sq), g)
    # the formula written out, differentiated by autograd
    c = [sq / (2 * lv.exp()) + k / 2 * torch.log(2 * math.pi * lv.exp()) for lv in (lv0, lv1)]
    want = th * c[1] + (1 - th) * c[0]
    w_th, w_sq = torch.autograd.grad(want, (th, sq), g)
    torch.testing.assert_close(cost, want, rtol=1e-14, atol=0)
    torch.testing.assert_close(d_th, w_th, rtol=1e-13, atol=0)
    torch.testing.assert_close(d_sq, w_sq, rtol=1e-13, atol=0)
    assert torch.autograd.gradcheck(lambda a, b: scale_mixture_prior(a, b, k, lv0, lv1), (th, sq))


def test_prior_weight_gradient_flows_through_sq_norm():
    lin = nn.Linear(3, 2).double()
    th = torch.tensor([0.3, 0.8], dtype=torch.float64)
    lv1, lv0 = torch.full((2,), -1.0, dtype=torch.float64), torch.full((2,), -5.0, dtype=torch.float64)
    sq = lin.weight.pow(2).sum(1) + lin.bias.pow(2)
    scale_mixture_prior(th, sq, torch.full((2,), 4.0, dtype=torch.float64), lv0, lv1).sum().backward()
    decay = (th * 0.5 * math.exp(1.0) + (1 - th) * 0.5 * math.exp(5.0))   # θ/(2σ1²) + (1-θ)/(2σ0²)
    torch.testing.assert_close(lin.weight.grad, 2 * lin.weight.detach() * decay[:, None])
    torch.testing.assert_close(lin.bias.grad, 2 * lin.bias.detach() * decay)


@pytest.mark.parametrize("kwargs,match", [
    (dict(theta=torch.full((5,), 0.5)), "theta"),
    (dict(dim=0), "dim"),
    (dict(dim=3), "dim"),
    (dict(mask=torch.ones(4)), "mask"),
    (dict(mask=torch.ones(3, dtype=torch.bool)), "mask"),
    (dict(seed=-1), "seed"),
    (dict(seed=2 ** 63), "seed"),
    (dict(offset=-1), "offset"),
    (dict(estimator="reinforce"), "estimator"),
    (dict(x=torch.randn(4)), "x"),
    (dict(x=torch.ones(2, 4, dtype=torch.int64)), "x"),
    (dict(theta=torch.ones(4, dtype=torch.int64)), "theta"),
])
def test_bad_arguments(kwargs, match):
    args = dict(x=torch.randn(2, 4, 3), theta=torch.full((4,), 0.5))
    args.update(kwargs)
    x, th = args.pop("x"), args.pop("theta")
    with pytest.raises(ValueError, match=match):
        bernoulli_gate(x, th, **args)


@pytest.mark.parametrize("which,bad,match", [
    (1, torch.zeros(4), "sq_norm"),
    (2, torch.zeros(3, dtype=torch.int64), "k"),
    (3, torch.zeros(3, requires_grad=True), "log_var0"),
    (0, torch.zeros(3, 2), "theta"),
])
def test_prior_bad_arguments(which, bad, match):
    args = [torch.full((3,), 0.5), torch.ones(3), torch.full((3,), 4.0), torch.full((3,), -9.0), torch.zeros(3)]
    args[which] = bad
    with pytest.raises(ValueError, match=match):
        scale_mixture_prior(*args)


# ---------------------------------------------------------------------------------------------------------------
# module, prior_loss, projection


def test_attach_defaults_and_state_round_trip():
    torch.manual_seed(0)
    m = LeNet5(widths=(4, 6, 16))
    gates = fb.add_gates(m, kind="bernoulli")
    assert list(gates) == ["conv1", "conv2", "fc1"]
    assert fb.add_gates(m, kind="bernoulli")["conv2"] is gates["conv2"]                       # idempotent
    g = gates["conv2"]
    fan_in = m.conv2.weight[0].numel()
    assert math.isclose(float(g.log_var1), math.log(2.0 / fan_in), rel_tol=1e-6)
    assert math.isclose(float(g.log_var0), math.log(2e-2 / fan_in), rel_tol=1e-6)     # σ0 = 0.1·σ1
    assert torch.equal(g.theta.detach(), torch.ones(6)) and gates["fc1"].dim == -1    # θ init 1
    with torch.no_grad():
        g.theta.copy_(torch.tensor([0.0, 0.2, 0.6, 1.0, 0.5, 0.7]))
        g.mask[4] = False
        g.frozen[5] = True
    m.eval()
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(copy.deepcopy(m)(x), m(x), rtol=0, atol=0)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    m2 = LeNet5(widths=(4, 6, 16))
    fb.add_gates(m2, kind="bernoulli")
    m2.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    m2.eval()
    torch.testing.assert_close(m2(x), m(x), rtol=0, atol=0)
    assert torch.equal(m2.conv2.fastbayes_gate.frozen, g.frozen)


def test_gate_frozen_mask_project_and_freeze():
    g = B.BernoulliGate(5, dim=-1)
    with torch.no_grad():
        g.theta.copy_(torch.tensor([-0.5, 0.3, 1.7, float("nan"), 0.9995]))
    g.project_()
    assert torch.equal(g.theta.detach(), torch.tensor([0.0, 0.3, 1.0, 0.0, 0.9995]))
    assert g.freeze_(1e-3) == 2 and torch.equal(g.frozen, torch.tensor([False, False, True, False, True]))
    assert g.theta[4] == 1.0
    with torch.no_grad():
        g.theta[2] = 0.1                   # a frozen unit still draws ξ = 1 and gets no θ gradient
    x = torch.randn(16, 5, requires_grad=True)
    y = g(x)
    assert torch.equal(y[:, 2], x[:, 2]) and torch.all(y[:, 0] == 0)
    y.sum().backward()
    assert g.theta.grad[2] == 0 and g.theta.grad[4] == 0 and g.theta.grad[1] != 0
    g.project_()
    assert g.theta[2] == 1.0
    assert g(torch.randn(5)).shape == (5,)          # unbatched input


def test_attach_projection_hook_clips_after_step():
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    gates = fb.add_gates(m, kind="bernoulli")
    opt = torch.optim.SGD(m.parameters(), lr=10.0)
    handle = B.attach_projection(opt, m)
    x = torch.randn(32, 3)
    loss = m(x).pow(2).mean() + B.prior_loss(m) / 10
    loss.backward()
    opt.step()
    th = gates["0"].theta.detach()
    assert torch.all((th >= 0) & (th <= 1)) and torch.any((th == 0) | (th == 1))
    handle.remove()
    with pytest.raises(ValueError, match="optimizer"):
        B.attach_projection(object(), m)


def test_prior_loss_one_launch_equals_per_unit_sum(monkeypatch):
    torch.manual_seed(1)
    m = ConvBN()
    gates = fb.add_gates(m, kind="bernoulli", layers=["conv", "fc"], placement="bn", kl_weight={"fc": 0.5})
    assert list(gates) == ["bn", "fc"]                  # conv's gate sits on the BatchNorm after it
    g_bn, g_fc = gates["bn"], gates["fc"]
    with torch.no_grad():
        g_bn.theta.copy_(torch.linspace(0.0, 1.0, 8))
        g_bn.mask[1] = False
        g_fc.frozen[0] = True
    calls = []
    real = scale_mixture_prior
    monkeypatch.setattr(B.ops, "scale_mixture_prior", lambda *a: calls.append(1) or real(*a))
    total = B.prior_loss(m)
    assert len(calls) == 1

    def manual(gate, layer, weight):
        rows = layer.weight.reshape(layer.weight.shape[0], -1).double()
        sq = rows.pow(2).sum(1) + (layer.bias.double().pow(2) if layer.bias is not None else 0)
        k = rows.shape[1] + (layer.bias is not None)
        th = torch.where(gate.frozen, 1.0, gate.theta.double())
        s1 = 2.0 / rows.shape[1]
        c = [sq / (2 * v) + k / 2 * math.log(2 * math.pi * v) for v in (s1 * 1e-2, s1)]
        return ((th * c[1] + (1 - th) * c[0]) * gate.mask).sum() * weight

    want = manual(g_bn, m.conv, 1.0) + manual(g_fc, m.fc, 0.5)
    torch.testing.assert_close(total.double(), want, rtol=1e-5, atol=0)
    total.backward()
    assert g_bn.theta.grad[1] == 0 and g_fc.theta.grad[0] == 0        # pruned / frozen: no θ gradient
    assert m.conv.weight.grad.abs().sum() > 0


def test_prior_loss_sets_missing_scale_and_refuses_models_without_gates():
    m = nn.Sequential(nn.Linear(5, 3), nn.Linear(3, 2))
    m[0].add_module("fastbayes_gate", B.BernoulliGate(3, dim=-1))   # as add_gates(kind=...) would
    assert math.isnan(float(m[0].fastbayes_gate.log_var1))
    B.prior_loss(m)
    assert math.isclose(float(m[0].fastbayes_gate.log_var1), math.log(2 / 5), rel_tol=1e-6)
    with pytest.raises(ValueError, match="BernoulliGate"):
        B.prior_loss(nn.Linear(2, 2))


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_features=0), "num_features"), (dict(dim=0), "dim"), (dict(init_theta=1.5), "init_theta"),
    (dict(sigma1=-1.0), "sigma1"), (dict(sigma0_ratio=2.0), "sigma0_ratio"), (dict(kl_weight=-1.0), "kl_weight"),
    (dict(slab_var=0.0), "slab_var"), (dict(slab_var=float("inf")), "slab_var"), (dict(spike_ratio=1.0), "spike_ratio"),
    (dict(spike_ratio=-0.1), "spike_ratio"), (dict(slab_var=1.0, sigma1=1.0), "sigma1"),
    (dict(spike_ratio=0.2, sigma0_ratio=0.3), "sigma0_ratio"),
])
def test_gate_bad_arguments(kwargs, match):
    args = dict(num_features=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        B.BernoulliGate(**args)
    with pytest.raises(TypeError, match="sigma2"):
        B.BernoulliGate(4, sigma2=1.0)


def test_old_prior_names_are_deprecated_aliases():
    new = B.BernoulliGate(3, slab_var=0.25, spike_ratio=0.2)
    with pytest.warns(DeprecationWarning, match="sigma1"):
        old = B.BernoulliGate(3, sigma1=0.5, spike_ratio=0.2)
    assert torch.equal(old.log_var1, new.log_var1) and torch.equal(old.log_var0, new.log_var0)
    with pytest.warns(DeprecationWarning, match="sigma0_ratio"):
        old = B.BernoulliGate(3, slab_var=0.25, sigma0_ratio=0.2)
    assert old.spike_ratio == 0.2 and torch.equal(old.log_var0, new.log_var0)
    with pytest.warns(DeprecationWarning, match="spike_ratio"):
        assert old.sigma0_ratio == 0.2
    g = B.BernoulliGate(3)
    assert g.prior is None
    g.set_prior_scale(0.5)                       # σ1, as before
    assert torch.equal(g.log_var1, torch.tensor(math.log(0.25)))
    assert (g.prior.slab_var, g.prior.spike_ratio) == pytest.approx((0.25, 0.1))
    assert float(g.log_var0) == pytest.approx(math.log(0.25 * 0.01), rel=1e-6)     # a float32 buffer


def test_checkpoints_with_the_old_option_names_load(tmp_path):
    """A checkpoint written before the rename stores the constructor option sigma0_ratio; it loads as spike_ratio."""
    from fastbayes import checkpoint
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))
    (gate,) = fb.add_gates(m, "bernoulli", spike_ratio=0.3).values()
    with torch.no_grad():
        gate.theta.copy_(torch.tensor([1.0, 0.2, 0.7, 0.0]))
        gate.mask[3] = False
    checkpoint.save(tmp_path / "new.pt", m)
    state = torch.load(tmp_path / "new.pt", weights_only=False)
    assert state["gates"][0]["options"]["spike_ratio"] == 0.3 and "sigma0_ratio" not in state["gates"][0]["options"]
    state["gates"][0]["options"]["sigma0_ratio"] = state["gates"][0]["options"].pop("spike_ratio")
    torch.save(state, tmp_path / "old.pt")
    fresh = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.warns(DeprecationWarning, match="sigma0_ratio"):
        loaded = checkpoint.load(tmp_path / "old.pt", fresh)
    loaded = loaded[0] if isinstance(loaded, tuple) else loaded
    (g2,) = fb.nn.gates(loaded).values()
    assert isinstance(g2, B.BernoulliGate) and g2.spike_ratio == 0.3
    for k, v in m.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_prior_loss_is_the_spike_slab_component_costs():
    """prior_loss = Σ θ·c1 + (1 − θ)·c0 with c1, c0 the SpikeSlab's component costs of each unit's weight row and
    bias: the gate and DLLP share one prior."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))
    (gate,) = fb.add_gates(m, "bernoulli", spike_ratio=0.2).values()
    with torch.no_grad():
        gate.theta.copy_(torch.tensor([1.0, 0.3, 0.6, 0.0]))
    prior = gate.prior
    assert isinstance(prior, fb.distributions.SpikeSlab) and prior.slab_var == pytest.approx(2 / 5)
    w = torch.cat([m[0].weight, m[0].bias[:, None]], 1).detach().double()
    th = gate.theta.detach().double()
    expect = (th * prior.nll_slab(w) + (1 - th) * prior.nll_spike(w)).sum()
    assert float(B.prior_loss(m).detach()) == pytest.approx(float(expect), rel=1e-5)


def test_exact_theta_grad():
    """Two passes with ξ_i forced to 1 and 0, the other gates drawing the same ξ; linear loss: equals Σ g·x."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 1))
    gates = fb.add_gates(m, kind="bernoulli")
    x = torch.randn(32, 4)
    g0, g2 = gates["0"], gates["2"]
    with torch.no_grad():
        g0.theta.fill_(0.5)

    def loss_fn(model):
        return model(x).sum()

    state = torch.get_rng_state()
    d = B.exact_theta_grad(m, loss_fn, g2, units=[0, 3])
    assert torch.equal(torch.get_rng_state(), state)       # torch's RNG left as it was
    # brute force: the same seeds for both gates in both passes
    want = []
    for i in (0, 3):
        vals = []
        for v in (1.0, 0.0):
            torch.set_rng_state(state)
            with torch.no_grad(), g2.forced(i, v):
                vals.append(float(loss_fn(m)))
        want.append(vals[0] - vals[1])
    torch.testing.assert_close(d, torch.tensor(want, dtype=torch.float64))
    # the last gate feeds a linear read-out of a sum: ℓ is affine in its ξ, so straight-through is exact there
    m2 = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 1))
    gate = fb.add_gates(m2, kind="bernoulli")["0"]
    torch.set_rng_state(state)
    loss_fn(m2).backward()
    torch.set_rng_state(state)
    torch.testing.assert_close(B.exact_theta_grad(m2, loss_fn, gate), gate.theta.grad.double(), rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="units"):
        B.exact_theta_grad(m2, loss_fn, gate, units=[6])


def test_gates_converge_to_zero_or_one():
    """A teacher using 3 hidden units: the student's gates end at exactly 0 or 1 and drop part of the surplus.

    σ0 = 0.1·σ1 and θ init 0.5 here (the defaults, θ init 1, wait for the weights to decay into the spike, which
    takes longer than this test's 300 steps on this toy)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)    # a tiny model: a parallel region costs more than it saves
    try:
        torch.manual_seed(3)
        n, d_in, hidden = 512, 6, 16
        teacher_w = torch.randn(3, d_in)
        x = torch.randn(n, d_in)
        y = torch.relu(x @ teacher_w.T) @ torch.tensor([1.0, -1.0, 0.5]) + 0.05 * torch.randn(n)
        m = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        gate = fb.add_gates(m, kind="bernoulli", init_theta=0.5, sigma0_ratio=0.1)["0"]
        opt = torch.optim.Adam(m.parameters(), lr=2e-2)
        B.attach_projection(opt, m)
        for _ in range(300):
            loss = F.mse_loss(m(x).squeeze(1), y) + B.prior_loss(m) / n
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    th = gate.theta.detach()
    assert torch.all((th == 0) | (th == 1)), th
    assert 3 <= int(th.sum()) <= hidden - 3, th
    m.eval()
    assert F.mse_loss(m(x).squeeze(1), y) < 0.01 * y.var()


def test_torch_compile_fullgraph_draws_fresh_noise():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))
    fb.add_gates(m, kind="bernoulli", init_theta=0.5)
    cm = torch.compile(m, fullgraph=True)
    x = torch.randn(16, 5)
    outs = [cm(x) for _ in range(2)]
    assert not torch.equal(outs[0], outs[1])
    outs[0].sum().backward()
    assert m[0].fastbayes_gate.theta.grad is not None
    m.eval()
    torch.testing.assert_close(cm(x), m(x))


def test_attach_is_a_deprecated_alias_of_add_gates():
    m = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    with pytest.warns(DeprecationWarning, match="add_gates"):
        gates = B.attach(m, init_theta=0.5)
    assert isinstance(gates["0"], fb.nn.BernoulliGate) and float(gates["0"].theta[0]) == 0.5
    assert fb.nn.gates(m) == gates


@pytest.mark.parametrize("theta_dtype", [torch.float32, torch.float64])
def test_cpp_autograd_equals_python_function(monkeypatch, theta_dtype):
    """On the compiled backend the gate's autograd runs in C++ (csrc/autograd.cpp): the same bits as the Python
    Function over the same kernels."""
    if not fb.backends.available()["cpu"]:
        pytest.skip("the compiled extension is not built")
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 7, 3, generator=gen)
    theta = torch.rand(7, generator=gen).to(theta_dtype)
    mask = torch.rand(7, generator=gen) > 0.2
    gy = torch.randn(5, 7, 3, generator=gen)

    def run():
        xx, th = x.clone().requires_grad_(), theta.clone().requires_grad_()
        with fb.backends.use("cpu"):
            y = bernoulli_gate(xx, th, mask=mask, seed=11, offset=2)
            y.backward(gy)
        return y.detach(), xx.grad, th.grad

    cpp = run()
    monkeypatch.setattr(fb.backends, "compiled", lambda name: False)
    py = run()
    for a, b in zip(cpp, py):
        assert a.dtype == b.dtype and torch.equal(a, b)
