// CPU ops lognormal_noise / lognormal_noise_backward (spec: fastbayes/reference/lognormal.py).
//
// x is viewed as [R, C, S]: R = prod(shape[:dim]) rows, C units, S = prod(shape[dim+1:]) contiguous elements.
//   * "batch"/"sample": θ is constant per unit (per example and unit), so the draws and their gradient factors go
//     into a small table first (computed by the forward, found again by the backward: content_cache.h); the pass
//     over x is then a multiply (forward) or dx = g·θ plus Σ g·x per unit (backward), memory-bound.
//   * "element": every element draws.  The float math runs in blocks of kLanes draws: Philox with explicit
//     32x32->64 multiplies (philox_simd.h), then the draw on native-width vector types, two vectors side by side
//     (vec_math.h: one log, the PPND7 quantile of ndtri_f32.h, one exp; per-unit flags skip the upper tail, the
//     asymptotic quantile and the Mills-ratio gradients where no lane of a block can reach them).  Everything is
//     compiled three times (baseline x86-64, AVX2+FMA, AVX-512) and isa.h picks one at run time;
//     FASTBAYES_CPU_ISA=base|avx2|avx512 caps it.  float64 x uses the scalar header math
//     (fastbayes/lognormal.h) and is the accuracy path, not the fast one.  A forward that will be differentiated
//     (common/backward_hint.h) leaves its draws and their gradient factors for its backward when the activation is
//     small (ElementTables); otherwise the backward regenerates them from the counters.  Either way the draw runs
//     as one out-of-line copy per ISA (draws/factors), so forward and backward agree to the bit.
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
#include <memory>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../common/backward_hint.h"
#include "fastbayes/lognormal.h"
#include "isa.h"
#include "content_cache.h"
#include "philox_simd.h"
#include "vec_math.h"
#include "vec_f64.h"

