"""fastbayes.reference.gate_stats against METHODS.md golden values, an mpmath oracle (100 digits) over a
grid that includes the far tails, finite differences of the KL, and hypothesis-driven finiteness."""
import itertools
import math

import mpmath as mp
import pytest
import torch
from hypothesis import given, settings, strategies as st

from fastbayes.reference import gate_stats as gs

A, B = -20.0, 0.0
LOG2 = math.log(2.0)


# ---------------------------------------------------------------- mpmath oracle (closed forms, 100 digits)

def _phi_diff(lo, hi):
    """Φ(hi) - Φ(lo) from the side where both are small."""
    r2 = mp.sqrt(2)
    if lo + hi > 0:
        return (mp.erfc(lo / r2) - mp.erfc(hi / r2)) / 2
    return (mp.erfc(-hi / r2) - mp.erfc(-lo / r2)) / 2


def oracle(mu, sigma, a=A, b=B):
    with mp.workdps(100):
        mu, sigma, a, b = (mp.mpf(v) for v in (mu, sigma, a, b))
        al, be = (a - mu) / sigma, (b - mu) / sigma
        z = _phi_diff(al, be)
        pa, pb = mp.npdf(al) / z, mp.npdf(be) / z
        nz = al * pa - be * pb
        kl = mp.log(b - a) - mp.log(sigma) - mp.log(z) - mp.log(2 * mp.pi * mp.e) / 2 - nz / 2

        def log_m(k):
            return k * mu + k * k * sigma ** 2 / 2 + mp.log(_phi_diff(al - k * sigma, be - k * sigma)) - mp.log(z)

        lm1, lm2 = log_m(1), log_m(2)
        # METHODS §0.4 closed forms (exact at this precision even where they cancel in float64)
        dz_mu = (pa - pb) / sigma
        dn_mu = (pb * (1 - be ** 2) - pa * (1 - al ** 2)) / sigma
        dmu = -dz_mu - (dn_mu - nz * dz_mu) / 2
        dn_ls = be * pb * (1 - be ** 2) - al * pa * (1 - al ** 2)
        dls = -1 - nz - (dn_ls - nz * nz) / 2
        return dict(kl=kl, log_z=mp.log(z), lm1=lm1, lm2=lm2, d2=lm2 - 2 * lm1, dmu=dmu, dls=dls,
                    pa=pa, pb=pb, nz=nz)


def oracle_dfn(mu, sigma, a=A, b=B, loc=None, scale=1e-6):
    """Paper formula (METHODS §2.3, three-term form) at 100 digits."""
    with mp.workdps(100):
        mu, sigma, a, b, sp = (mp.mpf(v) for v in (mu, sigma, a, b, scale))
        mp_ = a if loc is None else mp.mpf(loc)
        sq2 = 1 / (1 / sigma ** 2 + 1 / sp ** 2)
        muq = sq2 * (mu / sigma ** 2 + mp_ / sp ** 2)
        sq = mp.sqrt(sq2)
        zq = _phi_diff((a - mu) / sigma, (b - mu) / sigma)
        zp = _phi_diff((a - mp_) / sp, (b - mp_) / sp)
        zqt = _phi_diff((a - muq) / sq, (b - muq) / sq)
        return (mp.log(zqt * (b - a) / (zp * zq)) + mp.log(sq2 / (2 * mp.pi * sp ** 2 * sigma ** 2)) / 2
                - (mu ** 2 / sigma ** 2 + mp_ ** 2 / sp ** 2 - muq ** 2 / sq2) / 2)


def oracle_dfu(mu, sigma, a, b, a2, b2):
    with mp.workdps(100):
        mu, sigma, a, b, a2, b2 = (mp.mpf(v) for v in (mu, sigma, a, b, a2, b2))
        mass = _phi_diff((a2 - mu) / sigma, (b2 - mu) / sigma) / _phi_diff((a - mu) / sigma, (b - mu) / sigma)
        return mp.log(mass) - mp.log((b2 - a2) / (b - a))


