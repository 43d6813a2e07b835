"""The compiled extension fastbayes._C (csrc/) against the pure-torch reference and METHODS.md's golden values.

csrc/include/fastbayes/math.h ports fastbayes/reference/gate_stats.py line by line (same regimes, same
operations in the same order), and the reference is cancellation-free, so the two agree to a few ulp of each
result: the tolerances below are per-output (atol, rtol) in float64, and one rounding to the output dtype
otherwise.  On CUDA, libdevice (1-2 ulp) and FMA contraction widen them tenfold.
"""
from __future__ import annotations

import math

import pytest
import torch

_C = pytest.importorskip("fastbayes._C", reason="compiled extension fastbayes._C is not built")

from fastbayes.reference import gate_stats as ref  # noqa: E402
from fastbayes.reference import philox as ref_philox  # noqa: E402
from fastbayes.reference import special as ref_special  # noqa: E402

ops = torch.ops.fastbayes_C
F64, F32 = torch.float64, torch.float32
A, B = -20.0, 0.0
DEVICES = ["cpu"] + (["cuda"] if _C.has_cuda() and torch.cuda.is_available() else [])
NAMES = ("kl", "mean", "snr", "dmu", "dlog_sigma")
# (atol, rtol) in float64.  The KL of a nearly uniform q (σ ~ 1e3, KL ~ 1e-11) is a difference of quadrature
# sums known to ~1e-21 absolute (measured: 6e-11 relative at KL = 1.7e-11); ∂KL/∂μ is 0 at the window centre.
TOL64 = {"kl": (1e-18, 1e-11), "mean": (0.0, 1e-13), "snr": (0.0, 1e-11), "dmu": (1e-15, 1e-11),
         "dlog_sigma": (1e-15, 1e-11)}
DEVICE_FACTOR = {"cpu": 1.0, "cuda": 10.0}
# bounds the reference's own accuracy claim covers (reference/gate_stats.py docstring)
BOUNDS = [(-20.0, 0.0), (-15.9, -5.5), (-1.0, 0.0), (-20.0, -19.5), (-3.0, 5.0)]


def _grid(n_mu=91, n_sigma=61, mu_lo=-60.0, mu_hi=30.0, sigma_lo=1e-6, sigma_hi=1e3):
    mu = torch.linspace(mu_lo, mu_hi, n_mu, dtype=F64)
    ls = torch.linspace(math.log(sigma_lo), math.log(sigma_hi), n_sigma, dtype=F64)
    m, l_ = torch.meshgrid(mu, ls, indexing="ij")
    return m.reshape(-1).contiguous(), l_.reshape(-1).contiguous()


def _regime_boundaries(a=A, b=B):
    """Units within ~1e-9 relative of every switch of the reference: the tail at s = TAIL_S on either end,
    the Δ² quadrature at σ = QUAD_SIGMA·s, the wide-window KL at T = WIDE_T and at |α+β|·T = 2·WIDE_T."""
    d = torch.tensor([-1e-9, -1e-12, 0.0, 1e-12, 1e-9], dtype=F64)
    sig = torch.tensor([1e-3, 0.05, 0.3, 1.0, 3.0, 19.9, 20.0, 20.1, 100.0], dtype=F64)
    s, dd = (t.flatten() for t in torch.meshgrid(sig, d, indexing="ij"))
    mu = [a - ref.TAIL_S * s * (1 + dd), b + ref.TAIL_S * s * (1 + dd), a - s / ref.QUAD_SIGMA * (1 + dd) * s]
    sigma = [s, s, s]
    centres = torch.tensor([-10.0, -5.0, -15.0, 0.0, -20.0, 10.0], dtype=F64)
    m, sw = (t.flatten() for t in torch.meshgrid(centres, (b - a) / ref.WIDE_T * (1 + d), indexing="ij"))
    mu.append(m)
    sigma.append(sw)
    m, dd = (t.flatten() for t in torch.meshgrid(torch.tensor([-30.0, 5.0, 20.0, -40.0], dtype=F64), d,
                                                  indexing="ij"))
    mu.append(m)
    sigma.append(torch.sqrt((a + b - 2 * m).abs() * (b - a) / (2 * ref.WIDE_T)) * (1 + dd))
    return torch.cat(mu), torch.cat(sigma).log()


