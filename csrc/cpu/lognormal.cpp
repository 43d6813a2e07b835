// CPU ops lognormal_noise / lognormal_noise_backward (spec: fastbayes/reference/lognormal.py).
//
// x is viewed as [R, C, S]: R = prod(shape[:dim]) rows, C units, S = prod(shape[dim+1:]) contiguous elements.
//   * "batch"/"sample": θ is constant per unit (per example and unit), so the draws and their gradient factors go
//     into a small table first; the pass over x is then a multiply (forward) or dx = g·θ plus Σ g·x per unit
//     (backward), memory-bound.
//   * "element": every element draws.  The float math runs in blocks of kLanes draws: Philox with explicit
//     32x32->64 multiplies, then branch-free exp/log/ndtri loops written for the auto-vectoriser.  Everything is
//     compiled three times (baseline x86-64, AVX2+FMA, AVX-512) and the best ISA the CPU has is picked at run
//     time; FASTBAYES_CPU_ISA=base|avx2|avx512 caps it.  float64 x uses the scalar header math
//     (fastbayes/lognormal.h) and is the accuracy path, not the fast one.
// The per-unit gradient sums go into double accumulators per chunk of a partition that depends only on the
// shape, then are summed in chunk order: results do not depend on the thread count, and there are no atomics.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <vector>

#include "fastbayes/lognormal.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define FB_X86_PATHS 1
#endif

namespace fastbayes {
namespace {

#define FB_AI inline __attribute__((always_inline))

constexpr int kLanes = 128;              // draws per block: stack arrays stay in L1
constexpr int64_t kGrainElems = 32768;   // elements per parallel_for chunk for the streaming passes
constexpr int64_t kMaxChunks = 64;       // backward partition (fixed by the shape, not by the thread count)
constexpr int64_t kUnitTile = 2048;      // units per tile of the S == 1 backward: 8 KiB runs per row and stream

// ---------------------------------------------------------------------------------------------------------
// Branch-free float32 math for the vectorised lanes (Cephes-style polynomials, ~1 ulp).  The reference uses torch's
// SLEEF float32 functions (1 ulp), so neither side is correctly rounded; the tests allow for that.
// Every select is a bitwise blend of two values computed unconditionally: with the default -ftrapping-math and
// -fmath-errno GCC will not if-convert a `c ? a : b` whose arms contain floating-point work, nor vectorise a
// loop around std::sqrt, so both are avoided here and the loops vectorise without special compiler flags.

FB_AI float bits_to_f(int32_t i) { return std::bit_cast<float>(i); }
FB_AI int32_t f_to_bits(float f) { return std::bit_cast<int32_t>(f); }

FB_AI float fsel(bool c, float a, float b) {
  const int32_t m = -static_cast<int32_t>(c);
  return bits_to_f((m & f_to_bits(a)) | (~m & f_to_bits(b)));
}

constexpr float kInf = std::numeric_limits<float>::infinity();

// e^x: NaN -> NaN, > 88.72 -> inf, very negative -> 0 (gradual underflow kept by a split 2^n).
FB_AI float vexp(float x) {
  const float xc = fsel(x > 88.7228f, 88.7228f, fsel(x < -103.98f, -103.98f, x));
  const float kf = xc * 1.44269504088896341f + 12582912.0f;  // round to nearest via the 1.5·2^23 trick
  const int32_t n = f_to_bits(kf) - f_to_bits(12582912.0f);
  const float fn = kf - 12582912.0f;
  const float r = (xc - fn * 0.693359375f) - fn * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * (r * r) + r + 1.0f;
  const int32_t n1 = n >> 1, n2 = n - n1;  // 2^n = 2^n1 · 2^n2, both normal
  const float res = y * bits_to_f((n1 + 127) << 23) * bits_to_f((n2 + 127) << 23);
  return fsel(x > 88.7228f, kInf, fsel(x != x, x, res));
}

// log x: 0 -> -inf, < 0 -> NaN, inf -> inf; subnormals are scaled up first.
FB_AI float vlog(float x) {
  const bool sub = x < 1.17549435e-38f;
  const float xs = fsel(sub, x * 8388608.0f, x);  // 2^23
  const int32_t bx = f_to_bits(xs);
  const float mm = bits_to_f((bx & 0x007fffff) | 0x3f000000);  // xs = mm·2^e, mm in [0.5, 1)
  const bool lo = mm < 0.707106781186547524f;
  const int32_t e = ((bx >> 23) & 0xff) - 126 - static_cast<int32_t>(lo);
  const float m = fsel(lo, mm + mm - 1.0f, mm - 1.0f);
  const float fe = static_cast<float>(e) - fsel(sub, 23.0f, 0.0f);
  const float z = m * m;
  float y = 7.0376836292e-2f;
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
  float res = m + y;
  res += 0.693359375f * fe;
  res = fsel(x == kInf, kInf, res);
  res = fsel(x == 0.0f, -kInf, res);
  return fsel(x < 0.0f, std::numeric_limits<float>::quiet_NaN(), fsel(x != x, x, res));
}

// log(1 + x) for x >= -1 (Goldberg: log(u)·x/(u-1) corrects the rounding of u = 1 + x).
FB_AI float vlog1p(float x) {
  const float u = 1.0f + x;
  const float d = u - 1.0f;
  return fsel(d == 0.0f, x, vlog(u) * (x / d));
}

// expm1 on [-0.1, 0], the only range ndtri_log needs (its upper tail has p > 0.925); Taylor to x^7.
FB_AI float vexpm1_small(float x) {
  const float xc = fsel(x < -0.1f, -0.1f, x);
  float p = 1.0f / 5040.0f;
  p = p * xc + 1.0f / 720.0f;
  p = p * xc + 1.0f / 120.0f;
  p = p * xc + 1.0f / 24.0f;
  p = p * xc + 1.0f / 6.0f;
  p = p * xc + 0.5f;
  return (p * xc) * xc + xc;
}

// √x for x >= 0 (NaN -> NaN): Newton on 1/√x, then one Heron correction (<= 1 ulp).
FB_AI float vsqrt(float x) {
  float y = bits_to_f(0x5f375a86 - (f_to_bits(x) >> 1));
  y = y * (1.5f - 0.5f * x * y * y);
  y = y * (1.5f - 0.5f * x * y * y);
  y = y * (1.5f - 0.5f * x * y * y);
  const float s = x * y;
  return fsel(x == kInf, kInf, s + 0.5f * y * (x - s * s));
}

template <typename T>
FB_AI T poly8(T x, double c0, double c1, double c2, double c3, double c4, double c5, double c6, double c7) {
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

// fastbayes::ndtri_log for every lane except r > 26 (p < 1e-294, the asymptotic branch): *asym = 1 there, and
// the caller redoes that lane with the scalar header.
FB_AI float vndtri_log(float logp_in, int32_t* asym) {
  const float logp = fsel(logp_in > 0.0f, 0.0f, logp_in);
  const float p = vexp(logp);
  const float q = p - 0.5f;
  const bool central = fsel(q < 0.0f, -q, q) <= 0.425f;
  const float rr = 0.180625f - q * q;
  const float cval = q *
      poly8<float>(rr, 3.3871328727963666080e0, 1.3314166789178437745e2, 1.9715909503065514427e3,
                   1.3731693765509461125e4, 4.5921953931549871457e4, 6.7265770927008700853e4,
                   3.3430575583588128105e4, 2.5090809287301226727e3) /
      poly8<float>(rr, 1.0, 4.2313330701600911252e1, 6.8718700749205790830e2, 5.3941960214247511077e3,
                   2.1213794301586595867e4, 3.9307895800092710610e4, 2.8729085735721942674e4,
                   5.2264952788528545610e3);
  const bool upper = q > 0.0f;
  const float lm = fsel(logp > -1e-38f, -1e-38f, logp);
  const float nlt = fsel(upper, -vlog(-vexpm1_small(lm)), -logp);
  const float r = vsqrt(fsel(nlt < 0.0f, 0.0f, nlt));
  const float x1 = r - 1.6f;
  const float small = poly8<float>(x1, 1.42343711074968357734e0, 4.63033784615654529590e0, 5.76949722146069140550e0,
                                   3.64784832476320460504e0, 1.27045825245236838258e0, 2.41780725177450611770e-1,
                                   2.27238449892691845833e-2, 7.74545014278341407640e-4) /
                      poly8<float>(x1, 1.0, 2.05319162663775882187e0, 1.67638483018380384940e0,
                                   6.89767334985100004550e-1, 1.48103976427480074590e-1, 1.51986665636164571966e-2,
                                   5.47593808499534494600e-4, 1.05075007164441684324e-9);
  const float x2 = r - 5.0f;
  const float mid = poly8<float>(x2, 6.65790464350110377720e0, 5.46378491116411436990e0, 1.78482653991729133580e0,
                                 2.96560571828504891230e-1, 2.65321895265761230930e-2, 1.24266094738807843860e-3,
                                 2.71155556874348757815e-5, 2.01033439929228813265e-7) /
                    poly8<float>(x2, 1.0, 5.99832206555887937690e-1, 1.36929880922735805310e-1,
                                 1.48753612908506148525e-2, 7.86869131145613259100e-4, 1.84631831751005468180e-5,
                                 1.42151175831644588870e-7, 2.04426310338993978564e-15);
  const float t = fsel(r <= 5.0f, small, mid);
  *asym = static_cast<int32_t>(!central & !(r <= static_cast<float>(kNdtriAsymptoticR)));
  return fsel(central, cval, fsel(upper, t, -t));
}

FB_AI float mills(float t) {
  const float t2 = 1.0f / (t * t);
  return 1.0f - t2 + 3.0f * t2 * t2;
}

// ---------------------------------------------------------------------------------------------------------
// Per-unit parameters, structure of arrays so that lanes over units (S == 1) load them contiguously.

template <typename T>
struct UnitTable {
  std::vector<T> mu, sgs, sigma, al, be, lf, r, s;  // sgs = σ·s (exact: s = ±1)
  std::vector<uint8_t> keep;                        // 0 for masked units
  LognormalUnit<T> unit(int64_t c) const { return {mu[c], sigma[c], al[c], be[c], lf[c], r[c], s[c]}; }
};

// Lane view at a unit offset: either one unit for every lane (kUniform) or unit c0 + i for lane i.
template <typename T, bool kUniform>
struct Lanes {
  const T *mu, *sgs, *sigma, *al, *be, *lf, *r, *s;
  FB_AI int64_t at(int i) const { return kUniform ? 0 : i; }
};

template <typename T, bool kUniform>
Lanes<T, kUniform> lanes_at(const UnitTable<T>& u, int64_t c0) {
  return {u.mu.data() + c0, u.sgs.data() + c0, u.sigma.data() + c0, u.al.data() + c0,
          u.be.data() + c0, u.lf.data() + c0, u.r.data() + c0, u.s.data() + c0};
}

struct DrawBlock {
  alignas(64) float u[kLanes];
  alignas(64) float th[kLanes];
  alignas(64) float v[kLanes];
  alignas(64) float w[kLanes];
  alignas(64) float eps[kLanes];
  alignas(64) int32_t asym[kLanes];
};

enum Isa : int { kBase = 0, kAvx2 = 1, kAvx512 = 2 };

#ifdef FB_X86_PATHS
// Philox4x32-10 on 8 / 16 consecutive counters with explicit 32x32->64 multiplies: GCC's auto-vectorisation
// of philox_uniform() emulates full 64-bit products and costs ~2x more.  Bit-identical to fastbayes/philox.h.
__attribute__((target("avx2"))) FB_AI void mulhilo8(__m256i a, __m256i k, __m256i& lo, __m256i& hi) {
  const __m256i pe = _mm256_mul_epu32(a, k);                         // lanes 0, 2, 4, 6 as 64-bit products
  const __m256i po = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), k);  // lanes 1, 3, 5, 7
  lo = _mm256_blend_epi32(pe, _mm256_slli_epi64(po, 32), 0xAA);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(pe, 32), po, 0xAA);
}

