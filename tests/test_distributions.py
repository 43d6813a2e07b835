"""fastbayes.distributions against scipy (truncnorm, quadrature), mpmath and finite differences."""
import math

import mpmath as mp
import numpy as np
import pytest
import scipy.integrate as si
import scipy.stats as ss
import torch
from torch.distributions import kl_divergence

from fastbayes.distributions import LogUniform, SpikeSlab, TruncatedLogNormal
from fastbayes.reference import gate_stats as gs

A, B = -20.0, 0.0
# inside, near a bound, the tail regime on either side (s > 5), wide
PARAMS = [(-1.0, 0.5), (0.0, math.exp(-5)), (-19.9, 0.5), (-10.0, 3.0), (-25.0, 0.9), (2.5, 0.4), (-2.0, 10.0)]


def t64(v):
    return torch.tensor(v, dtype=torch.float64)


class x_density:
    """Truncated normal of x = log θ: scalar pdf/logpdf in plain math (fast inside quad), cdf/ppf from scipy."""

    def __init__(self, mu, sigma, a=A, b=B):
        al, be = (a - mu) / sigma, (b - mu) / sigma
        z = ss.norm.sf(al) - ss.norm.sf(be) if al > 0 else ss.norm.cdf(be) - ss.norm.cdf(al)
        self.mu, self.sigma, self.a, self.b = mu, sigma, a, b
        self.log_norm = math.log(sigma * math.sqrt(2 * math.pi) * z)
        self._tn = ss.truncnorm(al, be, loc=mu, scale=sigma)

    def logpdf(self, x):
        x = np.asarray(x, dtype=float)
        lp = -0.5 * ((x - self.mu) / self.sigma) ** 2 - self.log_norm
        out = np.where((x >= self.a) & (x <= self.b), lp, -np.inf)
        return float(out) if out.ndim == 0 else out

    def pdf(self, x):
        return math.exp(self.logpdf(x))

    def cdf(self, x):
        return self._tn.cdf(x)

    def ppf(self, u):
        return self._tn.ppf(u)


def quad_x(f, mu, sigma, a=A, b=B):
    """∫_a^b f(x) dx with the bulk of q given to quad as break points."""
    lo, hi = max(a, mu - 12 * sigma), min(b, mu + 12 * sigma)
    if lo >= hi:                       # q sits in a tail: its mass hugs the near bound
        lo, hi = (a, min(b, a + 40 * sigma * sigma / max(a - mu, 1e-300) + 40 * sigma)) if mu < a else \
                 (max(a, b - 40 * sigma * sigma / max(mu - b, 1e-300) - 40 * sigma), b)
    total = si.quad(f, lo, hi, limit=400, epsabs=0, epsrel=1e-13)[0]
    if lo > a:
        total += si.quad(f, a, lo, limit=200, epsabs=0, epsrel=1e-13)[0]
    if hi < b:
        total += si.quad(f, hi, b, limit=200, epsabs=0, epsrel=1e-13)[0]
    return total


# ---------------------------------------------------------------- moments, log_prob, entropy

@pytest.mark.parametrize("mu, sigma", PARAMS)
def test_moments_against_quadrature(mu, sigma):
    d = TruncatedLogNormal(t64(mu), t64(sigma))
    q = x_density(mu, sigma)
    m1 = quad_x(lambda x: math.exp(x) * q.pdf(x), mu, sigma)
    m2 = quad_x(lambda x: math.exp(2 * x) * q.pdf(x), mu, sigma)
    var = quad_x(lambda x: (math.exp(x) - m1) ** 2 * q.pdf(x), mu, sigma)
    assert d.mean.item() == pytest.approx(m1, rel=1e-9)
    assert d.variance.item() == pytest.approx(var, rel=1e-8)
    assert d.stddev.item() == pytest.approx(math.sqrt(var), rel=1e-8)
    assert d.snr.item() == pytest.approx(m1 / math.sqrt(var), rel=1e-8)
    assert m2 == pytest.approx(var + m1 * m1, rel=1e-9)


