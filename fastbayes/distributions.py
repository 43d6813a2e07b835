"""Truncated log-normal and log-uniform distributions of a gate θ, in the torch.distributions style.

Both live on θ = exp(x) with log-space bounds a < b (Python floats; default θ ∈ [e^-20, 1]):

* ``TruncatedLogNormal(loc, scale, a, b)``: x ~ N(loc, scale²) truncated to [a, b] (the SBP/BMRS posterior).
* ``LogUniform(a, b)``: x ~ U(a, b) (their prior).

and, on the k weights w feeding one unit, ``SpikeSlab(slab_var, spike_ratio, pi)``: the two-component Gaussian
scale mixture π·N(0, σ1² I) + (1 − π)·N(0, σ0² I) shared by the Bernoulli gates and DLLP (one parameterisation:
slab variance σ1² = ``slab_var``, ``spike_ratio`` = σ0/σ1).

Every statistic is computed in float64 through ``fastbayes.reference.gate_stats`` (the regime-split
forms that stay exact when loc lies far outside [a, b]) and returned in the dtype of ``loc``.  Sampling is
the inverse CDF: inside it reads ε = Φ⁻¹ from log-space probabilities with the upper-tail mirror; when
loc lies more than 5σ outside [a, b] it solves for the offset y = |x - c| from the near bound c by Newton's
method on  y(s + y/2) + log(g(s+y)/g(s)) = -log(1 - v(1-ρ))  (g = 1/Mills ratio), so samples and their
reparameterisation gradients keep full relative precision in the far tail.

Registered KL divergences (per batch element, closed forms):
``KL(TruncatedLogNormal || LogUniform)`` = log(b_p - a_p) - H(x_q); ``KL(TruncatedLogNormal ||
TruncatedLogNormal)`` and ``KL(LogUniform || LogUniform)``.  Each needs the support of q inside that of p;
otherwise the KL is infinite and a ValueError names the bounds.
"""
from __future__ import annotations

import math
from numbers import Number

import torch
from torch.distributions import Distribution, constraints
from torch.distributions.kl import register_kl
from torch.distributions.utils import broadcast_all

from .reference import gate_stats as gs
from .reference.special import HALF_LOG_2PI, log_ndtr, ndtri_log

__all__ = ["TruncatedLogNormal", "LogUniform", "SpikeSlab"]

NEWTON_STEPS = 6      # tail sampler: quadratic convergence from a start within ~4 %: exact after 4


def _check_bounds(a, b, names=("a", "b")):
    for name, v in zip(names, (a, b)):
        if isinstance(v, torch.Tensor):
            if v.numel() != 1:
                raise ValueError(f"{name} must be a scalar log-space bound, got shape {tuple(v.shape)}")
            v = v.item()
        if not isinstance(v, Number) or isinstance(v, bool) or not math.isfinite(float(v)):
            raise ValueError(f"{name} must be a finite real number, got {v!r}")
    a, b = float(a), float(b)
    if not a < b:
        raise ValueError(f"{names[0]} must be < {names[1]}, got {names[0]}={a}, {names[1]}={b}")
    return a, b


def _check_float(name, v):
    if isinstance(v, torch.Tensor) and not v.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {v.dtype}")


def _log_window(mu, sigma, lo_x, hi_x):
    """LogZ parts of the x-window [lo_x, hi_x] under N(μ, σ²) and its anchor (x-space near bound)."""
    z = gs.log_z_parts((lo_x - mu) / sigma, (hi_x - mu) / sigma, (hi_x - lo_x) / sigma)
    lo_x = torch.as_tensor(lo_x, dtype=torch.float64, device=mu.device)
    hi_x = torch.as_tensor(hi_x, dtype=torch.float64, device=mu.device)
    return z, torch.where(z.flip, hi_x, lo_x)


