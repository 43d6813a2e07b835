"""svgd_direction: the reference against a naive n×n×d loop, every backend against the reference (both stages and the
public op), the median convention, argument checks, and the SVGD optimiser on a 2-D Gaussian target."""
import math

import numpy as np
import pytest
import torch

import fastbayes as fb
from fastbayes.ops import _dispatch
from fastbayes.ops.svgd import svgd_direction
from fastbayes.reference import svgd as R
from fastbayes.svgd import SVGD

# (dtype, tol): errors are measured relative to the largest reference value of the compared tensor
TOL = {torch.float32: 3e-6, torch.float64: 1e-12}


def _stages(name):
    """(svgd_kernel_matrix, svgd_apply) of a backend, called directly (not through dispatch)."""
    if name == "triton":
        try:
            from fastbayes.kernels import svgd as K
        except ImportError:
            from kernels import svgd as K
        return K.svgd_kernel_matrix, K.svgd_apply
    from fastbayes import _C  # noqa: F401  (registers torch.ops.fastbayes_C)
    return torch.ops.fastbayes_C.svgd_kernel_matrix, torch.ops.fastbayes_C.svgd_apply


def _close(got, want, tol, label):
    got, want = got.detach().cpu().double(), want.detach().cpu().double()
    scale = max(want.abs().max().item(), 1e-300)
    err = (got - want).abs().max().item() / scale if want.numel() else 0.0
    assert err <= tol, f"{label}: max error {err:.3g} x max|ref| > {tol:.3g}"


def _naive(xs, ss, h=None):
    """Independent formula: explicit loops over particle pairs and coordinates, numpy float64."""
    n = xs[0].shape[0]
    X = np.concatenate([np.asarray(x, dtype=np.float64).reshape(n, -1) for x in xs], axis=1)
    S = np.concatenate([np.asarray(s, dtype=np.float64).reshape(n, -1) for s in ss], axis=1)
    d = X.shape[1]
    D = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            for k in range(d):
                D[i, j] += (X[i, k] - X[j, k]) ** 2
    if h is None:
        h = np.median(D[np.triu_indices(n, 1)]) / np.log(n + 1)
    phi = np.zeros((n, d))
    for i in range(n):
        for j in range(n):
            kij = np.exp(-D[i, j] / h)
            for k in range(d):
                phi[i, k] += kij * S[j, k] + (2.0 / h) * (X[i, k] - X[j, k]) * kij
    phi /= n
    out, c = [], 0
    for x in xs:
        w = int(np.prod(x.shape[1:]))
        out.append(phi[:, c:c + w].reshape(x.shape))
        c += w
    return out, h


def _inputs(n, shapes, dtype, seed=0, offset=0.0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    xs = [offset + scale * torch.randn((n, *s), generator=g, dtype=torch.float64) for s in shapes]
    ss = [torch.randn((n, *s), generator=g, dtype=torch.float64) for s in shapes]
    return [x.to(dtype) for x in xs], [s.to(dtype) for s in ss]


# --------------------------------------------------------------------------------------------------------------
# reference vs the naive formula; the median convention

@pytest.mark.parametrize("n,shapes,bandwidth", [(2, [(1,)], None), (5, [(3,)], None), (7, [(4,), (2, 3)], None),
                                                (6, [(13,)], 0.7), (5, [(2, 2), (1,)], 3.0)])
def test_reference_matches_naive_loops(n, shapes, bandwidth):
    xs, ss = _inputs(n, shapes, torch.float64, seed=n)
    want, h = _naive([x.numpy() for x in xs], [s.numpy() for s in ss], bandwidth)
    got = R.svgd_direction(xs, ss, bandwidth)
    K, h_ref = R.svgd_kernel_matrix(xs, bandwidth)
    assert h_ref.dtype == torch.float64 and h_ref.shape == ()
    assert math.isclose(h_ref.item(), h, rel_tol=1e-13)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-11, atol=1e-13)


def _line(points):
    return torch.tensor(points, dtype=torch.float64)[:, None]


