"""lognormal_noise: reference against finite differences and the posterior; every backend against the reference."""
import math
import zlib

import numpy as np
import pytest
import scipy.stats as st
import torch

import fastbayes as fb
from fastbayes.reference import lognormal as ref

GRANS = ("batch", "sample", "element")
# (dtype, atol, rtol) of a backend against the reference on the same Philox draws
TOL = {torch.float32: (1e-5, 2e-4), torch.bfloat16: (2e-2, 2e-2), torch.float16: (2e-3, 2e-3)}


def _params(c, gen, spread=True):
    mu = torch.randn(c, generator=gen) * 3 - 2 if spread else torch.zeros(c)
    ls = torch.randn(c, generator=gen) - 1.5 if spread else torch.full((c,), -5.0)
    mu[0], ls[0] = 0.0, -5.0          # the init point
    if c > 2:
        mu[1], ls[1] = -19.5, -3.0    # θ ≈ e^-19.5 near the lower bound
        mu[2], ls[2] = 3.0, -1.0      # μ above b: mirrored upper tail
    return mu, ls


def _case(shape, dim, gen, dtype=torch.float32):
    x = torch.randn(shape, generator=gen).to(dtype)
    c = shape[dim]
    mu, ls = _params(c, gen)
    return x, mu, ls


SHAPES = [((5, 7, 3, 3), 1), ((3, 11, 13), -1), ((6, 17), 1), ((2, 5, 9), 1)]


@pytest.mark.parametrize("gran", GRANS)
@pytest.mark.parametrize("shape,dim", SHAPES)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backend_matches_reference(kernel_backend, gran, shape, dim, masked, dtype):
    name, device = kernel_backend
    gen = torch.Generator().manual_seed(zlib.crc32(repr((gran, shape, masked)).encode()))   # stable across runs
    x, mu, ls = _case(shape, dim, gen, dtype)
    mask = (torch.rand(mu.shape, generator=gen) > 0.3) if masked else None
    gy = torch.randn(shape, generator=gen).to(dtype)
    args = dict(dim=dim, granularity=gran, seed=1234 + len(shape), offset=17)

    def run(backend, dev):
        xx = x.to(dev).clone().requires_grad_()
        m, l = mu.to(dev).clone().requires_grad_(), ls.to(dev).clone().requires_grad_()
        with fb.backends.use(backend):   # the backward picks its backend when it runs: keep it inside
            y = fb.ops.lognormal_noise(xx, m, l, mask=None if mask is None else mask.to(dev), **args)
            y.backward(gy.to(dev))
        return [t.detach().cpu().float() for t in (y, xx.grad, m.grad, l.grad)]

    want = run("reference", "cpu")
    got = run(name, device)
    atol, rtol = TOL[dtype]
    for label, g, w in zip(("y", "dx", "dmu", "dlog_sigma"), got, want):
        if label in ("y", "dx"):
            torch.testing.assert_close(g, w, atol=atol, rtol=rtol, msg=lambda m: f"{label}: {m}")
        else:
            # ∂x_s/∂μ = 1 - ra - rb cancels for draws near a bound, so a 1-ulp difference in ε between float32
            # libms moves single sums by ~1e-3 relative; compare on the scale of the largest gradient
            scale = max(1.0, float(w.abs().max()))
            torch.testing.assert_close(g, w, atol=1e-3 * scale, rtol=1e-3, msg=lambda m: f"{label}: {m}")


def test_backend_draws_are_reproducible(kernel_backend):
    name, device = kernel_backend
    x = torch.randn(4, 9, 5, device=device)
    mu, ls = torch.full((9,), -1.0, device=device), torch.full((9,), -0.5, device=device)
    with fb.backends.use(name):
        y1 = fb.ops.lognormal_noise(x, mu, ls, granularity="element", seed=99)
        y2 = fb.ops.lognormal_noise(x, mu, ls, granularity="element", seed=99)
        y3 = fb.ops.lognormal_noise(x, mu, ls, granularity="element", seed=100)
    assert torch.equal(y1, y2)
    assert not torch.equal(y1, y3)