def _icdf_x(mu, sigma, u, a, b):
    """x = F⁻¹(u) in float64 plus what the backward pass needs (module docstring)."""
    al, be, T = (a - mu) / sigma, (b - mu) / sigma, (b - a) / sigma
    flip = (al + be) < 0
    s = torch.where(flip, -be, al)
    t = s + T
    tail = s > gs.TAIL_S
    # canonical window [s, t] with v = u, or v = 1 - u when mirrored; logs of v and 1 - v straight from u
    log_u, log_1mu = torch.log(u), torch.log1p(-u)
    log_v, log_1mv = torch.where(flip, log_1mu, log_u), torch.where(flip, log_u, log_1mu)
    # inside: Φ(-ε') = (1-v)Φ(-s) + vΦ(-t) in log space, ε' = -Φ⁻¹(.)
    eps_c = -ndtri_log(torch.logaddexp(log_1mv + log_ndtr(-s), log_v + log_ndtr(-t)))
    x_in = torch.where(flip, mu - sigma * eps_c, mu + sigma * eps_c)
    y = torch.zeros_like(x_in)
    p = None
    if bool(tail.any()):
        p = gs.tail_pieces(s, T)
        sc = torch.clamp(s, min=gs.TAIL_S)
        # Φ(-(s+y))/Φ(-s) = 1 - v(1-ρ) = e^{-w}
        w = -torch.logaddexp(log_1mv, log_v + p.log_rho)
        y = 2.0 * w / (sc + torch.sqrt(sc * sc + 2.0 * w))     # root of y(s + y/2) = w (from above)
        for _ in range(NEWTON_STEPS):
            c_e = gs.mills_cf(sc + y)[0]
            f = y * (sc + 0.5 * y) + torch.log1p((y + c_e - p.c_s) / p.g_s) - w
            y = y - f / (sc + y + c_e)
        y = torch.minimum(torch.clamp(y, min=0.0), T)
    x_tail = torch.where(flip, b - sigma * y, a + sigma * y)
    x = torch.clamp(torch.where(tail, x_tail, x_in), a, b)
    return x, (al, be, T, flip, s, tail, eps_c, y, p, log_u, log_1mu)


def _icdf_grads(mu, sigma, u, saved):
    """(∂x/∂μ, ∂x/∂σ, ∂x/∂u) for x = F⁻¹(u) with u held fixed (METHODS §0.3, tail forms of the module doc)."""
    al, be, T, flip, s, tail, eps_c, y, p, log_u, log_1mu = saved
    eps = torch.where(flip, -eps_c, eps_c)
    # inside: implicit differentiation of Φ(ε) = (1-u)Φ(α) + uΦ(β); φ ratios as exp of exponent differences
    ra = torch.exp(log_1mu + 0.5 * (eps - al) * (eps + al))     # (1-u)φ(α)/φ(ε)
    rb = torch.exp(log_u + 0.5 * (eps - be) * (eps + be))       # uφ(β)/φ(ε)
    dmu_in = 1.0 - ra - rb
    dsig_in = eps - al * ra - be * rb
    z = gs.log_z_parts(al, be, T)
    du_in = sigma * torch.exp(gs.log_z_value(z) + 0.5 * eps * eps + HALF_LOG_2PI)
    if p is None:
        return dmu_in, dsig_in, du_in
    # tail, canonical: dy = ∂y/∂s ds + ∂y/∂T dT + ∂y/∂v dv
    sc = torch.clamp(s, min=gs.TAIL_S)
    v = torch.where(flip, torch.exp(log_1mu), u)
    c_e = gs.mills_cf(sc + y)[0]
    r_t = torch.exp(-0.5 * (T - y) * (2.0 * sc + T + y))        # φ(t)/φ(s+y)
    dy_ds = -(y + c_e - p.c_s) / (sc + y + c_e) + v * r_t * p.nu / p.g_t
    dy_dT = v * r_t
    dy_dv = torch.exp(p.log_d + y * (sc + 0.5 * y))               # D·φ(s)/φ(s+y)
    sgn = torch.where(flip, -1.0, 1.0).to(mu)
    dmu_t = -dy_ds
    dsig_t = sgn * (y - sc * dy_ds - T * dy_dT)
    du_t = sigma * dy_dv
    return (torch.where(tail, dmu_t, dmu_in), torch.where(tail, dsig_t, dsig_in),
            torch.where(tail, du_t, du_in))


