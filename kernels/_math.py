"""Triton device functions for log-space special functions (the twins of ``fastbayes/reference/special.py``).

Everything here is built from primitives that also run in the Triton interpreter (``tl.exp``, ``tl.log``,
``tl.sqrt``, ``tl.floor``, ``tl.abs``, ``tl.where``): libdevice would break the CPU test path, and
``tl.math`` has no ``log1p``/``expm1``/``erfc``.  Functions are dtype-generic: Python float literals take
the dtype of the tensor they meet, so the same code runs in float32 and float64.  ``log_ndtr`` and
``log_diff_ndtr`` are meant for float64 (the per-unit statistics); ``ndtri_log`` is used in both.

Clamps are written with ``tl.where`` rather than ``tl.minimum``/``tl.maximum`` so that NaN propagates
exactly as ``torch.clamp`` does in the reference.

Module-level constants must be ``tl.constexpr(...)`` objects (the compiler refuses other globals), and in
the interpreter such an object cannot be the left operand of arithmetic with a tensor: write ``x * C``,
never ``C * x`` (same for the constants of gate_stats.py).
"""
import triton
import triton.language as tl

# 1/sqrt(2) as the double that torch's calc_log_ndtr multiplies by (c10::frac_sqrt_2): using the same
# rounded t = x/sqrt(2) keeps the upper tail within a few ulp of torch.special.log_ndtr; the rounding of t
# alone moves erfc(t) by ~2t²·2⁻⁵³ relative, i.e. ~1e-13 near x = 37.
SQRT1_2 = tl.constexpr(0.7071067811865476)
INV_SQRT_PI = tl.constexpr(0.5641895835477563)
LN2 = tl.constexpr(0.6931471805599453)
LOG_2PI = tl.constexpr(1.8378770664093453)
NDTRI_ASYMPTOTIC_R = tl.constexpr(26.0)


@triton.jit
def _horner(x, c0: tl.constexpr, c1: tl.constexpr, c2: tl.constexpr, c3: tl.constexpr, c4: tl.constexpr,
            c5: tl.constexpr, c6: tl.constexpr, c7: tl.constexpr):
    """c0 + c1 x + ... + c7 x^7, in the same Horner order as reference.special._poly."""
    acc = c7 * x + c6
    acc = acc * x + c5
    acc = acc * x + c4
    acc = acc * x + c3
    acc = acc * x + c2
    acc = acc * x + c1
    return acc * x + c0


# ------------------------------------------------------------------------------------------------------
# log1p / expm1 / log1m_exp
# ------------------------------------------------------------------------------------------------------

@triton.jit
def log1p(x):
    """log(1 + x) by Kahan's trick: log(u)·x/(u-1) with u = fl(1+x) cancels the rounding of 1 + x."""
    u = 1.0 + x
    d = u - 1.0
    exact = (d == 0.0) | (u == float("inf"))  # |x| below half an ulp of 1, or +inf
    ratio = x / tl.where(exact, 1.0, d)
    return tl.where(exact, x, tl.log(u) * ratio)


@triton.jit
def expm1(x):
    """exp(x) - 1 by Kahan's trick: (u-1)·x/log(u) with u = fl(exp(x))."""
    u = tl.exp(x)
    d = u - 1.0
    lu = tl.log(u)
    tiny = u == 1.0                         # |x| below half an ulp of 1
    special = tiny | (d == -1.0) | (u == float("inf"))  # exp underflowed to 0, or overflowed
    ratio = x / tl.where(special, 1.0, lu)
    return tl.where(tiny, x, tl.where(special, d, d * ratio))


@triton.jit
def log1m_exp(x):
    """log(1 - exp(x)) for x <= 0 (Mächler 2012): expm1 form above -log 2, log1p form below."""
    near0 = x > -LN2
    return tl.where(near0, tl.log(-expm1(tl.where(near0, x, -1.0))), log1p(-tl.exp(x)))


# ------------------------------------------------------------------------------------------------------
# erfc / log_ndtr: W. J. Cody, "Rational Chebyshev approximations for the error function",
# Math. Comp. 23 (1969), with the coefficients of his CALERF routine.
# ------------------------------------------------------------------------------------------------------

@triton.jit
def _erf_small(y):
    """erf(y) for |y| <= 0.46875."""
    z = y * y
    num = (((1.85777706184603153e-1 * z + 3.16112374387056560e0) * z + 1.13864154151050156e2) * z
           + 3.77485237685302021e2) * z + 3.20937758913846947e3
    den = (((z + 2.36012909523441209e1) * z + 2.44024637934444173e2) * z
           + 1.28261652607737228e3) * z + 2.84423683343917062e3
    return y * num / den


