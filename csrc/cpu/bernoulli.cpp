// CPU ops bernoulli_gate / bernoulli_gate_backward and scale_mixture_prior / scale_mixture_prior_backward
// (spec: fastbayes/reference/bernoulli.py).
//
// x is viewed as [R, C, S]: R = prod(shape[:dim]) rows (example n = row / P), C units, S = prod(shape[dim+1:])
// contiguous elements.  ξ is one bit per (example, unit), so the N·C draws go into a byte table first (Philox in
// lanes over units, vectorised); the pass over x is then a select: y = x where ξ, else 0, done on the element bits
// (any dtype, no rounding), with memcpy/memset for whole (row, unit) segments when S > 1.  The backward writes
// dx = g·ξ the same way and sums g·x per unit in double, over a partition into chunks that depends only on the
// shape, then adds the chunks in order: results do not depend on the thread count, and there are no atomics.
// The element loops and the Philox draws are compiled three times, baseline x86-64, AVX2 and AVX-512, picked at run
// time by csrc/cpu/isa.h (FASTBAYES_CPU_ISA caps it).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <tuple>
#include <type_traits>
#include <vector>

#include "fastbayes/philox.h"
#include "isa.h"
#include "content_cache.h"
#include "philox_simd.h"

namespace fastbayes {
namespace {

#define FB_AI inline __attribute__((always_inline))

constexpr int64_t kGrainElems = 32768;   // elements per parallel_for chunk of the streaming passes
constexpr int64_t kGrainDraws = 8192;     // draws per parallel_for chunk of the ξ table (~5 µs)
constexpr int64_t kGrainUnits = 65536;    // per-unit loops: ~20 ns a unit, a parallel region costs more below
constexpr int64_t kMaxChunks = 64;       // backward partition (fixed by the shape, not by the thread count)
constexpr double kLog2Pi = 1.8378770664093454836;

// ---------------------------------------------------------------------------------------------------------
// Element <-> math conversions, and the select on element bits.

template <typename X>
FB_AI auto to_m(X x) {
  if constexpr (std::is_same_v<X, double>) {
    return x;
  } else if constexpr (std::is_same_v<X, c10::BFloat16>) {
    return std::bit_cast<float>(static_cast<uint32_t>(x.x) << 16);
  } else {
    return static_cast<float>(x);
  }
}

template <typename X>
FB_AI X from_f(float f) {
  if constexpr (std::is_same_v<X, c10::BFloat16>) {
    // round to nearest even, NaN kept quiet (as c10::BFloat16(float))
    const uint32_t u = std::bit_cast<uint32_t>(f);
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    X out;
    out.x = static_cast<uint16_t>(f != f ? 0x7fc0u : rounded);
    return out;
  } else {
    return static_cast<X>(f);
  }
}

template <size_t N>
struct Bits;
template <>
struct Bits<2> {
  using T = uint16_t;
};
template <>
struct Bits<4> {
  using T = uint32_t;
};
template <>
struct Bits<8> {
  using T = uint64_t;
};

// x where keep else +0, bit for bit.
template <typename X>
FB_AI X select(X x, uint8_t keep) {
  using B = typename Bits<sizeof(X)>::T;
  return std::bit_cast<X>(static_cast<B>(std::bit_cast<B>(x) & static_cast<B>(-static_cast<B>(keep))));
}

// ---------------------------------------------------------------------------------------------------------
// Workers (no parallel region inside, so that the ISA wrappers inline the whole loop).

struct Shape {
  int64_t R, P, C, S;
};

struct DrawArgs {
  const float* theta;
  const uint8_t* keep;  // nullptr: no mask
  uint64_t seed, offset;
  int64_t C;
  uint8_t* xi;  // [N, C]
};

constexpr int kDrawBlock = 256;  // uniforms per Philox call: a stack buffer in L1
static_assert(cpu::philox_padded<cpu::kAvx512>(kDrawBlock) == kDrawBlock, "Philox writes whole vector groups");

// ξ[n, c] = keep[c] & (u(offset + n·C + c) < θ[c]) for table rows [lo, hi); Philox in the ISA's vector width.
template <int kIsa>
FB_AI void draw_range(const DrawArgs& A, int64_t lo, int64_t hi) {
  const int64_t C = A.C;
  const float* __restrict th = A.theta;
  alignas(64) float u[kDrawBlock];
  for (int64_t n = lo; n < hi; ++n) {
    uint8_t* __restrict out = A.xi + n * C;
    const uint64_t base = A.offset + static_cast<uint64_t>(n * C);
    for (int64_t c0 = 0; c0 < C; c0 += kDrawBlock) {
      const int m = static_cast<int>(std::min<int64_t>(kDrawBlock, C - c0));
      cpu::philox_block<kIsa>(m, A.seed, base + static_cast<uint64_t>(c0), u);
#pragma omp simd
      for (int c = 0; c < m; ++c) out[c0 + c] = static_cast<uint8_t>(u[c] < th[c0 + c]);
    }
    if (A.keep) {
      for (int64_t c = 0; c < C; ++c) out[c] &= A.keep[c];
    }
  }
}

template <typename X>
struct FwdArgs {
  const X* x;
  X* y;
  const uint8_t* xi;
  Shape sh;
};

// Items: rows when S == 1, else (row, unit) segments.
template <typename X>
FB_AI void forward_range(const FwdArgs<X>& A, int64_t lo, int64_t hi) {
  const int64_t C = A.sh.C, S = A.sh.S, P = A.sh.P;
  if (S == 1) {
    for (int64_t row = lo; row < hi; ++row) {
      const uint8_t* __restrict k = A.xi + (row / P) * C;
      const X* __restrict xr = A.x + row * C;
      X* __restrict yr = A.y + row * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) yr[c] = select(xr[c], k[c]);
    }
    return;
  }
  for (int64_t seg = lo; seg < hi; ++seg) {
    const int64_t row = seg / C, c = seg % C;
    X* ys = A.y + seg * S;
    if (A.xi[(row / P) * C + c]) {
      std::memcpy(static_cast<void*>(ys), static_cast<const void*>(A.x + seg * S), sizeof(X) * S);
    } else {
      std::memset(static_cast<void*>(ys), 0, sizeof(X) * S);
    }
  }
}

struct Chunks {
  int64_t count, per;
};

template <typename X, typename G>
struct BwdArgs {
  const G* g;
  const X* x;
  X* dx;
  const uint8_t* xi;
  Shape sh;
  double* acc;  // [chunks][C]
  Chunks ch;
};

// dx = g where ξ else 0 (in x's dtype) and the chunk's per-unit Σ g·x (math-dtype products, double sums).
template <typename X, typename G>
FB_AI void backward_range(const BwdArgs<X, G>& A, int64_t klo, int64_t khi) {
  const int64_t C = A.sh.C, S = A.sh.S, P = A.sh.P;
  const G* __restrict g = A.g;
  const X* __restrict x = A.x;
  X* __restrict dx = A.dx;
  for (int64_t k = klo; k < khi; ++k) {
    double* __restrict acc = A.acc + k * C;
    if (S == 1) {  // items are rows; lanes run over units
      const int64_t r_end = std::min(A.sh.R, (k + 1) * A.ch.per);
      for (int64_t row = k * A.ch.per; row < r_end; ++row) {
        const uint8_t* __restrict xi = A.xi + (row / P) * C;
        const G* gr = g + row * C;
        const X* xr = x + row * C;
        X* dr = dx + row * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const auto gv = to_m(gr[c]);
          if constexpr (std::is_same_v<G, X>) {
            dr[c] = select(gr[c], xi[c]);
          } else {
            dr[c] = select(from_f<X>(gv), xi[c]);
          }
          acc[c] += static_cast<double>(gv * to_m(xr[c]));
        }
      }
      continue;
    }
    const int64_t e_end = std::min(A.sh.R * C, (k + 1) * A.ch.per);
    for (int64_t seg = k * A.ch.per; seg < e_end; ++seg) {
      const int64_t row = seg / C, c = seg % C;
      const G* gq = g + seg * S;
      const X* xq = x + seg * S;
      X* dq = dx + seg * S;
      const uint8_t keep = A.xi[(row / P) * C + c];
      double sgx = 0.0;
      if constexpr (std::is_same_v<G, X>) {
        if (keep) {
          std::memcpy(static_cast<void*>(dq), static_cast<const void*>(gq), sizeof(X) * S);
        } else {
          std::memset(static_cast<void*>(dq), 0, sizeof(X) * S);
        }
      } else {
#pragma omp simd
        for (int64_t s = 0; s < S; ++s) dq[s] = select(from_f<X>(gq[s]), keep);
      }
#pragma omp simd reduction(+ : sgx)
      for (int64_t s = 0; s < S; ++s) sgx += static_cast<double>(to_m(gq[s]) * to_m(xq[s]));
      acc[c] += sgx;
    }
  }
}