@pytest.mark.parametrize("mu, sigma", PARAMS)
def test_log_prob_matches_scipy_and_integrates_to_one(mu, sigma):
    d = TruncatedLogNormal(t64(mu), t64(sigma))
    q = x_density(mu, sigma)
    xs = np.linspace(A, B, 41)[1:-1]
    lp = d.log_prob(torch.exp(t64(xs)))
    ref = q.logpdf(xs) - xs                      # density of θ = density of x / θ
    ok = np.isfinite(ref) & (ref > -700)         # scipy's truncnorm underflows far from the mode
    np.testing.assert_allclose(lp.numpy()[ok], ref[ok], rtol=1e-9, atol=1e-9)
    total = quad_x(lambda x: math.exp(d.log_prob(t64(math.exp(x))).item() + x), mu, sigma)
    assert total == pytest.approx(1.0, abs=1e-9)


def test_log_prob_far_tail_is_exact():
    # μ = -60, σ = 1e-3: α = 4e4; the density at x = a + σ²/(a-μ) (one decay length) from mpmath
    mu, sigma = -60.0, 1e-3
    x = A + sigma * sigma / (A - mu)
    d = TruncatedLogNormal(t64(mu), t64(sigma))
    with mp.workdps(60):
        m, s, xa = mp.mpf(mu), mp.mpf(sigma), mp.mpf(x)
        z = mp.erfc((A - m) / s / mp.sqrt(2)) / 2 - mp.erfc((B - m) / s / mp.sqrt(2)) / 2
        ref = mp.log(mp.npdf((xa - m) / s) / (s * z)) - xa
    assert d.log_prob(t64(math.exp(x))).item() == pytest.approx(float(ref), abs=1e-8)
    outside = TruncatedLogNormal(t64(mu), t64(sigma), validate_args=False)
    assert outside.log_prob(t64(math.exp(A) * 0.999)).item() == -math.inf


@pytest.mark.parametrize("mu, sigma", PARAMS + [(-60.0, 1.0), (30.0, 2.0)])
def test_entropy_against_quadrature(mu, sigma):
    d = TruncatedLogNormal(t64(mu), t64(sigma))
    if abs(mu - min(max(mu, A), B)) > 8 * sigma:       # far tails: x-entropy from mpmath closed form
        with mp.workdps(60):
            m, s = mp.mpf(mu), mp.mpf(sigma)
            al, be = (A - m) / s, (B - m) / s
            z = mp.erfc(al / mp.sqrt(2)) / 2 - mp.erfc(be / mp.sqrt(2)) / 2 if mu < A else \
                mp.erfc(-be / mp.sqrt(2)) / 2 - mp.erfc(-al / mp.sqrt(2)) / 2
            hx = mp.log(s * z) + mp.log(2 * mp.pi * mp.e) / 2 + (al * mp.npdf(al) - be * mp.npdf(be)) / (2 * z)
            ex = m + s * (mp.npdf(al) - mp.npdf(be)) / z
            ref = float(hx + ex)
    else:
        q = x_density(mu, sigma)
        ref = quad_x(lambda x: -q.pdf(x) * (q.logpdf(x) - x), mu, sigma)
    assert d.entropy().item() == pytest.approx(ref, rel=1e-9, abs=1e-9)


# ---------------------------------------------------------------- sampling, cdf, icdf

@pytest.mark.parametrize("mu, sigma", PARAMS + [(-26.0, 1.0), (7.0, 1.0), (-60.0, 1e-3)])
def test_rsample_ks_against_cdf(mu, sigma):
    torch.manual_seed(0)
    d = TruncatedLogNormal(t64(mu), t64(sigma))
    theta = d.rsample((4000,))
    assert theta.shape == (4000,)
    assert (theta >= math.exp(A)).all() and (theta <= math.exp(B)).all()
    # against our cdf (exact in every regime) and, where scipy is accurate, against truncnorm
    p_ours = ss.kstest(theta.numpy(), lambda v: d.cdf(torch.from_numpy(np.asarray(v))).numpy()).pvalue
    assert p_ours > 1e-3
    if abs(mu - min(max(mu, A), B)) < 5 * sigma:
        assert ss.kstest(np.log(theta.numpy()), x_density(mu, sigma).cdf).pvalue > 1e-3