def t64(values):
    return torch.tensor(values, dtype=torch.float64)


# ---------------------------------------------------------------- golden values (METHODS.md)

GOLDEN_02 = [  # μ, σ, KL, E[θ], Var[θ], SNR   (§0.2, mpmath at 400 digits)
    (0, math.exp(-5), 7.269940921, 0.994646515, 1.625556342e-05, 246.6992061),
    (-1, 0.5, 2.348201693, 0.3980687514, 0.03364095014, 2.170320937),
    (-5, 1, 1.576797744, 0.01110864789, 2.116078257e-04, 0.7636517277),
    (-10, 3, 0.4841852861, 0.002579162353, 5.121787801e-04, 0.1139640541),
    (-15, 3, 0.6142138881, 2.826053854e-05, 1.022937939e-06, 0.02794189076),
    (-19.9, 0.5, 2.883452593, 3.377873091e-09, 1.65958311e-18, 2.622067247),
    (-2, 10, 0.08699703347, 0.07269841839, 0.03097220021, 0.4130845325),
    (-10, 10, 0.01036124627, 0.0389127247, 0.01708915142, 0.2976674812),
]


def test_golden_table_0_2():
    mu, sigma = t64([r[0] for r in GOLDEN_02]), t64([r[1] for r in GOLDEN_02])
    kl, mean, snr = gs.gate_stats(mu, torch.log(sigma))
    lm1, d2 = gs.log1p_inv_snr2(mu, sigma, A, B)
    var = torch.exp(2 * lm1) * torch.expm1(d2)
    for i, (_, _, kl_g, mean_g, var_g, snr_g) in enumerate(GOLDEN_02):
        # the table carries 9-10 significant digits
        assert kl[i].item() == pytest.approx(kl_g, rel=2e-9)
        assert mean[i].item() == pytest.approx(mean_g, rel=2e-9)
        assert var[i].item() == pytest.approx(var_g, rel=1e-8)
        assert snr[i].item() == pytest.approx(snr_g, rel=2e-9)


def test_golden_snr_near_lower_bound():
    # METHODS §0.5 item 2: the erfcx form fails here, the log-space form gives 19.9875013029
    snr = gs.gate_stats(t64([-19.5]), torch.log(t64([0.05])))[2]
    assert snr.item() == pytest.approx(19.9875013029, rel=1e-10)


@pytest.mark.parametrize("mu, sigma, dmu_g, dsig_g", [
    (-1.0, 0.5, 0.282344, -1.435312),
    (0.0, math.exp(-5), 59.2083, -148.4132),
])
def test_golden_gradients_0_4(mu, sigma, dmu_g, dsig_g):
    dmu, dls = gs.gate_stats_backward(t64([1.0]), t64([mu]), torch.log(t64([sigma])))
    assert dmu.item() == pytest.approx(dmu_g, abs=1e-6 * max(1, abs(dmu_g)))
    assert (dls / sigma).item() == pytest.approx(dsig_g, abs=1e-6 * max(1, abs(dsig_g)))


def test_kl_flat_at_centre_and_decreasing_in_sigma():
    dmu, dls = gs.gate_stats_backward(t64([1.0]), t64([-10.0]), torch.log(t64([8.0])))
    assert abs(dmu.item()) < 1e-15
    assert dls.item() < 0