def _gradcheck_case(seed):
    """float64 x [3, 5, 4], μ, log σ (leaves) and a mask with one pruned unit, for the gradchecks."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    mu = (torch.randn(5, generator=gen, dtype=torch.float64) - 2).requires_grad_()
    ls = (torch.randn(5, generator=gen, dtype=torch.float64) * 0.5 - 1).requires_grad_()
    return x, mu, ls, torch.tensor([True, True, False, True, True])


@pytest.mark.parametrize("gran", GRANS)
def test_reference_gradcheck(gran):
    x, mu, ls, mask = _gradcheck_case(0)
    with fb.backends.use("reference"):
        f = lambda x_, m_, l_: fb.ops.lognormal_noise(x_, m_, l_, granularity=gran, mask=mask, seed=3, offset=5)
        assert torch.autograd.gradcheck(f, (x, mu, ls))


@pytest.mark.parametrize("mu,sigma", [(0.0, math.exp(-5)), (-1.0, 0.5), (-19.9, 0.5), (-30.0, 2.0), (4.0, 1.0),
                                      (-10.0, 10.0)])
def test_samples_follow_posterior(mu, sigma):
    """θ drawn by the reference are TruncatedLogNormal: KS test of log θ against scipy's truncnorm."""
    x = torch.ones(3000, 1, dtype=torch.float64)
    with fb.backends.use("reference"):
        y = fb.ops.lognormal_noise(x, torch.tensor([mu], dtype=torch.float64),
                                   torch.tensor([math.log(sigma)], dtype=torch.float64), granularity="sample", seed=11)
    lo, hi = (-20 - mu) / sigma, (0 - mu) / sigma
    p = st.kstest(torch.log(y).numpy().ravel(), st.truncnorm(lo, hi, loc=mu, scale=sigma).cdf).pvalue
    assert p > 1e-3


def test_samples_per_unit_independent_streams():
    """Different units and different examples get different draws; 'batch' shares θ across the batch."""
    x = torch.ones(64, 3)
    mu, ls = torch.full((3,), -2.0), torch.zeros(3)
    with fb.backends.use("reference"):
        yb = fb.ops.lognormal_noise(x, mu, ls, granularity="batch", seed=1)
        ys = fb.ops.lognormal_noise(x, mu, ls, granularity="sample", seed=1)
    assert torch.all(yb == yb[0])
    assert len(torch.unique(ys[:, 0])) == 64
    assert not torch.equal(ys[:, 0], ys[:, 1])


def test_eval_is_mean_times_mask():
    x = torch.randn(4, 6, 5)
    mu, ls = torch.linspace(-6, 0, 6), torch.linspace(-4, 1, 6)
    mask = torch.tensor([1, 1, 0, 1, 0, 1], dtype=torch.bool)
    y = fb.ops.lognormal_noise(x, mu, ls, mask=mask, training=False)
    mean = fb.ops.gate_stats(mu, ls)[1]
    torch.testing.assert_close(y, x * (mean * mask).view(1, 6, 1))


def test_mask_zeroes_unit_and_its_gradient():
    x = torch.randn(4, 3, 5, requires_grad=True)
    mu, ls = torch.zeros(3, requires_grad=True), torch.full((3,), -1.0, requires_grad=True)
    mask = torch.tensor([True, False, True])
    y = fb.ops.lognormal_noise(x, mu, ls, mask=mask, seed=0)
    assert torch.all(y[:, 1] == 0)
    y.sum().backward()
    assert mu.grad[1] == 0 and ls.grad[1] == 0 and torch.all(x.grad[:, 1] == 0)


def test_seed_none_follows_torch_manual_seed():
    x = torch.randn(2, 4, 3)
    mu, ls = torch.zeros(4), torch.zeros(4)
    torch.manual_seed(5)
    y1 = fb.ops.lognormal_noise(x, mu, ls)
    torch.manual_seed(5)
    y2 = fb.ops.lognormal_noise(x, mu, ls)
    assert torch.equal(y1, y2)