@pytest.mark.parametrize("mu, sigma", PARAMS + [(-60.0, 1e-6), (-60.0, 1.0), (30.0, 1e-3), (7.0, 1.0)])
def test_cdf_icdf_round_trip(mu, sigma):
    d = TruncatedLogNormal(t64(mu), t64(sigma))
    u = t64([1e-12, 1e-6, 0.01, 0.3, 0.5, 0.77, 0.99, 1 - 1e-9])
    theta = d.icdf(u)
    back = d.cdf(theta)
    # the round trip can only be as good as x = log θ is resolved: |Δu| <= density · ulp(x)
    x = torch.log(theta)
    dens = torch.exp(d.log_prob(theta) + x)            # density of x
    slack = dens * 4 * torch.finfo(torch.float64).eps * x.abs().clamp(min=1)
    assert ((back - u).abs() <= 1e-12 + slack).all(), (back, u)
    if abs(mu - min(max(mu, A), B)) < 5 * sigma:   # scipy's ppf itself drifts (~1e-8) beyond 1e-2 from 0, 1
        mid = ((u > 0.005) & (u < 0.995)).numpy()
        ref = np.exp(x_density(mu, sigma).ppf(u.numpy()[mid]))
        np.testing.assert_allclose(theta.numpy()[mid], ref, rtol=1e-9)


def test_icdf_far_tail_against_mpmath():
    # x from a 60-digit bisection of Φ(ε) = (1-u)Φ(α) + uΦ(β); inverted in canonical y-space by Newton
    for mu, sigma in [(-26.0, 1.0), (-60.0, 1e-3), (7.0, 1.0), (-60.0, 5.0)]:
        d = TruncatedLogNormal(t64(mu), t64(sigma))
        for u in (1e-9, 0.2, 0.5, 0.9, 1 - 1e-9):
            with mp.workdps(60):
                m, s = mp.mpf(mu), mp.mpf(sigma)
                al = (A - m) / s

                def mass(x):    # Φ((x-μ)/σ) - Φ(α), from the small side
                    e = (x - m) / s
                    return (mp.erfc(al / mp.sqrt(2)) - mp.erfc(e / mp.sqrt(2))) / 2 if al + e > 0 else \
                        (mp.erfc(-e / mp.sqrt(2)) - mp.erfc(-al / mp.sqrt(2))) / 2
                target = u * mass(mp.mpf(B))
                lo, hi = mp.mpf(A), mp.mpf(B)
                for _ in range(200):
                    mid = (lo + hi) / 2
                    lo, hi = (mid, hi) if mass(mid) < target else (lo, mid)
                ref = float((lo + hi) / 2)
            x = math.log(d.icdf(t64(u)).item())
            assert x == pytest.approx(ref, abs=4 * math.ulp(abs(ref)) + 1e-12 * sigma)


def _fd(f, x, h):
    return (f(x + h) - f(x - h)) / (2 * h)


@pytest.mark.parametrize("mu, sigma", PARAMS + [(-26.0, 1.0), (-30.0, 0.5), (7.0, 1.0), (-20.5, 0.1)])
def test_rsample_gradients_against_finite_differences(mu, sigma):
    u = t64([0.001, 0.1, 0.5, 0.9, 0.999])
    loc, scale = t64(mu).requires_grad_(), t64(sigma).requires_grad_()
    uu = u.clone().requires_grad_()
    theta = TruncatedLogNormal(loc, scale).icdf(uu)
    g_mu, g_sig, g_u = [], [], []
    for i in range(len(u)):
        gm, gs_, gu = torch.autograd.grad(theta[i], (loc, scale, uu), retain_graph=True)
        g_mu.append(gm.item()), g_sig.append(gs_.item()), g_u.append(gu[i].item())

    def th(m, s, uv):
        return TruncatedLogNormal(t64(m), t64(s)).icdf(t64(uv)).numpy()

    fd_mu = _fd(lambda m: th(m, sigma, u.numpy()), mu, 1e-6 * sigma)
    fd_sig = _fd(lambda s: th(mu, s, u.numpy()), sigma, 1e-6 * sigma)
    fd_u = np.array([_fd(lambda v: th(mu, sigma, v), u[i].item(), 1e-5 * min(u[i].item(), 1 - u[i].item()))
                     for i in range(len(u))])
    scale_th = theta.detach().numpy()          # gradients of θ are relative to θ
    np.testing.assert_allclose(g_mu, fd_mu, rtol=1e-5, atol=1e-7 * scale_th.max())
    np.testing.assert_allclose(g_sig, fd_sig, rtol=1e-5, atol=1e-7 * scale_th.max())
    np.testing.assert_allclose(g_u, fd_u, rtol=1e-5, atol=1e-7 * scale_th.max())