// u[0, ceil(n/8)·8) for counters ctr0 + i (the spare tail lanes of the block are written too).  Called, not
// inlined, once per block of kLanes draws: a target("avx2") body cannot be inlined into the default-target
// templates between it and the ISA entry points.
__attribute__((target("avx2"), noinline)) void philox_block_avx2(int n, uint64_t seed, uint64_t ctr0, float* u) {
  const uint32_t lo0 = static_cast<uint32_t>(ctr0), hi0 = static_cast<uint32_t>(ctr0 >> 32);
  const __m256i ka = _mm256_set1_epi32(static_cast<int>(0xD2511F53u)), kb = _mm256_set1_epi32(static_cast<int>(0xCD9E8D57u));
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i sign = _mm256_set1_epi32(static_cast<int>(0x80000000u));
  const __m256i lo0s = _mm256_xor_si256(_mm256_set1_epi32(static_cast<int>(lo0)), sign);
  __m256i key0[10], key1[10];
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    key0[r] = _mm256_set1_epi32(static_cast<int>(k0));
    key1[r] = _mm256_set1_epi32(static_cast<int>(k1));
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  for (int i = 0; i < n; i += 8) {
    __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(lo0 + static_cast<uint32_t>(i))), iota);
    // the 64-bit counter carries into its high word where the low word wrapped (unsigned c0 < lo0)
    const __m256i wrapped = _mm256_cmpgt_epi32(lo0s, _mm256_xor_si256(c0, sign));
    __m256i c1 = _mm256_sub_epi32(_mm256_set1_epi32(static_cast<int>(hi0)), wrapped);
    __m256i la, ha, lb, hb;
    mulhilo8(c0, ka, la, ha);  // round 1: c2 = c3 = 0
    c0 = _mm256_xor_si256(c1, key0[0]);
    __m256i c2 = _mm256_xor_si256(ha, key1[0]);
    c1 = _mm256_setzero_si256();
    __m256i c3 = la;