def test_opcheck():
    x = torch.randn(3, 4, 5)
    mu, ls = torch.zeros(4), torch.full((4,), -1.0)
    mask = torch.tensor([True, False, True, True])
    for gran in GRANS:
        torch.library.opcheck(torch.ops.fastbayes.lognormal_noise.default, (x, mu, ls, mask, -20.0, 0.0, 1, gran, torch.tensor(1), 0))
        torch.library.opcheck(torch.ops.fastbayes.lognormal_noise.default,
                              (x.clone().requires_grad_(), mu.clone().requires_grad_(), ls.clone().requires_grad_(),
                               None, -20.0, 0.0, 1, gran, torch.tensor(1), 0))


@pytest.mark.parametrize("kwargs,match", [
    (dict(mu=torch.zeros(5)), "mu"),
    (dict(granularity="pixel"), "granularity"),
    (dict(dim=3), "dim"),
    (dict(dim=0, granularity="sample"), "dim"),
    (dict(mask=torch.ones(4)), "mask"),
    (dict(a=0.0, b=-1.0), "bound"),
    (dict(seed=-1), "seed"),
    (dict(log_sigma=torch.zeros(3)), "log_sigma"),
])
def test_bad_arguments(kwargs, match):
    args = dict(x=torch.randn(2, 4, 3), mu=torch.zeros(4), log_sigma=torch.zeros(4))
    args.update(kwargs)
    x, mu, ls = args.pop("x"), args.pop("mu"), args.pop("log_sigma")
    with pytest.raises(ValueError, match=match):
        fb.ops.lognormal_noise(x, mu, ls, **args)


def test_integer_x_refused():
    with pytest.raises(ValueError, match="x"):
        fb.ops.lognormal_noise(torch.ones(2, 4, dtype=torch.int64), torch.zeros(4), torch.zeros(4))


def test_extreme_parameters_finite():
    """μ far outside [a, b] and σ from 1e-6 to 1e3: finite outputs and gradients."""
    mu = torch.tensor([-60.0, -60.0, 30.0, 30.0, -10.0, -10.0, -20.0, 0.0])
    ls = torch.log(torch.tensor([1e-6, 1e3, 1e-6, 1e3, 1e-6, 1e3, 1e-6, 1e-6]))
    x = torch.randn(16, 8, requires_grad=True)
    m, l = mu.clone().requires_grad_(), ls.clone().requires_grad_()
    for gran in GRANS:
        y = fb.ops.lognormal_noise(x, m, l, granularity=gran, seed=7)
        y.sum().backward()
        for t in (y, x.grad, m.grad, l.grad):
            assert torch.isfinite(t).all()
        assert torch.all((y.abs() <= x.abs() * (1 + 1e-6)))   # θ ∈ [e^a, e^b] = (0, 1]


@pytest.mark.parametrize("u_value", [0.0, 1.0])
def test_boundary_uniforms_stay_finite(monkeypatch, u_value):
    """u = 0 (or u = 1, which float32 rounding of Triton's mapping produces) with Φ(α')/Φ(β') underflowed once gave
    log w = -inf and NaN; w is floored at FLT_MIN in every backend."""
    from fastbayes.reference import lognormal as ref_mod
    monkeypatch.setattr(ref_mod, "philox_uniform",
                        lambda seed, offset, shape, device=None: torch.full(shape, u_value, dtype=torch.float32))
    mu = torch.tensor([-0.9, -15.0, 3.0, -40.0])        # mirrored and not, both tails
    ls = torch.tensor([-0.4, -0.2, -1.0, 0.5])
    x = torch.randn(3, 4, dtype=torch.float64)
    for dt in (torch.float32, torch.float64):
        y = ref_mod.lognormal_noise(x.to(dt), mu, ls, None, -20.0, 0.0, 1, "element", 0, 0)
        grads = ref_mod.lognormal_noise_backward(torch.ones_like(y), x.to(dt), mu, ls, None, -20.0, 0.0, 1, "element", 0, 0)
        assert torch.isfinite(y).all() and all(torch.isfinite(g).all() for g in grads)


