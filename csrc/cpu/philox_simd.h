// Philox4x32-10 uniforms for a run of consecutive counters, vectorised per ISA (csrc/cpu/isa.h), for every CPU op
// that draws.  Bit-identical to fastbayes/philox.h (Triton's tl.rand); tests/test_lognormal_cpu_fast.py checks
// each ISA against the reference.
//
// Explicit 32x32->64 multiplies (GCC's auto-vectorisation of philox_uniform() emulates full 64-bit products and
// costs ~2x more), and kPhiloxInterleave vectors of counters side by side: the ten rounds are one dependency chain
// per vector, and four independent chains keep the multipliers busy (measured on AVX-512: 1.0 ns a draw with one
// vector, 0.76 with two, 0.59 with four).
#pragma once
#include <cstdint>

#include "fastbayes/philox.h"
#include "isa.h"

namespace fastbayes::cpu {

constexpr int kPhiloxInterleave = 4;

#ifdef FB_X86_PATHS
#define FB_PHILOX_AI inline __attribute__((always_inline))

__attribute__((target(FB_AVX2_TARGET))) FB_PHILOX_AI void mulhilo8(__m256i a, __m256i k, __m256i& lo, __m256i& hi) {
  const __m256i pe = _mm256_mul_epu32(a, k);                         // lanes 0, 2, 4, 6 as 64-bit products
  const __m256i po = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), k);  // lanes 1, 3, 5, 7
  lo = _mm256_blend_epi32(pe, _mm256_slli_epi64(po, 32), 0xAA);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(pe, 32), po, 0xAA);
}

// u[0, ceil(n/32)·32) for counters ctr0 + i (the spare tail lanes are written too); u is 32-byte aligned.  Called,
// not inlined, once per block of draws: a target("avx2") body cannot be inlined into the default-target templates
// between it and the ISA entry points.
__attribute__((target(FB_AVX2_TARGET), noinline)) inline void philox_block_avx2(int n, uint64_t seed, uint64_t ctr0,
                                                                               float* u) {
  constexpr int K = kPhiloxInterleave;
  const uint32_t lo0 = static_cast<uint32_t>(ctr0), hi0 = static_cast<uint32_t>(ctr0 >> 32);
  const __m256i ka = _mm256_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m256i kb = _mm256_set1_epi32(static_cast<int>(0xCD9E8D57u));
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
  for (int i = 0; i < n; i += 8 * K) {
    __m256i c0[K], c1[K], c2[K], c3[K];
    for (int j = 0; j < K; ++j) {
      c0[j] = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(lo0 + static_cast<uint32_t>(i + 8 * j))), iota);
      // the 64-bit counter carries into its high word where the low word wrapped (unsigned c0 < lo0)
      const __m256i wrapped = _mm256_cmpgt_epi32(lo0s, _mm256_xor_si256(c0[j], sign));
      c1[j] = _mm256_sub_epi32(_mm256_set1_epi32(static_cast<int>(hi0)), wrapped);
      __m256i la, ha;
      mulhilo8(c0[j], ka, la, ha);  // round 1: c2 = c3 = 0
      c0[j] = _mm256_xor_si256(c1[j], key0[0]);
      c2[j] = _mm256_xor_si256(ha, key1[0]);
      c1[j] = _mm256_setzero_si256();
      c3[j] = la;
    }
#pragma GCC unroll 8
    for (int r = 1; r < 9; ++r) {
      for (int j = 0; j < K; ++j) {
        __m256i la, ha, lb, hb;
        mulhilo8(c0[j], ka, la, ha);
        mulhilo8(c2[j], kb, lb, hb);
        const __m256i n0 = _mm256_xor_si256(_mm256_xor_si256(hb, c1[j]), key0[r]);
        const __m256i n2 = _mm256_xor_si256(_mm256_xor_si256(ha, c3[j]), key1[r]);
        c1[j] = lb;
        c3[j] = la;
        c0[j] = n0;
        c2[j] = n2;
      }
    }
    for (int j = 0; j < K; ++j) {
      __m256i lb, hb;
      mulhilo8(c2[j], kb, lb, hb);  // round 10: only output word 0 is used
      const __m256i o = _mm256_xor_si256(_mm256_xor_si256(hb, c1[j]), key0[9]);
      const __m256i folded = _mm256_xor_si256(o, _mm256_srai_epi32(o, 31));  // s < 0 ? ~s : s
      _mm256_store_ps(u + i + 8 * j, _mm256_mul_ps(_mm256_cvtepi32_ps(folded), _mm256_set1_ps(4.6566127342e-10f)));
    }
  }
}