#pragma GCC unroll 8
    for (int r = 1; r < 9; ++r) {
      mulhilo8(c0, ka, la, ha);
      mulhilo8(c2, kb, lb, hb);
      const __m256i n0 = _mm256_xor_si256(_mm256_xor_si256(hb, c1), key0[r]);
      const __m256i n2 = _mm256_xor_si256(_mm256_xor_si256(ha, c3), key1[r]);
      c1 = lb;
      c3 = la;
      c0 = n0;
      c2 = n2;
    }
    mulhilo8(c2, kb, lb, hb);  // round 10: only output word 0 is used
    c0 = _mm256_xor_si256(_mm256_xor_si256(hb, c1), key0[9]);
    const __m256i folded = _mm256_xor_si256(c0, _mm256_srai_epi32(c0, 31));  // s < 0 ? ~s : s
    _mm256_store_ps(u + i, _mm256_mul_ps(_mm256_cvtepi32_ps(folded), _mm256_set1_ps(4.6566127342e-10f)));
  }
}

#define FB_AVX512_TARGET "avx512f,avx512vl,avx512bw,avx512dq,fma,prefer-vector-width=512"

__attribute__((target(FB_AVX512_TARGET))) FB_AI void mulhilo16(__m512i a, __m512i k, __m512i& lo, __m512i& hi) {
  const __m512i pe = _mm512_mul_epu32(a, k);
  const __m512i po = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), k);
  lo = _mm512_mask_blend_epi32(0xAAAA, pe, _mm512_slli_epi64(po, 32));
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(pe, 32), po);
}

__attribute__((target(FB_AVX512_TARGET), noinline)) void philox_block_avx512(int n, uint64_t seed, uint64_t ctr0,
                                                                            float* u) {
  const uint32_t lo0 = static_cast<uint32_t>(ctr0), hi0 = static_cast<uint32_t>(ctr0 >> 32);
  const __m512i ka = _mm512_set1_epi32(static_cast<int>(0xD2511F53u)), kb = _mm512_set1_epi32(static_cast<int>(0xCD9E8D57u));
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i lo0v = _mm512_set1_epi32(static_cast<int>(lo0));
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  __m512i key0[10], key1[10];
  for (int r = 0; r < 10; ++r) {
    key0[r] = _mm512_set1_epi32(static_cast<int>(k0));
    key1[r] = _mm512_set1_epi32(static_cast<int>(k1));
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  for (int i = 0; i < n; i += 16) {
    __m512i c0 = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(lo0 + static_cast<uint32_t>(i))), iota);
    const __mmask16 wrapped = _mm512_cmplt_epu32_mask(c0, lo0v);
    __m512i c1 = _mm512_mask_add_epi32(_mm512_set1_epi32(static_cast<int>(hi0)), wrapped,
                                       _mm512_set1_epi32(static_cast<int>(hi0)), _mm512_set1_epi32(1));
    __m512i la, ha, lb, hb;
    mulhilo16(c0, ka, la, ha);
    c0 = _mm512_xor_si512(c1, key0[0]);
    __m512i c2 = _mm512_xor_si512(ha, key1[0]);
    c1 = _mm512_setzero_si512();
    __m512i c3 = la;
#pragma GCC unroll 8
    for (int r = 1; r < 9; ++r) {
      mulhilo16(c0, ka, la, ha);
      mulhilo16(c2, kb, lb, hb);
      const __m512i n0 = _mm512_ternarylogic_epi32(hb, c1, key0[r], 0x96);  // a ^ b ^ c
      const __m512i n2 = _mm512_ternarylogic_epi32(ha, c3, key1[r], 0x96);
      c1 = lb;
      c3 = la;
      c0 = n0;
      c2 = n2;
    }
    mulhilo16(c2, kb, lb, hb);
    c0 = _mm512_ternarylogic_epi32(hb, c1, key0[9], 0x96);
    const __m512i folded = _mm512_xor_si512(c0, _mm512_srai_epi32(c0, 31));
    _mm512_store_ps(u + i, _mm512_mul_ps(_mm512_cvtepi32_ps(folded), _mm512_set1_ps(4.6566127342e-10f)));
  }
}
#endif

template <int kIsa>
FB_AI void philox_block(int n, uint64_t seed, uint64_t ctr0, float* __restrict u) {
#ifdef FB_X86_PATHS
  if constexpr (kIsa == kAvx512) {
    philox_block_avx512(n, seed, ctr0, u);
    return;
  } else if constexpr (kIsa == kAvx2) {
    philox_block_avx2(n, seed, ctr0, u);
    return;
  }
#endif
#pragma omp simd
  for (int i = 0; i < n; ++i) u[i] = philox_uniform(seed, ctr0 + static_cast<uint64_t>(i));
}

// n <= kLanes float draws with counters ctr0 .. ctr0 + n - 1 (reference theta()).
template <int kIsa, bool kUniform>
FB_AI void draw_block(int n, uint64_t seed, uint64_t ctr0, const Lanes<float, kUniform>& P, float a, float b,
                      DrawBlock& d) {
  philox_block<kIsa>(n, seed, ctr0, d.u);
  int32_t any_asym = 0;
#pragma omp simd reduction(| : any_asym)
  for (int i = 0; i < n; ++i) {
    const int64_t j = P.at(i);
    const float u = d.u[i];
    const float v = fsel(P.s[j] < 0.0f, 1.0f - u, u);
    float w = v + (1.0f - v) * P.r[j];
    w = fsel(w < 1.17549435e-38f, 1.17549435e-38f, w);  // reference W_FLOOR: keeps log w finite
    int32_t asym;
    const float eps = vndtri_log(P.lf[j] + vlog(w), &asym);
    float xs = P.mu[j] + P.sgs[j] * eps;
    xs = fsel(xs < a, a, xs);  // torch.clamp: NaN stays NaN
    xs = fsel(xs > b, b, xs);
    d.th[i] = vexp(xs);
    d.v[i] = v;
    d.w[i] = w;
    d.eps[i] = eps;
    d.asym[i] = asym;
    any_asym |= asym;
  }
  if (any_asym) {  // p < 1e-294 in some lane: redo it with the scalar header, which has the asymptotic branch
    for (int i = 0; i < n; ++i) {
      if (!d.asym[i]) continue;
      const int64_t j = P.at(i);
      const LognormalUnit<float> p{P.mu[j], P.sigma[j], P.al[j], P.be[j], P.lf[j], P.r[j], P.s[j]};
      const LognormalDraw<float> dr = lognormal_draw<float>(d.u[i], p, a, b);
      d.eps[i] = dr.eps;
      d.th[i] = dr.theta;
    }
  }
}

