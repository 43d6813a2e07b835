// float64 vector math for the per-unit prologues: log Φ (fastbayes/math.h::log_ndtr's forms, branch for branch) on
// GCC vector types of 4 (AVX2) or 8 (AVX-512) doubles, over the SLEEF exp/log/log1p/erfc that libtorch_cpu
// exports (ATen's own Vectorized<double> calls the same symbols; 1-1.5 ulp against glibc's ≤1).
//
// Why: the prologue of a gate's noise costs one to three scalar log Φ per unit, which for a paper-sized layer is
// most of the op (measured, 150 units: 8.6 µs a call at initialisation, 21 µs with trained parameters, against
// 5 µs for the rest of a per-batch forward; vectorised 6.9 and 9.7 µs).  The symbols are weak, so a libtorch built
// without SLEEF (or for another architecture) loads fine and `available()` sends the callers to the scalar path.
#pragma once
#include <cmath>
#include <cstring>

#include "fastbayes/math.h"
#include "isa.h"
#include "vec_math.h"

#ifdef FB_X86_PATHS
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
extern "C" {
__m256d Sleef_expd4_u10avx2(__m256d) __attribute__((weak));
__m256d Sleef_logd4_u10avx2(__m256d) __attribute__((weak));
__m256d Sleef_log1pd4_u10avx2(__m256d) __attribute__((weak));
__m256d Sleef_erfcd4_u15avx2(__m256d) __attribute__((weak));
__m512d Sleef_expd8_u10avx512f(__m512d) __attribute__((weak));
__m512d Sleef_logd8_u10avx512f(__m512d) __attribute__((weak));
__m512d Sleef_log1pd8_u10avx512f(__m512d) __attribute__((weak));
__m512d Sleef_erfcd8_u15avx512f(__m512d) __attribute__((weak));
}
#pragma GCC diagnostic pop
#endif

namespace fastbayes::cpu::vec {

typedef double D4 __attribute__((vector_size(32)));
typedef double D8 __attribute__((vector_size(64)));

// The SLEEF functions of one width (x86-64 only).  Call only from a function compiled for that ISA (FB_AVX2_TARGET /
// FB_AVX512_TARGET), after available().
template <class D>
struct Sleef;
#ifdef FB_X86_PATHS
template <>
struct Sleef<D4> {
  static FB_VAI D4 exp(D4 x) { return Sleef_expd4_u10avx2(x); }
  static FB_VAI D4 log(D4 x) { return Sleef_logd4_u10avx2(x); }
  static FB_VAI D4 log1p(D4 x) { return Sleef_log1pd4_u10avx2(x); }
  static FB_VAI D4 erfc(D4 x) { return Sleef_erfcd4_u15avx2(x); }
  static bool available() {
    return Sleef_expd4_u10avx2 && Sleef_logd4_u10avx2 && Sleef_log1pd4_u10avx2 && Sleef_erfcd4_u15avx2;
  }
};
template <>
struct Sleef<D8> {
  static FB_VAI D8 exp(D8 x) { return Sleef_expd8_u10avx512f(x); }
  static FB_VAI D8 log(D8 x) { return Sleef_logd8_u10avx512f(x); }
  static FB_VAI D8 log1p(D8 x) { return Sleef_log1pd8_u10avx512f(x); }
  static FB_VAI D8 erfc(D8 x) { return Sleef_erfcd8_u15avx512f(x); }
  static bool available() {
    return Sleef_expd8_u10avx512f && Sleef_logd8_u10avx512f && Sleef_log1pd8_u10avx512f &&
           Sleef_erfcd8_u15avx512f;
  }
};
#endif

// a·b + c with one rounding, as ::fma (the compiler has FMA in the functions these land in)
template <class D>
FB_VAI D fma(D a, D b, D c) {
  D r;
  for (int i = 0; i < kWidth<D>; ++i) r[i] = __builtin_fma(a[i], b[i], c[i]);
  return r;
}

// log Φ(x) as math.h::log_ndtr: log(erfcx(-t)/2) - t² below x = -1 (erfcx by exp·erfc·(1 + the split-off
// rounding of u²) under u = 5, Laplace's continued fraction, 20 levels, from 5 on), log1p(-erfc(t)/2) above;
// t = x/√2.  Only the branches some lane takes are evaluated.
template <class D>
FB_VAI D log_ndtr(D x) {
  using S = Sleef<D>;
  const D t = x * kSqrtHalf;
  const Mask<D> lower = x < -1.0;
  const D u = -t;
  const D e = S::erfc(sel<D>(lower, u, t));
  D out{};
  if (any<D>(lower)) {
    const D hi = u * u;
    const D lo = fma<D>(u, u, -hi);
    D ex = S::exp(hi) * e * (1.0 + lo);
    const Mask<D> far = lower & (u >= 5.0);
    if (any<D>(far)) {
      D f = u;
      for (int k = 20; k >= 1; --k) f = u + (0.5 * k) / f;
      ex = sel<D>(far, kInvSqrtPi / f, ex);
    }
    out = S::log(ex / 2.0) - t * t;
  }
  if (any<D>(~lower)) out = sel<D>(lower, out, S::log1p(-e / 2.0));
  return out;
}

}  // namespace fastbayes::cpu::vec
