// Branch-free float32 math on GCC vector-extension types, for the per-element draws of the CPU ops.
//
// Why vector types rather than `#pragma omp simd` loops over scalar code: the draw (log, quantile, exp) is one long
// dependency chain, ~250 cycles for one vector, and a loop body that long leaves the out-of-order core little
// to overlap (measured: the scalar-loop quantile ran at ~3 ns a lane on AVX-512, latency-bound).  A vector type
// twice the register width makes GCC emit every operation as two independent instructions side by side, which
// hides the latency; the same source serves every ISA (the width is picked per ISA by the caller; baseline x86-64
// lowers it to SSE2).  Everything here is always_inline, so it compiles for the ISA of the function it lands in.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "fastbayes/ndtri_f32.h"

namespace fastbayes::cpu::vec {

#define FB_VAI inline __attribute__((always_inline))

// native register widths (SSE2, AVX2, AVX-512): GCC 12 expands wider vector types' selects lane by lane
typedef float F4 __attribute__((vector_size(16)));
typedef float F8 __attribute__((vector_size(32)));
typedef float F16 __attribute__((vector_size(64)));

template <class F>
using Mask = decltype(F{} < F{});  // integer lanes of the same width, -1 where true
// the lane type: float for the draws, double for the per-unit prologue (vec_f64.h)
template <class F>
using Lane = std::remove_cv_t<std::remove_reference_t<decltype(F{}[0])>>;
template <class F>
constexpr int kWidth = static_cast<int>(sizeof(F) / sizeof(Lane<F>));

template <class F>
FB_VAI F splat(Lane<F> c) {
  return F{} + c;
}
template <class F>
FB_VAI F load(const Lane<F>* p) {
  F v;
  std::memcpy(&v, p, sizeof(F));
  return v;
}
template <class F>
FB_VAI void store(Lane<F>* p, const F& v) {
  std::memcpy(p, &v, sizeof(F));
}
template <class F>
FB_VAI Mask<F> bits(F x) {
  return (Mask<F>)x;  // same-size vector cast: a bit reinterpretation
}
template <class F>
FB_VAI F from_bits(Mask<F> i) {
  return (F)i;
}
template <class F>
FB_VAI F sel(Mask<F> m, F a, F b) {
  return m ? a : b;
}
template <class F>
FB_VAI F vmin(F a, F b) {
  return a < b ? a : b;
}
template <class F>
FB_VAI F vmax(F a, F b) {
  return a > b ? a : b;
}
template <class F>
FB_VAI F vabs(F x) {
  return from_bits<F>(bits(x) & 0x7fffffff);
}
template <class F>
FB_VAI bool any(Mask<F> m) {
  Lane<Mask<F>> lanes[kWidth<F>];
  std::memcpy(lanes, &m, sizeof(m));
  Lane<Mask<F>> acc = 0;
  for (int i = 0; i < kWidth<F>; ++i) acc |= lanes[i];
  return acc != 0;
}

// e^x (Cephes expf, ~1 ulp): > 88.7228 -> inf, < -103.9 -> 0 (gradual underflow kept by a split 2^n).
template <class F>
FB_VAI F exp(F x) {
  const F xc = vmin(vmax(x, splat<F>(-103.9f)), splat<F>(88.7228f));
  const F kf = xc * 1.44269504088896341f + 12582912.0f;  // round to nearest via the 1.5·2^23 trick
  const Mask<F> n = bits(kf) - 0x4b400000;
  const F fn = kf - 12582912.0f;
  const F r = (xc - fn * 0.693359375f) - fn * -2.12194440e-4f;
  F p = splat<F>(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const F y = p * (r * r) + r + 1.0f;
  const Mask<F> n1 = n >> 1, n2 = n - n1;  // 2^n = 2^n1 · 2^n2, both normal
  const F res = y * from_bits<F>((n1 + 127) << 23) * from_bits<F>((n2 + 127) << 23);
  return sel(x > 88.7228f, splat<F>(__builtin_inff()), sel(x < -103.9f, F{}, res));
}

// log x for normal, finite x > 0 (Cephes logf, ~1 ulp).  `sub`: x may be subnormal (scaled up first).
template <class F, bool kSubnormal = false>
FB_VAI F log_pos(F x) {
  Mask<F> sub{};
  if (kSubnormal) {
    sub = x < 1.17549435e-38f;
    x = sel(sub, x * 8388608.0f, x);  // 2^23
  }
  const Mask<F> bx = bits(x);
  const F mm = from_bits<F>((bx & 0x007fffff) | 0x3f000000);  // x = mm·2^e, mm in [0.5, 1)
  const Mask<F> lo = mm < 0.707106781186547524f;
  const Mask<F> e = ((bx >> 23) & 0xff) - 126 + lo;  // lo is -1 where true
  const F m = sel(lo, mm + mm - 1.0f, mm - 1.0f);
  F fe = __builtin_convertvector(e, F);
  if (kSubnormal) fe = fe - sel(sub, splat<F>(23.0f), F{});
  const F z = m * m;
  F y = splat<F>(7.0376836292e-2f);
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  y += -2.12194440e-4f * fe;
  y += -0.5f * z;
  return (m + y) + 0.693359375f * fe;
}

// √x for x >= 0 or +inf: the bit-trick guess, two Newton steps on 1/√x (4.6e-6), one Heron step (~1 ulp).
template <class F>
FB_VAI F sqrt(F x) {
  F y = from_bits<F>(0x5f375a86 - (bits(x) >> 1));
  y = y * (1.5f - 0.5f * x * y * y);
  y = y * (1.5f - 0.5f * x * y * y);
  const F s = x * y;
  return sel(x == __builtin_inff(), x, s + 0.5f * y * (x - s * s));
}

template <class F>
FB_VAI F blend3(Mask<F> central, Mask<F> far, float c_central, float c_tail, float c_far) {
  return sel(central, splat<F>(c_central), sel(far, splat<F>(c_far), splat<F>(c_tail)));
}

// fastbayes::ndtri_f32 per lane, one rational with blended coefficients (see ndtri_f32.h).  p and
// tail = -log(min(p, 1-p)) as there; `r` returns √tail for the caller's check against kNdtriF32MaxR.
template <class F>
FB_VAI F ndtri(F p, F tail, F* r_out) {
  const NdtriF32Coef& C = kNdtriF32Central;
  const NdtriF32Coef& T = kNdtriF32Tail;
  const NdtriF32Coef& X = kNdtriF32FarTail;
  const F q = p - 0.5f;
  const Mask<F> central = vabs(q) <= 0.425f;
  const F r = sqrt(vmax(tail, F{}));
  const Mask<F> far = r > 5.0f;
  const F t = sel(central, 0.180625f - q * q, r - sel(far, splat<F>(X.shift), splat<F>(T.shift)));
  F num = blend3<F>(central, far, C.n3, T.n3, X.n3);
  num = num * t + blend3<F>(central, far, C.n2, T.n2, X.n2);
  num = num * t + blend3<F>(central, far, C.n1, T.n1, X.n1);
  num = num * t + blend3<F>(central, far, C.n0, T.n0, X.n0);
  F den = sel(central, splat<F>(C.d3), F{});
  den = den * t + blend3<F>(central, far, C.d2, T.d2, X.d2);
  den = den * t + blend3<F>(central, far, C.d1, T.d1, X.d1);
  den = den * t + 1.0f;
  const F pre = sel(central, q, sel(q > 0.0f, splat<F>(1.0f), splat<F>(-1.0f)));
  *r_out = sel(central, F{}, r);
  return pre * (num / den);
}

}  // namespace fastbayes::cpu::vec