def test_rsample_gradcheck_and_shapes():
    loc = t64([-1.0, -26.0, 7.0]).requires_grad_()
    scale = t64([0.5, 1.0, 1.0]).requires_grad_()
    u = t64([[0.2, 0.6, 0.95], [0.5, 0.01, 0.4]])
    assert torch.autograd.gradcheck(lambda m, s: TruncatedLogNormal(m, s).icdf(u), (loc, scale))
    d = TruncatedLogNormal(loc, scale)
    assert d.rsample((5, 2)).shape == (5, 2, 3)
    assert d.sample().shape == (3,) and not d.sample().requires_grad
    x = d.rsample((7,))
    x.sum().backward()
    assert torch.isfinite(loc.grad).all() and torch.isfinite(scale.grad).all()


def test_far_tail_samples_hug_the_bound():
    d = TruncatedLogNormal(t64([-60.0, 30.0]), t64([1e-6, 1e-6]))
    theta = d.rsample((100,))
    x = torch.log(theta)
    assert torch.allclose(x[:, 0], t64(A), atol=1e-12) and torch.allclose(x[:, 1], t64(B), atol=1e-12)
    loc = t64([-60.0, 30.0]).requires_grad_()
    scale = t64([1e-3, 1e-3]).requires_grad_()
    TruncatedLogNormal(loc, scale).rsample((50,)).sum().backward()
    # x = c ± σ²·w/|c - μ| in the tail: tiny, finite, correctly signed gradients
    assert torch.isfinite(loc.grad).all() and (loc.grad[0] > 0) and (loc.grad[1] > 0)
    assert loc.grad[0] < 1e-6 and loc.grad[1] < 1e-6


# ---------------------------------------------------------------- KL divergences

def _kl_quad(q, p_logpdf, mu, sigma, a=A, b=B):
    return quad_x(lambda x: q.pdf(x) * (q.logpdf(x) - p_logpdf(x)), mu, sigma, a, b)


@pytest.mark.parametrize("mu, sigma", PARAMS)
def test_kl_to_log_uniform(mu, sigma):
    q = TruncatedLogNormal(t64(mu), t64(sigma))
    kl = kl_divergence(q, LogUniform(A, B))
    assert kl.item() == pytest.approx(gs.gate_stats(t64(mu), torch.log(t64(sigma)))[0].item(), rel=1e-14)
    ref = _kl_quad(x_density(mu, sigma), lambda x: -math.log(B - A), mu, sigma)
    assert kl.item() == pytest.approx(ref, rel=1e-8, abs=1e-10)
    # a wider prior support adds log of the width ratio
    wide = kl_divergence(q, LogUniform(-30.0, 5.0))
    assert wide.item() == pytest.approx(kl.item() + math.log(35.0 / 20.0), rel=1e-13)


@pytest.mark.parametrize("q_par, p_par", [
    ((-1.0, 0.5, A, B), (-3.0, 2.0, A, B)),
    ((-10.0, 3.0, A, B), (-10.5, 2.5, A, B)),
    ((-19.9, 0.5, A, B), (-15.0, 3.0, A, B)),
    ((-5.0, 1.0, -8.0, -2.0), (-3.0, 1.5, A, B)),        # contained, different bounds
    ((2.5, 0.4, A, B), (-1.0, 0.3, A, B)),                 # q in the upper tail
])
def test_kl_truncated_log_normals_against_quadrature(q_par, p_par):
    q = TruncatedLogNormal(t64(q_par[0]), t64(q_par[1]), q_par[2], q_par[3])
    p = TruncatedLogNormal(t64(p_par[0]), t64(p_par[1]), p_par[2], p_par[3])
    qx = x_density(*q_par[:2], *q_par[2:])
    px = x_density(*p_par[:2], *p_par[2:])
    ref = _kl_quad(qx, px.logpdf, q_par[0], q_par[1], q_par[2], q_par[3])
    assert kl_divergence(q, p).item() == pytest.approx(ref, rel=1e-8, abs=1e-10)