class _TruncatedLogNormalIcdf(torch.autograd.Function):
    """θ = exp(F⁻¹(u)) with closed-form gradients for loc, scale and u (no autograd through Φ⁻¹)."""

    @staticmethod
    def forward(ctx, loc, scale, u, a, b):
        mu, sigma, uu = loc.double(), scale.double(), u.double()
        x, saved = _icdf_x(mu, sigma, uu, a, b)
        theta = torch.exp(x)
        ctx.save_for_backward(mu, sigma, uu, theta)
        ctx.ab = (a, b)
        ctx.dtypes = (loc.dtype, scale.dtype, u.dtype)
        return theta.to(loc.dtype)

    @staticmethod
    def backward(ctx, grad):
        mu, sigma, uu, theta = ctx.saved_tensors
        a, b = ctx.ab
        _, saved = _icdf_x(mu, sigma, uu, a, b)
        dmu, dsig, du = _icdf_grads(mu, sigma, uu, saved)
        g = grad.double() * theta
        out = [(g * d).to(dt) if need else None
               for need, d, dt in zip(ctx.needs_input_grad[:3], (dmu, dsig, du), ctx.dtypes)]
        return out[0], out[1], out[2], None, None


def _validate_by_default(validate_args):
    """None -> True: these distributions check their arguments unless told not to, whatever torch's global default
    (importing torch._dynamo, i.e. any torch.compile, switches that default off for the whole process)."""
    return True if validate_args is None else validate_args


