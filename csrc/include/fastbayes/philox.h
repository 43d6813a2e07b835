// Philox4x32-10 with the counter layout of Triton's tl.rand (fastbayes/reference/philox.py):
// element i of a draw uses the 64-bit counter offset + i as the words (lo, hi, 0, 0), the 64-bit seed as
// the key (lo, hi), and maps output word 0 to [0, 1) exactly as triton.language.random.uint_to_uniform_float.
#pragma once
#include <cstdint>

#include "fastbayes/config.h"

namespace fastbayes {

struct Philox4 {
  uint32_t x0, x1, x2, x3;
};

FB_INLINE Philox4 philox4x32_10(uint64_t seed, uint64_t counter) {
  constexpr uint32_t kA = 0xD2511F53u, kB = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32);
  uint32_t c2 = 0u, c3 = 0u;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
FB_UNROLL
  for (int round = 0; round < 10; ++round) {
    const uint64_t pa = static_cast<uint64_t>(kA) * c0;
    const uint64_t pb = static_cast<uint64_t>(kB) * c2;
    const uint32_t n0 = static_cast<uint32_t>(pb >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(pa >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(pb);
    c3 = static_cast<uint32_t>(pa);
    c0 = n0;
    c2 = n2;
    k0 += kW0;  // uint32 wrap-around is the intended mod 2**32
    k1 += kW1;
  }
  return {c0, c1, c2, c3};
}

// Triton: reinterpret as int32, fold negatives with -x - 1 (written ~x: no overflow at INT32_MIN), scale.
FB_INLINE float uint_to_uniform(uint32_t x) {
  const int32_t s = static_cast<int32_t>(x);
  const int32_t folded = s < 0 ? ~s : s;
  return static_cast<float>(folded) * 4.6566127342e-10f;
}

FB_INLINE float philox_uniform(uint64_t seed, uint64_t counter) {
  return uint_to_uniform(philox4x32_10(seed, counter).x0);
}

}  // namespace fastbayes