namespace fastbayes {
namespace {

#define FB_AI inline __attribute__((always_inline))

constexpr int kLanes = 128;              // draws per block: stack arrays stay in L1
constexpr int64_t kGrainElems = 32768;   // elements per parallel_for chunk for the streaming passes
constexpr int64_t kGrainDraws = 4096;    // elements per chunk where each draws (~5 ns): a second thread pays off
constexpr int64_t kMaxChunks = 64;       // backward partition (fixed by the shape, not by the thread count)
constexpr int64_t kUnitTile = 2048;      // units per tile of the S == 1 backward: 8 KiB runs per row and stream

// ---------------------------------------------------------------------------------------------------------
// Scalar bit helpers for the streaming loops (the draw math itself is in vec_math.h).

FB_AI float bits_to_f(int32_t i) { return std::bit_cast<float>(i); }
FB_AI int32_t f_to_bits(float f) { return std::bit_cast<int32_t>(f); }

// c ? a : b as a bitwise blend: GCC (-ftrapping-math) will not if-convert a select with float work in its arms
FB_AI float fsel(bool c, float a, float b) {
  const int32_t m = -static_cast<int32_t>(c);
  return bits_to_f((m & f_to_bits(a)) | (~m & f_to_bits(b)));
}

// ---------------------------------------------------------------------------------------------------------
// Per-unit parameters, structure of arrays so that lanes over units (S == 1) load them contiguously.  Every array
// has kLanes spare entries of harmless values after the C units: a vector block reads whole vectors.

// Per-unit flags: which parts of the draw a unit can reach, so that a block skips what none of its lanes needs.
enum UnitFlag : uint8_t {
  kUpper = 1,  // p > 0.925 possible (β' > 1.43): the upper tail's log(1 - p)
  kAsym = 2,   // p < 1e-294 possible (log Φ(β') + log FLT_MIN < -676): ndtri_log's asymptotic branch, scalar
  kFar = 4,    // β' < -FAR_TAIL: the Mills-ratio gradient factors
};

template <typename T>
struct UnitTable {
  std::vector<T> mu, sgs, sigma, al, be, lf, r, s;  // sgs = σ·s (exact: s = ±1)
  std::vector<float> phib, phibc;                   // Φ(β') = e^L and Φ(-β') (0 unless kUpper), float
  std::vector<uint8_t> keep;                        // 0 for masked units
  std::vector<uint8_t> flags;                       // UnitFlag per unit
  std::vector<uint8_t> block_flags;                 // OR of flags over units [k·kLanes, (k+1)·kLanes)
  std::vector<char> key;                            // content key of (μ, log σ, mask, a, b): content_cache.h
  LognormalUnit<T> unit(int64_t c) const { return {mu[c], sigma[c], al[c], be[c], lf[c], r[c], s[c]}; }
};

// Lane view at a unit offset: either one unit for every lane (kUniform) or unit c0 + i for lane i.
template <typename T, bool kUniform>
struct Lanes {
  const T *mu, *sgs, *sigma, *al, *be, *lf, *r, *s;
  const float *phib, *phibc;
  uint8_t flags;  // the unit's flags, or the OR over the block's units
  FB_AI int64_t at(int i) const { return kUniform ? 0 : i; }
};

template <typename T, bool kUniform>
Lanes<T, kUniform> lanes_at(const UnitTable<T>& u, int64_t c0) {
  return {u.mu.data() + c0, u.sgs.data() + c0, u.sigma.data() + c0, u.al.data() + c0, u.be.data() + c0,
          u.lf.data() + c0, u.r.data() + c0, u.s.data() + c0, u.phib.data() + c0, u.phibc.data() + c0,
          kUniform ? u.flags[c0] : u.block_flags[c0 / kLanes]};
}

static_assert(cpu::philox_padded<cpu::kAvx512>(kLanes) == kLanes, "Philox writes whole vector groups");

struct DrawBlock {
  alignas(64) float u[kLanes];
  alignas(64) float th[kLanes];
  alignas(64) float v[kLanes];
  alignas(64) float w[kLanes];
  alignas(64) float eps[kLanes];
  alignas(64) float rt[kLanes];  // √tail of the quantile (0 for central lanes): > 26 needs the asymptotic branch
};

using cpu::kAvx2;
using cpu::kAvx512;
using cpu::kBase;
using cpu::philox_block;
namespace vec = cpu::vec;

// Native vector width per ISA; every step works on kInterleave independent vectors side by side, which is what
// hides the latency of the draw's long dependency chain (vec_math.h).
template <int kIsa>
using VecF = std::conditional_t<kIsa == kAvx512, vec::F16, std::conditional_t<kIsa == kAvx2, vec::F8, vec::F4>>;
constexpr int kInterleave = 2;

template <typename F, bool kUniform>
FB_AI F lane_load(const float* p, int i) {
  return kUniform ? vec::splat<F>(*p) : vec::load<F>(p + i);
}

// Block of draws, lanes [0, nv) with nv = n rounded up to whole vector groups (lanes >= n compute on spare
// counters and padded units and are never stored).  kUpper: some lane's unit reaches the upper tail.
template <typename F, bool kUniform, bool kUpper>
FB_AI void draw_lanes(int nv, const Lanes<float, kUniform>& P, float a, float b, DrawBlock& d) {
  constexpr int W = vec::kWidth<F>, K = kInterleave;
  for (int i0 = 0; i0 < nv; i0 += W * K) {
    F v[K], w[K], tail[K], p[K], eps[K], rt[K];
    for (int k = 0; k < K; ++k) {
      const int i = i0 + k * W;
      const F u = vec::load<F>(d.u + i);
      const F s = lane_load<F, kUniform>(P.s, i), r = lane_load<F, kUniform>(P.r, i);
      v[k] = vec::sel(s < 0.0f, 1.0f - u, u);
      // reference W_FLOOR: u = 0 (1 when mirrored) with r underflowed keeps log w finite
      w[k] = vec::vmax(v[k] + (1.0f - v[k]) * r, vec::splat<F>(1.17549435e-38f));
    }
    for (int k = 0; k < K; ++k) {
      const int i = i0 + k * W;
      // lower tail -log p = -(L + log w); p = Φ(β')·w directly (no exp): both without cancellation
      tail[k] = -vec::vmin(lane_load<F, kUniform>(P.lf, i) + vec::log_pos(w[k]), F{});
      p[k] = lane_load<F, kUniform>(P.phib, i) * w[k];
    }
    if (kUpper) {
      for (int k = 0; k < K; ++k) {
        const int i = i0 + k * W;
        // 1 - p = Φ(-β') + Φ(β')(1-v)(1-r): a sum of non-negative terms, floored like the reference's expm1 form
        const F r = lane_load<F, kUniform>(P.r, i);
        const F om = lane_load<F, kUniform>(P.phibc, i) +
                     lane_load<F, kUniform>(P.phib, i) * (1.0f - v[k]) * (1.0f - r);
        const F upper_tail = -vec::log_pos<F, true>(vec::vmax(om, vec::splat<F>(1e-38f)));
        tail[k] = vec::sel(p[k] > 0.5f, upper_tail, tail[k]);
      }
    }
    for (int k = 0; k < K; ++k) eps[k] = vec::ndtri(p[k], tail[k], &rt[k]);
    for (int k = 0; k < K; ++k) {
      const int i = i0 + k * W;
      const F xs = lane_load<F, kUniform>(P.mu, i) + lane_load<F, kUniform>(P.sgs, i) * eps[k];
      // torch.clamp(x, a, b) = min(max(x, a), b)
      vec::store(d.th + i, vec::exp(vec::vmin(vec::vmax(xs, vec::splat<F>(a)), vec::splat<F>(b))));
      vec::store(d.v + i, v[k]);
      vec::store(d.w + i, w[k]);
      vec::store(d.eps + i, eps[k]);
      vec::store(d.rt + i, rt[k]);
    }
  }
}

// n <= kLanes float draws with counters ctr0 .. ctr0 + n - 1 (reference theta()).
template <int kIsa, bool kUniform>
FB_AI void draw_block(int n, uint64_t seed, uint64_t ctr0, const Lanes<float, kUniform>& P, float a, float b,
                      DrawBlock& d) {
  using F = VecF<kIsa>;
  constexpr int G = vec::kWidth<F> * kInterleave;
  const int nv = (n + G - 1) / G * G;
  philox_block<kIsa>(nv, seed, ctr0, d.u);
  if (P.flags & kUpper) {
    draw_lanes<F, kUniform, true>(nv, P, a, b, d);
  } else {
    draw_lanes<F, kUniform, false>(nv, P, a, b, d);
  }
  if (P.flags & kAsym) {  // p < 1e-294 in some lane: redo it with the scalar header, which has the asymptotic branch
    for (int i = 0; i < n; ++i) {
      if (!(d.rt[i] > kNdtriF32MaxR)) continue;
      const int64_t j = P.at(i);
      const LognormalUnit<float> p{P.mu[j], P.sigma[j], P.al[j], P.be[j], P.lf[j], P.r[j], P.s[j]};
      const LognormalDraw<float> dr = lognormal_draw<float>(d.u[i], p, a, b);
      d.eps[i] = dr.eps;
      d.th[i] = dr.theta;
    }
  }
}

template <typename F>
FB_AI F mills(F t) {
  const F t2 = 1.0f / (t * t);
  return 1.0f - t2 + 3.0f * t2 * t2;
}

// Per lane gm = ∂x_s/∂μ and gs = σ·∂x_s/∂σ (reference grad_factors), lanes [0, nv).  kFar: 0 near branch only,
// 1 far (Mills) branch only, 2 either, picked per lane by β' < -FAR_TAIL.
template <int kIsa, bool kUniform, int kFar>
FB_AI void grad_block(int nv, const Lanes<float, kUniform>& P, const DrawBlock& d, float* __restrict gm,
                      float* __restrict gs) {
  using F = VecF<kIsa>;
  constexpr int W = vec::kWidth<F>, K = kInterleave;
  constexpr float kTail = static_cast<float>(kLognormalFarTail);
  for (int i0 = 0; i0 < nv; i0 += W * K) {
    F ra[K], rb[K];
    for (int k = 0; k < K; ++k) {
      const int i = i0 + k * W;
      const F v = vec::load<F>(d.v + i), eps = vec::load<F>(d.eps + i);
      const F al = lane_load<F, kUniform>(P.al, i), be = lane_load<F, kUniform>(P.be, i);
      ra[k] = F{};
      rb[k] = F{};
      if (kFar != 1) {
        // v·φ(β')/φ(ε') = v·exp((ε'² - β'²)/2) without log v: the exponent stays below ~87.3 in the near branch
        // (Φ(ε')/Φ(β') >= FLT_MIN), and the clamp keeps a rounding excess finite; (1-v)·φ(α')/φ(ε') <= 1-v
        const F eb = vec::vmin(-0.5f * (be - eps) * (be + eps), vec::splat<F>(88.72f));
        rb[k] = vec::sel(v > 0.0f, v * vec::exp(eb), F{});
        ra[k] = (1.0f - v) * vec::exp(-0.5f * (al - eps) * (al + eps));
      }
      if (kFar != 0) {
        const F w = vec::load<F>(d.w + i), r = lane_load<F, kUniform>(P.r, i);
        const F pe = vec::vmax(-eps, vec::splat<F>(kTail));
        const F mp = mills(pe);
        const F cb = vec::vmax(-be, vec::splat<F>(kTail));
        const F ca = vec::vmax(-al, vec::splat<F>(kTail));
        const F rb_f = (v / w) * (cb / pe) * mp / mills(cb);
        const F ra_f = vec::sel(r > 0.0f, ((1.0f - v) * r / w) * (ca / pe) * mp / mills(ca), F{});
        const auto far = kFar == 1 ? (be == be) : (be < -kTail);
        ra[k] = vec::sel(far, ra_f, ra[k]);
        rb[k] = vec::sel(far, rb_f, rb[k]);
      }
    }
    for (int k = 0; k < K; ++k) {
      const int i = i0 + k * W;
      const F eps = vec::load<F>(d.eps + i);
      const F al = lane_load<F, kUniform>(P.al, i), be = lane_load<F, kUniform>(P.be, i);
      vec::store(gm + i, 1.0f - ra[k] - rb[k]);
      // α'·ra vanishes wherever ra does; guard the 0·inf of a huge |α'|
      const F dsig = eps - vec::sel(ra[k] > 0.0f, al * ra[k], F{}) - vec::sel(rb[k] > 0.0f, be * rb[k], F{});
      vec::store(gs + i, lane_load<F, kUniform>(P.s, i) * dsig * lane_load<F, kUniform>(P.sigma, i));
    }
  }
}

// grad_block with the branch set the block's units need (S == 1 blocks and tables mix units).
template <int kIsa, bool kUniform>
FB_AI void grad_block_any(int n, const Lanes<float, kUniform>& P, const DrawBlock& d, float* gm, float* gs) {
  constexpr int G = vec::kWidth<VecF<kIsa>> * kInterleave;
  const int nv = (n + G - 1) / G * G;
  if (!(P.flags & kFar)) {
    grad_block<kIsa, kUniform, 0>(nv, P, d, gm, gs);
  } else if (kUniform) {
    grad_block<kIsa, kUniform, 1>(nv, P, d, gm, gs);
  } else {
    grad_block<kIsa, kUniform, 2>(nv, P, d, gm, gs);
  }
}

// The draw and its gradient factors out of line, one copy per ISA, called by every pass: a forward that saves the
// draws for its backward and a backward that draws again must run the same instructions (inlined into different
// loops, the compiler is free to contract a multiply-add differently, and θ would differ in the last bit between
// the forward's y = x·θ and the backward's dx = g·θ).  A call per block of kLanes draws costs nothing measurable.
#define FB_DRAW_FNS(attr, sfx, isa)                                                                       \
  template <bool kU>                                                                                      \
  attr __attribute__((noinline)) void draws_##sfx(int n, uint64_t seed, uint64_t ctr0, const Lanes<float, kU>& P, \
                                                  float a, float b, DrawBlock& d) {                       \
    draw_block<isa, kU>(n, seed, ctr0, P, a, b, d);                                                       \
  }                                                                                                       \
  template <bool kU>                                                                                      \
  attr __attribute__((noinline)) void factors_##sfx(int n, const Lanes<float, kU>& P, const DrawBlock& d,    \
                                                    float* gm, float* gs) {                               \
    grad_block_any<isa, kU>(n, P, d, gm, gs);                                                             \
  }