@pytest.mark.parametrize("points,median", [
    ([0.0, 1.0, 3.0, 6.0, 10.0], 20.5),  # 10 pairs (even): sorted 1 4 9 9 16 25 36 49 81 100 -> (16 + 25) / 2
    ([0.0, 1.0, 3.0, 7.0], 12.5),        # 6 pairs (even): 1 4 9 16 36 49 -> (9 + 16) / 2
    ([0.0, 1.0, 3.0], 4.0),              # 3 pairs (odd): 1 4 9 -> 4
])
def test_median_bandwidth_numpy_convention(points, median):
    x = _line(points)
    d2 = ((x - x.T) ** 2).numpy()
    assert np.median(d2[np.triu_indices(len(points), 1)]) == median
    _, h = R.svgd_kernel_matrix([x], None)
    assert h.item() == pytest.approx(median / math.log(len(points) + 1), rel=1e-15)


def test_median_fallbacks():
    # 4 of 5 particles coincide: 6 of 10 pairs are 0, the median is 0 -> the largest squared distance (4) is used
    _, h = R.svgd_kernel_matrix([_line([1.0, 1.0, 1.0, 1.0, 3.0])], None)
    assert h.item() == pytest.approx(4.0 / math.log(6), rel=1e-15)
    # all equal: K = 1 for any h; h = 1 and φ = mean score
    x = torch.ones(4, 3, dtype=torch.float64)
    s = torch.arange(12, dtype=torch.float64).reshape(4, 3)
    K, h = R.svgd_kernel_matrix([x], None)
    assert h.item() == 1.0 and torch.equal(K, torch.ones(4, 4, dtype=torch.float64))
    torch.testing.assert_close(R.svgd_direction(x, s), s.mean(0).expand(4, 3))


# --------------------------------------------------------------------------------------------------------------
# every backend vs the reference

# n <= 8 takes the CPU's one-pass AVX-512 apply where the CPU has it (8208 columns: 64-byte aligned rows, streaming
# stores, two column blocks; 4099: unaligned rows and a tail), n > 8 the tiled one
CASES = [(5, [(13,)]), (7, [(37,), (3, 5)]), (2, [(3,)]), (19, [(1,), (2, 33)]), (8, [(8208,), (4099,)])]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bandwidth", [None, 0.8])
@pytest.mark.parametrize("n,shapes", CASES)
def test_backend_stages_match_reference(kernel_backend, n, shapes, bandwidth, dtype):
    name, device = kernel_backend
    kernel_matrix, apply = _stages(name)
    xs, ss = _inputs(n, shapes, dtype, seed=3 * n + len(shapes))
    K_ref, h_ref = R.svgd_kernel_matrix([x.double() for x in xs], bandwidth)
    K, h = kernel_matrix([x.to(device) for x in xs], bandwidth)
    assert K.dtype == torch.float64 and K.shape == (n, n) and h.dtype == torch.float64 and h.numel() == 1
    assert K.device.type == device and h.device.type == device
    tol = TOL[dtype]
    _close(K, K_ref, tol, "K")
    _close(h.reshape(()), h_ref, tol, "h")
    for k, (x, s) in enumerate(zip(xs, ss)):
        phi = apply(K_ref.to(device), h_ref.to(device), x.to(device), s.to(device))
        assert phi.dtype == dtype and phi.shape == x.shape
        _close(phi, R.svgd_apply(K_ref, h_ref, x.double(), s.double()), tol, f"phi[{k}]")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backend_far_from_origin(kernel_backend, dtype):
    """Close particles far from the origin: ‖x‖² ~ 1e8 ≫ D ~ 1e-2; a Gram matrix of the raw particles in float32 would
    lose every digit of D, the shifted one keeps them."""
    name, device = kernel_backend
    kernel_matrix, _ = _stages(name)
    xs, _ = _inputs(6, [(200,)], dtype, seed=1, offset=700.0, scale=0.01)
    K_ref, h_ref = R.svgd_kernel_matrix([x.double() for x in xs], None)
    K, h = kernel_matrix([x.to(device) for x in xs], None)
    _close(K, K_ref, 1e-5 if dtype == torch.float32 else 1e-10, "K")
    _close(h.reshape(()), h_ref, 1e-5 if dtype == torch.float32 else 1e-10, "h")


