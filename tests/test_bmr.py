"""fastbayes.bmr: METHODS.md §2.3/§2.4 golden values, a quadrature oracle, the BMRS_U blind spot, bad args."""
import math

import pytest
import scipy.integrate as si
import scipy.stats as ss
import torch

from fastbayes.bmr import bmrs_n_prior, bmrs_u_prior, delta_f
from fastbayes.distributions import LogUniform, TruncatedLogNormal

A, B = -20.0, 0.0
LOG2 = math.log(2.0)
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def post(mu, sigma, dtype=torch.float64):
    return TruncatedLogNormal(torch.tensor(mu, dtype=dtype), torch.tensor(sigma, dtype=dtype))


def _half_ulp(g):   # tolerance: half a unit in the last printed digit of a golden value
    s = repr(g)
    return 0.5 * 10.0 ** -(len(s.split(".")[1]) if "." in s else 0) + 1e-12


@pytest.mark.parametrize("mu, sigma, golden", [
    (-19.9, 0.5, 3.2959), (-15.0, 3.0, -0.36174), (-10.0, 10.0, -0.34408),
    (-10.0, 3.0, -4.5765), (-5.0, 1.0, -110.4232), (-2.0, 10.0, -1.23575),
])
def test_golden_bmrs_n(mu, sigma, golden):
    df = delta_f(post([mu], [sigma]), LogUniform(A, B), bmrs_n_prior(A, B))
    assert df.dtype == torch.float64
    assert df.item() == pytest.approx(golden, abs=_half_ulp(golden))


@pytest.mark.parametrize("mu, sigma, g8, g4", [
    (-10.0, 3.0, 0.5579, 0.3863), (-15.0, 3.0, 0.2291, -0.0060),
    (-5.0, 1.0, -0.5740, 0.4048), (-19.9, 0.5, -33.13, -33.36),
])
def test_golden_bmrs_u(mu, sigma, g8, g4):
    q, p = post([mu], [sigma]), LogUniform(A, B)
    assert delta_f(q, p, bmrs_u_prior(8)).item() == pytest.approx(g8, abs=_half_ulp(g8))
    assert delta_f(q, p, bmrs_u_prior(4)).item() == pytest.approx(g4, abs=_half_ulp(g4))


def test_code_offset_moves_the_threshold():
    q, p, r = post([-15.0], [3.0]), LogUniform(A, B), bmrs_n_prior()
    paper = delta_f(q, p, r).item()
    code = delta_f(q, p, r, code_offset=True).item()
    assert code - paper == pytest.approx(HALF_LOG_2PI, abs=1e-12)
    assert paper == pytest.approx(-0.362, abs=5e-4) and code == pytest.approx(0.557, abs=5e-4)
    # keep by the paper's rule (ΔF < 0), prune by the released code's (ΔF >= 0)
    assert paper < 0 <= code
    # the flag does not touch ΔF_U
    u = bmrs_u_prior()
    assert delta_f(q, p, u, code_offset=True).item() == delta_f(q, p, u).item()


def test_blind_spot_of_bmrs_u_and_its_fix():
    # q sits below a' = 2^-23 (θ < 1.2e-7): the paper's a' never prunes it, a' = a does
    q, p = post([-19.9], [0.5]), LogUniform(A, B)
    assert delta_f(q, p, bmrs_u_prior(8, 23)).item() == pytest.approx(-33.13, abs=0.01)
    fixed = delta_f(q, p, bmrs_u_prior(8, 23, lower="a")).item()
    assert fixed >= 0
    assert delta_f(q, p, bmrs_u_prior(8, lower=A)).item() == fixed
    # the fixed prior agrees with BMRS_N on that unit (both prune)
    assert delta_f(q, p, bmrs_n_prior()).item() > 0


# ---------------------------------------------------------------- quadrature oracle

def _log_quad_delta_f(mu, sigma, reduced_logpdf_x, lo=A, hi=B, spike=None):
    """log ∫ q(θ)·p̃(θ)/p(θ) dθ in x = log θ (the Jacobians cancel): ∫ q_x(x)·p̃_x(x)·(b-a) dx."""
    al, be = (A - mu) / sigma, (B - mu) / sigma
    log_zq = math.log(ss.norm.cdf(be) - ss.norm.cdf(al)) if al < 0 else math.log(ss.norm.sf(al) - ss.norm.sf(be))

    def f(x):
        return math.exp(-0.5 * ((x - mu) / sigma) ** 2 - math.log(sigma * math.sqrt(2 * math.pi)) - log_zq
                        + reduced_logpdf_x(x) + math.log(B - A))

    pts = [p for p in (mu, spike) if p is not None and lo < p < hi]
    if spike is not None:   # the spike carries the mass: integrate it on its own scale
        w = 12 * 1e-6
        total = si.quad(f, lo, min(hi, spike + w), points=None, limit=400, epsabs=0, epsrel=1e-12)[0]
        total += si.quad(f, min(hi, spike + w), hi, points=[p for p in pts if p > spike + w] or None,
                         limit=400, epsabs=0, epsrel=1e-12)[0]
    else:
        total = si.quad(f, lo, hi, points=pts or None, limit=400, epsabs=0, epsrel=1e-12)[0]
    return math.log(total)