__attribute__((target(FB_AVX512_TARGET))) FB_PHILOX_AI void mulhilo16(__m512i a, __m512i k, __m512i& lo,
                                                                      __m512i& hi) {
  const __m512i pe = _mm512_mul_epu32(a, k);
  const __m512i po = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), k);
  lo = _mm512_mask_blend_epi32(0xAAAA, pe, _mm512_slli_epi64(po, 32));
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(pe, 32), po);
}

// u[0, ceil(n/64)·64), u 64-byte aligned.
__attribute__((target(FB_AVX512_TARGET), noinline)) inline void philox_block_avx512(int n, uint64_t seed,
                                                                                   uint64_t ctr0, float* u) {
  constexpr int K = kPhiloxInterleave;
  const uint32_t lo0 = static_cast<uint32_t>(ctr0), hi0 = static_cast<uint32_t>(ctr0 >> 32);
  const __m512i ka = _mm512_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m512i kb = _mm512_set1_epi32(static_cast<int>(0xCD9E8D57u));
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
  for (int i = 0; i < n; i += 16 * K) {
    __m512i c0[K], c1[K], c2[K], c3[K];
    for (int j = 0; j < K; ++j) {
      c0[j] = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(lo0 + static_cast<uint32_t>(i + 16 * j))), iota);
      const __mmask16 wrapped = _mm512_cmplt_epu32_mask(c0[j], lo0v);
      c1[j] = _mm512_mask_add_epi32(_mm512_set1_epi32(static_cast<int>(hi0)), wrapped,
                                    _mm512_set1_epi32(static_cast<int>(hi0)), _mm512_set1_epi32(1));
      __m512i la, ha;
      mulhilo16(c0[j], ka, la, ha);
      c0[j] = _mm512_xor_si512(c1[j], key0[0]);
      c2[j] = _mm512_xor_si512(ha, key1[0]);
      c1[j] = _mm512_setzero_si512();
      c3[j] = la;
    }
#pragma GCC unroll 8
    for (int r = 1; r < 9; ++r) {
      for (int j = 0; j < K; ++j) {
        __m512i la, ha, lb, hb;
        mulhilo16(c0[j], ka, la, ha);
        mulhilo16(c2[j], kb, lb, hb);
        const __m512i n0 = _mm512_ternarylogic_epi32(hb, c1[j], key0[r], 0x96);  // a ^ b ^ c
        const __m512i n2 = _mm512_ternarylogic_epi32(ha, c3[j], key1[r], 0x96);
        c1[j] = lb;
        c3[j] = la;
        c0[j] = n0;
        c2[j] = n2;
      }
    }
    for (int j = 0; j < K; ++j) {
      __m512i lb, hb;
      mulhilo16(c2[j], kb, lb, hb);
      const __m512i o = _mm512_ternarylogic_epi32(hb, c1[j], key0[9], 0x96);
      const __m512i folded = _mm512_xor_si512(o, _mm512_srai_epi32(o, 31));
      _mm512_store_ps(u + i + 16 * j, _mm512_mul_ps(_mm512_cvtepi32_ps(folded), _mm512_set1_ps(4.6566127342e-10f)));
    }
  }
}
#endif

// Lanes each ISA writes past n: u must hold philox_padded<kIsa>(n) floats.
template <int kIsa>
constexpr int philox_padded(int n) {
  constexpr int g = kIsa == kAvx512 ? 16 * kPhiloxInterleave : (kIsa == kAvx2 ? 8 * kPhiloxInterleave : 1);
  return (n + g - 1) / g * g;
}

template <int kIsa>
inline __attribute__((always_inline)) void philox_block(int n, uint64_t seed, uint64_t ctr0, float* __restrict u) {
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

}  // namespace fastbayes::cpu