FB_DRAW_FNS(, base, kBase)
#ifdef FB_X86_PATHS
FB_DRAW_FNS(__attribute__((target(FB_AVX2_TARGET))), avx2, kAvx2)
FB_DRAW_FNS(__attribute__((target(FB_AVX512_TARGET))), avx512, kAvx512)
#endif
#undef FB_DRAW_FNS

#ifdef FB_X86_PATHS
#define FB_ISA_CALL(name, ...)                     \
  if constexpr (kIsa == kAvx512) {                 \
    name##_avx512<kUniform>(__VA_ARGS__);          \
  } else if constexpr (kIsa == kAvx2) {            \
    name##_avx2<kUniform>(__VA_ARGS__);            \
  } else {                                         \
    name##_base<kUniform>(__VA_ARGS__);            \
  }
#else
#define FB_ISA_CALL(name, ...) name##_base<kUniform>(__VA_ARGS__);
#endif

// n <= kLanes draws into d (draw_block), through the ISA's one copy
template <int kIsa, bool kUniform>
FB_AI void draws(int n, uint64_t seed, uint64_t ctr0, const Lanes<float, kUniform>& P, float a, float b, DrawBlock& d) {
  FB_ISA_CALL(draws, n, seed, ctr0, P, a, b, d)
}

// their gradient factors (grad_block_any), through the ISA's one copy
template <int kIsa, bool kUniform>
FB_AI void factors(int n, const Lanes<float, kUniform>& P, const DrawBlock& d, float* gm, float* gs) {
  FB_ISA_CALL(factors, n, P, d, gm, gs)
}
#undef FB_ISA_CALL

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
  float *sth, *sgm, *sgs;  // "element": where to leave θ (0 where masked), ∂x_s/∂μ, σ·∂x_s/∂σ per element, or null
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
  const float *sth, *sgm, *sgs;  // "element": the forward's saved per-element θ and factors, or null (draw again)
  double* acc;  // [chunks][2][C]
  Chunks ch;
};