def _run_both(device, mu, log_sigma, grad, a=A, b=B):
    dev = [t.to(device) for t in (mu, log_sigma, grad)]
    got = [t.cpu() for t in ops.gate_stats(dev[0], dev[1], a, b) + ops.gate_stats_backward(dev[2], dev[0], dev[1], a, b)]
    want = list(ref.gate_stats(mu, log_sigma, a, b) + ref.gate_stats_backward(grad, mu, log_sigma, a, b))
    return got, want


def _assert_matches_reference(device, got, want):
    for name, k, r in zip(NAMES, got, want):
        assert k.dtype == r.dtype and k.shape == r.shape, name
        if r.dtype == F64:
            atol, rtol = TOL64[name]
            atol, rtol = atol * DEVICE_FACTOR[device], rtol * DEVICE_FACTOR[device]
        else:   # one rounding of nearly equal float64 values to the output dtype
            atol, rtol = torch.finfo(r.dtype).tiny, torch.finfo(r.dtype).eps
        torch.testing.assert_close(k, r, atol=atol, rtol=rtol, msg=lambda m, name=name: f"{name}: {m}")


# --------------------------------------------------------------------------------------------------- philox

@pytest.mark.parametrize("seed", [0, 1, 20240607, 2 ** 32 - 1, 2 ** 32 + 5, 0x7EDCBA9876543210, -1])
@pytest.mark.parametrize("offset", [0, 13, 2 ** 32 - 500, 2 ** 40 + 3])
def test_philox_uniform_bit_exact(seed, offset):
    n = 1001  # odd; with offset 2**32 - 500 the counters cross into the high word
    got = ops.philox_uniform(seed, offset, n)
    want = ref_philox.philox_uniform(seed, offset, (n,))
    assert got.dtype == torch.float32 and got.shape == (n,)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))


def test_philox_uniform_counter_layout():
    # element i of (seed, offset) is element 0 of (seed, offset + i): the counter is offset + i
    full = ops.philox_uniform(7, 2 ** 33 - 2, 5)
    assert torch.equal(full[3:], ops.philox_uniform(7, 2 ** 33 + 1, 2))
    assert ops.philox_uniform(7, 0, 0).shape == (0,)
    assert float(full.min()) >= 0.0 and float(full.max()) < 1.0


# ----------------------------------------------------------------------------------------------- gate stats

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("a,b", BOUNDS)
def test_gate_stats_matches_reference_on_grid(device, a, b):
    mu, ls = _grid()
    grad = torch.randn(mu.numel(), generator=torch.Generator().manual_seed(0), dtype=F64)
    got, want = _run_both(device, mu, ls, grad, a, b)
    assert all(torch.isfinite(t).all() for t in got)
    _assert_matches_reference(device, got, want)


