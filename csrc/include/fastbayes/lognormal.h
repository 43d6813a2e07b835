// Truncated log-normal noise y = x·θ, θ ~ LogN[a,b](μ, σ²): the per-unit prologue and the per-draw math shared by
// the CPU ops and the CUDA kernels.  Every step mirrors fastbayes/reference/lognormal.py operation by operation
// (same formulas, same evaluation order), so a backend differs from the reference only by libm rounding.
#pragma once
#include <cstdint>

#include "fastbayes/config.h"
#include "fastbayes/math.h"
#include "fastbayes/philox.h"

namespace fastbayes {

// reference/lognormal.py::FAR_TAIL: below β' = -16 the ratios φ(β')/φ(ε') use the Mills-ratio asymptotic.
constexpr double kLognormalFarTail = 16.0;

enum class Granularity : int { kBatch = 0, kSample = 1, kElement = 2 };

// The sampler's per-unit constants in canonical (mirrored) coordinates, reference/lognormal.py::unit_params.
template <typename T>
struct LognormalUnit {
  T mu, sigma, al, be, log_far, r, s;
};

// Computed once per unit in float64, then rounded to the math type T (float, or double for float64 x).
template <typename T>
FB_INLINE LognormalUnit<T> lognormal_unit(double mu, double log_sigma, double a, double b) {
  const double sigma = ::exp(log_sigma);
  const double al = (a - mu) / sigma, be = (b - mu) / sigma;
  const bool mirror = (al + be) > 0;
  const double al_c = mirror ? -be : al, be_c = mirror ? -al : be;
  const double far = log_ndtr(be_c);
  // r = Φ(α')/Φ(β') is exactly 0 in T when log Φ(α') - log Φ(β') lies below T's exp underflow (e^-104 < 2^-150
  // rounds to 0 in float; exp underflows to 0 in double below -745.2).  The Mills bound log Φ(x) < -x²/2 - log(-x)
  // - ½log 2π (x < 0) detects that without the second log_ndtr, which is half the prologue's cost and the usual
  // case (μ inside [a, b] with small σ puts α' far in the tail).
  const double underflow = sizeof(T) == sizeof(float) ? -110.0 : -750.0;
  // (-log(-x) < 0 there, so the bound without it is tried first: it settles the usual far-tail α' with no log)
  const bool under = al_c < -1.0 && (-0.5 * al_c * al_c - kHalfLog2Pi - far < underflow ||
                                     -0.5 * al_c * al_c - ::log(-al_c) - kHalfLog2Pi - far < underflow);
  const double r = under ? 0.0 : ::exp(log_ndtr(al_c) - far);
  return {static_cast<T>(mu), static_cast<T>(sigma), static_cast<T>(al_c), static_cast<T>(be_c),
          static_cast<T>(far), static_cast<T>(r), static_cast<T>(mirror ? -1.0 : 1.0)};
}

// One draw: (v, w, ε') are kept for the backward.
template <typename T>
struct LognormalDraw {
  T v, w, eps, theta;
};

template <typename T>
FB_INLINE LognormalDraw<T> lognormal_draw(float u32, const LognormalUnit<T>& p, T a, T b) {
  const T u = static_cast<T>(u32);
  const T one = static_cast<T>(1);
  LognormalDraw<T> d;
  d.v = p.s < 0 ? one - u : u;
  // u = 0 (or 1 when mirrored) with r underflowed: w = 0 -> log w = -inf; floor at FLT_MIN as the reference does
  d.w = detail::clamp_min(d.v + (one - d.v) * p.r, static_cast<T>(1.1754943508222875e-38));
  d.eps = ndtri_log<T>(p.log_far + detail::log_(d.w));
  // torch.clamp(x, a, b) = min(max(x, a), b), NaN propagating
  const T xs = detail::clamp_max(detail::clamp_min(p.mu + p.sigma * p.s * d.eps, a), b);
  d.theta = detail::exp_(xs);
  return d;
}

// reference/lognormal.py::_mills_asym: t·R(t) for t >= FAR_TAIL.
template <typename T>
FB_INLINE T lognormal_mills_asym(T t) {
  const T t2 = static_cast<T>(1) / (t * t);
  return static_cast<T>(1) - t2 + static_cast<T>(3) * t2 * t2;
}

template <typename T>
struct LognormalGrad {
  T dmu, dsig;  // ∂x_s/∂μ and ∂x_s/∂σ with u held fixed
};

// reference/lognormal.py::grad_factors for one draw; only the branch the reference would select is evaluated.
template <typename T>
FB_INLINE LognormalGrad<T> lognormal_grad(const LognormalDraw<T>& d, const LognormalUnit<T>& p) {
  using detail::exp_;
  using detail::log_;
  const T zero = static_cast<T>(0), one = static_cast<T>(1), half = static_cast<T>(0.5);
  const T tail = static_cast<T>(kLognormalFarTail);
  const T v = d.v, eps = d.eps;
  T ra, rb;
  if (p.be < -tail) {
    const T pe = detail::clamp_min(-eps, tail);
    const T mp = lognormal_mills_asym(pe);
    const T cb = detail::clamp_min(-p.be, tail);
    rb = (v / d.w) * (cb / pe) * mp / lognormal_mills_asym(cb);
    if (p.r > zero) {
      const T ca = detail::clamp_min(-p.al, tail);
      ra = ((one - v) * p.r / d.w) * (ca / pe) * mp / lognormal_mills_asym(ca);
    } else {
      ra = zero;
    }
  } else {
    rb = v > zero ? exp_(log_(v) - half * (p.be - eps) * (p.be + eps)) : zero;
    ra = exp_(detail::log1p_(-v) - half * (p.al - eps) * (p.al + eps));
  }
  LognormalGrad<T> g;
  g.dmu = one - ra - rb;
  // α'·ra vanishes wherever ra does; guard the 0·inf that a huge |α'| would otherwise produce
  g.dsig = p.s * (eps - (ra > zero ? p.al * ra : zero) - (rb > zero ? p.be * rb : zero));
  return g;
}

// Philox counter of a draw, reference/lognormal.py::layout: k = c (batch), n·C + c (sample), or the row-major
// element index (element), added to the call's offset.
FB_INLINE uint64_t lognormal_counter(Granularity g, uint64_t offset, int64_t n, int64_t c, int64_t C,
                                     int64_t element) {
  const int64_t k = g == Granularity::kBatch ? c : (g == Granularity::kSample ? n * C + c : element);
  return offset + static_cast<uint64_t>(k);
}

}  // namespace fastbayes