@pytest.mark.parametrize("scale", [1e20, 1e-20])
def test_cpu_huge_and_tiny_particles_stay_finite(scale):
    """float32 particles spread over ±1e20 (their squares overflow float32) or ±1e-20 (theirs underflow): the
    distances are accumulated exactly enough that the kernel matrix and φ match the float64 reference."""
    if not fb.backends.available()["cpu"]:
        pytest.skip("no compiled CPU backend")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 300, generator=g) * scale
    s = torch.randn(5, 300, generator=g)
    with fb.backends.use("cpu"):
        K, h = torch.ops.fastbayes.svgd_kernel_matrix([x], None)
        phi = svgd_direction(x, s)
    K_ref, h_ref = R.svgd_kernel_matrix([x.double()], None)
    assert torch.isfinite(K).all() and torch.isfinite(phi).all()
    _close(K, K_ref, 1e-5, "K")
    _close(h.reshape(()), h_ref, 1e-5, "h")
    with fb.backends.use("reference"):
        _close(phi, svgd_direction(x, s), 1e-4, "phi")


def test_cpu_gram_tiles_in_and_out_of_the_float_range():
    """n = 8 (the one-pass Gram kernel where AVX-512 runs): a tile whose differences need the overflow guard's
    rescaling falls back to the buffered kernel, its neighbours do not; together they match the float64 reference."""
    if not fb.backends.available()["cpu"]:
        pytest.skip("no compiled CPU backend")
    g = torch.Generator().manual_seed(7)
    x = torch.randn(8, 3 * 4096 + 5, generator=g)
    x[:, 4096:8192] *= 1e-19                      # a tile of tiny differences (squares underflow float32)
    for scale in (1.0, 1e18):
        xs = x.clone()
        xs[:, 8192:] *= scale                       # and with a tile of huge ones
        with fb.backends.use("cpu"):
            K, h = torch.ops.fastbayes.svgd_kernel_matrix([xs], None)
        K_ref, h_ref = R.svgd_kernel_matrix([xs.double()], None)
        _close(K, K_ref, 1e-5, "K")
        _close(h.reshape(()), h_ref, 1e-5, "h")


@pytest.mark.parametrize("bandwidth", [None, 1.5])
def test_backend_public_op(kernel_backend, bandwidth):
    name, device = kernel_backend
    if not (_dispatch.has_op("svgd_kernel_matrix", name) and _dispatch.has_op("svgd_apply", name)):
        pytest.skip(f"{name} does not export the svgd ops to dispatch (fastbayes.kernels / fastbayes._C)")
    xs, ss = _inputs(7, [(5, 3), (13,)], torch.float32, seed=11)
    want = R.svgd_direction([x.double() for x in xs], [s.double() for s in ss], bandwidth)
    with fb.backends.use(name):
        got = svgd_direction([x.to(device) for x in xs], [s.to(device) for s in ss], bandwidth)
        one = svgd_direction(xs[1].to(device), ss[1].to(device), bandwidth)
    assert isinstance(got, list) and len(got) == 2
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape and g.dtype == torch.float32 and g.device.type == device
        _close(g, w, TOL[torch.float32], f"phi[{k}]")
    want_one = R.svgd_direction(xs[1].double(), ss[1].double(), bandwidth)
    assert isinstance(one, torch.Tensor)
    _close(one, want_one, TOL[torch.float32], "single tensor")


@pytest.mark.parametrize("n", [9, 8])
def test_cpu_result_independent_of_thread_count(n):
    if not fb.backends.available()["cpu"]:
        pytest.skip(fb.backends.why_not()["cpu"])
    kernel_matrix, apply = _stages("cpu")
    xs, ss = _inputs(n, [(70001,)], torch.float32, seed=5)
    old = torch.get_num_threads()
    try:
        outs = []
        for t in (1, 2):
            torch.set_num_threads(t)
            K, h = kernel_matrix(xs, None)
            outs.append((K, h, apply(K, h, xs[0], ss[0])))
    finally:
        torch.set_num_threads(old)
    for a, b in zip(*outs):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------------------------
# the public op: structure, dtypes, no gradient, custom-op checks, bad arguments