// Table items are blocks of kLanes units of one table row; row `row` uses counters offset + row·C + c, so "batch"
// is one row and "sample" N rows.  Stores θ (0 for masked units) and for the backward fm = θ·∂x_s/∂μ and
// fs = θ·σ·∂x_s/∂σ.
template <int kIsa, bool kBackward>
FB_AI void table_range(const TableArgs& A, int64_t lo, int64_t hi) {
  const UnitTable<float>& U = *A.U;
  const int64_t C = static_cast<int64_t>(U.keep.size());
  const int64_t bpr = (C + kLanes - 1) / kLanes;
  DrawBlock d;
  alignas(64) float gm[kLanes], gs[kLanes];
  for (int64_t blk = lo; blk < hi; ++blk) {
    const int64_t row = blk / bpr, c0 = (blk % bpr) * kLanes;
    const int n = static_cast<int>(std::min<int64_t>(kLanes, C - c0));
    const auto P = lanes_at<float, false>(U, c0);
    draws<kIsa, false>(n, A.D.seed, A.D.offset + static_cast<uint64_t>(row * C + c0), P, A.D.a, A.D.b, d);
    const uint8_t* keep = U.keep.data() + c0;
    float* t = A.th + row * C + c0;
    if (kBackward) {
      factors<kIsa, false>(n, P, d, gm, gs);
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
  alignas(64) float gm[kLanes], gs[kLanes];
  if (S == 1) {
    const int64_t bpr = (C + kLanes - 1) / kLanes;
    for (int64_t blk = lo; blk < hi; ++blk) {
      const int64_t row = blk / bpr, c0 = (blk % bpr) * kLanes;
      const int n = static_cast<int>(std::min<int64_t>(kLanes, C - c0));
      const int64_t e0 = row * C + c0;
      const auto PL = lanes_at<float, false>(U, c0);
      draws<kIsa, false>(n, A.D.seed, A.D.offset + static_cast<uint64_t>(e0), PL, A.D.a, A.D.b, d);
      const uint8_t* keep = U.keep.data() + c0;
#pragma omp simd
      for (int i = 0; i < n; ++i) y[e0 + i] = from_f<X>(to_f(x[e0 + i]) * fsel(keep[i] != 0, d.th[i], 0.0f));
      if (A.sth) {  // grad_block writes whole vector groups: into the block's arrays, then n of them out
        factors<kIsa, false>(n, PL, d, gm, gs);
        for (int i = 0; i < n; ++i) A.sth[e0 + i] = fsel(keep[i] != 0, d.th[i], 0.0f);
        std::copy(gm, gm + n, A.sgm + e0);
        std::copy(gs, gs + n, A.sgs + e0);
      }
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
      draws<kIsa, true>(n, A.D.seed, A.D.offset + static_cast<uint64_t>(seg * S + s0), P, A.D.a, A.D.b, d);
#pragma omp simd
      for (int i = 0; i < n; ++i) ys[s0 + i] = from_f<X>(to_f(xs[s0 + i]) * d.th[i]);
      if (A.sth) {
        const int64_t e0 = seg * S + s0;
        factors<kIsa, true>(n, P, d, gm, gs);
        std::copy(d.th, d.th + n, A.sth + e0);
        std::copy(gm, gm + n, A.sgm + e0);
        std::copy(gs, gs + n, A.sgs + e0);
      }
    }
  }
}

// The backward's n draws from element e0 on, with their gradient factors: the forward's saved ones when it left
// them (the same values, so the same bits), else drawn again into d, gm, gs.
struct BlockDraws {
  const float *th, *fm, *fs;
};

template <int kIsa, bool kUniform, typename X, typename G>
FB_AI BlockDraws block_draws(const BwdArgs<X, G>& A, int n, int64_t e0, const Lanes<float, kUniform>& P,
                             DrawBlock& d, float* gm, float* gs) {
  if (A.sth) return {A.sth + e0, A.sgm + e0, A.sgs + e0};
  draws<kIsa, kUniform>(n, A.D.seed, A.D.offset + static_cast<uint64_t>(e0), P, A.D.a, A.D.b, d);
  factors<kIsa, kUniform>(n, P, d, gm, gs);
  return {d.th, gm, gs};
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
          const auto [th, fm, fs] = block_draws<kIsa>(A, n, row * C + c0, lanes_at<float, false>(U, c0), d, gm, gs);
          const uint8_t* kp = keep + c0;
          double* __restrict bm = am + c0;
          double* __restrict bs = as + c0;
#pragma omp simd
          for (int i = 0; i < n; ++i) {
            const float gv = to_f(gr[c0 + i]);
            const float t = fsel(kp[i] != 0, th[i], 0.0f);
            const float gxt = gv * to_f(xr[c0 + i]) * t;
            dr[c0 + i] = from_f<X>(gv * t);
            bm[i] += static_cast<double>(gxt * fm[i]);
            bs[i] += static_cast<double>(gxt * fs[i]);
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
        double sm = 0.0, ss = 0.0;
        for (int64_t s0 = 0; s0 < S; s0 += kLanes) {
          const int n = static_cast<int>(std::min<int64_t>(kLanes, S - s0));
          const auto [th, fm, fs] = block_draws<kIsa>(A, n, seg * S + s0, PL, d, gm, gs);
#pragma omp simd reduction(+ : sm, ss)
          for (int i = 0; i < n; ++i) {
            const float gv = to_f(gq[s0 + i]);
            const float gxt = gv * to_f(xq[s0 + i]) * th[i];
            dq[s0 + i] = from_f<X>(gv * th[i]);
            sm += static_cast<double>(gxt * fm[i]);
            ss += static_cast<double>(gxt * fs[i]);
          }
        }
        am[c] += sm;
        as[c] += ss;
      }
    }
  }
}