@pytest.mark.parametrize("mu, sigma", [(-19.9, 0.5), (-15.0, 3.0), (-10.0, 10.0), (-10.0, 3.0), (-2.0, 10.0),
                                       (-20.2, 0.1), (-21.0, 0.5), (-19.0, 2.0), (-30.0, 5.0)])
@pytest.mark.parametrize("scale", [1e-6, 0.3])
def test_bmrs_n_against_quadrature(mu, sigma, scale):
    red = bmrs_n_prior(A, B, scale=scale)
    # p̃_x: N(a, scale²) truncated to [a, b] = half-normal at a
    log_zp = math.log(ss.norm.cdf((B - A) / scale) - 0.5)

    def log_red(x):
        return -0.5 * ((x - A) / scale) ** 2 - math.log(scale * math.sqrt(2 * math.pi)) - log_zp

    ref = _log_quad_delta_f(mu, sigma, log_red, spike=A if scale < 1e-3 else None)
    got = delta_f(post([mu], [sigma]), LogUniform(A, B), red).item()
    assert got == pytest.approx(ref, abs=1e-8 * max(1.0, abs(ref)))


@pytest.mark.parametrize("mu, sigma", [(-19.9, 0.5), (-15.0, 3.0), (-10.0, 3.0), (-5.0, 1.0), (-2.0, 10.0),
                                       (-25.0, 2.0), (3.0, 1.0)])
@pytest.mark.parametrize("p1, p2, lower", [(8, 23, None), (4, 23, None), (8, 23, "a"), (11, 16, None)])
def test_bmrs_u_against_quadrature(mu, sigma, p1, p2, lower):
    red = bmrs_u_prior(p1, p2, lower=lower)
    lo, hi = red.a, red.b
    ref = _log_quad_delta_f(mu, sigma, lambda x: -math.log(hi - lo), lo=lo, hi=hi)
    got = delta_f(post([mu], [sigma]), LogUniform(A, B), red).item()
    assert got == pytest.approx(ref, abs=1e-8 * max(1.0, abs(ref)))


def test_batched_float32_far_tails_and_device():
    mu = torch.tensor([-60.0, -19.9, -10.0, 0.0, 30.0], dtype=torch.float32)
    sigma = torch.tensor([1e-6, 0.5, 3.0, 1e-6, 1e3], dtype=torch.float32)
    q = TruncatedLogNormal(mu, sigma)
    for red in (bmrs_n_prior(), bmrs_u_prior(), bmrs_u_prior(lower="a")):
        df = delta_f(q, LogUniform(), red)
        assert df.dtype == torch.float64 and df.shape == (5,) and df.device == mu.device
        assert torch.isfinite(df).all()
    # batched reduced prior broadcasts against the posterior
    red = TruncatedLogNormal(torch.full((5,), A, dtype=torch.float64), torch.full((5,), 1e-6, dtype=torch.float64))
    assert torch.allclose(delta_f(q, LogUniform(), red), delta_f(q, LogUniform(), bmrs_n_prior()), rtol=1e-15)
    # q as narrow as the spike and beyond a: terms of size (α²/2 ~ 8e14) cancel to ΔF_N ~ 16 (mpmath, 100 digits)
    tail = delta_f(post([-20.0 - 1e-6, -60.0], [1e-6, 1e-6]), LogUniform(), bmrs_n_prior())
    assert tail.tolist() == pytest.approx([16.40174122331762, 16.585451478873537], rel=1e-13)


def test_bad_arguments():
    q, p = post([-10.0], [3.0]), LogUniform(A, B)
    with pytest.raises(TypeError, match="posterior"):
        delta_f(p, p, bmrs_n_prior())
    with pytest.raises(TypeError, match="prior"):
        delta_f(q, q, bmrs_n_prior())
    with pytest.raises(TypeError, match="reduced"):
        delta_f(q, p, "bmrs_n")
    with pytest.raises(ValueError, match="prior bounds"):
        delta_f(q, LogUniform(-10.0, 0.0), bmrs_n_prior())
    with pytest.raises(ValueError, match="reduced bounds"):
        delta_f(q, p, bmrs_n_prior(-10.0, 0.0))
    with pytest.raises(ValueError, match="reduced bounds"):
        delta_f(q, p, LogUniform(-25.0, -5.0))
    with pytest.raises(ValueError, match="scale"):
        bmrs_n_prior(scale=0.0)
    with pytest.raises(ValueError, match="lower"):
        bmrs_u_prior(lower="b")
    with pytest.raises(ValueError, match="a <= a'"):
        bmrs_u_prior(p1=23, p2=8)            # b' below a'
    with pytest.raises(ValueError, match="a <= a'"):
        bmrs_u_prior(p2=30)                  # a' = 2^-30 below a = -20
    with pytest.raises(ValueError, match="a <= a'"):
        bmrs_u_prior(p1=float("nan"))