def _compiled_or_skip():
    if not fb.backends.available()["cpu"]:
        pytest.skip("the compiled extension is not built")


@pytest.mark.parametrize("gran", GRANS)
def test_cpp_autograd_gradcheck(gran):
    """The eager path on the compiled backend has its autograd in C++ (csrc/autograd.cpp): finite differences."""
    _compiled_or_skip()
    x, mu, ls, mask = _gradcheck_case(1)
    with fb.backends.use("cpu"):
        y = fb.ops.lognormal_noise(x, mu, ls, granularity=gran, mask=mask, seed=3, offset=5)
        assert type(y.grad_fn).__name__ == "CppFunction"     # not the Python Function of the other backends
        f = lambda x_, m_, l_: fb.ops.lognormal_noise(x_, m_, l_, granularity=gran, mask=mask, seed=3, offset=5)
        assert torch.autograd.gradcheck(f, (x, mu, ls))


@pytest.mark.parametrize("gran", GRANS)
def test_cpp_autograd_equals_python_function(monkeypatch, gran):
    """Same kernels under either autograd: the C++ node and the Python Function give the same bits."""
    _compiled_or_skip()
    gen = torch.Generator().manual_seed(2)
    x, mu, ls = _case((6, 9, 4), 1, gen)
    mask = torch.rand(9, generator=gen) > 0.3
    gy = torch.randn(6, 9, 4, generator=gen)

    def run():
        xx, m, l = (t.clone().requires_grad_() for t in (x, mu, ls))
        with fb.backends.use("cpu"):
            y = fb.ops.lognormal_noise(xx, m, l, mask=mask, granularity=gran, seed=5, offset=3)
            y.backward(gy)
        return y.detach(), xx.grad, m.grad, l.grad

    cpp = run()
    monkeypatch.setattr(fb.backends, "compiled", lambda name: False)
    py = run()
    for a, b in zip(cpp, py):
        assert torch.equal(a, b)


@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("gran", GRANS)
def test_gate_node_equals_clamp_then_noise(monkeypatch, gran, contiguous):
    """LogNormalGate's forward on the compiled backend is one C++ node (clamp + noise, csrc/autograd.cpp): the same
    bits as a clamp node followed by the noise, and no log σ gradient where the clamp cut (log σ outside [-20, 5]).
    The node draws its seed in C++ (seed -1) and makes its inputs contiguous itself: under one torch.manual_seed it
    must draw what the Python path's fresh_seed_int draws, on a strided input too."""
    _compiled_or_skip()
    gen = torch.Generator().manual_seed(4)
    gate = fb.nn.LogNormalGate(9, granularity=gran)
    with torch.no_grad():
        gate.mu.copy_(torch.randn(9, generator=gen) - 1)
        gate.log_sigma.copy_(torch.randn(9, generator=gen))
        gate.log_sigma[0], gate.log_sigma[1] = 6.0, -21.0
        gate.mask[2] = False
    x = torch.randn(5, 9, 3, generator=gen)
    gy = torch.randn(5, 9, 3, generator=gen)
    if not contiguous:
        x = torch.randn(5, 3, 9, generator=gen).transpose(1, 2)

    def run():
        xx = x.clone().requires_grad_()
        gate.mu.grad = gate.log_sigma.grad = None
        torch.manual_seed(11)
        with fb.backends.use("cpu"):
            y = gate(xx)
            y.backward(gy)
        return y.detach(), xx.grad, gate.mu.grad.clone(), gate.log_sigma.grad.clone(), y.grad_fn

    *cpp, fn = run()
    assert type(fn).__name__ == "CppFunction"
    assert cpp[3][0] == 0 and cpp[3][1] == 0 and cpp[3][2] == 0
    monkeypatch.setattr(fb.backends, "compiled", lambda name: False)
    *py, fn = run()
    assert type(fn).__name__ != "CppFunction"
    for a, b in zip(cpp, py):
        assert torch.equal(a, b)