// Test hook: the vectorised quantile alone (vec::ndtri), items are groups of kLanes values.
struct NdtriArgs {
  const float *p, *tail;
  float* out;
  int64_t n;
};

template <int kIsa>
FB_AI void ndtri_range(const NdtriArgs& A, int64_t lo, int64_t hi) {
  using F = VecF<kIsa>;
  constexpr int W = vec::kWidth<F>;
  alignas(64) float p[kLanes], t[kLanes], e[kLanes];
  for (int64_t blk = lo; blk < hi; ++blk) {
    const int64_t i0 = blk * kLanes;
    const int n = static_cast<int>(std::min<int64_t>(kLanes, A.n - i0));
    std::fill(p, p + kLanes, 0.5f);
    std::fill(t, t + kLanes, 1.0f);
    std::copy(A.p + i0, A.p + i0 + n, p);
    std::copy(A.tail + i0, A.tail + i0 + n, t);
    for (int i = 0; i < kLanes; i += W) {
      F rt;
      vec::store(e + i, vec::ndtri(vec::load<F>(p + i), vec::load<F>(t + i), &rt));
    }
    std::copy(e, e + n, A.out + i0);
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
  } \
  template <int kDummy>                                                                                    \
  attr void ndtri_##sfx(const NdtriArgs& a, int64_t lo, int64_t hi) {                                      \
    ndtri_range<isa>(a, lo, hi);                                                                           \
  }

FB_ISA_WORKERS(, base, kBase)
#ifdef FB_X86_PATHS
FB_ISA_WORKERS(__attribute__((target(FB_AVX2_TARGET))), avx2, kAvx2)
FB_ISA_WORKERS(__attribute__((target(FB_AVX512_TARGET))), avx512, kAvx512)
#endif

using cpu::best_isa;

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
  const int64_t C = static_cast<int64_t>(U.keep.size());
  const int64_t blocks = rows * ((C + kLanes - 1) / kLanes);
  const TableArgs a{&U, D, th, fm, fs};
  if (backward) {
    run_range(blocks, 4096 / kLanes, FB_PICK(table, true), a);
  } else {
    run_range(blocks, 4096 / kLanes, FB_PICK(table, false), a);
  }
}

// `grain`: elements per chunk worth a thread (kGrainElems for the memory-bound passes, kGrainDraws where every
// element draws).
Chunks make_chunks(int64_t items, int64_t numel, int64_t C, int64_t grain) {
  int64_t k = std::clamp<int64_t>(numel / grain, 1, kMaxChunks);
  // the chunks' 2·C double accumulators are zeroed and summed: keep them under ~1/8 of the 12 bytes/element moved
  k = std::min<int64_t>(k, std::max<int64_t>(1, numel * 3 / (32 * std::max<int64_t>(C, 1))));
  k = std::max<int64_t>(1, std::min(k, items));
  const int64_t per = std::max<int64_t>(1, (items + k - 1) / k);
  return {(items + per - 1) / per, per};
}

// θ per table row and unit, with the backward's fm = θ·∂x_s/∂μ and fs = θ·σ·∂x_s/∂σ ("batch": one row, "sample":
// one per example).  The forward computes all three and leaves them in a per-thread content cache, so the backward
// of the same call finds them instead of drawing again (~1 ns a unit more in the forward, the draws saved in the
// backward).
struct ThetaTables {
  std::vector<float> th, fm, fs;
};

std::shared_ptr<const ThetaTables> theta_tables(const UnitTable<float>& U, const Draw& D, int64_t rows) {
  thread_local cpu::ContentCache<ThetaTables> cache(64, size_t{64} << 20);
  const int64_t C = static_cast<int64_t>(U.keep.size());
  cpu::KeyBuilder kb;
  kb.add(U.key.data(), U.key.size()).value(D.seed).value(D.offset).value(D.a).value(D.b).value(rows);
  std::vector<char> key = kb.take();
  if (auto hit = cache.find(key)) return hit;
  auto t = std::make_shared<ThetaTables>();
  t->th.resize(rows * C);
  t->fm.resize(rows * C);
  t->fs.resize(rows * C);
  make_table(true, U, D, rows, t->th.data(), t->fm.data(), t->fs.data());
  cache.put(std::move(key), t, static_cast<size_t>(3 * rows * C) * sizeof(float));
  return t;
}

// "element" draws left by a forward that will be differentiated (forward_will_backward(): the C++ autograd nodes
// say so) for its backward on this thread: per element θ (0 where masked) and the factors ∂x_s/∂μ, σ·∂x_s/∂σ,
// 12 bytes.  The backward then streams instead of drawing again (Philox, log, quantile, exp and the factors' two
// exps: ~2/3 of its work).  Only for activations up to kSaveMaxElems, which stay in the caches between forward and
// backward; past that, reading 12 bytes back from memory costs about what drawing again does, and the memory would
// grow with the model.  The backward takes its tables out of the cache (used once); a forward whose backward never
// comes leaves them until newer ones evict them (byte budget below).
struct ElementTables {
  explicit ElementTables(int64_t n) : buf(new float[3 * n]), th(buf.get()), gm(th + n), gs(gm + n) {}
  std::unique_ptr<float[]> buf;  // uninitialised: the forward writes every element it draws
  float *th, *gm, *gs;
};

constexpr int64_t kSaveMaxElems = int64_t{1} << 19;

cpu::ContentCache<ElementTables>& element_cache() {
  thread_local cpu::ContentCache<ElementTables> cache(32, size_t{24} << 20);
  return cache;
}

std::vector<char> element_key(const UnitTable<float>& U, const Draw& D, const Shape& sh) {
  cpu::KeyBuilder kb;
  kb.add(U.key.data(), U.key.size()).value(D.seed).value(D.offset).value(D.a).value(D.b);
  kb.value(sh.R).value(sh.P).value(sh.C).value(sh.S);
  return kb.take();
}

