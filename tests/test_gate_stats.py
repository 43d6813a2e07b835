"""gate_stats op: every backend against the reference, autograd, opcheck, argument checks."""
import math

import pytest
import torch

import fastbayes as fb
from fastbayes.reference import gate_stats as ref

# μ over [-60, 30] and σ over [1e-6, 1e3], odd count
MU = torch.linspace(-60, 30, 37, dtype=torch.float64)
LS = torch.linspace(math.log(1e-6), math.log(1e3), 29, dtype=torch.float64)
GRID_MU, GRID_LS = (t.reshape(-1) for t in torch.meshgrid(MU, LS, indexing="ij"))
TOL = {torch.float64: (1e-9, 1e-7), torch.float32: (1e-5, 1e-5)}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_backend_matches_reference(kernel_backend, dtype):
    name, device = kernel_backend
    mu, ls = GRID_MU.to(dtype), GRID_LS.to(dtype)
    g = torch.randn(mu.shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    want = ref.gate_stats(mu, ls) + ref.gate_stats_backward(g, mu, ls)
    with fb.backends.use(name):
        # fresh leaves: .to() may return the module-level grid itself, and grads would pile up across backends
        m, l = mu.to(device).detach().clone().requires_grad_(), ls.to(device).detach().clone().requires_grad_()
        kl, mean, snr = fb.ops.gate_stats(m, l)
        (kl * g.to(device)).sum().backward()
    got = (kl, mean, snr, m.grad, l.grad)
    atol, rtol = TOL[dtype]
    for label, gt, w in zip(("kl", "mean", "snr", "dmu", "dlog_sigma"), got, want):
        gt = gt.detach().cpu()
        finite = torch.isfinite(w)
        assert torch.equal(torch.isfinite(gt), finite), label
        torch.testing.assert_close(gt[finite], w[finite], atol=atol, rtol=rtol, msg=lambda m: f"{label}: {m}")


def test_golden_values_through_op():
    mu = torch.tensor([0.0, -1.0, -5.0, -10.0, -15.0, -19.9, -2.0, -10.0], dtype=torch.float64)
    sigma = torch.tensor([math.exp(-5), 0.5, 1, 3, 3, 0.5, 10, 10], dtype=torch.float64)
    kl, mean, snr = fb.ops.gate_stats(mu, sigma.log())
    torch.testing.assert_close(kl, torch.tensor([7.269940921, 2.348201693, 1.576797744, 0.4841852861, 0.6142138881,
                                                 2.883452593, 0.08699703347, 0.01036124627], dtype=torch.float64),
                               rtol=1e-8, atol=0)
    torch.testing.assert_close(snr, torch.tensor([246.6992061, 2.170320937, 0.7636517277, 0.1139640541,
                                                  0.02794189076, 2.622067247, 0.4130845325, 0.2976674812],
                                                 dtype=torch.float64), rtol=1e-8, atol=0)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradcheck(backend):
    if not fb.backends.available()[backend]:
        pytest.skip(fb.backends.why_not()[backend])
    mu = torch.tensor([0.0, -1.0, -5.0, -19.9, 2.0, -30.0], dtype=torch.float64, requires_grad=True)
    ls = torch.tensor([-5.0, math.log(0.5), 0.0, math.log(0.5), -1.0, 1.0], dtype=torch.float64, requires_grad=True)
    with fb.backends.use(backend):
        assert torch.autograd.gradcheck(lambda m, l: fb.ops.gate_stats(m, l)[0], (mu, ls))


def test_mean_and_snr_carry_no_gradient():
    mu, ls = torch.zeros(3, requires_grad=True), torch.zeros(3, requires_grad=True)
    kl, mean, snr = fb.ops.gate_stats(mu, ls)
    assert kl.requires_grad and not mean.requires_grad and not snr.requires_grad


def test_opcheck():
    mu = torch.tensor([0.0, -1.0, -5.0], dtype=torch.float64)
    ls = torch.tensor([-5.0, -0.7, 0.0], dtype=torch.float64)
    torch.library.opcheck(torch.ops.fastbayes.gate_stats.default, (mu, ls, -20.0, 0.0))
    torch.library.opcheck(torch.ops.fastbayes.gate_stats.default,
                          (mu.clone().requires_grad_(), ls.clone().requires_grad_(), -20.0, 0.0))
    torch.library.opcheck(torch.ops.fastbayes.gate_stats_backward.default, (torch.ones(3, dtype=torch.float64), mu, ls,
                                                                             -20.0, 0.0))


def test_shapes_preserved_and_dtypes():
    mu, ls = torch.zeros(2, 3), torch.full((2, 3), -5.0)
    kl, mean, snr = fb.ops.gate_stats(mu, ls)
    assert kl.shape == (2, 3) and kl.dtype == torch.float32


@pytest.mark.parametrize("call,match", [
    (lambda: fb.ops.gate_stats(torch.zeros(3), torch.zeros(4)), "log_sigma"),
    (lambda: fb.ops.gate_stats(torch.zeros(3, dtype=torch.int64), torch.zeros(3)), "mu"),
    (lambda: fb.ops.gate_stats(torch.zeros(3), torch.zeros(3), a=0.0, b=-1.0), "bound"),
    (lambda: fb.ops.gate_stats(torch.zeros(3), torch.zeros(3), a=float("nan")), "bound"),
])
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_philox_uniform_contract():
    u = fb.ops.philox_uniform(2 ** 40 + 3, 2 ** 33, (5, 7))
    assert u.shape == (5, 7) and u.dtype == torch.float32 and float(u.min()) >= 0 and float(u.max()) < 1
    torch.testing.assert_close(fb.ops.philox_uniform(2 ** 40 + 3, 2 ** 33 + 7, 28), u.reshape(-1)[7:], rtol=0, atol=0)
    with pytest.raises(ValueError, match="seed"):
        fb.ops.philox_uniform(-1, 0, 3)
    with pytest.raises(ValueError, match="shape"):
        fb.ops.philox_uniform(1, 0, (2, -1))