@pytest.mark.parametrize("device", DEVICES)
def test_gate_stats_at_regime_boundaries(device):
    mu, ls = _regime_boundaries()
    _assert_matches_reference(device, *_run_both(device, mu, ls, torch.ones_like(mu)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [F32, torch.float16, torch.bfloat16])
def test_gate_stats_low_precision(device, dtype):
    mu, ls = _grid(46, 31)
    # float16 cannot hold σ = 1e-6 nor a snr above 65504: both sides then give the same 0 / inf
    mu, ls = mu.to(dtype), ls.to(dtype)
    grad = torch.linspace(-2, 2, mu.numel(), dtype=F64).to(dtype)
    got, want = _run_both(device, mu, ls, grad)
    assert [t.dtype for t in got] == [dtype] * 5
    _assert_matches_reference(device, got, want)


@pytest.mark.parametrize("device", DEVICES)
def test_gate_stats_mixed_dtypes_and_strides(device):
    # μ bfloat16 and log σ float16: kl/mean/snr and ∂/∂μ in μ's dtype, ∂/∂log σ in log σ's, as the reference
    mu = torch.linspace(-22.0, 2.0, 37).to(torch.bfloat16)
    ls = torch.linspace(-5.0, 2.0, 37).to(torch.float16)
    got, want = _run_both(device, mu, ls, torch.linspace(-1.0, 2.0, 37).to(F32))
    assert [t.dtype for t in got] == [torch.bfloat16] * 4 + [torch.float16]
    for name, k, r in zip(NAMES, got, want):
        assert torch.equal(k, r), name    # both narrow the same float64 value through float32
    mu = torch.stack([torch.linspace(-21.0, 1.0, 31, dtype=F32), torch.zeros(31)], 1)[:, 0]
    assert not mu.is_contiguous()
    got, want = _run_both(device, mu, torch.linspace(-4.0, 1.0, 31, dtype=F64), torch.ones(31, dtype=F64))
    assert [t.dtype for t in got] == [F32] * 4 + [F64]
    _assert_matches_reference(device, got, want)


@pytest.mark.parametrize("device", DEVICES)
def test_gate_stats_backward_matches_finite_differences(device):
    mu = torch.tensor([-1.0, -7.3, -19.0, 0.4, -12.0, -26.0, 3.0, -10.0], dtype=F64)
    ls = torch.tensor([-0.7, 0.3, -2.0, -3.0, 1.5, 0.0, -1.0, 6.0], dtype=F64)
    h = 1e-6

    def kl(m, l_):
        return ops.gate_stats(m.to(device), l_.to(device), A, B)[0].cpu()

    dmu, dls = (t.cpu() for t in ops.gate_stats_backward(torch.ones_like(mu).to(device), mu.to(device),
                                                         ls.to(device), A, B))
    torch.testing.assert_close(dmu, (kl(mu + h, ls) - kl(mu - h, ls)) / (2 * h), atol=1e-7, rtol=1e-7)
    torch.testing.assert_close(dls, (kl(mu, ls + h) - kl(mu, ls - h)) / (2 * h), atol=1e-7, rtol=1e-7)


# ------------------------------------------------------------------------------------ METHODS.md golden values

def _golden_tol(s: str) -> float:
    """Half a unit in the last printed digit of a golden value."""
    mant = s.lower().replace("−", "-").split("e")
    decimals = len(mant[0].split(".")[1]) if "." in mant[0] else 0
    exp = int(mant[1]) if len(mant) > 1 else 0
    return 0.5 * 10.0 ** (exp - decimals)


def _num(s: str) -> float:
    return float(s.replace("−", "-"))


# METHODS.md §0.2: (μ, σ, KL, E[θ], Var[θ], SNR), a = -20, b = 0
GOLDEN_02 = [
    ("0", "0.00673795", "7.269940921", "0.994646515", "1.625556342e-05", "246.6992061"),
    ("-1", "0.5", "2.348201693", "0.3980687514", "0.03364095014", "2.170320937"),
    ("-5", "1", "1.576797744", "0.01110864789", "2.116078257e-04", "0.7636517277"),
    ("-10", "3", "0.4841852861", "0.002579162353", "5.121787801e-04", "0.1139640541"),
    ("-15", "3", "0.6142138881", "2.826053854e-05", "1.022937939e-06", "0.02794189076"),
    ("-19.9", "0.5", "2.883452593", "3.377873091e-09", "1.65958311e-18", "2.622067247"),
    ("-2", "10", "0.08699703347", "0.07269841839", "0.03097220021", "0.4130845325"),
    ("-10", "10", "0.01036124627", "0.0389127247", "0.01708915142", "0.2976674812"),
]


@pytest.mark.parametrize("device", DEVICES)
def test_golden_gate_stats(device):
    mu = torch.tensor([_num(r[0]) for r in GOLDEN_02], dtype=F64)
    # the table's σ = 0.00673795 is e^-5 rounded; use e^-5 itself
    ls = torch.tensor([-5.0 if r[1] == "0.00673795" else math.log(_num(r[1])) for r in GOLDEN_02],
                      dtype=F64)
    kl, mean, snr = (t.cpu() for t in ops.gate_stats(mu.to(device), ls.to(device), A, B))
    var = (mean / snr) ** 2
    for i, row in enumerate(GOLDEN_02):
        for name, got, s in (("kl", kl, row[2]), ("mean", mean, row[3]), ("var", var, row[4]), ("snr", snr, row[5])):
            assert abs(got[i].item() - _num(s)) <= _golden_tol(s) * 1.0001, (row[:2], name, got[i].item(), s)
    # §0.5.2: μ = -19.5, σ = 0.05, where the erfcx form of the official code fails
    snr2 = ops.gate_stats(torch.tensor([-19.5], dtype=F64, device=device),
                          torch.tensor([math.log(0.05)], dtype=F64, device=device), A, B)[2]
    assert abs(snr2.item() - 19.9875013029) <= 1e-9


@pytest.mark.parametrize("device", DEVICES)
def test_golden_kl_gradients(device):
    # METHODS.md §0.4 spot values of ∂KL/∂μ and ∂KL/∂σ (= ∂KL/∂log σ / σ)
    cases = [(-1.0, math.log(0.5), "0.282344", "-1.435312"), (0.0, -5.0, "59.2083", "-148.4132"),
             (-10.0, math.log(8.0), "0", None)]
    mu = torch.tensor([c[0] for c in cases], dtype=F64, device=device)
    ls = torch.tensor([c[1] for c in cases], dtype=F64, device=device)
    dmu, dls = (t.cpu() for t in ops.gate_stats_backward(torch.ones_like(mu), mu, ls, A, B))
    for i, (_, l_, s_mu, s_sig) in enumerate(cases):
        assert abs(dmu[i].item() - _num(s_mu)) <= max(_golden_tol(s_mu), 1e-12) * 1.0001, (i, dmu[i].item())
        if s_sig is not None:
            dsig = dls[i].item() / math.exp(l_)
            assert abs(dsig - _num(s_sig)) <= _golden_tol(s_sig) * 1.0001, (i, dsig)


# ---------------------------------------------------------------------------------------- special functions

@pytest.mark.parametrize("device", DEVICES)
def test_log_ndtr(device):
    x = torch.cat([torch.linspace(-60, 40, 20001, dtype=F64),
                   -torch.logspace(0, 300, 601, dtype=F64),
                   torch.tensor([-1.0, -1.0 - 2 ** -40, -5 * math.sqrt(2), -38.0, 0.0, 9.0], dtype=F64)])
    got = ops.log_ndtr(x.to(device)).cpu()
    k = DEVICE_FACTOR[device]
    torch.testing.assert_close(got, ref_special.log_ndtr(x), rtol=4e-15 * k, atol=1e-300)
    # independent of torch: mpmath at the branch points of the C++ code (x = -1, u = 5, the far tail)
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    pts = [-1.0000001, -7.0710678, -7.0710679, -37.5, -1e4, -1e150, 0.5, 8.0]
    got = ops.log_ndtr(torch.tensor(pts, dtype=F64, device=device)).cpu()
    for p, g in zip(pts, got.tolist()):
        want = float(mpmath.log(mpmath.ncdf(p)))
        assert abs(g - want) <= 1e-14 * k * abs(want) + 1e-300, (p, g, want)   # glibc erfc: a few ulps


@pytest.mark.parametrize("device", DEVICES)
def test_ndtri_log(device):
    logp = torch.cat([-torch.logspace(-300, 30, 3301, dtype=F64),
                      torch.linspace(-3, 0, 3001, dtype=F64),
                      torch.tensor([0.0, -0.5 * 1e-300, math.log(0.075), math.log(0.925)], dtype=F64)])
    k = DEVICE_FACTOR[device]
    got = ops.ndtri_log(logp.to(device)).cpu()
    torch.testing.assert_close(got, ref_special.ndtri_log(logp), rtol=1e-14 * k, atol=1e-15 * k)
    l32 = logp.float().clamp_min(-1e30)
    got32 = ops.ndtri_log(l32.to(device)).cpu()
    assert got32.dtype == torch.float32
    # float32: exp(logp) - 0.5 cancels in the central branch, so one ulp of exp is ~1e-7 absolute there
    torch.testing.assert_close(got32, ref_special.ndtri_log(l32), rtol=1e-6 * k, atol=4e-7 * k)
    # inverse of log Φ, independent of the reference: AS241 is exact to ~1e-15; beyond r = 26 (z < -36.5)
    # the three fixed-point steps of the asymptotic branch leave ~1e-9
    z = torch.linspace(-37, 8, 901, dtype=F64)
    back = ops.ndtri_log(ops.log_ndtr(z.to(device))).cpu()
    torch.testing.assert_close(back[z > -36], z[z > -36], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(back, z, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_ndtri_log_extreme_tail(device, dtype):
    """p = 0 (logp = -inf) is Φ⁻¹ = -inf, not NaN; and log Φ(Φ⁻¹) returns logp far out (-1e36 and beyond)."""
    lp = torch.tensor([-float("inf"), -1e37, -1e36, -1e30], dtype=dtype)
    for got in (ops.ndtri_log(lp.to(device)).cpu(), ref_special.ndtri_log(lp)):
        assert got[0] == -float("inf") and torch.isfinite(got[1:]).all()
        back = ref_special.log_ndtr(got[1:].double())          # independent of the quantile's branches
        torch.testing.assert_close(back, lp[1:].double(), rtol=1e-6 if dtype == torch.float32 else 1e-14, atol=0)


# ------------------------------------------------------------------------------------------ layout and args

@pytest.mark.parametrize("device", DEVICES)
def test_strided_and_empty_inputs(device):
    mu, ls = _grid(20, 10)
    mu, ls = mu.to(device), ls.to(device)
    for got, want in zip(ops.gate_stats(mu[::3], ls[::3], A, B), ops.gate_stats(mu[::3].clone(), ls[::3].clone(), A, B)):
        assert torch.equal(got, want)
    e = torch.empty(0, dtype=F32, device=device)
    assert all(t.shape == (0,) for t in ops.gate_stats(e, e, A, B))
    assert all(t.shape == (0,) for t in ops.gate_stats_backward(e, e, e, A, B))


def _bad_calls(device):
    f64 = dict(dtype=F64, device=device)
    v, w = torch.zeros(4, **f64), torch.zeros(5, **f64)
    return [
        ("1-D", lambda: ops.gate_stats(v.view(2, 2), v.view(2, 2), A, B)),
        ("shape of mu", lambda: ops.gate_stats(v, w, A, B)),
        ("log_sigma must be float16", lambda: ops.gate_stats(v, v.int(), A, B)),
        ("float16, bfloat16, float32 or float64", lambda: ops.gate_stats(v.long(), v.long(), A, B)),
        ("a < b", lambda: ops.gate_stats(v, v, 0.0, -20.0)),
        ("a < b", lambda: ops.gate_stats(v, v, A, float("nan"))),
        ("grad_kl must have the shape", lambda: ops.gate_stats_backward(w, v, v, A, B)),
        ("input must be", lambda: ops.log_ndtr(v.int())),
    ]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", range(8))
def test_bad_inputs_raise(device, case):
    match, call = _bad_calls(device)[case]
    with pytest.raises(RuntimeError, match=match):
        call()


def test_bad_philox_n_raises():
    with pytest.raises(RuntimeError, match="n must be >= 0"):
        ops.philox_uniform(0, 0, -1)


def test_build_info_and_schemas():
    assert isinstance(_C.has_cuda(), bool)
    if torch.version.cuda is None:
        assert _C.has_cuda() is False
    assert _C.omp_max_threads() >= 1
    schemas = {name: str(getattr(ops, name).default._schema) for name in
               ("gate_stats", "gate_stats_backward", "philox_uniform")}
    assert schemas == {
        "gate_stats": "fastbayes_C::gate_stats(Tensor mu, Tensor log_sigma, float a, float b) -> (Tensor, Tensor, Tensor)",
        "gate_stats_backward": "fastbayes_C::gate_stats_backward(Tensor grad_kl, Tensor mu, Tensor log_sigma, "
                               "float a, float b) -> (Tensor, Tensor)",
        "philox_uniform": "fastbayes_C::philox_uniform(int seed, int offset, int n) -> Tensor",
    }