// Per lane gm = ∂x_s/∂μ and gs = σ·∂x_s/∂σ (reference grad_factors).  kFar: 0 near branch only, 1 far (Mills)
// branch only, 2 either, picked per lane by β' < -FAR_TAIL.
template <bool kUniform, int kFar>
FB_AI void grad_block(int n, const Lanes<float, kUniform>& P, const DrawBlock& d, float* __restrict gm,
                      float* __restrict gs) {
  constexpr float kTail = static_cast<float>(kLognormalFarTail);
#pragma omp simd
  for (int i = 0; i < n; ++i) {
    const int64_t j = P.at(i);
    const float v = d.v[i], w = d.w[i], eps = d.eps[i];
    const float al = P.al[j], be = P.be[j], r = P.r[j];
    float ra = 0.0f, rb = 0.0f;
    if (kFar != 1) {
      rb = fsel(v > 0.0f, vexp(vlog(v) - 0.5f * (be - eps) * (be + eps)), 0.0f);
      ra = vexp(vlog1p(-v) - 0.5f * (al - eps) * (al + eps));
    }
    if (kFar != 0) {
      const float pe = fsel(-eps < kTail, kTail, -eps);
      const float mp = mills(pe);
      const float cb = fsel(-be < kTail, kTail, -be);
      const float ca = fsel(-al < kTail, kTail, -al);
      const float rb_f = (v / w) * (cb / pe) * mp / mills(cb);
      const float ra_f = fsel(r > 0.0f, ((1.0f - v) * r / w) * (ca / pe) * mp / mills(ca), 0.0f);
      const bool far = kFar == 1 || be < -kTail;
      ra = fsel(far, ra_f, ra);
      rb = fsel(far, rb_f, rb);
    }
    gm[i] = 1.0f - ra - rb;
    // α'·ra vanishes wherever ra does; guard the 0·inf of a huge |α'|
    gs[i] = P.s[j] * (eps - fsel(ra > 0.0f, al * ra, 0.0f) - fsel(rb > 0.0f, be * rb, 0.0f)) * P.sigma[j];
  }
}

// ---------------------------------------------------------------------------------------------------------
// Element conversions (float <-> storage), written so the loops vectorise.

template <typename X>
FB_AI float to_f(X x) {
  if constexpr (std::is_same_v<X, c10::BFloat16>) {
    return bits_to_f(static_cast<int32_t>(static_cast<uint32_t>(x.x) << 16));
  } else {
    return static_cast<float>(x);
  }
}