@pytest.mark.parametrize("mu, sigma, n_g, u8_g, u4_g", [
    (-19.9, 0.5, 3.2959, -33.13, -33.36),
    (-15.0, 3.0, -0.36174, 0.2291, -0.0060),
    (-10.0, 10.0, -0.34408, None, None),
    (-10.0, 3.0, -4.5765, 0.5579, 0.3863),
    (-5.0, 1.0, -110.4232, -0.5740, 0.4048),
    (-2.0, 10.0, -1.23575, None, None),
])
def test_golden_delta_f(mu, sigma, n_g, u8_g, u4_g):
    def tol(g):   # half a unit in the last printed digit
        s = repr(g).split("e")[0]
        return 0.5 * 10.0 ** -(len(s.split(".")[1]) if "." in s else 0) + 1e-12

    m, s = t64([mu]), t64([sigma])
    assert gs.delta_f_n(m, s, A, B, A, 1e-6).item() == pytest.approx(n_g, abs=tol(n_g))
    coded = gs.delta_f_n(m, s, A, B, A, 1e-6, code_offset=True).item()
    assert coded - gs.delta_f_n(m, s, A, B, A, 1e-6).item() == pytest.approx(0.5 * math.log(2 * math.pi), abs=1e-12)
    if u8_g is not None:
        assert gs.delta_f_u(m, s, A, B, -23 * LOG2, -8 * LOG2).item() == pytest.approx(u8_g, abs=tol(u8_g))
        assert gs.delta_f_u(m, s, A, B, -23 * LOG2, -4 * LOG2).item() == pytest.approx(u4_g, abs=tol(u4_g))


# ---------------------------------------------------------------- mpmath over a grid with far tails

MUS = [-60.0, -40.0, -25.0, -20.5, -20.0, -19.9, -15.0, -10.0, -1.0, 0.0, 0.3, 5.0, 30.0]
SIGMAS = [1e-6, 1e-3, 0.05, 0.5, 3.0, 8.0, 30.0, 1e3]
# points on the regime switches: s = 5 ± 1e-7 (tail), σ = 0.1·s (Δ² quadrature), T = 1 (wide window)
EDGES = [(A - k * s, s) for s in (1e-3, 0.3, 2.0) for k in (5 - 1e-7, 5 + 1e-7)] + \
        [(B + k * s, s) for s in (1e-3, 0.3, 2.0) for k in (5 - 1e-7, 5 + 1e-7)] + \
        [(-60.0, math.sqrt(0.1 * 40) * f) for f in (0.999, 1.001)] + \
        [(mu, 20.0 * f) for mu in (-30.0, -10.0, 10.0) for f in (0.999, 1.001)]
GRID = list(itertools.product(MUS, SIGMAS)) + EDGES


def _close(value, ref, rtol, atol):
    assert math.isfinite(value), (value, float(ref))
    assert abs(value - ref) <= atol + rtol * abs(ref), (value, float(ref), float(abs(value - ref)))


@pytest.mark.parametrize("a, b", [(A, B), (-23 * LOG2, -8 * LOG2), (-1.0, 0.0)])
def test_against_mpmath_grid(a, b):
    mu, sigma = t64([p[0] for p in GRID]), t64([p[1] for p in GRID])
    kl, al, be, pa, pb, nz = gs.kl_terms(mu, sigma, a, b)
    log_z, lm1, lm2 = gs.moments_log(mu, sigma, a, b)
    lm1b, d2 = gs.log1p_inv_snr2(mu, sigma, a, b)
    isnr = gs.inv_snr2(mu, sigma, a, b)
    dmu, dls = gs.gate_stats_backward(torch.ones_like(mu), mu, torch.log(sigma), a, b)
    assert torch.equal(lm1, lm1b)
    for i, (m, s) in enumerate(GRID):
        o = oracle(m, s, a, b)
        _close(kl[i].item(), o["kl"], 1e-10, 1e-15)
        _close(lm1[i].item(), o["lm1"], 0, 1e-12)               # relative accuracy of E[θ]
        _close(lm2[i].item(), o["lm2"], 0, 1e-12)
        _close(d2[i].item(), o["d2"], 1e-10, 0)                 # relative accuracy of 1/SNR² down to 1e-28
        _close(isnr[i].item(), mp.expm1(o["d2"]), 1e-10, 0)
        _close(log_z[i].item(), o["log_z"], 1e-15, 1e-12)       # log Z to its own size
        _close(dmu[i].item(), o["dmu"], 1e-10, 1e-14)
        _close(dls[i].item(), o["dls"], 1e-10, 1e-14)
        if abs(o["log_z"]) < 50:                                # pieces only meaningful at moderate Z
            _close(pa[i].item(), o["pa"], 1e-9, 1e-12)
            _close(pb[i].item(), o["pb"], 1e-9, 1e-12)
            _close(nz[i].item(), o["nz"], 1e-9, 1e-12)