def test_kl_truncated_log_normals_far_tail_and_self():
    # far tail (μ 40σ below a): 60-digit closed form; KL(q || q) = 0 exactly in every regime
    mq, sq, mp_, sp_ = -60.0, 1.0, -50.0, 2.0
    with mp.workdps(60):
        def parts(m, s):
            m, s = mp.mpf(m), mp.mpf(s)
            al, be = (A - m) / s, (B - m) / s
            z = (mp.erfc(al / mp.sqrt(2)) - mp.erfc(be / mp.sqrt(2))) / 2
            ex = m + s * (mp.npdf(al) - mp.npdf(be)) / z
            e2 = s * s * (1 + (al * mp.npdf(al) - be * mp.npdf(be)) / z)      # E[(x-μ)²]
            return m, s, z, ex, e2
        m1, s1, z1, ex1, e21 = parts(mq, sq)
        m2, s2, z2, _, _ = parts(mp_, sp_)
        eqp = e21 + 2 * (m1 - m2) * (ex1 - m1) + (m1 - m2) ** 2                # E_q[(x-μp)²]
        ref = float(mp.log(s2 / s1) + mp.log(z2 / z1) + eqp / (2 * s2 ** 2) - e21 / (2 * s1 ** 2))
    q = TruncatedLogNormal(t64(mq), t64(sq))
    p = TruncatedLogNormal(t64(mp_), t64(sp_))
    assert kl_divergence(q, p).item() == pytest.approx(ref, rel=1e-10)
    d = TruncatedLogNormal(t64([-60.0, -10.0, 30.0, -1.0]), t64([1e-6, 3.0, 1e-3, 1e3]))
    assert torch.equal(kl_divergence(d, d), torch.zeros(4, dtype=torch.float64))


def test_kl_gradients_gradcheck():
    mq = t64([-1.0, -22.0, 3.0, -10.0]).requires_grad_()
    sq = t64([0.5, 0.3, 0.8, 3.0]).requires_grad_()
    mp_ = t64([-2.0, -10.0, 1.0, -12.0]).requires_grad_()
    sp_ = t64([1.5, 2.0, 0.3, 3.5]).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b, c, d: kl_divergence(TruncatedLogNormal(a, b), TruncatedLogNormal(c, d)), (mq, sq, mp_, sp_))
    assert torch.autograd.gradcheck(lambda a, b: kl_divergence(TruncatedLogNormal(a, b), LogUniform()), (mq, sq))
    assert torch.autograd.gradcheck(lambda a, b: TruncatedLogNormal(a, b).entropy(), (mq, sq))
    assert torch.autograd.gradcheck(lambda a, b: TruncatedLogNormal(a, b).mean, (mq, sq))
    assert torch.autograd.gradcheck(lambda a, b: TruncatedLogNormal(a, b).snr, (mq, sq))
    # broadcasting: one p for a batch of q
    loc = t64(-1.0).requires_grad_()
    kl = kl_divergence(TruncatedLogNormal(mq, sq), TruncatedLogNormal(loc, t64(1.0)))
    kl.sum().backward()
    assert kl.shape == (4,) and loc.grad.shape == ()


def test_log_uniform():
    for a, b in [(A, B), (-1.0, 0.0), (-3.0, -2.9), (-1e-4, 0.0)]:
        p = LogUniform(a, b)
        m1 = si.quad(lambda x: math.exp(x) / (b - a), a, b, epsabs=0, epsrel=1e-13)[0]
        var = si.quad(lambda x: (math.exp(x) - m1) ** 2 / (b - a), a, b, epsabs=0, epsrel=1e-13)[0]
        assert p.mean.dtype == torch.get_default_dtype()
        assert p.mean.item() == pytest.approx(m1, rel=1e-6)
        assert p.variance.item() == pytest.approx(var, rel=1e-5)
        assert p.snr.item() == pytest.approx(m1 / math.sqrt(var), rel=1e-5)
        ent = si.quad(lambda x: (math.log(b - a) + x) / (b - a), a, b, epsabs=0, epsrel=1e-13)[0]
        assert p.entropy().item() == pytest.approx(ent, rel=1e-6, abs=1e-6)
    # the narrow-window series branch agrees with the 50-digit value of (d/2)coth(d/2) - 1
    for d in (1e-4, 0.3, 0.49, 0.51, 2.0):
        with mp.workdps(50):
            ref = float((mp.mpf(d) / 2) * mp.coth(mp.mpf(d) / 2) - 1)
        assert LogUniform(0.0 - d, 0.0)._inv_snr2() == pytest.approx(ref, rel=1e-14)
    torch.manual_seed(1)
    p = LogUniform(A, B)
    th = p.rsample((3000,))
    assert ss.kstest(th.numpy(), lambda v: p.cdf(torch.from_numpy(np.asarray(v))).numpy()).pvalue > 1e-3
    u = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    assert torch.allclose(p.cdf(p.icdf(u)), u)
    with pytest.raises(ValueError):
        p.log_prob(torch.tensor(2.0))
    assert LogUniform(A, B, validate_args=False).log_prob(torch.tensor(2.0)).item() == -math.inf
    assert p.log_prob(torch.tensor(0.5)).item() == pytest.approx(-math.log(20.0) - math.log(0.5))
    assert p.expand((4, 2)).sample().shape == (4, 2)
    assert kl_divergence(LogUniform(-10.0, -5.0), p).item() == pytest.approx(math.log(4.0))


