// Log-space special functions and the per-unit statistics of the truncated log-normal gate.
//
// Torch-free and header-only: the same code runs in the OpenMP CPU ops and in the CUDA kernels.  The
// far-tail-exact path (gate_stats_exact, gate_stats_backward_exact and everything they call) mirrors its
// counterpart in fastbayes/reference/{special,gate_stats}.py operation by operation (same formulas, same
// evaluation order, the same regime switches; only the continued fractions stop earlier where they have
// converged and skip a window end whose weight underflows to 0), so the backends agree with the reference to a
// few ulps of its cancellation-free results for μ far outside [a, b] and σ from 1e-6 to 1e3.  gate_stats and
// gate_stats_backward first try the fast path of the ordinary regime (fast_kind, below: a far from q's mass, or
// q relaxed towards the prior with both ends in reach), which has no reference twin and is tested against the
// reference and mpmath (tests/test_gate_stats_fast.py).
#pragma once
#include <cmath>

#include "fastbayes/config.h"

namespace fastbayes {

constexpr double kLog2Pi = 1.8378770664093453;          // log(2π)
constexpr double kHalfLog2Pi = 0.9189385332046727;      // ½·log(2π)
constexpr double kHalfLog2PiE = 1.4189385332046727;     // ½·log(2πe)
constexpr double kLog2 = 0.6931471805599453;
constexpr double kSqrtHalf = 0.7071067811865476;        // 1/√2, as torch's c10::frac_sqrt_2<double>
constexpr double kInvSqrtPi = 0.5641895835477563;       // 1/√π
constexpr double kSqrtHalfPi = 1.2533141373155003;      // √(π/2)
constexpr double kNdtriAsymptoticR = 26.0;              // reference/special.py::NDTRI_ASYMPTOTIC_R

namespace detail {
// Overloads over the C functions: ::exp etc. are __host__ __device__ under nvcc and glibc on the host.
FB_INLINE double exp_(double x) { return ::exp(x); }
FB_INLINE float exp_(float x) { return ::expf(x); }
FB_INLINE double log_(double x) { return ::log(x); }
FB_INLINE float log_(float x) { return ::logf(x); }
FB_INLINE double expm1_(double x) { return ::expm1(x); }
FB_INLINE float expm1_(float x) { return ::expm1f(x); }
FB_INLINE double log1p_(double x) { return ::log1p(x); }
FB_INLINE float log1p_(float x) { return ::log1pf(x); }
FB_INLINE double sqrt_(double x) { return ::sqrt(x); }
FB_INLINE float sqrt_(float x) { return ::sqrtf(x); }

// torch.clamp semantics: NaN stays NaN (std::min/max would depend on argument order).
template <typename T>
FB_INLINE T clamp_max(T x, T hi) { return x > hi ? hi : x; }
template <typename T>
FB_INLINE T clamp_min(T x, T lo) { return x < lo ? lo : x; }

// Horner from the highest coefficient down, exactly as reference/special.py::_poly: one rounding per
// multiply and per add (coefficients rounded to T first, as torch does with a Python scalar).
template <typename T>
FB_INLINE T poly8(T x, double c0, double c1, double c2, double c3, double c4, double c5, double c6,
                  double c7) {
  T acc = static_cast<T>(c7);
  acc = acc * x + static_cast<T>(c6);
  acc = acc * x + static_cast<T>(c5);
  acc = acc * x + static_cast<T>(c4);
  acc = acc * x + static_cast<T>(c3);
  acc = acc * x + static_cast<T>(c2);
  acc = acc * x + static_cast<T>(c1);
  acc = acc * x + static_cast<T>(c0);
  return acc;
}

// erfcx(u) = exp(u²)·erfc(u) for u >= 1/√2.  Below 5: exp of the exactly split u² (Dekker), so the
// product is good to a few ulps.  From 5 on: Laplace's continued fraction, 20 levels (exact to the last
// ulp there; checked against mpmath), which also covers u -> inf without overflow.
FB_INLINE double erfcx_pos(double u) {
  if (u < 5.0) {
    const double hi = u * u;
    const double lo = ::fma(u, u, -hi);
    return ::exp(hi) * ::erfc(u) * (1.0 + lo);
  }
  double f = u;
  for (int k = 20; k >= 1; --k) f = u + (0.5 * k) / f;
  return kInvSqrtPi / f;
}
}  // namespace detail

// log(1 - exp(x)) for x <= 0 (Mächler 2012).
FB_INLINE double log1mexp(double x) {
  return x > -kLog2 ? ::log(-::expm1(x)) : ::log1p(-::exp(x));
}

// log Φ(x), finite for every finite x, with torch.special.log_ndtr's structure: log1p(-erfc(t)/2) above
// x = -1 and log(erfcx(-t)/2) - t² below, t = x/√2.  Keeping the same split and the same rounded t² makes
// differences of two large log Φ values (e.g. log Z shifted by σ) round like the reference's.
FB_HOST_DEVICE FB_DEVICE_NOINLINE inline double log_ndtr(double x) {
  const double t = x * kSqrtHalf;
  if (x < -1.0) return ::log(detail::erfcx_pos(-t) / 2) - t * t;
  return ::log1p(-::erfc(t) / 2);
}

// log(Φ(hi) - Φ(lo)) for lo < hi, mirrored to the side where both CDFs are small.
FB_INLINE double log_diff_ndtr(double lo, double hi) {
  const bool mirror = (lo + hi) > 0;
  const double l_hi = log_ndtr(mirror ? -lo : hi);
  const double l_lo = log_ndtr(mirror ? -hi : lo);
  return l_hi + log1mexp(detail::clamp_max(l_lo - l_hi, 0.0));
}

// Φ⁻¹(exp(logp)): Wichura's AS241 (PPND16) read from log p, plus the Mills-ratio asymptotic beyond
// r = sqrt(-log p) > 26, step for step as reference/special.py::ndtri_log (float or double).
template <typename T>
FB_INLINE T ndtri_log_tail(T r) {
  using detail::log_;
  using detail::log1p_;
  using detail::sqrt_;
  if (r <= static_cast<T>(5.0)) {
    const T x = r - static_cast<T>(1.6);
    return detail::poly8<T>(x, 1.42343711074968357734e0, 4.63033784615654529590e0, 5.76949722146069140550e0,
                            3.64784832476320460504e0, 1.27045825245236838258e0, 2.41780725177450611770e-1,
                            2.27238449892691845833e-2, 7.74545014278341407640e-4) /
           detail::poly8<T>(x, 1.0, 2.05319162663775882187e0, 1.67638483018380384940e0, 6.89767334985100004550e-1,
                            1.48103976427480074590e-1, 1.51986665636164571966e-2, 5.47593808499534494600e-4,
                            1.05075007164441684324e-9);
  }
  if (r <= static_cast<T>(kNdtriAsymptoticR)) {
    const T x = r - static_cast<T>(5.0);
    return detail::poly8<T>(x, 6.65790464350110377720e0, 5.46378491116411436990e0, 1.78482653991729133580e0,
                            2.96560571828504891230e-1, 2.65321895265761230930e-2, 1.24266094738807843860e-3,
                            2.71155556874348757815e-5, 2.01033439929228813265e-7) /
           detail::poly8<T>(x, 1.0, 5.99832206555887937690e-1, 1.36929880922735805310e-1, 1.48753612908506148525e-2,
                            7.86869131145613259100e-4, 1.84631831751005468180e-5, 1.42151175831644588870e-7,
                            2.04426310338993978564e-15);
  }
  // r > 1e18 (log p < -1e36, or -inf): t = √2·r to working precision; the iteration would meet inf - inf
  if (r > static_cast<T>(1e18)) return r * static_cast<T>(1.4142135623730951);
  // L = r², solve t² = 2L - log 2π - 2 log t + 2 log(1 - 1/t²) by three fixed-point steps
  const T rc = detail::clamp_min(r, static_cast<T>(kNdtriAsymptoticR));
  const T big_l = rc * rc;
  T t = sqrt_(static_cast<T>(2.0) * big_l);
  for (int it = 0; it < 3; ++it) {
    t = sqrt_(static_cast<T>(2.0) * big_l - static_cast<T>(kLog2Pi) - static_cast<T>(2.0) * log_(t) +
              static_cast<T>(2.0) * log1p_(static_cast<T>(-1.0) / (t * t)));
  }
  return t;
}

template <typename T>
FB_INLINE T ndtri_log(T logp) {
  using detail::exp_;
  using detail::expm1_;
  using detail::log_;
  using detail::sqrt_;
  logp = detail::clamp_max(logp, static_cast<T>(0));
  const T p = exp_(logp);
  const T q = p - static_cast<T>(0.5);
  if ((q < 0 ? -q : q) <= static_cast<T>(0.425)) {
    const T rr = static_cast<T>(0.180625) - q * q;
    return q *
           detail::poly8<T>(rr, 3.3871328727963666080e0, 1.3314166789178437745e2, 1.9715909503065514427e3,
                            1.3731693765509461125e4, 4.5921953931549871457e4, 6.7265770927008700853e4,
                            3.3430575583588128105e4, 2.5090809287301226727e3) /
           detail::poly8<T>(rr, 1.0, 4.2313330701600911252e1, 6.8718700749205790830e2, 5.3941960214247511077e3,
                            2.1213794301586595867e4, 3.9307895800092710610e4, 2.8729085735721942674e4,
                            5.2264952788528545610e3);
  }
  const bool upper = q > 0;
  // -log(min(p, 1-p)): the lower tail from logp itself, the upper one via expm1 (never forms 1 - p)
  const T tiny = sizeof(T) == sizeof(double) ? static_cast<T>(-1e-300) : static_cast<T>(-1e-38);
  const T neg_log_tail = upper ? -log_(-expm1_(detail::clamp_max(logp, tiny))) : -logp;
  const T r = sqrt_(detail::clamp_min(neg_log_tail, static_cast<T>(0)));
  const T t = ndtri_log_tail<T>(r);
  return upper ? t : -t;
}

// ---------------------------------------------------------------------------------------------------
// Per-unit statistics of q = LogN_[a,b](μ, σ²) against the LogU[a,b] prior (METHODS.md §0.2–§0.5,
// §2.3–§2.4), float64 throughout: a line-by-line port of fastbayes/reference/gate_stats.py (read its
// module docstring for the regimes: interior direct forms, continued-fraction tail forms for s > 5,
// centred quadrature for a nearly uniform q, anchored log-moments, Δ² by quadrature).  The reference
// evaluates every branch of each torch.where and selects; here only the selected branch is evaluated,
// with the same operations in the same order.

constexpr double kTailS = 5.0;      // reference TAIL_S
constexpr int kCfTerms = 32;        // reference CF_TERMS
constexpr double kQuadSigma = 0.1;  // reference QUAD_SIGMA
constexpr double kWideT = 1.0;      // reference WIDE_T

namespace detail {
// reference GJ_NODES / GJ_WEIGHTS (∫_0^1 (1-ξ) f(ξ) dξ) and GL_NODES / GL_WEIGHTS (Gauss-Legendre, positive
// half); switches instead of arrays, which device code could not read from host memory
FB_INLINE double gj_node(int j) {
  return j == 0 ? 0.057104196114517725 : j == 1 ? 0.2768430136381238 : j == 2 ? 0.5835904323689168
                                                                               : 0.8602401356562195;
}
FB_INLINE double gj_weight(int j) {
  return j == 0 ? 0.13550691343148852 : j == 1 ? 0.2034645680102711 : j == 2 ? 0.12984754760823233
                                                                             : 0.031180970950008085;
}
FB_INLINE double gl_node(int j) {
  return j == 0 ? 0.18343464249564978 : j == 1 ? 0.525532409916329 : j == 2 ? 0.7966664774136267
                                                                           : 0.9602898564975362;
}
FB_INLINE double gl_weight(int j) {
  return j == 0 ? 0.36268378337836166 : j == 1 ? 0.3137066458778869 : j == 2 ? 0.22238103445337443
                                                                            : 0.10122853629037706;
}
FB_INLINE double sq(double x) { return x * x; }
}  // namespace detail

// (C1(x), h2(x)) for x >= TAIL_S (smaller x is clamped): C1 = 1/R(x) - x by the Laplace continued fraction.
struct MillsCf {
  double c1, h2;
};
// The CF converges faster the larger x: fewer levels reach the same value to within half an ulp of the
// 200-level one (measured on x in [5, 200]; CF_TERMS = 32 is needed only below x ~ 8.3).
FB_INLINE int cf_levels(double x) {
  return x >= 50.0 ? 8 : x >= 27.0 ? 10 : x >= 19.0 ? 12 : x >= 11.0 ? 16 : x >= 9.0 ? 20 : kCfTerms;
}
FB_HOST_DEVICE FB_DEVICE_NOINLINE inline MillsCf mills_cf(double x) {
  x = detail::clamp_min(x, kTailS);
  double h = 0.0;
  for (int k = cf_levels(x); k > 1; --k) h = 1.0 / (x + static_cast<double>(k + 1) * h);
  return {1.0 / (x + 2.0 * h), h};
}

// mills_cf at N points at once, x[0] the smallest: one depth (x[0]'s, enough for all) and N independent division
// chains interleaved, so the divider pipelines them instead of waiting out each chain's latency.
template <int N>
FB_INLINE void mills_cf_n(const double* x, MillsCf* out) {
  double xs[N], h[N];
  FB_UNROLL
  for (int j = 0; j < N; ++j) {
    xs[j] = detail::clamp_min(x[j], kTailS);
    h[j] = 0.0;
  }
  for (int k = cf_levels(xs[0]); k > 1; --k) {
    const double kk = static_cast<double>(k + 1);
    FB_UNROLL
    for (int j = 0; j < N; ++j) h[j] = 1.0 / (xs[j] + kk * h[j]);
  }
  FB_UNROLL
  for (int j = 0; j < N; ++j) out[j] = {1.0 / (xs[j] + 2.0 * h[j]), h[j]};
}

// Continued-fraction pieces of the window [s, s+T] (reference TailPieces).
struct TailPieces {
  double c_s, h_s, c_t, h_t, g_s, g_t, nu, log_rho, one_m_rho, log_d;
};
FB_HOST_DEVICE FB_DEVICE_NOINLINE inline TailPieces tail_pieces(double s, double T) {
  s = detail::clamp_min(s, kTailS);
  const double t = s + T;
  // Far end beyond exp(-T(s + T/2)) = 0 (T(s+T/2) > 750): ρ and E are exactly 0, and the far end's pieces only
  // enter multiplied by them (or inside log1p(ν/g(s)) next to -T(s+T/2)), so its CF is skipped; g(t) = t
  // keeps those products finite.
  const MillsCf ms = mills_cf(s);
  const MillsCf mt = T * (s + 0.5 * T) > 750.0 ? MillsCf{0.0, 0.0} : mills_cf(t);
  TailPieces p;
  p.c_s = ms.c1;
  p.h_s = ms.h2;
  p.c_t = mt.c1;
  p.h_t = mt.h2;
  p.g_s = s + p.c_s;
  p.g_t = t + p.c_t;
  p.nu = T + (p.c_t - p.c_s);
  p.log_rho = -T * (s + 0.5 * T) - ::log1p(p.nu / p.g_s);
  p.one_m_rho = -::expm1(p.log_rho);
  p.log_d = ::log(p.one_m_rho) - ::log(p.g_s);
  return p;
}

// log(Φ(hi) - Φ(lo)) split as L - [tail]·(s²/2 + ½log 2π); T = hi - lo passed exactly.  `p` is filled
// in a tail only (the reference's values elsewhere are never selected).
struct LogZ {
  bool tail, flip;
  double s, L;
  TailPieces p;
};
FB_HOST_DEVICE FB_DEVICE_NOINLINE inline LogZ log_z_parts(double lo, double hi, double T) {
  LogZ z;
  z.flip = (lo + hi) < 0;
  z.s = z.flip ? -hi : lo;
  z.tail = z.s > kTailS;
  if (z.tail) {
    z.p = tail_pieces(z.s, T);
    z.L = z.p.log_d;
  } else {
    z.p = TailPieces{};
    z.L = log_diff_ndtr(lo, hi);
  }
  return z;
}

FB_INLINE double log_z_value(const LogZ& z) {
  return z.tail ? z.L - 0.5 * z.s * z.s - kHalfLog2Pi : z.L;
}

// Variance of N(0, 1) truncated to [lo, hi], T = hi - lo (reference tn_var).
FB_HOST_DEVICE FB_DEVICE_NOINLINE inline double tn_var(double lo, double hi, double T) {
  const LogZ z = log_z_parts(lo, hi, T);
  if (!z.tail) {
    const double ga = ::exp(-0.5 * lo * lo - kHalfLog2Pi - z.L);
    const double gb = ::exp(-0.5 * hi * hi - kHalfLog2Pi - z.L);
    return 1.0 + lo * ga - hi * gb - detail::sq(ga - gb);
  }
  const TailPieces& p = z.p;
  const double rho = ::exp(p.log_rho);
  const double e = ::exp(-T * (detail::clamp_min(z.s, kTailS) + 0.5 * T));
  const double dlt = rho * p.nu / p.one_m_rho;
  const double v1 = p.c_s * (2.0 * p.h_s - p.c_s);
  const double third = p.g_s * e * (T * T + (p.c_s - p.c_t) * (p.g_s - T)) / (p.one_m_rho * p.g_t);
  return v1 + dlt * (p.c_s - dlt) - third;
}

// log E[θ^k] with the anchors of both windows folded in analytically (reference _log_moment).
FB_INLINE double log_moment(double mu, double sigma, double a, double b, double al, double be, double T,
                            const LogZ& z0, int k) {
  const double kd = static_cast<double>(k);
  const LogZ z1 = log_z_parts(al - kd * sigma, be - kd * sigma, T);
  const bool lo0 = z0.tail && !z0.flip;
  const bool up1 = z1.tail && z1.flip;
  double pre;
  if (lo0 && z1.tail && !z1.flip) {
    pre = kd * a;
  } else if (z0.tail && z0.flip) {
    pre = kd * b;
  } else if (lo0 && up1) {
    pre = kd * b - 0.5 * T * (al + be);
  } else if (lo0 && !z1.tail) {
    pre = kd * a + 0.5 * detail::sq(al - kd * sigma) + kHalfLog2Pi;
  } else if (!z0.tail && up1) {
    pre = kd * b - 0.5 * be * be - kHalfLog2Pi;
  } else {
    pre = kd * mu + 0.5 * kd * kd * sigma * sigma;
  }
  return pre + z1.L - z0.L;
}

// Δ² = log E[θ²] - 2 log E[θ] = log(1 + 1/SNR²); by quadrature of the truncated variance where the
// difference cancels (σ < QUAD_SIGMA·max(1, s)), the 8 nodes summed in the reference's order.
FB_INLINE double delta2(double sigma, double al, double be, double T, const LogZ& z0, double lm1, double lm2) {
  if (!(sigma < kQuadSigma * detail::clamp_min(z0.s, 1.0))) return lm2 - 2.0 * lm1;
  double acc = 0.0;
  for (int j = 0; j < 8; ++j) {
    const double x = detail::gj_node(j & 3);
    const double w = sigma * (j < 4 ? 1.0 - x : 1.0 + x);
    acc += detail::gj_weight(j & 3) * tn_var(al - w, be - w, T);
  }
  return sigma * sigma * acc;
}

// KL to the uniform window and its gradients when q is close to uniform on it (reference _kl_wide).
struct KlGrad {
  double kl, dmu, dls;
};
FB_HOST_DEVICE FB_DEVICE_NOINLINE inline KlGrad kl_wide(double al, double be, double T, double sigma) {
  const double m = 0.5 * (al + be);
  double tau[8], w[8], g[8], e[8];
  for (int j = 0; j < 8; ++j) {  // nodes +x0, -x0, +x1, -x1, ...
    const double sgn = (j & 1) ? -1.0 : 1.0;
    tau[j] = sgn * detail::gl_node(j >> 1) * 0.5 * T;
    w[j] = 0.5 * detail::gl_weight(j >> 1);
    g[j] = -(m * tau[j] + 0.5 * (tau[j] * tau[j] - T * T / 12.0));
    e[j] = ::expm1(g[j]);
  }
  double ee = 0.0, eg = 0.0;
  for (int j = 0; j < 8; ++j) ee += w[j] * e[j];                   // E_U[e^g] - 1
  for (int j = 0; j < 8; ++j) eg += w[j] * g[j] * (1.0 + e[j]);    // E_U[g e^g]
  KlGrad r;
  r.kl = eg / (1.0 + ee) - ::log1p(ee);
  double p[8], h[8], m1 = 0.0, m2 = 0.0;
  for (int j = 0; j < 8; ++j) {
    p[j] = w[j] * (1.0 + e[j]) / (1.0 + ee);
    h[j] = tau[j] * (2.0 * m + tau[j]);  // ε² - m²
  }
  for (int j = 0; j < 8; ++j) m1 += p[j] * tau[j];
  for (int j = 0; j < 8; ++j) m2 += p[j] * h[j];
  double cov = 0.0, var2 = 0.0;
  for (int j = 0; j < 8; ++j) cov += p[j] * (tau[j] - m1) * (h[j] - m2);
  for (int j = 0; j < 8; ++j) var2 += p[j] * detail::sq(h[j] - m2);
  r.dmu = -cov / (2.0 * sigma);
  r.dls = -0.5 * var2;
  return r;
}

// KL and its gradients when [α, β] is not in a tail (log Z = L): kl_wide for a nearly uniform q, else
// METHODS §0.2 / §0.4 direct forms.
FB_INLINE KlGrad kl_interior(double al, double be, double T, double sigma, double L, double log_bma) {
  if (T < kWideT && ::fabs(al + be) * T < 2.0 * kWideT) return kl_wide(al, be, T, sigma);
  const double pa = ::exp(-0.5 * al * al - kHalfLog2Pi - L);
  const double pb = ::exp(-0.5 * be * be - kHalfLog2Pi - L);
  const double nz = al * pa - be * pb;
  KlGrad r;
  r.kl = log_bma - ::log(sigma) - L - kHalfLog2PiE - 0.5 * nz;
  const double dz_mu = (pa - pb) / sigma;                                  // (∂Z/∂μ)/Z
  const double dn_mu = (pb * (1 - be * be) - pa * (1 - al * al)) / sigma;  // (∂N/∂μ)/Z
  r.dmu = -dz_mu - 0.5 * (dn_mu - nz * dz_mu);
  const double dn_ls = be * pb * (1 - be * be) - al * pa * (1 - al * al);  // σ(∂N/∂σ)/Z
  r.dls = -1.0 - nz - 0.5 * (dn_ls - nz * nz);
  return r;
}

// KL and its gradients in every regime (reference _kl_parts; σ = exp(log σ) already taken).
FB_HOST_DEVICE FB_DEVICE_NOINLINE inline KlGrad kl_parts(double mu, double sigma, double a, double b) {
  const double al = (a - mu) / sigma, be = (b - mu) / sigma, T = (b - a) / sigma;
  const LogZ z = log_z_parts(al, be, T);
  const double log_bma = ::log(b - a);
  KlGrad r;
  if (z.tail) {  // continued-fraction forms
    const TailPieces& p = z.p;
    const double s = detail::clamp_min(z.s, kTailS);
    const double t = s + T;
    const double x2 = T * (s + t);
    const double e = ::exp(-0.5 * x2);
    const double rho = ::exp(p.log_rho);
    const double q_s = 2.0 * p.c_s * p.h_s, q_t = 2.0 * p.c_t * p.h_t;
    const double dq = q_s - rho * q_t;
    const double g = (dq + rho * x2) / p.one_m_rho;
    r.kl = log_bma - ::log(sigma) - 1.0 - p.log_d + 0.5 * g;
    const double amp = p.g_s / p.one_m_rho;  // φ(s)/Z
    const double h_mu = ((1.0 - e) * dq - e * (p.nu / p.g_t) * x2) / p.one_m_rho;
    const double h_sig = ((s - t * e) * dq - e * x2 * (x2 + q_s - q_t) / p.g_t) / p.one_m_rho;
    const double sgn = z.flip ? -1.0 : 1.0;
    r.dmu = -sgn * amp * h_mu / (2.0 * sigma);
    r.dls = -1.0 - 0.5 * amp * h_sig;
    return r;
  }
  return kl_interior(al, be, T, sigma, z.L, log_bma);
}

struct GateStats {
  double kl, mean, snr;
};

// The far-tail-exact path: every regime of the reference.
FB_INLINE GateStats gate_stats_exact(double mu, double log_sigma, double a, double b) {
  const double sigma = ::exp(log_sigma);
  GateStats st;
  st.kl = kl_parts(mu, sigma, a, b).kl;
  const double al = (a - mu) / sigma, be = (b - mu) / sigma, T = (b - a) / sigma;
  const LogZ z0 = log_z_parts(al, be, T);
  const double lm1 = log_moment(mu, sigma, a, b, al, be, T, z0, 1);
  const double lm2 = log_moment(mu, sigma, a, b, al, be, T, z0, 2);
  const double d2 = delta2(sigma, al, be, T, z0, lm1, lm2);
  st.mean = ::exp(lm1);
  st.snr = 1.0 / ::sqrt(::expm1(detail::clamp_min(d2, 0.0)));
  return st;
}

struct GateGrad {
  double dmu, dlog_sigma;
};

FB_INLINE GateGrad gate_stats_backward_exact(double grad_kl, double mu, double log_sigma, double a, double b) {
  const KlGrad r = kl_parts(mu, ::exp(log_sigma), a, b);
  return {grad_kl * r.dmu, grad_kl * r.dls};
}

// ---------------------------------------------------------------------------------------------------
// Fast path: the ordinary regime, where the lower end a is far from the mass of q (α² - min(β, 0)² >= FAR_END²,
// α < 0: every window [α-w, β-w], 0 <= w <= 2σ, then has Φ(α-w)/Φ(β-w) <= e^-50, and a tail factor
// x²·exp(-x²/2) <= 2e-18 for x² = α² - β² >= 100), so q is N(μ, σ²) truncated above at b only and everything is a
// function of u = β (and σ) through ℓ(x) = log Φ(x) and λ(x) = ℓ'(x) = φ(x)/Φ(x).  Relative to the exact forms
// the neglected terms are below 1e-17; this is where training keeps the gates (init μ = 0 = b, σ = e^-5 ≪ b - a).
// Three kinds, each a few transcendentals instead of the exact path's dozens:
//   deep (β >= FAR_END + 2σ): Φ(β-w) = 1 as well, the log-normal limit: log Z = 0,
//        KL = log(b-a) - log σ - ½log(2πe) - (αφ(α) - βφ(β))/2,  E[θ] = exp(μ + σ²/2),  Δ² = σ²;
//   near (-TAIL_S <= β < FAR_END + 2σ): the interior forms with Z = Φ(β), log E[θ] = μ + σ²/2 + ℓ(β-σ) - ℓ(β),
//        Δ² = σ² + ℓ(β-2σ) - 2ℓ(β-σ) + ℓ(β) directly where the reference does so (σ >= QUAD_SIGMA·max(1, -β)),
//        else for σ < TAYLOR_SIGMA its even Taylor series about m = β - σ (and for -5 <= β < -1 with
//        0.1 <= σ < -β/10, delta2's quadrature with v = 1 - λ(x + λ) per node):
//        Δ² = σ²·[1 + ℓ''(m)] + 2·Σ_{k=2..5} ℓ^(2k)(m)·σ^2k/(2k)!, the ℓ^(n) polynomials in (x, λ) from
//        λ' = -λ(x + λ) (radius of convergence >= 3.4, the zeros of Φ nearest the real axis, so the next term is
//        < 1e-15 relative at σ = 0.1; the polynomials cancel at most ~1e-10 relative at x = -5.2 on terms that
//        weigh < 1e-6 there);
//   tail (β < -TAIL_S): the continued-fraction forms with ρ = 0, s = -β, g(x) = x + C1(x):
//        log E[θ] = b - log(g(s+σ)/g(s)),  Δ² = -log(g(s+2σ)g(s)/g(s+σ)²) with the numerator expanded in
//        d_k = C1(s+kσ) - C1(s) (error ~4e-16/σ² relative) for σ >= TAIL_SIGMA_MIN, below it delta2's quadrature
//        with the one-CF variance C1(2h2 - C1) per node.
// A fourth kind, interior, serves q whose window [α, β] is not in a tail while both ends may matter (the posteriors
// that relaxed towards the prior, σ ~ (b - a)/10 .. 3(b - a), as every unit BMRS prunes does under the mean KL):
//   interior (s0 <= TAIL_S, T >= INTERIOR_MIN_T, σ >= QUAD_SIGMA·max(1, s0), s0 the window's distance into its
//        nearer tail): the exact
//        path's own forms (KL from kl_interior, log E[θ^k] from log_moment's anchors, Δ² = log E[θ²] - 2 log E[θ]
//        directly), with two substitutions that leave a few ulps: log Z of a window not in a tail as the log of a
//        difference of two erfc (log_diff_ndtr_interior), and a shifted
//        window [α - kσ, β - kσ] in the lower tail (s = kσ - β > TAIL_S) summed from Mills ratios as
//        log Z = log(R(s) - e^-T(s+T/2)·R(s+T)) - s²/2 - ½log 2π instead of the continued-fraction pieces (it
//        serves only T(s + T/2) >= 1, where that difference loses at most 1.6x in relative accuracy).
// Everything else (a near the mass with a narrow q, σ ~ b - a against a tail window, the upper-tail mirror) takes
// the exact path.
constexpr double kFarEnd = 10.0;
constexpr double kTaylorSigma = 0.1;
constexpr double kTailSigmaMin = 0.02;
constexpr double kInteriorMinTail = 1.0;  // T(s + T/2) of a shifted tail window, at least
// T = (b - a)/σ, at least: log Z of a window of width T costs ~2.5ε/T in relative accuracy in every form that
// subtracts two CDFs (the exact path's included), so narrower windows stay on the exact path, whose twin is the
// reference, rather than differ from it by more than the tests' 1e-13
constexpr double kInteriorMinT = 0.1;

enum FastKind : int { kFastNone = 0, kFastDeep = 1, kFastNear = 2, kFastTail = 3, kFastInterior = 4 };

namespace detail {
// A shifted window [α - kσ, β - kσ] of the interior kind: in the lower tail, it needs T(s + T/2) >= kInteriorMinTail.
FB_INLINE bool interior_window_ok(double be, double sigma, double T, double k) {
  const double s = k * sigma - be;
  return !(s > kTailS) || T * (s + 0.5 * T) >= kInteriorMinTail;
}
}  // namespace detail

// Which fast kind serves (α, β, σ); T = (b - a)/σ; kFastNone (the exact path) for NaN and infinities too.
FB_INLINE int fast_kind(double al, double be, double sigma, double T) {
  if (!(sigma > 0.0 && sigma < 1e300)) return kFastNone;
  const double bm = be < 0.0 ? be : 0.0;
  if (al < 0.0 && al * al - bm * bm >= kFarEnd * kFarEnd) {
    if (be >= kFarEnd + 2.0 * sigma) return kFastDeep;
    if (be >= -kTailS) return kFastNear;
    return kFastTail;
  }
  const double s0 = (al + be) < 0 ? -be : al;
  if (s0 <= kTailS && T >= kInteriorMinT && sigma >= kQuadSigma * detail::clamp_min(s0, 1.0) &&
      detail::interior_window_ok(be, sigma, T, 1.0) && detail::interior_window_ok(be, sigma, T, 2.0)) {
    return kFastInterior;
  }
  return kFastNone;
}

namespace detail {
// φ(x)/Z from log Z.  The far end's φ(α)/Z is kept although it is < 1e-21 next to 1/σ: at the window centre
// ∂KL/∂μ is the difference of the two ends' terms and must come out 0 as in the exact path.
FB_INLINE double phi_over_z(double x, double log_z) {
  const double e = -0.5 * x * x - kHalfLog2Pi - log_z;
  return e < -746.0 ? 0.0 : ::exp(e);  // exp underflows to 0 below -745.2 anyway; skips the call
}
// λ(x) = φ(x)/Φ(x) to a few ulp: 1/(√(π/2)·erfcx(-x/√2)) below x = -1, φ(x)/(erfc(-x/√2)/2) above
FB_INLINE double inv_mills(double x) {
  if (x < -1.0) return 1.0 / (kSqrtHalfPi * erfcx_pos(-x * kSqrtHalf));
  return ::exp(-0.5 * x * x - kHalfLog2Pi) / (0.5 * ::erfc(-x * kSqrtHalf));
}
// φ(x): 0 without an exp for the far end of most units (σ ≪ b - a puts it hundreds of σ away)
FB_INLINE double phi_or_zero(double x) { return phi_over_z(x, 0.0); }

// KL and gradients by kl_parts' interior forms, given pa = φ(α)/Z, pb = φ(β)/Z and log Z.
FB_INLINE KlGrad kl_direct(double al, double be, double pa, double pb, double log_z, double sigma, double log_sigma,
                           double log_bma) {
  const double nz = al * pa - be * pb;
  KlGrad r;
  r.kl = log_bma - log_sigma - log_z - kHalfLog2PiE - 0.5 * nz;
  const double dz_mu = (pa - pb) / sigma;
  const double dn_mu = (pb * (1 - be * be) - pa * (1 - al * al)) / sigma;
  r.dmu = -dz_mu - 0.5 * (dn_mu - nz * dz_mu);
  const double dn_ls = be * pb * (1 - be * be) - al * pa * (1 - al * al);
  r.dls = -1.0 - nz - 0.5 * (dn_ls - nz * nz);
  return r;
}

// Σ_{k=2..5} 2·ℓ^(2k)(x)·s2^(k-1)/(2k)!, L = λ(x), s2 = σ²: the Taylor terms of Δ²/σ² beyond 1 + ℓ''(x)
// (polynomials generated by symbolic differentiation, Horner in L over Horner in x).
FB_INLINE double delta2_taylor_terms(double x, double L, double s2) {
  const double p4 = ((((-6.0 * L + -12.0 * x) * L + (-7.0 * x * x + 4.0)) * L + (((-x) * x + 3.0) * x)) * L);
  const double p6 = ((((((-120.0 * L + -360.0 * x) * L + (-390.0 * x * x + 120.0)) * L + ((-180.0 * x * x + 210.0) * x)) * L + (((-31.0 * x * x + 101.0) * x) * x - 28.0)) * L + (((((-x) * x + 10.0) * x) * x - 15.0) * x)) * L);
  const double p8 = ((((((((-5040.0 * L + -20160.0 * x) * L + (-31920.0 * x * x + 6720.0)) * L + ((-25200.0 * x * x + 18480.0) * x)) * L + (((-10206.0 * x * x + 17976.0) * x) * x - 2688.0)) * L + ((((-1932.0 * x * x + 7196.0) * x) * x - 4088.0) * x)) * L + (((((-127.0 * x * x + 1002.0) * x) * x - 1599.0) * x) * x + 288.0)) * L + (((((((-x) * x + 21.0) * x) * x - 105.0) * x) * x + 105.0) * x)) * L);
  const double p10 = ((((((((((-362880.0 * L + -1814400.0 * x) * L + (-3780000.0 * x * x + 604800.0)) * L + ((-4233600.0 * x * x + 2268000.0) * x)) * L + (((-2739240.0 * x * x + 3331440.0) * x) * x - 342720.0)) * L + ((((-1020600.0 * x * x + 2404080.0) * x) * x - 861840.0) * x)) * L + (((((-204630.0 * x * x + 870120.0) * x) * x - 749970.0) * x) * x + 72960.0)) * L + ((((((-18660.0 * x * x + 141630.0) * x) * x - 258780.0) * x) * x + 95850.0) * x)) * L + (((((((-511.0 * x * x + 7387.0) * x) * x - 28767.0) * x) * x + 30111.0) * x) * x - 3984.0)) * L + (((((((((-x) * x + 36.0) * x) * x - 378.0) * x) * x + 1260.0) * x) * x - 945.0) * x)) * L);
  return s2 * (p4 / 12.0 + s2 * (p6 / 360.0 + s2 * (p8 / 20160.0 + s2 * (p10 / 1814400.0))));
}

// The b-tail pieces at s = -β (ρ = 0): KL and gradients (kl_parts' tail forms with ρ = E = 0).
FB_INLINE KlGrad kl_tail_one_sided(double s, const MillsCf& c, double sigma, double log_sigma, double log_bma,
                                   bool with_kl) {
  const double g = s + c.c1;
  const double q = 2.0 * c.c1 * c.h2;  // Q(s) = 1 - s·C1(s)
  KlGrad r;
  r.kl = with_kl ? log_bma - log_sigma - 1.0 + ::log(g) + 0.5 * q : 0.0;  // the backward skips the log
  r.dmu = g * q / (2.0 * sigma);
  r.dls = -1.0 - 0.5 * g * (s * q);
  return r;
}

// erfcx(u) for u >= 1/√2 without erfcx_pos's 20 serial divisions from u = 5 on: the exact split u² and erfc up to
// u = 13 (erfc(13) ~ 1e-75, far from underflow), then the asymptotic series, whose 11th term is < 4e-17 there.
FB_INLINE double erfcx_fast(double u) {
  if (u < 13.0) {
    const double hi = u * u;
    const double lo = ::fma(u, u, -hi);
    return ::exp(hi) * ::erfc(u) * (1.0 + lo);
  }
  const double v = 1.0 / (u * u);  // Σ (-1)^k (2k-1)!!/(2u²)^k, k = 0..10
  const double series = poly8(v, 1.0, -0.5, 0.75, -1.875, 6.5625, -29.53125, 162.421875, -1055.7421875) +
                        v * v * v * v * v * v * v * v * (7918.06640625 + v * (-67303.564453125 + v * 639383.8623046875));
  return kInvSqrtPi / u * series;
}
// log(Φ(hi) - Φ(lo)) for a window whose nearer end is not in a tail (mirrored to the side where both CDFs are
// small, the upper one >= Φ(-TAIL_S) ~ 3e-7): one difference of two erfc, which is as well conditioned as
// log_diff_ndtr's log1mexp of two log Φ (the relative error is ε·(Φ(hi) + Φ(lo))/(Φ(hi) - Φ(lo)) for both), at a
// third of the cost.
FB_INLINE double log_diff_ndtr_interior(double lo, double hi) {
  const bool mirror = (lo + hi) > 0;
  const double x_hi = mirror ? -lo : hi, x_lo = mirror ? -hi : lo;
  return ::log(0.5 * (::erfc(-x_hi * kSqrtHalf) - ::erfc(-x_lo * kSqrtHalf)));
}
// Mills ratio R(s) = Φ(-s)/φ(s) for s >= TAIL_S
FB_INLINE double mills_ratio(double s) { return kSqrtHalfPi * erfcx_fast(s * kSqrtHalf); }

// log E[θ^k] of the interior kind: log_moment's forms for z0 not in a tail (log Z0 = l0), the window shifted by
// -kσ either interior too or in the lower tail (see the interior kind above).
FB_INLINE double log_moment_interior(double mu, double sigma, double b, double al, double be, double T, double l0,
                                     double k) {
  const double hi = be - k * sigma;
  if (-hi > kTailS) {
    const double s = -hi, e = T * (s + 0.5 * T);
    const double r = mills_ratio(s);
    const double d = e > 745.0 ? r : r - ::exp(-e) * mills_ratio(s + T);
    return k * b - 0.5 * be * be - kHalfLog2Pi + ::log(d) - l0;
  }
  return k * mu + 0.5 * k * k * sigma * sigma + log_diff_ndtr_interior(al - k * sigma, hi) - l0;
}
}  // namespace detail

// log_bma = log(b - a), hoisted by the caller; kind = fast_kind(α, β, σ, T) != kFastNone.
FB_INLINE GateStats gate_stats_fast(int kind, double mu, double log_sigma, double sigma, double al, double be,
                                    double a, double b, double log_bma) {
  const double s2 = sigma * sigma;
  GateStats st;
  double lm1, d2;
  if (kind == kFastInterior) {
    const double T = (b - a) / sigma;
    const double l0 = detail::log_diff_ndtr_interior(al, be);
    st.kl = kl_interior(al, be, T, sigma, l0, log_bma).kl;
    lm1 = detail::log_moment_interior(mu, sigma, b, al, be, T, l0, 1.0);
    d2 = detail::log_moment_interior(mu, sigma, b, al, be, T, l0, 2.0) - 2.0 * lm1;
  } else if (kind == kFastDeep) {
    st.kl = detail::kl_direct(al, be, detail::phi_or_zero(al), detail::phi_or_zero(be), 0.0, sigma, log_sigma,
                              log_bma).kl;
    lm1 = mu + 0.5 * s2;
    d2 = s2;
  } else if (kind == kFastNear) {
    const double l0 = log_ndtr(be);
    st.kl = detail::kl_direct(al, be, detail::phi_over_z(al, l0), detail::phi_over_z(be, l0), l0, sigma, log_sigma,
                              log_bma).kl;
    const double m = be - sigma;
    const double l1 = log_ndtr(m);
    lm1 = mu + 0.5 * s2 + (l1 - l0);
    if (sigma >= kQuadSigma * detail::clamp_min(-be, 1.0)) {
      d2 = s2 + ((log_ndtr(be - 2.0 * sigma) - l1) - (l1 - l0));
    } else if (sigma >= kTaylorSigma) {  // -5 <= β < -1, 0.1 <= σ < -β/10: delta2's quadrature, v by λ per node
      double acc = 0.0;
      for (int j = 0; j < 8; ++j) {
        const double x = be - sigma * (j < 4 ? 1.0 - detail::gj_node(j) : 1.0 + detail::gj_node(j - 4));
        const double lam = detail::inv_mills(x);
        acc += detail::gj_weight(j & 3) * (1.0 - lam * (x + lam));
      }
      d2 = s2 * acc;
    } else {
      // below m = -1, λ(m) by inv_mills: exp(-m²/2 - ½log 2π - ℓ(m)) would carry ulp(m²/2) into the cancelling
      // 1 - λ(m + λ) (1e-12 relative at m = -5)
      const double lam = m < -1.0 ? detail::inv_mills(m) : ::exp(-0.5 * m * m - kHalfLog2Pi - l1);
      const double v = 1.0 - lam * (m + lam);  // 1 + ℓ''(m): the variance of N(0,1) truncated above at m
      d2 = s2 * (v + detail::delta2_taylor_terms(m, lam, s2));
    }
  } else {
    const double s = -be;
    const double xs[3] = {s, s + sigma, s + 2.0 * sigma};
    MillsCf c[3];
    mills_cf_n<3>(xs, c);
    st.kl = detail::kl_tail_one_sided(s, c[0], sigma, log_sigma, log_bma, true).kl;
    const double g0 = s + c[0].c1;
    const double d1 = c[1].c1 - c[0].c1;
    lm1 = b - ::log1p((sigma + d1) / g0);
    if (sigma >= kTailSigmaMin) {
      const double g1 = xs[1] + c[1].c1;
      const double dd = (c[2].c1 - c[1].c1) - d1;                     // C1(s+2σ) - 2C1(s+σ) + C1(s)
      const double num = g0 * dd - s2 - 2.0 * sigma * d1 - d1 * d1;  // g(s+2σ)g(s) - g(s+σ)²
      d2 = -::log1p(num / (g1 * g1));
    } else {  // delta2's quadrature; the truncated variance of each node is tn_var's tail form with ρ = 0
      double xn[8];  // ascending: s + σ(1 - ξ3), ..., s + σ(1 - ξ0), s + σ(1 + ξ0), ..., s + σ(1 + ξ3)
      MillsCf cn[8];
      for (int j = 0; j < 8; ++j) {
        xn[j] = s + sigma * (j < 4 ? 1.0 - detail::gj_node(3 - j) : 1.0 + detail::gj_node(j - 4));
      }
      mills_cf_n<8>(xn, cn);
      double acc = 0.0;
      for (int j = 0; j < 8; ++j) {
        acc += detail::gj_weight(j < 4 ? 3 - j : j - 4) * (cn[j].c1 * (2.0 * cn[j].h2 - cn[j].c1));
      }
      d2 = s2 * acc;
    }
  }
  st.mean = ::exp(lm1);
  st.snr = 1.0 / ::sqrt(::expm1(detail::clamp_min(d2, 0.0)));
  return st;
}

// KL and its gradients on the fast path: gate_stats_fast's KL forms (the same calls, so the same KL bits when
// with_kl and log_bma = log(b - a)); the backward passes with_kl = false and log_bma = 0, which skips the tail's log.
FB_INLINE KlGrad kl_grad_fast(int kind, double log_sigma, double sigma, double al, double be, double a, double b,
                              double log_bma, bool with_kl) {
  if (kind == kFastInterior) {
    return kl_interior(al, be, (b - a) / sigma, sigma, detail::log_diff_ndtr_interior(al, be), log_bma);
  }
  if (kind == kFastDeep) {
    return detail::kl_direct(al, be, detail::phi_or_zero(al), detail::phi_or_zero(be), 0.0, sigma, log_sigma,
                             log_bma);
  }
  if (kind == kFastNear) {
    const double l0 = log_ndtr(be);
    return detail::kl_direct(al, be, detail::phi_over_z(al, l0), detail::phi_over_z(be, l0), l0, sigma, log_sigma,
                             log_bma);
  }
  return detail::kl_tail_one_sided(-be, mills_cf(-be), sigma, log_sigma, log_bma, with_kl);
}

FB_INLINE GateGrad gate_stats_backward_fast(int kind, double grad_kl, double log_sigma, double sigma, double al,
                                            double be, double a, double b) {
  const KlGrad r = kl_grad_fast(kind, log_sigma, sigma, al, be, a, b, 0.0, false);
  return {grad_kl * r.dmu, grad_kl * r.dls};
}

// (kl, E[θ], SNR) per unit: the fast path in the ordinary regime, the far-tail-exact path elsewhere.
FB_INLINE GateStats gate_stats(double mu, double log_sigma, double a, double b) {
  const double sigma = ::exp(log_sigma);
  const double al = (a - mu) / sigma, be = (b - mu) / sigma;
  const int kind = fast_kind(al, be, sigma, (b - a) / sigma);
  if (kind != kFastNone) return gate_stats_fast(kind, mu, log_sigma, sigma, al, be, a, b, ::log(b - a));
  return gate_stats_exact(mu, log_sigma, a, b);
}

// (∂L/∂μ, ∂L/∂log σ) from ∂L/∂KL, same split.
FB_INLINE GateGrad gate_stats_backward(double grad_kl, double mu, double log_sigma, double a, double b) {
  const double sigma = ::exp(log_sigma);
  const double al = (a - mu) / sigma, be = (b - mu) / sigma;
  const int kind = fast_kind(al, be, sigma, (b - a) / sigma);
  if (kind != kFastNone) return gate_stats_backward_fast(kind, grad_kl, log_sigma, sigma, al, be, a, b);
  return gate_stats_backward_exact(grad_kl, mu, log_sigma, a, b);
}

}  // namespace fastbayes
