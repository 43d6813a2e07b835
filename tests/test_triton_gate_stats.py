"""Triton backend of the per-unit gate statistics: device math (kernels/_math.py) and the fused kernels
(kernels/gate_stats.py) against reference/special.py, reference/gate_stats.py, torch and scipy.

Without CUDA the kernels run on CPU tensors in the Triton interpreter (TRITON_INTERPRET=1 must be set
before any kernel module is imported, hence the top of this file).
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

try:  # installed layout first, then the source tree
    import fastbayes.kernels as K  # noqa: E402
    from fastbayes.kernels import _math as M  # noqa: E402
except ImportError:
    import kernels as K  # noqa: E402
    from kernels import _math as M  # noqa: E402

from fastbayes.reference import gate_stats as R  # noqa: E402
from fastbayes.reference import special as S  # noqa: E402

DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
# numpy warns on inf/NaN arithmetic in untaken tl.where branches and at the deliberately extreme inputs
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")
F64, F32 = torch.float64, torch.float32
EPS = torch.finfo(F64).eps
INF, NAN = float("inf"), float("nan")


# ------------------------------------------------------------------------------------------------------
# harness: elementwise kernels over the device functions
# ------------------------------------------------------------------------------------------------------

@triton.jit
def _unary_kernel(x_ptr, y_ptr, n, FN: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m, other=-1.0)
    if FN == "log_ndtr":
        y = M.log_ndtr(x)
    elif FN == "log1p":
        y = M.log1p(x)
    elif FN == "expm1":
        y = M.expm1(x)
    elif FN == "log1m_exp":
        y = M.log1m_exp(x)
    else:
        y = M.ndtri_log(x)
    tl.store(y_ptr + offs, y, mask=m)


@triton.jit
def _log_diff_ndtr_kernel(lo_ptr, hi_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    lo = tl.load(lo_ptr + offs, mask=m, other=0.0)
    hi = tl.load(hi_ptr + offs, mask=m, other=1.0)
    tl.store(y_ptr + offs, M.log_diff_ndtr(lo, hi), mask=m)


def _unary(fn, x):
    xd = x.to(DEVICE).contiguous()
    y = torch.empty_like(xd)
    _unary_kernel[(triton.cdiv(x.numel(), 1024),)](xd, y, x.numel(), FN=fn, BLOCK=1024)
    return y.cpu()


def _log_diff_ndtr(lo, hi):
    lo_d, hi_d = lo.to(DEVICE).contiguous(), hi.to(DEVICE).contiguous()
    y = torch.empty_like(lo_d)
    _log_diff_ndtr_kernel[(triton.cdiv(lo.numel(), 1024),)](lo_d, hi_d, y, lo.numel(), BLOCK=1024)
    return y.cpu()


def _assert_close_nonfinite(x, got, want, atol, rtol, what):
    """Elementwise |got - want| <= atol + rtol·|want|; inf/NaN must sit at the same places."""
    fin = torch.isfinite(want)
    assert torch.equal(torch.isnan(got), torch.isnan(want)), f"{what}: NaN pattern differs"
    inf = torch.isinf(want)
    assert torch.equal(got[inf], want[inf]), f"{what}: infinities differ"
    err = (got[fin] - want[fin]).abs()
    tol = atol + (rtol[fin] if isinstance(rtol, torch.Tensor) else rtol) * want[fin].abs()
    bad = err > tol
    assert not bad.any(), (f"{what}: {int(bad.sum())} mismatches, first at x={x[fin][bad][0].item()!r}; "
                           f"max err/tol {(err / tol).max().item():.3g}")


# ------------------------------------------------------------------------------------------------------
# device math
# ------------------------------------------------------------------------------------------------------

def _log_ndtr_points():
    specials = torch.tensor([-INF, INF, NAN, 0.0, -0.0, -1.0, math.nextafter(-1.0, 0.0), math.nextafter(-1.0, -2.0),
                             0.46875 * math.sqrt(2), -0.46875 * math.sqrt(2), 4 * math.sqrt(2), -4 * math.sqrt(2),
                             -1.5e154, -1e300, 1e300, 5e-324, -5e-324], dtype=F64)
    return torch.cat([-torch.logspace(-300, 8, 4001, dtype=F64), torch.logspace(-300, math.log10(40.0), 4001, dtype=F64),
                      torch.linspace(-12.0, 12.0, 2001, dtype=F64), specials])


def test_log_ndtr_matches_torch_over_the_whole_line():
    x = _log_ndtr_points()
    # atol: beyond x ≈ 37.5 the value is a float64 subnormal, where no relative accuracy exists
    _assert_close_nonfinite(x, _unary("log_ndtr", x), torch.special.log_ndtr(x), atol=1e-300, rtol=1e-13,
                            what="log_ndtr vs torch")


def test_log_ndtr_matches_scipy():
    sp = pytest.importorskip("scipy.special")
    x = _log_ndtr_points()
    got, want = _unary("log_ndtr", x), torch.from_numpy(sp.log_ndtr(x.numpy()))
    # like torch, the kernel evaluates erfc at fl(x/√2); that rounding alone moves the upper tail by
    # ~x²·ε relative, so the tolerance grows with x² there (scipy rounds differently)
    fin = torch.isfinite(want)
    _assert_close_nonfinite(x[~fin], got[~fin], want[~fin], 0.0, 0.0, "log_ndtr vs scipy (non-finite)")
    err = (got[fin] - want[fin]).abs()
    tol = 1e-300 + 4 * EPS * (1.0 + x[fin].clamp(0.0, 40.0) ** 2) * want[fin].abs()
    assert (err <= tol).all(), f"log_ndtr vs scipy: max err/tol {(err / tol).max()}"


@pytest.mark.parametrize("dtype,ulps", [(F64, 4), (F32, 4)])
def test_log1p_expm1_log1m_exp(dtype, ulps):
    eps, tiny = torch.finfo(dtype).eps, torch.finfo(dtype).tiny
    lo = -300 if dtype == F64 else -37
    mag = torch.cat([torch.logspace(lo, 2.5, 3001, dtype=F64), torch.tensor([0.0, 0.5, 1.0, math.log(2)], dtype=F64)])
    x = torch.cat([mag, -mag]).to(dtype)
    big = torch.tensor([INF, -INF, NAN], dtype=dtype)
    # torch's vectorised CPU log1p/expm1 lose accuracy on subnormals, hence atol = tiny
    cases = [("log1p", torch.log1p, torch.cat([x.clamp_min(-1.0), big])),
             ("expm1", torch.expm1, torch.cat([x.clamp_max(80.0 if dtype == F32 else 700.0), big])),
             ("log1m_exp", S.log1mexp, torch.cat([-x.abs(), torch.tensor([-INF, NAN], dtype=dtype)]))]
    for fn, ref, xs in cases:
        rtol = ulps * eps
        if dtype == F32 and DEVICE == "cuda" and fn != "log1p":
            # compiled float32 tl.exp is ex2.approx(x·log2 e): the rounded product costs ~|x|/2 ulp
            rtol = (ulps + xs.abs().nan_to_num(0.0, posinf=0.0)) * eps
        _assert_close_nonfinite(xs, _unary(fn, xs), ref(xs), atol=tiny, rtol=rtol, what=f"{fn} {dtype}")


def _logp_points(dtype):
    lo = -320 if dtype == F64 else -45
    lp = torch.cat([-torch.logspace(lo, 30, 12001, dtype=F64), torch.log(torch.linspace(1e-4, 1 - 1e-4, 2001, dtype=F64)),
                    torch.tensor([0.0, -0.0, 2.0, -INF, NAN, -676.0, math.nextafter(-676.0, 0.0),
                                  math.log(0.075), math.log(0.925)], dtype=F64)])
    return lp.to(dtype)


@pytest.mark.parametrize("dtype", [F64, F32])
def test_ndtri_log_matches_reference(dtype):
    lp = _logp_points(dtype)
    # |Δ| <= 8 ulp of max(|x|, 1): near x = 0 the quantile is an absolute quantity (q = p - 1/2 cancels)
    got, want = _unary("ndtri_log", lp), S.ndtri_log(lp)
    assert got.dtype == dtype
    fin = torch.isfinite(want)
    # the reference is finite everywhere except NaN for NaN and -inf for logp = -inf (p = 0)
    assert torch.equal(torch.isnan(got), torch.isnan(want)) and torch.equal(torch.isinf(got), torch.isinf(want))
    assert (got[torch.isinf(got)] < 0).all()
    err = (got[fin] - want[fin]).abs() / want[fin].abs().clamp_min(1.0)
    # measured max 6 ulp in the interpreter; compiled float32 exp/sqrt are approximate (ex2/sqrt.approx)
    ulps = 16 if (dtype == F32 and DEVICE == "cuda") else 8
    assert err.max() <= ulps * torch.finfo(dtype).eps, f"ndtri_log {dtype}: max err {err.max() / torch.finfo(dtype).eps} ulp"


def test_ndtri_log_matches_scipy():
    sp = pytest.importorskip("scipy.special")
    lp = _logp_points(F64)
    # (above -1e-300 the reference caps logp, so its quantile stops at 37.05 by design)
    lp = lp[torch.isfinite(lp) & (lp <= -1e-300) & (lp > -700)]
    got = _unary("ndtri_log", lp)
    # scipy from whichever of p, 1-p is exact in float64: lower half from exp(lp), upper half from -expm1(lp)
    lower = lp <= math.log(0.5)
    want = torch.where(lower, torch.from_numpy(sp.ndtri(torch.exp(lp).numpy())),
                       -torch.from_numpy(sp.ndtri((-torch.expm1(lp)).numpy())))
    err = (got - want).abs() / want.abs().clamp_min(1.0)
    r2 = torch.where(lower, -lp, -torch.log(-torch.expm1(lp)))
    ppnd = r2 <= 26.0 ** 2          # r = sqrt(-log min(p, 1-p)) <= 26: AS241 proper
    assert err[ppnd].max() < 1e-14, err[ppnd].max()
    # beyond r = 26 the reference's 3-step asymptotic tail is good to ~1.3e-9 relative (it improves as 1/r⁵)
    assert err[~ppnd].max() < 2e-9, err[~ppnd].max()


def test_log_diff_ndtr_matches_reference():
    g = torch.Generator().manual_seed(1)
    n = 4001
    scale = torch.logspace(-3, 8, n, dtype=F64)[torch.randperm(n, generator=g)]
    lo = torch.randn(n, dtype=F64, generator=g) * scale
    width = torch.logspace(-12, 9, n, dtype=F64)[torch.randperm(n, generator=g)]
    hi = lo + width
    lo = torch.cat([lo, torch.tensor([-INF, -INF, 3.0, -40.0, 5.0, -1e8, 1e-300, 0.0], dtype=F64)])
    hi = torch.cat([hi, torch.tensor([INF, 0.0, INF, -39.0, 5.0, 1e8, 2e-300, 0.0], dtype=F64)])
    got, want = _log_diff_ndtr(lo, hi), S.log_diff_ndtr(lo, hi)
    # first-order rounding error of l_hi + log1mexp(l_lo - l_hi): the difference d = l_lo - l_hi carries
    # ~ε(|l_lo| + |l_hi|), amplified by 1/(1 - e^d) when the interval is narrow
    mirror = (lo + hi) > 0
    l_hi = torch.special.log_ndtr(torch.where(mirror, -lo, hi))
    l_lo = torch.special.log_ndtr(torch.where(mirror, -hi, lo))
    d = torch.clamp(l_lo - l_hi, max=0.0)
    amplified = torch.where(torch.isinf(l_lo), 0.0, (l_hi.abs() + l_lo.abs()) / -torch.expm1(d))
    cond = l_hi.abs() + want.abs() + amplified
    fin = torch.isfinite(want)
    assert torch.equal(torch.isnan(got), torch.isnan(want)) and torch.equal(got[~fin], want[~fin])
    err = (got[fin] - want[fin]).abs()
    assert (err <= 16 * EPS * cond[fin]).all(), (err / (EPS * cond[fin])).max()
    # where the interval is not narrow the result is good to a few ulp
    wide = fin & (d < -0.1)
    assert ((got[wide] - want[wide]).abs() <= 1e-14 * want[wide].abs()).all()


# ------------------------------------------------------------------------------------------------------
# gate statistics
# ------------------------------------------------------------------------------------------------------

def _grid(n=997):
    """μ in [-60, 30] x σ in [1e-6, 1e3] (log-spaced), odd length so the last block is partial."""
    mu = torch.linspace(-60.0, 30.0, 53, dtype=F64)
    sigma = torch.logspace(-6.0, 3.0, 19, dtype=F64)
    m, s = torch.meshgrid(mu, sigma, indexing="ij")
    return m.flatten()[:n].contiguous(), s.flatten()[:n].log().contiguous()


def _regime_boundaries(a=-20.0, b=0.0):
    """Units within ~1e-9 relative of every switch of the reference: tail at s = TAIL_S on either end,
    Δ² quadrature at σ = QUAD_SIGMA·s, wide-window KL at T = WIDE_T and at |α+β|·T = 2·WIDE_T."""
    d = torch.tensor([-1e-9, -1e-12, 0.0, 1e-12, 1e-9], dtype=F64)
    sig = torch.tensor([1e-3, 0.05, 0.3, 1.0, 3.0, 19.9, 20.0, 20.1, 100.0], dtype=F64)
    s, dd = (t.flatten() for t in torch.meshgrid(sig, d, indexing="ij"))
    s_quad = s / R.QUAD_SIGMA * (1 + dd)
    mu = [a - R.TAIL_S * s * (1 + dd), b + R.TAIL_S * s * (1 + dd), a - s_quad * s]
    sigma = [s, s, s]
    m, sw = (t.flatten() for t in torch.meshgrid(torch.tensor([-10.0, -5.0, -15.0, 0.0, -20.0, 10.0], dtype=F64),
                                                  (b - a) / R.WIDE_T * (1 + d), indexing="ij"))
    mu.append(m)
    sigma.append(sw)
    far = torch.tensor([-30.0, 5.0, 20.0, -40.0], dtype=F64)
    m, dd = (t.flatten() for t in torch.meshgrid(far, d, indexing="ij"))
    mu.append(m)
    sigma.append(torch.sqrt((a + b - 2 * m).abs() * (b - a) / (2 * R.WIDE_T)) * (1 + dd))
    return torch.cat(mu), torch.cat(sigma).log()


def _run_both(mu, log_sigma, grad, a=-20.0, b=0.0):
    dev = [t.to(DEVICE) for t in (mu, log_sigma, grad)]
    got = [t.cpu() for t in K.gate_stats(dev[0], dev[1], a, b) + K.gate_stats_backward(dev[2], dev[0], dev[1], a, b)]
    want = list(R.gate_stats(mu, log_sigma, a, b) + R.gate_stats_backward(grad, mu, log_sigma, a, b))
    return got, want


NAMES = ("kl", "mean", "snr", "dmu", "dlog_sigma")
# (atol, rtol) per output in float64.  The reference is cancellation-free, so kernel and reference agree to
# a few ulp of each result; the KL of a nearly uniform q (σ ~ 1e3, KL ~ 1e-10) is a difference of its
# quadrature sums and carries ~1e-12 relative (measured max 3.2e-12 in the interpreter).
TOL64 = {"kl": (0.0, 5e-11), "mean": (0.0, 1e-12), "snr": (0.0, 2e-12), "dmu": (0.0, 1e-11), "dlog_sigma": (0.0, 1e-11)}


def _assert_matches_reference(got, want, sel=slice(None)):
    for name, k, r in zip(NAMES, got, want):
        k, r = k[sel], r[sel]
        assert k.dtype == r.dtype and k.shape == r.shape, name
        assert torch.isfinite(k).all(), f"{name}: non-finite kernel output"
        if r.dtype == F64:
            atol, rtol = TOL64[name]
        else:   # one rounding of nearly equal float64 values to the output dtype
            atol, rtol = 0.0, torch.finfo(r.dtype).eps
        torch.testing.assert_close(k, r, atol=atol, rtol=rtol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("dtype", [F64, F32])
def test_gate_stats_matches_reference_on_grid(dtype):
    mu, log_sigma = _grid()
    grad = torch.randn(mu.numel(), generator=torch.Generator().manual_seed(0), dtype=F64)
    _assert_matches_reference(*_run_both(mu.to(dtype), log_sigma.to(dtype), grad.to(dtype)))


# METHODS.md §0.2 (a = -20, b = 0; mpmath at 400 digits): μ, σ, KL, E[θ], SNR
GOLDEN = [
    (0.0, math.exp(-5.0), 7.269940921, 0.994646515, 246.6992061),
    (-1.0, 0.5, 2.348201693, 0.3980687514, 2.170320937),
    (-5.0, 1.0, 1.576797744, 0.01110864789, 0.7636517277),
    (-10.0, 3.0, 0.4841852861, 0.002579162353, 0.1139640541),
    (-15.0, 3.0, 0.6142138881, 2.826053854e-05, 0.02794189076),
    (-19.9, 0.5, 2.883452593, 3.377873091e-09, 2.622067247),
    (-2.0, 10.0, 0.08699703347, 0.07269841839, 0.4130845325),
    (-10.0, 10.0, 0.01036124627, 0.0389127247, 0.2976674812),
    (-19.5, 0.05, None, None, 19.9875013029),          # METHODS §0.5 item 2
]
# METHODS.md §0.4: (μ, σ) -> ∂KL/∂μ, ∂KL/∂σ (∂KL/∂log σ = σ·∂KL/∂σ); KL is flat in μ at the centre
GOLDEN_GRAD = [(-1.0, 0.5, 0.282344, -1.435312), (0.0, math.exp(-5.0), 59.2083, -148.4132), (-10.0, 8.0, 0.0, None)]
FD_MU = torch.tensor([-1.0, -7.3, -19.0, 0.4, -12.0, -26.0, 3.0], dtype=F64)
FD_LS = torch.tensor([-0.7, 0.3, -2.0, -3.0, 1.5, 0.0, -1.0], dtype=F64)
FD_H = 1e-6


@pytest.fixture(scope="module")
def small_f64():
    """One forward and one backward launch (a=-20, b=0) over every small float64 test set, concatenated:
    launches, not units, are what the interpreter spends its time on."""
    parts = {
        "boundaries": _regime_boundaries(),
        "golden": (torch.tensor([g[0] for g in GOLDEN], dtype=F64), torch.tensor([math.log(g[1]) for g in GOLDEN], dtype=F64)),
        "golden_grad": (torch.tensor([g[0] for g in GOLDEN_GRAD], dtype=F64),
                        torch.tensor([math.log(g[1]) for g in GOLDEN_GRAD], dtype=F64)),
        "fd": (FD_MU, FD_LS),
        "fd_mu": (torch.cat([FD_MU + FD_H, FD_MU - FD_H]), torch.cat([FD_LS, FD_LS])),
        "fd_ls": (torch.cat([FD_MU, FD_MU]), torch.cat([FD_LS + FD_H, FD_LS - FD_H])),
    }
    sl, start = {}, 0
    for key, (m, _) in parts.items():
        sl[key] = slice(start, start + m.numel())
        start += m.numel()
    mu = torch.cat([m for m, _ in parts.values()])
    log_sigma = torch.cat([ls for _, ls in parts.values()])
    got, want = _run_both(mu, log_sigma, torch.ones_like(mu))
    return sl, got, want


def test_gate_stats_at_regime_boundaries(small_f64):
    sl, got, want = small_f64
    _assert_matches_reference(got, want, sl["boundaries"])


def test_gate_stats_golden_values(small_f64):
    sl, got, want = small_f64
    _assert_matches_reference(got, want, sl["golden"])
    kl, mean, snr = (t[sl["golden"]] for t in got[:3])
    for i, (m, s, kl_w, mean_w, snr_w) in enumerate(GOLDEN):
        for v, w in ((kl[i], kl_w), (mean[i], mean_w), (snr[i], snr_w)):
            if w is not None:
                assert v.item() == pytest.approx(w, rel=6e-10), (m, s)


def test_gate_stats_backward_golden_values(small_f64):
    sl, got, want = small_f64
    dmu, dls = (t[sl["golden_grad"]] for t in got[3:])
    for i, (m, s, dmu_w, dsig_w) in enumerate(GOLDEN_GRAD):
        assert dmu[i].item() == pytest.approx(dmu_w, rel=5e-6, abs=1e-12)
        if dsig_w is not None:
            assert dls[i].item() / s == pytest.approx(dsig_w, rel=5e-6)


def test_gate_stats_backward_matches_finite_differences(small_f64):
    sl, got, want = small_f64
    kl, dmu, dls = got[0], got[3][sl["fd"]], got[4][sl["fd"]]
    n = FD_MU.numel()
    fd_mu = (kl[sl["fd_mu"]][:n] - kl[sl["fd_mu"]][n:]) / (2 * FD_H)
    fd_ls = (kl[sl["fd_ls"]][:n] - kl[sl["fd_ls"]][n:]) / (2 * FD_H)
    torch.testing.assert_close(dmu, fd_mu, atol=1e-7, rtol=1e-7)
    torch.testing.assert_close(dls, fd_ls, atol=1e-7, rtol=1e-7)


def test_non_default_bounds_keep_float64_precision():
    # a, b not representable in float32: a compiled kernel that took them as float32 (the default for a
    # Python float argument) would be off by ~1e-7; the interpreter keeps them as Python floats
    a, b = -7.3, -0.1
    bmu, bls = _regime_boundaries(a, b)
    mu = torch.cat([torch.linspace(-9.0, 1.0, 101, dtype=F64), bmu])
    log_sigma = torch.cat([torch.linspace(-3.0, 1.0, 101, dtype=F64), bls])
    _assert_matches_reference(*_run_both(mu, log_sigma, torch.ones_like(mu), a, b))


def test_half_precision_inputs():
    # μ in bfloat16, log σ in float16: outputs in μ's dtype, ∂/∂log σ in log σ's dtype
    mu = torch.linspace(-22.0, 2.0, 37).to(torch.bfloat16)
    log_sigma = torch.linspace(-5.0, 2.0, 37).to(torch.float16)
    got, want = _run_both(mu, log_sigma, torch.linspace(-1.0, 2.0, 37).to(torch.bfloat16))
    assert [t.dtype for t in got] == [torch.bfloat16] * 4 + [torch.float16]
    for k, r in zip(got, want):
        # both narrow the float64 value through float32, rounding to nearest-even
        assert torch.equal(k, r)


def test_mixed_dtypes_and_strided_inputs():
    mu64, ls64 = torch.linspace(-21.0, 1.0, 31, dtype=F64), torch.linspace(-4.0, 1.0, 31, dtype=F64)
    mu = torch.stack([mu64.to(F32), torch.zeros(31, dtype=F32)], 1)[:, 0]     # stride 2
    assert not mu.is_contiguous()
    grad = torch.linspace(-2.0, 3.0, 31, dtype=F64)
    got, want = _run_both(mu, ls64, grad)
    assert [t.dtype for t in got] == [F32] * 4 + [F64]
    _assert_matches_reference(got, want)


def test_empty_input():
    e = torch.empty(0, dtype=F64, device=DEVICE)
    assert all(t.shape == (0,) for t in K.gate_stats(e, e) + K.gate_stats_backward(e, e, e))


@pytest.mark.parametrize("call,match", [
    (lambda m, s: K.gate_stats(m, s, 0.0, -20.0), "a must be < b"),
    (lambda m, s: K.gate_stats(m, s, -20.0, INF), "b must be a finite"),
    (lambda m, s: K.gate_stats(m.view(1, -1), s.view(1, -1)), "mu must be 1-D"),
    (lambda m, s: K.gate_stats(m, s[:-1]), "log_sigma has"),
    (lambda m, s: K.gate_stats(m.long(), s), "mu must be a floating-point"),
    (lambda m, s: K.gate_stats_backward(m[:-1], m, s), "grad_kl has"),
    (lambda m, s: K.gate_stats(m, s.tolist()), "log_sigma must be a torch.Tensor"),
])
def test_bad_arguments(call, match):
    m = torch.zeros(5, dtype=F64, device=DEVICE)
    with pytest.raises(ValueError, match=match):
        call(m, m.clone())


def test_import_without_gpu_or_interpreter():
    """Importing the kernels must not need a GPU; using CPU tensors without the interpreter is a ValueError."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    code = ("import torch\nfrom fastbayes import kernels\n"
            "x = torch.zeros(3, dtype=torch.float64)\n"
            "try:\n    kernels.gate_stats(x, x)\nexcept ValueError as e:\n    assert 'TRITON_INTERPRET' in str(e), e\n"
            "else:\n    raise SystemExit('no ValueError')\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
