// Float32 normal quantile Φ⁻¹ for the per-element draws: Wichura's AS241 PPND7 (degree 3/3 central, 3/2 in the
// tails, relative error ~1.2e-7 against the exact quantile, i.e. 1-2 float32 ulp: the scale of float32 rounding
// in the reference's own PPND16 evaluation).  The caller supplies p and tail = -log(min(p, 1 - p)), each formed
// without cancellation (lognormal's draw has Φ(β')·w, log Φ(β') + log w and Φ(-β') + Φ(β')(1-v)(1-r)), so
// there is a single log per draw.  Valid for tail <= kNdtriF32MaxTail (r = √tail <= 26, p >= 1e-294); beyond it
// the caller uses ndtri_log's asymptotic branch (fastbayes/math.h).
#pragma once
#include <math.h>

#include "fastbayes/config.h"

namespace fastbayes {

constexpr float kNdtriF32MaxR = 26.0f;

// The three rationals share one form, pre·(n0 + n1 t + n2 t² + n3 t³)/(1 + d1 t + d2 t² + d3 t³), so a vector
// evaluates one of them per lane with blended coefficients: branch 0 central (t = 0.180625 - q², pre = q),
// 1 r <= 5 (t = r - 1.6), 2 r > 5 (t = r - 5), pre = ±1 in the tails.
struct NdtriF32Coef {
  float n0, n1, n2, n3, d1, d2, d3, shift;
};
constexpr NdtriF32Coef kNdtriF32Central{3.3871327179e+00f, 5.0434271938e+01f, 1.5929113202e+02f, 5.9109374720e+01f,
                                        1.7895169469e+01f, 7.8757757664e+01f, 6.7187563600e+01f, 0.0f};
constexpr NdtriF32Coef kNdtriF32Tail{1.4234372777e+00f, 2.7568153900e+00f, 1.3067284816e+00f, 1.7023821103e-01f,
                                     7.3700164250e-01f, 1.2021132975e-01f, 0.0f, 1.6f};
constexpr NdtriF32Coef kNdtriF32FarTail{6.6579051150e+00f, 3.0812263860e+00f, 4.2868294337e-01f, 1.7337203997e-02f,
                                        2.4197894225e-01f, 1.2258202635e-02f, 0.0f, 5.0f};

FB_INLINE float ndtri_f32_rational(const NdtriF32Coef& c, float t) {
  const float num = ((c.n3 * t + c.n2) * t + c.n1) * t + c.n0;
  const float den = ((c.d3 * t + c.d2) * t + c.d1) * t + 1.0f;
  return num / den;
}

// Scalar form (host or device); the CPU kernels evaluate the same coefficients branch-free (csrc/cpu/vec_math.h).
FB_INLINE float ndtri_f32(float p, float tail) {
  const float q = p - 0.5f;
  if ((q < 0.0f ? -q : q) <= 0.425f) return q * ndtri_f32_rational(kNdtriF32Central, 0.180625f - q * q);
  const float r = sqrtf(tail > 0.0f ? tail : 0.0f);
  const float t = r <= 5.0f ? ndtri_f32_rational(kNdtriF32Tail, r - 1.6f)
                            : ndtri_f32_rational(kNdtriF32FarTail, r - 5.0f);
  return q > 0.0f ? t : -t;
}

}  // namespace fastbayes