template <typename X>
void float_forward(const X* x, X* y, const UnitTable<float>& U, const Draw& D, const Shape& sh, Granularity gran) {
  const int64_t C = sh.C, S = sh.S;
  if (gran == Granularity::kElement) {
    FwdArgs<X> a{x, y, &U, D, sh, false, nullptr, nullptr, nullptr, nullptr};
    const int64_t n = sh.R * C * S;
    std::shared_ptr<ElementTables> saved;
    if (forward_will_backward() && n <= kSaveMaxElems) {
      saved = std::make_shared<ElementTables>(n);
      a.sth = saved->th;
      a.sgm = saved->gm;
      a.sgs = saved->gs;
    }
    if (S == 1) {
      run_range(sh.R * ((C + kLanes - 1) / kLanes), 4096 / kLanes, FB_PICK(element, X), a);
    } else {
      run_range(sh.R * C, 4096 / S, FB_PICK(element, X), a);
    }
    if (saved) element_cache().put(element_key(U, D, sh), saved, static_cast<size_t>(3 * n) * sizeof(float));
    return;
  }
  const bool per_sample = gran == Granularity::kSample;
  const auto tab = theta_tables(U, D, per_sample ? sh.R / sh.P : 1);
  const FwdArgs<X> a{x, y, &U, D, sh, per_sample, tab->th.data(), nullptr, nullptr, nullptr};
  if (S == 1) {
    run_range(sh.R, kGrainElems / C, FB_PICK(scale, X), a);
  } else {
    run_range(sh.R * C, kGrainElems / S, FB_PICK(scale, X), a);
  }
}