template <typename X>
FB_AI X from_f(float f) {
  if constexpr (std::is_same_v<X, c10::BFloat16>) {
    // round to nearest even, NaN kept quiet (as c10::BFloat16(float))
    const uint32_t u = static_cast<uint32_t>(f_to_bits(f));
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    X out;
    out.x = static_cast<uint16_t>(f != f ? 0x7fc0u : rounded);
    return out;
  } else {
    return static_cast<X>(f);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Workers over float math (x float32 / float16 / bfloat16).  Each processes a range of work items without any
// parallel region of its own, so that the ISA wrappers below can inline the whole pipeline into one function
// compiled for that ISA (a lambda inside a target("avx2") function would not inherit the attribute).

struct Shape {
  int64_t R, P, C, S;  // x = [R, C, S]; sample's example index is row / P
};

struct Draw {
  uint64_t seed, offset;
  float a, b;
};

struct TableArgs {
  const UnitTable<float>* U;
  Draw D;
  float *th, *fm, *fs;
};

template <typename X>
struct FwdArgs {
  const X* x;
  X* y;
  const UnitTable<float>* U;
  Draw D;
  Shape sh;
  bool per_sample;
  const float* th;
};

// Fixed partition of `items` work items into chunks (a function of the shape only).
struct Chunks {
  int64_t count, per;
};

template <typename X, typename G>
struct BwdArgs {
  const G* g;
  const X* x;
  X* dx;
  const UnitTable<float>* U;
  Draw D;
  Shape sh;
  bool per_sample;
  const float *th, *fm, *fs;
  double* acc;  // [chunks][2][C]
  Chunks ch;
};

// Table items are blocks of kLanes units of one table row; row `row` uses counters offset + row·C + c, so "batch"
// is one row and "sample" N rows.  Stores θ (0 for masked units) and for the backward fm = θ·∂x_s/∂μ and
// fs = θ·σ·∂x_s/∂σ.
template <int kIsa, bool kBackward>
FB_AI void table_range(const TableArgs& A, int64_t lo, int64_t hi) {
  const UnitTable<float>& U = *A.U;
  const int64_t C = static_cast<int64_t>(U.mu.size());
  const int64_t bpr = (C + kLanes - 1) / kLanes;
  DrawBlock d;
  alignas(64) float gm[kLanes], gs[kLanes];
  for (int64_t blk = lo; blk < hi; ++blk) {
    const int64_t row = blk / bpr, c0 = (blk % bpr) * kLanes;
    const int n = static_cast<int>(std::min<int64_t>(kLanes, C - c0));
    const auto P = lanes_at<float, false>(U, c0);
    draw_block<kIsa, false>(n, A.D.seed, A.D.offset + static_cast<uint64_t>(row * C + c0), P, A.D.a, A.D.b, d);
    const uint8_t* keep = U.keep.data() + c0;
    float* t = A.th + row * C + c0;
    if (kBackward) {
      grad_block<false, 2>(n, P, d, gm, gs);
      float* m = A.fm + row * C + c0;
      float* s = A.fs + row * C + c0;
      for (int i = 0; i < n; ++i) {
        const float tk = fsel(keep[i] != 0, d.th[i], 0.0f);
        t[i] = tk;
        m[i] = tk * gm[i];
        s[i] = tk * gs[i];
      }
    } else {
      for (int i = 0; i < n; ++i) t[i] = fsel(keep[i] != 0, d.th[i], 0.0f);
    }
  }
}

// y = x · θ[tab row, c] ("batch"/"sample").  Items: rows when S == 1, else (row, unit) segments.
template <typename X>
FB_AI void scale_range(const FwdArgs<X>& A, int64_t lo, int64_t hi) {
  const int64_t C = A.sh.C, S = A.sh.S, P = A.sh.P;
  const X* __restrict x = A.x;
  X* __restrict y = A.y;
  if (S == 1) {
    for (int64_t row = lo; row < hi; ++row) {
      const float* __restrict t = A.th + (A.per_sample ? (row / P) * C : 0);
      const X* xr = x + row * C;
      X* yr = y + row * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) yr[c] = from_f<X>(to_f(xr[c]) * t[c]);
    }
    return;
  }
  for (int64_t seg = lo; seg < hi; ++seg) {
    const int64_t row = seg / C, c = seg % C;
    const float t = A.th[(A.per_sample ? (row / P) * C : 0) + c];
    const X* xs = x + seg * S;
    X* ys = y + seg * S;
    if (!A.U->keep[c]) {  // masked unit: skip the read
      std::memset(static_cast<void*>(ys), 0, sizeof(X) * S);
      continue;
    }
#pragma omp simd
    for (int64_t s = 0; s < S; ++s) ys[s] = from_f<X>(to_f(xs[s]) * t);
  }
}

// "element" forward, counter = offset + row-major index.  Items: lane blocks of rows when S == 1 (lanes over
// units), else (row, unit) segments (lanes over s, one unit).
template <int kIsa, typename X>
FB_AI void element_fwd_range(const FwdArgs<X>& A, int64_t lo, int64_t hi) {
  const UnitTable<float>& U = *A.U;
  const int64_t C = A.sh.C, S = A.sh.S;
  const X* __restrict x = A.x;
  X* __restrict y = A.y;
  DrawBlock d;
  if (S == 1) {
    const int64_t bpr = (C + kLanes - 1) / kLanes;
    for (int64_t blk = lo; blk < hi; ++blk) {
      const int64_t row = blk / bpr, c0 = (blk % bpr) * kLanes;
      const int n = static_cast<int>(std::min<int64_t>(kLanes, C - c0));
      const int64_t e0 = row * C + c0;
      draw_block<kIsa, false>(n, A.D.seed, A.D.offset + static_cast<uint64_t>(e0), lanes_at<float, false>(U, c0), A.D.a,
                        A.D.b, d);
      const uint8_t* keep = U.keep.data() + c0;
#pragma omp simd
      for (int i = 0; i < n; ++i) y[e0 + i] = from_f<X>(to_f(x[e0 + i]) * fsel(keep[i] != 0, d.th[i], 0.0f));
    }
    return;
  }
  for (int64_t seg = lo; seg < hi; ++seg) {
    const int64_t c = seg % C;
    const X* xs = x + seg * S;
    X* ys = y + seg * S;
    if (!U.keep[c]) {
      std::memset(static_cast<void*>(ys), 0, sizeof(X) * S);
      continue;
    }
    const auto P = lanes_at<float, true>(U, c);
    for (int64_t s0 = 0; s0 < S; s0 += kLanes) {
      const int n = static_cast<int>(std::min<int64_t>(kLanes, S - s0));
      draw_block<kIsa, true>(n, A.D.seed, A.D.offset + static_cast<uint64_t>(seg * S + s0), P, A.D.a, A.D.b, d);
#pragma omp simd
      for (int i = 0; i < n; ++i) ys[s0 + i] = from_f<X>(to_f(xs[s0 + i]) * d.th[i]);
    }
  }
}

// Backward over chunks [klo, khi): dx = g·θ, and per-unit sums of g·x·θ·∂x_s/∂μ and g·x·θ·σ·∂x_s/∂σ into the
// chunk's double accumulators.  "batch"/"sample" (kElement false) read θ, fm, fs from the table, so an element
// costs dx = g·θ and a double Σ g·x.
template <int kIsa, typename X, typename G, bool kElement>
FB_AI void backward_range(const BwdArgs<X, G>& A, int64_t klo, int64_t khi) {
  const UnitTable<float>& U = *A.U;
  const int64_t C = A.sh.C, S = A.sh.S, P = A.sh.P;
  const uint8_t* keep = U.keep.data();
  const G* __restrict g = A.g;
  const X* __restrict x = A.x;
  X* __restrict dx = A.dx;
  DrawBlock d;
  alignas(64) float gm[kLanes], gs[kLanes];
  for (int64_t k = klo; k < khi; ++k) {
    double* __restrict am = A.acc + k * 2 * C;
    double* __restrict as = am + C;
    if (S == 1) {  // items are rows; lanes run over units
      const int64_t r_end = std::min(A.sh.R, (k + 1) * A.ch.per);
      if (!kElement) {
        // unit tiles outer, rows inner: the tile's accumulators stay in L1 instead of streaming 2·C doubles per row
        for (int64_t c0 = 0; c0 < C; c0 += kUnitTile) {
          const int64_t nc = std::min<int64_t>(kUnitTile, C - c0);
          double* __restrict bm = am + c0;
          double* __restrict bs = as + c0;
          if (!A.per_sample) {  // "batch": the factors are per unit, so sum g·x over the rows and scale once
            alignas(64) double sgx[kUnitTile];
            std::fill(sgx, sgx + nc, 0.0);
            const float* __restrict t = A.th + c0;
            for (int64_t row = k * A.ch.per; row < r_end; ++row) {
              const int64_t e0 = row * C + c0;
#pragma omp simd
              for (int64_t c = 0; c < nc; ++c) {
                const float gv = to_f(g[e0 + c]);
                dx[e0 + c] = from_f<X>(gv * t[c]);
                sgx[c] += static_cast<double>(gv * to_f(x[e0 + c]));
              }
            }
#pragma omp simd
            for (int64_t c = 0; c < nc; ++c) {
              bm[c] += sgx[c] * static_cast<double>(A.fm[c0 + c]);
              bs[c] += sgx[c] * static_cast<double>(A.fs[c0 + c]);
            }
            continue;
          }
          for (int64_t row = k * A.ch.per; row < r_end; ++row) {
            const int64_t e0 = row * C + c0;
            const int64_t t0 = (A.per_sample ? (row / P) * C : 0) + c0;
            const float* __restrict t = A.th + t0;
            const float* __restrict m = A.fm + t0;
            const float* __restrict s = A.fs + t0;
#pragma omp simd
            for (int64_t c = 0; c < nc; ++c) {
              const float gv = to_f(g[e0 + c]);
              const double gx = static_cast<double>(gv * to_f(x[e0 + c]));
              dx[e0 + c] = from_f<X>(gv * t[c]);
              bm[c] += gx * static_cast<double>(m[c]);
              bs[c] += gx * static_cast<double>(s[c]);
            }
          }
        }
        continue;
      }
      for (int64_t row = k * A.ch.per; row < r_end; ++row) {
        const G* gr = g + row * C;
        const X* xr = x + row * C;
        X* dr = dx + row * C;
        for (int64_t c0 = 0; c0 < C; c0 += kLanes) {
          const int n = static_cast<int>(std::min<int64_t>(kLanes, C - c0));
          const auto PL = lanes_at<float, false>(U, c0);
          draw_block<kIsa, false>(n, A.D.seed, A.D.offset + static_cast<uint64_t>(row * C + c0), PL, A.D.a, A.D.b, d);
          grad_block<false, 2>(n, PL, d, gm, gs);
          const uint8_t* kp = keep + c0;
          double* __restrict bm = am + c0;
          double* __restrict bs = as + c0;
#pragma omp simd
          for (int i = 0; i < n; ++i) {
            const float gv = to_f(gr[c0 + i]);
            const float t = fsel(kp[i] != 0, d.th[i], 0.0f);
            const float gxt = gv * to_f(xr[c0 + i]) * t;
            dr[c0 + i] = from_f<X>(gv * t);
            bm[i] += static_cast<double>(gxt * gm[i]);
            bs[i] += static_cast<double>(gxt * gs[i]);
          }
        }
      }
      continue;
    }
    // S > 1: items are (row, unit) segments of S contiguous elements
    const int64_t e_end = std::min(A.sh.R * C, (k + 1) * A.ch.per);
    for (int64_t seg = k * A.ch.per; seg < e_end; ++seg) {
      const int64_t row = seg / C, c = seg % C;
      const G* gq = g + seg * S;
      const X* xq = x + seg * S;
      X* dq = dx + seg * S;
      if (!keep[c]) {
        std::memset(static_cast<void*>(dq), 0, sizeof(X) * S);
        continue;
      }
      if (!kElement) {
        const int64_t ti = (A.per_sample ? (row / P) * C : 0) + c;
        const float t = A.th[ti];
        double sgx = 0.0;
#pragma omp simd reduction(+ : sgx)
        for (int64_t s = 0; s < S; ++s) {
          const float gv = to_f(gq[s]);
          dq[s] = from_f<X>(gv * t);
          sgx += static_cast<double>(gv * to_f(xq[s]));
        }
        am[c] += sgx * static_cast<double>(A.fm[ti]);
        as[c] += sgx * static_cast<double>(A.fs[ti]);
      } else {
        const auto PL = lanes_at<float, true>(U, c);
        const bool far = U.be[c] < -static_cast<float>(kLognormalFarTail);
        double sm = 0.0, ss = 0.0;
        for (int64_t s0 = 0; s0 < S; s0 += kLanes) {
          const int n = static_cast<int>(std::min<int64_t>(kLanes, S - s0));
          draw_block<kIsa, true>(n, A.D.seed, A.D.offset + static_cast<uint64_t>(seg * S + s0), PL, A.D.a, A.D.b, d);
          if (far) {
            grad_block<true, 1>(n, PL, d, gm, gs);
          } else {
            grad_block<true, 0>(n, PL, d, gm, gs);
          }
#pragma omp simd reduction(+ : sm, ss)
          for (int i = 0; i < n; ++i) {
            const float gv = to_f(gq[s0 + i]);
            const float gxt = gv * to_f(xq[s0 + i]) * d.th[i];
            dq[s0 + i] = from_f<X>(gv * d.th[i]);
            sm += static_cast<double>(gxt * gm[i]);
            ss += static_cast<double>(gxt * gs[i]);
          }
        }
        am[c] += sm;
        as[c] += ss;
      }
    }
  }
}

#define FB_ISA_WORKERS(attr, sfx, isa)                                                                     \
  template <bool kB>                                                                                       \
  attr void table_##sfx(const TableArgs& a, int64_t lo, int64_t hi) {                                      \
    table_range<isa, kB>(a, lo, hi);                                                                       \
  }                                                                                                        \
  template <typename X>                                                                                    \
  attr void scale_##sfx(const FwdArgs<X>& a, int64_t lo, int64_t hi) {                                     \
    scale_range<X>(a, lo, hi);                                                                             \
  }                                                                                                        \
  template <typename X>                                                                                    \
  attr void element_##sfx(const FwdArgs<X>& a, int64_t lo, int64_t hi) {                                   \
    element_fwd_range<isa, X>(a, lo, hi);                                                                  \
  }                                                                                                        \
  template <typename X, typename G, bool kE>                                                               \
  attr void backward_##sfx(const BwdArgs<X, G>& a, int64_t lo, int64_t hi) {                               \
    backward_range<isa, X, G, kE>(a, lo, hi);                                                              \
  }