# ---------------------------------------------------------------- API: shapes, dtypes, errors

def test_batch_shape_expand_and_dtype():
    d = TruncatedLogNormal(torch.zeros(3, 1), torch.full((1, 4), 0.5))
    assert d.batch_shape == (3, 4)
    for t in (d.mean, d.variance, d.stddev, d.snr, d.entropy(), d.rsample(), d.cdf(d.mean), d.log_prob(d.mean)):
        assert t.shape == (3, 4) and t.dtype == torch.float32 and torch.isfinite(t).all()
    e = d.expand((2, 3, 4))
    assert e.batch_shape == (2, 3, 4) and (e.a, e.b) == (d.a, d.b)
    assert TruncatedLogNormal(0.0, 1.0).batch_shape == ()
    # the mode of θ (x = μ - σ², clipped) maximises log_prob
    g = TruncatedLogNormal(t64(-1.0), t64(0.5))
    xs = torch.linspace(-1.6, -0.9, 701, dtype=torch.float64)
    assert math.log(g.mode.item()) == pytest.approx(xs[g.log_prob(torch.exp(xs)).argmax()].item(), abs=1e-3)
    assert g.mode.item() == pytest.approx(math.exp(-1.25))
    f = TruncatedLogNormal(t64(-1.0), t64(0.5), a=-3.0, b=1.0)
    assert f.support.lower_bound == pytest.approx(math.exp(-3.0)) and f.support.upper_bound == pytest.approx(math.e)


def test_bad_arguments():
    with pytest.raises(ValueError, match="scale"):
        TruncatedLogNormal(torch.zeros(2), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="scale"):
        TruncatedLogNormal(torch.zeros(2), torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="loc"):
        TruncatedLogNormal(torch.tensor([float("nan")]), torch.ones(1))
    with pytest.raises(ValueError, match="scale"):
        TruncatedLogNormal(torch.zeros(1), torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="a must be < b"):
        TruncatedLogNormal(0.0, 1.0, a=0.0, b=-1.0)
    with pytest.raises(ValueError, match="a must be < b"):
        LogUniform(1.0, 1.0)
    with pytest.raises(ValueError, match="^a "):
        TruncatedLogNormal(0.0, 1.0, a=float("nan"))
    with pytest.raises(ValueError, match="^b "):
        LogUniform(0.0, float("inf"))
    with pytest.raises(TypeError, match="loc"):
        TruncatedLogNormal(torch.zeros(2, dtype=torch.long), torch.ones(2))
    q = TruncatedLogNormal(torch.zeros(2), torch.ones(2))
    with pytest.raises(ValueError, match="bounds"):
        kl_divergence(q, LogUniform(-10.0, 0.0))
    with pytest.raises(ValueError, match="bounds"):
        kl_divergence(q, TruncatedLogNormal(torch.zeros(2), torch.ones(2), a=-5.0))
    with pytest.raises(ValueError, match="probability"):
        q.icdf(torch.tensor(1.5))
    with pytest.raises(ValueError):
        q.log_prob(torch.tensor(2.0))          # outside the support [e^-20, 1]


# ---------------------------------------------------------------------------------------------------------------
# the spike-and-slab prior

def _direct_log_prob(w, s1, s0, pi):
    """log[π N(w; 0, s1²I) + (1 − π) N(w; 0, s0²I)] written out, float64."""
    k = w.shape[-1]
    sq = w.pow(2).sum(-1)
    l1 = math.log(pi) - sq / (2 * s1 ** 2) - k * math.log(math.sqrt(2 * math.pi) * s1)
    l0 = math.log1p(-pi) - sq / (2 * s0 ** 2) - k * math.log(math.sqrt(2 * math.pi) * s0)
    return torch.logaddexp(l1, l0), torch.sigmoid(l1 - l0)


