// One run-time ISA choice for every CPU op (lognormal, bernoulli, svgd): the best of baseline x86-64, AVX2+FMA and
// AVX-512 (F, VL, BW, DQ) that this CPU runs, capped by FASTBAYES_CPU_ISA=base|avx2|avx512 (for tests and
// comparisons; an unknown value caps nothing).  Read once per process.
#pragma once
#include <algorithm>
#include <cstdlib>
#include <string_view>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define FB_X86_PATHS 1
#endif

// target attributes of the ISA-specific function copies
#define FB_AVX2_TARGET "avx2,fma"
#define FB_AVX512_TARGET "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,prefer-vector-width=512"

namespace fastbayes::cpu {

enum Isa : int { kBase = 0, kAvx2 = 1, kAvx512 = 2 };

inline int best_isa() {
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

}  // namespace fastbayes::cpu