template <typename X, typename G>
void float_backward(const G* g, const X* x, X* dx, const UnitTable<float>& U, const Draw& D, const Shape& sh,
                    Granularity gran, double* acc, const Chunks& ch) {
  BwdArgs<X, G> a{g,       x,       dx,      &U,      D,       sh,  gran == Granularity::kSample,
                  nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, acc, ch};
  if (gran == Granularity::kElement) {
    const auto saved = element_cache().take(element_key(U, D, sh));
    if (saved) {
      a.sth = saved->th;
      a.sgm = saved->gm;
      a.sgs = saved->gs;
    }
    run_range(ch.count, 1, FB_PICK(backward, X, G, true), a);
    return;
  }
  const auto tab = theta_tables(U, D, a.per_sample ? sh.R / sh.P : 1);
  a.th = tab->th.data();
  a.fm = tab->fm.data();
  a.fs = tab->fs.data();
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

// A unit whose draws can reach the upper tail (kUpper), from its rounded β': p = Φ(β')·w > 0.925 needs
// β' > 1.4395; the margin covers the float rounding of β'.
template <typename T>
FB_AI bool reaches_upper(T be) {
  return static_cast<double>(be) > 1.4;
}

// Stores unit c of the table: the rounded lognormal_unit values, Φ(β') (float exp), the flags, and Φ(-β') (`phibc`,
// which the caller computes only where reaches_upper).
template <typename T>
FB_AI void put_unit(UnitTable<T>& u, int64_t c, const LognormalUnit<T>& p, double phibc) {
  u.mu[c] = p.mu;
  u.sigma[c] = p.sigma;
  u.sgs[c] = p.sigma * p.s;
  u.al[c] = p.al;
  u.be[c] = p.be;
  u.lf[c] = p.log_far;
  u.r[c] = p.r;
  u.s[c] = p.s;
  const double far = static_cast<double>(p.log_far);
  u.phib[c] = std::exp(static_cast<float>(far));  // float exp: Φ(β') is only used in float
  uint8_t f = 0;
  if (reaches_upper(p.be)) f |= kUpper;
  u.phibc[c] = (f & kUpper) ? static_cast<float>(phibc) : 0.0f;
  if (!(far > -580.0)) f |= kAsym;  // log p >= L + log FLT_MIN = L - 87.3 stays above -676 otherwise
  if (p.be < -static_cast<T>(kLognormalFarTail)) f |= kFar;
  u.flags[c] = f;
}

// lognormal_unit<float> for kWidth<D> units at once, as put_unit stores them: the same forms and branches in float64
// vectors (vec_f64.h; SLEEF's exp/log/erfc for glibc's, so a value may differ from the scalar path's in its last
// float64 bit, rarely in its float one).  Lanes past `n` compute a harmless unit and are not stored.
template <class D>
FB_AI void unit_group(const double* mp, const double* lp, int n, double a, double b, UnitTable<float>& u,
                      int64_t c0) {
  namespace v = cpu::vec;
  using S = v::Sleef<D>;
  D mu{}, ls{};
  for (int i = 0; i < n; ++i) {
    mu[i] = mp[i];
    ls[i] = lp[i];
  }
  const D sigma = S::exp(ls);
  const D al = (a - mu) / sigma, be = (b - mu) / sigma;
  const v::Mask<D> mirror = (al + be) > 0.0;
  const D al_c = v::sel<D>(mirror, -be, al), be_c = v::sel<D>(mirror, -al, be);
  const D far = v::log_ndtr<D>(be_c);
  // r = Φ(α')/Φ(β') underflows in float: lognormal_unit's Mills bound, its log only where the cheap bound fails
  constexpr double underflow = -110.0;
  const D q = -0.5 * al_c * al_c - kHalfLog2Pi - far;
  v::Mask<D> under = (al_c < -1.0) & (q < underflow);
  const v::Mask<D> try_log = (al_c < -1.0) & ~under;
  if (v::any<D>(try_log)) {
    const D q2 = -0.5 * al_c * al_c - S::log(v::sel<D>(try_log, -al_c, v::splat<D>(1.0))) - kHalfLog2Pi - far;
    under |= try_log & (q2 < underflow);
  }
  D r{};
  if (v::any<D>(~under)) r = v::sel<D>(under, v::splat<D>(0.0), S::exp(v::log_ndtr<D>(al_c) - far));
  // Φ(-β') where a unit reaches the upper tail
  D upper{};
  bool any_upper = false;
  for (int i = 0; i < n; ++i) any_upper |= reaches_upper(static_cast<float>(be_c[i]));
  if (any_upper) upper = S::exp(v::log_ndtr<D>(-be_c));
  for (int i = 0; i < n; ++i) {
    const LognormalUnit<float> p{static_cast<float>(mu[i]), static_cast<float>(sigma[i]),
                                 static_cast<float>(al_c[i]), static_cast<float>(be_c[i]),
                                 static_cast<float>(far[i]), static_cast<float>(r[i]), mirror[i] ? -1.0f : 1.0f};
    put_unit(u, c0 + i, p, upper[i]);
  }
}

using UnitRangeFn = void (*)(const double*, const double*, double, double, UnitTable<float>&, int64_t, int64_t);

template <class D>
FB_AI void unit_range(const double* mp, const double* lp, double a, double b, UnitTable<float>& u, int64_t lo,
                      int64_t hi) {
  constexpr int W = cpu::vec::kWidth<D>;
  for (int64_t c = lo; c < hi; c += W)
    unit_group<D>(mp + c, lp + c, static_cast<int>(std::min<int64_t>(W, hi - c)), a, b, u, c);
}

#ifdef FB_X86_PATHS
__attribute__((target(FB_AVX2_TARGET))) void unit_range_avx2(const double* mp, const double* lp, double a, double b,
                                                             UnitTable<float>& u, int64_t lo, int64_t hi) {
  unit_range<cpu::vec::D4>(mp, lp, a, b, u, lo, hi);
}
__attribute__((target(FB_AVX512_TARGET))) void unit_range_avx512(const double* mp, const double* lp, double a,
                                                                 double b, UnitTable<float>& u, int64_t lo,
                                                                 int64_t hi) {
  unit_range<cpu::vec::D8>(mp, lp, a, b, u, lo, hi);
}
#endif

// The vector prologue for this CPU, or nullptr (baseline ISA, or a libtorch without the SLEEF symbols).
UnitRangeFn unit_range_vec() {
  static const UnitRangeFn fn = []() -> UnitRangeFn {
#ifdef FB_X86_PATHS
    if (cpu::best_isa() == cpu::kAvx512 && cpu::vec::Sleef<cpu::vec::D8>::available()) return &unit_range_avx512;
    if (cpu::best_isa() >= cpu::kAvx2 && cpu::vec::Sleef<cpu::vec::D4>::available()) return &unit_range_avx2;
#endif
    return nullptr;
  }();
  return fn;
}

// The prologue: float64 per unit, rounded to T, in float64 vectors where unit_range_vec has a path for this CPU (the
// float table), else scalar; parallel because a unit costs 15-150 ns and C can be 10^4.
template <typename T>
UnitTable<T> unit_table(const at::Tensor& mu, const at::Tensor& log_sigma, const std::optional<at::Tensor>& mask,
                        double a, double b) {
  // μ and log σ (contiguous, one dtype) as float64: in place, widened in one loop for float32 (two ATen conversions
  // cost ~2 µs a gate inside a training step), through ATen for half types
  const int64_t C = mu.numel();
  std::vector<double> wide;
  at::Tensor m, l;
  const double *mp, *lp;
  if (mu.scalar_type() == at::kDouble) {
    mp = mu.const_data_ptr<double>();
    lp = log_sigma.const_data_ptr<double>();
  } else if (mu.scalar_type() == at::kFloat) {
    wide.resize(static_cast<size_t>(2 * C));
    const float* fm = mu.const_data_ptr<float>();
    const float* fl = log_sigma.const_data_ptr<float>();
    for (int64_t c = 0; c < C; ++c) {
      wide[c] = static_cast<double>(fm[c]);
      wide[C + c] = static_cast<double>(fl[c]);
    }
    mp = wide.data();
    lp = wide.data() + C;
  } else {
    m = mu.to(at::kDouble).contiguous();
    l = log_sigma.to(at::kDouble).contiguous();
    mp = m.const_data_ptr<double>();
    lp = l.const_data_ptr<double>();
  }
  UnitTable<T> u;
  // kLanes spare entries of a harmless unit (μ = 0, σ = 1, [α', β'] = [-1, 1]) after the C real ones
  const int64_t Cp = C + kLanes;
  u.mu.assign(Cp, T(0));
  u.sgs.assign(Cp, T(1));
  u.sigma.assign(Cp, T(1));
  u.al.assign(Cp, T(-1));
  u.be.assign(Cp, T(1));
  u.lf.assign(Cp, T(-0.17));
  u.r.assign(Cp, T(0.2));
  u.s.assign(Cp, T(1));
  u.phib.assign(Cp, 0.84f);
  u.phibc.assign(Cp, 0.16f);
  u.flags.assign(C, 0);
  u.keep.assign(C, 1);
  if (mask) {
    const at::Tensor mk = mask->contiguous();
    const bool* kp = mk.const_data_ptr<bool>();
    for (int64_t c = 0; c < C; ++c) u.keep[c] = kp[c] ? 1 : 0;
  }
  at::parallel_for(0, C, 256, [&](int64_t lo, int64_t hi) {
    if constexpr (std::is_same_v<T, float>) {
      if (const auto vec = unit_range_vec()) return vec(mp, lp, a, b, u, lo, hi);
    }
    for (int64_t c = lo; c < hi; ++c) {
      const double l = mp[c], ls = lp[c];
      const LognormalUnit<T> p = lognormal_unit<T>(l, ls, a, b);
      double phibc = 0.0;
      if (reaches_upper(p.be)) {  // Φ(-β'), β' again in float64 (as lognormal_unit)
        const double sg = std::exp(ls), al = (a - l) / sg, be = (b - l) / sg;
        phibc = std::exp(log_ndtr(-((al + be) > 0 ? -al : be)));
      }
      put_unit(u, c, p, phibc);
    }
  });
  u.block_flags.assign((C + kLanes - 1) / kLanes, 0);
  for (int64_t c = 0; c < C; ++c) u.block_flags[c / kLanes] |= u.flags[c];
  return u;
}

// unit_table behind a per-thread content cache (content_cache.h): a training step's backward finds the table of
// its forward (the prologue costs tens of ns a unit, as much as the whole pass over a small activation).
template <typename T>
std::shared_ptr<const UnitTable<T>> unit_table_cached(const at::Tensor& mu_in, const at::Tensor& log_sigma_in,
                                                      const std::optional<at::Tensor>& mask, double a, double b) {
  thread_local cpu::ContentCache<UnitTable<T>> cache(64, size_t{16} << 20);
  const at::Tensor mu = mu_in.contiguous(), ls = log_sigma_in.contiguous();
  const size_t nb = static_cast<size_t>(mu.numel()) * mu.element_size();
  const at::Tensor mk = mask ? mask->contiguous() : at::Tensor();
  cpu::KeyBuilder kb;
  kb.value(a).value(b).value(static_cast<int>(mu.scalar_type())).add(mu.const_data_ptr(), nb);
  kb.add(ls.const_data_ptr(), nb).add(mask ? mk.const_data_ptr() : nullptr, mask ? static_cast<size_t>(mk.numel()) : 0);
  kb.value(static_cast<int>(mask.has_value()));
  std::vector<char> key = kb.take();
  if (auto hit = cache.find(key)) return hit;
  auto table = std::make_shared<UnitTable<T>>(unit_table<T>(mu, ls, mask, a, b));
  table->key = key;
  const size_t bytes = static_cast<size_t>(mu.numel() + kLanes) * (8 * sizeof(T) + 2 * sizeof(float) + 4);
  cache.put(std::move(key), table, bytes);
  return table;
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
    const auto Up = unit_table_cached<double>(mu, log_sigma, mask, a, b);
    const UnitTable<double>& U = *Up;
    double_forward(x.const_data_ptr<double>(), y.mutable_data_ptr<double>(),
                   DoubleArgs{&U, sd, off, a, b, ck.shape, ck.gran});
    return y;
  }
  const auto Up = unit_table_cached<float>(mu, log_sigma, mask, a, b);
  const UnitTable<float>& U = *Up;
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
  const Chunks ch = make_chunks(lanes_over_units ? sh.R : sh.R * C, x.numel(), C,
                                ck.gran == Granularity::kElement ? kGrainDraws : kGrainElems);
  std::vector<double> acc(static_cast<size_t>(ch.count * 2 * C), 0.0);
  if (x.numel() > 0) {
    if (x.scalar_type() == at::kDouble) {
      const auto Up = unit_table_cached<double>(mu, log_sigma, mask, a, b);
    const UnitTable<double>& U = *Up;
      double_backward(g.const_data_ptr<double>(), x.const_data_ptr<double>(), dx.mutable_data_ptr<double>(),
                      DoubleArgs{&U, sd, off, a, b, sh, ck.gran}, acc.data(), ch);
    } else {
      const auto Up = unit_table_cached<float>(mu, log_sigma, mask, a, b);
  const UnitTable<float>& U = *Up;
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
  // fixed-order sum over the chunks in double, rounded once to mu's dtype; masked units get exactly 0
  at::Tensor dmu = at::empty({C}, mu.options()), dls = at::empty({C}, mu.options());
  const at::Tensor mk = mask ? mask->contiguous() : at::Tensor();
  const bool* kp = mask ? mk.const_data_ptr<bool>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "lognormal_noise_backward_sums", [&] {
    scalar_t* pm = dmu.mutable_data_ptr<scalar_t>();
    scalar_t* ps = dls.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, C, 8192, [&](int64_t lo, int64_t hi) {
      for (int64_t c = lo; c < hi; ++c) {
        double sm = 0.0, ss = 0.0;
        for (int64_t k = 0; k < ch.count; ++k) {
          sm += acc[k * 2 * C + c];
          ss += acc[k * 2 * C + C + c];
        }
        const bool keep = !kp || kp[c];
        pm[c] = static_cast<scalar_t>(keep ? sm : 0.0);
        ps[c] = static_cast<scalar_t>(keep ? ss : 0.0);
      }
    });
  });
  return {dx, dmu, dls};
}