@triton.jit
def _erfcx_pos(y):
    """exp(y²)·erfc(y) for y >= 0.46875 (finite for every such y, 0 at +inf); Cody's evaluation order."""
    num = 2.15311535474403846e-8 * y
    den = y
    num = (num + 5.64188496988670089e-1) * y
    den = (den + 1.57449261107098347e1) * y
    num = (num + 8.88314979438837594e0) * y
    den = (den + 1.17693950891312499e2) * y
    num = (num + 6.61191906371416295e1) * y
    den = (den + 5.37181101862009858e2) * y
    num = (num + 2.98635138197400131e2) * y
    den = (den + 1.62138957456669019e3) * y
    num = (num + 8.81952221241769090e2) * y
    den = (den + 3.29079923573345963e3) * y
    num = (num + 1.71204761263407058e3) * y
    den = (den + 4.36261909014324716e3) * y
    num = (num + 2.05107837782607147e3) * y
    den = (den + 3.43936767414372164e3) * y
    mid = (num + 1.23033935479799725e3) / (den + 1.23033935480374942e3)     # 0.46875 < y <= 4
    # y > 4: (1/sqrt(pi) - z·P(z)/Q(z)) / y with z = 1/y²
    yb = tl.where(y > 4.0, y, 4.0)
    z = 1.0 / (yb * yb)
    pn = ((((1.63153871373020978e-2 * z + 3.05326634961232344e-1) * z + 3.60344899949804439e-1) * z
           + 1.25781726111229246e-1) * z + 1.60837851487422766e-2) * z + 6.58749161529837803e-4
    qn = ((((z + 2.56852019228982242e0) * z + 1.87295284992346047e0) * z + 5.27905102951428412e-1) * z
          + 6.05183413124413191e-2) * z + 2.33520497626869185e-3
    big = -(z * pn / qn - INV_SQRT_PI) / yb      # = (1/sqrt(pi) - z·P/Q)/y; tensor first for the interpreter
    return tl.where(y > 4.0, big, mid)


@triton.jit
def _exp_neg_sq(y):
    """exp(-y²) without the ~y²·ulp error of rounding y²: y = m + f with m on a 1/16 grid (m² exact)."""
    m = tl.floor(y * 16.0) / 16.0
    return tl.exp(-m * m) * tl.exp(-(y - m) * (y + m))


@triton.jit
def log_ndtr(x):
    """log Φ(x) for every x; matches torch.special.log_ndtr to ~1e-15 relative in float64.

    Same split as torch (calc_log_ndtr): below x = -1 the lower tail -t² + log(erfcx(-t)/2) never forms
    Φ(x), so it stays finite down to x ≈ -1.9e154; above, Φ(x) = erfc(-t)/2 is taken directly for x < 0
    (no cancellation) and as 1 - erfc(t)/2 through log1p for x >= 0.  One erfcx serves all branches.
    """
    t = x * SQRT1_2
    y = tl.abs(t)
    central = y <= 0.46875
    e = _erfcx_pos(tl.where(central, 1.0, y))
    erfc_y = _exp_neg_sq(tl.where(y < float("inf"), y, 0.0)) * e
    erfc_y = tl.where(central, 1.0 - _erf_small(tl.where(central, y, 0.0)), erfc_y)
    erfc_y = tl.where(y == float("inf"), 0.0, erfc_y)
    # untaken branches get harmless arguments (no log(0) warnings in the interpreter)
    lower = tl.log(0.5 * tl.where(x < -1.0, e, 1.0)) - t * t
    mid = tl.log(0.5 * tl.where((x >= -1.0) & (x < 0.0), erfc_y, 1.0))
    upper = log1p(-0.5 * tl.where(x < 0.0, 0.0, erfc_y))
    return tl.where(x < -1.0, lower, tl.where(x < 0.0, mid, upper))


@triton.jit
def log_diff_ndtr(lo, hi):
    """log(Φ(hi) - Φ(lo)) for lo < hi, mirrored when lo + hi > 0 so both CDFs are the small ones."""
    mirror = (lo + hi) > 0.0
    l_hi = log_ndtr(tl.where(mirror, -lo, hi))
    l_lo = log_ndtr(tl.where(mirror, -hi, lo))
    d = l_lo - l_hi
    return l_hi + log1m_exp(tl.where(d > 0.0, 0.0, d))