def test_far_tail_example_from_the_brief():
    # μ = -60, σ = 1e-6: α = 4e7; the direct forms gave SNR = inf and lost ~0.1 in log E[θ]
    mu, ls = t64([-60.0]), torch.log(t64([1e-6]))
    kl, mean, snr = gs.gate_stats(mu, ls)
    o = oracle(-60.0, 1e-6)
    assert snr.item() == pytest.approx(float(1 / mp.sqrt(mp.expm1(o["d2"]))), rel=1e-10)
    assert math.log(mean.item()) == pytest.approx(float(o["lm1"]), abs=1e-14)
    assert kl.item() == pytest.approx(float(o["kl"]), rel=1e-12)
    dmu, dls = gs.gate_stats_backward(t64([1.0]), mu, ls)
    # KL ≈ log(b-a) - 1 - 2 log σ + log(a - μ): ∂/∂μ = -1/(a-μ), ∂/∂log σ = -2
    assert dmu.item() == pytest.approx(-1 / 40.0, rel=1e-9)
    assert dls.item() == pytest.approx(-2.0, rel=1e-9)


@pytest.mark.parametrize("a2, b2", [(-23 * LOG2, -8 * LOG2), (A, -8 * LOG2), (-20.0, -19.0), (-1.0, 0.0)])
def test_delta_f_u_against_mpmath(a2, b2):
    mu, sigma = t64([p[0] for p in GRID]), t64([p[1] for p in GRID])
    df = gs.delta_f_u(mu, sigma, A, B, a2, b2)
    for i, (m, s) in enumerate(GRID):
        ref = oracle_dfu(m, s, A, B, a2, b2)
        _close(df[i].item(), ref, 1e-12, 1e-12)


@pytest.mark.parametrize("loc, scale", [(None, 1e-6), (-10.0, 1e-6), (A, 0.1), (-25.0, 1.0)])
def test_delta_f_n_against_mpmath(loc, scale):
    mu, sigma = t64([p[0] for p in GRID]), t64([p[1] for p in GRID])
    df = gs.delta_f_n(mu, sigma, A, B, A if loc is None else loc, scale)
    for i, (m, s) in enumerate(GRID):
        ref = oracle_dfn(m, s, loc=loc, scale=scale)
        _close(df[i].item(), ref, 1e-12, 1e-12)


def test_delta_f_n_accepts_tensor_reduced_parameters():
    mu, sigma = t64([-19.9, -10.0]), t64([0.5, 3.0])
    df = gs.delta_f_n(mu, sigma, A, B, t64([A, A]), t64([1e-6, 1e-6]))
    ref = gs.delta_f_n(mu, sigma, A, B, A, 1e-6)
    assert torch.equal(df, ref)


# ---------------------------------------------------------------- KL backward vs finite differences

class _KL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mu, log_sigma):
        ctx.save_for_backward(mu, log_sigma)
        return gs.gate_stats(mu, log_sigma)[0]

    @staticmethod
    def backward(ctx, g):
        return gs.gate_stats_backward(g, *ctx.saved_tensors)