#define FB_ISA_WORKERS(attr, sfx, isa)                                                        \
  attr void draw_##sfx(const DrawArgs& a, int64_t lo, int64_t hi) { draw_range<isa>(a, lo, hi); } \
  template <typename X>                                                                       \
  attr void forward_##sfx(const FwdArgs<X>& a, int64_t lo, int64_t hi) {                      \
    forward_range<X>(a, lo, hi);                                                              \
  }                                                                                           \
  template <typename X, typename G>                                                           \
  attr void backward_##sfx(const BwdArgs<X, G>& a, int64_t lo, int64_t hi) {                  \
    backward_range<X, G>(a, lo, hi);                                                          \
  }

FB_ISA_WORKERS(, base, cpu::kBase)
#ifdef FB_X86_PATHS
FB_ISA_WORKERS(__attribute__((target(FB_AVX2_TARGET))), avx2, cpu::kAvx2)
FB_ISA_WORKERS(__attribute__((target(FB_AVX512_TARGET))), avx512, cpu::kAvx512)
#define FB_PICK(name, ...)                                                                          \
  (cpu::best_isa() == cpu::kAvx512 ? &name##_avx512 __VA_OPT__(<__VA_ARGS__>)                       \
   : cpu::best_isa() == cpu::kAvx2 ? &name##_avx2 __VA_OPT__(<__VA_ARGS__>)                         \
                                   : &name##_base __VA_OPT__(<__VA_ARGS__>))
#else
#define FB_PICK(name, ...) (&name##_base __VA_OPT__(<__VA_ARGS__>))
#endif

template <typename Fn, typename Args>
void run_range(int64_t n, int64_t grain, Fn worker, const Args& args) {
  at::parallel_for(0, n, std::max<int64_t>(grain, 1), [&](int64_t lo, int64_t hi) { worker(args, lo, hi); });
}

Chunks make_chunks(int64_t items, int64_t numel, int64_t C) {
  int64_t k = std::clamp<int64_t>(numel / kGrainElems, 1, kMaxChunks);
  k = std::min<int64_t>(k, std::max<int64_t>(1, (int64_t{1} << 22) / std::max<int64_t>(C, 1)));  // ≤ 32 MiB acc
  k = std::max<int64_t>(1, std::min(k, items));
  const int64_t per = std::max<int64_t>(1, (items + k - 1) / k);
  return {(items + per - 1) / per, per};
}

// ---------------------------------------------------------------------------------------------------------
// Tensor glue.

bool is_float_type(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

Shape check_gate_args(const at::Tensor& x, const at::Tensor& theta, const std::optional<at::Tensor>& mask,
                      int64_t dim, int64_t seed, int64_t offset) {
  TORCH_CHECK_VALUE(x.device().is_cpu(), "x must be a CPU tensor for the CPU kernel, got ", x.device());
  TORCH_CHECK_VALUE(x.dim() >= 2, "x must have at least two dimensions (examples and units), got ", x.sizes());
  TORCH_CHECK_VALUE(is_float_type(x.scalar_type()), "x must be float16, bfloat16, float32 or float64, got ",
                    x.scalar_type());
  TORCH_CHECK_VALUE(1 <= dim && dim < x.dim(), "dim must be in [1, ", x.dim(), "), got ", dim);
  TORCH_CHECK_VALUE(theta.dim() == 1 && theta.size(0) == x.size(dim), "theta must be 1-D with x.shape[", dim,
                    "] = ", x.size(dim), " entries, got shape ", theta.sizes());
  TORCH_CHECK_VALUE(theta.scalar_type() == at::kFloat, "theta must be float32, got ", theta.scalar_type());
  TORCH_CHECK_VALUE(theta.device() == x.device(), "theta must be on the device of x");
  if (mask) {
    TORCH_CHECK_VALUE(mask->scalar_type() == at::kBool, "mask must be a bool tensor, got ", mask->scalar_type());
    TORCH_CHECK_VALUE(mask->sizes() == theta.sizes(), "mask must have the shape of theta ", theta.sizes(), ", got ",
                      mask->sizes());
    TORCH_CHECK_VALUE(mask->device() == x.device(), "mask must be on the device of x");
  }
  TORCH_CHECK_VALUE(seed >= 0, "seed must be non-negative, got ", seed);
  TORCH_CHECK_VALUE(offset >= 0, "offset must be non-negative, got ", offset);
  Shape sh{1, 1, x.size(dim), 1};
  for (int64_t d = dim + 1; d < x.dim(); ++d) sh.S *= x.size(d);
  for (int64_t d = 1; d < dim; ++d) sh.P *= x.size(d);
  for (int64_t d = 0; d < dim; ++d) sh.R *= x.size(d);
  return sh;
}

// The ξ byte table [N, C], N = R / P.
std::vector<uint8_t> draw_table_uncached(const at::Tensor& th, const std::optional<at::Tensor>& mask, const Shape& sh,
                                         int64_t seed, int64_t offset) {
  const int64_t N = sh.P > 0 ? sh.R / sh.P : 0, C = sh.C;
  std::vector<uint8_t> xi(static_cast<size_t>(N * C));
  if (N * C == 0) return xi;
  std::vector<uint8_t> keep;
  if (mask) {
    const at::Tensor mk = mask->contiguous();
    const bool* kp = mk.const_data_ptr<bool>();
    keep.resize(C);
    for (int64_t c = 0; c < C; ++c) keep[c] = kp[c] ? 1 : 0;
  }
  const DrawArgs a{th.const_data_ptr<float>(), mask ? keep.data() : nullptr, static_cast<uint64_t>(seed),
                   static_cast<uint64_t>(offset), C, xi.data()};
  // ~0.6 ns a draw on AVX-512: a parallel region pays off from several thousand draws
  run_range(N, kGrainDraws / std::max<int64_t>(C, 1), FB_PICK(draw), a);
  return xi;
}

// draw_table_uncached behind a per-thread content cache (content_cache.h): the backward of a call finds the ξ its
// forward drew from the same (θ, mask, seed, offset, shape).
std::shared_ptr<const std::vector<uint8_t>> draw_table(const at::Tensor& theta, const std::optional<at::Tensor>& mask,
                                                       const Shape& sh, int64_t seed, int64_t offset) {
  thread_local cpu::ContentCache<std::vector<uint8_t>> cache(64, size_t{32} << 20);
  const at::Tensor th = theta.contiguous();
  const at::Tensor mk = mask ? mask->contiguous() : at::Tensor();
  const int64_t N = sh.P > 0 ? sh.R / sh.P : 0;
  cpu::KeyBuilder kb;
  kb.value(seed).value(offset).value(N).value(sh.C).add(th.const_data_ptr(), static_cast<size_t>(th.numel()) * 4);
  kb.add(mask ? mk.const_data_ptr() : nullptr, mask ? static_cast<size_t>(mk.numel()) : 0);
  kb.value(static_cast<int>(mask.has_value()));
  std::vector<char> key = kb.take();
  if (auto hit = cache.find(key)) return hit;
  auto xi = std::make_shared<const std::vector<uint8_t>>(draw_table_uncached(th, mask, sh, seed, offset));
  cache.put(std::move(key), xi, xi->size());
  return xi;
}

at::Tensor bernoulli_gate_cpu(const at::Tensor& x_in, const at::Tensor& theta,
                              const std::optional<at::Tensor>& mask, int64_t dim, int64_t seed, int64_t offset) {
  const Shape sh = check_gate_args(x_in, theta, mask, dim, seed, offset);
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) return y;
  const auto xi = draw_table(theta, mask, sh, seed, offset);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bernoulli_gate_cpu", [&] {
    const FwdArgs<scalar_t> a{x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), xi->data(), sh};
    if (sh.S == 1) {
      run_range(sh.R, kGrainElems / sh.C, FB_PICK(forward, scalar_t), a);
    } else {
      run_range(sh.R * sh.C, kGrainElems / sh.S, FB_PICK(forward, scalar_t), a);
    }
  });
  return y;
}