class TruncatedLogNormal(Distribution):
    """θ = exp(x), x ~ N(loc, scale²) truncated to [a, b] (log-space bounds, Python floats).

    ``mean``, ``variance``, ``stddev``, ``snr`` (= mean/stddev) are moments of θ; ``entropy`` is the
    differential entropy of θ (= entropy of x + E[x]).  ``log_prob``/``cdf`` take θ, ``icdf`` returns θ.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    has_rsample = True

    def __init__(self, loc, scale, a: float = -20.0, b: float = 0.0, validate_args=None):
        _check_float("loc", loc)
        _check_float("scale", scale)
        self.a, self.b = _check_bounds(a, b)
        self.loc, self.scale = broadcast_all(loc, scale)
        batch_shape = torch.Size() if isinstance(loc, Number) and isinstance(scale, Number) else self.loc.size()
        super().__init__(batch_shape, validate_args=_validate_by_default(validate_args))

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(TruncatedLogNormal, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc = self.loc.expand(batch_shape)
        new.scale = self.scale.expand(batch_shape)
        new.a, new.b = self.a, self.b
        super(TruncatedLogNormal, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        return constraints.interval(math.exp(self.a), math.exp(self.b))

    def _out(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.loc.dtype)

    def _moments(self):
        # (log E[θ], Δ² = log(1 + Var/E²)); differentiable by autograd through the float64 forms
        return gs.log1p_inv_snr2(self.loc, self.scale, self.a, self.b)

    @property
    def mean(self):
        return self._out(torch.exp(self._moments()[0]))

    @property
    def variance(self):
        lm1, d2 = self._moments()
        return self._out(torch.exp(2.0 * lm1) * torch.expm1(d2))

    @property
    def stddev(self):
        lm1, d2 = self._moments()
        return self._out(torch.exp(lm1) * torch.sqrt(torch.expm1(d2)))

    @property
    def snr(self):
        return self._out(torch.rsqrt(torch.expm1(self._moments()[1])))

    @property
    def mode(self):
        # density of θ ∝ exp(-(x-μ)²/2σ² - x): its maximum sits at x = μ - σ², clipped to [a, b]
        return self._out(torch.exp(torch.clamp(self.loc.double() - self.scale.double() ** 2, self.a, self.b)))

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        u = torch.rand(shape, dtype=torch.float64, device=self.loc.device)
        return _TruncatedLogNormalIcdf.apply(self.loc.expand(shape), self.scale.expand(shape), u, self.a, self.b)

    def icdf(self, value):
        value = torch.as_tensor(value, device=self.loc.device)
        if self._validate_args and not bool(((value >= 0) & (value <= 1)).all()):
            raise ValueError("value must be a probability in [0, 1]")
        shape = torch.broadcast_shapes(value.shape, self.batch_shape)
        u = value.expand(shape) if value.is_floating_point() else value.double().expand(shape)
        return _TruncatedLogNormalIcdf.apply(self.loc.expand(shape), self.scale.expand(shape), u, self.a, self.b)

    def _x_of(self, value):
        value = torch.as_tensor(value, device=self.loc.device)
        inside = (value >= math.exp(self.a)) & (value <= math.exp(self.b))
        x = torch.clamp(torch.log(value.double()), self.a, self.b)
        return x, inside

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        x, inside = self._x_of(value)
        mu, sigma = self.loc.double(), self.scale.double()
        z, c = _log_window(mu, sigma, self.a, self.b)
        # tail: -(x-μ)²/2σ² + s²/2 = -(x - c)(x + c - 2μ)/2σ² with c the anchor bound
        quad = torch.where(z.tail, (x - c) * (x + c - 2.0 * mu), (x - mu) ** 2) / (2.0 * sigma * sigma)
        lp = -quad - torch.log(sigma) - z.L - x - HALF_LOG_2PI * (~z.tail).to(torch.float64)
        lp = torch.where(inside, lp, torch.full_like(lp, -math.inf))
        return self._out(lp)

    def cdf(self, value):
        if self._validate_args:
            self._validate_sample(value)
        x, _ = self._x_of(value)
        mu, sigma = self.loc.double(), self.scale.double()
        z1, c1 = _log_window(mu, sigma, self.a, x)
        z0, c0 = _log_window(mu, sigma, self.a, self.b)
        return self._out(torch.exp(torch.clamp(gs.log_z_diff(z1, c1, z0, c0, mu, sigma), max=0.0)))

    def entropy(self):
        return _Entropy.apply(self.loc, self.scale, self.a, self.b)


# xcoth(x) - 1 = Σ 2^{2n} B_{2n} x^{2n}/(2n)!, n = 1..7 (used for x < 0.25, where the direct form cancels)
_XCOTH = (1.0 / 3.0, -1.0 / 45.0, 2.0 / 945.0, -1.0 / 4725.0, 2.0 / 93555.0, -1382.0 / 638512875.0,
          4.0 / 18243225.0)


def _xcoth_m1(h: float) -> float:
    if h < 0.25:
        h2 = h * h
        return sum(c * h2 ** (n + 1) for n, c in enumerate(_XCOTH))
    return h / math.tanh(h) - 1.0


class LogUniform(Distribution):
    """θ = exp(x), x ~ U(a, b) (log-space bounds, Python floats): the SBP/BMRS prior LogU[e^a, e^b]."""

    arg_constraints = {}
    has_rsample = True

    def __init__(self, a: float = -20.0, b: float = 0.0, validate_args=None):
        self.a, self.b = _check_bounds(a, b)
        super().__init__(torch.Size(), validate_args=_validate_by_default(validate_args))

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(LogUniform, _instance)
        new.a, new.b = self.a, self.b
        super(LogUniform, new).__init__(torch.Size(batch_shape), validate_args=False)
        new._validate_args = self._validate_args
        return new

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        return constraints.interval(math.exp(self.a), math.exp(self.b))

    def _full(self, v: float) -> torch.Tensor:
        return torch.full(self.batch_shape, v, dtype=torch.get_default_dtype())

    def _inv_snr2(self) -> float:
        # Var/E² = (d/2)·coth(d/2) - 1 with d = b - a
        return _xcoth_m1(0.5 * (self.b - self.a))

    def _mean(self) -> float:
        d = self.b - self.a
        return math.exp(self.b) * -math.expm1(-d) / d

    @property
    def mean(self):
        return self._full(self._mean())

    @property
    def variance(self):
        return self._full(self._mean() ** 2 * self._inv_snr2())

    @property
    def stddev(self):
        return self._full(self._mean() * math.sqrt(self._inv_snr2()))

    @property
    def snr(self):
        return self._full(1.0 / math.sqrt(self._inv_snr2()))

    @property
    def mode(self):
        return self._full(math.exp(self.a))

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        u = torch.rand(shape, dtype=torch.float64)
        return torch.exp(self.a + u * (self.b - self.a)).to(torch.get_default_dtype())

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        value = torch.as_tensor(value)
        inside = (value >= math.exp(self.a)) & (value <= math.exp(self.b))
        lp = -math.log(self.b - self.a) - torch.log(value.double())
        return torch.where(inside, lp, torch.full_like(lp, -math.inf)).to(
            value.dtype if value.is_floating_point() else torch.get_default_dtype())

    def cdf(self, value):
        if self._validate_args:
            self._validate_sample(value)
        value = torch.as_tensor(value)
        c = torch.clamp((torch.log(value.double()) - self.a) / (self.b - self.a), 0.0, 1.0)
        return c.to(value.dtype if value.is_floating_point() else torch.get_default_dtype())

    def icdf(self, value):
        value = torch.as_tensor(value)
        if self._validate_args and not bool(((value >= 0) & (value <= 1)).all()):
            raise ValueError("value must be a probability in [0, 1]")
        out = torch.exp(self.a + value.double() * (self.b - self.a))
        return out.to(value.dtype if value.is_floating_point() else torch.get_default_dtype())

    def entropy(self):
        return self._full(math.log(self.b - self.a) + 0.5 * (self.a + self.b))


def _check_support(q, p):
    if q.a < p.a or q.b > p.b:
        raise ValueError(f"KL(q || p) is infinite: the bounds of q [{q.a}, {q.b}] must lie inside "
                         f"the bounds of p [{p.a}, {p.b}]")


class _Pieces:
    """Float64 statistics of x ~ TN(μ, σ²; [a, b]) shared by the KL and entropy closed forms.

    kl: KL to U[a, b]; dkl_mu, dkl_ls: its gradients; cov = Cov(ε, ε²) = -2σ·∂KL/∂μ;
    var_eps2 = Var(ε²) = -2·∂KL/∂log σ; var_x; E[x] = anchor + off; ref = anchor bound in a tail, else μ.
    """

    def __init__(self, mu, sigma, a, b):
        self.mu, self.sigma = mu, sigma
        r = gs._kl_parts(mu, sigma, a, b)
        self.kl, self.dkl_mu, self.dkl_ls = r.kl, r.dkl_mu, r.dkl_ls
        self.cov = -2.0 * sigma * r.dkl_mu
        self.var_eps2 = -2.0 * r.dkl_ls
        self.z, _ = _log_window(mu, sigma, a, b)
        self.anchor, self.off, self.var_x = gs.x_mean_var(mu, sigma, a, b)

    def centred(self, ref, m):
        """(E[x] - ref, E[(x-m)²]/2 - (ref-m)²/2) with ref a reference point (exactly, no (ref-m)² formed)."""
        d = (self.anchor - ref) + self.off
        return d, (ref - m) * d + 0.5 * (self.var_x + d * d)


class _KLToLogUniform(torch.autograd.Function):
    @staticmethod
    def forward(ctx, loc, scale, a, b, log_ratio):
        mu, sigma = loc.double(), scale.double()
        r = gs._kl_parts(mu, sigma, a, b)
        ctx.save_for_backward(r.dkl_mu, r.dkl_ls / sigma)
        ctx.dtypes = (loc.dtype, scale.dtype)
        return (r.kl + log_ratio).to(loc.dtype)

    @staticmethod
    def backward(ctx, grad):
        dmu, dsig = ctx.saved_tensors
        g = grad.double()
        return (g * dmu).to(ctx.dtypes[0]), (g * dsig).to(ctx.dtypes[1]), None, None, None


class _Entropy(torch.autograd.Function):
    """H(θ) = log(b-a) - KL(q || U[a,b]) + E[x];  ∂E[x]/∂μ = Var ε,  ∂E[x]/∂σ = Cov(ε, ε²)."""

    @staticmethod
    def forward(ctx, loc, scale, a, b):
        mu, sigma = loc.double(), scale.double()
        q = _Pieces(mu, sigma, a, b)
        var_eps = q.var_x / (sigma * sigma)
        ctx.save_for_backward(-q.dkl_mu + var_eps, -q.dkl_ls / sigma + q.cov)
        ctx.dtypes = (loc.dtype, scale.dtype)
        return (math.log(b - a) - q.kl + q.anchor + q.off).to(loc.dtype)

    @staticmethod
    def backward(ctx, grad):
        dmu, dsig = ctx.saved_tensors
        g = grad.double()
        return (g * dmu).to(ctx.dtypes[0]), (g * dsig).to(ctx.dtypes[1]), None, None


class _KLTruncatedLogNormal(torch.autograd.Function):
    """KL(q || p) = log(σp/σq) + log Zp - log Zq + E_q[(x-μp)²]/2σp² - E_q[(x-μq)²]/2σq².

    Each log Z is split at its anchor (``log_z_parts``); with r the anchor bound (tail) or the mean,
    E[(x-μ)²]/2σ² - [tail]·s²/2 = [(r-μ)·d + (V + d²)/2]/σ²,  d = E[x] - r,  so no s² is ever formed.
    Gradients: ∂/∂μq = -Cov/2σq + [σq·Cov + 2(μq-μp)·Var ε]/2σp²,
    ∂/∂σq = ∂KL_U/∂σq + [σq·Var(ε²) + 2(μq-μp)·Cov]/2σp²  (Cov = Cov_q(ε, ε²), KL_U = KL(q || U[a, b])),
    ∂/∂μp = (E_p[x] - E_q[x])/σp²,  ∂/∂σp = (E_p[(x-μp)²] - E_q[(x-μp)²])/σp³.
    """

    @staticmethod
    def forward(ctx, mq, sq, mp, sp, ab_q, ab_p):
        dts = (mq.dtype, sq.dtype, mp.dtype, sp.dtype)
        mq, sq, mp, sp = mq.double(), sq.double(), mp.double(), sp.double()
        q = _Pieces(mq, sq, *ab_q)
        p = _Pieces(mp, sp, *ab_p)
        rq = torch.where(q.z.tail, q.anchor, mq)
        rp = torch.where(p.z.tail, p.anchor, mp)
        _, tq = q.centred(rq, mq)
        dqp, tqp = q.centred(rp, mp)
        dpp, tpp = p.centred(rp, mp)
        tails = q.z.tail.to(mq) - p.z.tail.to(mq)
        kl = torch.log(sp / sq) + (p.z.L - q.z.L) + HALF_LOG_2PI * tails + tqp / (sp * sp) - tq / (sq * sq)
        var_eps = q.var_x / (sq * sq)
        dmq = -q.cov / (2.0 * sq) + (sq * q.cov + 2.0 * (mq - mp) * var_eps) / (2.0 * sp * sp)
        dsq = q.dkl_ls / sq + (sq * q.var_eps2 + 2.0 * (mq - mp) * q.cov) / (2.0 * sp * sp)
        dmp = (dpp - dqp) / (sp * sp)
        dsp = 2.0 * (tpp - tqp) / (sp * sp * sp)
        ctx.save_for_backward(dmq, dsq, dmp, dsp)
        ctx.dtypes = dts
        return kl.to(torch.promote_types(dts[0], dts[2]))

    @staticmethod
    def backward(ctx, grad):
        g = grad.double()
        return tuple((g * d).to(dt) for d, dt in zip(ctx.saved_tensors, ctx.dtypes)) + (None, None)


@register_kl(TruncatedLogNormal, LogUniform)
def _kl_tln_logu(q, p):
    _check_support(q, p)
    return _KLToLogUniform.apply(q.loc, q.scale, q.a, q.b, math.log((p.b - p.a) / (q.b - q.a)))


@register_kl(TruncatedLogNormal, TruncatedLogNormal)
def _kl_tln_tln(q, p):
    _check_support(q, p)
    mq, sq, mp, sp = torch.broadcast_tensors(q.loc, q.scale, p.loc, p.scale)   # autograd sums the expands
    return _KLTruncatedLogNormal.apply(mq, sq, mp, sp, (q.a, q.b), (p.a, p.b))


@register_kl(LogUniform, LogUniform)
def _kl_logu_logu(q, p):
    _check_support(q, p)
    return q._full(math.log((p.b - p.a) / (q.b - q.a)))


# ---------------------------------------------------------------------------------------------------------------
# the spike-and-slab prior on a unit's weights

def _finite_float(name: str, v, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, Number) or not math.isfinite(float(v)):
        raise ValueError(f"{name} must be a finite number, got {v!r}")
    v = float(v)
    if (lo is not None and not v > lo) or (hi is not None and not v < hi):
        rng = f"({'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'})"
        raise ValueError(f"{name} must be in {rng}, got {v!r}")
    return v


class SpikeSlab:
    """p(w) = π·N(w; 0, σ1² I) + (1 − π)·N(w; 0, σ0² I) over the last axis of w (the k weights feeding one unit).

    The one spike-and-slab prior of fastbayes: ``fastbayes.nn.BernoulliGate`` (whose ξ plays the component, with
    π its type-II optimum θ, so its loss term uses the component costs ``nll_slab``/``nll_spike``) and
    ``fastbayes.dllp.ParticleEnsemble`` (π fixed, the slab responsibility decides pruning) both build on it.

    Args:
        slab_var: σ1² > 0, the slab variance (both users default to 2/fan_in of the layer, He initialisation).
        spike_ratio: σ0/σ1 in (0, 1): the spike's standard deviation relative to the slab's.
        pi: prior slab probability π in (0, 1) (default ½).

    The responsibility r = P(slab | w) = sigmoid(ℓ), ℓ = log(π/(1 − π)) + ‖w‖²·(1/σ0² − 1/σ1²)/2 − k·log(σ1/σ0), is
    formed from its logit directly: the two component log-densities are each of size ‖w‖²/σ0² and would cancel.
    Per-unit scalars are computed in float64 (one per unit, so it costs nothing).
    """

    def __init__(self, slab_var: float, spike_ratio: float = 0.1, pi: float = 0.5):
        self.slab_var = _finite_float("slab_var", slab_var, lo=0.0)
        self.spike_ratio = _finite_float("spike_ratio", spike_ratio, lo=0.0, hi=1.0)
        self.pi = _finite_float("pi", pi, lo=0.0, hi=1.0)
        self.spike_var = self.slab_var * self.spike_ratio ** 2
        if not self.spike_var > 0:
            raise ValueError(f"slab_var·spike_ratio² underflows to 0 (slab_var={slab_var!r}, "
                             f"spike_ratio={spike_ratio!r})")
        self.log_odds = math.log(self.pi) - math.log1p(-self.pi)

    def __repr__(self) -> str:
        return f"SpikeSlab(slab_var={self.slab_var:.4g}, spike_ratio={self.spike_ratio:g}, pi={self.pi:g})"

    @property
    def log_var1(self) -> float:
        """log σ1² (the slab), the constant ``fastbayes.ops.scale_mixture_prior`` takes."""
        return math.log(self.slab_var)

    @property
    def log_var0(self) -> float:
        """log σ0² = log σ1² + 2·log(spike_ratio) (the spike)."""
        return math.log(self.slab_var) + 2.0 * math.log(self.spike_ratio)

    def _logit(self, sq: torch.Tensor, k: int) -> torch.Tensor:
        return (self.log_odds + 0.5 * sq * (1.0 / self.spike_var - 1.0 / self.slab_var)
                + k * math.log(self.spike_ratio))

    @staticmethod
    def _sq(w: torch.Tensor) -> torch.Tensor:
        return w.pow(2).sum(-1, dtype=torch.float64)

    def nll_slab(self, w: torch.Tensor) -> torch.Tensor:
        """c1 = −log N(w; 0, σ1² I) = ‖w‖²/(2σ1²) + (k/2)·log(2πσ1²) per unit, float64."""
        return 0.5 * self._sq(w) / self.slab_var + 0.5 * w.shape[-1] * (math.log(2 * math.pi) + self.log_var1)

    def nll_spike(self, w: torch.Tensor) -> torch.Tensor:
        """c0 = −log N(w; 0, σ0² I) per unit, float64."""
        return 0.5 * self._sq(w) / self.spike_var + 0.5 * w.shape[-1] * (math.log(2 * math.pi) + self.log_var0)

    def logit(self, w: torch.Tensor) -> torch.Tensor:
        """ℓ = log P(slab | w) − log P(spike | w), float64, shape w.shape[:-1]."""
        return self._logit(self._sq(w), w.shape[-1])

    def log_prob(self, w: torch.Tensor) -> torch.Tensor:
        """log p(w) per unit (differentiable), in w's dtype: the spike term plus softplus of the logit.

        Its autograd gradient cancels −w/σ0² against r·w/σ0², losing (σ1/σ0)²·eps relative; ``score`` does not."""
        k = w.shape[-1]
        sq = self._sq(w)     # one float64 node, so both terms' gradients meet in float64
        log_spike = (math.log1p(-self.pi) - 0.5 * sq / self.spike_var
                     - 0.5 * k * (math.log(2 * math.pi) + self.log_var0))
        a = self._logit(sq, k)
        # softplus as logaddexp(a, 0): F.softplus turns linear above 20, biasing the gradient by e^-20·(σ1/σ0)²
        return (log_spike + torch.logaddexp(a, torch.zeros_like(a))).to(w.dtype)

    def responsibility(self, w: torch.Tensor) -> torch.Tensor:
        """r = P(slab | w) per unit, in w's dtype."""
        return torch.sigmoid(self.logit(w.detach())).to(w.dtype)

    def score(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(∇_w log p(w), r): the closed form −(r/σ1² + (1 − r)/σ0²)·w and the responsibilities."""
        r = torch.sigmoid(self.logit(w.detach()))
        coef = r / self.slab_var + (1.0 - r) / self.spike_var
        return -(coef.to(w.dtype).unsqueeze(-1) * w.detach()), r.to(w.dtype)