def test_kl_backward_gradcheck():
    pts = [(-1.0, 0.5), (0.0, math.exp(-5)), (-25.0, 1.0), (-60.0, 1e-3), (30.0, 0.5), (-10.0, 300.0),
           (-20.3, 0.06), (0.2, 0.04), (-19.9, 0.5), (-10.0, 3.0), (-27.0, 1.2), (-10.0, 20.5)]
    mu = t64([p[0] for p in pts]).requires_grad_()
    ls = torch.log(t64([p[1] for p in pts])).requires_grad_()
    assert torch.autograd.gradcheck(_KL.apply, (mu, ls), eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("mu, sigma", [(-60.0, 1e-6), (-60.0, 1.0), (30.0, 2.0), (-23.0, 0.5)])
def test_kl_gradient_far_tail_against_mpmath_derivative(mu, sigma):
    # independent of the §0.4 closed form: numerical derivative of the 100-digit KL
    with mp.workdps(100):
        h = mp.mpf("1e-25")   # central differences: truncation ~h², rounding ~1e-100/h
        d_mu = (oracle(mu + h, sigma)["kl"] - oracle(mu - h, sigma)["kl"]) / (2 * h)
        ls = mp.log(mp.mpf(sigma))
        d_ls = (oracle(mu, mp.exp(ls + h))["kl"] - oracle(mu, mp.exp(ls - h))["kl"]) / (2 * h)
    dmu, dls = gs.gate_stats_backward(t64([1.0]), t64([mu]), torch.log(t64([sigma])))
    assert dmu.item() == pytest.approx(float(d_mu), rel=1e-9)
    assert dls.item() == pytest.approx(float(d_ls), rel=1e-9)


def test_tn_var_regimes_against_mpmath():
    # variance of N(0,1) on [lo, hi]: inside, one- and two-sided tails, mirrored
    wins = [(-1.0, 2.0), (4.9, 7.0), (5.1, 5.6), (6.0, 9.0), (40.0, 41.0), (1e4, 1e4 + 1e-3), (-9.0, -6.0),
            (-3.0, 30.0)]
    lo, hi = t64([w[0] for w in wins]), t64([w[1] for w in wins])
    v = gs.tn_var(lo, hi, hi - lo)
    for i, (l, h) in enumerate(wins):
        with mp.workdps(60):
            l, h = mp.mpf(l), mp.mpf(h)
            z = _phi_diff(l, h)
            m1 = (mp.npdf(l) - mp.npdf(h)) / z
            m2 = 1 + (l * mp.npdf(l) - h * mp.npdf(h)) / z
            ref = m2 - m1 * m1
        _close(v[i].item(), ref, 1e-9, 0)


# ---------------------------------------------------------------- finiteness over the whole range

units = st.lists(st.tuples(st.floats(-60.0, 30.0), st.floats(math.log(1e-6), math.log(1e3))), min_size=1, max_size=32)


@settings(max_examples=40, deadline=None)
@given(units, st.sampled_from([torch.float32, torch.float64]))
def test_finite_everywhere(pts, dtype):
    mu = torch.tensor([p[0] for p in pts], dtype=dtype)
    ls = torch.tensor([p[1] for p in pts], dtype=dtype)
    kl, mean, snr = gs.gate_stats(mu, ls)
    dmu, dls = gs.gate_stats_backward(torch.ones_like(mu), mu, ls)
    for t in (kl, mean, snr, dmu, dls):
        assert t.dtype == dtype
        assert torch.isfinite(t).all(), (pts, t)
    assert (kl >= -1e-12).all()
    assert (snr > 0).all()
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    assert (mean >= math.exp(A) * (1 - tol)).all() and (mean <= math.exp(B) * (1 + tol)).all()
    sigma = torch.exp(ls.double())
    for df in (gs.delta_f_n(mu, sigma, A, B, A, 1e-6), gs.delta_f_u(mu, sigma, A, B, -23 * LOG2, -8 * LOG2),
               gs.delta_f_u(mu, sigma, A, B, A, -8 * LOG2)):
        assert df.dtype == torch.float64 and torch.isfinite(df).all(), (pts, df)
    # the mass in [a', b'] is at most 1
    assert (gs.delta_f_u(mu, sigma, A, B, -23 * LOG2, -8 * LOG2) <= math.log((B - A) / (15 * LOG2)) + 1e-12).all()