template <typename X, typename G>
void backward_typed(const G* g, const X* x, X* dx, const uint8_t* xi, const Shape& sh, double* acc,
                    const Chunks& ch) {
  const BwdArgs<X, G> a{g, x, dx, xi, sh, acc, ch};
  run_range(ch.count, 1, FB_PICK(backward, X, G), a);
}

std::tuple<at::Tensor, at::Tensor> bernoulli_gate_backward_cpu(const at::Tensor& grad_y, const at::Tensor& x_in,
                                                               const at::Tensor& theta,
                                                               const std::optional<at::Tensor>& mask, int64_t dim,
                                                               int64_t seed, int64_t offset) {
  const Shape sh = check_gate_args(x_in, theta, mask, dim, seed, offset);
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
  const int64_t C = sh.C;
  const Chunks ch = make_chunks(sh.S == 1 ? sh.R : sh.R * C, x.numel(), C);
  std::vector<double> acc(static_cast<size_t>(ch.count * C), 0.0);
  if (x.numel() > 0) {
    const auto xi_table = draw_table(theta, mask, sh, seed, offset);
    const uint8_t* xi = xi_table->data();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bernoulli_gate_backward_cpu", [&] {
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      scalar_t* dp = dx.mutable_data_ptr<scalar_t>();
      if (g.scalar_type() == x.scalar_type()) {
        backward_typed<scalar_t, scalar_t>(g.const_data_ptr<scalar_t>(), xp, dp, xi, sh, acc.data(), ch);
      } else if constexpr (std::is_same_v<scalar_t, double>) {
        TORCH_CHECK(false, "unreachable: float64 x has a float64 math dtype");
      } else {
        backward_typed<scalar_t, float>(g.const_data_ptr<float>(), xp, dp, xi, sh, acc.data(), ch);
      }
    });
  }
  // fixed-order sum over the chunks; masked units get exactly 0
  at::Tensor dtheta = at::empty({C}, theta.options());
  float* pt = dtheta.mutable_data_ptr<float>();
  const at::Tensor mk = mask ? mask->contiguous() : at::Tensor();
  const bool* kp = mask ? mk.const_data_ptr<bool>() : nullptr;
  at::parallel_for(0, C, kGrainUnits, [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi; ++c) {
      double t = 0.0;
      for (int64_t k = 0; k < ch.count; ++k) t += acc[k * C + c];
      pt[c] = (kp && !kp[c]) ? 0.0f : static_cast<float>(t);
    }
  });
  return {dx, dtheta};
}