def test_public_structure_dtype_and_no_grad():
    with fb.backends.use("reference"):
        x = torch.randn(5, 2, 3, dtype=torch.float16, requires_grad=True)
        s = torch.randn(5, 2, 3, dtype=torch.float16)
        phi = svgd_direction(x, s)
        assert isinstance(phi, torch.Tensor) and phi.shape == x.shape and phi.dtype == torch.float16
        assert not phi.requires_grad
        want = R.svgd_direction(x.detach().float(), s.float()).half()
        torch.testing.assert_close(phi, want)
        out = svgd_direction((x, x.detach().float()), [s, s.float()], bandwidth=2)
        assert isinstance(out, list) and [o.dtype for o in out] == [torch.float16, torch.float32]


def test_custom_ops_opcheck():
    from fastbayes.ops.svgd import _svgd_apply, _svgd_kernel_matrix

    xs, ss = _inputs(5, [(7,), (2, 3)], torch.float32, seed=2)
    xs2 = [x.reshape(5, -1) for x in xs]
    torch.library.opcheck(_svgd_kernel_matrix, (xs2, None))
    torch.library.opcheck(_svgd_kernel_matrix, (xs2, 0.5))
    K, h = _svgd_kernel_matrix(xs2, None)
    torch.library.opcheck(_svgd_apply, (K, h, xs2[0], ss[0].reshape(5, -1)))


def test_torch_compile_fullgraph():
    xs, ss = _inputs(5, [(3, 2), (7,)], torch.float32, seed=4)
    fn = torch.compile(lambda a, b, c, d: svgd_direction([a, b], [c, d]), fullgraph=True)
    got = fn(xs[0], xs[1], ss[0], ss[1])
    want = R.svgd_direction([x.double() for x in xs], [s.double() for s in ss])
    for k, (g, w) in enumerate(zip(got, want)):
        _close(g, w, TOL[torch.float32], f"phi[{k}]")