FB_ISA_WORKERS(, base, kBase)
#ifdef FB_X86_PATHS
FB_ISA_WORKERS(__attribute__((target("avx2,fma"))), avx2, kAvx2)
FB_ISA_WORKERS(__attribute__((target(FB_AVX512_TARGET))), avx512, kAvx512)
#endif

// The best ISA this CPU runs; FASTBAYES_CPU_ISA=base|avx2|avx512 caps it (for testing and comparisons).
int best_isa() {
  static const int isa = [] {
    int best = kBase;
#ifdef FB_X86_PATHS
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = kAvx2;
    if (best == kAvx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")) {
      best = kAvx512;
    }
#endif
    if (const char* cap = std::getenv("FASTBAYES_CPU_ISA")) {
      const std::string_view c(cap);
      const int want = c == "base" ? kBase : (c == "avx2" ? kAvx2 : kAvx512);
      best = std::min(best, want);
    }
    return best;
  }();
  return isa;
}

#ifdef FB_X86_PATHS
#define FB_PICK(name, ...)                                                                       \
  (best_isa() == kAvx512 ? &name##_avx512<__VA_ARGS__>                                          \
                         : (best_isa() == kAvx2 ? &name##_avx2<__VA_ARGS__> : &name##_base<__VA_ARGS__>))
#else
#define FB_PICK(name, ...) (&name##_base<__VA_ARGS__>)
#endif

// Runs worker(args, lo, hi) over [0, n) in parallel.
template <typename Fn, typename Args>
void run_range(int64_t n, int64_t grain, Fn worker, const Args& args) {
  at::parallel_for(0, n, std::max<int64_t>(grain, 1), [&](int64_t lo, int64_t hi) { worker(args, lo, hi); });
}

void make_table(bool backward, const UnitTable<float>& U, const Draw& D, int64_t rows, float* th, float* fm,
                float* fs) {
  const int64_t C = static_cast<int64_t>(U.mu.size());
  const int64_t blocks = rows * ((C + kLanes - 1) / kLanes);
  const TableArgs a{&U, D, th, fm, fs};
  if (backward) {
    run_range(blocks, 4096 / kLanes, FB_PICK(table, true), a);
  } else {
    run_range(blocks, 4096 / kLanes, FB_PICK(table, false), a);
  }
}

Chunks make_chunks(int64_t items, int64_t numel, int64_t C) {
  int64_t k = std::clamp<int64_t>(numel / kGrainElems, 1, kMaxChunks);
  // the chunks' 2·C double accumulators are zeroed and summed: keep them under ~1/8 of the 12 bytes/element moved
  k = std::min<int64_t>(k, std::max<int64_t>(1, numel * 3 / (32 * std::max<int64_t>(C, 1))));
  k = std::max<int64_t>(1, std::min(k, items));
  const int64_t per = std::max<int64_t>(1, (items + k - 1) / k);
  return {(items + per - 1) / per, per};
}

template <typename X>
void float_forward(const X* x, X* y, const UnitTable<float>& U, const Draw& D, const Shape& sh, Granularity gran) {
  const int64_t C = sh.C, S = sh.S;
  if (gran == Granularity::kElement) {
    const FwdArgs<X> a{x, y, &U, D, sh, false, nullptr};
    if (S == 1) {
      run_range(sh.R * ((C + kLanes - 1) / kLanes), 4096 / kLanes, FB_PICK(element, X), a);
    } else {
      run_range(sh.R * C, 4096 / S, FB_PICK(element, X), a);
    }
    return;
  }
  const bool per_sample = gran == Granularity::kSample;
  std::vector<float> th((per_sample ? sh.R / sh.P : 1) * C);
  make_table(false, U, D, per_sample ? sh.R / sh.P : 1, th.data(), nullptr, nullptr);
  const FwdArgs<X> a{x, y, &U, D, sh, per_sample, th.data()};
  if (S == 1) {
    run_range(sh.R, kGrainElems / C, FB_PICK(scale, X), a);
  } else {
    run_range(sh.R * C, kGrainElems / S, FB_PICK(scale, X), a);
  }
}

template <typename X, typename G>
void float_backward(const G* g, const X* x, X* dx, const UnitTable<float>& U, const Draw& D, const Shape& sh,
                    Granularity gran, double* acc, const Chunks& ch) {
  const int64_t C = sh.C;
  BwdArgs<X, G> a{g, x, dx, &U, D, sh, gran == Granularity::kSample, nullptr, nullptr, nullptr, acc, ch};
  if (gran == Granularity::kElement) {
    run_range(ch.count, 1, FB_PICK(backward, X, G, true), a);
    return;
  }
  const int64_t rows = a.per_sample ? sh.R / sh.P : 1;
  std::vector<float> th(rows * C), fm(rows * C), fs(rows * C);
  make_table(true, U, D, rows, th.data(), fm.data(), fs.data());
  a.th = th.data();
  a.fm = fm.data();
  a.fs = fs.data();
  run_range(ch.count, 1, FB_PICK(backward, X, G, false), a);
}

// ---------------------------------------------------------------------------------------------------------
// float64 x: the scalar header math (the reference's float64 path), per (row, unit) segment.

struct DoubleArgs {
  const UnitTable<double>* U;
  uint64_t seed, offset;
  double a, b;
  Shape sh;
  Granularity gran;
};

void double_forward(const double* x, double* y, const DoubleArgs& A) {
  const int64_t C = A.sh.C, S = A.sh.S;
  at::parallel_for(0, A.sh.R * C, std::max<int64_t>(1, 4096 / S), [&](int64_t lo, int64_t hi) {
    for (int64_t seg = lo; seg < hi; ++seg) {
      const int64_t row = seg / C, c = seg % C;
      if (!A.U->keep[c]) {
        std::fill(y + seg * S, y + (seg + 1) * S, 0.0);
        continue;
      }
      const LognormalUnit<double> p = A.U->unit(c);
      for (int64_t s = 0; s < S; ++s) {
        const int64_t e = seg * S + s;
        const uint64_t ctr = lognormal_counter(A.gran, A.offset, row / A.sh.P, c, C, e);
        y[e] = x[e] * lognormal_draw<double>(philox_uniform(A.seed, ctr), p, A.a, A.b).theta;
      }
    }
  });
}

void double_backward(const double* g, const double* x, double* dx, const DoubleArgs& A, double* acc,
                     const Chunks& ch) {
  const int64_t C = A.sh.C, S = A.sh.S;
  at::parallel_for(0, ch.count, 1, [&](int64_t klo, int64_t khi) {
    for (int64_t k = klo; k < khi; ++k) {
      double* am = acc + k * 2 * C;
      double* as = am + C;
      const int64_t e_end = std::min(A.sh.R * C, (k + 1) * ch.per);
      for (int64_t seg = k * ch.per; seg < e_end; ++seg) {
        const int64_t row = seg / C, c = seg % C;
        if (!A.U->keep[c]) {
          std::fill(dx + seg * S, dx + (seg + 1) * S, 0.0);
          continue;
        }
        const LognormalUnit<double> p = A.U->unit(c);
        for (int64_t s = 0; s < S; ++s) {
          const int64_t e = seg * S + s;
          const uint64_t ctr = lognormal_counter(A.gran, A.offset, row / A.sh.P, c, C, e);
          const LognormalDraw<double> d = lognormal_draw<double>(philox_uniform(A.seed, ctr), p, A.a, A.b);
          const LognormalGrad<double> gr = lognormal_grad<double>(d, p);
          dx[e] = g[e] * d.theta;
          const double gxt = g[e] * x[e] * d.theta;
          am[c] += gxt * gr.dmu;
          as[c] += gxt * gr.dsig * p.sigma;
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------------------
// Tensor glue.

Granularity parse_granularity(std::string_view g) {
  if (g == "batch") return Granularity::kBatch;
  if (g == "sample") return Granularity::kSample;
  TORCH_CHECK_VALUE(g == "element", "granularity must be one of ('batch', 'sample', 'element'), got '",
                    std::string(g), "'");
  return Granularity::kElement;
}

bool is_float_type(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

struct Checked {
  Shape shape;
  Granularity gran;
};

Checked check_args(const at::Tensor& x, const at::Tensor& mu, const at::Tensor& log_sigma,
                   const std::optional<at::Tensor>& mask, double a, double b, int64_t dim, c10::string_view gran,
                   int64_t seed, int64_t offset) {
  TORCH_CHECK_VALUE(x.device().is_cpu(), "x must be a CPU tensor for the CPU kernel, got ", x.device());
  TORCH_CHECK_VALUE(x.dim() >= 1, "x must have at least one dimension");
  TORCH_CHECK_VALUE(is_float_type(x.scalar_type()), "x must be float16, bfloat16, float32 or float64, got ",
                    x.scalar_type());
  TORCH_CHECK_VALUE(0 <= dim && dim < x.dim(), "dim must be in [0, ", x.dim(), "), got ", dim);
  const Granularity g = parse_granularity(std::string_view(gran.data(), gran.size()));
  TORCH_CHECK_VALUE(!(g == Granularity::kSample && dim == 0), "granularity='sample' needs dim != 0");
  TORCH_CHECK_VALUE(mu.dim() == 1 && mu.size(0) == x.size(dim), "mu must be 1-D with x.shape[", dim, "] = ",
                    x.size(dim), " entries, got shape ", mu.sizes());
  TORCH_CHECK_VALUE(is_float_type(mu.scalar_type()), "mu must be a floating-point tensor, got ", mu.scalar_type());
  TORCH_CHECK_VALUE(log_sigma.sizes() == mu.sizes() && log_sigma.scalar_type() == mu.scalar_type(),
                    "log_sigma must have the shape and dtype of mu");
  TORCH_CHECK_VALUE(x.device() == mu.device() && mu.device() == log_sigma.device(),
                    "x, mu and log_sigma must be on one device");
  if (mask) {
    TORCH_CHECK_VALUE(mask->scalar_type() == at::kBool, "mask must be a bool tensor, got ", mask->scalar_type());
    TORCH_CHECK_VALUE(mask->sizes() == mu.sizes(), "mask must have the shape of mu ", mu.sizes(), ", got ",
                      mask->sizes());
    TORCH_CHECK_VALUE(mask->device() == mu.device(), "mask must be on the device of mu");
  }
  TORCH_CHECK_VALUE(std::isfinite(a) && std::isfinite(b) && a < b, "bounds must be finite with a < b, got a=", a,
                    ", b=", b);
  TORCH_CHECK_VALUE(seed >= 0, "seed must be non-negative, got ", seed);
  TORCH_CHECK_VALUE(offset >= 0, "offset must be non-negative, got ", offset);
  Shape sh{1, 1, x.size(dim), 1};
  for (int64_t d = dim + 1; d < x.dim(); ++d) sh.S *= x.size(d);
  for (int64_t d = 1; d < dim; ++d) sh.P *= x.size(d);
  for (int64_t d = 0; d < dim; ++d) sh.R *= x.size(d);
  return {sh, g};
}

// The prologue: float64 per unit, rounded to T; parallel because log_ndtr costs ~100 ns and C can be 10^4.
template <typename T>
UnitTable<T> unit_table(const at::Tensor& mu, const at::Tensor& log_sigma, const std::optional<at::Tensor>& mask,
                        double a, double b) {
  const at::Tensor m = mu.to(at::kDouble).contiguous(), l = log_sigma.to(at::kDouble).contiguous();
  const double* mp = m.const_data_ptr<double>();
  const double* lp = l.const_data_ptr<double>();
  const int64_t C = m.numel();
  UnitTable<T> u;
  for (auto* v : {&u.mu, &u.sgs, &u.sigma, &u.al, &u.be, &u.lf, &u.r, &u.s}) v->resize(C);
  u.keep.assign(C, 1);
  if (mask) {
    const at::Tensor mk = mask->contiguous();
    const bool* kp = mk.const_data_ptr<bool>();
    for (int64_t c = 0; c < C; ++c) u.keep[c] = kp[c] ? 1 : 0;
  }
  at::parallel_for(0, C, 256, [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi; ++c) {
      const LognormalUnit<T> p = lognormal_unit<T>(mp[c], lp[c], a, b);
      u.mu[c] = p.mu;
      u.sigma[c] = p.sigma;
      u.sgs[c] = p.sigma * p.s;
      u.al[c] = p.al;
      u.be[c] = p.be;
      u.lf[c] = p.log_far;
      u.r[c] = p.r;
      u.s[c] = p.s;
    }
  });
  return u;
}

at::Tensor lognormal_noise_cpu(const at::Tensor& x_in, const at::Tensor& mu, const at::Tensor& log_sigma,
                               const std::optional<at::Tensor>& mask, double a, double b, int64_t dim,
                               c10::string_view granularity, int64_t seed, int64_t offset) {
  const Checked ck = check_args(x_in, mu, log_sigma, mask, a, b, dim, granularity, seed, offset);
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) return y;
  const uint64_t sd = static_cast<uint64_t>(seed), off = static_cast<uint64_t>(offset);
  if (x.scalar_type() == at::kDouble) {
    const UnitTable<double> U = unit_table<double>(mu, log_sigma, mask, a, b);
    double_forward(x.const_data_ptr<double>(), y.mutable_data_ptr<double>(),
                   DoubleArgs{&U, sd, off, a, b, ck.shape, ck.gran});
    return y;
  }
  const UnitTable<float> U = unit_table<float>(mu, log_sigma, mask, a, b);
  // torch.clamp rounds its Python-float bounds to the tensor's dtype
  const Draw D{sd, off, static_cast<float>(a), static_cast<float>(b)};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lognormal_noise_cpu", [&] {
    if constexpr (!std::is_same_v<scalar_t, double>) {
      float_forward<scalar_t>(x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), U, D, ck.shape,
                              ck.gran);
    }
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lognormal_noise_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x_in, const at::Tensor& mu, const at::Tensor& log_sigma,
    const std::optional<at::Tensor>& mask, double a, double b, int64_t dim, c10::string_view granularity,
    int64_t seed, int64_t offset) {
  const Checked ck = check_args(x_in, mu, log_sigma, mask, a, b, dim, granularity, seed, offset);
  TORCH_CHECK_VALUE(grad_y.sizes() == x_in.sizes(), "grad_y must have the shape of x ", x_in.sizes(), ", got ",
                    grad_y.sizes());
  TORCH_CHECK_VALUE(grad_y.device() == x_in.device(), "grad_y must be on the device of x");
  TORCH_CHECK_VALUE(is_float_type(grad_y.scalar_type()), "grad_y must be a floating-point tensor, got ",
                    grad_y.scalar_type());
  const at::Tensor x = x_in.contiguous();
  const at::ScalarType math = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  // the reference computes with g.to(math dtype): keep g when it has x's dtype, else convert it exactly like that
  const at::Tensor g = (grad_y.scalar_type() == x.scalar_type() ? grad_y : grad_y.to(math)).contiguous();
  at::Tensor dx = at::empty_like(x);
  const Shape& sh = ck.shape;
  const int64_t C = sh.C;
  const uint64_t sd = static_cast<uint64_t>(seed), off = static_cast<uint64_t>(offset);
  const bool lanes_over_units = sh.S == 1 && x.scalar_type() != at::kDouble;
  const Chunks ch = make_chunks(lanes_over_units ? sh.R : sh.R * C, x.numel(), C);
  std::vector<double> acc(static_cast<size_t>(ch.count * 2 * C), 0.0);
  if (x.numel() > 0) {
    if (x.scalar_type() == at::kDouble) {
      const UnitTable<double> U = unit_table<double>(mu, log_sigma, mask, a, b);
      double_backward(g.const_data_ptr<double>(), x.const_data_ptr<double>(), dx.mutable_data_ptr<double>(),
                      DoubleArgs{&U, sd, off, a, b, sh, ck.gran}, acc.data(), ch);
    } else {
      const UnitTable<float> U = unit_table<float>(mu, log_sigma, mask, a, b);
      const Draw D{sd, off, static_cast<float>(a), static_cast<float>(b)};
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lognormal_noise_backward_cpu", [&] {
        if constexpr (!std::is_same_v<scalar_t, double>) {
          const scalar_t* xp = x.const_data_ptr<scalar_t>();
          scalar_t* dp = dx.mutable_data_ptr<scalar_t>();
          if (g.scalar_type() == x.scalar_type()) {
            float_backward<scalar_t, scalar_t>(g.const_data_ptr<scalar_t>(), xp, dp, U, D, sh, ck.gran, acc.data(),
                                               ch);
          } else {
            float_backward<scalar_t, float>(g.const_data_ptr<float>(), xp, dp, U, D, sh, ck.gran, acc.data(), ch);
          }
        }
      });
    }
  }
  // fixed-order sum over the chunks; masked units get exactly 0
  at::Tensor dmu64 = at::zeros({C}, mu.options().dtype(at::kDouble));
  at::Tensor dls64 = at::zeros({C}, mu.options().dtype(at::kDouble));
  double* pm = dmu64.mutable_data_ptr<double>();
  double* ps = dls64.mutable_data_ptr<double>();
  const at::Tensor mk = mask ? mask->contiguous() : at::Tensor();
  const bool* kp = mask ? mk.const_data_ptr<bool>() : nullptr;
  at::parallel_for(0, C, 1024, [&](int64_t lo, int64_t hi) {
    for (int64_t k = 0; k < ch.count; ++k) {
      const double* am = acc.data() + k * 2 * C;
      for (int64_t c = lo; c < hi; ++c) {
        pm[c] += am[c];
        ps[c] += am[C + c];
      }
    }
    for (int64_t c = lo; c < hi && kp; ++c) {
      if (!kp[c]) pm[c] = ps[c] = 0.0;
    }
  });
  return {dx, dmu64.to(mu.scalar_type()), dls64.to(mu.scalar_type())};
}

}  // namespace
}  // namespace fastbayes

TORCH_LIBRARY_FRAGMENT(fastbayes_C, m) {
  m.def("lognormal_noise(Tensor x, Tensor mu, Tensor log_sigma, Tensor? mask, float a, float b, int dim, "
        "str granularity, int seed, int offset) -> Tensor");
  m.def("lognormal_noise_backward(Tensor grad_y, Tensor x, Tensor mu, Tensor log_sigma, Tensor? mask, float a, "
        "float b, int dim, str granularity, int seed, int offset) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastbayes_C, CPU, m) {
  m.impl("lognormal_noise", &fastbayes::lognormal_noise_cpu);
  m.impl("lognormal_noise_backward", &fastbayes::lognormal_noise_backward_cpu);
}