# ------------------------------------------------------------------------------------------------------
# ndtri_log: Wichura's AS241 (PPND16) read from log p, + asymptotic tail beyond r = 26
# (exactly the algorithm of reference.special.ndtri_log; coefficients copied from there)
# ------------------------------------------------------------------------------------------------------

@triton.jit
def _ndtri_tail(r):
    """Positive t with -log Φ(-t) = r² (r = sqrt(-log p) of the lower tail)."""
    rs = r - 1.6
    small = (_horner(rs, 1.42343711074968357734e0, 4.63033784615654529590e0, 5.76949722146069140550e0,
                     3.64784832476320460504e0, 1.27045825245236838258e0, 2.41780725177450611770e-1,
                     2.27238449892691845833e-2, 7.74545014278341407640e-4)
             / _horner(rs, 1.0, 2.05319162663775882187e0, 1.67638483018380384940e0,
                       6.89767334985100004550e-1, 1.48103976427480074590e-1, 1.51986665636164571966e-2,
                       5.47593808499534494600e-4, 1.05075007164441684324e-9))
    rm = r - 5.0
    mid = (_horner(rm, 6.65790464350110377720e0, 5.46378491116411436990e0, 1.78482653991729133580e0,
                   2.96560571828504891230e-1, 2.65321895265761230930e-2, 1.24266094738807843860e-3,
                   2.71155556874348757815e-5, 2.01033439929228813265e-7)
           / _horner(rm, 1.0, 5.99832206555887937690e-1, 1.36929880922735805310e-1,
                     1.48753612908506148525e-2, 7.86869131145613259100e-4, 1.84631831751005468180e-5,
                     1.42151175831644588870e-7, 2.04426310338993978564e-15))
    # L = r²; fixed point of t² = 2L - log 2π - 2 log t + 2 log(1 - 1/t²), started at sqrt(2L)
    rb = tl.where(r < NDTRI_ASYMPTOTIC_R, NDTRI_ASYMPTOTIC_R, r)
    big_l = rb * rb
    t = tl.sqrt(2.0 * big_l)
    for _ in tl.static_range(3):
        t = tl.sqrt(2.0 * big_l - LOG_2PI - 2.0 * tl.log(t) + 2.0 * log1p(-1.0 / (t * t)))
    t = tl.where(r > 1e18, r * 1.4142135623730951, t)   # logp < -1e36 or -inf: see reference/special.py
    return tl.where(r <= 5.0, small, tl.where(r <= NDTRI_ASYMPTOTIC_R, mid, t))


@triton.jit
def ndtri_log(logp):
    """Φ⁻¹(exp(logp)) for logp <= 0, in logp's dtype (float32 or float64).

    The lower tail is read from -logp, the upper from -log(-expm1(logp)), so neither p nor 1-p is rounded
    to 0 or 1.  Edge values follow the reference: logp >= 0 gives the finite quantile of the capped tail
    (37.05 in float64, 12.96 in float32) and logp = -inf gives -inf.
    """
    logp = tl.where(logp > 0.0, 0.0, logp)
    p = tl.exp(logp)
    q = p - 0.5
    central = tl.abs(q) <= 0.425
    rr = 0.180625 - q * q
    c_val = q * (_horner(rr, 3.3871328727963666080e0, 1.3314166789178437745e2, 1.9715909503065514427e3,
                         1.3731693765509461125e4, 4.5921953931549871457e4, 6.7265770927008700853e4,
                         3.3430575583588128105e4, 2.5090809287301226727e3)
                 / _horner(rr, 1.0, 4.2313330701600911252e1, 6.8718700749205790830e2,
                           5.3941960214247511077e3, 2.1213794301586595867e4, 3.9307895800092710610e4,
                           2.8729085735721942674e4, 5.2264952788528545610e3))
    upper = q > 0.0
    # the reference keeps logp away from 0 before expm1: -1e-300 in float64, -1e-38 in float32
    # (a float literal takes the dtype of the tensor it meets, so -1e-38 becomes the float32 subnormal)
    if logp.dtype == tl.float64:
        capped = tl.where(logp > -1e-300, -1e-300, logp)
    else:
        capped = tl.where(logp > -1e-38, -1e-38, logp)
    neg_log_tail = tl.where(upper, -tl.log(-expm1(capped)), -logp)
    r = tl.sqrt(tl.where(neg_log_tail < 0.0, 0.0, neg_log_tail))
    t = _ndtri_tail(tl.where(central, 2.0, r))
    return tl.where(central, c_val, tl.where(upper, t, -t))