BAD = [
    ("shape", lambda: svgd_direction(torch.randn(4, 3), torch.randn(4, 2)), "scores"),
    ("n differs", lambda: svgd_direction([torch.randn(4, 3), torch.randn(5, 3)],
                                          [torch.randn(4, 3), torch.randn(5, 3)]), "particles"),
    ("n < 2", lambda: svgd_direction(torch.randn(1, 3), torch.randn(1, 3)), "n = 2"),
    ("0-d", lambda: svgd_direction(torch.tensor(1.0), torch.tensor(1.0)), "particles"),
    ("h = 0", lambda: svgd_direction(torch.randn(4, 3), torch.randn(4, 3), 0.0), "bandwidth"),
    ("h < 0", lambda: svgd_direction(torch.randn(4, 3), torch.randn(4, 3), -1.0), "bandwidth"),
    ("h nan", lambda: svgd_direction(torch.randn(4, 3), torch.randn(4, 3), float("nan")), "bandwidth"),
    ("h inf", lambda: svgd_direction(torch.randn(4, 3), torch.randn(4, 3), float("inf")), "bandwidth"),
    ("h bool", lambda: svgd_direction(torch.randn(4, 3), torch.randn(4, 3), True), "bandwidth"),
    ("h str", lambda: svgd_direction(torch.randn(4, 3), torch.randn(4, 3), "1"), "bandwidth"),
    ("int particles", lambda: svgd_direction(torch.ones(4, 3, dtype=torch.int64), torch.randn(4, 3)), "particles"),
    ("int scores", lambda: svgd_direction(torch.randn(4, 3), torch.ones(4, 3, dtype=torch.int32)), "scores"),
    ("empty list", lambda: svgd_direction([], []), "particles"),
    ("structure", lambda: svgd_direction(torch.randn(4, 3), [torch.randn(4, 3)]), "scores"),
    ("count", lambda: svgd_direction([torch.randn(4, 3)] * 2, [torch.randn(4, 3)]), "scores"),
    ("not a tensor", lambda: svgd_direction([np.ones((4, 3))], [torch.randn(4, 3)]), "particles"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_arguments_raise(case):
    _, fn, word = case
    with pytest.raises(ValueError, match=word):
        fn()


def test_backend_bad_arguments(kernel_backend):
    name, device = kernel_backend
    kernel_matrix, apply = _stages(name)
    x = torch.randn(4, 3, device=device)
    with pytest.raises(ValueError, match="bandwidth"):
        kernel_matrix([x], -1.0)
    with pytest.raises(ValueError, match="n = 2"):
        kernel_matrix([x[:1]], None)
    with pytest.raises(ValueError):
        kernel_matrix([x, torch.randn(5, 3, device=device)], None)
    K, h = kernel_matrix([x], None)
    with pytest.raises(ValueError, match="score"):
        apply(K, h, x, torch.randn(4, 2, device=device))
    with pytest.raises(ValueError):
        apply(K, h, x.half(), x.half())


# --------------------------------------------------------------------------------------------------------------
# the optimiser

MU = torch.tensor([1.0, -2.0])
COV = torch.tensor([[1.0, 0.6], [0.6, 2.0]])


def _gaussian_nlp(x):
    d = x - MU
    return 0.5 * (d @ torch.linalg.inv(COV) * d).sum()


def test_svgd_moves_particles_to_gaussian():
    torch.manual_seed(0)
    x = torch.nn.Parameter(torch.randn(100, 2) * 0.5)
    opt = SVGD([x], lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        _gaussian_nlp(x).backward()
        opt.step()
    xs = x.detach()
    assert (xs.mean(0) - MU).abs().max() < 0.05
    # finite-particle SVGD with the median heuristic slightly under-disperses (~8% here)
    torch.testing.assert_close(torch.cov(xs.T), COV, atol=0.1, rtol=0.15)
    assert opt.last_bandwidth is not None and opt.last_bandwidth.dtype == torch.float64


def test_svgd_step_is_phi_across_all_params():
    torch.manual_seed(1)
    a = torch.nn.Parameter(torch.randn(6, 3))
    b = torch.nn.Parameter(torch.randn(6, 2, 2))
    unused = torch.nn.Parameter(torch.randn(6, 4))
    opt = SVGD([a, b, unused], optimizer=torch.optim.SGD, lr=0.1, bandwidth=2.0)
    loss = (a ** 2).sum() + (b.sin()).sum()
    loss.backward()
    scores = [-a.grad.clone(), -b.grad.clone()]
    want = R.svgd_direction([a.detach().double(), b.detach().double()], [s.double() for s in scores], 2.0)
    before = [a.detach().clone(), b.detach().clone(), unused.detach().clone()]
    opt.step()
    torch.testing.assert_close(a.detach(), before[0] + 0.1 * want[0].float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.detach(), before[1] + 0.1 * want[1].float(), rtol=1e-5, atol=1e-6)
    assert torch.equal(unused.detach(), before[2]) and unused.grad is None


def test_svgd_state_dict_round_trip_and_bad_args():
    x = torch.nn.Parameter(torch.randn(4, 2))
    opt = SVGD([x], lr=0.01, betas=(0.8, 0.9))
    _gaussian_nlp(x).backward()
    opt.step()
    sd = opt.state_dict()
    opt2 = SVGD([x], lr=0.5)
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["lr"] == 0.01 and opt2.param_groups[0]["betas"] == (0.8, 0.9)
    torch.testing.assert_close(opt2.state[x]["exp_avg"], opt.state[x]["exp_avg"])
    opt.zero_grad()
    assert x.grad is None
    with pytest.raises(ValueError, match="particles"):
        SVGD([torch.nn.Parameter(torch.randn(4, 2)), torch.nn.Parameter(torch.randn(3, 2))])
    with pytest.raises(ValueError, match="n >= 2"):
        SVGD([torch.nn.Parameter(torch.randn(1, 2))])
    with pytest.raises(ValueError, match="bandwidth"):
        SVGD([x], bandwidth=-1)
    with pytest.raises(ValueError, match="params"):
        SVGD([])


# ---------------------------------------------------------------------------------------------------------------
# function-space SVGD (fastbayes.svgd.function_space_backward)

def test_function_space_backward_against_explicit_formula():
    """φ_i = (1/n) Σ_j Jᵢᵀ[k(f_j, f_i) s_j + ∇_{f_j} k(f_j, f_i)], with ∇k by autograd of an explicitly written RBF
    kernel and Jᵢ by autograd of a small nonlinear network, particle by particle."""
    torch.manual_seed(0)
    n, m, d = 5, 7, 3
    w = torch.randn(n, d, 4, dtype=torch.float64, requires_grad=True)    # particle i: a d×4 weight
    x = torch.randn(m, d, dtype=torch.float64)
    out = torch.tanh(torch.einsum("md,ndk->nmk", x, w))                   # [n, m, 4] function values
    scores = torch.randn(n, m, 4, dtype=torch.float64)
    h = 3.7
    fastbayes_phi, h_used = fb.svgd.function_space_backward(out, scores, h)
    assert float(h_used) == h
    f = out.detach().reshape(n, -1)
    want = torch.zeros_like(w)
    for i in range(n):
        acc = torch.zeros(m * 4, dtype=torch.float64)
        for j in range(n):
            fj = f[j].clone().requires_grad_()
            k = torch.exp(-((fj - f[i]) ** 2).sum() / h)
            (grad_k,) = torch.autograd.grad(k, fj)
            acc += k.detach() * scores[j].reshape(-1) + grad_k
        acc /= n
        wi = w.detach()[i].clone().requires_grad_()
        oi = torch.tanh(x @ wi).reshape(-1)
        (pull,) = torch.autograd.grad(oi, wi, acc)
        want[i] = pull
    torch.testing.assert_close(w.grad, -want, rtol=1e-10, atol=1e-12)


def _fsvgd_run(log_p, n=64, steps=1500, lr=0.05, seed=0):
    """Function-space SVGD on particles w [n, 2] with the linear 'network' f(w) = A·w: the pull-back is exact and
    the update is SVGD with the kernel exp(−‖A(w − w')‖²/h), so the particles must reach the target p(w)."""
    g = torch.Generator().manual_seed(seed)
    A = torch.tensor([[1.5, 0.3], [-0.2, 0.8], [0.4, 0.4]], dtype=torch.float64)
    w = torch.nn.Parameter(torch.randn(n, 2, generator=g, dtype=torch.float64) * 0.5)
    opt = torch.optim.SGD([w], lr=lr)
    pinv = torch.linalg.pinv(A.T)          # the score in f-coordinates: Aᵀ s_f = ∇_w log p
    for _ in range(steps):
        opt.zero_grad()
        wd = w.detach().requires_grad_()
        (s_w,) = torch.autograd.grad(log_p(wd).sum(), wd)
        fb.svgd.function_space_backward(w @ A.T, s_w @ pinv.T)
        opt.step()
    return w.detach()


def test_function_space_svgd_recovers_a_gaussian():
    mean = torch.tensor([1.0, -0.5], dtype=torch.float64)
    cov = torch.tensor([[0.6, 0.25], [0.25, 0.4]], dtype=torch.float64)
    dist = torch.distributions.MultivariateNormal(mean, cov)
    w = _fsvgd_run(dist.log_prob, n=128, steps=2000)
    torch.testing.assert_close(w.mean(0), mean, atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(w.T), cov, atol=0.08, rtol=0)


def test_function_space_svgd_populates_both_modes():
    comps = torch.distributions.MultivariateNormal(torch.tensor([[-2.0, 0.0], [2.0, 0.0]], dtype=torch.float64),
                                                   torch.eye(2, dtype=torch.float64).expand(2, 2, 2) * 0.3)
    mix = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(torch.tensor([0.5, 0.5],
                                                                                            dtype=torch.float64)),
                                                comps)
    w = _fsvgd_run(mix.log_prob, n=64, steps=2000)
    left = float((w[:, 0] < 0).double().mean())
    assert 0.3 < left < 0.7                               # both modes hold a fair share of the particles
    for side in (w[w[:, 0] < 0], w[w[:, 0] > 0]):
        assert abs(abs(float(side[:, 0].mean())) - 2.0) < 0.3


def test_function_space_backward_bad_arguments():
    out = torch.randn(3, 4, requires_grad=True)
    with pytest.raises(ValueError, match="scores"):
        fb.svgd.function_space_backward(out, torch.randn(3, 5))
    with pytest.raises(ValueError, match="n >= 2"):
        fb.svgd.function_space_backward(torch.randn(1, 4, requires_grad=True), torch.randn(1, 4))
    with pytest.raises(ValueError, match="require grad"):
        fb.svgd.function_space_backward(torch.randn(3, 4), torch.randn(3, 4))
    with pytest.raises(TypeError, match="tensors"):
        fb.svgd.function_space_backward(out, [1.0])
    assert out.grad is None