// Test hook for tests/test_lognormal_cpu_fast.py: the per-element quantile of the current ISA on float32 p and
// tail = -log(min(p, 1-p)) (ndtri_f32.h), without the scalar asymptotic branch of tail > 676.
at::Tensor ndtri_f32_cpu(const at::Tensor& p_in, const at::Tensor& tail_in) {
  TORCH_CHECK_VALUE(p_in.scalar_type() == at::kFloat && tail_in.scalar_type() == at::kFloat &&
                        p_in.sizes() == tail_in.sizes() && p_in.device().is_cpu() && tail_in.device().is_cpu(),
                    "p and tail must be float32 CPU tensors of one shape");
  const at::Tensor p = p_in.contiguous(), t = tail_in.contiguous();
  at::Tensor out = at::empty_like(p);
  const NdtriArgs a{p.const_data_ptr<float>(), t.const_data_ptr<float>(), out.mutable_data_ptr<float>(), p.numel()};
  run_range((p.numel() + kLanes - 1) / kLanes, 64, FB_PICK(ndtri, 0), a);
  return out;
}

}  // namespace
}  // namespace fastbayes

TORCH_LIBRARY_FRAGMENT(fastbayes_C, m) {
  m.def("_ndtri_f32(Tensor p, Tensor tail) -> Tensor");
  m.def("lognormal_noise(Tensor x, Tensor mu, Tensor log_sigma, Tensor? mask, float a, float b, int dim, "
        "str granularity, int seed, int offset) -> Tensor");
  m.def("lognormal_noise_backward(Tensor grad_y, Tensor x, Tensor mu, Tensor log_sigma, Tensor? mask, float a, "
        "float b, int dim, str granularity, int seed, int offset) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastbayes_C, CPU, m) {
  m.impl("_ndtri_f32", &fastbayes::ndtri_f32_cpu);
  m.impl("lognormal_noise", &fastbayes::lognormal_noise_cpu);
  m.impl("lognormal_noise_backward", &fastbayes::lognormal_noise_backward_cpu);
}