// ---------------------------------------------------------------------------------------------------------
// scale_mixture_prior: one value per unit, float64 math (reference _components, same evaluation order).

struct PriorTerms {
  double c0, c1, h0, h1;
};

inline PriorTerms prior_terms(double sq, double k, double lv0, double lv1) {
  const double h0 = 0.5 * std::exp(-lv0), h1 = 0.5 * std::exp(-lv1);
  return {sq * h0 + 0.5 * k * (kLog2Pi + lv0), sq * h1 + 0.5 * k * (kLog2Pi + lv1), h0, h1};
}

void check_prior_args(const at::Tensor& theta, std::initializer_list<std::pair<const char*, const at::Tensor*>> rest) {
  TORCH_CHECK_VALUE(theta.device().is_cpu(), "theta must be a CPU tensor for the CPU kernel, got ", theta.device());
  TORCH_CHECK_VALUE(theta.dim() == 1, "theta must be 1-D (one value per unit), got shape ", theta.sizes());
  TORCH_CHECK_VALUE(theta.scalar_type() == at::kFloat || theta.scalar_type() == at::kDouble,
                    "theta must be float32 or float64, got ", theta.scalar_type());
  for (const auto& [name, t] : rest) {
    TORCH_CHECK_VALUE(t->sizes() == theta.sizes(), name, " must have the shape of theta ", theta.sizes(), ", got ",
                      t->sizes());
    TORCH_CHECK_VALUE(t->scalar_type() == theta.scalar_type(), name, " must have the dtype of theta (",
                      theta.scalar_type(), "), got ", t->scalar_type());
    TORCH_CHECK_VALUE(t->device() == theta.device(), name, " must be on the device of theta");
  }
}