@pytest.mark.parametrize("pi, ratio", [(0.5, 1e-2), (0.2, 0.1), (0.9, 1e-3)])
def test_spike_slab_score_matches_autograd(pi, ratio):
    torch.manual_seed(0)
    k, s1 = 7, 0.3
    prior = SpikeSlab(s1 ** 2, ratio, pi)
    s0 = ratio * s1
    # units spanning spike-dominated, boundary and slab-dominated regimes: rows of random direction whose ‖w‖² is
    # c times the ‖w‖² of equal responsibility (logit 0), c from 1e-2 to 1e2 and densely around 1
    sq_half = (k * math.log(s1 / s0) - math.log(pi / (1 - pi))) / (0.5 / s0 ** 2 - 0.5 / s1 ** 2)
    c = torch.cat([torch.logspace(-2, 2, 41, dtype=torch.float64), torch.linspace(0.95, 1.05, 11, dtype=torch.float64)])
    base = torch.randn(3, len(c), k, dtype=torch.float64)
    base = base / base.norm(dim=-1, keepdim=True)
    w = (base * (c * sq_half).sqrt()[:, None]).requires_grad_(True)
    lp = prior.log_prob(w)
    (auto,) = torch.autograd.grad(lp.sum(), w)
    score, r = prior.score(w)
    # autograd cancels −w/s0² + r·w/s0² (loses (s1/s0)²·eps relative), the closed form does not
    torch.testing.assert_close(score, auto, rtol=1e-8, atol=1e-12)
    ref_lp, ref_r = _direct_log_prob(w.detach(), s1, s0, pi)
    torch.testing.assert_close(lp.detach(), ref_lp, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(r, ref_r, rtol=1e-10, atol=1e-12)
    assert r.min() < 1e-3 and r.max() > 1 - 1e-3 and ((r > 0.05) & (r < 0.95)).any()   # all regimes visited
    torch.testing.assert_close(prior.responsibility(w), r)


def test_spike_slab_is_stable_far_in_both_tails():
    prior = SpikeSlab(2.0 / 800)
    w = torch.cat([torch.zeros(1, 801), torch.full((1, 801), 10.0), torch.full((1, 801), 1e-30)]).float()
    score, r = prior.score(w)
    lp = prior.log_prob(w)
    assert torch.isfinite(score).all() and torch.isfinite(lp).all() and torch.isfinite(r).all()
    assert r.tolist() == [0.0, 1.0, 0.0]
    # slab-dominated: the score is the slab's −w/s1²
    torch.testing.assert_close(score[1], -w[1] / prior.slab_var)




def test_spike_slab_component_costs_and_op_constants():
    """nll_slab/nll_spike are −log N(w; 0, σ²I) (scipy), and log_var1/log_var0 are what scale_mixture_prior takes."""
    import scipy.stats as ss
    prior = SpikeSlab(0.09, spike_ratio=0.2, pi=0.3)
    w = torch.randn(3, 5, dtype=torch.float64)
    s1, s0 = 0.3, 0.06
    ref1 = -ss.norm(0, s1).logpdf(w.numpy()).sum(-1)
    ref0 = -ss.norm(0, s0).logpdf(w.numpy()).sum(-1)
    np.testing.assert_allclose(prior.nll_slab(w).numpy(), ref1, rtol=1e-12)
    np.testing.assert_allclose(prior.nll_spike(w).numpy(), ref0, rtol=1e-12)
    assert prior.log_var1 == pytest.approx(2 * math.log(s1), rel=1e-14)
    assert prior.log_var0 == pytest.approx(2 * math.log(s0), rel=1e-14)
    assert prior.spike_var == pytest.approx(s0 ** 2, rel=1e-14)
    # the mixture's log density and the two components agree: log p = logaddexp(log π − c1, log(1 − π) − c0)
    torch.testing.assert_close(prior.log_prob(w), torch.logaddexp(math.log(0.3) - prior.nll_slab(w),
                                                                 math.log(0.7) - prior.nll_spike(w)))


@pytest.mark.parametrize("kwargs, name", [({"slab_var": 0.0}, "slab_var"), ({"slab_var": float("nan")}, "slab_var"),
                                          ({"slab_var": 1.0, "spike_ratio": 1.0}, "spike_ratio"),
                                          ({"slab_var": 1.0, "spike_ratio": 0.0}, "spike_ratio"),
                                          ({"slab_var": 1.0, "pi": 1.0}, "pi"), ({"slab_var": True}, "slab_var")])
def test_spike_slab_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SpikeSlab(**kwargs)