at::Tensor scale_mixture_prior_cpu(const at::Tensor& theta, const at::Tensor& sq_norm, const at::Tensor& k,
                                   const at::Tensor& log_var0, const at::Tensor& log_var1) {
  check_prior_args(theta, {{"sq_norm", &sq_norm}, {"k", &k}, {"log_var0", &log_var0}, {"log_var1", &log_var1}});
  const at::Tensor th = theta.contiguous(), sq = sq_norm.contiguous(), kk = k.contiguous(),
                   l0 = log_var0.contiguous(), l1 = log_var1.contiguous();
  at::Tensor out = at::empty_like(th);
  AT_DISPATCH_FLOATING_TYPES(th.scalar_type(), "scale_mixture_prior_cpu", [&] {
    const scalar_t *pt = th.const_data_ptr<scalar_t>(), *ps = sq.const_data_ptr<scalar_t>(),
                   *pk = kk.const_data_ptr<scalar_t>(), *p0 = l0.const_data_ptr<scalar_t>(),
                   *p1 = l1.const_data_ptr<scalar_t>();
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, th.numel(), kGrainUnits, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const PriorTerms t = prior_terms(ps[i], pk[i], p0[i], p1[i]);
        const double w = pt[i];
        po[i] = static_cast<scalar_t>(w * t.c1 + (1.0 - w) * t.c0);
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> scale_mixture_prior_backward_cpu(const at::Tensor& grad, const at::Tensor& theta,
                                                                    const at::Tensor& sq_norm, const at::Tensor& k,
                                                                    const at::Tensor& log_var0,
                                                                    const at::Tensor& log_var1) {
  check_prior_args(theta, {{"grad", &grad}, {"sq_norm", &sq_norm}, {"k", &k}, {"log_var0", &log_var0},
                           {"log_var1", &log_var1}});
  const at::Tensor g = grad.contiguous(), th = theta.contiguous(), sq = sq_norm.contiguous(), kk = k.contiguous(),
                   l0 = log_var0.contiguous(), l1 = log_var1.contiguous();
  at::Tensor dth = at::empty_like(th), dsq = at::empty_like(sq);
  AT_DISPATCH_FLOATING_TYPES(th.scalar_type(), "scale_mixture_prior_backward_cpu", [&] {
    const scalar_t *pg = g.const_data_ptr<scalar_t>(), *pt = th.const_data_ptr<scalar_t>(),
                   *ps = sq.const_data_ptr<scalar_t>(), *pk = kk.const_data_ptr<scalar_t>(),
                   *p0 = l0.const_data_ptr<scalar_t>(), *p1 = l1.const_data_ptr<scalar_t>();
    scalar_t *o1 = dth.mutable_data_ptr<scalar_t>(), *o2 = dsq.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, th.numel(), kGrainUnits, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const PriorTerms t = prior_terms(ps[i], pk[i], p0[i], p1[i]);
        const double gv = pg[i], w = pt[i];
        o1[i] = static_cast<scalar_t>(gv * (t.c1 - t.c0));
        o2[i] = static_cast<scalar_t>(gv * (w * t.h1 + (1.0 - w) * t.h0));
      }
    });
  });
  return {dth, dsq};
}

}  // namespace
}  // namespace fastbayes

TORCH_LIBRARY_FRAGMENT(fastbayes_C, m) {
  m.def("bernoulli_gate(Tensor x, Tensor theta, Tensor? mask, int dim, int seed, int offset) -> Tensor");
  m.def("bernoulli_gate_backward(Tensor grad_y, Tensor x, Tensor theta, Tensor? mask, int dim, int seed, "
        "int offset) -> (Tensor, Tensor)");
  m.def("scale_mixture_prior(Tensor theta, Tensor sq_norm, Tensor k, Tensor log_var0, Tensor log_var1) -> Tensor");
  m.def("scale_mixture_prior_backward(Tensor grad, Tensor theta, Tensor sq_norm, Tensor k, Tensor log_var0, "
        "Tensor log_var1) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastbayes_C, CPU, m) {
  m.impl("bernoulli_gate", &fastbayes::bernoulli_gate_cpu);
  m.impl("bernoulli_gate_backward", &fastbayes::bernoulli_gate_backward_cpu);
  m.impl("scale_mixture_prior", &fastbayes::scale_mixture_prior_cpu);
  m.impl("scale_mixture_prior_backward", &fastbayes::scale_mixture_prior_backward_cpu);
}
